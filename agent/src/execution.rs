//! One running execution inside the sandbox: its process group, pipes (or pseudo-terminal)
//! and pending stdin.
//!
//! A terminal execution runs on a new pseudo-terminal instead of pipes: the slave side is its
//! stdin, stdout and stderr and its controlling terminal (it leads a new session), and the
//! agent holds the master side, read as its one output stream and written with its stdin.
//! Under runsc (20221219) the master does not report the end of the slave side (a read blocks
//! instead of failing with EIO, and poll never says readable), so the end of a terminal
//! execution is its process's exit: then what is left on the master is drained until it has
//! been quiet for a short while (`TERMINAL_DRAIN_AFTER_EXIT`), never waited for until EOF.
//! Its pseudo-terminals also take writes without bound (a process may write megabytes and
//! exit before any of it is read), so that drain is not bounded by a pipe's size
//! (`TERMINAL_MAX_DRAIN_AFTER_EXIT`).
//!
//! Nor does its line discipline turn the signal characters (ctrl-C, ctrl-backslash, ctrl-Z)
//! into signals, nor send SIGWINCH on a resize. The agent does both, as the Linux line
//! discipline would: a signal character in a terminal's stdin is taken out and its signal sent
//! to the terminal's foreground process group, while the terminal's mode has `ISIG` (a
//! program in raw mode gets the byte). On a kernel that does it itself, the result is the same
//! (the byte never reaches the line discipline). runsc does not tell the master's side which
//! group is in the foreground either (TIOCGPGRP fails with ENOTTY, /proc's tpgid is 0), so
//! the signal goes to the groups of the terminal's session other than its leader's (the jobs
//! of a shell: the one in the foreground, and background jobs too), or to the leader's group
//! when there are none (a program run on the terminal directly, or a shell at its prompt).

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
    TerminalSize, MAX_OUTPUT_CHUNK_BYTES, OUTPUT_WINDOW_BYTES,
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

/// How long a terminal's master is still read after its process exited, once it has nothing
/// to read: what the process wrote last may still be on its way through the line discipline,
/// and the master never reports that nothing more will come (see the module's comment).
pub const TERMINAL_DRAIN_AFTER_EXIT: Duration = Duration::from_millis(30);

/// How much a terminal's master is still read after its process exited, at most (a process
/// that keeps writing after the terminal's leader is gone does not keep it open forever).
const TERMINAL_MAX_DRAIN_AFTER_EXIT: usize = 256 * 1024 * 1024;

/// What a terminal's environment says it is (the programs on it may use colours and cursor
/// movements; xterm.js and every common terminal emulator understand it).
const TERMINAL_TYPE: &str = "xterm-256color";

/// The shell of a terminal without a command, when /etc/passwd names none for root.
const DEFAULT_SHELL: &str = "/bin/bash";

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
    /// The pseudo-terminal of a terminal execution could not be made.
    Terminal(io::Error),
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
            SpawnError::Terminal(source) => {
                write!(f, "cannot make a pseudo-terminal: {source}")
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
            | SpawnError::ConfigurePipes(source)
            | SpawnError::Terminal(source) => Some(source),
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
    /// It runs on a pseudo-terminal: `stdout` is the master side and `stdin` a copy of it.
    terminal: bool,
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
    /// When the agent learnt that the process exited, or last read output after that (a
    /// terminal is drained until it has been quiet for a while).
    exited_at: Option<Instant>,
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
    /// A terminal's last resize, until the agent has seen it hold (see `keep_window_size`).
    resize_to_keep: Option<ResizeToKeep>,
}

/// A window size the agent set and checks again on the terminal's next events.
#[derive(Debug, Clone, Copy)]
struct ResizeToKeep {
    size: TerminalSize,
    /// When it was set (last set, after a repeat).
    set_at: Instant,
    /// How many times it was set again after being undone.
    repeats: u8,
}

