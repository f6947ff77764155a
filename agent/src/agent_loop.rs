//! The agent: the first process of every sandbox container.
//!
//! It does three jobs, all from one `poll(2)` loop:
//! - it is the container's init, so it reaps every process that exits (orphans included),
//!   which keeps `RLIMIT_NPROC` honest and lets `runsc delete` finish at once;
//! - it spawns executions on request (frames on its stdin, see [`crate::protocol`]) and
//!   relays their stdin, stdout, stderr and exit status;
//! - it keeps a process started ahead of the next execution of each language (a bash, and a
//!   child of its Python forkserver: see [`crate::standby`]) and of the next file operation
//!   (see [`crate::file_helper`]), so that an execution pays neither a fork, nor an exec, nor
//!   an interpreter's start-up. They are started when the agent is idle, never before the
//!   frames the server waits for are written.
//!
//! Back-pressure: each execution has an output window (`protocol::OUTPUT_WINDOW_BYTES`): the
//! agent reads its pipes only while the window is open, and the server reopens it with
//! `Credit` frames as it consumes the output. So a process whose output is not consumed blocks
//! in `write`, the other executions go on, and nothing is dropped. As a last resort, output
//! frames wait in a bounded buffer for the server to read them; when it is full, no pipe is
//! read. Control frames from the server are always read.
//!
//! It starts as its own uid so that user code cannot reach its pipes, kill it or trace it, and
//! runs every process as plain root without capabilities (see [`crate::identity`]).
//!
//! Running inside gVisor, it must only use plain syscalls (poll, pipes, fork/exec, waitpid).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::context::Context;
use crate::execution::{Execution, PipeRead, SpawnError};
use crate::file_helper::{self, FileStandby};
use crate::forkserver::{self, Forkserver};
use crate::pipes::set_nonblocking;
use crate::protocol::{
    AgentConfig, AgentHello, CellRequest, ContextCommand, ExecId, ExitStatus, FrameDecoder,
    FromAgent, Inspection, Language, SpawnRequest, ToAgent, MAX_OUTPUT_CHUNK_BYTES,
};
use crate::relay::Relay;
use crate::standby::Standby;
use crate::warm::Sockets;

/// How long a killed execution's process group is watched for survivors.
const DOOMED_GROUP_WATCH: Duration = Duration::from_secs(2);

/// How often a killed execution's process group is killed again while it is watched.
const DOOMED_GROUP_POLL: Duration = Duration::from_millis(20);

/// Output frames held for the server before the agent stops reading process pipes (one more
/// read may add a frame of up to `MAX_OUTPUT_CHUNK_BYTES`).
pub(crate) const OUTBOX_HIGH_WATER: usize = 1024 * 1024;

/// After this many failures (a start that failed, an unexpected death), a kind of standby is
/// not started again in this sandbox: executions are then spawned fresh.
const MAX_STANDBY_FAILURES: u32 = 3;

/// How long a `python` request waits for the child the forkserver is forking before it is
/// spawned fresh instead (a fresh interpreter costs about as much as this).
const FORK_WAIT: Duration = Duration::from_millis(100);

/// Standbys (the forkserver, a bash) are started once nothing happened for this long, never
/// while requests come: starting one blocks the loop for a few milliseconds and costs the
/// sandbox CPU, which a sandbox used at once after its start (one `/execute` under load, say)
/// would pay for nothing. A pooled sandbox waits longer than this before it is used.
const IDLE_BEFORE_STANDBYS: Duration = Duration::from_millis(10);

/// How long an inspection waits for relays just closed to leave the TCP table (their resets
/// are processed by the sandbox's network stack on its own time).
const RELAY_CLOSE_SETTLE: Duration = Duration::from_millis(500);

/// How often a relay that is connecting is checked for its timeout.
const RELAY_CONNECT_POLL: Duration = Duration::from_millis(20);

/// Where each polled descriptor belongs.
#[derive(Debug, Clone, Copy)]
enum Source {
    ServerIn,
    ServerOut,
    Signals,
    Forkserver,
    ExecStdout(ExecId),
    ExecStderr(ExecId),
    ExecStdin(ExecId),
    ExecRequest(ExecId),
    RelayRead(ExecId),
    RelayWrite(ExecId),
    /// The warm connection to a port (see [`crate::warm`]).
    Warm(u16),
    ContextStdout(u32),
    ContextStderr(u32),
    ContextEvents(u32),
    ContextCells(u32),
}

