//! The agent: the first process of every sandbox container.
//!
//! It does three jobs, all from one `poll(2)` loop:
//! - it is the container's init, so it reaps every process that exits (orphans included),
//!   which keeps `RLIMIT_NPROC` honest and lets `runsc delete` finish at once;
//! - it spawns executions on request (frames on its stdin, see [`crate::protocol`]) and
//!   relays their stdin, stdout, stderr and exit status;
//! - it keeps one Python interpreter pre-started, so that a `python` execution does not pay the
//!   interpreter's start-up.
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
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::execution::{Execution, PipeRead, SpawnError};
use crate::protocol::{
    AgentConfig, AgentHello, ExecId, ExitStatus, FrameDecoder, FromAgent, Inspection, Language,
    ToAgent,
};
use crate::standby::Standby;

/// How long a killed execution's process group is watched for survivors.
const DOOMED_GROUP_WATCH: Duration = Duration::from_secs(2);

/// How often such a group is killed again.
const DOOMED_RETRY: Duration = Duration::from_millis(20);

/// Output frames held for the server before the agent stops reading process pipes.
pub(crate) const OUTBOX_HIGH_WATER: usize = 256 * 1024;

/// Where each polled descriptor belongs.
#[derive(Debug, Clone, Copy)]
enum Source {
    ServerIn,
    ServerOut,
    Signals,
    ExecStdout(ExecId),
    ExecStderr(ExecId),
    ExecStdin(ExecId),
}

pub struct Agent {
    config: AgentConfig,
    server_in: File,
    server_out: File,
    server_closed: bool,
    decoder: FrameDecoder,
    outbox: Vec<u8>,
    signals: UnixStream,
    executions: BTreeMap<ExecId, Execution>,
    standby: Option<Standby>,
    standby_failures: u32,
    /// Process groups of killed executions, and since when: under gVisor a child forked while
    /// the group kill was delivered can survive it, so the group is killed again until it is
    /// empty (ESRCH) or for `DOOMED_GROUP_WATCH`.
    doomed: Vec<(Pid, Instant)>,
    /// The highest execution id the server has used in this sandbox: ids are never reused,
    /// also across a checkpoint (this survives in the agent's memory) and a restore.
    highest_exec_id: u32,
}

impl Agent {
    pub fn new(config: AgentConfig) -> io::Result<Self> {
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
        Ok(Agent {
            config,
            server_in,
            server_out,
            server_closed: false,
            decoder: FrameDecoder::new(),
            outbox: Vec::with_capacity(64 * 1024),
            signals: signal_reader,
            executions: BTreeMap::new(),
            standby: None,
            standby_failures: 0,
            doomed: Vec::new(),
            highest_exec_id: 0,
        })
    }

    /// Runs until the server closes the agent's stdin (the sandbox is being deleted).
    pub fn run(mut self) -> io::Result<()> {
        // Hello first: the standby interpreter starts while the server already counts the
        // sandbox as ready (a python execution that comes first simply waits for it).
        let hello = AgentHello {
            version: env!("CARGO_PKG_VERSION").to_string(),
            python_standby: self.config.python_standby,
            next_exec_id: self.next_exec_id(),
        };
        FromAgent::Ready(hello).encode(&mut self.outbox);
        self.flush_outbox()?;
        self.refill_standby();
        loop {
            self.flush_outbox()?;
            if self.server_closed && self.executions.is_empty() {
                return Ok(());
            }
            let ready = self.wait_for_events()?;
            for (source, flags) in ready {
                self.handle(source, flags)?;
            }
            self.finish_exited_executions();
            self.kill_doomed_groups();
        }
    }

