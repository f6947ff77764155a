//! The framing between the server and the agent inside each sandbox, and what the server must
//! know to start an agent (its configuration, its uid).
//!
//! The agent is the container's first process; its stdin carries frames from the server and
//! its stdout carries frames back (its stderr goes to the sandbox log file). A frame is
//!
//! ```text
//! u32 LE length of what follows | u8 kind | u32 LE execution id | payload
//! ```
//!
//! Control payloads (spawn request, ready, spawn failure) are JSON; output and stdin payloads are
//! raw bytes, so binary output crosses unchanged. Both sides use the same codec, which never
//! panics and refuses frames larger than [`MAX_FRAME_BYTES`].
//!
//! This module is the bottom layer: the server and the agent depend on it, it depends on
//! neither.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Largest frame either side accepts: the code of one execution plus JSON overhead.
pub const MAX_FRAME_BYTES: usize = 9 * 1024 * 1024;

/// Largest stdin chunk put in one frame.
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;

/// Largest output chunk the agent puts in one frame: what it reads from a pipe at once. Under
/// gVisor's ptrace platform every syscall costs tens of microseconds, so the cost of streaming
/// is per read and per frame, not per byte (docs/performance.md).
pub const MAX_OUTPUT_CHUNK_BYTES: usize = 1024 * 1024;

/// Each execution's output window: the bytes of its stdout and stderr the agent may read and
/// send before the server gives them back with [`ToAgent::Credit`]. The agent reads an
/// execution's pipes only while its window is open, so an execution whose output is not
/// consumed blocks in `write`, without holding up the others. Every execution starts with a
/// full window, and a restore (`Resume`) fills every window again: the restoring server has
/// nothing in flight.
pub const OUTPUT_WINDOW_BYTES: u32 = 512 * 1024;

/// The server gives credit back once this much is owed. Independent of the window, and at
/// most half of the smallest window an agent ever had (256 KiB, before issue 15), so that an
/// agent restored from an older checkpoint, which keeps its own window, never waits for
/// credit that is held back.
pub const CREDIT_BATCH_BYTES: u32 = 128 * 1024;

const HEADER_BYTES: usize = 4 + 1 + 4;

/// The id field of frames that are about the whole sandbox, not one execution.
const NO_EXEC: ExecId = ExecId(0);

/// The uid the bundle starts the agent as. Not a user of the image: nothing else runs as it
/// (see the agent's `identity` module for why).
pub const AGENT_UID: u32 = 65533;

/// The capabilities the bundle gives the agent, only so that it can take its identity.
pub const AGENT_CAPABILITIES: [&str; 3] = ["CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"];

/// Identifies one execution (one process the agent started and follows) inside one sandbox;
/// chosen by the server, never reused for the sandbox's whole life (the agent's hello says
/// where to go on after a restore), so that what names executions towards clients (issue 12's
/// process ids) can map to it one to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExecId(pub u32);

impl ExecId {
    /// The id after this one; `None` when the ids are used up (the counter can be raised from
    /// inside the sandbox, so running out is an error to report, not an overflow).
    pub fn next(self) -> Option<ExecId> {
        self.0.checked_add(1).map(ExecId)
    }
}

impl fmt::Display for ExecId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The languages an execution can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Python,
    Bash,
}

impl Language {
    pub const ALL: [Language; 2] = [Language::Python, Language::Bash];