/// How long a resize must be seen holding before the agent stops checking it: far above the
/// gap between readline's read and write of the size (microseconds; about a millisecond
/// under ptrace on a busy machine), and short enough that a program's own later change of
/// size (`stty rows 10`) is not undone.
const RESIZE_SETTLE: Duration = Duration::from_millis(250);

/// A resize undone this many times is left as it is: something in the sandbox keeps setting
/// another size on purpose.
const MAX_RESIZE_REPEATS: u8 = 3;

/// Keystrokes that come right after a resize wait this long after it (and after each time it
/// is set again), and go only once the size was seen holding: readline may be between its
/// read and its write-back of the size, and the command they type would see the old one.
/// Far longer than that gap (tens of microseconds, a few milliseconds on a busy machine);
/// nobody types this fast after resizing a window.
const RESIZE_HOLDS_KEYS: Duration = Duration::from_millis(10);

impl Execution {
    /// Start `request` as a new process group with fresh pipes.
    pub fn spawn(
        id: ExecId,
        request: &SpawnRequest,
        config: &AgentConfig,
    ) -> Result<Self, SpawnError> {
        check_cwd(&request.cwd)?;
        let (mut command, code_file) = code_command(id, request)?;
        prepare_command(&mut command, config, &request.limits);
        command.envs(request.env.iter().map(|(key, value)| (key, value)));
        command.current_dir(&request.cwd);
        let mut execution = Self::from_command(id, command)?;
        execution.code_file = code_file;
        Ok(execution)
    }

    /// Start `request` on a new pseudo-terminal of `size`, as the leader of a new session whose
    /// controlling terminal it is. Without code, it is root's login shell.
    pub fn spawn_terminal(
        id: ExecId,
        request: &SpawnRequest,
        config: &AgentConfig,
        size: TerminalSize,
    ) -> Result<Self, SpawnError> {
        check_cwd(&request.cwd)?;
        let (mut command, code_file) = if request.code.is_empty() {
            let shell = login_shell();
            let mut command = Command::new(&shell);
            command.arg("-l");
            command.env("SHELL", &shell);
            (command, None)
        } else {
            code_command(id, request)?
        };
        prepare_common(&mut command, config, &request.limits);
        sandbox_ffi::set_controlling_terminal(&mut command);
        command.env("TERM", TERMINAL_TYPE);
        command.envs(request.env.iter().map(|(key, value)| (key, value)));
        command.current_dir(&request.cwd);
        let window = nix::pty::Winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(&window, None)
            .map_err(|errno| SpawnError::Terminal(io::Error::from(errno)))?;
        let slave_copy = |slave: &OwnedFd| slave.try_clone().map_err(SpawnError::Terminal);
        command
            .stdin(Stdio::from(slave_copy(&pty.slave)?))
            .stdout(Stdio::from(slave_copy(&pty.slave)?))
            .stderr(Stdio::from(pty.slave));
        let child = command.spawn().map_err(SpawnError::Start)?;
        // The command holds copies of the slave side: they must close here, so that the
        // process alone holds its terminal.
        drop(command);
        let pid = Pid::from_raw(child.id() as i32);
        let master = File::from(pty.master);
        crate::pipes::set_nonblocking(master.as_fd()).map_err(SpawnError::ConfigurePipes)?;
        let writer = master.try_clone().map_err(SpawnError::Terminal)?;
        // One output stream: the spare copy given as stderr is closed at once.
        let spare = master.try_clone().map_err(SpawnError::Terminal)?;
        let ends = AgentEnds {
            stdin: writer,
            stdout: master,
            stderr: spare,
        };
        let mut execution = Execution::from_parts(id, pid, ends);
        execution.stderr = None;
        execution.terminal = true;
        execution.code_file = code_file;
        Ok(execution)
    }

    /// Set a terminal execution's window size (its foreground programs get SIGWINCH); nothing
    /// for an execution on pipes or whose terminal is closed already.
    pub fn resize(&mut self, size: TerminalSize) {
        if !self.terminal {
            return;
        }
        self.set_window_size(size);
        self.resize_to_keep = Some(ResizeToKeep {
            size,
            set_at: Instant::now(),
            repeats: 0,
        });
    }