pub struct Agent {
    config: AgentConfig,
    server_in: File,
    server_out: File,
    server_closed: bool,
    decoder: FrameDecoder,
    outbox: Vec<u8>,
    /// Where output is read into before it is framed (one buffer for every pipe).
    read_buffer: Vec<u8>,
    signals: UnixStream,
    executions: BTreeMap<ExecId, Execution>,
    /// Port relays (issue 20): connections to loopback the server carries like executions,
    /// under the same ids (never the id of an execution).
    relays: BTreeMap<ExecId, Relay>,
    /// Some relay is still connecting (see `Relay::check_connect_timeout`).
    relays_connecting: bool,
    /// When the server last closed a relay (a checkpoint's inspection usually follows).
    relay_closed_at: Option<Instant>,
    /// Relays that ended, closed once their `Exited` is written: closing a socket costs
    /// syscalls (slow under ptrace), and a client reading a response to its end waits for it.
    ended_relays: Vec<Relay>,
    /// What the next relays start from, made when relays end: a spare socket, a warm
    /// connection to each port just used.
    relay_sockets: Sockets,
    bash_standby: Option<Standby>,
    python_standby: Option<Standby>,
    forkserver: Option<Forkserver>,
    /// The files API's helper started ahead of the next file operation.
    file_standby: Option<FileStandby>,
    bash_failures: u32,
    forkserver_failures: u32,
    file_standby_failures: u32,
    /// Where the next bash standby starts: the last bash execution's directory (a standby
    /// serves only requests for the directory it started in), at first `HOME`.
    bash_cwd: String,
    /// When an event was last handled: standbys are started once the agent has been idle for
    /// [`IDLE_BEFORE_STANDBYS`].
    last_activity: Instant,
    /// Process groups of killed executions, and since when: under gVisor a child forked while
    /// the group kill was delivered can survive it, so the group is killed again until it is
    /// empty (ESRCH) or for `DOOMED_GROUP_WATCH`.
    doomed: Vec<(Pid, Instant)>,
    /// The highest execution id the server has used in this sandbox: ids are never reused,
    /// also across a checkpoint (this survives in the agent's memory) and a restore.
    highest_exec_id: u32,
    /// The code contexts, by a slot number of their own (a deleted context may linger while
    /// its cell ends, beside its restarted successor of the same name).
    contexts: BTreeMap<u32, Context>,
    next_context_slot: u32,
}