    /// The name clients use (`python`, `bash`); anything else is no language of ours.
    pub fn parse(name: &str) -> Option<Language> {
        Language::ALL
            .into_iter()
            .find(|language| language.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Bash => "bash",
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Resource limits applied to one execution's process (soft = hard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ProcessLimits {
    /// Address space in bytes (`RLIMIT_AS`): allocation past it raises `MemoryError`.
    pub address_space_bytes: Option<u64>,
    /// Processes of the sandbox user (`RLIMIT_NPROC`): stops fork bombs cleanly.
    pub processes: Option<u64>,
    /// CPU seconds (`RLIMIT_CPU`).
    pub cpu_seconds: Option<u64>,
    /// Largest file the process may write (`RLIMIT_FSIZE`).
    pub file_size_bytes: Option<u64>,
    /// Open files (`RLIMIT_NOFILE`).
    pub open_files: Option<u64>,
}

/// Configuration passed on the agent's command line by the server (as JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// Limits applied to every process the agent spawns (and to the standby interpreter).
    pub limits: ProcessLimits,
    /// Environment every execution starts with, before its own additions.
    pub base_env: Vec<(String, String)>,
    /// Keep a Python forkserver with a child forked ahead of the next `python` execution.
    pub python_standby: bool,
    /// Keep a bash started ahead of the next `bash` execution.
    #[serde(default)]
    pub bash_standby: bool,
    /// Keep the files API's helper started ahead of the next file operation.
    #[serde(default)]
    pub file_standby: bool,
    /// After a port relay ends, open the next connection to that port ahead of its request
    /// (see the agent's `warm` module).
    #[serde(default)]
    pub warm_port_connections: bool,
}

/// What the server asks the agent to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnRequest {
    pub language: Language,
    pub code: String,
    /// Added to the sandbox's base environment.
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub limits: ProcessLimits,
    /// Instead of `language` and `code`: a file operation (issue 14), done by the agent's own
    /// binary started as a helper process with user code's rights (see `files` in the agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileRequest>,
    /// Run it on a new pseudo-terminal of this size instead of pipes (a terminal process:
    /// one output stream, stdin as keystrokes). Absent in the frames of servers before
    /// terminals, which the agent reads as pipes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<TerminalSize>,
}

/// One operation of the files API, as the server asks the agent for it. Paths are as the client
/// gave them (absolute, or relative to `/root`); the helper resolves and checks them.
///
/// What the helper says: `Read` streams the file's bytes on stdout; `Write` reads the bytes on
/// stdin, ended by [`FILE_COMMIT_TRAILER_BYTES`] of trailer (see [`file_commit_trailer`]), and
/// every other operation (and `Write` once done) prints one JSON object on stdout. A failure
/// is one JSON [`FileFailure`] on stderr and exit status 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FileRequest {
    Read {
        path: String,
    },
    Write {
        path: String,
        mode: u32,
        append: bool,
    },
    List {
        path: String,
        depth: u32,
    },
    Stat {
        path: String,
    },
    Exists {
        path: String,
    },
    MakeDir {
        path: String,
        parents: bool,
    },
    Remove {
        path: String,
        recursive: bool,
    },
    Rename {
        from: String,
        to: String,
    },
}

/// Why a file operation failed: a code of docs/protocol.md (`not_found`, `is_a_directory`, ...)
/// and a message naming the path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFailure {
    pub code: String,
    pub message: String,
}

/// Bytes after a written file's data that say "this is the whole file": its length (u64 LE)
/// and [`FILE_COMMIT_MAGIC`]. A write whose stdin ends without them (the client went away,
/// the transfer was cancelled) is abandoned: its temporary file is removed and nothing is
/// renamed onto the target.
pub const FILE_COMMIT_TRAILER_BYTES: usize = 16;
pub const FILE_COMMIT_MAGIC: [u8; 8] = *b"SBXFILE\x01";

/// The trailer that commits a write of `length` bytes.
pub fn file_commit_trailer(length: u64) -> [u8; FILE_COMMIT_TRAILER_BYTES] {
    let mut trailer = [0u8; FILE_COMMIT_TRAILER_BYTES];
    trailer[..8].copy_from_slice(&length.to_le_bytes());
    trailer[8..].copy_from_slice(&FILE_COMMIT_MAGIC);
    trailer
}

/// A terminal's window size, in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalSize {
    pub cols: u16,
    pub rows: u16,
}

impl TerminalSize {
    /// The largest number of columns or rows a terminal may have (and the smallest is 1).
    pub const MAX: u16 = 1000;
}