    fn set_window_size(&self, size: TerminalSize) {
        if let Some(master) = self.master() {
            if let Err(error) = sandbox_ffi::set_window_size(master.as_fd(), size.cols, size.rows) {
                eprintln!("sandbox-agent: cannot resize terminal {}: {error}", self.id);
                return;
            }
        }
        self.signal_foreground(Signal::SIGWINCH);
    }

    /// Set the last resize again if something undid it. Readline (bash's prompt, python's)
    /// reads the window size and writes the same value back each time it prepares the
    /// terminal for a line (to stop there when it runs in the background). A resize that lands
    /// between that read and write is undone, and nobody is told: a resize followed at once
    /// by a command saw the old size, 1 time in a few hundred under gVisor, where the two
    /// calls are ~100 us apart. So the agent's loop checks the size after each wake-up (so
    /// before any keystroke is written: they are written on a later turn) and once more at
    /// the end (`resize_check_at`), until it has held for [`RESIZE_SETTLE`]; after that, a
    /// program's own change of size is its business.
    pub fn keep_window_size(&mut self) {
        let Some(mut resize) = self.resize_to_keep.take() else {
            return;
        };
        let Some(master) = self.master() else {
            return;
        };
        let wanted = (resize.size.cols, resize.size.rows);
        match sandbox_ffi::window_size(master.as_fd()) {
            Ok(now) if now == wanted => {
                if resize.set_at.elapsed() < RESIZE_SETTLE {
                    self.resize_to_keep = Some(resize);
                }
            }
            Ok(_) if resize.repeats < MAX_RESIZE_REPEATS => {
                self.set_window_size(resize.size);
                resize.repeats += 1;
                resize.set_at = Instant::now();
                self.resize_to_keep = Some(resize);
            }
            Ok(_) | Err(_) => {}
        }
    }

    /// Until when a terminal's keystrokes wait after a resize (see [`RESIZE_HOLDS_KEYS`]).
    pub fn keys_held_until(&self) -> Option<Instant> {
        self.resize_to_keep
            .map(|resize| resize.set_at + RESIZE_HOLDS_KEYS)
            .filter(|until| *until > Instant::now())
    }

    /// When the last resize must be checked once more (see `keep_window_size`).
    pub fn resize_check_at(&self) -> Option<Instant> {
        self.resize_to_keep
            .map(|resize| resize.set_at + RESIZE_SETTLE)
    }

    /// A terminal's master side, while open.
    fn master(&self) -> Option<&File> {
        self.stdout.as_ref().or(self.stdin.as_ref())
    }

    /// Split a terminal's input into the bytes for the line discipline and the signals its
    /// signal characters stand for, per the terminal's mode now (none when the program turned
    /// `ISIG` off, as raw mode does).
    fn take_signal_characters(&self, data: Vec<u8>) -> (Vec<u8>, Vec<Signal>) {
        use nix::sys::termios::{tcgetattr, LocalFlags, SpecialCharacterIndices as Index};
        let Some(master) = self.master() else {
            return (data, Vec::new());
        };
        let Ok(mode) = tcgetattr(master.as_fd()) else {
            return (data, Vec::new());
        };
        if !mode.local_flags.contains(LocalFlags::ISIG) {
            return (data, Vec::new());
        }
        // A disabled character is _POSIX_VDISABLE (0).
        let characters: Vec<(u8, Signal)> = [
            (Index::VINTR, Signal::SIGINT),
            (Index::VQUIT, Signal::SIGQUIT),
            (Index::VSUSP, Signal::SIGTSTP),
        ]
        .into_iter()
        .map(|(index, signal)| (mode.control_chars[index as usize], signal))
        .filter(|(character, _)| *character != 0)
        .collect();
        if !data
            .iter()
            .any(|byte| characters.iter().any(|(c, _)| c == byte))
        {
            return (data, Vec::new());
        }
        let mut kept = Vec::with_capacity(data.len());
        let mut signals = Vec::new();
        for byte in data {
            match characters.iter().find(|(character, _)| *character == byte) {
                Some((_, signal)) => signals.push(*signal),
                None => kept.push(byte),
            }
        }
        (kept, signals)
    }

