//! What the server sends to WebSocket clients: every `status` string of docs/protocol.md in one
//! enum, and every event as a type, serialized here and nowhere else.
//!
//! A [`Frame`] is an event with whom it answers: the request `id` it echoes and the
//! `process_id` it is about (protocol 2, docs/protocol.md). Without them the JSON written is
//! byte for byte what the server always sent: keys in alphabetical order (as
//! `serde_json::json!` ordered them), `null` for a missing signal. The tests at the end pin
//! each shape.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::files::FileEvent;
use super::ids::{ProcessId, RequestId};
use crate::agent_protocol::{Language, Stream};
use crate::runtime::exec::{ExecOutcome, Reason};

/// What `SANDBOX_RUNNING` announces: the protocol additions this server implements.
pub const PROTOCOL_VERSION: u8 = 2;

/// Generates [`Status`] with its wire strings and the list of all of them.
macro_rules! statuses {
    ($($variant:ident = $text:literal,)*) => {
        /// A `status_update`'s `status`, exactly as docs/protocol.md lists them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Status {
            $($variant,)*
        }

        impl Status {
            /// Every status, in the order of docs/protocol.md.
            pub const ALL: &'static [Status] = &[$(Status::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Status::$variant => $text,)*
                }
            }
        }
    };
}

statuses! {
    Creating = "SANDBOX_CREATING",
    Running = "SANDBOX_RUNNING",
    NotFound = "SANDBOX_NOT_FOUND",
    InUse = "SANDBOX_IN_USE",
    CreationError = "SANDBOX_CREATION_ERROR",
    Error = "SANDBOX_ERROR",
    ExecutionRunning = "SANDBOX_EXECUTION_RUNNING",
    ExecutionDone = "SANDBOX_EXECUTION_DONE",
    ExecutionError = "SANDBOX_EXECUTION_ERROR",
    ExecutionUnsupportedLanguageError = "SANDBOX_EXECUTION_UNSUPPORTED_LANGUAGE_ERROR",
    ExecutionInProgressError = "SANDBOX_EXECUTION_IN_PROGRESS_ERROR",
    ExecutionForceKilled = "SANDBOX_EXECUTION_FORCE_KILLED",
    ExecutionForceKillError = "SANDBOX_EXECUTION_FORCE_KILL_ERROR",
    StdinError = "SANDBOX_STDIN_ERROR",
    Checkpointing = "SANDBOX_CHECKPOINTING",
    Checkpointed = "SANDBOX_CHECKPOINTED",
    CheckpointError = "SANDBOX_CHECKPOINT_ERROR",
    Restoring = "SANDBOX_RESTORING",
    RestoreError = "SANDBOX_RESTORE_ERROR",
    FilesystemSnapshotCreating = "SANDBOX_FILESYSTEM_SNAPSHOT_CREATING",
    FilesystemSnapshotCreated = "SANDBOX_FILESYSTEM_SNAPSHOT_CREATED",
    FilesystemSnapshotError = "SANDBOX_FILESYSTEM_SNAPSHOT_ERROR",
    Deleting = "SANDBOX_DELETING",
    Deleted = "SANDBOX_DELETED",
    LockAcquiring = "SANDBOX_LOCK_ACQUIRING",
    LockAcquired = "SANDBOX_LOCK_ACQUIRED",
    LockReleaseRequested = "SANDBOX_LOCK_RELEASE_REQUESTED",
    LockRenewalError = "SANDBOX_LOCK_RENEWAL_ERROR",
    LockReleasing = "SANDBOX_LOCK_RELEASING",
    LockReleased = "SANDBOX_LOCK_RELEASED",
    Killing = "SANDBOX_KILLING",
    Killed = "SANDBOX_KILLED",
    KillError = "SANDBOX_KILL_ERROR",
    PermissionDenialError = "SANDBOX_PERMISSION_DENIAL_ERROR",
    RequestError = "SANDBOX_REQUEST_ERROR",
    FileError = "SANDBOX_FILE_ERROR",
    CodeContextError = "SANDBOX_CODE_CONTEXT_ERROR",
}

impl Status {
    /// Error statuses carry `message` and are followed by an `error` event.
    pub fn is_error(self) -> bool {
        self.as_str().ends_with("_ERROR") || matches!(self, Status::NotFound | Status::InUse)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an output event's `data` is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputEncoding {
    /// UTF-8 text, decoded incrementally (invalid bytes become U+FFFD).
    #[default]
    Text,
    /// The base64 of the exact bytes; the event says `"encoding": "base64"`.
    Base64,
}

/// The end of an execution as clients see it on `SANDBOX_EXECUTION_DONE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecDone {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: Reason,
    pub duration_ms: u64,
}