/// What the agent reports when it is ready to spawn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHello {
    pub version: String,
    /// Whether a pre-started Python interpreter serves `python` executions.
    pub python_standby: bool,
    /// The lowest execution id never used in this sandbox: after a restore, the server goes on
    /// from there (executions that were running at checkpoint time still hold theirs, and no
    /// id names two executions). A reset starts over at 1. The raw value of an [`ExecId`] (0
    /// from an agent that does not say).
    #[serde(default)]
    pub next_exec_id: u32,
}

/// A code cell for a code context (a long-lived Python process, see the agent's `context`
/// module). The context is started first if the agent has none of that name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellRequest {
    pub context_id: String,
    /// The context's working directory, if it has to be started.
    pub cwd: String,
    pub code: String,
    /// A result whose MIME bundle is larger than this is replaced by its text/plain and a note.
    pub max_result_bytes: u64,
}

/// What the server asks of the code contexts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ContextCommand {
    /// Start a context now (a cell for an unknown context starts it too).
    Create { context_id: String, cwd: String },
    /// End the context's process group; a running cell ends with `ContextDied`.
    Delete { context_id: String },
}

/// One code context as the agent knows it (sent after every change and after a restore).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextInfo {
    pub context_id: String,
    pub cwd: String,
    /// Why its process is gone (`None`: it lives).
    #[serde(default)]
    pub died: Option<String>,
}

/// How a process ended, as `waitpid` reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The shell's convention: the exit code, or 128 + the signal number. The number comes
    /// from the agent's frame, which code in the sandbox can forge: saturate rather than
    /// overflow (a panic in debug builds) on a signal no kernel sends.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(code) => code,
            // Saturating: the number comes from inside the sandbox, which may say anything.
            ExitStatus::Signal(signal) => signal.saturating_add(128),
        }
    }
}

/// Server -> agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToAgent {
    Spawn(ExecId, SpawnRequest),
    Stdin(ExecId, Vec<u8>),
    CloseStdin(ExecId),
    /// Send a signal to the execution's whole process group.
    Signal(ExecId, i32),
    /// Sent first after a restore: answer with `Ready`. Every output window is full again.
    /// With `reset`, first end every process but the agent (a sandbox started from a snapshot
    /// keeps its files, not its processes).
    Resume {
        reset: bool,
    },
    /// Report what would make a checkpoint fail (answered with `Inspection`).
    Inspect,
    /// The server consumed this many more bytes of the execution's output: its window grows
    /// by that much (see [`OUTPUT_WINDOW_BYTES`]).
    Credit(ExecId, u32),
    /// Open a relay (issue 20, ports): connect to `127.0.0.1:PORT` inside the sandbox and carry
    /// bytes both ways as if it were an execution: what the socket reads comes back as
    /// `Output(Stdout)` under the same window, `Stdin` is written to the socket (acknowledged
    /// by `StdinWritten`), `CloseStdin` shuts the socket's write side, a `Signal` closes it.
    /// Answered by `Started`, or `SpawnFailed` when nothing accepts the connection; `Exited`
    /// (code 0) once the application closed its side.
    Connect(ExecId, u16),
    /// Set the window size of a terminal execution (its program gets SIGWINCH).
    Resize(ExecId, TerminalSize),
    /// Run a code cell as execution `ExecId`: its stdout and stderr come as `Output`, its
    /// results and error as `CellEvent`s, its end as `Exited` (code 0, or 1 after an error).
    RunCell(ExecId, CellRequest),
    Context(ContextCommand),
}

