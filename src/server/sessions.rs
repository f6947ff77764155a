//! WebSocket sessions in the event loop: the registry of sessions ([`Sessions`]), and the glue
//! that feeds each session machine (`crate::session`) its messages and notices and carries out
//! what it returns: frames to its socket, work for the persistence pipeline.

use std::collections::HashMap;
use std::time::Instant;

use super::api::Upgrade;
use super::attach::{self, LiveSandbox, Start};
use super::connection::ConnectionId;
use super::expired::ExpiredSandboxes;
use super::recovery::Peer;
use super::websocket::{
    self, overdue, Incoming, Linger, WaitBounds, Waiting, WsConnection, CLOSE_DEADLINE,
    WS_HIGH_WATER,
};
use super::Server;
use crate::agent_protocol::{ExecId, TerminalSize};
use crate::runtime::exec::Reason;
use crate::runtime::{ExecSpec, Owner, Runtime, RuntimeError, RuntimeEvent, SandboxKey};
use crate::session::{
    refusal, CreateOptions, Out, SandboxControl, Session, SessionId, SessionSettings, SessionView,
    Status,
};

/// The sessions of this server: by id, by the public id of their sandbox, and the connection
/// each one is attached to (if any); and the sandboxes their idle timeout deleted lately.
#[derive(Default)]
pub struct Sessions {
    sessions: HashMap<SessionId, Session>,
    by_sandbox_id: HashMap<String, SessionId>,
    connections: HashMap<SessionId, ConnectionId>,
    last_id: u64,
    expired: ExpiredSandboxes,
}

impl Sessions {
    pub fn new_id(&mut self) -> SessionId {
        self.last_id += 1;
        SessionId(self.last_id)
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn ids(&self) -> Vec<SessionId> {
        self.sessions.keys().copied().collect()
    }

    pub fn get(&self, id: SessionId) -> Option<&Session> {
        self.sessions.get(&id)
    }

    pub fn get_mut(&mut self, id: SessionId) -> Option<&mut Session> {
        self.sessions.get_mut(&id)
    }

    /// Add a session (findable by its sandbox's id once it has a sandbox).
    pub fn insert(&mut self, session: Session) {
        let id = session.id;
        self.sessions.insert(id, session);
        self.index_sandbox(id);
    }

    /// Make the session findable by its sandbox's public id, once it has one.
    pub fn index_sandbox(&mut self, id: SessionId) {
        if let Some(session) = self.sessions.get(&id) {
            if session.sandbox().is_some() {
                self.by_sandbox_id
                    .insert(session.sandbox_id().to_string(), id);
            }
        }
    }

    /// The session of the sandbox with public id `sandbox_id`, as an attach sees it.
    pub fn live_sandbox(&self, sandbox_id: &str) -> Option<LiveSandbox<'_>> {
        let id = *self.by_sandbox_id.get(sandbox_id)?;
        let session = self.sessions.get(&id)?;
        Some(LiveSandbox {
            session: id,
            token_sha256: session.token_sha256(),
            running: session.is_running(),
            attached: session.is_attached(),
            moving: session.is_moving(),
        })
    }

    /// What `GET /sandboxes` lists: the sessions that have a sandbox, by sandbox id.
    pub fn views(&self, now: Instant) -> Vec<SessionView> {
        let mut views: Vec<SessionView> = self
            .by_sandbox_id
            .values()
            .filter_map(|id| self.sessions.get(id))
            .map(|session| session.view(now))
            .collect();
        views.sort_by(|a, b| a.sandbox_id.cmp(&b.sandbox_id));
        views
    }

    /// Sandboxes that are being saved must survive a shutdown's deletions.
    pub fn sandboxes_of(&self, ids: impl Iterator<Item = SessionId>) -> Vec<SandboxKey> {
        ids.filter_map(|id| self.sessions.get(&id).and_then(Session::sandbox))
            .collect()
    }

    pub fn link(&mut self, session: SessionId, connection: ConnectionId) {
        self.connections.insert(session, connection);
    }

    pub fn unlink(&mut self, session: SessionId) -> Option<ConnectionId> {
        self.connections.remove(&session)
    }

    pub fn connection(&self, session: SessionId) -> Option<ConnectionId> {
        self.connections.get(&session).copied()
    }