    fn wait_for_events(&mut self) -> io::Result<Vec<(Source, PollFlags)>> {
        let readable = PollFlags::POLLIN;
        let writable = PollFlags::POLLOUT;
        let outbox_has_room = self.outbox.len() < OUTBOX_HIGH_WATER;
        let mut sources = Vec::new();
        let mut fds: Vec<PollFd<'_>> = Vec::new();
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
        for (id, execution) in &self.executions {
            // An execution whose window is closed is not read: it blocks in `write` until the
            // server gives credit, and the others go on.
            if outbox_has_room && execution.output_window_open() {
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
        }
        // While killed groups may still hold a process, wake up to kill them again; a terminal
        // whose process exited is drained until a deadline its master never reports.
        let mut wake_in: Option<Duration> = (!self.doomed.is_empty()).then_some(DOOMED_RETRY);
        let now = Instant::now();
        for execution in self.executions.values() {
            if let Some(deadline) = execution.drain_deadline() {
                let left = deadline.saturating_duration_since(now) + Duration::from_millis(1);
                wake_in = Some(wake_in.map_or(left, |wake_in| wake_in.min(left)));
            }
        }
        let timeout = match wake_in {
            None => PollTimeout::NONE,
            Some(wake_in) => PollTimeout::try_from(wake_in).unwrap_or(PollTimeout::from(20u8)),
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
                    execution.read_output(which, &mut self.outbox);
                }
                Ok(())
            }
            Source::ExecStdin(id) => {
                let _ = flags;
                if let Some(execution) = self.executions.get_mut(&id) {
                    execution.write_stdin(&mut self.outbox);
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
                Ok(n) => self.decoder.push(&buffer[..n]),
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
                if self.executions.contains_key(&id) {
                    let error = SpawnError::IdInUse(id);
                    FromAgent::SpawnFailed(id, error.to_string()).encode(&mut self.outbox);
                    return;
                }
                let standby = if request.language == Language::Python && request.pty.is_none() {
                    self.standby
                        .take_if(|standby| standby.can_serve(&request, &self.config.limits))
                } else {
                    None
                };
                let result = match (standby, request.pty) {
                    (_, Some(size)) => Execution::spawn_terminal(id, &request, &self.config, size),
                    (Some(standby), None) => Ok(standby.activate(id, &request)),
                    (None, None) => Execution::spawn(id, &request, &self.config),
                };
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
            ToAgent::Stdin(id, data) => {
                if let Some(execution) = self.executions.get_mut(&id) {
                    execution.queue_stdin(data, &mut self.outbox);
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
                }
            }
            ToAgent::Resume { reset } => {
                if reset {
                    // As PID 1, kill(-1) reaches every process of the sandbox but us.
                    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
                    self.executions.clear();
                    self.standby = None;
                    self.standby_failures = 0;
                    // A new sandbox (made from a snapshot's files): its ids start over.
                    self.highest_exec_id = 0;
                    self.refill_standby();
                }
                for execution in self.executions.values_mut() {
                    execution.reset_window();
                }
                let hello = AgentHello {
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    python_standby: self.standby.is_some(),
                    next_exec_id: self.next_exec_id(),
                };
                FromAgent::Ready(hello).encode(&mut self.outbox);
            }
            ToAgent::Inspect => {
                let inspection = Inspection {
                    open_tcp_connections: open_tcp_connections(),
                };
                FromAgent::Inspection(inspection).encode(&mut self.outbox);
            }
            ToAgent::Credit(id, bytes) => {
                if let Some(execution) = self.executions.get_mut(&id) {
                    execution.add_credit(bytes);
                }
            }
            ToAgent::Resize(id, size) => {
                if let Some(execution) = self.executions.get(&id) {
                    execution.resize(size);
                }
            }
        }
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

    fn record_exit(&mut self, pid: Pid, status: ExitStatus) {
        if let Some(execution) = self
            .executions
            .values_mut()
            .find(|execution| execution.pid() == pid)
        {
            execution.set_exited(status);
            return;
        }
        if self
            .standby
            .as_ref()
            .is_some_and(|standby| standby.pid() == pid)
        {
            // The interpreter died before being used (for example killed by a user's
            // `pkill python3`). Start another, but give up after repeated failures.
            self.standby = None;
            self.standby_failures += 1;
        }
    }

    /// Report executions whose process exited and whose pipes are drained.
    fn finish_exited_executions(&mut self) {
        let outbox_has_room = self.outbox.len() < OUTBOX_HIGH_WATER;
        let mut finished = Vec::new();
        for (id, execution) in self.executions.iter_mut() {
            if outbox_has_room {
                execution.drain_after_exit(&mut self.outbox);
            }
            if let Some(status) = execution.finished_status() {
                finished.push((*id, status, execution.was_python()));
            }
        }
        let mut python_finished = false;
        for (id, status, was_python) in finished {
            if let Some(group) = self.executions.remove(&id).and_then(|e| e.doomed_group()) {
                self.doomed.push((group, Instant::now()));
            }
            FromAgent::Exited(id, status).encode(&mut self.outbox);
            python_finished |= was_python;
        }
        if python_finished || self.standby.is_none() {
            self.refill_standby();
        }
    }

    fn refill_standby(&mut self) {
        if !self.config.python_standby || self.standby.is_some() || self.standby_failures >= 3 {
            return;
        }
        // Start the next interpreter only when no Python execution runs, so it sees the
        // filesystem (e.g. packages installed by the previous execution) as fresh as possible.
        if self.executions.values().any(Execution::was_python) {
            return;
        }
        match Standby::start(&self.config) {
            Ok(standby) => self.standby = Some(standby),
            Err(error) => {
                eprintln!("sandbox-agent: cannot start the standby interpreter: {error}");
                self.standby_failures += 1;
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
        if let Some(standby) = self.standby.take() {
            let _ = kill(standby.pid(), Signal::SIGKILL);
        }
        // Anything else (background processes) dies with the container.
        self.executions.clear();
    }
}

pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
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