/// Agent -> server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromAgent {
    Ready(AgentHello),
    Started(ExecId),
    SpawnFailed(ExecId, String),
    Output(ExecId, Stream, Vec<u8>),
    /// This many bytes of stdin reached the process's pipe (lets the server bound what is in
    /// flight without the agent buffering without limit).
    StdinWritten(ExecId, u32),
    /// Sent after the last output frame of the execution.
    Exited(ExecId, ExitStatus),
    Inspection(Inspection),
    /// Part of one event of a code cell (a JSON object: a result or an error), split across
    /// frames when large; `true` on its last part.
    CellEvent(ExecId, Vec<u8>, bool),
    /// The code contexts, after each change (created, died, deleted) and after a restore.
    Contexts(Vec<ContextInfo>),
}

/// What the agent sees inside the sandbox that matters for a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Inspection {
    /// TCP sockets that are neither listening nor closed: runsc cannot checkpoint those.
    pub open_tcp_connections: u32,
}

mod kind {
    pub const SPAWN: u8 = 1;
    pub const STDIN: u8 = 2;
    pub const CLOSE_STDIN: u8 = 3;
    pub const SIGNAL: u8 = 4;
    pub const RESUME: u8 = 5;
    pub const INSPECT: u8 = 6;
    pub const CREDIT: u8 = 7;
    pub const CONNECT: u8 = 8;
    pub const RESIZE: u8 = 9;
    pub const RUN_CELL: u8 = 20;
    pub const CONTEXT: u8 = 21;
    pub const READY: u8 = 64;
    pub const STARTED: u8 = 65;
    pub const SPAWN_FAILED: u8 = 66;
    pub const STDOUT: u8 = 67;
    pub const STDERR: u8 = 68;
    pub const STDIN_WRITTEN: u8 = 69;
    pub const EXIT_CODE: u8 = 70;
    pub const EXIT_SIGNAL: u8 = 71;
    pub const INSPECTION: u8 = 72;
    pub const CELL_EVENT_PART: u8 = 90;
    pub const CELL_EVENT_END: u8 = 91;
    pub const CONTEXTS: u8 = 92;
}

/// Why a frame could not be decoded. The connection to that agent is unusable afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "agent protocol error: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

fn put_frame(out: &mut Vec<u8>, kind: u8, exec: ExecId, payload: &[u8]) {
    let length = (1 + 4 + payload.len()) as u32;
    out.extend_from_slice(&length.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&exec.0.to_le_bytes());
    out.extend_from_slice(payload);
}

fn json_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs (strings, integers, vectors) cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