    /// Send `signal` to the terminal's foreground process group, as a line discipline does:
    /// the group the kernel names if it does, else as the module's comment says.
    fn signal_foreground(&self, signal: Signal) {
        let named = self
            .master()
            .and_then(|master| nix::unistd::tcgetpgrp(master.as_fd()).ok())
            .filter(|group| group.as_raw() > 0);
        let groups = match named {
            Some(group) => vec![group],
            None => {
                let jobs = session_groups(self.pid);
                if jobs.is_empty() {
                    vec![self.pid]
                } else {
                    jobs
                }
            }
        };
        for group in groups {
            let _ = kill(Pid::from_raw(-group.as_raw()), signal);
        }
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
            terminal: false,
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
            exited_at: None,
            code_file: None,
            kill_requested: std::cell::Cell::new(false),
            drained_after_exit: 0,
            window: u64::from(OUTPUT_WINDOW_BYTES),
            resting_until: None,
            resize_to_keep: None,
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
        if !self.has_stdin_pending() || self.keys_held_until().is_some() {
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
    /// A terminal's signal characters become signals (see the module's comment).
    pub fn queue_stdin(&mut self, data: Vec<u8>, outbox: &mut Vec<u8>) {
        let data = if self.terminal {
            let (kept, signals) = self.take_signal_characters(data);
            let taken = signals.len();
            for signal in signals {
                self.signal_foreground(signal);
            }
            if taken > 0 {
                // Consumed: the server's window counts them as for any byte.
                let count = u32::try_from(taken).unwrap_or(u32::MAX);
                FromAgent::StdinWritten(self.id, count).encode(outbox);
            }
            kept
        } else {
            data
        };
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
        // The pipe is empty: the writer is slower than the reads. A terminal does not rest: it
        // is interactive (a keystroke's echo must not wait), and its reads end at "would
        // block" only (see `read_chunk`).
        if !self.terminal {
            self.resting_until = Some(Instant::now() + OUTPUT_REST);
        }
    }

    /// Read what the pipe holds in one read, up to a frame's worth (and what the window
    /// allows), and frame it: a writer's small writes become one frame instead of one each.
    /// Returns whether the pipe may hold more right now: only a read that filled all the room
    /// (a pipe gives all it has up to the size asked for, so a shorter read emptied it; not
    /// asking again saves a syscall that would only say "would block").
    ///
    /// A terminal's master gives at most 4 KiB per read under runsc, whatever it holds: its
    /// reads go on into the same buffer until "would block" (or the room is full), and what
    /// they got is one frame, not one per 4 KiB (fewer frames for the server to decode and
    /// merge; the reads, the floor of a terminal's cost, are the same).
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
        let mut filled = 0;
        // Whether the pipe is done (end of file or an error): closed once what came is framed.
        let mut ended = false;
        while filled < room {
            match pipe.read(&mut scratch[filled..room]) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Ok(0) => ended = true,
                Ok(n) => {
                    filled += n;
                    // A terminal's master gives a few KiB per read whatever it holds: a short
                    // read does not mean it is empty, only "would block" does.
                    if self.terminal {
                        continue;
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => ended = true,
            }
            break;
        }
        if filled > 0 {
            self.window = self.window.saturating_sub(filled as u64);
            FromAgent::encode_output(self.id, stream, &scratch[..filled], outbox);
        }
        if ended {
            self.close_pipe(which);
        }
        !ended && filled == room
    }

    fn close_pipe(&mut self, which: PipeRead) {
        match which {
            PipeRead::Stdout => self.stdout = None,
            PipeRead::Stderr => self.stderr = None,
        }
    }

    pub fn set_exited(&mut self, status: ExitStatus) {
        self.exit = Some(status);
        self.exited_at = Some(Instant::now());
    }

    /// When a terminal execution whose process exited must be looked at again, to end its
    /// drain (its master reports nothing by itself: see the module's comment).
    pub fn drain_deadline(&self) -> Option<Instant> {
        match (self.terminal, self.exited_at, &self.stdout) {
            (true, Some(since), Some(_)) => Some(since + TERMINAL_DRAIN_AFTER_EXIT),
            _ => None,
        }
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
                let bound = if self.terminal {
                    TERMINAL_MAX_DRAIN_AFTER_EXIT
                } else {
                    MAX_DRAIN_AFTER_EXIT
                };
                if self.drained_after_exit >= bound {
                    break;
                }
                let before = outbox.len();
                let more = self.read_chunk(which, outbox, scratch);
                let read = outbox.len().saturating_sub(before);
                self.drained_after_exit += read;
                if self.terminal && read > 0 {
                    // Output still arrives: the quiet time counts from now.
                    self.exited_at = Some(Instant::now());
                }
                if !more {
                    let open = match which {
                        PipeRead::Stdout => self.stdout.is_some(),
                        PipeRead::Stderr => self.stderr.is_some(),
                    };
                    let quiet_long_enough = self
                        .exited_at
                        .is_none_or(|since| since.elapsed() >= TERMINAL_DRAIN_AFTER_EXIT);
                    if self.terminal && open && !quiet_long_enough {
                        // Nothing right now, but the last bytes may still be on their way.
                        return;
                    }
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

/// The process groups of session `leader` other than the leader's own, from /proc.
fn session_groups(leader: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut groups: Vec<Pid> = entries
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            name.to_string_lossy()
                .bytes()
                .all(|byte| byte.is_ascii_digit())
        })
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter_map(|stat| group_and_session(&stat))
        .filter(|(group, session)| *session == leader.as_raw() && *group != leader.as_raw())
        .map(|(group, _)| Pid::from_raw(group))
        .collect();
    groups.sort_unstable();
    groups.dedup();
    groups
}

/// The process group and session of a `/proc/PID/stat` line (fields 5 and 6, after the
/// command name, which may hold spaces and parentheses).
fn group_and_session(stat: &str) -> Option<(i32, i32)> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(2);
    let group = fields.next()?.parse().ok()?;
    let session = fields.next()?.parse().ok()?;
    Some((group, session))
}

/// The working directory must exist (the spawn would fail with a less helpful error).
fn check_cwd(cwd: &str) -> Result<(), SpawnError> {
    let cwd_is_dir = std::fs::metadata(cwd)
        .map(|meta| meta.is_dir())
        .unwrap_or(false);
    if cwd_is_dir {
        Ok(())
    } else {
        Err(SpawnError::NoSuchDirectory(cwd.to_string()))
    }
}

/// Root's login shell as /etc/passwd names it (an image may prefer another shell), else bash.
fn login_shell() -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd
                .lines()
                .map(|line| line.split(':').collect::<Vec<_>>())
                .find(|fields| fields.len() == 7 && fields[2] == "0")
                .map(|fields| fields[6].to_string())
        })
        .filter(|shell| shell.starts_with('/') && std::path::Path::new(shell).exists())
        .unwrap_or_else(|| DEFAULT_SHELL.to_string())
}

