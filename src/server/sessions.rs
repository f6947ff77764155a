//! WebSocket sessions in the event loop: the upgrade, create and attach, message dispatch,
//! delivery of a session's frames to its connection, pings and idle timeouts.

use std::time::Instant;

use super::recovery::Peer;
use super::websocket::{
    self, overdue, Incoming, Linger, WaitBounds, Waiting, WsConnection, CLOSE_DEADLINE,
    WS_HIGH_WATER,
};
use super::{Control, Server};
use crate::http::request::Request;
use crate::runtime::RuntimeEvent;
use crate::session::{refusal, token_matches, Out, Session, SessionId, SessionSettings};

impl Server {
    pub(super) fn session_settings(&self) -> SessionSettings {
        SessionSettings {
            checkpoint_enabled: self.config.checkpoint_path.is_some(),
            snapshot_enabled: self.config.snapshot_path.is_some(),
            default_idle_timeout: self.config.ws.default_idle_timeout,
            max_idle_timeout: self.config.ws.max_idle_timeout,
            exec_timeout: self.config.limits.exec_timeout,
            max_exec_timeout: self.config.limits.max_exec_timeout,
            max_code_bytes: self.config.limits.max_code_bytes,
            held_output_bytes: self.config.ws.detached_output_bytes,
            egress_unavailable: self.runtime.egress_unavailable().map(str::to_string),
        }
    }

    /// Answer the handshake and hand the socket to tungstenite, then start or attach a session.
    pub(super) fn upgrade(&mut self, id: u64, request: &Request) {
        let key = match websocket::check_handshake(request) {
            Ok(key) => key,
            Err((status, response)) => return self.respond(id, status, response, false),
        };
        let Some(mut connection) = self.connections.remove(&id) else {
            return;
        };
        connection
            .out
            .extend_from_slice(&websocket::handshake_response(&key));
        if !connection.flush() || !connection.out.is_empty() {
            // A fresh socket that cannot take 200 bytes is not worth keeping.
            let _ = self.poll.registry().deregister(&mut connection.stream);
            return;
        }
        *self.metrics.http_responses.entry(101).or_default() += 1;
        let ws_limits = &self.config.ws;
        let mut socket = WsConnection::new(
            connection.stream,
            ws_limits.max_message_bytes,
            ws_limits.messages_per_sec,
        );
        let now = Instant::now();
        let outs = if request.path == "/create" {
            // The session is made when the init message arrives: a socket that never sends
            // one holds no session slot, and is closed after SANDBOX_WS_INIT_TIMEOUT_SECS.
            match self.session_limit_refusal() {
                Some(refused) => refused,
                None => {
                    socket.wait_for(Waiting::Init, now);
                    Vec::new()
                }
            }
        } else {
            self.attach(id, &mut socket, request, now)
        };
        let alive = socket.apply(outs);
        self.websockets.insert(id, socket);
        if !alive {
            self.drop_websocket(id);
        }
    }

    /// The refusal of a new session when the server is at its limit.
    pub(super) fn session_limit_refusal(&self) -> Option<Vec<Out>> {
        let limit = self.config.ws.max_sessions;
        (self.sessions.len() >= limit).then(|| {
            let message = format!("the server is at its limit of {limit} sessions; retry shortly");
            refusal("SANDBOX_CREATION_ERROR", &message, 1013)
        })
    }

    /// The init message arrived on a `/create` socket: make the session and let it create its
    /// sandbox.
    fn start_session(&mut self, id: u64, init: &str) {
        if let Some(refused) = self.session_limit_refusal() {
            return self.refuse(id, refused);
        }
        let mut token = [0u8; 16];
        if let Err(error) = crate::runtime::ids::random_bytes(&mut token) {
            let message = format!("cannot make a session token: {error}");
            return self.refuse(id, refusal("SANDBOX_CREATION_ERROR", &message, 4000));
        }
        let token: String = token.iter().map(|byte| format!("{byte:02x}")).collect();
        let session_id = self.next_session;
        self.next_session += 1;
        let now = Instant::now();
        let mut session = Session::new(session_id, token, self.session_settings(), now);
        let outs = session.on_init(
            init,
            &mut Control {
                runtime: &mut self.runtime,
                snapshots: &mut self.snapshots,
                snapshot_root: self.config.snapshot_path.as_deref(),
                rootfs_stamp: &self.rootfs_stamp,
            },
            now,
        );
        if session.sandbox().is_some() {
            self.session_by_sandbox_id
                .insert(session.sandbox_id().to_string(), session_id);
        }
        self.sessions.insert(session_id, session);
        self.session_connection.insert(session_id, id);
        if let Some(socket) = self.websockets.get_mut(&id) {
            socket.session = Some(session_id);
        }
        self.deliver(session_id, outs);
    }

    /// Send a refusal on a socket that has no session.
    pub(super) fn refuse(&mut self, id: u64, outs: Vec<Out>) {
        if let Some(socket) = self.websockets.get_mut(&id) {
            socket.wait_for(Waiting::Nothing, Instant::now());
            if !socket.apply(outs) {
                self.drop_websocket(id);
            }
        }
    }