impl ToAgent {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ToAgent::Spawn(exec, request) => {
                put_frame(out, kind::SPAWN, *exec, &json_bytes(request))
            }
            ToAgent::Stdin(exec, data) => put_frame(out, kind::STDIN, *exec, data),
            ToAgent::CloseStdin(exec) => put_frame(out, kind::CLOSE_STDIN, *exec, &[]),
            ToAgent::Signal(exec, signal) => {
                put_frame(out, kind::SIGNAL, *exec, &signal.to_le_bytes())
            }
            ToAgent::Resume { reset } => put_frame(out, kind::RESUME, NO_EXEC, &[u8::from(*reset)]),
            ToAgent::Inspect => put_frame(out, kind::INSPECT, NO_EXEC, &[]),
            ToAgent::Credit(exec, bytes) => {
                put_frame(out, kind::CREDIT, *exec, &bytes.to_le_bytes())
            }
            ToAgent::Connect(exec, port) => {
                put_frame(out, kind::CONNECT, *exec, &port.to_le_bytes())
            }
            ToAgent::Resize(exec, size) => {
                let mut payload = [0u8; 4];
                payload[..2].copy_from_slice(&size.cols.to_le_bytes());
                payload[2..].copy_from_slice(&size.rows.to_le_bytes());
                put_frame(out, kind::RESIZE, *exec, &payload)
            }
            ToAgent::RunCell(exec, request) => {
                put_frame(out, kind::RUN_CELL, *exec, &json_bytes(request))
            }
            ToAgent::Context(command) => {
                put_frame(out, kind::CONTEXT, NO_EXEC, &json_bytes(command))
            }
        }
    }

    fn decode(kind: u8, exec: ExecId, payload: &[u8]) -> Result<Self, ProtocolError> {
        Ok(match kind {
            kind::SPAWN => ToAgent::Spawn(exec, parse_json(payload)?),
            kind::STDIN => ToAgent::Stdin(exec, payload.to_vec()),
            kind::CLOSE_STDIN => ToAgent::CloseStdin(exec),
            kind::SIGNAL => ToAgent::Signal(exec, parse_i32(payload)?),
            kind::INSPECT => ToAgent::Inspect,
            kind::CREDIT => ToAgent::Credit(exec, parse_u32(payload)?),
            kind::CONNECT => {
                let port: [u8; 2] = payload.try_into().map_err(|_| {
                    ProtocolError(format!(
                        "expected a 2-byte port, got {} bytes",
                        payload.len()
                    ))
                })?;
                ToAgent::Connect(exec, u16::from_le_bytes(port))
            }
            kind::RESIZE => {
                let [c0, c1, r0, r1] = payload[..] else {
                    return Err(ProtocolError(format!(
                        "resize frame of {} bytes instead of 4",
                        payload.len()
                    )));
                };
                ToAgent::Resize(
                    exec,
                    TerminalSize {
                        cols: u16::from_le_bytes([c0, c1]),
                        rows: u16::from_le_bytes([r0, r1]),
                    },
                )
            }
            kind::RUN_CELL => ToAgent::RunCell(exec, parse_json(payload)?),
            kind::CONTEXT => ToAgent::Context(parse_json(payload)?),
            kind::RESUME => ToAgent::Resume {
                reset: payload.first().is_some_and(|byte| *byte != 0),
            },
            other => {
                return Err(ProtocolError(format!(
                    "unknown frame kind {other} for the agent"
                )))
            }
        })
    }
}

impl FromAgent {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            FromAgent::Ready(hello) => put_frame(out, kind::READY, NO_EXEC, &json_bytes(hello)),
            FromAgent::Started(exec) => put_frame(out, kind::STARTED, *exec, &[]),
            FromAgent::SpawnFailed(exec, message) => {
                put_frame(out, kind::SPAWN_FAILED, *exec, message.as_bytes())
            }
            FromAgent::Output(exec, stream, data) => {
                FromAgent::encode_output(*exec, *stream, data, out)
            }
            FromAgent::StdinWritten(exec, count) => {
                put_frame(out, kind::STDIN_WRITTEN, *exec, &count.to_le_bytes())
            }
            FromAgent::Exited(exec, ExitStatus::Code(code)) => {
                put_frame(out, kind::EXIT_CODE, *exec, &code.to_le_bytes())
            }
            FromAgent::Exited(exec, ExitStatus::Signal(signal)) => {
                put_frame(out, kind::EXIT_SIGNAL, *exec, &signal.to_le_bytes())
            }
            FromAgent::Inspection(inspection) => {
                put_frame(out, kind::INSPECTION, NO_EXEC, &json_bytes(inspection))
            }
            FromAgent::CellEvent(exec, data, last) => {
                let kind = if *last {
                    kind::CELL_EVENT_END
                } else {
                    kind::CELL_EVENT_PART
                };
                put_frame(out, kind, *exec, data)
            }
            FromAgent::Contexts(contexts) => {
                put_frame(out, kind::CONTEXTS, NO_EXEC, &json_bytes(contexts))
            }
        }
    }

    /// What `FromAgent::Output(exec, stream, data).encode(out)` writes, without owning `data`.
    pub fn encode_output(exec: ExecId, stream: Stream, data: &[u8], out: &mut Vec<u8>) {
        let kind = match stream {
            Stream::Stdout => kind::STDOUT,
            Stream::Stderr => kind::STDERR,
        };
        put_frame(out, kind, exec, data);
    }

    fn decode(kind: u8, exec: ExecId, payload: &[u8]) -> Result<Self, ProtocolError> {
        Ok(match kind {
            kind::READY => FromAgent::Ready(parse_json(payload)?),
            kind::STARTED => FromAgent::Started(exec),
            kind::SPAWN_FAILED => {
                FromAgent::SpawnFailed(exec, String::from_utf8_lossy(payload).into_owned())
            }
            kind::STDOUT => FromAgent::Output(exec, Stream::Stdout, payload.to_vec()),
            kind::STDERR => FromAgent::Output(exec, Stream::Stderr, payload.to_vec()),
            kind::STDIN_WRITTEN => FromAgent::StdinWritten(exec, parse_u32(payload)?),
            kind::EXIT_CODE => FromAgent::Exited(exec, ExitStatus::Code(parse_i32(payload)?)),
            kind::EXIT_SIGNAL => FromAgent::Exited(exec, ExitStatus::Signal(parse_i32(payload)?)),
            kind::INSPECTION => FromAgent::Inspection(parse_json(payload)?),
            kind::CELL_EVENT_PART => FromAgent::CellEvent(exec, payload.to_vec(), false),
            kind::CELL_EVENT_END => FromAgent::CellEvent(exec, payload.to_vec(), true),
            kind::CONTEXTS => FromAgent::Contexts(parse_json(payload)?),
            other => {
                return Err(ProtocolError(format!(
                    "unknown frame kind {other} from the agent"
                )))
            }
        })
    }
}

