//! One WebSocket sandbox session, as a state machine without I/O.
//!
//! It takes the client's messages ([`messages`]), the runtime's notices and the answers of the
//! store, and returns what the connection must do ([`Out`]: typed [`events`] to send, a close,
//! work for the server's pipelines). It acts on the sandbox only through [`SandboxControl`],
//! which the server implements over the runtime and the unit tests with a fake, so every flow
//! of `docs/protocol.md` is tested here message by message (`flows.rs` replays the shared
//! corpus `tests/flows/`).
//!
//! ```text
//! AwaitingInit --init--> [FindingSnapshot --found-->] Creating --Ready--> Running
//!      |                        |                        |                 |
//!      +--bad init--------------+--not found-------------+--start failed---+--lost--> Ending
//! Running --checkpoint / snapshot--> Saving --saved--> Ending / Running
//! Running --kill_sandbox / idle--> Ending(Kill) --Deleted--> [ForgettingSaved --removed-->] Ended
//! ```
//! A session outlives its connection: when the client goes away the session is detached, the
//! events of its processes are held (bounded; past the bound they are paused by back-pressure)
//! and replayed after `{"action":"reconnect"}` (or `attach_process`) on a new attach. While a
//! client is attached the sandbox is kept alive; the idle timeout counts from its departure.
//!
//! The processes and the messages about them (protocol 2: several at once, request ids, stdin
//! windows) are in [`process_requests`]; this file is the session's lifecycle.

pub mod code;
pub mod events;
pub mod exec_options;
pub mod file_messages;
pub mod files;
pub mod ids;
pub mod messages;
pub mod options;
mod process_requests;
pub mod processes;
mod resend;
pub mod stdin_window;
pub mod text;
pub mod token;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::agent_protocol::{ContextCommand, ExecId, Language, TerminalSize};
use crate::runtime::{ExecSpec, RuntimeError, RuntimeEvent, SandboxKey};
pub use events::{Frame, ServerEvent, Status};
use events::{OutputEncoding, ProcessKind};
use exec_options::ExecLimits;
pub use ids::{ProcessId, RequestId, SessionId};
use messages::{ClientMessage, Envelope};
use processes::{NewProcess, Processes};
use stdin_window::StdinWindow;

pub const LANGUAGES_MESSAGE: &str =
    "Unsupported language or message. Supported languages: python, bash.";

/// What a session needs from the runtime.
pub trait SandboxControl {
    /// A ready-to-be sandbox for the session: fresh, or started from a filesystem snapshot's
    /// (verified) image; with network egress if asked.
    fn acquire(
        &mut self,
        session: SessionId,
        options: &CreateOptions,
    ) -> Result<SandboxKey, RuntimeError>;
    fn sandbox_id(&self, sandbox: SandboxKey) -> String;
    fn start_exec(&mut self, sandbox: SandboxKey, spec: ExecSpec) -> Result<ExecId, RuntimeError>;
    fn write_stdin(
        &mut self,
        sandbox: SandboxKey,
        exec: ExecId,
        data: &[u8],
    ) -> Result<(), RuntimeError>;
    fn close_stdin(&mut self, sandbox: SandboxKey, exec: ExecId) -> Result<(), RuntimeError>;
    fn kill_exec(&mut self, sandbox: SandboxKey, exec: ExecId) -> Result<(), RuntimeError>;
    fn delete(&mut self, sandbox: SandboxKey);
    /// Hold back (or give back) the output window of one execution: its output is held for a
    /// client that does not follow it.
    fn set_exec_output_paused(&mut self, sandbox: SandboxKey, exec: ExecId, paused: bool);
    /// Set the window size of a terminal execution.
    fn resize_terminal(
        &mut self,
        sandbox: SandboxKey,
        exec: ExecId,
        size: TerminalSize,
    ) -> Result<(), RuntimeError>;
    /// Create or delete a code context (the agent reports its contexts back).
    fn context_command(
        &mut self,
        sandbox: SandboxKey,
        command: ContextCommand,
    ) -> Result<(), RuntimeError>;
}

/// How the session's sandbox is made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// The verified image of the filesystem snapshot to start from.
    pub snapshot_image: Option<PathBuf>,
    pub egress: bool,
}

/// Server-wide settings a session obeys.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub checkpoint_enabled: bool,
    pub snapshot_enabled: bool,
    pub default_idle_timeout: Duration,
    pub max_idle_timeout: Duration,
    pub exec: ExecLimits,
    /// Output held for clients that do not follow the processes, before they are paused.
    pub held_output_bytes: usize,
    /// The latest numbered events sent, kept for a reconnect after a drop (see `resend`).
    pub resend_output_bytes: usize,
    /// Why sandboxes cannot have network egress here (`None`: they can).
    pub egress_unavailable: Option<String>,
    /// How long the session waits for the store before it goes on without it.
    pub store_timeout: Duration,
    /// `SANDBOX_MAX_SESSION_PROCESSES`: processes running at once.
    pub max_session_processes: usize,
    /// `SANDBOX_STDIN_WINDOW_BYTES`: the stdin window of processes started with a request id.
    pub stdin_window_bytes: u64,
    /// `SANDBOX_MAX_RESULT_BYTES`: the largest result of a code cell sent as it is.
    pub max_result_bytes: u64,
}

