//! One WebSocket sandbox session, as a state machine without I/O.
//!
//! It takes the client's messages and the runtime's notices, and returns the frames to send
//! (and the close code). It acts on the sandbox only through [`SandboxControl`], which the
//! server implements over the runtime and the unit tests implement with a fake, so every flow of
//! `docs/protocol.md` is tested here message by message.
//!
//! ```text
//! AwaitingInit --init--> Creating --Ready--> Running --kill_sandbox / idle--> Ending --Deleted--> Ended
//!      |                    |                   |
//!      +--bad init----------+--start failed-----+--sandbox lost--> Ending
//! ```
//! A session outlives its connection: when the client goes away the session is detached, output
//! of the running execution is held (bounded; the process is paused by back-pressure past the
//! bound) and replayed after `{"action":"reconnect"}` on a new attach.

pub mod options;
pub mod text;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::agent_protocol::{ExecId, Language, Stream};
use crate::runtime::exec::{ExecOutcome, Reason};
use crate::runtime::{ExecSpec, RuntimeError, RuntimeEvent, SandboxKey};
use text::{base64_decode, base64_encode, Utf8Stream};

pub type SessionId = u64;

pub const LANGUAGES_MESSAGE: &str =
    "Unsupported language or message. Supported languages: python, bash.";

/// What a session needs from the runtime.
pub trait SandboxControl {
    /// A ready-to-be sandbox for the session: fresh, or started from a filesystem snapshot;
    /// with network egress if asked.
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
    fn set_output_paused(&mut self, sandbox: SandboxKey, paused: bool);
}

/// How the session's sandbox is made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateOptions {
    pub snapshot: Option<String>,
    pub egress: bool,
}

/// Server-wide settings a session obeys.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub checkpoint_enabled: bool,
    pub snapshot_enabled: bool,
    pub default_idle_timeout: Duration,
    pub max_idle_timeout: Duration,
    pub exec_timeout: Duration,
    pub max_exec_timeout: Duration,
    pub max_code_bytes: usize,
    /// Output held for a detached client before the process is paused.
    pub held_output_bytes: usize,
    /// Why sandboxes cannot have network egress here (`None`: they can).
    pub egress_unavailable: Option<String>,
}

/// What the connection must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    Send(String),
    Close(u16, String),
    /// Save the sandbox (the server runs the checkpoint and publishes the image, then calls
    /// `on_checkpoint_saved` or `on_snapshot_finished`).
    Save(SaveRequest),
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
}

#[derive(Debug)]
struct RunningExec {
    id: ExecId,
    base64: bool,
    stdout: Utf8Stream,
    stderr: Utf8Stream,
    /// Output not yet framed: consecutive chunks of one stream are merged into one frame.
    pending: Option<(Stream, Vec<u8>)>,
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
    /// The running checkpoint was started by the idle timeout.
    auto_saving: bool,
    /// An idle checkpoint was refused: the next idle timeout deletes instead of retrying.
    auto_checkpoint_refused: bool,
    /// Ended by kill_sandbox or the idle timeout (its saved state goes too).
    killed: bool,
    exec: Option<RunningExec>,
    attached: bool,
    /// Attached again, but the client has not asked for the replay yet.
    awaiting_reconnect: bool,
    held: VecDeque<String>,
    held_bytes: usize,
    output_paused: bool,
    idle_timeout: Option<Duration>,
    last_activity: Instant,
}

fn status(name: &str) -> String {
    json!({"event": "status_update", "status": name}).to_string()
}