    /// Forget a session (and where to find it); one its idle timeout ended is remembered.
    pub fn remove(&mut self, id: SessionId) -> Option<Session> {
        self.connections.remove(&id);
        let session = self.sessions.remove(&id)?;
        if self.by_sandbox_id.get(session.sandbox_id()) == Some(&id) {
            self.by_sandbox_id.remove(session.sandbox_id());
        }
        if let Some(idle_timeout) = session.idle_expired() {
            self.expired.remember(
                session.sandbox_id(),
                session.token_sha256(),
                idle_timeout,
                Instant::now(),
            );
        }
        Some(session)
    }

    /// Why an attach to `sandbox_id` finds nothing, if its idle timeout deleted it lately
    /// (told only to a client with its token).
    pub fn why_gone(&mut self, sandbox_id: &str, token: &str) -> Option<String> {
        self.expired.why_gone(sandbox_id, token, Instant::now())
    }
}

/// The runtime as a session sees it.
pub(super) struct Control<'a>(pub &'a mut Runtime);

impl SandboxControl for Control<'_> {
    fn acquire(
        &mut self,
        session: SessionId,
        options: &CreateOptions,
    ) -> Result<SandboxKey, RuntimeError> {
        let owner = Owner::Session(session.0);
        match (&options.snapshot_image, options.egress) {
            (Some(image), egress) => self.0.acquire_snapshot(owner, image.clone(), egress),
            (None, true) => self.0.create_with(Some(owner), true),
            (None, false) => self.0.acquire(owner),
        }
    }
    fn sandbox_id(&self, sandbox: SandboxKey) -> String {
        self.0
            .sandbox_id(sandbox)
            .map(|id| id.to_string())
            .unwrap_or_default()
    }
    fn start_exec(&mut self, sandbox: SandboxKey, spec: ExecSpec) -> Result<ExecId, RuntimeError> {
        self.0.start_exec(sandbox, spec)
    }
    fn write_stdin(
        &mut self,
        sandbox: SandboxKey,
        exec: ExecId,
        data: &[u8],
    ) -> Result<(), RuntimeError> {
        self.0.write_stdin(sandbox, exec, data)
    }
    fn close_stdin(&mut self, sandbox: SandboxKey, exec: ExecId) -> Result<(), RuntimeError> {
        self.0.close_stdin(sandbox, exec)
    }
    fn kill_exec(&mut self, sandbox: SandboxKey, exec: ExecId) -> Result<(), RuntimeError> {
        self.0.kill_exec(sandbox, exec, Reason::Killed)
    }
    fn delete(&mut self, sandbox: SandboxKey) {
        self.0.delete(sandbox)
    }
    fn set_exec_output_paused(&mut self, sandbox: SandboxKey, exec: ExecId, paused: bool) {
        self.0.set_exec_output_paused(sandbox, exec, paused)
    }
    fn resize_terminal(
        &mut self,
        sandbox: SandboxKey,
        exec: ExecId,
        size: TerminalSize,
    ) -> Result<(), RuntimeError> {
        self.0.resize_terminal(sandbox, exec, size)
    }
    fn context_command(
        &mut self,
        sandbox: SandboxKey,
        command: crate::agent_protocol::ContextCommand,
    ) -> Result<(), RuntimeError> {
        self.0.context_command(sandbox, command)
    }
}

impl Server {
    pub(super) fn session_settings(&self) -> SessionSettings {
        SessionSettings {
            checkpoint_enabled: self.config.checkpoint_path.is_some(),
            snapshot_enabled: self.config.snapshot_path.is_some(),
            default_idle_timeout: self.config.ws.default_idle_timeout,
            max_idle_timeout: self.config.ws.max_idle_timeout,
            exec: self.exec_limits(),
            held_output_bytes: self.config.ws.detached_output_bytes,
            resend_output_bytes: self.config.ws.resend_output_bytes,
            egress_unavailable: self.runtime.egress_unavailable().map(str::to_string),
            store_timeout: self.config.create_timeout,
            max_session_processes: self.config.ws.max_session_processes,
            stdin_window_bytes: self.config.ws.stdin_window_bytes,
            max_result_bytes: self.config.limits.max_result_bytes,
        }
    }