/// What a checkpoint keeps of a session, to restore it with.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SavedState {
    /// As the client asked (seconds; `None`: the server's default).
    pub idle_timeout_secs: Option<f64>,
    pub auto_checkpoint: bool,
    pub network: bool,
    /// The processes running when the sandbox was checkpointed at shutdown: they go on after
    /// the restore, and the restored session follows them (reconnect replays them).
    pub running: Vec<SavedProcess>,
    /// Created with `enable_sandbox_handoff`.
    pub handoff: bool,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedProcess {
    /// Its execution (and process) id.
    pub exec: ExecId,
    pub output_encoding: OutputEncoding,
    /// The request that started it; `None`: the compatible foreground execution.
    pub request: Option<RequestId>,
    pub language: Option<Language>,
    /// A terminal goes on as a terminal after the restore (the agent keeps its pseudo-terminal).
    pub kind: ProcessKind,
    pub started_unix_ms: u64,
    /// Its stdin counters (protocol 2), so that acknowledgements go on where they were.
    pub stdin_received: u64,
    pub stdin_consumed: u64,
}

/// What the connection (and the server's pipelines) must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    Send(Frame),
    Close(u16, String),
    /// Save the sandbox (the server runs the checkpoint and publishes the image, then calls
    /// `on_checkpoint_saved` or `on_snapshot_finished`).
    Save(SaveRequest),
    /// Find and verify filesystem snapshot `name` in the store; answer with
    /// `on_snapshot_found`.
    FindSnapshot(String),
    /// Remove the sandbox's saved state (checkpoints, lease) from the store; answer with
    /// `on_saved_state_removed`.
    RemoveSavedState,
    /// Another instance asked for the sandbox and it cannot be handed off (why): tell the
    /// requester through the store.
    HandoffRefused(String),
    /// An event of a file transfer for an HTTP connection (the files API over HTTP).
    HttpFile {
        connection: u64,
        exec: ExecId,
        event: files::HttpFileOut,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaveRequest {
    /// Checkpoint and stop. `with_running` allows it while an execution runs (shutdown).
    Checkpoint { with_running: bool },
    /// Save a named filesystem snapshot and continue.
    Snapshot(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitingInit,
    /// The init named a filesystem snapshot: the store is looked up (off the loop thread).
    FindingSnapshot {
        since: Instant,
    },
    Creating,
    /// Attached to a checkpoint: `runsc restore` is running.
    Restoring,
    Running,
    /// A checkpoint (`snapshot: false`) or snapshot is being taken.
    Saving {
        snapshot: bool,
    },
    /// Deleting the sandbox; on `Deleted` the listed statuses are sent and the socket closed.
    Ending(Ending),
    /// Killed and deleted: its saved state is being removed from the store, so that an attach
    /// after `SANDBOX_KILLED` finds nothing to restore.
    ForgettingSaved {
        since: Instant,
    },
    Ended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// kill_sandbox or the idle timeout: DELETED, KILLED, close 1000 when done.
    Kill,
    /// The sandbox died or failed; the client was told already.
    Silent,
    /// Checkpointed: DELETED, CHECKPOINTED, close 1000 when the container is gone.
    Checkpointed,
    /// Checkpointed for a handoff: DELETED, CHECKPOINTED, LOCK_RELEASED, close 4001 (moved).
    Moved,
}

/// The close code after a sandbox moved to another instance (a handoff).
pub const CLOSE_MOVED: u16 = 4001;

/// A session as `GET /sandboxes` lists it (never its token).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionView {
    pub sandbox_id: String,
    pub state: &'static str,
    pub age: Duration,
    pub idle: Duration,
    pub labels: BTreeMap<String, String>,
    pub attached: bool,
    pub checkpointable: bool,
    /// It came from a checkpoint in the store (which stays until the next one replaces it).
    pub checkpointed: bool,
    pub handoff: bool,
}

pub struct Session {
    pub id: SessionId,
    settings: SessionSettings,
    state: State,
    sandbox: Option<SandboxKey>,
    sandbox_id: String,
    /// The token in clear (only known to the instance that created the session).
    token: String,
    token_sha256: String,
    /// Created with `enable_checkpoint`.
    checkpointable: bool,
    auto_checkpoint: bool,
    /// Created with network egress.
    network: bool,
    /// Created with `enable_sandbox_handoff`: another instance may ask for it.
    handoff: bool,
    /// The running checkpoint was asked for by another instance (a handoff).
    moving: bool,
    labels: BTreeMap<String, String>,
    created: Instant,
    /// Restored from a checkpoint.
    restored: bool,
    /// The running checkpoint was started by the idle timeout.
    auto_saving: bool,
    /// An idle checkpoint was refused: the next idle timeout deletes instead of retrying.
    auto_checkpoint_refused: bool,
    /// Ended by kill_sandbox or the idle timeout (its saved state goes too).
    killed: bool,
    /// Ended by its idle timeout, after this long without a client.
    idle_expired: Option<Duration>,
    /// The request id of the kill, checkpoint or snapshot under way: its statuses echo it.
    pending_request: Option<RequestId>,
    processes: Processes,
    /// The latest numbered events sent, for a `reconnect` after a drop (see `resend`).
    resend: resend::ResendLog,
    /// File operations under way (the files API).
    files: files::FileTransfers,
    /// The code interpreter's contexts (issue 13).
    code: code::CodeContexts,
    attached: bool,
    idle_timeout: Option<Duration>,
    last_activity: Instant,
    /// A moment of the monotonic clock and the wall-clock time then (for `started_unix_ms`).
    wall_clock: (Instant, u64),
}

/// An error status with its message, then the `error` event with the same text; both echo the
/// request id of the message they answer.
fn error_frames(status: Status, message: &str, id: Option<&RequestId>) -> [Out; 2] {
    [
        Out::Send(Frame::answering(
            ServerEvent::StatusWithMessage(status, message.to_string()),
            id,
        )),
        Out::Send(Frame::answering(
            ServerEvent::Error(message.to_string()),
            id,
        )),
    ]
}

fn status(status: Status) -> Out {
    Out::Send(ServerEvent::Status(status).into())
}

/// RFC 6455 §5.5: a close frame carries at most 125 bytes, 2 of them the code. A longer
/// reason makes the frame invalid and the client fails the connection instead of reading it.
const MAX_CLOSE_REASON_BYTES: usize = 123;

/// `text` cut to fit in a close frame, on a character boundary.
fn close_reason(text: &str) -> String {
    let mut end = text.len().min(MAX_CLOSE_REASON_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    // `end` is a character boundary within `text` (0 always is), so `get` cannot miss.
    text.get(..end).unwrap_or_default().to_string()
}

/// A refusal that ends the connection: the error status with its message, the `error` event,
/// and the close (its reason is the status, in lower case).
pub fn refusal(status: Status, message: &str, code: u16) -> Vec<Out> {
    let mut out = error_frames(status, message, None).to_vec();
    out.push(Out::Close(code, status.as_str().to_lowercase()));
    out
}

/// Milliseconds since the Unix epoch now (0 if the clock is before it).
fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Session {
    pub fn new(id: SessionId, token: String, settings: SessionSettings, now: Instant) -> Self {
        Session {
            id,
            processes: Processes::new(settings.max_session_processes),
            resend: resend::ResendLog::new(settings.resend_output_bytes),
            files: files::FileTransfers::default(),
            code: code::CodeContexts::default(),
            settings,
            state: State::AwaitingInit,
            sandbox: None,
            sandbox_id: String::new(),
            token_sha256: token::hash(&token),
            token,
            checkpointable: false,
            auto_checkpoint: false,
            network: false,
            handoff: false,
            moving: false,
            labels: BTreeMap::new(),
            created: now,
            restored: false,
            auto_saving: false,
            auto_checkpoint_refused: false,
            killed: false,
            idle_expired: None,
            pending_request: None,
            attached: true,
            idle_timeout: None,
            last_activity: now,
            wall_clock: (now, unix_ms_now()),
        }
    }

    /// A session re-created on `/attach` from a checkpoint; `runsc restore` has been started.
    pub fn restored(
        id: SessionId,
        token_sha256: String,
        saved: &SavedState,
        sandbox: SandboxKey,
        sandbox_id: String,
        settings: SessionSettings,
        now: Instant,
    ) -> Self {
        let mut session = Session::new(id, String::new(), settings, now);
        session.token_sha256 = token_sha256;
        session.state = State::Restoring;
        session.sandbox = Some(sandbox);
        session.sandbox_id = sandbox_id;
        session.checkpointable = true;
        session.auto_checkpoint = saved.auto_checkpoint;
        session.network = saved.network;
        session.handoff = saved.handoff;
        session.labels = saved.labels.clone();
        session.restored = true;
        // The manifest is shared storage another instance wrote, or a corrupted file: a value
        // the init would have refused means the server's default, never a panic.
        session.idle_timeout = saved
            .idle_timeout_secs
            .and_then(|seconds| options::duration(seconds, true, options::MAX_IDLE_TIMEOUT_SECS));
        let window = session.settings.stdin_window_bytes;
        for process in &saved.running {
            // Their events are held until the client asks for them (reconnect).
            session.processes.start(NewProcess {
                exec: process.exec,
                request: process.request.clone(),
                language: process.language,
                kind: process.kind,
                encoding: process.output_encoding,
                started_unix_ms: process.started_unix_ms,
                stdin: process.request.as_ref().map(|_| {
                    StdinWindow::restored(window, process.stdin_received, process.stdin_consumed)
                }),
                followed: false,
                started: true,
                context: None,
            });
        }
        session
    }

    pub fn sandbox(&self) -> Option<SandboxKey> {
        self.sandbox
    }

    pub fn sandbox_id(&self) -> &str {
        &self.sandbox_id
    }

    pub fn token_sha256(&self) -> &str {
        &self.token_sha256
    }

    pub fn was_killed(&self) -> bool {
        self.killed
    }

    /// Ended by its idle timeout: after how long without a client.
    pub fn idle_expired(&self) -> Option<Duration> {
        self.idle_expired
    }

    pub fn is_checkpointable(&self) -> bool {
        self.checkpointable
    }

    /// Created with `enable_sandbox_handoff`.
    pub fn allows_handoff(&self) -> bool {
        self.handoff
    }

    /// Being checkpointed for a handoff.
    pub fn is_moving(&self) -> bool {
        self.moving
    }

    /// What `GET /sandboxes` shows of it.
    pub fn view(&self, now: Instant) -> SessionView {
        let state = match self.state {
            State::AwaitingInit | State::FindingSnapshot { .. } | State::Creating => "creating",
            State::Restoring => "restoring",
            State::Running => "running",
            State::Saving { .. } if self.moving => "moving",
            State::Saving { snapshot: true } => "snapshotting",
            State::Saving { snapshot: false } => "checkpointing",
            State::Ending(_) | State::ForgettingSaved { .. } | State::Ended => "ending",
        };
        let idle = if self.state == State::Running && !self.processes.any_running() {
            now.saturating_duration_since(self.last_activity)
        } else {
            Duration::ZERO
        };
        SessionView {
            sandbox_id: self.sandbox_id.clone(),
            state,
            age: now.saturating_duration_since(self.created),
            idle,
            labels: self.labels.clone(),
            attached: self.attached,
            checkpointable: self.checkpointable,
            checkpointed: self.restored,
            handoff: self.handoff,
        }
    }

    pub fn is_attached(&self) -> bool {
        self.attached
    }

    /// The session is over and can be forgotten.
    pub fn is_ended(&self) -> bool {
        self.state == State::Ended
    }

    /// Whether it can be attached to (a live, running sandbox).
    pub fn is_running(&self) -> bool {
        self.state == State::Running
    }

    /// The session's processes, in the order they started.
    pub fn processes(&self) -> Vec<events::ProcessEntry> {
        self.processes.entries()
    }

    /// The executions a restored sandbox still runs, with the bounds the runtime should keep
    /// them to: the time (their own timeout is not saved: the server's default applies) and
    /// the bytes of stdin in flight.
    pub fn adopted_execs(&self) -> Vec<(ExecId, Duration, u64)> {
        if self.state != State::Restoring {
            return Vec::new();
        }
        self.processes
            .running()
            .map(|process| {
                let stdin_bound = match &process.stdin {
                    Some(stdin) => StdinWindow::hard_bound(stdin.window()),
                    None => crate::runtime::MAX_STDIN_IN_FLIGHT,
                };
                (
                    process.exec(),
                    self.settings.exec.default_timeout,
                    stdin_bound,
                )
            })
            .collect()
    }

    /// What is saved with a checkpoint and restored with it.
    pub fn saved_state(&self) -> SavedState {
        SavedState {
            idle_timeout_secs: self.idle_timeout.map(|timeout| timeout.as_secs_f64()),
            auto_checkpoint: self.auto_checkpoint,
            network: self.network,
            running: self
                .processes
                .running()
                .map(|process| SavedProcess {
                    exec: process.exec(),
                    output_encoding: process.encoding(),
                    request: process.request().cloned(),
                    language: process.language(),
                    kind: process.kind(),
                    started_unix_ms: process.started_unix_ms(),
                    stdin_received: process.stdin.as_ref().map_or(0, StdinWindow::received),
                    stdin_consumed: process.stdin.as_ref().map_or(0, StdinWindow::consumed),
                })
                .collect(),
            handoff: self.handoff,
            labels: self.labels.clone(),
        }
    }

    /// The wall-clock time at `now`, in milliseconds since the Unix epoch.
    fn unix_ms(&self, now: Instant) -> u64 {
        let (then, unix_ms) = self.wall_clock;
        let since = now.saturating_duration_since(then).as_millis();
        unix_ms.saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }

    /// Replays of the flow corpus run on a clock of their own.
    #[cfg(test)]
    fn set_wall_clock(&mut self, now: Instant, unix_ms: u64) {
        self.wall_clock = (now, unix_ms);
    }

    /// Frames of the session itself reach only an attached client.
    fn send(&self, out: &mut Vec<Out>, frame: Frame) {
        if self.attached {
            out.push(Out::Send(frame));
        }
    }

    /// A status of the kill, checkpoint or snapshot under way (with its request id).
    fn send_status(&self, out: &mut Vec<Out>, status: Status) {
        let frame = Frame::answering(ServerEvent::Status(status), self.pending_request.as_ref());
        self.send(out, frame);
    }

    /// An error of the kill, checkpoint or snapshot under way, if a client is there to read it.
    fn send_error(&self, out: &mut Vec<Out>, status: Status, message: &str) {
        if self.attached {
            out.extend(error_frames(status, message, self.pending_request.as_ref()));
        }
    }

    /// The first message on `/create`.
    pub fn on_init(
        &mut self,
        text: &str,
        control: &mut dyn SandboxControl,
        now: Instant,
    ) -> Vec<Out> {
        self.last_activity = now;
        let init = match options::parse_init(text) {
            Ok(init) => init,
            Err(message) => return self.creation_failed(&message, 4000),
        };
        self.checkpointable = init.checkpoint;
        self.auto_checkpoint = init.auto_checkpoint;
        self.network = init.network;
        self.handoff = init.handoff;
        self.labels = init.labels;
        self.idle_timeout = init.idle_timeout;
        // What the client asked for is well-formed; now whether this server can do it.
        let problem = if self.network && self.settings.egress_unavailable.is_some() {
            self.settings.egress_unavailable.clone()
        } else if self.handoff && !self.settings.checkpoint_enabled {
            Some(
                "enable_sandbox_handoff needs checkpointing, which is not enabled on this server (set CHECKPOINT_AND_RESTORE_PATH)"
                    .to_string(),
            )
        } else if self.checkpointable && !self.settings.checkpoint_enabled {
            Some(
                "checkpointing is not enabled on this server (set CHECKPOINT_AND_RESTORE_PATH)"
                    .to_string(),
            )
        } else if let Some(name) = &init.snapshot {
            if !self.settings.snapshot_enabled {
                Some(format!(
                    "cannot create from filesystem snapshot {name:?}: filesystem snapshots are not enabled on this server (set FILESYSTEM_SNAPSHOT_PATH)"
                ))
            } else {
                options::validate_snapshot_name(name).err()
            }
        } else {
            None
        };
        if let Some(message) = problem {
            return self.creation_failed(&message, 4000);
        }
        let mut out = vec![status(Status::Creating)];
        match init.snapshot {
            Some(name) => {
                self.state = State::FindingSnapshot { since: now };
                out.push(Out::FindSnapshot(name));
            }
            None => out.extend(self.acquire(None, control)),
        }
        out
    }

    /// The store answered `Out::FindSnapshot`: the snapshot's verified image, or why not.
    pub fn on_snapshot_found(
        &mut self,
        image: Result<PathBuf, String>,
        control: &mut dyn SandboxControl,
    ) -> Vec<Out> {
        if !matches!(self.state, State::FindingSnapshot { .. }) {
            return Vec::new();
        }
        match image {
            Ok(image) => self.acquire(Some(image), control),
            Err(message) => self.creation_failed(&message, 4000),
        }
    }

    fn acquire(
        &mut self,
        snapshot_image: Option<PathBuf>,
        control: &mut dyn SandboxControl,
    ) -> Vec<Out> {
        let options = CreateOptions {
            snapshot_image,
            egress: self.network,
        };
        match control.acquire(self.id, &options) {
            Ok(sandbox) => {
                self.sandbox = Some(sandbox);
                self.sandbox_id = control.sandbox_id(sandbox);
                self.state = State::Creating;
                Vec::new()
            }
            Err(error) => {
                let code = if matches!(error, RuntimeError::AtCapacity(_)) {
                    1013
                } else {
                    4000
                };
                self.creation_failed(&error.to_string(), code)
            }
        }
    }

    fn creation_failed(&mut self, message: &str, code: u16) -> Vec<Out> {
        self.state = State::Ended;
        let mut out = error_frames(Status::CreationError, message, None).to_vec();
        // The message, as much of it as a close frame can carry.
        out.push(Out::Close(code, close_reason(message)));
        out
    }

    /// The effective idle timeout: 0 or none means "never", capped by the server's maximum.
    fn idle_limit(&self) -> Duration {
        match self.idle_timeout {
            Some(timeout) if !timeout.is_zero() => timeout.min(self.settings.max_idle_timeout),
            Some(_) => self.settings.max_idle_timeout,
            None => self
                .settings
                .default_idle_timeout
                .min(self.settings.max_idle_timeout),
        }
    }

    /// Called periodically: delete the sandbox once it has been without a client too long;
    /// stop waiting for a store that does not answer.
    pub fn on_tick(&mut self, now: Instant, control: &mut dyn SandboxControl) -> Vec<Out> {
        let store_timeout = self.settings.store_timeout;
        match self.state {
            State::FindingSnapshot { since }
                if now.saturating_duration_since(since) > store_timeout =>
            {
                let message = format!(
                    "the snapshot store did not answer within {} s; retry later",
                    store_timeout.as_secs()
                );
                return self.creation_failed(&message, 4000);
            }
            State::ForgettingSaved { since }
                if now.saturating_duration_since(since) > store_timeout =>
            {
                // The client is told it is gone; the store's leftovers are swept later.
                return self.on_saved_state_removed();
            }
            State::FindingSnapshot { .. } | State::ForgettingSaved { .. } => return Vec::new(),
            _ => {}
        }
        if self.state != State::Running
            || self.attached
            || self.processes.any_running()
            || self.has_file_transfers()
        {
            // An attached client keeps its sandbox (the connection's pings prove it is
            // there; one that stops answering them is dropped, and then the timer runs), and
            // a running execution or file transfer (an HTTP one needs no session client) is
            // activity: the idle time counts from after both.
            self.last_activity = now;
            return Vec::new();
        }
        let limit = self.idle_limit();
        if now.saturating_duration_since(self.last_activity) < limit {
            return Vec::new();
        }
        let mut out = Vec::new();
        self.pending_request = None;
        if self.auto_checkpoint && self.settings.checkpoint_enabled && !self.auto_checkpoint_refused
        {
            self.auto_saving = true;
            self.begin_checkpoint(&mut out, false);
        } else {
            self.idle_expired = Some(limit);
            self.begin_kill(&mut out, control);
        }
        out
    }

    fn begin_checkpoint(&mut self, out: &mut Vec<Out>, with_running: bool) {
        self.send_status(out, Status::Checkpointing);
        self.state = State::Saving { snapshot: false };
        out.push(Out::Save(SaveRequest::Checkpoint { with_running }));
    }

    /// The server is shutting down: checkpoint what must survive.
    pub fn on_shutdown(&mut self) -> Vec<Out> {
        let mut out = Vec::new();
        if self.checkpointable && self.settings.checkpoint_enabled && self.state == State::Running {
            self.pending_request = None;
            self.begin_checkpoint(&mut out, true);
        }
        out
    }

    /// Another instance asked for the sandbox (a handoff): checkpoint it, running executions
    /// included (they go on there, as after a shutdown), and tell the client it moves. `None`
    /// when it cannot begin now (still starting, or saving): the request stays in the store
    /// and is seen again.
    pub fn on_handoff_requested(&mut self) -> Option<Vec<Out>> {
        if !self.handoff || !self.settings.checkpoint_enabled || self.state != State::Running {
            return None;
        }
        let mut out = Vec::new();
        let message = format!(
            "another server instance asked for sandbox {}: it is checkpointed here and continues there",
            self.sandbox_id
        );
        self.send(
            &mut out,
            ServerEvent::StatusWithMessage(Status::LockReleaseRequested, message).into(),
        );
        self.moving = true;
        self.pending_request = None;
        self.begin_checkpoint(&mut out, true);
        Some(out)
    }

    /// Another instance holds the sandbox's lease now (ours expired unrenewed and was taken
    /// over): it may run there, so it must not run here any more. Its saved state stays.
    pub fn on_lease_lost(&mut self, holder: &str, control: &mut dyn SandboxControl) -> Vec<Out> {
        let mut out = Vec::new();
        let ending = matches!(
            self.state,
            State::Ending(_) | State::ForgettingSaved { .. } | State::Ended
        );
        let Some(sandbox) = self.sandbox.filter(|_| !ending) else {
            return out;
        };
        let message = format!(
            "sandbox {} lost its lease to another server instance ({holder}): it was stopped here",
            self.sandbox_id
        );
        if self.attached {
            out.extend(error_frames(Status::LockRenewalError, &message, None));
            out.push(Out::Close(4000, "lease lost".into()));
        }
        self.state = State::Ending(Ending::Silent);
        control.delete(sandbox);
        out
    }

    /// The checkpoint was saved (and published), or not. Either way the container is stopped.
    pub fn on_checkpoint_saved(
        &mut self,
        result: Result<(), String>,
        control: &mut dyn SandboxControl,
    ) -> Vec<Out> {
        let mut out = Vec::new();
        if self.state != (State::Saving { snapshot: false }) {
            return out;
        }
        match result {
            Ok(()) => {
                self.send_status(&mut out, Status::Deleting);
                self.state = State::Ending(if self.moving {
                    Ending::Moved
                } else {
                    Ending::Checkpointed
                });
            }
            Err(message) => {
                self.moving = false;
                self.state = State::Ending(Ending::Silent);
                if self.attached {
                    self.send_error(&mut out, Status::CheckpointError, &message);
                    out.push(Out::Close(4000, "checkpoint error".into()));
                }
            }
        }
        if let Some(sandbox) = self.sandbox {
            control.delete(sandbox);
        }
        out
    }

    /// The snapshot is saved (or not); `alive` says whether the sandbox runs again.
    pub fn on_snapshot_finished(
        &mut self,
        result: Result<(), String>,
        alive: bool,
        control: &mut dyn SandboxControl,
    ) -> Vec<Out> {
        let mut out = Vec::new();
        if self.state != (State::Saving { snapshot: true }) {
            return out;
        }
        match &result {
            Ok(()) => self.send_status(&mut out, Status::FilesystemSnapshotCreated),
            Err(message) => self.send_error(&mut out, Status::FilesystemSnapshotError, message),
        }
        if alive {
            self.state = State::Running;
        } else {
            self.state = State::Ending(Ending::Silent);
            if let Some(sandbox) = self.sandbox {
                control.delete(sandbox);
            }
            if self.attached {
                self.send_error(
                    &mut out,
                    Status::Error,
                    "the sandbox did not survive the snapshot",
                );
                out.push(Out::Close(4000, "sandbox error".into()));
            }
        }
        self.pending_request = None;
        out
    }

    fn begin_kill(&mut self, out: &mut Vec<Out>, control: &mut dyn SandboxControl) {
        self.send_status(out, Status::Killing);
        self.send_status(out, Status::Deleting);
        self.state = State::Ending(Ending::Kill);
        self.killed = true;
        if let Some(sandbox) = self.sandbox {
            control.delete(sandbox);
        }
    }

    /// The store answered `Out::RemoveSavedState` (or did not in time): the kill is complete.
    pub fn on_saved_state_removed(&mut self) -> Vec<Out> {
        let mut out = Vec::new();
        if matches!(self.state, State::ForgettingSaved { .. }) {
            self.finish_kill(&mut out);
        }
        out
    }

    fn finish_kill(&mut self, out: &mut Vec<Out>) {
        self.send_status(out, Status::Deleted);
        self.send_status(out, Status::Killed);
        if self.attached {
            out.push(Out::Close(1000, "done".into()));
        }
        self.state = State::Ended;
    }

    /// A client attached on `/attach` (token already checked, not in use). It follows no
    /// process yet: their events stay held until `reconnect` or `attach_process`, so that
    /// none reaches it under a request id it does not know.
    pub fn on_attach(&mut self, now: Instant) -> Vec<Out> {
        self.attached = true;
        self.last_activity = now;
        vec![status(Status::Running)]
    }

    pub fn on_detach(&mut self, now: Instant) {
        self.attached = false;
        self.processes.unfollow_all();
        self.last_activity = now;
    }

    /// A text message after set-up.
    pub fn on_message(
        &mut self,
        text: &str,
        control: &mut dyn SandboxControl,
        now: Instant,
    ) -> Vec<Out> {
        self.last_activity = now;
        let mut out = Vec::new();
        let Envelope { id, message } = messages::parse(text, &self.settings.exec);
        let id = id.as_ref();
        if self.state != State::Running {
            // Messages before the sandbox is ready, or while it is being deleted, cannot act.
            let message = match self.state {
                State::FindingSnapshot { .. } | State::Creating => {
                    "the sandbox is still being created"
                }
                State::Restoring => "the sandbox is still being restored",
                State::Saving { snapshot: true } => {
                    "a filesystem snapshot is being taken; retry when it is done"
                }
                State::Saving { snapshot: false } => "the sandbox is being checkpointed",
                _ => "the sandbox is being deleted",
            };
            out.extend(error_frames(Status::ExecutionError, message, id));
            return out;
        }
        match message {
            ClientMessage::KillProcess(process) => {
                self.kill_process(process, id, &mut out, control)
            }
            ClientMessage::KillSandbox => {
                self.pending_request = id.cloned();
                self.begin_kill(&mut out, control)
            }
            ClientMessage::Checkpoint => self.checkpoint(id, &mut out),
            ClientMessage::SnapshotFilesystem(name) => self.snapshot(name, id, &mut out),
            ClientMessage::Reconnect(received) => self.reconnect(&received, &mut out, control),
            ClientMessage::Stdin(process, stdin) => {
                self.stdin(process, stdin, id, &mut out, control)
            }
            ClientMessage::Exec(exec) => self.exec(exec, id, &mut out, control, now),
            ClientMessage::ListProcesses => self.list_processes(id, &mut out),
            ClientMessage::AttachProcess(process) => {
                self.attach_process(process, id, &mut out, control)
            }
            ClientMessage::Resize(process, size) => {
                self.resize(process, size, id, &mut out, control)
            }
            ClientMessage::SetIdleTimeout(timeout) => {
                self.idle_timeout = timeout;
                let reply = events::Reply::IdleTimeout(self.idle_limit());
                out.push(Out::Send(Frame::answering(ServerEvent::Reply(reply), id)));
            }
            ClientMessage::File(file) => self.file_message(file, id, &mut out, control),
            ClientMessage::Code(message) => self.code_message(message, id, &mut out, control, now),
            ClientMessage::Malformed(problem) => {
                out.extend(error_frames(Status::RequestError, &problem, id))
            }
            ClientMessage::Unsupported => out.extend(error_frames(
                Status::ExecutionUnsupportedLanguageError,
                LANGUAGES_MESSAGE,
                id,
            )),
        }
        out
    }

    fn checkpoint(&mut self, id: Option<&RequestId>, out: &mut Vec<Out>) {
        let running = self.processes.any_running() || self.has_file_transfers();
        if self.checkpointable && self.settings.checkpoint_enabled && !running {
            self.pending_request = id.cloned();
            return self.begin_checkpoint(out, false);
        }
        if running {
            out.push(Out::Send(Frame::answering(
                ServerEvent::Status(Status::Checkpointing),
                id,
            )));
            // The original clients match on this text.
            out.extend(error_frames(
                Status::ExecutionInProgressError,
                "Cannot checkpoint while an execution is in progress.",
                id,
            ));
            return;
        }
        let text = if self.settings.checkpoint_enabled {
            "checkpointing is not enabled for this sandbox: create it with enable_checkpoint"
        } else {
            "checkpointing is not enabled on this server (set CHECKPOINT_AND_RESTORE_PATH)"
        };
        out.extend(error_frames(Status::CheckpointError, text, id));
        out.push(Out::Close(4000, "checkpoint error".into()));
        // The sandbox survives the closed connection, until its idle timeout.
    }

    fn snapshot(
        &mut self,
        name: Result<String, String>,
        id: Option<&RequestId>,
        out: &mut Vec<Out>,
    ) {
        out.push(Out::Send(Frame::answering(
            ServerEvent::Status(Status::FilesystemSnapshotCreating),
            id,
        )));
        let problem = match &name {
            Err(problem) => Some(problem.clone()),
            Ok(_) if !self.settings.snapshot_enabled => Some(
                "filesystem snapshots are not enabled on this server (set FILESYSTEM_SNAPSHOT_PATH)"
                    .to_string(),
            ),
            Ok(_) if self.processes.any_running() || self.has_file_transfers() => Some(
                "cannot take a filesystem snapshot while an execution is running".to_string(),
            ),
            Ok(name) => options::validate_snapshot_name(name).err(),
        };
        match (problem, name) {
            (Some(text), _) => out.extend(error_frames(Status::FilesystemSnapshotError, &text, id)),
            (None, Ok(name)) => {
                self.pending_request = id.cloned();
                self.state = State::Saving { snapshot: true };
                out.push(Out::Save(SaveRequest::Snapshot(name)));
            }
            // A name that is an error has a problem.
            (None, Err(_)) => {}
        }
    }

    /// A runtime notice for this session's sandbox.
    pub fn on_runtime(
        &mut self,
        event: RuntimeEvent,
        control: &mut dyn SandboxControl,
    ) -> Vec<Out> {
        let mut out = Vec::new();
        if event == RuntimeEvent::Ready {
            self.code.expect_resync();
        }
        let Some(event) = self.route_file_notice(event, &mut out) else {
            return out;
        };
        match event {
            RuntimeEvent::Ready if self.state == State::Restoring => {
                self.state = State::Running;
                // The restore's own time is not idleness.
                self.last_activity = Instant::now();
                self.send(&mut out, ServerEvent::Status(Status::Running).into());
            }
            RuntimeEvent::Ready if self.state == State::Creating => {
                self.state = State::Running;
                let sandbox_id = ServerEvent::SandboxId {
                    sandbox_id: self.sandbox_id.clone(),
                    sandbox_token: self.token.clone(),
                };
                self.send(&mut out, sandbox_id.into());
                self.send(&mut out, ServerEvent::Status(Status::Running).into());
            }
            RuntimeEvent::StartFailed(message) => {
                let (failure, text) = match self.state {
                    State::Restoring => (
                        Status::RestoreError,
                        format!("cannot restore the sandbox: {message}"),
                    ),
                    State::Saving { .. } => (
                        Status::Error,
                        format!("the sandbox did not come back after saving: {message}"),
                    ),
                    _ => (
                        Status::CreationError,
                        format!("cannot create the sandbox: {message}"),
                    ),
                };
                self.state = State::Ending(Ending::Silent);
                if self.attached {
                    self.send_error(&mut out, failure, &text);
                    out.push(Out::Close(4000, "sandbox error".into()));
                }
            }
            RuntimeEvent::Lost(message) => {
                if let Some(sandbox) = self.sandbox {
                    control.delete(sandbox);
                }
                self.state = State::Ending(Ending::Silent);
                if self.attached {
                    let text = format!("the sandbox stopped: {message}");
                    out.extend(error_frames(Status::Error, &text, None));
                    out.push(Out::Close(4000, "sandbox error".into()));
                }
            }
            RuntimeEvent::Deleted => match self.state {
                State::Ending(Ending::Kill) if self.checkpointable => {
                    self.state = State::ForgettingSaved {
                        since: Instant::now(),
                    };
                    out.push(Out::RemoveSavedState);
                }
                State::Ending(Ending::Kill) => self.finish_kill(&mut out),
                State::Ending(Ending::Checkpointed) => {
                    self.send_status(&mut out, Status::Deleted);
                    self.send_status(&mut out, Status::Checkpointed);
                    if self.attached {
                        out.push(Out::Close(1000, "done".into()));
                    }
                    self.state = State::Ended;
                }
                State::Ending(Ending::Moved) => {
                    self.send_status(&mut out, Status::Deleted);
                    self.send_status(&mut out, Status::Checkpointed);
                    let message = format!(
                        "sandbox {} moved to another server instance: attach to it again to continue there",
                        self.sandbox_id
                    );
                    self.send(
                        &mut out,
                        ServerEvent::StatusWithMessage(Status::LockReleased, message).into(),
                    );
                    if self.attached {
                        out.push(Out::Close(CLOSE_MOVED, "sandbox moved".into()));
                    }
                    self.state = State::Ended;
                }
                _ => self.state = State::Ended,
            },
            RuntimeEvent::CheckpointRefused(message) => {
                let failure = match self.state {
                    State::Saving { snapshot: true } => Status::FilesystemSnapshotError,
                    State::Saving { snapshot: false } => Status::CheckpointError,
                    _ => return out,
                };
                // Nothing was touched: the session goes on.
                self.state = State::Running;
                self.send_error(&mut out, failure, &message);
                self.pending_request = None;
                if std::mem::take(&mut self.moving) {
                    out.push(Out::HandoffRefused(message.clone()));
                }
                if std::mem::take(&mut self.auto_saving) {
                    // The idle timeout could not checkpoint: it deletes the sandbox instead,
                    // as it would without auto-checkpoint, rather than retrying forever.
                    self.auto_checkpoint_refused = true;
                    self.idle_expired = Some(self.idle_limit());
                    self.begin_kill(&mut out, control);
                }
            }
            RuntimeEvent::ExecStarted(exec) => self.on_exec_started(exec, &mut out, control),
            RuntimeEvent::ExecSpawnFailed(exec, message) => {
                self.on_exec_spawn_failed(exec, &message, &mut out, control)
            }
            RuntimeEvent::Output(exec, stream, data) => {
                self.on_output(exec, stream, data, &mut out, control)
            }
            RuntimeEvent::StdinWritten(exec, count) => self.on_stdin_written(exec, count),
            RuntimeEvent::ExecFinished(exec, outcome) => {
                self.on_exec_finished(exec, &outcome, &mut out, control)
            }
            RuntimeEvent::CellEvent(exec, data, last) => {
                self.on_cell_event(exec, data, last, &mut out, control)
            }
            RuntimeEvent::CodeContexts(contexts) => {
                self.on_code_contexts(contexts, &mut out, control)
            }
            RuntimeEvent::Checkpointed(_) | RuntimeEvent::Ready => {}
        }
        out
    }
}

#[cfg(test)]
mod flows;
#[cfg(test)]
mod tests;