/// The interpreter of `request`'s language running its code: as an argument, or from a file
/// when the code is too large for one (the file's path is returned, to be removed at the end).
fn code_command(
    id: ExecId,
    request: &SpawnRequest,
) -> Result<(Command, Option<PathBuf>), SpawnError> {
    let (program, flag, extension) = match request.language {
        Language::Python => ("/usr/bin/python3", "-c", "py"),
        Language::Bash => ("/bin/bash", "-c", "sh"),
    };
    let mut command = Command::new(program);
    if request.code.len() <= MAX_INLINE_CODE_BYTES {
        command.arg(flag).arg(&request.code);
        return Ok((command, None));
    }
    let path = PathBuf::from(format!("{CODE_DIR}/exec-{id}.{extension}"));
    std::fs::create_dir_all(CODE_DIR)
        .and_then(|()| std::fs::write(&path, &request.code))
        .map_err(|source| SpawnError::StoreCode {
            path: path.clone(),
            source,
        })?;
    command.arg(&path);
    Ok((command, Some(path)))
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
    prepare_common(command, config, limits);
    command.process_group(0);
}

/// `prepare_command` but the process group, for a terminal's process, which makes a session
/// of its own (a group leader cannot).
fn prepare_common(command: &mut Command, config: &AgentConfig, limits: &ProcessLimits) {
    command.env_clear();
    command.envs(config.base_env.iter().map(|(key, value)| (key, value)));
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

    fn terminal_request(code: &str) -> SpawnRequest {
        SpawnRequest {
            language: Language::Bash,
            code: code.into(),
            env: vec![],
            cwd: "/".into(),
            limits: ProcessLimits::default(),
            file: None,
            pty: Some(TerminalSize { cols: 91, rows: 17 }),
        }
    }

    /// Everything a terminal execution printed, read as the agent's loop does until it ends
    /// (its exit is collected here with waitpid, as the loop's reaping would).
    fn terminal_output(execution: &mut Execution) -> (String, ExitStatus) {
        let mut output = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut scratch = vec![0u8; MAX_OUTPUT_CHUNK_BYTES];
        while execution.finished_status().is_none() {
            assert!(
                Instant::now() < deadline,
                "no end: {:?}",
                String::from_utf8_lossy(&output)
            );
            let mut outbox = Vec::new();
            execution.read_output(PipeRead::Stdout, &mut outbox, &mut scratch);
            if execution.exit.is_none() {
                use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
                match waitpid(execution.pid(), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(_, code)) => execution.set_exited(ExitStatus::Code(code)),
                    Ok(WaitStatus::Signaled(_, signal, _)) => {
                        execution.set_exited(ExitStatus::Signal(signal as i32))
                    }
                    _ => {}
                }
            }
            execution.drain_after_exit(&mut outbox, &mut scratch);
            let mut decoder = FrameDecoder::new();
            decoder.push(&outbox);
            while let Some(frame) = decoder.next_from_agent().unwrap() {
                if let FromAgent::Output(_, Stream::Stdout, data) = frame {
                    output.extend_from_slice(&data);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let status = execution.finished_status().unwrap();
        (String::from_utf8_lossy(&output).into_owned(), status)
    }

    /// A terminal execution (on the host's kernel) is a terminal of the size asked, controlling
    /// its program's session, with TERM set; its output is drained after the exit.
    #[test]
    fn a_terminal_execution_is_a_controlling_terminal_of_its_size() {
        let request = terminal_request(
            "stty size; tty; echo $TERM; ps -o sid= -p $$; echo pid=$$; seq 1 20000 | tail -n 1; exit 4",
        );
        let size = request.pty.unwrap();
        let mut execution =
            Execution::spawn_terminal(ExecId(1), &request, &AgentConfig::default(), size).unwrap();
        let pid = execution.pid();
        let (output, status) = terminal_output(&mut execution);
        assert!(output.contains("17 91"), "{output:?}");
        assert!(output.contains("/dev/pts/"), "{output:?}");
        assert!(output.contains("xterm-256color"), "{output:?}");
        assert!(output.contains(&format!("pid={pid}")), "{output:?}");
        let sid_line = output.lines().find(|line| line.trim() == pid.to_string());
        assert!(sid_line.is_some(), "it leads its session: {output:?}");
        assert!(output.contains("20000"), "{output:?}");
        assert_eq!(status, ExitStatus::Code(4));
    }

    /// ctrl-C in a terminal's stdin becomes SIGINT for its program (and is acknowledged as
    /// consumed); with ISIG off (raw mode) the byte reaches the program instead.
    #[test]
    fn ctrl_c_becomes_sigint_unless_the_terminal_is_raw() {
        let request = terminal_request("exec sleep 100");
        let size = request.pty.unwrap();
        let mut execution =
            Execution::spawn_terminal(ExecId(1), &request, &AgentConfig::default(), size).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let mut outbox = Vec::new();
        execution.queue_stdin(b"\x03".to_vec(), &mut outbox);
        let mut decoder = FrameDecoder::new();
        decoder.push(&outbox);
        assert_eq!(
            decoder.next_from_agent().unwrap(),
            Some(FromAgent::StdinWritten(ExecId(1), 1))
        );
        let (_, status) = terminal_output(&mut execution);
        assert_eq!(status, ExitStatus::Signal(libc::SIGINT));

        let request = terminal_request("stty raw -echo; head -c 1 | od -An -tx1; exit 0");
        let mut execution =
            Execution::spawn_terminal(ExecId(2), &request, &AgentConfig::default(), size).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let mut outbox = Vec::new();
        execution.queue_stdin(b"\x03".to_vec(), &mut outbox);
        execution.write_stdin(&mut outbox);
        let (output, status) = terminal_output(&mut execution);
        assert!(output.contains("03"), "{output:?}");
        assert_eq!(status, ExitStatus::Code(0));
    }

    /// A resize undone by a program that writes back the size it read before (readline does,
    /// each time it prepares the terminal) is set again on the next check, a bounded number of
    /// times; a resize that held through its settle time is not checked any more.
    #[test]
    fn a_resize_undone_by_a_program_is_set_again() {
        let request = terminal_request("exec sleep 100");
        let size = request.pty.unwrap();
        let mut execution =
            Execution::spawn_terminal(ExecId(1), &request, &AgentConfig::default(), size).unwrap();
        let size_now = |execution: &Execution| {
            sandbox_ffi::window_size(execution.master().unwrap().as_fd()).unwrap()
        };
        let undo = |execution: &Execution| {
            sandbox_ffi::set_window_size(execution.master().unwrap().as_fd(), 91, 17).unwrap()
        };
        execution.resize(TerminalSize {
            cols: 120,
            rows: 40,
        });
        assert_eq!(size_now(&execution), (120, 40));
        // Keystrokes right after it wait (readline may be about to write the old size back).
        let mut outbox = Vec::new();
        execution.queue_stdin(b"x".to_vec(), &mut outbox);
        assert!(
            execution.stdin_fd_if_pending().is_none(),
            "held after a resize"
        );
        let held_until = execution.keys_held_until().expect("held for a while");
        std::thread::sleep(held_until.saturating_duration_since(Instant::now()));
        assert!(
            execution.stdin_fd_if_pending().is_some(),
            "they go once it held"
        );
        for _ in 0..MAX_RESIZE_REPEATS {
            undo(&execution);
            execution.keep_window_size();
            assert_eq!(size_now(&execution), (120, 40));
        }
        // Undone once more: something sets its own size on purpose, and keeps it.
        undo(&execution);
        execution.keep_window_size();
        assert_eq!(size_now(&execution), (91, 17));
        assert_eq!(execution.resize_check_at(), None);

        execution.resize(TerminalSize {
            cols: 100,
            rows: 30,
        });
        let check_at = execution
            .resize_check_at()
            .expect("checked until it settles");
        std::thread::sleep(check_at.saturating_duration_since(Instant::now()));
        execution.keep_window_size();
        assert_eq!(
            execution.resize_check_at(),
            None,
            "it held: not checked any more"
        );
        undo(&execution);
        execution.keep_window_size();
        assert_eq!(
            size_now(&execution),
            (91, 17),
            "a later change is the program's own"
        );
        execution.signal_group(libc::SIGKILL);
        let _ = nix::sys::wait::waitpid(execution.pid(), None);
    }

    #[test]
    fn proc_stat_lines_give_group_and_session() {
        let line = "42 (a (weird) name) S 1 40 30 34816 42 4194560 0 0";
        assert_eq!(group_and_session(line), Some((40, 30)));
        assert_eq!(group_and_session("garbage"), None);
    }
}