    /// Answer the handshake and hand the socket to tungstenite, then start or attach a session.
    pub(super) fn upgrade(
        &mut self,
        id: ConnectionId,
        key: &str,
        target: Upgrade,
        subprotocol: Option<&str>,
        origin: String,
    ) {
        let Some(mut connection) = self.connections.http.remove(&id) else {
            return;
        };
        connection
            .out
            .extend_from_slice(&websocket::handshake_response(key, subprotocol));
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
        socket.origin = origin;
        let now = Instant::now();
        let outs = match target {
            // The session is made when the init message arrives: a socket that never sends
            // one holds no session slot, and is closed after SANDBOX_WS_INIT_TIMEOUT_SECS.
            Upgrade::Create => match self.session_limit_refusal() {
                Some(refused) => refused,
                None => {
                    socket.wait_for(Waiting::Init, now);
                    Vec::new()
                }
            },
            Upgrade::Attach { sandbox_id, token } => {
                self.attach(id, &mut socket, &sandbox_id, &token, now)
            }
        };
        let alive = socket.apply(outs);
        self.connections.websockets.insert(id, socket);
        if !alive {
            self.drop_websocket(id);
        }
    }

    /// The refusal of a new session when the server is at its limit.
    pub(super) fn session_limit_refusal(&self) -> Option<Vec<Out>> {
        let limit = self.config.ws.max_sessions;
        (self.sessions.len() >= limit).then(|| {
            let message = format!("the server is at its limit of {limit} sessions; retry shortly");
            refusal(Status::CreationError, &message, 1013)
        })
    }

    /// The init message arrived on a `/create` socket: make the session and let it create its
    /// sandbox.
    fn start_session(&mut self, id: ConnectionId, init: &str) {
        if let Some(refused) = self.session_limit_refusal() {
            return self.refuse(id, refused);
        }
        let mut token = [0u8; 16];
        if let Err(error) = crate::ids::random_bytes(&mut token) {
            let message = format!("cannot make a session token: {error}");
            return self.refuse(id, refusal(Status::CreationError, &message, 4000));
        }
        let token: String = token.iter().map(|byte| format!("{byte:02x}")).collect();
        let expose = match super::ports::parse_expose_ports(init) {
            Ok(ports) => ports,
            Err(message) => return self.refuse(id, refusal(Status::CreationError, &message, 4000)),
        };
        let session_id = self.sessions.new_id();
        let now = Instant::now();
        let mut session = Session::new(session_id, token, self.session_settings(), now);
        let outs = session.on_init(init, &mut Control(&mut self.runtime), now);
        if session.sandbox().is_some() && !expose.is_empty() {
            let origin = self
                .connections
                .websockets
                .get(&id)
                .map(|socket| socket.origin.clone())
                .unwrap_or_default();
            self.expose_at_create(&session, &expose, &origin);
        }
        self.sessions.insert(session);
        self.sessions.link(session_id, id);
        if let Some(socket) = self.connections.websockets.get_mut(&id) {
            socket.session = Some(session_id);
        }
        self.deliver(session_id, outs);
    }

    /// Send a refusal on a socket that has no session.
    pub(super) fn refuse(&mut self, id: ConnectionId, outs: Vec<Out>) {
        if let Some(socket) = self.connections.websockets.get_mut(&id) {
            socket.wait_for(Waiting::Nothing, Instant::now());
            if !socket.apply(outs) {
                self.drop_websocket(id);
            }
        }
    }

    /// `/attach/{id}?sandbox_token=T` (see `attach`): join a live session, refuse, or ask the
    /// store on a worker thread.
    fn attach(
        &mut self,
        id: ConnectionId,
        socket: &mut WsConnection,
        sandbox_id: &str,
        token: &Result<String, String>,
        now: Instant,
    ) -> Vec<Out> {
        if self.sessions.live_sandbox(sandbox_id).is_none() {
            let gone = token
                .as_ref()
                .ok()
                .and_then(|token| self.sessions.why_gone(sandbox_id, token));
            if let Some(message) = gone {
                return refusal(Status::NotFound, &message, 1011);
            }
        }
        let live = self.sessions.live_sandbox(sandbox_id);
        let store = self.persistence.has_checkpoint_store();
        match attach::start(sandbox_id, token, live, store) {
            Start::Refuse(out) => out,
            Start::AskStore(stored) => {
                self.persistence.ask_store(id, stored);
                socket.wait_for(Waiting::StoreAnswer, now);
                Vec::new()
            }
            Start::Join(session_id) => {
                let Some(session) = self.sessions.get_mut(session_id) else {
                    return vec![Out::Close(1011, "not found".into())];
                };
                socket.session = Some(session_id);
                let outs = session.on_attach(now);
                self.sessions.link(session_id, id);
                outs
            }
        }
    }

