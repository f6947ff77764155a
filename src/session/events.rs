//! What the server sends to WebSocket clients: every `status` string of docs/protocol.md in one
//! enum, and every event as a type, serialized here and nowhere else.
//!
//! The JSON written is byte for byte what the server always sent: keys in alphabetical order
//! (as `serde_json::json!` ordered them), `null` for a missing signal. The tests at the end pin
//! each shape.

use std::fmt;

use serde::Serialize;

use crate::agent_protocol::Stream;
use crate::runtime::exec::{ExecOutcome, Reason};

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

/// One frame to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// `{"event":"status_update","status":S}`.
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
    /// A chunk of an execution's output.
    Output {
        stream: Stream,
        data: String,
        encoding: OutputEncoding,
    },
    /// `SANDBOX_EXECUTION_DONE` with how the execution ended.
    Done(ExecDone),
}

impl ServerEvent {
    /// The `status` of a `status_update`, if this is one.
    pub fn status(&self) -> Option<Status> {
        match self {
            ServerEvent::Status(status) | ServerEvent::StatusWithMessage(status, _) => {
                Some(*status)
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

    /// The frame's text (a JSON object).
    pub fn to_json(&self) -> String {
        let written = match self {
            ServerEvent::Status(status) => serde_json::to_string(&StatusFrame {
                event: "status_update",
                message: None,
                status: status.as_str(),
            }),
            ServerEvent::StatusWithMessage(status, message) => {
                serde_json::to_string(&StatusFrame {
                    event: "status_update",
                    message: Some(message),
                    status: status.as_str(),
                })
            }
            ServerEvent::Error(message) => serde_json::to_string(&ErrorFrame {
                event: "error",
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
            }),
            ServerEvent::Done(done) => serde_json::to_string(&DoneFrame {
                duration_ms: done.duration_ms,
                event: "status_update",
                exit_code: done.exit_code,
                reason: done.reason.as_str(),
                signal: done.signal,
                status: Status::ExecutionDone.as_str(),
                timed_out: done.reason == Reason::Timeout,
            }),
        };
        // Serializing strings and numbers into a String cannot fail; the fallback keeps a
        // panic out of the server regardless.
        written.unwrap_or_else(|_| r#"{"event":"error","message":"internal error"}"#.to_string())
    }
}

// The wire shapes. Fields are declared in alphabetical order: that is the order in which the
// server has always written them.

#[derive(Serialize)]
struct StatusFrame<'a> {
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    status: &'static str,
}

#[derive(Serialize)]
struct ErrorFrame<'a> {
    event: &'static str,
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
}

#[derive(Serialize)]
struct DoneFrame {
    duration_ms: u64,
    event: &'static str,
    exit_code: i32,
    reason: &'static str,
    signal: Option<i32>,
    status: &'static str,
    timed_out: bool,
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
                ServerEvent::Status(Status::Running),
                json!({"event": "status_update", "status": "SANDBOX_RUNNING"}),
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
        assert_eq!(names.len(), 34);
        assert!(Status::NotFound.is_error() && Status::InUse.is_error());
        assert!(Status::StdinError.is_error() && Status::LockRenewalError.is_error());
        assert!(!Status::ExecutionDone.is_error() && !Status::Killed.is_error());
    }
}
