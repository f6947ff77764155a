//! One running execution inside the sandbox: its process group, pipes and pending stdin.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::pipes::AgentEnds;
use crate::protocol::{
    AgentConfig, ExecId, ExitStatus, FromAgent, Language, ProcessLimits, SpawnRequest, Stream,
    MAX_OUTPUT_CHUNK_BYTES, OUTPUT_WINDOW_BYTES,
};

/// `execve` refuses a single argument longer than 128 KiB; larger code goes through a file.
pub const MAX_INLINE_CODE_BYTES: usize = 96 * 1024;

/// Output still read from a process's pipes after it exited (a pipe holds up to
/// `pipes::OUTPUT_PIPE_BYTES`; this leaves room for both pipes and for data in flight).
const MAX_DRAIN_AFTER_EXIT: usize = 4 * 1024 * 1024;

/// After a read that emptied a pipe, the pipe is left to fill for this long before it is read
/// again. Each read, frame and wake-up costs several syscalls of tens of microseconds under
/// gVisor: without a rest, a writer of 4 KiB chunks would cost the agent a wake-up per chunk
/// (it reads faster than they come), with one it costs one per millisecond, and a fast writer
/// is not slowed (a pipe holds 1 MiB, a read takes it all). Output that ends the execution is
/// not delayed: an exited process's pipes are drained at once (`drain_after_exit`).
pub const OUTPUT_REST: Duration = Duration::from_millis(1);

/// Written stdin is removed from the front of the buffer once this much accumulates.
const STDIN_COMPACT_AFTER: usize = 1024 * 1024;

/// A pipe's default capacity, and the one asked for a process fed more than that at once.
const STDIN_PIPE_BYTES: usize = 64 * 1024;
const LARGE_STDIN_PIPE_BYTES: i32 = 1024 * 1024;

/// Where code too large for an argument is written inside the sandbox.
const CODE_DIR: &str = "/run/sandbox-agent";

/// Why an execution could not be started; the text goes to the server in `SpawnFailed`.
#[derive(Debug)]
pub enum SpawnError {
    /// The server reused the id of a running execution.
    IdInUse(ExecId),
    NoSuchDirectory(String),
    /// Code too large for an argument could not be written to a file.
    StoreCode {
        path: PathBuf,
        source: io::Error,
    },
    /// A pipe for the standby interpreter's request could not be made.
    Pipe(io::Error),
    Start(io::Error),
    ConfigurePipes(io::Error),
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpawnError::IdInUse(id) => write!(f, "execution id {id} is already in use"),
            SpawnError::NoSuchDirectory(cwd) => {
                write!(f, "working directory {cwd:?} does not exist")
            }
            SpawnError::StoreCode { path, source } => {
                write!(f, "cannot store the code in {}: {source}", path.display())
            }
            SpawnError::Pipe(source) => write!(f, "cannot make a pipe: {source}"),
            SpawnError::Start(source) => write!(f, "cannot start the process: {source}"),
            SpawnError::ConfigurePipes(source) => {
                write!(f, "cannot configure the pipes: {source}")
            }
        }
    }
}

impl std::error::Error for SpawnError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SpawnError::StoreCode { source, .. }
            | SpawnError::Pipe(source)
            | SpawnError::Start(source)
            | SpawnError::ConfigurePipes(source) => Some(source),
            SpawnError::IdInUse(_) | SpawnError::NoSuchDirectory(_) => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum PipeRead {
    Stdout,
    Stderr,
}

pub struct Execution {
    id: ExecId,
    pid: Pid,
    stdin: Option<File>,
    /// Stdin to write, from `stdin_written` on (written bytes are removed in batches: see
    /// `write_stdin`).
    stdin_pending: Vec<u8>,
    stdin_written: usize,
    /// Its stdin pipe was enlarged (see `queue_stdin`).
    stdin_pipe_enlarged: bool,
    close_stdin_when_flushed: bool,
    stdout: Option<File>,
    stderr: Option<File>,
    /// A process started ahead of its request (see `standby`) reads the request from this pipe;
    /// what the pipe did not take yet waits here, and the pipe closes once it is all written
    /// (the end of file tells the process the request is complete).
    request: Option<File>,
    request_pending: Vec<u8>,
    exit: Option<ExitStatus>,
    code_file: Option<PathBuf>,
    /// SIGKILL was asked for: the group is killed again when the leader is gone, because a
    /// child forked while the first kill was delivered can survive it under gVisor.
    kill_requested: std::cell::Cell<bool>,
    /// Bytes read since the process exited (see `MAX_DRAIN_AFTER_EXIT`).
    drained_after_exit: usize,
    /// Output bytes it may still send before the server gives some back (the protocol's
    /// output window): its pipes are read only while this is above zero.
    window: u64,
    /// Its pipes are not read again before this (see [`OUTPUT_REST`]).
    resting_until: Option<Instant>,
}

