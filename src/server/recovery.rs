//! What the loop does when handling one peer panicked (see `crate::guard`): that peer's
//! connection is answered with 500 (HTTP) or closed with 1011 (WebSocket), its session is
//! ended and its sandbox deleted, since their state machines stopped half-way; everyone else
//! is served on. A checkpoint saved before stays in the store and can still be attached.

use super::api::ApiError;
use super::connection::{ConnectionId, Phase};
use super::Server;
use crate::guard;
use crate::session::SessionId;

/// Whose handler is running, so that a panic ends that one only.
#[derive(Debug, Clone, Copy)]
pub(super) enum Peer {
    /// An HTTP connection or a WebSocket, by connection id.
    Connection(ConnectionId),
    Session(SessionId),
}

impl Server {
    /// Runs one peer's handler; a panic in it ends that peer, not the loop.
    pub(super) fn guarded(&mut self, peer: Peer, work: impl FnOnce(&mut Server)) {
        let Err(message) = guard::catch(|| work(self)) else {
            return;
        };
        eprintln!("server: internal error while handling {peer:?}: {message}; ending it");
        if let Err(again) = guard::catch(|| self.end_after_panic(peer)) {
            eprintln!("server: cannot clean up after {peer:?} either: {again}");
        }
    }

    fn end_after_panic(&mut self, peer: Peer) {
        match peer {
            Peer::Session(session) => self.abandon_session(session),
            Peer::Connection(id) => {
                if let Some(socket) = self.connections.websockets.get(&id) {
                    match socket.session {
                        Some(session) => self.abandon_session(session),
                        None => self.fail_websocket(id),
                    }
                } else {
                    self.fail_http(id);
                }
            }
        }
    }

    /// Forget a session whose handler panicked: delete its sandbox, release its lease, close
    /// its connection with 1011.
    fn abandon_session(&mut self, session_id: SessionId) {
        let connection = self.sessions.connection(session_id);
        self.persistence.forget(session_id);
        if let Some(session) = self.sessions.remove(session_id) {
            if let Some(sandbox) = session.sandbox() {
                self.runtime.delete(sandbox);
            }
            self.close_port_connections(session.sandbox_id(), None);
            self.drop_sandbox_ports(&session);
        }
        if let Some(connection) = connection {
            self.fail_websocket(connection);
        }
    }

    /// Close a WebSocket with 1011 (the close handshake then ends it as usual); one that was
    /// closing already is dropped.
    fn fail_websocket(&mut self, id: ConnectionId) {
        let Some(socket) = self.connections.websockets.get_mut(&id) else {
            return;
        };
        if let Some(session) = socket.session.take() {
            self.sessions.unlink(session);
        }
        if socket.closing_since.is_some() {
            return self.drop_websocket(id);
        }
        socket.close(1011, "internal server error");
    }

    /// Answer 500 if no response has begun (else cut the response short), delete the request's
    /// sandbox, and close.
    fn fail_http(&mut self, id: ConnectionId) {
        let Some(connection) = self.connections.http.get_mut(&id) else {
            return;
        };
        let response_started = connection.job().is_some_and(|job| job.response_started());
        self.abandon_execute(id);
        if response_started {
            if let Some(connection) = self.connections.http.get_mut(&id) {
                connection.phase = Phase::Closing;
            }
        } else {
            let error = ApiError::Internal("internal server error".into());
            self.respond(id, &error.response(), false, false);
        }
        self.flush(id);
    }
}