impl Agent {
    pub fn new(config: AgentConfig) -> io::Result<Self> {
        let warm_port_connections = config.warm_port_connections;
        let (signal_reader, signal_writer) = UnixStream::pair()?;
        signal_reader.set_nonblocking(true)?;
        signal_writer.set_nonblocking(true)?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGCHLD, signal_writer)?;
        // The server's pipes, unbuffered (std's Stdin/Stdout buffer, which would hide data from
        // poll), and non-blocking so that a slow server never stalls reaping.
        let server_in = File::from(io::stdin().as_fd().try_clone_to_owned()?);
        let server_out = File::from(io::stdout().as_fd().try_clone_to_owned()?);
        set_nonblocking(server_in.as_fd())?;
        set_nonblocking(server_out.as_fd())?;
        let bash_cwd = config
            .base_env
            .iter()
            .find(|(name, _)| name == "HOME")
            .map_or("/", |(_, home)| home.as_str())
            .to_string();
        Ok(Agent {
            config,
            server_in,
            server_out,
            server_closed: false,
            decoder: FrameDecoder::new(),
            outbox: Vec::with_capacity(64 * 1024),
            read_buffer: vec![0; MAX_OUTPUT_CHUNK_BYTES],
            signals: signal_reader,
            executions: BTreeMap::new(),
            relays: BTreeMap::new(),
            relays_connecting: false,
            relay_sockets: Sockets::new(warm_port_connections),
            relay_closed_at: None,
            ended_relays: Vec::new(),
            bash_standby: None,
            python_standby: None,
            forkserver: None,
            file_standby: None,
            bash_failures: 0,
            forkserver_failures: 0,
            file_standby_failures: 0,
            bash_cwd,
            last_activity: Instant::now(),
            doomed: Vec::new(),
            highest_exec_id: 0,
            contexts: BTreeMap::new(),
            next_context_slot: 0,
        })
    }

    /// Runs until the server closes the agent's stdin (the sandbox is being deleted).
    pub fn run(mut self) -> io::Result<()> {
        // Hello first: the standbys start while the server already counts the sandbox as
        // ready (an execution that comes first is spawned fresh, or waits for its python child).
        let hello = AgentHello {
            version: env!("CARGO_PKG_VERSION").to_string(),
            python_standby: self.config.python_standby,
            next_exec_id: self.next_exec_id(),
        };
        FromAgent::Ready(hello).encode(&mut self.outbox);
        loop {
            self.flush_outbox()?;
            if !self.ended_relays.is_empty() {
                // After the `Exited` just written, not between a `Connect` and its connect.
                let ports: Vec<(u16, bool)> = self
                    .ended_relays
                    .iter()
                    .filter_map(Relay::warm_destination)
                    .collect();
                self.ended_relays.clear();
                self.relay_sockets.after_relays_ended(ports);
            }
            if self.server_closed && self.executions.is_empty() && self.relays.is_empty() {
                return Ok(());
            }
            if !self.server_closed {
                self.request_python_child();
                if self.last_activity.elapsed() >= IDLE_BEFORE_STANDBYS {
                    self.start_standbys();
                }
            }
            let ready = self.wait_for_events()?;
            if !ready.is_empty() {
                self.last_activity = Instant::now();
            }
            for (source, flags) in ready {
                self.handle(source, flags)?;
            }
            for execution in self.executions.values_mut() {
                execution.keep_window_size();
            }
            self.finish_exited_executions();
            self.finish_cells();
            self.kill_doomed_groups();
        }
    }

    fn wait_for_events(&mut self) -> io::Result<Vec<(Source, PollFlags)>> {
        let readable = PollFlags::POLLIN;
        let writable = PollFlags::POLLOUT;
        let outbox_has_room = self.outbox.len() < OUTBOX_HIGH_WATER;
        let now = Instant::now();
        let mut wake_at: Option<Instant> = None;
        let mut sources = Vec::new();
        let mut fds: Vec<PollFd<'_>> = Vec::new();
        // Warm connections first: one that died is dropped before a `Connect` read in the
        // same turn would take it.
        if let Some(expiry) = self.relay_sockets.expire(now) {
            wake_by(&mut wake_at, expiry);
        }
        for (port, fd, events) in self.relay_sockets.poll_fds() {
            sources.push(Source::Warm(port));
            fds.push(PollFd::new(fd, events));
        }
        if !self.server_closed {
            sources.push(Source::ServerIn);
            fds.push(PollFd::new(self.server_in.as_fd(), readable));
        }
        if !self.outbox.is_empty() {
            sources.push(Source::ServerOut);
            fds.push(PollFd::new(self.server_out.as_fd(), writable));
        }
        sources.push(Source::Signals);
        fds.push(PollFd::new(self.signals.as_fd(), readable));
        if let Some(forkserver) = &self.forkserver {
            sources.push(Source::Forkserver);
            fds.push(PollFd::new(forkserver.control_fd(), readable));
        }
        for (id, execution) in &self.executions {
            // An execution whose window is closed is not read: it blocks in `write` until the
            // server gives credit, and the others go on. One whose pipes rest is read when
            // they wake (see `Execution::resting_until`).
            let resting = execution.resting_until().filter(|until| *until > now);
            if let Some(until) = resting {
                wake_by(&mut wake_at, until);
            }
            if outbox_has_room && execution.output_window_open() && resting.is_none() {
                if let Some(fd) = execution.stdout_fd() {
                    sources.push(Source::ExecStdout(*id));
                    fds.push(PollFd::new(fd, readable));
                }
                if let Some(fd) = execution.stderr_fd() {
                    sources.push(Source::ExecStderr(*id));
                    fds.push(PollFd::new(fd, readable));
                }
            }
            if let Some(fd) = execution.stdin_fd_if_pending() {
                sources.push(Source::ExecStdin(*id));
                fds.push(PollFd::new(fd, writable));
            }
            if let Some(fd) = execution.request_fd_if_pending() {
                sources.push(Source::ExecRequest(*id));
                fds.push(PollFd::new(fd, writable));
            }
        }
        for (id, relay) in &self.relays {
            if outbox_has_room {
                if let Some(fd) = relay.read_fd() {
                    sources.push(Source::RelayRead(*id));
                    fds.push(PollFd::new(fd, readable));
                }
            }
            if let Some(fd) = relay.write_fd() {
                sources.push(Source::RelayWrite(*id));
                fds.push(PollFd::new(fd, writable));
            }
        }
        // While relays connect, wake up to time them out.
        if self.relays_connecting {
            wake_by(&mut wake_at, now + RELAY_CONNECT_POLL);
        }
        // Missing standbys are started once idle long enough.
        if !self.server_closed && self.standbys_missing() {
            wake_by(&mut wake_at, self.last_activity + IDLE_BEFORE_STANDBYS);
        }
        for (slot, context) in &self.contexts {
            if outbox_has_room && context.window_open() {
                for (fd, source) in [
                    (context.stdout_fd(), Source::ContextStdout(*slot)),
                    (context.stderr_fd(), Source::ContextStderr(*slot)),
                    (context.events_fd(), Source::ContextEvents(*slot)),
                ] {
                    if let Some(fd) = fd {
                        sources.push(source);
                        fds.push(PollFd::new(fd, readable));
                    }
                }
            }
            if let Some(fd) = context.code_fd_if_pending() {
                sources.push(Source::ContextCells(*slot));
                fds.push(PollFd::new(fd, writable));
            }
        }
        // An interrupted cell's grace ends at its deadline.
        if let Some(until) = self.contexts.values().filter_map(Context::deadline).min() {
            wake_by(&mut wake_at, until);
        }
        // A terminal whose process exited is drained until a deadline its master never
        // reports (see `execution`); a resize is checked once more when it has settled (see
        // `keep_window_size`), and before the keystrokes held after it go.
        for execution in self.executions.values() {
            let deadlines = [
                execution.drain_deadline(),
                execution.resize_check_at(),
                execution.keys_held_until(),
            ];
            for until in deadlines.into_iter().flatten() {
                wake_by(&mut wake_at, until);
            }
        }
        // While killed groups may still hold a process, wake up to kill them again.
        if !self.doomed.is_empty() {
            wake_by(&mut wake_at, now + DOOMED_GROUP_POLL);
        }
        let timeout = match wake_at {
            None => PollTimeout::NONE,
            // Rounded up to the next millisecond: poll(2) counts in milliseconds.
            Some(at) => {
                let millis = at.saturating_duration_since(now).as_micros().div_ceil(1000);
                PollTimeout::try_from(millis.max(1)).unwrap_or(PollTimeout::MAX)
            }
        };
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(error) => return Err(error.into()),
        }
        Ok(fds
            .iter()
            .zip(sources)
            .filter_map(|(fd, source)| {
                let revents = fd.revents().unwrap_or(PollFlags::empty());
                (!revents.is_empty()).then_some((source, revents))
            })
            .collect())
    }

    fn handle(&mut self, source: Source, flags: PollFlags) -> io::Result<()> {
        match source {
            Source::ServerIn => self.read_server(),
            Source::ServerOut => Ok(()), // flushed at the top of the loop
            Source::Signals => {
                let mut drain = [0u8; 64];
                while matches!((&self.signals).read(&mut drain), Ok(n) if n > 0) {}
                self.reap();
                Ok(())
            }
            Source::ExecStdout(id) | Source::ExecStderr(id) => {
                let which = if matches!(source, Source::ExecStdout(_)) {
                    PipeRead::Stdout
                } else {
                    PipeRead::Stderr
                };
                if let Some(execution) = self.executions.get_mut(&id) {
                    execution.read_output(which, &mut self.outbox, &mut self.read_buffer);
                }
                Ok(())
            }
            Source::Forkserver => {
                self.read_forkserver();
                Ok(())
            }
            Source::ExecStdin(id) => {
                let _ = flags;
                if let Some(execution) = self.executions.get_mut(&id) {
                    execution.write_stdin(&mut self.outbox);
                }
                Ok(())
            }
            Source::ExecRequest(id) => {
                if let Some(execution) = self.executions.get_mut(&id) {
                    execution.write_request();
                }
                Ok(())
            }
            Source::RelayRead(id) => {
                if let Some(relay) = self.relays.get_mut(&id) {
                    relay.read(&mut self.outbox, &mut self.read_buffer);
                }
                Ok(())
            }
            Source::Warm(port) => {
                self.relay_sockets.on_event(port, flags);
                Ok(())
            }
            Source::RelayWrite(id) => {
                let error_reported = flags.intersects(PollFlags::POLLERR | PollFlags::POLLHUP);
                if let Some(relay) = self.relays.get_mut(&id) {
                    relay.on_writable(error_reported, &mut self.outbox);
                }
                Ok(())
            }
            Source::ContextStdout(slot) | Source::ContextStderr(slot) => {
                let which = if matches!(source, Source::ContextStdout(_)) {
                    PipeRead::Stdout
                } else {
                    PipeRead::Stderr
                };
                if let Some(context) = self.contexts.get_mut(&slot) {
                    context.read_output(which, &mut self.outbox, &mut self.read_buffer);
                }
                Ok(())
            }
            Source::ContextEvents(slot) => {
                if let Some(context) = self.contexts.get_mut(&slot) {
                    context.read_events(&mut self.outbox, &mut self.read_buffer);
                }
                Ok(())
            }
            Source::ContextCells(slot) => {
                if let Some(context) = self.contexts.get_mut(&slot) {
                    context.write_code();
                }
                Ok(())
            }
        }
    }

    fn read_server(&mut self) -> io::Result<()> {
        let mut buffer = [0u8; 64 * 1024];
        loop {
            match self.server_in.read(&mut buffer) {
                Ok(0) => {
                    self.server_closed = true;
                    self.kill_everything();
                    return Ok(());
                }
                Ok(n) => {
                    self.decoder.push(&buffer[..n]);
                    // A short read emptied the pipe: poll says when more comes. Not reading
                    // it again to hear `EAGAIN` saves a syscall per wake-up (~50 us under
                    // ptrace) on the way of every frame from the server.
                    if n < buffer.len() {
                        break;
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
        }
        loop {
            match self.decoder.next_to_agent() {
                Ok(Some(frame)) => self.apply(frame),
                Ok(None) => return Ok(()),
                Err(error) => {
                    // The server and agent are built together; garbage means a bug. Say so on
                    // stderr (the sandbox log) and stop, which the server sees as a lost sandbox.
                    eprintln!("sandbox-agent: {error}");
                    return Err(io::Error::new(io::ErrorKind::InvalidData, error));
                }
            }
        }
    }

    fn apply(&mut self, frame: ToAgent) {
        match frame {
            ToAgent::Spawn(id, request) => {
                self.highest_exec_id = self.highest_exec_id.max(id.0);
                if self.executions.contains_key(&id) || self.relays.contains_key(&id) {
                    let error = SpawnError::IdInUse(id);
                    FromAgent::SpawnFailed(id, error.to_string()).encode(&mut self.outbox);
                    return;
                }
                let result = match (&request.file, request.pty) {
                    // A file operation runs in its own helper: the one started ahead of it,
                    // else a fresh one (operations at once).
                    (Some(file), _) => match self.file_standby.take() {
                        Some(standby) => Ok(standby.activate(id, file)),
                        None => file_helper::spawn(id, file, &self.config),
                    },
                    (None, Some(size)) => {
                        Execution::spawn_terminal(id, &request, &self.config, size)
                    }
                    (None, None) => match self.take_standby(&request) {
                        Some(standby) => Ok(standby.activate(id, &request)),
                        None => Execution::spawn(id, &request, &self.config),
                    },
                };
                if request.language == Language::Bash
                    && request.file.is_none()
                    && self.config.bash_standby
                {
                    self.bash_cwd.clone_from(&request.cwd);
                }
                match result {
                    Ok(execution) => {
                        FromAgent::Started(id).encode(&mut self.outbox);
                        self.executions.insert(id, execution);
                    }
                    Err(error) => {
                        FromAgent::SpawnFailed(id, error.to_string()).encode(&mut self.outbox)
                    }
                }
            }
            ToAgent::Connect(id, port) => {
                self.highest_exec_id = self.highest_exec_id.max(id.0);
                if self.executions.contains_key(&id) || self.relays.contains_key(&id) {
                    let error = SpawnError::IdInUse(id);
                    FromAgent::SpawnFailed(id, error.to_string()).encode(&mut self.outbox);
                    return;
                }
                let ahead = self.relay_sockets.take_for(port);
                match Relay::connect(id, port, ahead, &mut self.outbox) {
                    Ok(relay) => {
                        self.relays_connecting = true;
                        self.relays.insert(id, relay);
                    }
                    Err(message) => FromAgent::SpawnFailed(id, message).encode(&mut self.outbox),
                }
            }
            ToAgent::Stdin(id, data) if self.relays.contains_key(&id) => {
                if let Some(relay) = self.relays.get_mut(&id) {
                    relay.queue(data, &mut self.outbox);
                }
            }
            ToAgent::CloseStdin(id) if self.relays.contains_key(&id) => {
                if let Some(relay) = self.relays.get_mut(&id) {
                    relay.shutdown_write_when_flushed();
                }
            }
            ToAgent::Signal(id, signal) if self.relays.contains_key(&id) => {
                if let Some(relay) = self.relays.get_mut(&id) {
                    relay.close(signal);
                    self.relay_closed_at = Some(Instant::now());
                }
            }
            ToAgent::Credit(id, bytes) if self.relays.contains_key(&id) => {
                if let Some(relay) = self.relays.get_mut(&id) {
                    relay.add_credit(bytes);
                }
            }
            ToAgent::Stdin(id, data) => {
                if let Some(execution) = self.executions.get_mut(&id) {
                    execution.queue_stdin(data, &mut self.outbox);
                } else if self.context_of_cell(id).is_some() && !data.is_empty() {
                    // Cells read no stdin: the bytes count as consumed at once.
                    let count = u32::try_from(data.len()).unwrap_or(u32::MAX);
                    FromAgent::StdinWritten(id, count).encode(&mut self.outbox);
                }
            }
            ToAgent::CloseStdin(id) => {
                if let Some(execution) = self.executions.get_mut(&id) {
                    execution.close_stdin_when_flushed();
                }
            }
            ToAgent::Signal(id, signal) => {
                if let Some(execution) = self.executions.get(&id) {
                    execution.signal_group(signal);
                } else if let Some(context) = self.context_of_cell(id) {
                    if signal == Signal::SIGINT as i32 {
                        context.interrupt(Instant::now());
                    } else {
                        context.kill();
                    }
                }
            }
            ToAgent::Resume { reset } => {
                if reset {
                    // As PID 1, kill(-1) reaches every process of the sandbox but us.
                    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
                    self.executions.clear();
                    self.relays.clear();
                    self.relay_sockets.drop_all();
                    self.bash_standby = None;
                    self.python_standby = None;
                    self.forkserver = None;
                    self.file_standby = None;
                    self.bash_failures = 0;
                    self.forkserver_failures = 0;
                    self.file_standby_failures = 0;
                    // A new sandbox (made from a snapshot's files): its ids start over.
                    self.highest_exec_id = 0;
                    // The code contexts' processes were ended with the rest.
                    self.contexts.clear();
                }
                for execution in self.executions.values_mut() {
                    execution.reset_window();
                }
                for relay in self.relays.values_mut() {
                    relay.reset_window();
                }
                for context in self.contexts.values_mut() {
                    context.reset_window();
                }
                let hello = AgentHello {
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    python_standby: self.config.python_standby,
                    next_exec_id: self.next_exec_id(),
                };
                FromAgent::Ready(hello).encode(&mut self.outbox);
                // The server learns the contexts again (they were checkpointed with us).
                self.report_contexts();
            }
            ToAgent::Inspect => {
                if self.relay_sockets.drop_all() {
                    self.relay_closed_at = Some(Instant::now());
                }
                let mut open = open_tcp_connections();
                // Relays the server closed just before (it does before a checkpoint) are
                // reset; give the network stack a moment to drop them from its table.
                while open > 0
                    && self
                        .relay_closed_at
                        .is_some_and(|closed| closed.elapsed() < RELAY_CLOSE_SETTLE)
                {
                    std::thread::sleep(Duration::from_millis(10));
                    open = open_tcp_connections();
                }
                let inspection = Inspection {
                    open_tcp_connections: open,
                };
                FromAgent::Inspection(inspection).encode(&mut self.outbox);
            }
            ToAgent::Credit(id, bytes) => {
                if let Some(execution) = self.executions.get_mut(&id) {
                    execution.add_credit(bytes);
                } else if let Some(context) = self.context_of_cell(id) {
                    context.add_credit(bytes);
                }
            }
            ToAgent::Resize(id, size) => {
                if let Some(execution) = self.executions.get_mut(&id) {
                    execution.resize(size);
                }
            }
            ToAgent::RunCell(id, request) => {
                self.highest_exec_id = self.highest_exec_id.max(id.0);
                self.run_cell(id, &request);
            }
            ToAgent::Context(ContextCommand::Create { context_id, cwd }) => {
                if self.live_context(&context_id).is_none() {
                    self.add_context(&context_id, &cwd);
                }
                self.report_contexts();
            }
            ToAgent::Context(ContextCommand::Delete { context_id }) => {
                if let Some(slot) = self.live_context(&context_id) {
                    if let Some(context) = self.contexts.get_mut(&slot) {
                        context.deleting = true;
                        context.kill();
                    }
                }
                self.report_contexts();
            }
        }
    }

    /// The slot of the context of that name that is not being deleted.
    fn live_context(&self, context_id: &str) -> Option<u32> {
        self.contexts
            .iter()
            .find(|(_, context)| !context.deleting && context.info.context_id == context_id)
            .map(|(slot, _)| *slot)
    }

    fn add_context(&mut self, context_id: &str, cwd: &str) -> u32 {
        let slot = self.next_context_slot;
        self.next_context_slot = self.next_context_slot.wrapping_add(1);
        let context = Context::start(context_id, cwd, &self.config);
        if let Some(why) = &context.info.died {
            eprintln!("sandbox-agent: code context {context_id}: {why}");
        }
        self.contexts.insert(slot, context);
        slot
    }

    fn context_of_cell(&mut self, id: ExecId) -> Option<&mut Context> {
        self.contexts
            .values_mut()
            .find(|context| context.cell() == Some(id))
    }

    /// A cell for a context, which is started first if there is none of that name.
    fn run_cell(&mut self, id: ExecId, request: &CellRequest) {
        let in_use = self.executions.contains_key(&id) || self.context_of_cell(id).is_some();
        if in_use {
            let error = SpawnError::IdInUse(id);
            FromAgent::SpawnFailed(id, error.to_string()).encode(&mut self.outbox);
            return;
        }
        let slot = match self.live_context(&request.context_id) {
            Some(slot) => slot,
            None => {
                let slot = self.add_context(&request.context_id, &request.cwd);
                self.report_contexts();
                slot
            }
        };
        let Some(context) = self.contexts.get_mut(&slot) else {
            return;
        };
        match context.run_cell(id, request) {
            Ok(()) => FromAgent::Started(id).encode(&mut self.outbox),
            Err(message) => FromAgent::SpawnFailed(id, message).encode(&mut self.outbox),
        }
    }

    /// The live contexts, for the server's table.
    fn report_contexts(&mut self) {
        let contexts = self
            .contexts
            .values()
            .filter(|context| !context.deleting)
            .map(|context| context.info.clone())
            .collect();
        FromAgent::Contexts(contexts).encode(&mut self.outbox);
    }

    /// Report the cells that ended (after their output), and forget deleted contexts whose
    /// process is gone.
    fn finish_cells(&mut self) {
        let now = Instant::now();
        for context in self.contexts.values_mut() {
            if let Some((id, code)) =
                context.finish_cell(&mut self.outbox, &mut self.read_buffer, now)
            {
                FromAgent::Exited(id, ExitStatus::Code(code)).encode(&mut self.outbox);
            }
        }
        self.contexts
            .retain(|_, context| !(context.deleting && context.is_gone()));
    }

    fn kill_doomed_groups(&mut self) {
        self.doomed.retain(|(group, since)| {
            let alive = kill(Pid::from_raw(-group.as_raw()), Signal::SIGKILL).is_ok();
            alive && since.elapsed() < DOOMED_GROUP_WATCH
        });
    }

    /// The lowest execution id never used: the server starts counting from it after a
    /// restore, so that an id names one execution for the sandbox's whole life.
    fn next_exec_id(&self) -> u32 {
        self.highest_exec_id.saturating_add(1)
    }

    /// Reap every exited child: ours are recorded, orphans are simply collected (we are init).
    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.record_exit(pid, ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => {
                    self.record_exit(pid, ExitStatus::Signal(signal as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(_) => return,
            }
        }
    }

    /// A process ended: reaped by us, or reported by the forkserver for its children.
    fn record_exit(&mut self, pid: Pid, status: ExitStatus) {
        if let Some(context) = self
            .contexts
            .values_mut()
            .find(|context| context.pid() == Some(pid) && context.info.died.is_none())
        {
            context.on_exit(status);
            let deleting = context.deleting;
            if !deleting {
                self.report_contexts();
            }
            return;
        }
        if let Some(execution) = self
            .executions
            .values_mut()
            .find(|execution| execution.pid() == pid)
        {
            execution.set_exited(status);
            return;
        }
        let is = |standby: &Option<Standby>| standby.as_ref().is_some_and(|s| s.pid() == pid);
        if is(&self.bash_standby) {
            // It died before being used (for example killed by a user's `pkill bash`). Start
            // another, but give up after repeated failures.
            self.bash_standby = None;
            self.bash_failures += 1;
        } else if is(&self.python_standby) {
            self.python_standby = None;
        } else if self
            .file_standby
            .as_ref()
            .is_some_and(|standby| standby.pid() == pid)
        {
            // Died before being used (a user's `pkill`, a failed start): as for bash.
            self.file_standby = None;
            self.file_standby_failures += 1;
        } else if self
            .forkserver
            .as_ref()
            .is_some_and(|forkserver| forkserver.pid() == pid)
        {
            self.forkserver_ended(status);
        }
    }

    /// The forkserver exited: a new one is started unless it keeps failing. Its children are
    /// ours now (we are init): the one waiting stays usable, and we reap them.
    fn forkserver_ended(&mut self, status: ExitStatus) {
        let Some(mut forkserver) = self.forkserver.take() else {
            return;
        };
        if status != ExitStatus::Code(forkserver::STALE_EXIT) {
            self.forkserver_failures += 1;
            eprintln!(
                "sandbox-agent: the python forkserver ended ({status:?}): {}",
                forkserver.stderr_tail().trim_end()
            );
        }
    }

    /// Handle what the forkserver said; a forkserver that cannot be understood is ended.
    fn read_forkserver(&mut self) {
        loop {
            let Some(forkserver) = self.forkserver.as_mut() else {
                return;
            };
            match forkserver.next_event() {
                Ok(None) => return,
                Ok(Some(forkserver::Event::Forked(pid, child))) => {
                    let standby = Standby::forked(pid, child, &self.config);
                    match self.python_standby {
                        None => self.python_standby = Some(standby),
                        Some(_) => standby.dismiss(),
                    }
                }
                Ok(Some(forkserver::Event::Exited(pid, status))) => self.record_exit(pid, status),
                Err(error) => {
                    eprintln!("sandbox-agent: the python forkserver failed: {error}");
                    let _ = kill(forkserver.pid(), Signal::SIGKILL);
                    // Its exit (reaped as our child) finishes the job.
                    self.forkserver_failures += 1;
                    self.forkserver = None;
                    return;
                }
            }
        }
    }

    /// The standby that serves `request` exactly as a fresh process would, if there is one. A
    /// python request waits (a bounded time) for a child the forkserver is forking.
    fn take_standby(&mut self, request: &SpawnRequest) -> Option<Standby> {
        let limits = &self.config.limits;
        match request.language {
            Language::Bash => self
                .bash_standby
                .take_if(|standby| standby.can_serve(request, limits)),
            Language::Python => {
                if self.python_standby.is_none() {
                    self.wait_for_forked_child();
                }
                self.python_standby
                    .take_if(|standby| standby.can_serve(request, &self.config.limits))
            }
        }
    }

    /// Block (at most [`FORK_WAIT`]) until the child being forked is announced, handling what
    /// else the forkserver says meanwhile. Other executions' pipes are not served meanwhile:
    /// they wait, nothing is lost.
    fn wait_for_forked_child(&mut self) {
        let deadline = Instant::now() + FORK_WAIT;
        while self.python_standby.is_none() {
            let Some(forkserver) = self.forkserver.as_ref() else {
                return;
            };
            if forkserver.pending() == 0 {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::ZERO);
            let mut fds = [PollFd::new(forkserver.control_fd(), PollFlags::POLLIN)];
            match nix::poll::poll(&mut fds, timeout) {
                Ok(0) => return,
                Ok(_) | Err(Errno::EINTR) => self.read_forkserver(),
                Err(_) => return,
            }
        }
    }

    /// Report executions whose process exited and whose pipes are drained.
    fn finish_exited_executions(&mut self) {
        let outbox_has_room = self.outbox.len() < OUTBOX_HIGH_WATER;
        let mut finished = Vec::new();
        for (id, execution) in self.executions.iter_mut() {
            if outbox_has_room {
                execution.drain_after_exit(&mut self.outbox, &mut self.read_buffer);
            }
            if let Some(status) = execution.finished_status() {
                finished.push((*id, status));
            }
        }
        for (id, status) in finished {
            if let Some(group) = self.executions.remove(&id).and_then(|e| e.doomed_group()) {
                self.doomed.push((group, Instant::now()));
            }
            FromAgent::Exited(id, status).encode(&mut self.outbox);
        }
        self.finish_relays();
    }

    /// Relays that failed to connect (reported already) or ended (reported now) go; connects
    /// that take too long fail.
    fn finish_relays(&mut self) {
        self.relays_connecting = false;
        for relay in self.relays.values_mut() {
            self.relays_connecting |= relay.check_connect_timeout(&mut self.outbox);
        }
        self.relays.retain(|_, relay| !relay.failed());
        let ended: Vec<(ExecId, ExitStatus)> = self
            .relays
            .iter()
            .filter_map(|(id, relay)| relay.finished_status().map(|status| (*id, status)))
            .collect();
        for (id, status) in ended {
            self.ended_relays.extend(self.relays.remove(&id));
            FromAgent::Exited(id, status).encode(&mut self.outbox);
        }
    }

    /// Ask the forkserver for the next python child if none is waiting or being forked. Cheap
    /// for the agent (one message; the forkserver forks in parallel), so done at once: executions
    /// back to back find their child ready.
    fn request_python_child(&mut self) {
        let Some(forkserver) = self.forkserver.as_mut() else {
            return;
        };
        if self.python_standby.is_none() && forkserver.pending() == 0 {
            if let Err(error) = forkserver.request_child() {
                eprintln!("sandbox-agent: cannot ask the forkserver for a child: {error}");
            }
        }
    }

    fn forkserver_wanted(&self) -> bool {
        self.config.python_standby
            && self.forkserver.is_none()
            && self.forkserver_failures < MAX_STANDBY_FAILURES
    }

    fn bash_standby_wanted(&self) -> bool {
        self.config.bash_standby
            && self.bash_failures < MAX_STANDBY_FAILURES
            && self
                .bash_standby
                .as_ref()
                .is_none_or(|standby| !standby.started_in(&self.bash_cwd))
    }

    fn file_standby_wanted(&self) -> bool {
        self.config.file_standby
            && self.file_standby.is_none()
            && self.file_standby_failures < MAX_STANDBY_FAILURES
    }

    fn standbys_missing(&self) -> bool {
        self.forkserver_wanted() || self.bash_standby_wanted() || self.file_standby_wanted()
    }

    /// Start what is missing: the forkserver, a bash (in the directory bash executions use), a
    /// file helper. These spawns block the loop for a few milliseconds: only called when idle.
    fn start_standbys(&mut self) {
        if self.forkserver_wanted() {
            match Forkserver::start(&self.config) {
                Ok(forkserver) => self.forkserver = Some(forkserver),
                Err(error) => {
                    eprintln!("sandbox-agent: cannot start the python forkserver: {error}");
                    self.forkserver_failures += 1;
                }
            }
            self.request_python_child();
        }
        if self.bash_standby_wanted() {
            if let Some(standby) = self.bash_standby.take() {
                // Executions moved to another directory: follow them.
                standby.dismiss();
            }
            match Standby::start_bash(&self.config, &self.bash_cwd) {
                Ok(standby) => self.bash_standby = Some(standby),
                Err(error) => {
                    eprintln!("sandbox-agent: cannot start the bash standby: {error}");
                    self.bash_failures += 1;
                }
            }
        }
        if self.file_standby_wanted() {
            match FileStandby::start(&self.config) {
                Ok(standby) => self.file_standby = Some(standby),
                Err(error) => {
                    eprintln!("sandbox-agent: cannot start the file helper standby: {error}");
                    self.file_standby_failures += 1;
                }
            }
        }
    }

    fn flush_outbox(&mut self) -> io::Result<()> {
        while !self.outbox.is_empty() {
            match self.server_out.write(&self.outbox) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.outbox.drain(..n);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    fn kill_everything(&mut self) {
        for execution in self.executions.values() {
            execution.signal_group(Signal::SIGKILL as i32);
        }
        for standby in [self.bash_standby.take(), self.python_standby.take()]
            .into_iter()
            .flatten()
        {
            standby.dismiss();
        }
        if let Some(standby) = self.file_standby.take() {
            standby.dismiss();
        }
        if let Some(forkserver) = self.forkserver.take() {
            let _ = kill(forkserver.pid(), Signal::SIGKILL);
        }
        for context in self.contexts.values() {
            context.kill();
        }
        self.contexts.clear();
        // Anything else (background processes) dies with the container.
        self.executions.clear();
        self.relays.clear();
    }
}

/// The loop wakes at `until` at the latest (`wake_at` is the earliest time asked so far).
fn wake_by(wake_at: &mut Option<Instant>, until: Instant) {
    *wake_at = Some(wake_at.map_or(until, |at| at.min(until)));
}

/// TCP sockets in any state but LISTEN (0A) and CLOSE (07), from /proc/net/tcp and tcp6.
fn open_tcp_connections() -> u32 {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|table| count_open_connections(&table))
        .sum()
}

fn count_open_connections(table: &str) -> u32 {
    table
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(3))
        .filter(|state| *state != "0A" && *state != "07")
        .count() as u32
}

#[cfg(test)]
mod tests {
    #[test]
    fn listening_sockets_are_not_connections() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000\n   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000\n   2: 0100007F:C350 0100007F:1F90 08 00000000:00000000\n";
        assert_eq!(super::count_open_connections(table), 2);
    }
}
