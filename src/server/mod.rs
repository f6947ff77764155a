//! The event loop: one `mio::Poll` for the listening socket, the client connections, the
//! agents' pipes (through the runtime), the signal pipes and the worker threads' waker. It moves
//! bytes and dispatches; decisions live in the machines: the runtime's, the session's
//! (`crate::session`), the HTTP API's (`api`), the save and attach pipelines (`save`,
//! `attach`).

mod api;
mod attach;
mod auth;
mod connection;
mod execute;
mod expired;
mod files_http;
mod http;
mod jobs;
mod mcp;
mod persistence;
mod playground;
mod ports;
mod recovery;
mod save;
mod sessions;
mod store_work;
mod websocket;

use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, UnixStream};
use mio::{Events, Interest, Poll};

use crate::config::Config;
use crate::http::request::Limits as ParserLimits;
use crate::io_token::{split, token, Tag};
use crate::metrics::Metrics;
use crate::runtime::{Notice, Owner, Runtime, RuntimeEvent};
use crate::session::exec_options::ExecLimits;
use crate::session::{Session, SessionId};
pub use connection::ConnectionId;
use connection::{Connections, Phase};
use persistence::Persistence;
use recovery::Peer;
use sessions::Sessions;

const SIGCHLD_PIPE: u64 = 0;
const TERMINATE_PIPE: u64 = 1;
/// How often connection deadlines are checked.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// The event loop and what it owns. Each part keeps its own state: the client connections,
/// the sessions, the persistence pipeline (with its worker threads), the runtime.
pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    signals: Signals,
    config: Config,
    runtime: Runtime,
    connections: Connections,
    sessions: Sessions,
    mcp: mcp::McpState,
    persistence: Persistence,
    metrics: Metrics,
    ports: ports::Ports,
    shutdown_deadline: Option<Instant>,
    next_sweep: Instant,
}

/// Self-pipes that receive a byte when a signal arrives (signal-hook).
struct Signals {
    sigchld: UnixStream,
    terminate: UnixStream,
}

impl Signals {
    fn new(poll: &Poll) -> io::Result<Self> {
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
        Ok(Signals { sigchld, terminate })
    }

    /// Empty the pipe of signal `id`.
    fn drain(&mut self, id: u64) {
        let pipe = if id == SIGCHLD_PIPE {
            &mut self.sigchld
        } else {
            &mut self.terminate
        };
        let mut drain = [0u8; 64];
        while matches!(pipe.read(&mut drain), Ok(n) if n > 0) {}
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
        let signals = Signals::new(&poll)?;
        eprintln!("server: listening on http://{}", listener.local_addr()?);
        let head_check = auth::head_check(
            config.api_keys.as_ref(),
            config.playground,
            config.ports.domain.clone(),
            config.ports.require_key,
        );
        if let Some(keys) = &config.api_keys {
            eprintln!(
                "server: requests need one of {} api keys (Authorization: Bearer); {}{} answer without",
                keys.len(),
                auth::OPEN_PATHS.join(", "),
                if config.playground { " and the playground page" } else { "" }
            );
        }
        if config.playground {
            eprintln!("server: the playground is at / (SANDBOX_PLAYGROUND=off turns it off)");
        }
        let jobs = jobs::Jobs::new(poll.registry())?;
        let mut nonce = [0u8; 6];
        crate::ids::random_bytes(&mut nonce)?;
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
        let domain = config.ports.domain.clone();
        let relay_check = crate::http::request::RelayCheck::new(move |request| {
            crate::ports::route(request, domain.as_deref()).is_some()
        });
        let parser_limits = ParserLimits {
            max_header_bytes: config.http.max_header_bytes,
            max_headers: 64,
            max_body_bytes: config.limits.max_code_bytes,
        };
        Ok(Server {
            poll,
            listener: Some(listener),
            signals,
            runtime,
            connections: Connections::new(parser_limits, head_check, relay_check),
            sessions: Sessions::default(),
            mcp: mcp::McpState::new(&config),
            persistence: Persistence::new(&config, jobs, instance_id),
            config,
            metrics: Metrics::default(),
            ports: ports::Ports::default(),
            shutdown_deadline: None,
            next_sweep: Instant::now() + SWEEP_INTERVAL,
        })
    }