    /// `/attach/{id}?sandbox_token=T`: find, check the token (first), check it is free.
    pub(super) fn attach(
        &mut self,
        id: u64,
        socket: &mut WsConnection,
        request: &Request,
        now: Instant,
    ) -> Vec<Out> {
        let sandbox_id = request
            .path
            .trim_start_matches("/attach/")
            .trim_end_matches('/');
        let query = crate::http::query::parse_query(&request.query);
        let token = match crate::http::query::single_param(&query, "sandbox_token") {
            Ok(token) => token.unwrap_or(""),
            Err(message) => return refusal("SANDBOX_PERMISSION_DENIAL_ERROR", &message, 4000),
        };
        let Some(session_id) = self.session_by_sandbox_id.get(sandbox_id).copied() else {
            // Not live here: it may be checkpointed in the shared store.
            if let Some(outs) = self.begin_restore_attach(id, sandbox_id, token) {
                socket.wait_for(Waiting::StoreAnswer, now);
                return outs;
            }
            let message = format!("sandbox {sandbox_id:?} does not exist on this server");
            return refusal("SANDBOX_NOT_FOUND", &message, 1011);
        };
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return vec![Out::Close(1011, "not found".into())];
        };
        if !token_matches(session.token_sha256(), token) {
            let message = "wrong or missing sandbox_token";
            return refusal("SANDBOX_PERMISSION_DENIAL_ERROR", message, 4000);
        }
        if !session.is_running() {
            let message = format!("sandbox {sandbox_id} is not running");
            return refusal("SANDBOX_NOT_FOUND", &message, 1011);
        }
        if session.is_attached() {
            let message = format!("sandbox {sandbox_id} is in use by another connection");
            return refusal("SANDBOX_IN_USE", &message, 1011);
        }
        socket.session = Some(session_id);
        self.session_connection.insert(session_id, id);
        session.on_attach(now)
    }

    pub(super) fn websocket_ready(&mut self, id: u64, readable: bool, writable: bool) {
        if self
            .websockets
            .get(&id)
            .is_some_and(WsConnection::is_lingering)
        {
            return self.linger(id);
        }
        if readable {
            loop {
                let Some(socket) = self.websockets.get_mut(&id) else {
                    return;
                };
                match socket.read() {
                    Incoming::Text(text) => self.websocket_message(id, &text),
                    Incoming::Idle => break,
                    Incoming::Gone => return self.drop_websocket(id),
                    Incoming::Refused => {
                        // The session lives on without this socket, as after any disconnect.
                        if let Some(session) = socket.session {
                            self.detach(session);
                        }
                        return self.linger(id);
                    }
                }
            }
        }
        if writable || readable {
            let Some(socket) = self.websockets.get_mut(&id) else {
                return;
            };
            if !socket.flush() {
                return self.drop_websocket(id);
            }
            if socket.output_paused && socket.unflushed == 0 {
                socket.output_paused = false;
                let sandbox = socket
                    .session
                    .and_then(|session| self.sessions.get(&session))
                    .and_then(Session::sandbox);
                if let Some(sandbox) = sandbox {
                    self.runtime.set_output_paused(sandbox, false);
                }
            }
        }
    }

    /// Deliver a refused peer's close, then drop the socket (see `WsConnection::linger`).
    fn linger(&mut self, id: u64) {
        let Some(socket) = self.websockets.get_mut(&id) else {
            return;
        };
        if socket.linger() == Linger::Done {
            self.drop_websocket(id);
        }
    }

    pub(super) fn websocket_message(&mut self, id: u64, text: &str) {
        crate::guard::test_panic_point(text.as_bytes());
        let Some(socket) = self.websockets.get_mut(&id) else {
            return;
        };
        if socket.waiting == Waiting::Init {
            socket.wait_for(Waiting::Nothing, Instant::now());
            return self.start_session(id, text);
        }
        // Without a session (waiting for the store, or refused and closing) there is nobody
        // to give the message to.
        let Some(session_id) = socket.session else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        let mut control = Control {
            runtime: &mut self.runtime,
            snapshots: &mut self.snapshots,
            snapshot_root: self.config.snapshot_path.as_deref(),
            rootfs_stamp: &self.rootfs_stamp,
        };
        let outs = session.on_message(text, &mut control, Instant::now());
        self.deliver(session_id, outs);
    }

    pub(super) fn session_event(&mut self, session_id: SessionId, event: RuntimeEvent) {
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        let outs = session.on_runtime(
            event,
            &mut Control {
                runtime: &mut self.runtime,
                snapshots: &mut self.snapshots,
                snapshot_root: self.config.snapshot_path.as_deref(),
                rootfs_stamp: &self.rootfs_stamp,
            },
        );
        self.deliver(session_id, outs);
    }

    /// Send a session's frames to its connection (if attached) and forget ended sessions.
    pub(super) fn deliver(&mut self, session_id: SessionId, outs: Vec<Out>) {
        let (saves, outs): (Vec<Out>, Vec<Out>) = outs
            .into_iter()
            .partition(|out| matches!(out, Out::Save(_)));
        let closing = outs.iter().any(|out| matches!(out, Out::Close(..)));
        // kill_sandbox removes the saved state before the client hears SANDBOX_KILLED, so an
        // attach right after it finds nothing to restore.
        if let Some(session) = self.sessions.get(&session_id) {
            if session.is_ended() && session.was_killed() && session.is_checkpointable() {
                if let Some(base) = self.checkpoint_base(session.sandbox_id()) {
                    let _ = std::fs::remove_dir_all(base);
                }
            }
        }
        if let Some(connection) = self.session_connection.get(&session_id).copied() {
            if let Some(socket) = self.websockets.get_mut(&connection) {
                if !outs.is_empty() && !socket.apply(outs) {
                    self.drop_websocket(connection);
                } else if socket.unflushed > WS_HIGH_WATER && !socket.output_paused {
                    socket.output_paused = true;
                    if let Some(sandbox) = self.sessions.get(&session_id).and_then(Session::sandbox)
                    {
                        self.runtime.set_output_paused(sandbox, true);
                    }
                }
            }
            if closing {
                // The session lives on (until deleted or its idle timeout) without this socket.
                self.detach(session_id);
            }
        }
        if self
            .sessions
            .get(&session_id)
            .is_some_and(Session::is_ended)
        {
            self.detach(session_id);
            self.release_lease(session_id);
            self.saves.remove(&session_id);
            if let Some(session) = self.sessions.remove(&session_id) {
                self.session_by_sandbox_id.remove(session.sandbox_id());
                if let Some(sandbox) = session.sandbox() {
                    self.runtime.delete(sandbox);
                }
            }
            return;
        }
        for save in saves {
            if let Out::Save(request) = save {
                self.start_save(session_id, request);
            }
        }
        if self
            .sessions
            .get(&session_id)
            .is_some_and(|session| session.is_running())
        {
            self.claim_lease(session_id);
        }
    }

    pub(super) fn detach(&mut self, session_id: SessionId) {
        if let Some(connection) = self.session_connection.remove(&session_id) {
            if let Some(socket) = self.websockets.get_mut(&connection) {
                socket.session = None;
            }
        }
        if let Some(session) = self.sessions.get_mut(&session_id) {
            session.on_detach(Instant::now());
            if session.sandbox().is_none() {
                // Never got past the init message: nothing to keep.
                self.sessions.remove(&session_id);
            }
        }
    }

    pub(super) fn drop_websocket(&mut self, id: u64) {
        if let Some(mut socket) = self.websockets.remove(&id) {
            if let Some(session) = socket.session {
                self.detach(session);
            }
            let _ = self.poll.registry().deregister(socket.stream_mut());
        }
    }

    fn tick_session(&mut self, session_id: SessionId, now: Instant) {
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        let outs = session.on_tick(
            now,
            &mut Control {
                runtime: &mut self.runtime,
                snapshots: &mut self.snapshots,
                snapshot_root: self.config.snapshot_path.as_deref(),
                rootfs_stamp: &self.rootfs_stamp,
            },
        );
        if !outs.is_empty() {
            self.deliver(session_id, outs);
        }
    }

    /// Idle timeouts of sessions, keep-alive pings and close deadlines of sockets.
    pub(super) fn sweep_websockets(&mut self, now: Instant) {
        let sessions: Vec<SessionId> = self.sessions.keys().copied().collect();
        for session_id in sessions {
            self.guarded(Peer::Session(session_id), |server| {
                server.tick_session(session_id, now)
            });
        }
        let ws = &self.config.ws;
        let bounds = WaitBounds {
            init: ws.init_timeout,
            store_answer: self.config.create_timeout,
        };
        let mut dead = Vec::new();
        let mut overdue_sockets = Vec::new();
        for (id, socket) in self.websockets.iter_mut() {
            let quiet = now.saturating_duration_since(socket.last_seen);
            let close_expired = socket
                .closing_since
                .is_some_and(|since| now.saturating_duration_since(since) > CLOSE_DEADLINE);
            let waited = now.saturating_duration_since(socket.waiting_since);
            if quiet > ws.pong_timeout || close_expired {
                dead.push(*id);
            } else if let Some(refused) = overdue(socket.waiting, waited, bounds) {
                overdue_sockets.push((*id, refused));
            } else if quiet > ws.ping_interval && !socket.ping_sent {
                socket.ping();
            }
        }
        for id in dead {
            self.drop_websocket(id);
        }
        for (id, refused) in overdue_sockets {
            eprintln!("server: websocket {id}: {}", refusal_message(&refused));
            self.refuse(id, refused);
        }
    }
}

/// The message of a refusal, for the log.
fn refusal_message(outs: &[Out]) -> String {
    outs.iter()
        .find_map(|out| match out {
            Out::Send(text) => serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|value| value["message"].as_str().map(str::to_string)),
            _ => None,
        })
        .unwrap_or_default()
}