impl Execution {
    /// Start `request` as a new process group with fresh pipes.
    pub fn spawn(
        id: ExecId,
        request: &SpawnRequest,
        config: &AgentConfig,
    ) -> Result<Self, SpawnError> {
        let cwd_is_dir = std::fs::metadata(&request.cwd)
            .map(|meta| meta.is_dir())
            .unwrap_or(false);
        if !cwd_is_dir {
            return Err(SpawnError::NoSuchDirectory(request.cwd.clone()));
        }
        let (program, flag, extension) = match request.language {
            Language::Python => ("/usr/bin/python3", "-c", "py"),
            Language::Bash => ("/bin/bash", "-c", "sh"),
        };
        let mut command = Command::new(program);
        let mut code_file = None;
        if request.code.len() > MAX_INLINE_CODE_BYTES {
            let path = PathBuf::from(format!("{CODE_DIR}/exec-{id}.{extension}"));
            std::fs::create_dir_all(CODE_DIR)
                .and_then(|()| std::fs::write(&path, &request.code))
                .map_err(|source| SpawnError::StoreCode {
                    path: path.clone(),
                    source,
                })?;
            command.arg(&path);
            code_file = Some(path);
        } else {
            command.arg(flag).arg(&request.code);
        }
        prepare_command(&mut command, config, &request.limits);
        command.envs(request.env.iter().map(|(key, value)| (key, value)));
        command.current_dir(&request.cwd);
        let mut execution = Self::from_command(id, command)?;
        execution.code_file = code_file;
        Ok(execution)
    }