    pub(super) fn websocket_ready(&mut self, id: ConnectionId, readable: bool, writable: bool) {
        if self
            .connections
            .websockets
            .get(&id)
            .is_some_and(WsConnection::is_lingering)
        {
            return self.linger(id);
        }
        if readable {
            loop {
                let Some(socket) = self.connections.websockets.get_mut(&id) else {
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
            let Some(socket) = self.connections.websockets.get_mut(&id) else {
                return;
            };
            if !socket.flush() {
                return self.drop_websocket(id);
            }
            if socket.output_paused && socket.unflushed == 0 {
                socket.output_paused = false;
                let sandbox = socket
                    .session
                    .and_then(|session| self.sessions.get(session))
                    .and_then(Session::sandbox);
                if let Some(sandbox) = sandbox {
                    self.runtime.set_output_paused(sandbox, false);
                }
            }
        }
    }

    /// Deliver a refused peer's close, then drop the socket (see `WsConnection::linger`).
    fn linger(&mut self, id: ConnectionId) {
        let Some(socket) = self.connections.websockets.get_mut(&id) else {
            return;
        };
        if socket.linger() == Linger::Done {
            self.drop_websocket(id);
        }
    }

    fn websocket_message(&mut self, id: ConnectionId, text: &str) {
        crate::guard::test_panic_point(text.as_bytes());
        let Some(socket) = self.connections.websockets.get_mut(&id) else {
            return;
        };
        if socket.waiting == Waiting::Init {
            socket.wait_for(Waiting::Nothing, Instant::now());
            return self.start_session(id, text);
        }
        if self.port_message(id, text) {
            return;
        }
        let Some(socket) = self.connections.websockets.get_mut(&id) else {
            return;
        };
        // Without a session (waiting for the store, or refused and closing) there is nobody
        // to give the message to.
        let Some(session_id) = socket.session else {
            return;
        };
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        let outs = session.on_message(text, &mut Control(&mut self.runtime), Instant::now());
        self.deliver(session_id, outs);
    }

    /// A runtime notice for a session's sandbox: the save pipeline's, or the session's.
    pub(super) fn session_notice(&mut self, session_id: SessionId, event: RuntimeEvent) {
        if self.save_notice(session_id, &event) {
            return;
        }
        let ready = matches!(event, RuntimeEvent::Ready);
        if let RuntimeEvent::ExecFinished(_, outcome) = &event {
            *self
                .metrics
                .session_executions
                .entry(outcome.reason.as_str())
                .or_default() += 1;
        }
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        let outs = session.on_runtime(event, &mut Control(&mut self.runtime));
        self.deliver(session_id, outs);
        if ready {
            self.claim_lease_if_new(session_id);
        }
    }

    /// A new checkpointable sandbox is running: take its lease now that its id is known to
    /// the client.
    fn claim_lease_if_new(&mut self, session_id: SessionId) {
        let Some(session) = self.sessions.get(session_id) else {
            return;
        };
        if session.is_running() && session.is_checkpointable() {
            self.persistence.claim_lease(
                session_id,
                session.sandbox_id(),
                session.token_sha256(),
                session.allows_handoff(),
            );
        }
    }

    /// The store found (or not) the snapshot a session is created from.
    pub(super) fn snapshot_found(
        &mut self,
        session_id: SessionId,
        image: Result<std::path::PathBuf, String>,
    ) {
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        let outs = session.on_snapshot_found(image, &mut Control(&mut self.runtime));
        self.sessions.index_sandbox(session_id);
        self.deliver(session_id, outs);
    }

    /// The store removed a killed session's saved state.
    pub(super) fn saved_state_removed(&mut self, session_id: SessionId) {
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        let outs = session.on_saved_state_removed();
        self.deliver(session_id, outs);
    }

    pub(super) fn flush_session_output(&mut self, session_id: SessionId) {
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        let outs = session.flush_output(&mut Control(&mut self.runtime));
        if !outs.is_empty() {
            self.deliver(session_id, outs);
        }
    }

    /// Carry out what a session returned: frames to its connection (if attached, with
    /// back-pressure), work to the persistence pipeline; forget it once it has ended.
    pub(super) fn deliver(&mut self, session_id: SessionId, outs: Vec<Out>) {
        // HTTP file transfers' events go to their connections first (they are not the
        // WebSocket's, and must reach them even when the session ends in this batch).
        let (http_files, outs): (Vec<Out>, Vec<Out>) = outs
            .into_iter()
            .partition(|out| matches!(out, Out::HttpFile { .. }));
        for out in http_files {
            if let Out::HttpFile {
                connection,
                exec,
                event,
            } = out
            {
                self.http_file_event(connection, exec, event);
            }
        }
        let (work, frames): (Vec<Out>, Vec<Out>) = outs.into_iter().partition(|out| {
            matches!(
                out,
                Out::Save(_)
                    | Out::FindSnapshot(_)
                    | Out::RemoveSavedState
                    | Out::HandoffRefused(_)
            )
        });
        let closing = frames.iter().any(|out| matches!(out, Out::Close(..)));
        if self.mcp.owns(session_id) {
            // The virtual client of `/mcp` takes the events of its sandbox.
            self.mcp_frames(session_id, frames);
        } else if let Some(connection) = self.sessions.connection(session_id) {
            if let Some(socket) = self.connections.websockets.get_mut(&connection) {
                if !frames.is_empty() && !socket.apply(frames) {
                    self.drop_websocket(connection);
                } else if socket.unflushed > WS_HIGH_WATER && !socket.output_paused {
                    socket.output_paused = true;
                    if let Some(sandbox) = self.sessions.get(session_id).and_then(Session::sandbox)
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
        if self.sessions.get(session_id).is_some_and(Session::is_ended) {
            return self.forget_session(session_id);
        }
        for out in work {
            match out {
                Out::Save(request) => self.start_save(session_id, request),
                Out::FindSnapshot(name) => self.persistence.find_snapshot(session_id, &name),
                Out::HandoffRefused(reason) => self.persistence.refuse_handoff(session_id, reason),
                Out::RemoveSavedState => {
                    if let Some(session) = self.sessions.get(session_id) {
                        let sandbox_id = session.sandbox_id().to_string();
                        self.persistence.remove_saved_state(session_id, &sandbox_id);
                    }
                }
                Out::Send(_) | Out::Close(..) | Out::HttpFile { .. } => {}
            }
        }
    }

    /// An ended session goes: its lease, its save, its sandbox (if still there).
    pub(super) fn forget_session(&mut self, session_id: SessionId) {
        if self.mcp.owns(session_id) {
            self.mcp_sandbox_gone(session_id);
        }
        self.detach(session_id);
        self.persistence.forget(session_id);
        if let Some(session) = self.sessions.remove(session_id) {
            self.forget_session_ports(&session);
            if let Some(sandbox) = session.sandbox() {
                self.runtime.delete(sandbox);
            }
        }
    }

    pub(super) fn detach(&mut self, session_id: SessionId) {
        if let Some(connection) = self.sessions.unlink(session_id) {
            let mut was_paused = false;
            if let Some(socket) = self.connections.websockets.get_mut(&connection) {
                socket.session = None;
                was_paused = std::mem::take(&mut socket.output_paused);
            }
            if was_paused {
                self.resume_connection_output(session_id);
            }
        }
        if let Some(session) = self.sessions.get_mut(session_id) {
            session.on_detach(Instant::now());
            session.abandon_file_transfers(&mut Control(&mut self.runtime));
            if session.sandbox().is_none() {
                // Never got a sandbox (no init yet, or its snapshot is still looked up):
                // nothing to keep.
                self.sessions.remove(session_id);
            }
        }
    }

    pub(super) fn drop_websocket(&mut self, id: ConnectionId) {
        if let Some(mut socket) = self.connections.websockets.remove(&id) {
            if let Some(session) = socket.session {
                if socket.output_paused {
                    self.resume_connection_output(session);
                }
                self.detach(session);
            }
            let _ = self.poll.registry().deregister(socket.stream_mut());
        }
    }

    /// The connection whose full buffer paused its session's sandbox is gone: the output
    /// goes on (held for the next client, within its own bound).
    fn resume_connection_output(&mut self, session_id: SessionId) {
        let sandbox = self.sessions.get(session_id).and_then(Session::sandbox);
        if let Some(sandbox) = sandbox {
            self.runtime.set_output_paused(sandbox, false);
        }
    }

    fn tick_session(&mut self, session_id: SessionId, now: Instant) {
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        let outs = session.on_tick(now, &mut Control(&mut self.runtime));
        if !outs.is_empty() {
            self.deliver(session_id, outs);
        }
    }

    /// Idle timeouts of sessions, keep-alive pings and close deadlines of sockets.
    pub(super) fn sweep_websockets(&mut self, now: Instant) {
        for session_id in self.sessions.ids() {
            self.guarded(Peer::Session(session_id), |server| {
                server.tick_session(session_id, now)
            });
        }
        let ws = &self.config.ws;
        let bounds = WaitBounds {
            init: ws.init_timeout,
            store_answer: self.config.create_timeout,
            handoff: self.persistence.handoff_bound(self.config.create_timeout),
        };
        let mut dead = Vec::new();
        let mut overdue_sockets = Vec::new();
        for (id, socket) in self.connections.websockets.iter_mut() {
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
            Out::Send(event) => event.message().map(str::to_string),
            _ => None,
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::exec_options::ExecLimits;
    use std::time::Duration;

    fn settings() -> SessionSettings {
        SessionSettings {
            checkpoint_enabled: false,
            snapshot_enabled: false,
            default_idle_timeout: Duration::from_secs(300),
            max_idle_timeout: Duration::from_secs(300),
            exec: ExecLimits {
                default_timeout: Duration::from_secs(60),
                max_timeout: Duration::from_secs(60),
                max_code_bytes: 100,
            },
            held_output_bytes: 100,
            resend_output_bytes: 1 << 20,
            egress_unavailable: None,
            store_timeout: Duration::from_secs(30),
            max_session_processes: 16,
            stdin_window_bytes: 4 * 1024 * 1024,
            max_result_bytes: 1024,
        }
    }

    #[test]
    fn the_registry_finds_sessions_by_sandbox_once_they_have_one() {
        let mut sessions = Sessions::default();
        let first = sessions.new_id();
        let second = sessions.new_id();
        assert_eq!((first, second), (SessionId(1), SessionId(2)));
        let now = Instant::now();
        sessions.insert(Session::new(first, "t".into(), settings(), now));
        assert_eq!(sessions.len(), 1);
        // No sandbox yet: nothing to attach to (an empty id finds nothing either).
        assert!(sessions.live_sandbox("").is_none());
        let hash = crate::session::token::hash("u");
        let saved = crate::session::SavedState::default();
        let restored = Session::restored(
            second,
            hash.clone(),
            &saved,
            SandboxKey(7),
            "abc".into(),
            settings(),
            now,
        );
        sessions.insert(restored);
        let live = sessions
            .live_sandbox("abc")
            .expect("findable by its sandbox");
        assert_eq!(live.session, second);
        assert_eq!(live.token_sha256, hash);
        assert!(!live.running, "still restoring");
        assert_eq!(
            sessions.sandboxes_of([first, second].into_iter()),
            [SandboxKey(7)]
        );
        assert!(sessions.remove(second).is_some());
        assert!(sessions.live_sandbox("abc").is_none());
        sessions.link(first, ConnectionId(9));
        assert_eq!(sessions.connection(first), Some(ConnectionId(9)));
        assert_eq!(sessions.unlink(first), Some(ConnectionId(9)));
        assert_eq!(sessions.connection(first), None);
        assert!(sessions.remove(first).is_some());
        assert!(sessions.remove(first).is_none());
        assert_eq!(sessions.len(), 0);
    }
}