/// An error status carries `message` too, followed by the `error` event (protocol addition).
fn error_frames(name: &str, message: &str) -> [Out; 2] {
    [
        Out::Send(
            json!({"event": "status_update", "status": name, "message": message}).to_string(),
        ),
        Out::Send(json!({"event": "error", "message": message}).to_string()),
    ]
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
pub fn refusal(name: &str, message: &str, code: u16) -> Vec<Out> {
    let mut out = error_frames(name, message).to_vec();
    out.push(Out::Close(code, name.to_lowercase()));
    out
}

/// Whether `given` is the token whose SHA-256 is `expected_sha256`. Hashes are compared in
/// constant time, so the time taken says nothing about how much of a guess matched.
pub fn token_matches(expected_sha256: &str, given: &str) -> bool {
    !given.is_empty() && tokens_match(expected_sha256, &crate::ids::sha256_hex(given.as_bytes()))
}

/// Constant-time comparison of two strings.
pub fn tokens_match(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    let mut difference = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for (index, byte) in a.iter().enumerate() {
        difference |= byte ^ b.get(index).copied().unwrap_or(0);
    }
    difference == 0 && !a.is_empty()
}

impl Session {
    pub fn new(id: SessionId, token: String, settings: SessionSettings, now: Instant) -> Self {
        Session {
            id,
            settings,
            state: State::AwaitingInit,
            sandbox: None,
            sandbox_id: String::new(),
            token_sha256: crate::ids::sha256_hex(token.as_bytes()),
            token,
            checkpointable: false,
            auto_checkpoint: false,
            network: false,
            auto_saving: false,
            auto_checkpoint_refused: false,
            killed: false,
            exec: None,
            attached: true,
            awaiting_reconnect: false,
            held: VecDeque::new(),
            held_bytes: 0,
            output_paused: false,
            idle_timeout: None,
            last_activity: now,
        }
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

    pub fn is_checkpointable(&self) -> bool {
        self.checkpointable
    }

    /// What is saved with a checkpoint and restored with it.
    pub fn saved_settings(&self) -> crate::store::SavedSettings {
        crate::store::SavedSettings {
            idle_timeout_secs: self.idle_timeout.map(|timeout| timeout.as_secs_f64()),
            auto_checkpoint: self.auto_checkpoint,
            network: self.network,
            running_exec: self.exec.as_ref().map(|exec| crate::store::SavedExec {
                id: exec.id.0,
                base64: exec.base64,
            }),
        }
    }

    /// A session re-created on `/attach` from a checkpoint; `runsc restore` has been started.
    pub fn restored(
        id: SessionId,
        token_sha256: String,
        saved: &crate::store::SavedSettings,
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
        // The manifest is shared storage another instance wrote, or a corrupted file: a value
        // the init would have refused means the server's default, never a panic.
        session.idle_timeout = saved
            .idle_timeout_secs
            .and_then(|seconds| options::duration(seconds, true, options::MAX_IDLE_TIMEOUT_SECS));
        if let Some(exec) = saved.running_exec {
            // Its output is held until the client asks for it with `reconnect`.
            session.exec = Some(RunningExec {
                id: ExecId(exec.id),
                base64: exec.base64,
                stdout: Utf8Stream::default(),
                stderr: Utf8Stream::default(),
                pending: None,
            });
            session.awaiting_reconnect = true;
        }
        session
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

    /// Send, or hold while no client reads (execution output only; see `emit_exec`).
    fn send(&mut self, out: &mut Vec<Out>, frame: String) {
        if self.attached {
            out.push(Out::Send(frame));
        }
    }

    fn emit_exec(&mut self, out: &mut Vec<Out>, frame: String, control: &mut dyn SandboxControl) {
        if self.attached && !self.awaiting_reconnect {
            out.push(Out::Send(frame));
            return;
        }
        self.held_bytes += frame.len();
        self.held.push_back(frame);
        if self.held_bytes > self.settings.held_output_bytes && !self.output_paused {
            if let Some(sandbox) = self.sandbox {
                self.output_paused = true;
                control.set_output_paused(sandbox, true);
            }
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
        let mut out = Vec::new();
        let fail = |out: &mut Vec<Out>, message: &str, code: u16| {
            out.extend(error_frames("SANDBOX_CREATION_ERROR", message));
            out.push(Out::Close(code, close_reason(message)));
        };
        let init = match options::parse_init(text) {
            Ok(init) => init,
            Err(message) => {
                self.state = State::Ended;
                fail(&mut out, &message, 4000);
                return out;
            }
        };
        self.checkpointable = init.checkpoint;
        self.auto_checkpoint = init.auto_checkpoint;
        self.network = init.network;
        self.idle_timeout = init.idle_timeout;
        // What the client asked for is well-formed; now whether this server can do it.
        let problem = if self.network && self.settings.egress_unavailable.is_some() {
            self.settings.egress_unavailable.clone()
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
                crate::ids::validate_snapshot_name(name)
                    .err()
                    .map(|error| error.to_string())
            }
        } else {
            None
        };
        if let Some(message) = problem {
            self.state = State::Ended;
            fail(&mut out, &message, 4000);
            return out;
        }
        out.push(Out::Send(status("SANDBOX_CREATING")));
        let options = CreateOptions {
            snapshot: init.snapshot,
            egress: self.network,
        };
        match control.acquire(self.id, &options) {
            Ok(sandbox) => {
                self.sandbox = Some(sandbox);
                self.sandbox_id = control.sandbox_id(sandbox);
                self.state = State::Creating;
            }
            Err(error) => {
                self.state = State::Ended;
                let code = if matches!(error, RuntimeError::AtCapacity(_)) {
                    1013
                } else {
                    4000
                };
                fail(&mut out, &error.to_string(), code);
            }
        }
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

    /// Called periodically: delete the sandbox once it has been idle too long.
    pub fn on_tick(&mut self, now: Instant, control: &mut dyn SandboxControl) -> Vec<Out> {
        if self.state != State::Running || self.exec.is_some() {
            // A running execution is activity.
            self.last_activity = now;
            return Vec::new();
        }
        if now.saturating_duration_since(self.last_activity) < self.idle_limit() {
            return Vec::new();
        }
        let mut out = Vec::new();
        if self.auto_checkpoint && self.settings.checkpoint_enabled && !self.auto_checkpoint_refused
        {
            self.auto_saving = true;
            self.begin_checkpoint(&mut out, false);
        } else {
            self.begin_kill(&mut out, control);
        }
        out
    }

    fn begin_checkpoint(&mut self, out: &mut Vec<Out>, with_running: bool) {
        self.send(out, status("SANDBOX_CHECKPOINTING"));
        self.state = State::Saving { snapshot: false };
        out.push(Out::Save(SaveRequest::Checkpoint { with_running }));
    }

    /// The server is shutting down: checkpoint what must survive.
    pub fn on_shutdown(&mut self) -> Vec<Out> {
        let mut out = Vec::new();
        if self.checkpointable && self.settings.checkpoint_enabled && self.state == State::Running {
            self.begin_checkpoint(&mut out, true);
        }
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
                self.send(&mut out, status("SANDBOX_DELETING"));
                self.state = State::Ending(Ending::Checkpointed);
            }
            Err(message) => {
                self.state = State::Ending(Ending::Silent);
                if self.attached {
                    out.extend(error_frames("SANDBOX_CHECKPOINT_ERROR", &message));
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
            Ok(()) => self.send(&mut out, status("SANDBOX_FILESYSTEM_SNAPSHOT_CREATED")),
            Err(message) if self.attached => {
                out.extend(error_frames("SANDBOX_FILESYSTEM_SNAPSHOT_ERROR", message))
            }
            Err(_) => {}
        }
        if alive {
            self.state = State::Running;
        } else {
            self.state = State::Ending(Ending::Silent);
            if let Some(sandbox) = self.sandbox {
                control.delete(sandbox);
            }
            if self.attached {
                out.extend(error_frames(
                    "SANDBOX_ERROR",
                    "the sandbox did not survive the snapshot",
                ));
                out.push(Out::Close(4000, "sandbox error".into()));
            }
        }
        out
    }

    fn begin_kill(&mut self, out: &mut Vec<Out>, control: &mut dyn SandboxControl) {
        self.send(out, status("SANDBOX_KILLING"));
        self.send(out, status("SANDBOX_DELETING"));
        self.state = State::Ending(Ending::Kill);
        self.killed = true;
        if let Some(sandbox) = self.sandbox {
            control.delete(sandbox);
        }
    }

    /// A client attached on `/attach` (token already checked, not in use).
    pub fn on_attach(&mut self, now: Instant) -> Vec<Out> {
        self.attached = true;
        self.last_activity = now;
        self.awaiting_reconnect = self.exec.is_some() || !self.held.is_empty();
        vec![Out::Send(status("SANDBOX_RUNNING"))]
    }

    pub fn on_detach(&mut self, now: Instant) {
        self.attached = false;
        self.awaiting_reconnect = false;
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
        if self.state != State::Running {
            // Messages before the sandbox is ready, or while it is being deleted, cannot act.
            let message = match self.state {
                State::Creating => "the sandbox is still being created",
                State::Restoring => "the sandbox is still being restored",
                State::Saving { snapshot: true } => {
                    "a filesystem snapshot is being taken; retry when it is done"
                }
                State::Saving { snapshot: false } => "the sandbox is being checkpointed",
                _ => "the sandbox is being deleted",
            };
            out.extend(error_frames("SANDBOX_EXECUTION_ERROR", message));
            return out;
        }
        let Ok(Value::Object(message)) = serde_json::from_str::<Value>(text) else {
            out.extend(error_frames(
                "SANDBOX_EXECUTION_UNSUPPORTED_LANGUAGE_ERROR",
                LANGUAGES_MESSAGE,
            ));
            return out;
        };
        let action = message.get("action").and_then(Value::as_str);
        let event = message.get("event").and_then(Value::as_str);
        match (action, event) {
            (Some("kill_process"), _) => self.kill_process(&mut out, control),
            (Some("kill_sandbox"), _) => self.begin_kill(&mut out, control),
            (Some("checkpoint"), _)
                if self.checkpointable
                    && self.settings.checkpoint_enabled
                    && self.exec.is_none() =>
            {
                self.begin_checkpoint(&mut out, false);
            }
            (Some("checkpoint"), _) => {
                if self.exec.is_some() {
                    out.push(Out::Send(status("SANDBOX_CHECKPOINTING")));
                    // The original clients match on this text.
                    out.extend(error_frames(
                        "SANDBOX_EXECUTION_IN_PROGRESS_ERROR",
                        "Cannot checkpoint while an execution is in progress.",
                    ));
                } else {
                    let text = if self.settings.checkpoint_enabled {
                        "checkpointing is not enabled for this sandbox: create it with enable_checkpoint"
                    } else {
                        "checkpointing is not enabled on this server (set CHECKPOINT_AND_RESTORE_PATH)"
                    };
                    out.extend(error_frames("SANDBOX_CHECKPOINT_ERROR", text));
                    out.push(Out::Close(4000, "checkpoint error".into()));
                    // The sandbox survives the closed connection, until its idle timeout.
                }
            }
            (Some("snapshot_filesystem"), _) => self.snapshot(&message, &mut out),
            (Some("reconnect"), _) => self.replay(&mut out, control),
            (None, Some("stdin")) => self.stdin(&message, &mut out, control),
            _ if message.contains_key("code") || message.contains_key("language") => {
                self.exec_request(&message, &mut out, control)
            }
            _ => out.extend(error_frames(
                "SANDBOX_EXECUTION_UNSUPPORTED_LANGUAGE_ERROR",
                LANGUAGES_MESSAGE,
            )),
        }
        out
    }

    fn snapshot(&mut self, message: &Map<String, Value>, out: &mut Vec<Out>) {
        out.push(Out::Send(status("SANDBOX_FILESYSTEM_SNAPSHOT_CREATING")));
        let name = match message.get("name") {
            None | Some(Value::Null) => "",
            Some(Value::String(name)) => name.as_str(),
            Some(other) => {
                let text = format!("name must be a string, got {}", options::quoted(other));
                out.extend(error_frames("SANDBOX_FILESYSTEM_SNAPSHOT_ERROR", &text));
                return;
            }
        };
        let problem = if !self.settings.snapshot_enabled {
            Some("filesystem snapshots are not enabled on this server (set FILESYSTEM_SNAPSHOT_PATH)".to_string())
        } else if self.exec.is_some() {
            Some("cannot take a filesystem snapshot while an execution is running".to_string())
        } else {
            crate::ids::validate_snapshot_name(name)
                .err()
                .map(|error| error.to_string())
        };
        match problem {
            Some(text) => out.extend(error_frames("SANDBOX_FILESYSTEM_SNAPSHOT_ERROR", &text)),
            None => {
                self.state = State::Saving { snapshot: true };
                out.push(Out::Save(SaveRequest::Snapshot(name.to_string())));
            }
        }
    }

    fn replay(&mut self, out: &mut Vec<Out>, control: &mut dyn SandboxControl) {
        if !self.awaiting_reconnect {
            return;
        }
        self.awaiting_reconnect = false;
        out.push(Out::Send(status("SANDBOX_EXECUTION_RUNNING")));
        out.extend(self.held.drain(..).map(Out::Send));
        self.held_bytes = 0;
        if self.output_paused {
            self.output_paused = false;
            if let Some(sandbox) = self.sandbox {
                control.set_output_paused(sandbox, false);
            }
        }
    }

    fn kill_process(&mut self, out: &mut Vec<Out>, control: &mut dyn SandboxControl) {
        let (Some(sandbox), Some(exec)) = (self.sandbox, self.exec.as_ref()) else {
            out.extend(error_frames(
                "SANDBOX_EXECUTION_FORCE_KILL_ERROR",
                "no execution is running",
            ));
            return;
        };
        match control.kill_exec(sandbox, exec.id) {
            Ok(()) => out.push(Out::Send(status("SANDBOX_EXECUTION_FORCE_KILLED"))),
            Err(error) => out.extend(error_frames(
                "SANDBOX_EXECUTION_FORCE_KILL_ERROR",
                &error.to_string(),
            )),
        }
    }

    fn stdin(
        &mut self,
        message: &Map<String, Value>,
        out: &mut Vec<Out>,
        control: &mut dyn SandboxControl,
    ) {
        let (Some(sandbox), Some(exec)) = (self.sandbox, self.exec.as_ref()) else {
            out.extend(error_frames(
                "SANDBOX_EXECUTION_ERROR",
                "no execution is running to receive stdin",
            ));
            return;
        };
        let exec = exec.id;
        let stdin_error = |out: &mut Vec<Out>, message: &str| {
            out.extend(error_frames("SANDBOX_STDIN_ERROR", message));
        };
        let (eof, encoding) = match (
            options::flag(message, "eof"),
            options::choice(message, "encoding", &["text", "base64"]),
        ) {
            (Ok(eof), Ok(encoding)) => (eof, encoding),
            (Err(problem), _) | (_, Err(problem)) => return stdin_error(out, &problem),
        };
        let data = match message.get("data") {
            Some(Value::String(data)) if encoding == "base64" => match base64_decode(data) {
                Some(bytes) => Some(bytes),
                None => return stdin_error(out, "stdin data is not valid base64"),
            },
            Some(Value::String(data)) => Some(data.as_bytes().to_vec()),
            None if eof => None,
            None => return stdin_error(out, "stdin message without \"data\""),
            Some(_) => return stdin_error(out, "stdin \"data\" must be a string"),
        };
        if let Some(bytes) = data {
            if let Err(error) = control.write_stdin(sandbox, exec, &bytes) {
                out.extend(error_frames("SANDBOX_STDIN_ERROR", &error.to_string()));
                return;
            }
        }
        if eof {
            if let Err(error) = control.close_stdin(sandbox, exec) {
                out.extend(error_frames("SANDBOX_STDIN_ERROR", &error.to_string()));
            }
        }
    }

    fn exec_request(
        &mut self,
        message: &Map<String, Value>,
        out: &mut Vec<Out>,
        control: &mut dyn SandboxControl,
    ) {
        let language = message
            .get("language")
            .and_then(Value::as_str)
            .and_then(Language::parse);
        let code = message.get("code").and_then(Value::as_str);
        let (Some(language), Some(code)) = (language, code) else {
            out.extend(error_frames(
                "SANDBOX_EXECUTION_UNSUPPORTED_LANGUAGE_ERROR",
                LANGUAGES_MESSAGE,
            ));
            return;
        };
        if self.exec.is_some() {
            out.extend(error_frames(
                "SANDBOX_EXECUTION_ERROR",
                "An execution is already in progress.",
            ));
            return;
        }
        let checked = self.exec_spec(language, code, message).and_then(|spec| {
            let encoding = options::choice(message, "output_encoding", &["text", "base64"])?;
            Ok((spec, encoding == "base64"))
        });
        match checked {
            Ok((spec, base64)) => {
                let Some(sandbox) = self.sandbox else { return };
                match control.start_exec(sandbox, spec) {
                    Ok(id) => {
                        self.exec = Some(RunningExec {
                            id,
                            base64,
                            stdout: Utf8Stream::default(),
                            stderr: Utf8Stream::default(),
                            pending: None,
                        });
                    }
                    Err(error) => {
                        out.extend(error_frames("SANDBOX_EXECUTION_ERROR", &error.to_string()))
                    }
                }
            }
            Err(problem) => out.extend(error_frames("SANDBOX_EXECUTION_ERROR", &problem)),
        }
    }

    fn exec_spec(
        &self,
        language: Language,
        code: &str,
        message: &Map<String, Value>,
    ) -> Result<ExecSpec, String> {
        if code.len() > self.settings.max_code_bytes {
            return Err(format!(
                "the code is {} bytes; the limit is {}",
                code.len(),
                self.settings.max_code_bytes
            ));
        }
        let mut env = Vec::new();
        match message.get("env") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (key, value) in map {
                    let Some(value) = value.as_str() else {
                        return Err(format!("env value of {key:?} must be a string"));
                    };
                    if key.is_empty()
                        || key.contains('=')
                        || key.contains('\0')
                        || value.contains('\0')
                    {
                        return Err(format!("invalid environment variable name {key:?}"));
                    }
                    env.push((key.clone(), value.to_string()));
                }
            }
            Some(_) => return Err("env must be an object of strings".into()),
        }
        let cwd = match message.get("cwd") {
            None | Some(Value::Null) => "/root".to_string(),
            Some(Value::String(cwd)) if cwd.starts_with('/') && !cwd.contains('\0') => cwd.clone(),
            Some(other) => return Err(format!("cwd must be an absolute path, got {other}")),
        };
        let max_timeout = self.settings.max_exec_timeout;
        let timeout = match message.get("timeout") {
            None | Some(Value::Null) => self.settings.exec_timeout,
            Some(value) => value
                .as_f64()
                .and_then(|seconds| options::duration(seconds, false, max_timeout.as_secs_f64()))
                .ok_or_else(|| {
                    format!(
                        "timeout must be a number of seconds above 0 and at most {}, got {}",
                        max_timeout.as_secs(),
                        options::quoted(value)
                    )
                })?,
        };
        Ok(ExecSpec {
            language,
            code: code.to_string(),
            env,
            cwd,
            timeout,
        })
    }

    /// A runtime notice for this session's sandbox.
    pub fn on_runtime(
        &mut self,
        event: RuntimeEvent,
        control: &mut dyn SandboxControl,
    ) -> Vec<Out> {
        let mut out = Vec::new();
        match event {
            RuntimeEvent::Ready if self.state == State::Restoring => {
                self.state = State::Running;
                // The restore's own time is not idleness.
                self.last_activity = Instant::now();
                self.send(&mut out, status("SANDBOX_RUNNING"));
            }
            RuntimeEvent::Ready if self.state == State::Creating => {
                self.state = State::Running;
                let frame = json!({"event": "sandbox_id", "sandbox_id": self.sandbox_id, "sandbox_token": self.token});
                self.send(&mut out, frame.to_string());
                self.send(&mut out, status("SANDBOX_RUNNING"));
            }
            RuntimeEvent::StartFailed(message) => {
                let (name, text) = match self.state {
                    State::Restoring => (
                        "SANDBOX_RESTORE_ERROR",
                        format!("cannot restore the sandbox: {message}"),
                    ),
                    State::Saving { .. } => (
                        "SANDBOX_ERROR",
                        format!("the sandbox did not come back after saving: {message}"),
                    ),
                    _ => (
                        "SANDBOX_CREATION_ERROR",
                        format!("cannot create the sandbox: {message}"),
                    ),
                };
                self.state = State::Ending(Ending::Silent);
                if self.attached {
                    out.extend(error_frames(name, &text));
                    out.push(Out::Close(4000, "sandbox error".into()));
                }
            }
            RuntimeEvent::Lost(message) => {
                if let Some(sandbox) = self.sandbox {
                    control.delete(sandbox);
                }
                self.state = State::Ending(Ending::Silent);
                if self.attached {
                    out.extend(error_frames(
                        "SANDBOX_ERROR",
                        &format!("the sandbox stopped: {message}"),
                    ));
                    out.push(Out::Close(4000, "sandbox error".into()));
                }
            }
            RuntimeEvent::Deleted => {
                let last = match self.state {
                    State::Ending(Ending::Kill) => Some("SANDBOX_KILLED"),
                    State::Ending(Ending::Checkpointed) => Some("SANDBOX_CHECKPOINTED"),
                    _ => None,
                };
                if let Some(last) = last {
                    self.send(&mut out, status("SANDBOX_DELETED"));
                    self.send(&mut out, status(last));
                    if self.attached {
                        out.push(Out::Close(1000, "done".into()));
                    }
                }
                self.state = State::Ended;
            }
            RuntimeEvent::CheckpointRefused(message) => {
                let name = match self.state {
                    State::Saving { snapshot: true } => "SANDBOX_FILESYSTEM_SNAPSHOT_ERROR",
                    State::Saving { snapshot: false } => "SANDBOX_CHECKPOINT_ERROR",
                    _ => return out,
                };
                // Nothing was touched: the session goes on.
                self.state = State::Running;
                if self.attached {
                    out.extend(error_frames(name, &message));
                }
                if std::mem::take(&mut self.auto_saving) {
                    // The idle timeout could not checkpoint: it deletes the sandbox instead,
                    // as it would without auto-checkpoint, rather than retrying forever.
                    self.auto_checkpoint_refused = true;
                    self.begin_kill(&mut out, control);
                }
            }
            RuntimeEvent::ExecStarted(id) if self.exec_is(id) => {
                self.emit_exec(&mut out, status("SANDBOX_EXECUTION_RUNNING"), control);
            }
            RuntimeEvent::ExecSpawnFailed(id, message) if self.exec_is(id) => {
                self.exec = None;
                out.extend(error_frames(
                    "SANDBOX_EXECUTION_ERROR",
                    &format!("cannot start the process: {message}"),
                ));
            }
            RuntimeEvent::Output(id, stream, data) if self.exec_is(id) => {
                let Some(exec) = self.exec.as_mut() else {
                    return out;
                };
                match exec.pending.as_mut() {
                    Some((pending_stream, bytes)) if *pending_stream == stream => {
                        bytes.extend_from_slice(&data)
                    }
                    _ => {
                        self.flush_pending(&mut out, control);
                        if let Some(exec) = self.exec.as_mut() {
                            exec.pending = Some((stream, data));
                        }
                    }
                }
            }
            RuntimeEvent::ExecFinished(id, outcome) if self.exec_is(id) => {
                self.flush_pending(&mut out, control);
                self.finish_text_streams(&mut out, control);
                self.exec = None;
                self.emit_exec(&mut out, done_frame(&outcome), control);
            }
            _ => {}
        }
        out
    }

    fn exec_is(&self, id: ExecId) -> bool {
        self.exec.as_ref().is_some_and(|exec| exec.id == id)
    }

    /// Frame the merged output; called after each batch of notices so frames are neither one
    /// per byte nor delayed.
    pub fn flush_output(&mut self, control: &mut dyn SandboxControl) -> Vec<Out> {
        let mut out = Vec::new();
        self.flush_pending(&mut out, control);
        out
    }

    fn flush_pending(&mut self, out: &mut Vec<Out>, control: &mut dyn SandboxControl) {
        let Some(exec) = self.exec.as_mut() else {
            return;
        };
        let Some((stream, bytes)) = exec.pending.take() else {
            return;
        };
        let name = match stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        let frame = if exec.base64 {
            json!({"event": name, "data": base64_encode(&bytes), "encoding": "base64"})
        } else {
            let decoder = match stream {
                Stream::Stdout => &mut exec.stdout,
                Stream::Stderr => &mut exec.stderr,
            };
            let text = decoder.push(&bytes);
            if text.is_empty() {
                return;
            }
            json!({"event": name, "data": text})
        };
        self.emit_exec(out, frame.to_string(), control);
    }

    fn finish_text_streams(&mut self, out: &mut Vec<Out>, control: &mut dyn SandboxControl) {
        let Some(exec) = self.exec.as_mut() else {
            return;
        };
        let leftovers = [
            ("stdout", exec.stdout.finish()),
            ("stderr", exec.stderr.finish()),
        ];
        for (name, text) in leftovers {
            if !text.is_empty() {
                self.emit_exec(
                    out,
                    json!({"event": name, "data": text}).to_string(),
                    control,
                );
            }
        }
    }
}

fn done_frame(outcome: &ExecOutcome) -> String {
    json!({
        "event": "status_update",
        "status": "SANDBOX_EXECUTION_DONE",
        "exit_code": outcome.exit_code(),
        "signal": outcome.signal(),
        "reason": outcome.reason.as_str(),
        "timed_out": outcome.reason == Reason::Timeout,
        "duration_ms": outcome.duration_ms,
    })
    .to_string()
}

#[cfg(test)]
mod tests;