impl From<&ExecOutcome> for ExecDone {
    fn from(outcome: &ExecOutcome) -> Self {
        ExecDone {
            exit_code: outcome.exit_code(),
            signal: outcome.signal(),
            reason: outcome.reason,
            duration_ms: outcome.duration_ms,
        }
    }
}

/// One event to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// `{"event":"status_update","status":S}` (`SANDBOX_RUNNING` also says `"protocol": 2`).
    Status(Status),
    /// An error status with its `message` (protocol addition); an [`ServerEvent::Error`] with
    /// the same text follows it.
    StatusWithMessage(Status, String),
    /// `{"event":"error","message":M}`.
    Error(String),
    /// Once on `/create`, before `SANDBOX_RUNNING`.
    SandboxId {
        sandbox_id: String,
        sandbox_token: String,
    },
    /// `SANDBOX_EXECUTION_RUNNING`; a process with stdin flow control gives its window.
    ExecRunning { stdin_window: Option<u64> },
    /// A chunk of an execution's output.
    Output {
        stream: Stream,
        data: String,
        encoding: OutputEncoding,
    },
    /// `SANDBOX_EXECUTION_DONE` with how the execution ended.
    Done(ExecDone),
    /// `{"event":"stdin_ack","written":N}`: N bytes of the process's stdin consumed so far.
    StdinAck { written: u64 },
    /// `{"event":"reply", ...}`: the answer of a request/response action.
    Reply(Reply),
    /// An event of the files API (`file_data`, `file_ack`, its reply and errors).
    File(FileEvent),
    /// `SANDBOX_EXECUTION_RUNNING` of a code cell: `"kind":"cell"` and its context.
    CellRunning { context_id: String },
    /// `{"event":"result","is_main_result":B,"data":{MIME type: value}}`: a code cell's
    /// result (its trailing expression's value, a `display()`, an open figure).
    CellResult {
        is_main_result: bool,
        data: Map<String, Value>,
    },
    /// `{"event":"execution_error","name","value","traceback":[lines]}`: the cell's error.
    CellError {
        name: String,
        value: String,
        traceback: Vec<String>,
    },
}

/// The payload of a `reply` (its keys sit beside `event` and `id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `list_processes`: `"processes": [...]`.
    Processes(Vec<ProcessEntry>),
    /// `attach_process` (the frame's `process_id` says which): where its stdin stands, for a
    /// process with flow control.
    ProcessAttached {
        stdin_window: Option<u64>,
        stdin_written: Option<u64>,
    },
    /// `set_idle_timeout`: the idle timeout now in effect (written in seconds).
    IdleTimeout(Duration),
    /// Keys given as they are (the server's own actions: `expose`, `unexpose`, `list_ports`).
    Fields(Map<String, Value>),
    /// `resize` (the frame's `process_id` says which terminal): its size now.
    Resized { cols: u16, rows: u16 },
    /// `create_code_context`, `restart_code_context`: `"context": {...}`.
    CodeContext(CodeContextView),
    /// `list_code_contexts`: `"contexts": [...]`.
    CodeContexts(Vec<CodeContextView>),
    /// An action done, with nothing to say (`delete_code_context`).
    Done,
}

/// One code context as clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeContextView {
    pub context_id: String,
    pub cwd: String,
    /// `idle`, `busy` or `dead`.
    pub state: &'static str,
    /// Why it died, if it did.
    pub died: Option<String>,
}

impl CodeContextView {
    fn to_value(&self, with_state: bool) -> Value {
        let mut map = Map::new();
        map.insert("context_id".into(), json!(self.context_id));
        map.insert("cwd".into(), json!(self.cwd));
        map.insert("language".into(), json!("python"));
        if with_state {
            map.insert("state".into(), json!(self.state));
            if let Some(died) = &self.died {
                map.insert("died".into(), json!(died));
            }
        }
        Value::Object(map)
    }
}

/// A duration in seconds as JSON: whole seconds as an integer.
fn seconds_value(duration: Duration) -> Value {
    if duration.subsec_nanos() == 0 {
        json!(duration.as_secs())
    } else {
        json!(duration.as_secs_f64())
    }
}