fn parse_json<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<T, ProtocolError> {
    serde_json::from_slice(payload)
        .map_err(|error| ProtocolError(format!("bad json payload: {error}")))
}

fn parse_i32(payload: &[u8]) -> Result<i32, ProtocolError> {
    Ok(i32::from_le_bytes(four_bytes(payload)?))
}

fn parse_u32(payload: &[u8]) -> Result<u32, ProtocolError> {
    Ok(u32::from_le_bytes(four_bytes(payload)?))
}

fn four_bytes(payload: &[u8]) -> Result<[u8; 4], ProtocolError> {
    payload.try_into().map_err(|_| {
        ProtocolError(format!(
            "expected a 4-byte integer, got {} bytes",
            payload.len()
        ))
    })
}

/// Incremental decoder: push bytes as they are read, pop whole frames.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
    start: usize,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        // Compact lazily so that a stream of small frames does not shift the buffer each time.
        if self.start > 0 && self.start >= self.buffer.len() / 2 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes held that are not yet part of a returned frame.
    pub fn pending(&self) -> usize {
        self.buffer.len() - self.start
    }

    fn next_raw(&mut self) -> Result<Option<(u8, ExecId, Vec<u8>)>, ProtocolError> {
        let available = &self.buffer[self.start..];
        if available.len() < 4 {
            return Ok(None);
        }
        let length =
            u32::from_le_bytes([available[0], available[1], available[2], available[3]]) as usize;
        if !(5..=MAX_FRAME_BYTES).contains(&length) {
            return Err(ProtocolError(format!("frame length {length} out of range")));
        }
        if available.len() < 4 + length {
            return Ok(None);
        }
        let kind = available[4];
        let exec = ExecId(u32::from_le_bytes([
            available[5],
            available[6],
            available[7],
            available[8],
        ]));
        let payload = available[HEADER_BYTES..4 + length].to_vec();
        self.start += 4 + length;
        Ok(Some((kind, exec, payload)))
    }

    pub fn next_to_agent(&mut self) -> Result<Option<ToAgent>, ProtocolError> {
        match self.next_raw()? {
            Some((kind, exec, payload)) => ToAgent::decode(kind, exec, &payload).map(Some),
            None => Ok(None),
        }
    }

    pub fn next_from_agent(&mut self) -> Result<Option<FromAgent>, ProtocolError> {
        match self.next_raw()? {
            Some((kind, exec, payload)) => FromAgent::decode(kind, exec, &payload).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spawn_request() -> SpawnRequest {
        SpawnRequest {
            language: Language::Python,
            code: "print('é')".into(),
            env: vec![("A".into(), "b".into())],
            cwd: "/root".into(),
            limits: ProcessLimits {
                processes: Some(64),
                ..Default::default()
            },
            file: None,
            pty: None,
        }
    }

    #[test]
    fn every_frame_round_trips_even_when_fed_byte_by_byte() {
        let to_agent = vec![
            ToAgent::Spawn(ExecId(7), spawn_request()),
            ToAgent::Stdin(ExecId(7), vec![0, 255, 10]),
            ToAgent::CloseStdin(ExecId(7)),
            ToAgent::Signal(ExecId(7), 9),
            ToAgent::Resume { reset: true },
            ToAgent::Resume { reset: false },
            ToAgent::Inspect,
            ToAgent::Credit(ExecId(7), OUTPUT_WINDOW_BYTES),
            ToAgent::Connect(ExecId(8), 8000),
            ToAgent::Resize(
                ExecId(7),
                TerminalSize {
                    cols: 1000,
                    rows: 24,
                },
            ),
            ToAgent::Spawn(
                ExecId(8),
                SpawnRequest {
                    pty: Some(TerminalSize { cols: 80, rows: 24 }),
                    ..spawn_request()
                },
            ),
            ToAgent::RunCell(
                ExecId(8),
                CellRequest {
                    context_id: "default".into(),
                    cwd: "/root".into(),
                    code: "x".into(),
                    max_result_bytes: 10,
                },
            ),
            ToAgent::Context(ContextCommand::Create {
                context_id: "c1".into(),
                cwd: "/tmp".into(),
            }),
            ToAgent::Context(ContextCommand::Delete {
                context_id: "c1".into(),
            }),
        ];
        let from_agent = vec![
            FromAgent::Ready(AgentHello {
                version: "1".into(),
                python_standby: true,
                next_exec_id: 3,
            }),
            FromAgent::Started(ExecId(7)),
            FromAgent::SpawnFailed(ExecId(7), "no such dir".into()),
            FromAgent::Output(ExecId(7), Stream::Stdout, b"out".to_vec()),
            FromAgent::Output(ExecId(7), Stream::Stderr, vec![0xff]),
            FromAgent::StdinWritten(ExecId(7), 3),
            FromAgent::Exited(ExecId(7), ExitStatus::Code(3)),
            FromAgent::Exited(ExecId(7), ExitStatus::Signal(9)),
            FromAgent::Inspection(Inspection {
                open_tcp_connections: 2,
            }),
            FromAgent::CellEvent(ExecId(8), b"{\"a\"".to_vec(), false),
            FromAgent::CellEvent(ExecId(8), b":1}".to_vec(), true),
            FromAgent::Contexts(vec![ContextInfo {
                context_id: "c1".into(),
                cwd: "/tmp".into(),
                died: Some("signal 9".into()),
            }]),
        ];
        let mut bytes = Vec::new();
        to_agent.iter().for_each(|frame| frame.encode(&mut bytes));
        let mut decoder = FrameDecoder::new();
        let mut decoded = Vec::new();
        for byte in &bytes {
            decoder.push(&[*byte]);
            while let Some(frame) = decoder.next_to_agent().unwrap() {
                decoded.push(frame);
            }
        }
        assert_eq!(decoded, to_agent);

        let mut bytes = Vec::new();
        from_agent.iter().for_each(|frame| frame.encode(&mut bytes));
        let mut decoder = FrameDecoder::new();
        decoder.push(&bytes);
        let mut decoded = Vec::new();
        while let Some(frame) = decoder.next_from_agent().unwrap() {
            decoded.push(frame);
        }
        assert_eq!(decoded, from_agent);
        assert_eq!(decoder.pending(), 0);
    }

    #[test]
    fn oversized_and_unknown_frames_are_errors_not_panics() {
        let mut decoder = FrameDecoder::new();
        decoder.push(&u32::MAX.to_le_bytes());
        assert!(decoder.next_from_agent().is_err());

        let mut decoder = FrameDecoder::new();
        let mut bytes = Vec::new();
        put_frame(&mut bytes, 200, ExecId(1), b"");
        decoder.push(&bytes);
        assert!(decoder.next_from_agent().is_err());

        let mut decoder = FrameDecoder::new();
        let mut bytes = Vec::new();
        put_frame(&mut bytes, kind::EXIT_CODE, ExecId(1), b"12");
        decoder.push(&bytes);
        assert!(decoder.next_from_agent().is_err());
    }

    #[test]
    fn signal_exit_uses_the_shell_convention() {
        assert_eq!(ExitStatus::Signal(9).shell_code(), 137);
        assert_eq!(ExitStatus::Code(2).shell_code(), 2);
    }

    /// Numbers in frames from the agent come from inside the sandbox: any value decodes and is
    /// used without overflow (`128 + i32::MAX` panicked in debug builds).
    #[test]
    fn extreme_numbers_from_the_agent_decode_and_never_overflow() {
        let mut bytes = Vec::new();
        put_frame(
            &mut bytes,
            kind::EXIT_SIGNAL,
            ExecId(u32::MAX),
            &i32::MAX.to_le_bytes(),
        );
        put_frame(
            &mut bytes,
            kind::EXIT_SIGNAL,
            ExecId(0),
            &i32::MIN.to_le_bytes(),
        );
        put_frame(
            &mut bytes,
            kind::STDIN_WRITTEN,
            ExecId(1),
            &u32::MAX.to_le_bytes(),
        );
        let mut decoder = FrameDecoder::new();
        decoder.push(&bytes);
        let mut frames = Vec::new();
        while let Some(frame) = decoder.next_from_agent().unwrap() {
            frames.push(frame);
        }
        assert_eq!(
            frames,
            [
                FromAgent::Exited(ExecId(u32::MAX), ExitStatus::Signal(i32::MAX)),
                FromAgent::Exited(ExecId(0), ExitStatus::Signal(i32::MIN)),
                FromAgent::StdinWritten(ExecId(1), u32::MAX),
            ]
        );
        assert_eq!(ExitStatus::Signal(i32::MAX).shell_code(), i32::MAX);
    }

    /// Reached through the session fuzz harness (fuzz/corpus/session/regression-signal-overflow):
    /// a forged exit frame with signal i32::MAX overflowed `128 + signal`.
    #[test]
    fn forged_signal_numbers_do_not_overflow() {
        let mut bytes = Vec::new();
        put_frame(
            &mut bytes,
            kind::EXIT_SIGNAL,
            ExecId(1),
            &i32::MAX.to_le_bytes(),
        );
        let mut decoder = FrameDecoder::new();
        decoder.push(&bytes);
        let Ok(Some(FromAgent::Exited(ExecId(1), status))) = decoder.next_from_agent() else {
            panic!("not an exit frame");
        };
        assert_eq!(status.shell_code(), i32::MAX);
        assert_eq!(ExitStatus::Signal(i32::MIN).shell_code(), i32::MIN + 128);
    }

    #[test]
    fn languages_have_one_name_each_on_the_wire_and_in_messages() {
        for language in Language::ALL {
            assert_eq!(Language::parse(language.as_str()), Some(language));
            let json = serde_json::to_string(&language).unwrap();
            assert_eq!(json, format!("\"{language}\""));
        }
        assert_eq!(Language::parse("Python"), None);
        assert_eq!(Language::parse("ruby"), None);
        let request: SpawnRequest =
            serde_json::from_str(r#"{"language":"bash","code":"","env":[],"cwd":"/","limits":{}}"#)
                .unwrap();
        assert_eq!(request.language, Language::Bash);
        assert!(serde_json::from_str::<SpawnRequest>(
            r#"{"language":"ruby","code":"","env":[],"cwd":"/","limits":{}}"#
        )
        .is_err());
    }
}
