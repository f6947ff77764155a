//! The event loop: one `mio::Poll` for the listening socket, the client connections, the
//! agents' pipes (through the runtime) and the signal pipes. It moves bytes and dispatches;
//! decisions live in the runtime, the lifecycle machines and the request handlers.

mod auth;
mod connection;
mod execute;
mod jobs;
mod persistence;
mod recovery;
mod sessions;
mod websocket;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, UnixStream};
use mio::{Events, Interest, Poll};

use crate::config::Config;
use crate::http::request::{
    HeadCheck, HttpError, Limits as ParserLimits, Progress, Request, RequestParser,
};
use crate::http::response::{full_response, json_error, unauthorized, ResponseHead};
use crate::io_token::{split, token, Tag};
use crate::metrics::{Gauges, Metrics};
use crate::runtime::exec::Reason;
use crate::runtime::{ExecSpec, Notice, Owner, Runtime, RuntimeError, RuntimeEvent, SandboxKey};
use crate::session::{CreateOptions, SandboxControl, Session, SessionId};
use connection::{Connection, Phase, ReadOutcome, OUT_HIGH_WATER, OUT_LOW_WATER};
use execute::ExecuteJob;
use recovery::Peer;
use websocket::WsConnection;

const SIGCHLD_PIPE: u64 = 0;
const TERMINATE_PIPE: u64 = 1;
/// How often connection deadlines are checked.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    config: Config,
    runtime: Runtime,
    connections: HashMap<u64, Connection>,
    next_connection: u64,
    sigchld: UnixStream,
    terminate: UnixStream,
    shutdown_deadline: Option<Instant>,
    metrics: Metrics,
    next_sweep: Instant,
    websockets: HashMap<u64, WsConnection>,
    sessions: HashMap<SessionId, Session>,
    session_by_sandbox_id: HashMap<String, SessionId>,
    session_connection: HashMap<SessionId, u64>,
    next_session: SessionId,
    jobs: jobs::Jobs<persistence::JobResult>,
    saves: HashMap<SessionId, persistence::PendingSave>,
    snapshots: persistence::SnapshotCache,
    /// Leases of checkpointable sandboxes live here: directory and lease (once taken).
    leases: HashMap<SessionId, (std::path::PathBuf, Option<crate::store::lease::Lease>)>,
    next_lease_renewal: Instant,
    /// Names this server process in leases.
    instance_id: String,
    /// The sandbox image's stamp, recorded with checkpoints.
    rootfs_stamp: String,
    snapshots_created: u64,
    /// The API key check every request head goes through (`None`: no keys configured).
    head_check: Option<HeadCheck>,
    store_sweep: persistence::StoreSweep,
}

/// The runtime as a session sees it.
pub(crate) struct Control<'a> {
    runtime: &'a mut Runtime,
    snapshots: &'a mut persistence::SnapshotCache,
    snapshot_root: Option<&'a std::path::Path>,
    rootfs_stamp: &'a str,
}

impl SandboxControl for Control<'_> {
    fn acquire(
        &mut self,
        session: SessionId,
        options: &CreateOptions,
    ) -> Result<SandboxKey, RuntimeError> {
        match (&options.snapshot, options.egress) {
            (Some(name), egress) => self.start_from_snapshot(session, name, egress),
            (None, true) => self
                .runtime
                .create_with(Some(Owner::Session(session)), true),
            (None, false) => self.runtime.acquire(Owner::Session(session)),
        }
    }
    fn sandbox_id(&self, sandbox: SandboxKey) -> String {
        self.runtime
            .sandbox_id(sandbox)
            .map(|id| id.to_string())
            .unwrap_or_default()
    }
    fn start_exec(
        &mut self,
        sandbox: SandboxKey,
        spec: ExecSpec,
    ) -> Result<crate::agent_protocol::ExecId, RuntimeError> {
        self.runtime.start_exec(sandbox, spec)
    }
    fn write_stdin(
        &mut self,
        sandbox: SandboxKey,
        exec: crate::agent_protocol::ExecId,
        data: &[u8],
    ) -> Result<(), RuntimeError> {
        self.runtime.write_stdin(sandbox, exec, data)
    }
    fn close_stdin(
        &mut self,
        sandbox: SandboxKey,
        exec: crate::agent_protocol::ExecId,
    ) -> Result<(), RuntimeError> {
        self.runtime.close_stdin(sandbox, exec)
    }
    fn kill_exec(
        &mut self,
        sandbox: SandboxKey,
        exec: crate::agent_protocol::ExecId,
    ) -> Result<(), RuntimeError> {
        self.runtime.kill_exec(sandbox, exec, Reason::Killed)
    }
    fn delete(&mut self, sandbox: SandboxKey) {
        self.runtime.delete(sandbox)
    }
    fn set_output_paused(&mut self, sandbox: SandboxKey, paused: bool) {
        self.runtime.set_output_paused(sandbox, paused)
    }
}