/// What a process is, as `list_processes` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProcessKind {
    /// Code on pipes (stdout and stderr apart).
    #[default]
    Exec,
    /// A program on a pseudo-terminal (one output stream, stdin as keystrokes, `resize`).
    Terminal,
}

impl ProcessKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessKind::Exec => "exec",
            ProcessKind::Terminal => "terminal",
        }
    }
}

/// One process in a `list_processes` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessEntry {
    pub process_id: ProcessId,
    pub kind: ProcessKind,
    /// The request that started it (`None`: a message without id, or a process adopted from
    /// a checkpoint whose manifest did not say).
    pub request: Option<RequestId>,
    pub language: Option<Language>,
    pub running: bool,
    pub started_unix_ms: u64,
    /// A code cell's context (its kind is then `cell`).
    pub context: Option<String>,
}

impl ProcessEntry {
    fn to_value(&self) -> Value {
        let mut value = json!({
            "process_id": self.process_id,
            "id": self.request,
            "kind": if self.context.is_some() { "cell" } else { self.kind.as_str() },
            "language": self.language.map(Language::as_str),
            "running": self.running,
            "started_unix_ms": self.started_unix_ms,
        });
        if let (Some(context), Value::Object(map)) = (&self.context, &mut value) {
            map.insert("context_id".into(), json!(context));
        }
        value
    }
}

impl ServerEvent {
    /// The `status` of a `status_update`, if this is one.
    pub fn status(&self) -> Option<Status> {
        match self {
            ServerEvent::Status(status) | ServerEvent::StatusWithMessage(status, _) => {
                Some(*status)
            }
            ServerEvent::ExecRunning { .. } | ServerEvent::CellRunning { .. } => {
                Some(Status::ExecutionRunning)
            }
            ServerEvent::Done(_) => Some(Status::ExecutionDone),
            _ => None,
        }
    }

    /// The human-readable message of an error status or `error` event.
    pub fn message(&self) -> Option<&str> {
        match self {
            ServerEvent::StatusWithMessage(_, message) | ServerEvent::Error(message) => {
                Some(message)
            }
            _ => None,
        }
    }

    /// The frame's text without request or process id.
    pub fn to_json(&self) -> String {
        Frame::from(self.clone()).to_json()
    }
}

/// One frame to a client: an event, the request id it answers and the process it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub event: ServerEvent,
    pub id: Option<RequestId>,
    pub process: Option<ProcessId>,
    /// The event's number among its process's (see `resend`); `None` for processes started
    /// without a request id and for events that are not numbered.
    pub seq: Option<u64>,
}

impl From<ServerEvent> for Frame {
    fn from(event: ServerEvent) -> Self {
        Frame {
            event,
            id: None,
            process: None,
            seq: None,
        }
    }
}

impl Frame {
    pub fn new(event: ServerEvent, id: Option<RequestId>, process: Option<ProcessId>) -> Self {
        Frame {
            event,
            id,
            process,
            seq: None,
        }
    }

    /// The same frame with its number.
    pub fn numbered(self, seq: Option<u64>) -> Self {
        Frame { seq, ..self }
    }

    /// The event answering the request `id` (if it had one).
    pub fn answering(event: ServerEvent, id: Option<&RequestId>) -> Self {
        Frame::new(event, id.cloned(), None)
    }

    pub fn status(&self) -> Option<Status> {
        self.event.status()
    }

    pub fn message(&self) -> Option<&str> {
        self.event.message()
    }