    /// The server's bounds on executions, for `/execute` and sessions alike.
    fn exec_limits(&self) -> ExecLimits {
        ExecLimits {
            default_timeout: self.config.limits.exec_timeout,
            max_timeout: self.config.limits.max_exec_timeout,
            max_code_bytes: self.config.limits.max_code_bytes,
        }
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
                        let id = ConnectionId(id);
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
            if self.shutdown_deadline.is_none() {
                self.persistence.watch_handoffs(now);
            }
            if now >= self.next_sweep {
                self.next_sweep = now + SWEEP_INTERVAL;
                self.sweep_connections(now);
                self.sweep_port_timeouts(now);
                self.sweep_websockets(now);
                self.mcp_sweep(now);
                self.persistence.renew_leases(now);
                if self.shutdown_deadline.is_none() {
                    self.persistence.sweep_store(now);
                }
            }
            if let Some(deadline) = self.shutdown_deadline {
                if self.runtime.is_empty()
                    && self.connections.is_empty()
                    && self.persistence.running_jobs() == 0
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
        if let Some(watch) = self.persistence.next_handoff_watch() {
            deadline = deadline.min(watch);
        }
        deadline.saturating_duration_since(now)
    }

    fn signal(&mut self, id: u64) {
        self.signals.drain(id);
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
        for connection in self.connections.http.values_mut() {
            if let Phase::Executing(job) = &mut connection.phase {
                job.end_keep_alive();
            }
        }
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        // Connections through exposed ports end first: runsc cannot checkpoint a sandbox with
        // open TCP connections.
        self.close_all_port_connections();
        // Checkpointable sessions are saved; every other sandbox is deleted (its executions
        // end with reason "sandbox_lost" and their clients get a complete response).
        for session_id in self.sessions.ids() {
            let outs = self
                .sessions
                .get_mut(session_id)
                .map(Session::on_shutdown)
                .unwrap_or_default();
            self.deliver(session_id, outs);
        }
        let saving = self.sessions.sandboxes_of(self.persistence.saving());
        self.runtime
            .delete_all_except(&saving.into_iter().collect());
        let idle: Vec<ConnectionId> = self
            .connections
            .http
            .iter()
            .filter(|(_, connection)| {
                matches!(connection.phase, Phase::Reading) && connection.out.is_empty()
            })
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            self.close(id);
        }
        let sockets: Vec<ConnectionId> = self.connections.websockets.keys().copied().collect();
        for id in sockets {
            if let Some(socket) = self.connections.websockets.get_mut(&id) {
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

    /// Hand the runtime's notices to their owners: `/execute` requests and sessions.
    fn dispatch_notices(&mut self) {
        // Sessions that got output in this batch: only they can have output to frame.
        let mut touched: Vec<SessionId> = Vec::new();
        while let Some(Notice {
            owner,
            sandbox,
            event,
        }) = self.runtime.next_notice()
        {
            // Relays (exposed ports) are executions of the sandbox that belong to an HTTP
            // connection, not to the sandbox's owner.
            let Some(event) = self.port_notice(sandbox, event) else {
                continue;
            };
            let test_panic_point = |event: &RuntimeEvent| {
                if let RuntimeEvent::Output(_, _, data) = event {
                    crate::guard::test_panic_point(data);
                }
            };
            match owner {
                Owner::Http(id) => {
                    let id = ConnectionId(id);
                    self.guarded(Peer::Connection(id), |server| {
                        test_panic_point(&event);
                        server.execute_event(id, sandbox, event)
                    })
                }
                Owner::Session(session) => {
                    let session = SessionId(session);
                    if !touched.contains(&session) {
                        touched.push(session);
                    }
                    self.guarded(Peer::Session(session), |server| {
                        test_panic_point(&event);
                        server.session_notice(session, event);
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