impl Server {
    /// Bind, prepare the runtime and install the signal handlers.
    pub fn new(config: Config) -> io::Result<Self> {
        let poll = Poll::new()?;
        let runtime = Runtime::new(&config, poll.registry().try_clone()?)?;
        let address: SocketAddr = format!("{}:{}", config.listen_addr, config.port)
            .parse()
            .map_err(|error| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("bad listen address: {error}"),
                )
            })?;
        let mut listener = TcpListener::bind(address)?;
        poll.registry()
            .register(&mut listener, token(Tag::Listener, 0), Interest::READABLE)?;
        let sigchld = signal_pipe(&[signal_hook::consts::SIGCHLD])?;
        let terminate = signal_pipe(&[signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])?;
        let (mut sigchld, mut terminate) = (
            UnixStream::from_std(sigchld),
            UnixStream::from_std(terminate),
        );
        poll.registry().register(
            &mut sigchld,
            token(Tag::Signals, SIGCHLD_PIPE),
            Interest::READABLE,
        )?;
        poll.registry().register(
            &mut terminate,
            token(Tag::Signals, TERMINATE_PIPE),
            Interest::READABLE,
        )?;
        eprintln!("server: listening on http://{}", listener.local_addr()?);
        let head_check = auth::head_check(config.api_keys.as_ref());
        if let Some(keys) = &config.api_keys {
            eprintln!(
                "server: requests need one of {} api keys (Authorization: Bearer); {} answer without",
                keys.len(),
                auth::OPEN_PATHS.join(" and ")
            );
        }
        let jobs = jobs::Jobs::new(poll.registry())?;
        let rootfs_stamp = std::fs::read_to_string(config.rootfs.join(".sandbox-image-stamp"))
            .map(|stamp| stamp.trim().to_string())
            .unwrap_or_default();
        let mut nonce = [0u8; 6];
        crate::runtime::ids::random_bytes(&mut nonce)?;
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        let instance_id = format!(
            "{}-{}-{}",
            host.trim(),
            std::process::id(),
            nonce
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect::<String>()
        );
        let config_sweep_interval = config.store_sweep_interval;
        Ok(Server {
            poll,
            listener: Some(listener),
            config,
            runtime,
            connections: HashMap::new(),
            next_connection: 1,
            sigchld,
            terminate,
            shutdown_deadline: None,
            metrics: Metrics::default(),
            next_sweep: Instant::now() + SWEEP_INTERVAL,
            websockets: HashMap::new(),
            sessions: HashMap::new(),
            session_by_sandbox_id: HashMap::new(),
            session_connection: HashMap::new(),
            next_session: 1,
            jobs,
            saves: HashMap::new(),
            snapshots: persistence::SnapshotCache::default(),
            leases: HashMap::new(),
            next_lease_renewal: Instant::now(),
            instance_id,
            rootfs_stamp,
            snapshots_created: 0,
            head_check,
            store_sweep: persistence::StoreSweep::new(Instant::now(), config_sweep_interval),
        })
    }

    /// Serve until SIGTERM/SIGINT, then shut down cleanly.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        self.runtime.refill_pool();
        loop {
            let timeout = self.poll_timeout();
            if let Err(error) = self.poll.poll(&mut events, Some(timeout)) {
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
            for event in events.iter() {
                let Some((tag, id)) = split(event.token()) else {
                    continue;
                };
                match tag {
                    Tag::Listener => self.accept(),
                    Tag::Signals => self.signal(id),
                    Tag::Connection => {
                        let (readable, writable) = (event.is_readable(), event.is_writable());
                        self.guarded(Peer::Connection(id), |server| {
                            server.connection_ready(id, readable, writable)
                        });
                    }
                    // Panics there are caught per sandbox by the runtime.
                    Tag::AgentOut => self.runtime.agent_readable(id),
                    Tag::AgentIn => self.runtime.agent_writable(id),
                    Tag::Jobs => self.collect_jobs(),
                }
            }
            let now = Instant::now();
            self.runtime.fire_timers(now);
            self.runtime.service_pending_reads();
            self.dispatch_notices();
            if now >= self.next_sweep {
                self.next_sweep = now + SWEEP_INTERVAL;
                self.sweep(now);
                self.sweep_websockets(now);
                self.renew_leases(now);
                if self.shutdown_deadline.is_none() {
                    self.sweep_store(now);
                }
            }
            if let Some(deadline) = self.shutdown_deadline {
                if self.runtime.is_empty()
                    && self.connections.is_empty()
                    && self.websockets.is_empty()
                    && self.jobs.running() == 0
                {
                    eprintln!("server: shutdown complete");
                    self.runtime.stop_network();
                    self.remove_state();
                    return Ok(());
                }
                if now >= deadline {
                    eprintln!(
                        "server: shutdown deadline passed with {} sandboxes and {} connections left",
                        self.runtime.live_sandboxes(),
                        self.connections.len()
                    );
                    if self.runtime.is_empty() {
                        self.runtime.stop_network();
                        self.remove_state();
                    }
                    // Sandboxes still left are removed by the next start (runtime::cleanup).
                    return Ok(());
                }
            } else {
                self.runtime.refill_pool();
                self.dispatch_notices();
            }
        }
    }

    fn poll_timeout(&mut self) -> Duration {
        if self.runtime.has_pending_work() {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let mut deadline = self.next_sweep;
        if let Some(runtime_deadline) = self.runtime.next_deadline() {
            deadline = deadline.min(runtime_deadline);
        }
        deadline.saturating_duration_since(now)
    }

    fn signal(&mut self, id: u64) {
        let pipe = if id == SIGCHLD_PIPE {
            &mut self.sigchld
        } else {
            &mut self.terminate
        };
        let mut drain = [0u8; 64];
        while matches!(pipe.read(&mut drain), Ok(n) if n > 0) {}
        if id == SIGCHLD_PIPE {
            self.runtime.reap();
        } else if self.shutdown_deadline.is_none() {
            self.begin_shutdown();
        }
    }

    /// Stop accepting, end in-flight executions, delete every sandbox.
    fn begin_shutdown(&mut self) {
        eprintln!("server: shutting down");
        self.shutdown_deadline = Some(Instant::now() + self.config.shutdown_timeout);
        // Responses in progress are the last on their connection (see `flush`).
        for connection in self.connections.values_mut() {
            if let Phase::Executing(job) = &mut connection.phase {
                job.end_keep_alive();
            }
        }
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        // Checkpointable sessions are saved; every other sandbox is deleted (its executions
        // end with reason "sandbox_lost" and their clients get a complete response).
        let sessions: Vec<SessionId> = self.sessions.keys().copied().collect();
        for session_id in sessions {
            let outs = self
                .sessions
                .get_mut(&session_id)
                .map(Session::on_shutdown)
                .unwrap_or_default();
            self.deliver(session_id, outs);
        }
        let saving: std::collections::HashSet<SandboxKey> = self
            .saves
            .keys()
            .filter_map(|session| self.sessions.get(session).and_then(Session::sandbox))
            .collect();
        self.runtime.delete_all_except(&saving);
        let idle: Vec<u64> = self
            .connections
            .iter()
            .filter(|(_, connection)| {
                matches!(connection.phase, Phase::Reading) && connection.out.is_empty()
            })
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            self.close(id);
        }
        let sockets: Vec<u64> = self.websockets.keys().copied().collect();
        for id in sockets {
            if let Some(socket) = self.websockets.get_mut(&id) {
                socket.close(1001, "the server is shutting down");
            }
            self.drop_websocket(id);
        }
    }

    fn remove_state(&self) {
        for leftover in ["bundles", "runsc", "agent"] {
            let _ = std::fs::remove_dir_all(self.config.state_dir.join(leftover));
        }
        self.runtime.remove_cgroups();
        // Last: once the lock file is gone, a new instance may start on the directory.
        self.runtime.remove_state_lock_file();
        let _ = std::fs::remove_dir(&self.config.state_dir);
    }

    fn accept(&mut self) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            let (mut stream, _) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) => {
                    // EMFILE and friends: keep serving the connections we have.
                    eprintln!("server: accept failed: {error}");
                    return;
                }
            };
            // WebSockets are connections too (those waiting for an init message included).
            if self.connections.len() + self.websockets.len() >= self.config.http.max_connections {
                let _ = stream.write(&json_error(
                    503,
                    "too many connections; retry shortly",
                    false,
                ));
                continue;
            }
            let _ = stream.set_nodelay(true);
            let id = self.next_connection;
            self.next_connection += 1;
            let interest = Interest::READABLE | Interest::WRITABLE;
            if self
                .poll
                .registry()
                .register(&mut stream, token(Tag::Connection, id), interest)
                .is_err()
            {
                continue;
            }
            let limits = ParserLimits {
                max_header_bytes: self.config.http.max_header_bytes,
                max_headers: 64,
                max_body_bytes: self.config.limits.max_code_bytes,
            };
            let mut parser = RequestParser::new(limits);
            if let Some(check) = &self.head_check {
                parser = parser.with_head_check(check.clone());
            }
            self.connections.insert(id, Connection::new(stream, parser));
        }
    }

    pub(super) fn connection_ready(&mut self, id: u64, readable: bool, writable: bool) {
        if self.websockets.contains_key(&id) {
            return self.websocket_ready(id, readable, writable);
        }
        if readable {
            let Some(connection) = self.connections.get_mut(&id) else {
                return;
            };
            match connection.read_available() {
                Ok(ReadOutcome::Open) => {}
                Ok(ReadOutcome::Closed) => {
                    // A client gone mid-execution: its sandbox is killed and deleted.
                    if let Some(job) = connection.job() {
                        eprintln!(
                            "server: client of sandbox key {} disconnected; deleting it",
                            job.sandbox
                        );
                        self.runtime.delete(job.sandbox);
                    }
                    self.close(id);
                    return;
                }
                Err(error) => {
                    self.answer_error(id, error);
                    return;
                }
            }
            self.process_requests(id);
        }
        if writable {
            self.flush(id);
        }
    }

    /// Answer a malformed request and close: the stream is out of sync after a parse error.
    fn answer_error(&mut self, id: u64, error: HttpError) {
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        if let Some(job) = connection.job() {
            self.runtime.delete(job.sandbox);
        }
        *self.metrics.http_responses.entry(error.status).or_default() += 1;
        let response = if error.status == 401 {
            unauthorized(&error.message)
        } else {
            json_error(error.status, &error.message, false)
        };
        connection.out.extend_from_slice(&response);
        connection.phase = Phase::Closing;
        self.flush(id);
    }

    /// Handle complete requests while the connection is free to take one.
    fn process_requests(&mut self, id: u64) {
        loop {
            let Some(connection) = self.connections.get_mut(&id) else {
                return;
            };
            if !matches!(connection.phase, Phase::Reading) || self.shutdown_deadline.is_some() {
                return;
            }
            match connection.parser.poll() {
                Ok(Progress::NeedMore) => {
                    if connection.parser.is_idle() {
                        connection.request_started = None;
                    }
                    return;
                }
                Ok(Progress::SendContinue) => connection
                    .out
                    .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n"),
                Ok(Progress::Done(request)) => {
                    connection.request_started = None;
                    self.route(id, request);
                }
                Err(error) => return self.answer_error(id, error),
            }
            self.flush(id);
        }
    }

    pub(super) fn respond(&mut self, id: u64, status: u16, bytes: Vec<u8>, keep_alive: bool) {
        *self.metrics.http_responses.entry(status).or_default() += 1;
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        connection.out.extend_from_slice(&bytes);
        if !keep_alive {
            connection.phase = Phase::Closing;
        }
    }

    fn route(&mut self, id: u64, request: Request) {
        crate::guard::test_panic_point(request.target.as_bytes());
        let keep_alive = request.keep_alive();
        let method = request.method.as_str();
        match (method, request.path.as_str()) {
            ("GET", "/status") => {
                let body =
                    full_response(200, "application/json", br#"{"status":"ok"}"#, keep_alive);
                self.respond(id, 200, body, keep_alive);
            }
            ("HEAD", "/status") => {
                // The same head as GET, without the body.
                let head = ResponseHead::new(200)
                    .header("Content-Type", "application/json")
                    .encode(Some(br#"{"status":"ok"}"#.len()), keep_alive);
                self.respond(id, 200, head, keep_alive);
            }
            ("GET" | "HEAD", "/readyz") => self.readiness(id, method == "HEAD", keep_alive),
            ("GET", "/snapshots") => {
                let (status, body) =
                    persistence::list_snapshots(self.config.snapshot_path.as_deref());
                let bytes = full_response(status, "application/json", &body, keep_alive);
                self.respond(id, status, bytes, keep_alive);
            }
            ("DELETE", path) if path.starts_with("/snapshots/") => {
                let name = crate::http::query::percent_decode_path(&path["/snapshots/".len()..])
                    .unwrap_or_default();
                let (status, body) =
                    persistence::delete_snapshot(self.config.snapshot_path.as_deref(), &name);
                // Sandboxes pooled from it must not be handed out any more.
                self.runtime.prune_snapshot_pools();
                let bytes = full_response(status, "application/json", &body, keep_alive);
                self.respond(id, status, bytes, keep_alive);
            }
            ("GET", "/metrics") => {
                let text = self.metrics_text();
                let body = full_response(
                    200,
                    "text/plain; version=0.0.4",
                    text.as_bytes(),
                    keep_alive,
                );
                self.respond(id, 200, body, keep_alive);
            }
            ("POST", "/execute") => self.start_execute(id, &request, keep_alive),
            (_, "/status" | "/readyz" | "/metrics" | "/execute" | "/snapshots") => {
                let message = format!("method {method} is not allowed on {}", request.path);
                let body = json_error(405, &message, keep_alive);
                self.respond(id, 405, body, keep_alive);
            }
            ("GET", path) if path == "/create" || path.starts_with("/attach/") => {
                if request.is_websocket_upgrade() {
                    self.upgrade(id, &request);
                } else {
                    let message = format!("{path} is a WebSocket endpoint: connect with a WebSocket client (ws:// or wss://)");
                    self.respond(id, 426, json_error(426, &message, keep_alive), keep_alive);
                }
            }
            (_, path) => {
                let message =
                    format!("no such endpoint {path:?}; try POST /execute?language=python");
                self.respond(id, 404, json_error(404, &message, keep_alive), keep_alive);
            }
        }
    }

    /// `GET /readyz`: 200 when sandboxes can be created, else 503 with the reason (for
    /// Cloud Run's startup and liveness probes; `/status` only says the loop answers).
    fn readiness(&mut self, id: u64, head_only: bool, keep_alive: bool) {
        let (status, body) = match self.runtime.cannot_create() {
            None => (200, serde_json::json!({"status": "ready"})),
            Some(reason) => (
                503,
                serde_json::json!({"status": "unavailable", "reason": reason}),
            ),
        };
        let body = body.to_string();
        let bytes = if head_only {
            ResponseHead::new(status)
                .header("Content-Type", "application/json")
                .header("Cache-Control", "no-store")
                .encode(Some(body.len()), keep_alive)
        } else {
            ResponseHead::new(status)
                .header("Content-Type", "application/json")
                .header("Cache-Control", "no-store")
                .encode_with_body(body.as_bytes(), keep_alive)
        };
        self.respond(id, status, bytes, keep_alive);
    }

    fn start_execute(&mut self, id: u64, request: &Request, keep_alive: bool) {
        let limits = &self.config.limits;
        let parsed = match execute::parse(request, limits.exec_timeout, limits.max_exec_timeout) {
            Ok(parsed) => parsed,
            Err((status, message)) => {
                return self.respond(
                    id,
                    status,
                    json_error(status, &message, keep_alive),
                    keep_alive,
                )
            }
        };
        match self.runtime.acquire(Owner::Http(id)) {
            Ok(sandbox) => {
                let sandbox_id = self
                    .runtime
                    .sandbox_id(sandbox)
                    .map(|id| id.to_string())
                    .unwrap_or_default();
                if let Some(connection) = self.connections.get_mut(&id) {
                    connection.phase = Phase::Executing(Box::new(ExecuteJob::new(
                        sandbox, sandbox_id, parsed, keep_alive,
                    )));
                }
            }
            Err(RuntimeError::AtCapacity(limit)) => {
                *self.metrics.http_responses.entry(503).or_default() += 1;
                let message =
                    format!("the server is at its limit of {limit} sandboxes; retry shortly");
                let body = crate::http::response::json_error_body(&message);
                let bytes = ResponseHead::new(503)
                    .header("Content-Type", "application/json")
                    .header("Retry-After", "1")
                    .encode_with_body(&body, keep_alive);
                if let Some(connection) = self.connections.get_mut(&id) {
                    connection.out.extend_from_slice(&bytes);
                }
            }
            Err(error) => {
                let message = error.to_string();
                self.respond(id, 500, json_error(500, &message, keep_alive), keep_alive);
            }
        }
    }

    fn dispatch_notices(&mut self) {
        // Sessions that got output in this batch: only they can have output to frame.
        let mut touched: Vec<SessionId> = Vec::new();
        while let Some(Notice {
            owner,
            sandbox,
            event,
        }) = self.runtime.next_notice()
        {
            let test_panic_point = |event: &RuntimeEvent| {
                if let RuntimeEvent::Output(_, _, data) = event {
                    crate::guard::test_panic_point(data);
                }
            };
            match owner {
                Owner::Http(id) => self.guarded(Peer::Connection(id), |server| {
                    test_panic_point(&event);
                    server.execute_event(id, sandbox, event)
                }),
                Owner::Session(session) => {
                    if !touched.contains(&session) {
                        touched.push(session);
                    }
                    self.guarded(Peer::Session(session), |server| {
                        test_panic_point(&event);
                        if !server.handle_session_runtime_event(session, &event) {
                            server.session_event(session, event);
                        }
                    });
                }
            }
        }
        // Frame what the batch produced: merged per stream, and sent without delay.
        for session in touched {
            self.guarded(Peer::Session(session), |server| {
                server.flush_session_output(session)
            });
        }
    }

    fn flush_session_output(&mut self, session: SessionId) {
        let Some(state) = self.sessions.get_mut(&session) else {
            return;
        };
        let outs = state.flush_output(&mut Control {
            runtime: &mut self.runtime,
            snapshots: &mut self.snapshots,
            snapshot_root: self.config.snapshot_path.as_deref(),
            rootfs_stamp: &self.rootfs_stamp,
        });
        if !outs.is_empty() {
            self.deliver(session, outs);
        }
    }

    fn execute_event(
        &mut self,
        id: u64,
        sandbox: crate::runtime::SandboxKey,
        event: crate::runtime::RuntimeEvent,
    ) {
        let Some(connection) = self.connections.get_mut(&id) else {
            // The client is gone; make sure its sandbox goes too.
            self.runtime.delete(sandbox);
            return;
        };
        let Phase::Executing(job) = &mut connection.phase else {
            return;
        };
        if job.sandbox != sandbox {
            return;
        }
        let mut step = job.on_event(event);
        if let Some(spec) = step.start.take() {
            match self.runtime.start_exec(sandbox, spec) {
                Ok(exec) => {
                    job.set_running(exec);
                    // /execute has no stdin: the code gets EOF at once.
                    let _ = self.runtime.close_stdin(sandbox, exec);
                }
                Err(error) => step = job.fail(500, &format!("cannot run the code: {error}")),
            }
        }
        connection.out.extend_from_slice(&step.bytes);
        if let Some(finished) = step.finished {
            let elapsed = job.started.elapsed().as_secs_f64();
            let keep_alive = job.keep_alive() && !connection.peer_closed;
            connection.phase = if keep_alive {
                Phase::Reading
            } else {
                Phase::Closing
            };
            connection.output_paused = false;
            self.runtime.delete(sandbox);
            *self.metrics.executions.entry(finished.result).or_default() += 1;
            *self
                .metrics
                .http_responses
                .entry(finished.status)
                .or_default() += 1;
            self.metrics.execute_seconds.observe(elapsed);
            self.flush(id);
            self.process_requests(id);
            return;
        }
        if connection.out.len() > OUT_HIGH_WATER && !connection.output_paused {
            connection.output_paused = true;
            self.runtime.set_output_paused(sandbox, true);
        }
        self.flush(id);
    }

    pub(super) fn flush(&mut self, id: u64) {
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        if !connection.flush() {
            if let Some(job) = connection.job() {
                self.runtime.delete(job.sandbox);
            }
            self.close(id);
            return;
        }
        if connection.output_paused && connection.out.len() < OUT_LOW_WATER {
            connection.output_paused = false;
            if let Some(job) = connection.job() {
                self.runtime.set_output_paused(job.sandbox, false);
            }
        }
        let finished = match connection.phase {
            Phase::Closing => true,
            // Shutting down: a connection without a running request takes no new one, so it
            // closes once its last response is out (it must not hold the shutdown up).
            Phase::Reading => self.shutdown_deadline.is_some(),
            Phase::Executing(_) => false,
        };
        if finished && connection.out.is_empty() {
            self.close(id);
        }
    }

    pub(super) fn close(&mut self, id: u64) {
        if let Some(mut connection) = self.connections.remove(&id) {
            let _ = self.poll.registry().deregister(&mut connection.stream);
        }
    }

    /// Enforce the connection deadlines: slow requests, idle keep-alives, stalled readers.
    fn sweep(&mut self, now: Instant) {
        let http = &self.config.http;
        let mut expired = Vec::new();
        for (id, connection) in &self.connections {
            let slow_request = matches!(connection.phase, Phase::Reading)
                && connection
                    .request_started
                    .is_some_and(|start| now.duration_since(start) > http.request_timeout);
            let idle = matches!(connection.phase, Phase::Reading)
                && connection.request_started.is_none()
                && connection.out.is_empty()
                && now.duration_since(connection.last_activity) > http.keepalive_timeout;
            let stalled = !connection.out.is_empty()
                && now.duration_since(connection.last_write_progress) > http.write_timeout;
            if slow_request {
                expired.push((*id, Some(408)));
            } else if idle || stalled {
                expired.push((*id, None));
            }
        }
        for (id, status) in expired {
            match status {
                Some(status) => self.answer_error(
                    id,
                    HttpError {
                        status,
                        message: "the request did not arrive in time".into(),
                    },
                ),
                None => {
                    if let Some(job) = self.connections.get(&id).and_then(Connection::job) {
                        self.runtime.delete(job.sandbox);
                    }
                    self.close(id);
                }
            }
        }
    }

    fn metrics_text(&mut self) -> String {
        for seconds in self.runtime.take_start_seconds() {
            self.metrics.sandbox_start_seconds.observe(seconds);
        }
        let stats = self.runtime.stats();
        self.metrics.render(&Gauges {
            live_sandboxes: self.runtime.live_sandboxes(),
            pool_ready: self.runtime.pool_ready(),
            snapshot_pool_ready: self.runtime.snapshot_pool_ready(),
            snapshot_pools: self.runtime.snapshot_pools(),
            waiting_for_slot: self.runtime.waiting_for_slot(),
            pool_evictions: stats.pool_evictions,
            connections: self.connections.len(),
            sessions: self.sessions.len(),
            websockets: self.websockets.len(),
            sandboxes_created: stats.created,
            sandbox_start_failures: stats.start_failures,
            sandboxes_lost: stats.lost,
        })
    }
}

/// A socket that receives a byte whenever one of `signals` arrives (signal-hook's self-pipe).
fn signal_pipe(signals: &[i32]) -> io::Result<StdUnixStream> {
    let (reader, writer) = StdUnixStream::pair()?;
    reader.set_nonblocking(true)?;
    writer.set_nonblocking(true)?;
    for signal in signals {
        signal_hook::low_level::pipe::register(*signal, writer.try_clone()?)?;
    }
    Ok(reader)
}