    /// The frame's text (a JSON object).
    pub fn to_json(&self) -> String {
        let id = self.id.as_ref();
        let process_id = self.process;
        let seq = self.seq;
        let status_frame = |status: Status| StatusFrame {
            event: "status_update",
            id,
            message: None,
            process_id,
            protocol: (status == Status::Running).then_some(PROTOCOL_VERSION),
            seq,
            status: status.as_str(),
            stdin_window: None,
        };
        let written = match &self.event {
            ServerEvent::Status(status) => serde_json::to_string(&status_frame(*status)),
            ServerEvent::StatusWithMessage(status, message) => {
                serde_json::to_string(&StatusFrame {
                    message: Some(message),
                    ..status_frame(*status)
                })
            }
            ServerEvent::ExecRunning { stdin_window } => serde_json::to_string(&StatusFrame {
                stdin_window: *stdin_window,
                ..status_frame(Status::ExecutionRunning)
            }),
            ServerEvent::Error(message) => serde_json::to_string(&ErrorFrame {
                event: "error",
                id,
                message,
            }),
            ServerEvent::SandboxId {
                sandbox_id,
                sandbox_token,
            } => serde_json::to_string(&SandboxIdFrame {
                event: "sandbox_id",
                sandbox_id,
                sandbox_token,
            }),
            ServerEvent::Output {
                stream,
                data,
                encoding,
            } => serde_json::to_string(&OutputFrame {
                data,
                encoding: (*encoding == OutputEncoding::Base64).then_some("base64"),
                event: match stream {
                    Stream::Stdout => "stdout",
                    Stream::Stderr => "stderr",
                },
                id,
                process_id,
                seq,
            }),
            ServerEvent::Done(done) => serde_json::to_string(&DoneFrame {
                duration_ms: done.duration_ms,
                event: "status_update",
                exit_code: done.exit_code,
                id,
                process_id,
                reason: done.reason.as_str(),
                seq,
                signal: done.signal,
                status: Status::ExecutionDone.as_str(),
                timed_out: done.reason == Reason::Timeout,
            }),
            ServerEvent::StdinAck { written } => serde_json::to_string(&StdinAckFrame {
                event: "stdin_ack",
                id,
                process_id,
                seq,
                written: *written,
            }),
            ServerEvent::Reply(reply) => serde_json::to_string(&self.reply_value(reply)),
            ServerEvent::File(event) => serde_json::to_string(&event.to_value(id)),
            ServerEvent::CellRunning { context_id } => serde_json::to_string(&CellRunningFrame {
                context_id,
                event: "status_update",
                id,
                kind: "cell",
                process_id,
                seq,
                status: Status::ExecutionRunning.as_str(),
            }),
            ServerEvent::CellResult {
                is_main_result,
                data,
            } => serde_json::to_string(&CellResultFrame {
                data,
                event: "result",
                id,
                is_main_result: *is_main_result,
                process_id,
                seq,
            }),
            ServerEvent::CellError {
                name,
                value,
                traceback,
            } => serde_json::to_string(&CellErrorFrame {
                event: "execution_error",
                id,
                name,
                process_id,
                seq,
                traceback,
                value,
            }),
        };
        // Serializing strings and numbers into a String cannot fail; the fallback keeps a
        // panic out of the server regardless.
        written.unwrap_or_else(|_| r#"{"event":"error","message":"internal error"}"#.to_string())
    }

    /// A reply is rare: built as a JSON map (whose keys serde_json keeps sorted).
    fn reply_value(&self, reply: &Reply) -> Value {
        let mut map = Map::new();
        map.insert("event".into(), json!("reply"));
        if let Some(id) = &self.id {
            map.insert("id".into(), json!(id));
        }
        if let Some(process) = self.process {
            map.insert("process_id".into(), json!(process));
        }
        match reply {
            Reply::Processes(processes) => {
                let list = processes.iter().map(ProcessEntry::to_value).collect();
                map.insert("processes".into(), Value::Array(list));
            }
            Reply::ProcessAttached {
                stdin_window,
                stdin_written,
            } => {
                if let Some(window) = stdin_window {
                    map.insert("stdin_window".into(), json!(window));
                }
                if let Some(written) = stdin_written {
                    map.insert("stdin_written".into(), json!(written));
                }
            }
            Reply::IdleTimeout(seconds) => {
                map.insert("idle_timeout".into(), seconds_value(*seconds));
            }
            Reply::Fields(fields) => {
                for (key, value) in fields {
                    // `event` and `id` are the frame's own.
                    if key != "event" && key != "id" {
                        map.insert(key.clone(), value.clone());
                    }
                }
            }
            Reply::Resized { cols, rows } => {
                map.insert("cols".into(), json!(cols));
                map.insert("rows".into(), json!(rows));
            }
            Reply::CodeContext(context) => {
                map.insert("context".into(), context.to_value(false));
            }
            Reply::CodeContexts(contexts) => {
                let list = contexts.iter().map(|view| view.to_value(true)).collect();
                map.insert("contexts".into(), Value::Array(list));
            }
            Reply::Done => {}
        }
        Value::Object(map)
    }
}

// The wire shapes. Fields are declared in alphabetical order: that is the order in which the
// server has always written them.

#[derive(Serialize)]
struct StatusFrame<'a> {
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RequestId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    process_id: Option<ProcessId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    stdin_window: Option<u64>,
}