    /// Spawn a prepared command with piped stdio and wrap it.
    pub fn from_command(id: ExecId, mut command: Command) -> Result<Self, SpawnError> {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(SpawnError::Start)?;
        // The agent reaps with waitpid(-1); the `Child` handle is not used to wait.
        let pid = Pid::from_raw(child.id() as i32);
        let ends = match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
            (Some(stdin), Some(stdout), Some(stderr)) => AgentEnds {
                stdin: File::from(OwnedFd::from(stdin)),
                stdout: File::from(OwnedFd::from(stdout)),
                stderr: File::from(OwnedFd::from(stderr)),
            },
            // All three were asked for as pipes just above.
            _ => unreachable!("spawned with three piped streams"),
        };
        ends.configure().map_err(SpawnError::ConfigurePipes)?;
        Ok(Self::from_parts(id, pid, ends))
    }

    /// A process started by someone else (the forkserver) whose stdio are `ends`' pipes.
    pub fn from_parts(id: ExecId, pid: Pid, ends: AgentEnds) -> Self {
        Execution {
            id,
            pid,
            stdin: Some(ends.stdin),
            stdin_pending: Vec::new(),
            stdin_written: 0,
            stdin_pipe_enlarged: false,
            close_stdin_when_flushed: false,
            stdout: Some(ends.stdout),
            stderr: Some(ends.stderr),
            request: None,
            request_pending: Vec::new(),
            exit: None,
            code_file: None,
            kill_requested: std::cell::Cell::new(false),
            drained_after_exit: 0,
            window: u64::from(OUTPUT_WINDOW_BYTES),
            resting_until: None,
        }
    }

    /// Until when its pipes rest (not read), if they do.
    pub fn resting_until(&self) -> Option<Instant> {
        self.resting_until
    }

    pub fn set_id(&mut self, id: ExecId) {
        self.id = id;
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Whether its output may be read now (its window is open).
    pub fn output_window_open(&self) -> bool {
        self.window > 0
    }

    /// The server consumed `bytes` more of its output.
    pub fn add_credit(&mut self, bytes: u32) {
        // Saturating: a confused server must not make the agent panic.
        self.window = self.window.saturating_add(u64::from(bytes));
    }

    /// A restored server has nothing in flight: the window is full again.
    pub fn reset_window(&mut self) {
        self.window = u64::from(OUTPUT_WINDOW_BYTES);
    }

    pub fn stdout_fd(&self) -> Option<BorrowedFd<'_>> {
        self.stdout.as_ref().map(|pipe| pipe.as_fd())
    }

    pub fn stderr_fd(&self) -> Option<BorrowedFd<'_>> {
        self.stderr.as_ref().map(|pipe| pipe.as_fd())
    }

    fn has_stdin_pending(&self) -> bool {
        self.stdin_written < self.stdin_pending.len()
    }

    pub fn stdin_fd_if_pending(&self) -> Option<BorrowedFd<'_>> {
        if !self.has_stdin_pending() {
            None
        } else {
            self.stdin.as_ref().map(|pipe| pipe.as_fd())
        }
    }

    /// Hand the process its request on `pipe` (non-blocking): what fits now is written at
    /// once, the rest when the pipe has room (`write_request`).
    pub fn send_request(&mut self, pipe: File, bytes: Vec<u8>) {
        self.request = Some(pipe);
        self.request_pending = bytes;
        self.write_request();
    }

    pub fn request_fd_if_pending(&self) -> Option<BorrowedFd<'_>> {
        self.request.as_ref().map(|pipe| pipe.as_fd())
    }

    /// Write what the request pipe takes; close it once the request is complete. A process
    /// that closed its end (it died) makes the rest moot.
    pub fn write_request(&mut self) {
        let Some(pipe) = self.request.as_mut() else {
            return;
        };
        let mut written = 0;
        while written < self.request_pending.len() {
            match pipe.write(&self.request_pending[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    written = self.request_pending.len();
                    break;
                }
            }
        }
        self.request_pending.drain(..written);
        if self.request_pending.is_empty() {
            self.request = None;
        }
    }

    /// Queue `data` for the process's stdin. If its stdin is closed already, nobody can read
    /// the bytes: they count as written at once (the server's window must not wait for them).
    pub fn queue_stdin(&mut self, data: Vec<u8>, outbox: &mut Vec<u8>) {
        if let Some(pipe) = self.stdin.as_ref() {
            self.stdin_pending.extend_from_slice(&data);
            if !self.stdin_pipe_enlarged && self.stdin_pending.len() > STDIN_PIPE_BYTES {
                // A process fed megabytes gets a larger pipe: under gVisor each pipe-full
                // costs a poll round trip between the agent and the process. Asked only then,
                // so that executions without much stdin pay no extra system call. Best
                // effort: the default pipe works, only slower.
                self.stdin_pipe_enlarged = true;
                let _ = nix::fcntl::fcntl(
                    pipe.as_raw_fd(),
                    nix::fcntl::FcntlArg::F_SETPIPE_SZ(LARGE_STDIN_PIPE_BYTES),
                );
            }
        } else if !data.is_empty() {
            // A frame holds at most MAX_FRAME_BYTES, so its length fits in a u32.
            let discarded = u32::try_from(data.len()).unwrap_or(u32::MAX);
            FromAgent::StdinWritten(self.id, discarded).encode(outbox);
        }
    }

    pub fn close_stdin_when_flushed(&mut self) {
        self.close_stdin_when_flushed = true;
        if !self.has_stdin_pending() {
            self.stdin = None;
        }
    }

    /// Write what the pipe takes now; report progress so the server can bound what is in
    /// flight. A process that closed its stdin makes the rest count as written (and dropped:
    /// nobody can read it any more).
    pub fn write_stdin(&mut self, outbox: &mut Vec<u8>) {
        let Some(pipe) = self.stdin.as_mut() else {
            return;
        };
        let before = self.stdin_written;
        let mut broken = false;
        while self.stdin_written < self.stdin_pending.len() {
            match pipe.write(&self.stdin_pending[self.stdin_written..]) {
                Ok(0) => break,
                Ok(n) => self.stdin_written += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        if broken {
            self.stdin_written = self.stdin_pending.len();
            self.stdin = None;
        }
        let written = self.stdin_written - before;
        if written > 0 {
            // At most what the server sent, which its frames bound to far below 4 GiB.
            let count = u32::try_from(written).unwrap_or(u32::MAX);
            FromAgent::StdinWritten(self.id, count).encode(outbox);
        }
        // Written bytes leave the buffer in batches: moving the rest after every 64 KiB
        // write would be quadratic in what waits.
        if self.stdin_written == self.stdin_pending.len() {
            self.stdin_pending.clear();
            self.stdin_written = 0;
        } else if self.stdin_written >= STDIN_COMPACT_AFTER {
            self.stdin_pending.drain(..self.stdin_written);
            self.stdin_written = 0;
        }
        if !self.has_stdin_pending() && self.close_stdin_when_flushed {
            self.stdin = None;
        }
    }

    /// Read a pipe that polled readable until it is empty, the window closes or the outbox is
    /// full: each poll round trip is several slow syscalls under gVisor, so one read per
    /// wake-up would cut the throughput to a fraction. `scratch` is where reads land (at
    /// least [`MAX_OUTPUT_CHUNK_BYTES`]: the agent's one buffer, so no read allocates).
    pub fn read_output(&mut self, which: PipeRead, outbox: &mut Vec<u8>, scratch: &mut [u8]) {
        loop {
            if outbox.len() >= crate::agent_loop::OUTBOX_HIGH_WATER || !self.output_window_open() {
                // Stopped by the server's pace, not the writer's: read again once there is room.
                return;
            }
            if !self.read_chunk(which, outbox, scratch) {
                break;
            }
        }
        // The pipe is empty: the writer is slower than the reads.
        self.resting_until = Some(Instant::now() + OUTPUT_REST);
    }

    /// Read what the pipe holds in one read, up to a frame's worth (and what the window
    /// allows), and frame it: a writer's small writes become one frame instead of one each.
    /// Returns whether the pipe may hold more right now: only a read that filled all the room
    /// (a pipe gives all it has up to the size asked for, so a shorter read emptied it; not
    /// asking again saves a syscall that would only say "would block").
    fn read_chunk(&mut self, which: PipeRead, outbox: &mut Vec<u8>, scratch: &mut [u8]) -> bool {
        let room = usize::try_from(self.window)
            .unwrap_or(usize::MAX)
            .min(MAX_OUTPUT_CHUNK_BYTES)
            .min(scratch.len());
        if room == 0 {
            return false;
        }
        let stream = match which {
            PipeRead::Stdout => Stream::Stdout,
            PipeRead::Stderr => Stream::Stderr,
        };
        let pipe = match which {
            PipeRead::Stdout => self.stdout.as_mut(),
            PipeRead::Stderr => self.stderr.as_mut(),
        };
        let Some(pipe) = pipe else {
            return false;
        };
        let read = loop {
            match pipe.read(&mut scratch[..room]) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match read {
            Ok(0) => {
                self.close_pipe(which);
                false
            }
            Ok(n) => {
                self.window = self.window.saturating_sub(n as u64);
                FromAgent::encode_output(self.id, stream, &scratch[..n], outbox);
                n == room
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => false,
            Err(_) => {
                self.close_pipe(which);
                false
            }
        }
    }

    fn close_pipe(&mut self, which: PipeRead) {
        match which {
            PipeRead::Stdout => self.stdout = None,
            PipeRead::Stderr => self.stderr = None,
        }
    }

    pub fn set_exited(&mut self, status: ExitStatus) {
        self.exit = Some(status);
    }

    /// Once the process has exited, everything it wrote is already in its pipes: read until
    /// the pipe is empty, then close it. A background child still holding the pipe open does
    /// not keep the execution alive; what it writes later is not collected.
    pub fn drain_after_exit(&mut self, outbox: &mut Vec<u8>, scratch: &mut [u8]) {
        if self.exit.is_none() {
            return;
        }
        for which in [PipeRead::Stdout, PipeRead::Stderr] {
            loop {
                // Not read further until there is room: the pipe stays open meanwhile.
                if outbox.len() >= crate::agent_loop::OUTBOX_HIGH_WATER
                    || !self.output_window_open()
                {
                    return;
                }
                // What the process wrote before exiting fits in the pipe's buffer; past this
                // much, children that outlive it keep the pipe busy and are not waited for.
                if self.drained_after_exit >= MAX_DRAIN_AFTER_EXIT {
                    break;
                }
                let before = outbox.len();
                let more = self.read_chunk(which, outbox, scratch);
                self.drained_after_exit += outbox.len().saturating_sub(before);
                if !more {
                    break;
                }
            }
            self.close_pipe(which);
        }
    }

    /// Read both pipes until they are empty now (a code cell ended: what its context wrote is
    /// in the pipes already). False while the window or the outbox stops the reading.
    pub fn drain_available(&mut self, outbox: &mut Vec<u8>, scratch: &mut [u8]) -> bool {
        for which in [PipeRead::Stdout, PipeRead::Stderr] {
            loop {
                if outbox.len() >= crate::agent_loop::OUTBOX_HIGH_WATER
                    || !self.output_window_open()
                {
                    return false;
                }
                if !self.read_chunk(which, outbox, scratch) {
                    break;
                }
            }
        }
        true
    }

    /// Bytes it may send now (its window, at most one chunk).
    pub fn window_room(&self) -> usize {
        usize::try_from(self.window)
            .unwrap_or(usize::MAX)
            .min(MAX_OUTPUT_CHUNK_BYTES)
    }

    /// `bytes` of other output (a code cell's events) were sent under its window.
    pub fn spend_window(&mut self, bytes: usize) {
        self.window = self.window.saturating_sub(bytes as u64);
    }

    pub fn finished_status(&self) -> Option<ExitStatus> {
        match self.exit {
            Some(status) if self.stdout.is_none() && self.stderr.is_none() => Some(status),
            _ => None,
        }
    }

    pub fn signal_group(&self, signal: i32) {
        let Ok(signal) = Signal::try_from(signal) else {
            return;
        };
        if signal == Signal::SIGKILL {
            self.kill_requested.set(true);
        }
        // The process leads its own group (process_group(0)), so -pid reaches its children too.
        let _ = kill(Pid::from_raw(-self.pid.as_raw()), signal);
    }

    /// The process group to keep killing after the execution ended, if its kill was asked for
    /// (see `kill_requested`).
    pub fn doomed_group(&self) -> Option<Pid> {
        self.kill_requested.get().then_some(self.pid)
    }
}

impl Drop for Execution {
    fn drop(&mut self) {
        if let Some(path) = self.code_file.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Settings shared by every process the agent starts: clean environment, own process group,
/// resource limits, and plain uid 0 (the agent's real and saved uid are its own, which user
/// code must not inherit: see `identity`).
pub fn prepare_command(command: &mut Command, config: &AgentConfig, limits: &ProcessLimits) {
    command.env_clear();
    command.envs(config.base_env.iter().map(|(key, value)| (key, value)));
    command.process_group(0);
    sandbox_ffi::set_child_rlimits(command, rlimits(limits));
    sandbox_ffi::set_child_uid(command, 0);
}

fn rlimits(limits: &ProcessLimits) -> Vec<sandbox_ffi::Rlimit> {
    let pairs = [
        (libc::RLIMIT_AS, limits.address_space_bytes),
        (libc::RLIMIT_NPROC, limits.processes),
        (libc::RLIMIT_CPU, limits.cpu_seconds),
        (libc::RLIMIT_FSIZE, limits.file_size_bytes),
        (libc::RLIMIT_NOFILE, limits.open_files),
    ];
    pairs
        .into_iter()
        .filter_map(|(resource, value)| {
            value.map(|limit| sandbox_ffi::Rlimit {
                resource: resource as i32,
                limit,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::FrameDecoder;
    use std::time::{Duration, Instant};

    /// Reads the execution's stdout as the agent's loop would (the outbox emptied after each
    /// turn, as if sent), until nothing more comes for a while; the bytes read.
    fn read_until_quiet(execution: &mut Execution) -> usize {
        let mut total = 0;
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < Duration::from_millis(300) {
            let mut outbox = Vec::new();
            let mut scratch = vec![0u8; MAX_OUTPUT_CHUNK_BYTES];
            execution.read_output(PipeRead::Stdout, &mut outbox, &mut scratch);
            let mut decoder = FrameDecoder::new();
            decoder.push(&outbox);
            while let Some(frame) = decoder.next_from_agent().unwrap() {
                let FromAgent::Output(_, Stream::Stdout, data) = frame else {
                    panic!("{frame:?}");
                };
                total += data.len();
                quiet_since = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        total
    }

    /// A pipe emptied by a read rests; one left unread because the window closed does not (the
    /// writer is waiting for the server then, not the other way round).
    #[test]
    fn an_emptied_pipe_rests_a_full_window_does_not() {
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg("printf abc; sleep 1")
            .process_group(0);
        let mut execution = Execution::from_command(ExecId(1), command).unwrap();
        let mut scratch = vec![0u8; MAX_OUTPUT_CHUNK_BYTES];
        let mut outbox = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while outbox.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            execution.read_output(PipeRead::Stdout, &mut outbox, &mut scratch);
        }
        let rest = execution.resting_until().expect("an emptied pipe rests");
        assert!(rest > Instant::now() && rest <= Instant::now() + OUTPUT_REST);
        execution.resting_until = None;
        execution.window = 0;
        execution.read_output(PipeRead::Stdout, &mut outbox, &mut scratch);
        assert_eq!(execution.resting_until(), None);
        execution.signal_group(libc::SIGKILL);
        let pid = execution.pid();
        drop(execution);
        let _ = nix::sys::wait::waitpid(pid, None);
    }

    /// A process that writes more than its window stops there, and goes on by the credit
    /// given back (a real process and real pipes, outside any sandbox).
    #[test]
    fn output_is_read_only_while_the_window_is_open() {
        let window = OUTPUT_WINDOW_BYTES as usize;
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(format!("head -c {} /dev/zero", 2 * window))
            .process_group(0);
        let mut execution = Execution::from_command(ExecId(1), command).unwrap();
        assert_eq!(read_until_quiet(&mut execution), window);
        assert!(!execution.output_window_open());
        execution.add_credit(1000);
        assert_eq!(read_until_quiet(&mut execution), 1000);
        execution.reset_window();
        assert_eq!(read_until_quiet(&mut execution), window - 1000);
        execution.add_credit(u32::MAX);
        execution.add_credit(u32::MAX);
        assert!(
            execution.output_window_open(),
            "credit saturates, never wraps"
        );
        let pid = execution.pid();
        drop(execution);
        let _ = nix::sys::wait::waitpid(pid, None);
    }

    /// The stdin acknowledgements the agent sends, summed.
    fn acknowledged(outbox: &[u8]) -> u64 {
        let mut decoder = FrameDecoder::new();
        decoder.push(outbox);
        let mut total = 0;
        while let Some(frame) = decoder.next_from_agent().unwrap() {
            let FromAgent::StdinWritten(ExecId(1), count) = frame else {
                panic!("{frame:?}");
            };
            total += u64::from(count);
        }
        total
    }

    /// Every byte of stdin is acknowledged: written to the pipe, or discarded once the process
    /// closed its stdin (a server waiting for the acknowledgement would wait forever).
    #[test]
    fn stdin_is_acknowledged_when_written_and_when_discarded() {
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg("head -c 3 >/dev/null; exec 0<&-; sleep 5")
            .process_group(0);
        let mut execution = Execution::from_command(ExecId(1), command).unwrap();
        let mut outbox = Vec::new();
        execution.queue_stdin(b"abc".to_vec(), &mut outbox);
        execution.write_stdin(&mut outbox);
        assert_eq!(acknowledged(&outbox), 3);
        // Once the process closed its stdin, writes fail and what waits is discarded.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut total = 0;
        while total < 5 && Instant::now() < deadline {
            let mut outbox = Vec::new();
            execution.queue_stdin(b"x".to_vec(), &mut outbox);
            execution.write_stdin(&mut outbox);
            total += acknowledged(&outbox);
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(total >= 5, "only {total} bytes acknowledged");
        execution.close_stdin_when_flushed();
        let mut outbox = Vec::new();
        execution.queue_stdin(vec![b'y'; 1000], &mut outbox);
        assert_eq!(acknowledged(&outbox), 1000, "after EOF, discarded at once");
        execution.signal_group(libc::SIGKILL);
        let pid = execution.pid();
        drop(execution);
        let _ = nix::sys::wait::waitpid(pid, None);
    }
}