#[derive(Serialize)]
struct ErrorFrame<'a> {
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RequestId>,
    message: &'a str,
}

#[derive(Serialize)]
struct SandboxIdFrame<'a> {
    event: &'static str,
    sandbox_id: &'a str,
    sandbox_token: &'a str,
}

#[derive(Serialize)]
struct OutputFrame<'a> {
    data: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RequestId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    process_id: Option<ProcessId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
}

#[derive(Serialize)]
struct DoneFrame<'a> {
    duration_ms: u64,
    event: &'static str,
    exit_code: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RequestId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    process_id: Option<ProcessId>,
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    signal: Option<i32>,
    status: &'static str,
    timed_out: bool,
}

#[derive(Serialize)]
struct CellRunningFrame<'a> {
    context_id: &'a str,
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RequestId>,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    process_id: Option<ProcessId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    status: &'static str,
}

#[derive(Serialize)]
struct CellResultFrame<'a> {
    data: &'a Map<String, Value>,
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RequestId>,
    is_main_result: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    process_id: Option<ProcessId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
}

#[derive(Serialize)]
struct CellErrorFrame<'a> {
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RequestId>,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    process_id: Option<ProcessId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    traceback: &'a [String],
    value: &'a str,
}

#[derive(Serialize)]
struct StdinAckFrame<'a> {
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RequestId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    process_id: Option<ProcessId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    written: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The frames as the server wrote them before they had types (with `json!`), byte for byte.
    #[test]
    fn frames_are_byte_for_byte_what_clients_always_got() {
        let cases = [
            (
                ServerEvent::Status(Status::Creating),
                json!({"event": "status_update", "status": "SANDBOX_CREATING"}),
            ),
            (
                ServerEvent::ExecRunning { stdin_window: None },
                json!({"event": "status_update", "status": "SANDBOX_EXECUTION_RUNNING"}),
            ),
            (
                ServerEvent::StatusWithMessage(Status::StdinError, "no \"data\"\n".into()),
                json!({"event": "status_update", "status": "SANDBOX_STDIN_ERROR", "message": "no \"data\"\n"}),
            ),
            (
                ServerEvent::Error("é\u{1}".into()),
                json!({"event": "error", "message": "é\u{1}"}),
            ),
            (
                ServerEvent::SandboxId {
                    sandbox_id: "abc".into(),
                    sandbox_token: "t".into(),
                },
                json!({"event": "sandbox_id", "sandbox_id": "abc", "sandbox_token": "t"}),
            ),
            (
                ServerEvent::Output {
                    stream: Stream::Stdout,
                    data: "hi\n".into(),
                    encoding: OutputEncoding::Text,
                },
                json!({"event": "stdout", "data": "hi\n"}),
            ),
            (
                ServerEvent::Output {
                    stream: Stream::Stderr,
                    data: "AP8=".into(),
                    encoding: OutputEncoding::Base64,
                },
                json!({"event": "stderr", "data": "AP8=", "encoding": "base64"}),
            ),
            (
                ServerEvent::Done(ExecDone {
                    exit_code: 137,
                    signal: Some(9),
                    reason: Reason::Timeout,
                    duration_ms: 1003,
                }),
                json!({"event": "status_update", "status": "SANDBOX_EXECUTION_DONE",
                       "exit_code": 137, "signal": 9, "reason": "timeout", "timed_out": true,
                       "duration_ms": 1003}),
            ),
            (
                ServerEvent::Done(ExecDone {
                    exit_code: 0,
                    signal: None,
                    reason: Reason::Exited,
                    duration_ms: 5,
                }),
                json!({"event": "status_update", "status": "SANDBOX_EXECUTION_DONE",
                       "exit_code": 0, "signal": null, "reason": "exited", "timed_out": false,
                       "duration_ms": 5}),
            ),
        ];
        for (event, before) in cases {
            assert_eq!(event.to_json(), before.to_string(), "{event:?}");
        }
    }

    #[test]
    fn every_documented_status_once_and_errors_known_as_such() {
        let documented = include_str!("../../docs/protocol.md");
        for status in Status::ALL {
            assert!(
                documented.contains(status.as_str()),
                "{status} undocumented"
            );
        }
        let mut names: Vec<&str> = Status::ALL.iter().map(|status| status.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 37);
        assert!(Status::NotFound.is_error() && Status::InUse.is_error());
        assert!(Status::StdinError.is_error() && Status::LockRenewalError.is_error());
        assert!(!Status::ExecutionDone.is_error() && !Status::Killed.is_error());
        assert!(Status::RequestError.is_error());
    }

    /// Protocol 2: the request id and the process id ride along, in the key order of the
    /// other keys; `SANDBOX_RUNNING` announces the protocol.
    #[test]
    fn frames_carry_the_request_and_the_process_they_answer() {
        let id = Some(RequestId::Text("7".into()));
        let process = Some(ProcessId(3));
        let cases = [
            (
                Frame::from(ServerEvent::Status(Status::Running)),
                r#"{"event":"status_update","protocol":2,"status":"SANDBOX_RUNNING"}"#,
            ),
            (
                Frame::new(
                    ServerEvent::ExecRunning {
                        stdin_window: Some(4194304),
                    },
                    id.clone(),
                    process,
                ),
                r#"{"event":"status_update","id":"7","process_id":3,"status":"SANDBOX_EXECUTION_RUNNING","stdin_window":4194304}"#,
            ),
            (
                Frame::new(
                    ServerEvent::Output {
                        stream: Stream::Stdout,
                        data: "hi".into(),
                        encoding: OutputEncoding::Base64,
                    },
                    Some(RequestId::Number(7)),
                    process,
                ),
                r#"{"data":"hi","encoding":"base64","event":"stdout","id":7,"process_id":3}"#,
            ),
            (
                Frame::new(
                    ServerEvent::StatusWithMessage(Status::RequestError, "bad".into()),
                    id.clone(),
                    None,
                ),
                r#"{"event":"status_update","id":"7","message":"bad","status":"SANDBOX_REQUEST_ERROR"}"#,
            ),
            (
                Frame::new(ServerEvent::Error("bad".into()), id.clone(), None),
                r#"{"event":"error","id":"7","message":"bad"}"#,
            ),
            (
                Frame::new(ServerEvent::StdinAck { written: 6 }, id.clone(), process),
                r#"{"event":"stdin_ack","id":"7","process_id":3,"written":6}"#,
            ),
            (
                Frame::new(
                    ServerEvent::Done(ExecDone {
                        exit_code: 0,
                        signal: None,
                        reason: Reason::Exited,
                        duration_ms: 5,
                    }),
                    id.clone(),
                    process,
                ),
                r#"{"duration_ms":5,"event":"status_update","exit_code":0,"id":"7","process_id":3,"reason":"exited","signal":null,"status":"SANDBOX_EXECUTION_DONE","timed_out":false}"#,
            ),
            (
                Frame::new(
                    ServerEvent::Reply(Reply::Processes(vec![ProcessEntry {
                        process_id: ProcessId(3),
                        kind: ProcessKind::Terminal,
                        request: None,
                        language: Some(Language::Python),
                        running: false,
                        started_unix_ms: 12,
                        context: None,
                    }])),
                    id.clone(),
                    None,
                ),
                r#"{"event":"reply","id":"7","processes":[{"id":null,"kind":"terminal","language":"python","process_id":3,"running":false,"started_unix_ms":12}]}"#,
            ),
            (
                Frame::new(
                    ServerEvent::Reply(Reply::Resized { cols: 80, rows: 24 }),
                    id.clone(),
                    process,
                ),
                r#"{"cols":80,"event":"reply","id":"7","process_id":3,"rows":24}"#,
            ),
            (
                Frame::new(
                    ServerEvent::Reply(Reply::ProcessAttached {
                        stdin_window: Some(8),
                        stdin_written: Some(2),
                    }),
                    id.clone(),
                    process,
                ),
                r#"{"event":"reply","id":"7","process_id":3,"stdin_window":8,"stdin_written":2}"#,
            ),
            (
                Frame::new(
                    ServerEvent::Reply(Reply::IdleTimeout(Duration::from_secs(600))),
                    id.clone(),
                    None,
                ),
                r#"{"event":"reply","id":"7","idle_timeout":600}"#,
            ),
            (
                Frame::new(
                    ServerEvent::Reply(Reply::IdleTimeout(Duration::from_millis(500))),
                    id,
                    None,
                ),
                r#"{"event":"reply","id":"7","idle_timeout":0.5}"#,
            ),
        ];
        for (frame, expected) in cases {
            assert_eq!(frame.to_json(), expected, "{frame:?}");
        }
    }
}
