//! What a client sends after set-up, decoded into [`ClientMessage`].
//!
//! The text is decoded by serde_json and the action names by serde; which kind of message it is
//! follows the compatible protocol's rules, written out by hand in [`parse`] because serde's
//! tagged and untagged enums cannot say them (an object with a `language` or a `code` is an
//! execution whatever else it has, `event: "stdin"` counts only without an `action`, anything
//! unknown is answered like an unknown language), and would answer a bad field with a message
//! about enum variants rather than one naming the field. Fields are checked here, with the
//! messages of `options` and `exec_options`; a field's problem is kept in the message (as an
//! `Err`) because the session reports some problems only after checking its own state (a
//! second execution is "already in progress" before its timeout is wrong).
//!
//! Protocol 2 (docs/protocol.md, "Requests, processes and flow control"): any message may
//! carry an `id`; one that is not a valid id makes the message [`ClientMessage::Malformed`]
//! (answered without an id, not acted on). With a valid id, an unknown action and a bad field
//! of an addition (`process_id`, the new actions' fields) are malformed too; without one, the
//! compatible answers stay.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::code::{self, CodeMessage};
use super::exec_options::{self, ExecLimits, ExecOptions, RawExecOptions};
use super::file_messages::{self, FileMessage};
use super::ids::{ProcessId, RequestId};
use super::options::{self, choice, flag, quoted};
use super::text::base64_decode;
use crate::agent_protocol::{Language, TerminalSize};

/// A message with the request id it carries, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub id: Option<RequestId>,
    pub message: ClientMessage,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// `{"language", "code", ...options}`: run code.
    Exec(ExecMessage),
    /// `{"event": "stdin", "data", "eof", "encoding", "process_id"}`: the process it is for
    /// (`None`: the foreground execution), and what to do or why it cannot be done.
    Stdin(Option<ProcessId>, Result<StdinMessage, String>),
    /// `{"action": "kill_process", "process_id"}` (without a process id: the foreground one).
    KillProcess(Option<ProcessId>),
    /// `{"action": "kill_sandbox"}`.
    KillSandbox,
    /// `{"action": "checkpoint"}`.
    Checkpoint,
    /// `{"action": "snapshot_filesystem", "name"}`: the name, or why it is not a string.
    SnapshotFilesystem(Result<String, String>),
    /// `{"action": "reconnect", "received"}`: with, per process, the `seq` of the last event
    /// the client got before the drop (empty without `received`: nothing is sent again).
    Reconnect(Received),
    /// `{"action": "list_processes"}`.
    ListProcesses,
    /// `{"action": "attach_process", "process_id"}`.
    AttachProcess(ProcessId),
    /// `{"action": "resize", "process_id", "cols", "rows"}`: a terminal's new window size.
    Resize(ProcessId, TerminalSize),
    /// `{"action": "set_idle_timeout", "idle_timeout"}` (`None`: the server's default,
    /// `Some(ZERO)`: never, capped).
    SetIdleTimeout(Option<Duration>),
    /// A files API action (docs/protocol.md, "Files"), or why it is malformed.
    File(FileMessage),
    /// The code interpreter's messages (`run_code`, `*_code_context*`), see `code`.
    Code(CodeMessage),
    /// Protocol 2's `SANDBOX_REQUEST_ERROR`: why the message cannot be acted on.
    Malformed(String),
    /// Not JSON, not an object, an unknown shape or an unknown language: the protocol answers
    /// all of these with `SANDBOX_EXECUTION_UNSUPPORTED_LANGUAGE_ERROR`.
    Unsupported,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecMessage {
    pub language: Language,
    pub code: String,
    /// The checked options, or the first problem with them.
    pub options: Result<ExecOptions, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StdinMessage {
    /// Bytes to write (decoded from base64 if the message said so).
    pub data: Option<Vec<u8>>,
    /// Close stdin after writing `data`.
    pub eof: bool,
}

/// The `action`s there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Action {
    KillProcess,
    KillSandbox,
    Checkpoint,
    SnapshotFilesystem,
    Reconnect,
    ListProcesses,
    AttachProcess,
    SetIdleTimeout,
    Resize,
    RunCode,
    CreateCodeContext,
    ListCodeContexts,
    RestartCodeContext,
    DeleteCodeContext,
}

/// The message of an `id` that is not one.
fn invalid_id(value: &Value) -> String {
    format!(
        "id must be a string of 1 to 64 printable ASCII characters or an integer from 0 to 2^53-1, got {}",
        quoted(value)
    )
}

/// Decodes one text message; execution options are checked against `limits`.
pub fn parse(text: &str, limits: &ExecLimits) -> Envelope {
    let Ok(Value::Object(message)) = serde_json::from_str::<Value>(text) else {
        return Envelope {
            id: None,
            message: ClientMessage::Unsupported,
        };
    };
    let id = match message.get("id") {
        // `null` is no id, as a client that serializes an absent optional field sends it.
        None | Some(Value::Null) => None,
        Some(value) => match RequestId::parse(value) {
            Some(id) => Some(id),
            None => {
                return Envelope {
                    id: None,
                    message: ClientMessage::Malformed(invalid_id(value)),
                }
            }
        },
    };
    let message = dispatch(&message, id.is_some(), limits);
    Envelope { id, message }
}

fn dispatch(message: &Map<String, Value>, has_id: bool, limits: &ExecLimits) -> ClientMessage {
    let action_name = message.get("action").and_then(Value::as_str);
    let action = message
        .get("action")
        .and_then(|value| Action::deserialize(value).ok());
    let malformed =
        |result: Result<ClientMessage, String>| result.unwrap_or_else(ClientMessage::Malformed);
    match action {
        Some(Action::KillProcess) => {
            return malformed(optional_process(message).map(ClientMessage::KillProcess))
        }
        Some(Action::KillSandbox) => return ClientMessage::KillSandbox,
        Some(Action::Checkpoint) => return ClientMessage::Checkpoint,
        Some(Action::SnapshotFilesystem) => {
            return ClientMessage::SnapshotFilesystem(snapshot_name(message))
        }
        Some(Action::Reconnect) => {
            return malformed(received(message).map(ClientMessage::Reconnect))
        }
        Some(Action::ListProcesses) => return ClientMessage::ListProcesses,
        Some(Action::AttachProcess) => {
            let process = optional_process(message).and_then(|process| {
                process.ok_or_else(|| "attach_process needs a \"process_id\"".to_string())
            });
            return malformed(process.map(ClientMessage::AttachProcess));
        }
        Some(Action::Resize) => return malformed(resize(message)),
        Some(Action::SetIdleTimeout) => {
            let timeout = match message.get("idle_timeout") {
                None => Err("set_idle_timeout needs an \"idle_timeout\"".to_string()),
                Some(value) => options::idle_timeout(value),
            };
            return malformed(timeout.map(ClientMessage::SetIdleTimeout));
        }
        Some(Action::RunCode) => {
            return malformed(code::run_code(message, limits).map(ClientMessage::Code))
        }
        Some(Action::CreateCodeContext) => {
            return malformed(code::create_context(message).map(ClientMessage::Code))
        }
        Some(Action::ListCodeContexts) => return ClientMessage::Code(CodeMessage::ListContexts),
        Some(Action::RestartCodeContext) => {
            let context = code::named_context(message, "restart_code_context");
            return malformed(context.map(|id| ClientMessage::Code(CodeMessage::Restart(id))));
        }
        Some(Action::DeleteCodeContext) => {
            let context = code::named_context(message, "delete_code_context");
            return malformed(context.map(|id| ClientMessage::Code(CodeMessage::Delete(id))));
        }
        None => {}
    }
    if let Some(file) = action_name.and_then(|name| file_messages::parse(name, message)) {
        return malformed(file.map(ClientMessage::File));
    }
    if let (Some(name), true) = (action_name, has_id) {
        // Without an id an unknown action keeps the compatible answer (below).
        return ClientMessage::Malformed(format!("unknown action {}", quoted(&Value::from(name))));
    }
    if action_name.is_none() && message.get("event").and_then(Value::as_str) == Some("stdin") {
        return match optional_process(message) {
            Ok(process) => ClientMessage::Stdin(process, stdin(message)),
            Err(problem) => ClientMessage::Malformed(problem),
        };
    }
    if message.contains_key("code") || message.contains_key("language") {
        return exec(message, limits);
    }
    ClientMessage::Unsupported
}

/// The message's `process_id`, if it has one: a positive integer.
fn optional_process(message: &Map<String, Value>) -> Result<Option<ProcessId>, String> {
    match message.get("process_id") {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .filter(|id| *id > 0)
            .map(|id| Some(ProcessId(id)))
            .ok_or_else(|| {
                format!(
                    "process_id must be a positive integer, got {}",
                    quoted(value)
                )
            }),
    }
}

/// Per process, the `seq` of the last event a client received (`reconnect`'s `received`).
pub type Received = BTreeMap<ProcessId, u64>;

/// Most processes a `received` may name (a session keeps far fewer).
const MAX_RECEIVED_PROCESSES: usize = 4096;

/// `reconnect`'s `received`: `{"<process_id>": seq, ...}`, seq an integer below 2^53.
fn received(message: &Map<String, Value>) -> Result<Received, String> {
    let entries = match message.get("received") {
        None | Some(Value::Null) => return Ok(Received::new()),
        Some(Value::Object(entries)) => entries,
        Some(other) => {
            return Err(format!(
                "received must be an object of process ids to seq numbers, got {}",
                quoted(other)
            ))
        }
    };
    if entries.len() > MAX_RECEIVED_PROCESSES {
        return Err(format!(
            "received names {} processes, at most {MAX_RECEIVED_PROCESSES} are allowed",
            entries.len()
        ));
    }
    let mut received = Received::new();
    for (key, value) in entries {
        let process = key
            .parse::<u64>()
            .ok()
            .filter(|id| *id > 0 && key.bytes().all(|byte| byte.is_ascii_digit()))
            .ok_or_else(|| {
                format!(
                    "received keys must be process ids (positive integers), got {}",
                    quoted(&Value::from(key.as_str()))
                )
            })?;
        let seq = value.as_u64().filter(|seq| *seq < 1 << 53).ok_or_else(|| {
            format!(
                "received[{key}] must be a seq number (an integer from 0), got {}",
                quoted(value)
            )
        })?;
        received.insert(ProcessId(process), seq);
    }
    Ok(received)
}

/// `resize`: the terminal process and its new size.
fn resize(message: &Map<String, Value>) -> Result<ClientMessage, String> {
    let process =
        optional_process(message)?.ok_or_else(|| "resize needs a \"process_id\"".to_string())?;
    let (cols, rows) = exec_options::terminal_size("", message)?;
    Ok(ClientMessage::Resize(process, TerminalSize { cols, rows }))
}

fn snapshot_name(message: &Map<String, Value>) -> Result<String, String> {
    match message.get("name") {
        // An absent name is refused by the name rule itself.
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(name)) => Ok(name.clone()),
        Some(other) => Err(format!("name must be a string, got {}", quoted(other))),
    }
}

fn stdin(message: &Map<String, Value>) -> Result<StdinMessage, String> {
    let eof = flag(message, "eof")?;
    let base64 = choice(message, "encoding", &["text", "base64"])? == "base64";
    let data = match message.get("data") {
        Some(Value::String(data)) if base64 => {
            Some(base64_decode(data).ok_or("stdin data is not valid base64")?)
        }
        Some(Value::String(data)) => Some(data.as_bytes().to_vec()),
        None if eof => None,
        None => return Err("stdin message without \"data\"".into()),
        Some(_) => return Err("stdin \"data\" must be a string".into()),
    };
    Ok(StdinMessage { data, eof })
}

fn exec(message: &Map<String, Value>, limits: &ExecLimits) -> ClientMessage {
    let language = message
        .get("language")
        .and_then(Value::as_str)
        .and_then(exec_options::language);
    let (Some(language), Some(Value::String(code))) = (language, message.get("code")) else {
        return ClientMessage::Unsupported;
    };
    ClientMessage::Exec(ExecMessage {
        language,
        code: code.clone(),
        options: exec_options::check(code.len(), &RawExecOptions::from_json(message), limits),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::events::OutputEncoding;
    use std::time::Duration;

    const LIMITS: ExecLimits = ExecLimits {
        default_timeout: Duration::from_secs(60),
        max_timeout: Duration::from_secs(600),
        max_code_bytes: 1000,
    };

    fn message(text: &str) -> ClientMessage {
        parse(text, &LIMITS).message
    }

    #[test]
    fn actions_and_events() {
        assert_eq!(
            message(r#"{"action":"kill_process"}"#),
            ClientMessage::KillProcess(None)
        );
        assert_eq!(
            message(r#"{"action":"kill_sandbox"}"#),
            ClientMessage::KillSandbox
        );
        assert_eq!(
            message(r#"{"action":"checkpoint"}"#),
            ClientMessage::Checkpoint
        );
        assert_eq!(
            message(r#"{"action":"reconnect"}"#),
            ClientMessage::Reconnect(Received::new())
        );
        assert_eq!(
            message(r#"{"action":"snapshot_filesystem","name":"s"}"#),
            ClientMessage::SnapshotFilesystem(Ok("s".into()))
        );
        assert_eq!(
            message(r#"{"action":"snapshot_filesystem"}"#),
            ClientMessage::SnapshotFilesystem(Ok(String::new()))
        );
        assert_eq!(
            message(r#"{"action":"snapshot_filesystem","name":42}"#),
            ClientMessage::SnapshotFilesystem(Err("name must be a string, got 42".into()))
        );
        assert_eq!(
            message(r#"{"event":"stdin","data":"hi"}"#),
            ClientMessage::Stdin(
                None,
                Ok(StdinMessage {
                    data: Some(b"hi".to_vec()),
                    eof: false
                })
            )
        );
    }

    /// Protocol 2's additions: process ids, the new actions, and what is malformed.
    #[test]
    fn protocol_2_messages_and_their_problems() {
        assert_eq!(
            message(r#"{"action":"kill_process","process_id":3,"id":"9"}"#),
            ClientMessage::KillProcess(Some(ProcessId(3)))
        );
        assert_eq!(
            message(r#"{"event":"stdin","process_id":3,"eof":true}"#),
            ClientMessage::Stdin(
                Some(ProcessId(3)),
                Ok(StdinMessage {
                    data: None,
                    eof: true
                })
            )
        );
        assert_eq!(
            message(r#"{"action":"list_processes","id":1}"#),
            ClientMessage::ListProcesses
        );
        assert_eq!(
            message(r#"{"action":"attach_process","process_id":2}"#),
            ClientMessage::AttachProcess(ProcessId(2))
        );
        assert_eq!(
            message(r#"{"action":"set_idle_timeout","idle_timeout":600}"#),
            ClientMessage::SetIdleTimeout(Some(Duration::from_secs(600)))
        );
        assert_eq!(
            message(r#"{"action":"resize","process_id":2,"cols":120,"rows":40,"id":"5"}"#),
            ClientMessage::Resize(
                ProcessId(2),
                TerminalSize {
                    cols: 120,
                    rows: 40
                }
            )
        );
        assert_eq!(
            message(r#"{"action":"set_idle_timeout","idle_timeout":null}"#),
            ClientMessage::SetIdleTimeout(None)
        );
        for (text, problem) in [
            (
                r#"{"action":"kill_process","process_id":0}"#,
                "process_id must be a positive integer, got 0",
            ),
            (
                r#"{"event":"stdin","process_id":"3","data":"x"}"#,
                r#"process_id must be a positive integer, got "3""#,
            ),
            (
                r#"{"action":"attach_process"}"#,
                r#"attach_process needs a "process_id""#,
            ),
            (
                r#"{"action":"set_idle_timeout"}"#,
                r#"set_idle_timeout needs an "idle_timeout""#,
            ),
            (
                r#"{"action":"set_idle_timeout","idle_timeout":-1}"#,
                "idle_timeout must be a number of seconds from 0 (never) to 1000000000 or null, got -1",
            ),
            (
                r#"{"action":"dance","id":"1"}"#,
                r#"unknown action "dance""#,
            ),
            (
                r#"{"action":"resize","cols":80,"rows":24,"id":"1"}"#,
                r#"resize needs a "process_id""#,
            ),
            (
                r#"{"action":"resize","process_id":2,"cols":0,"rows":24,"id":"1"}"#,
                "cols must be an integer from 1 to 1000, got 0",
            ),
            (
                r#"{"action":"resize","process_id":2,"cols":80,"id":"1"}"#,
                "rows must be an integer from 1 to 1000, got nothing",
            ),
            (
                r#"{"action":"dance","language":"bash","code":"true","id":"1"}"#,
                r#"unknown action "dance""#,
            ),
            (
                r#"{"id":true,"language":"bash","code":"true"}"#,
                "id must be a string of 1 to 64 printable ASCII characters or an integer from 0 to 2^53-1, got true",
            ),
        ] {
            assert_eq!(
                message(text),
                ClientMessage::Malformed(problem.into()),
                "{text}"
            );
        }
        // Without an id, an unknown action keeps its compatible meaning.
        assert_eq!(message(r#"{"action":"dance"}"#), ClientMessage::Unsupported);
    }

    /// The compatible protocol's rules for telling messages apart.
    #[test]
    fn compatible_dispatch_rules() {
        // An unknown action with a language is an execution.
        assert!(matches!(
            message(r#"{"action":"dance","language":"bash","code":"true"}"#),
            ClientMessage::Exec(_)
        ));
        // stdin counts only without an action (a non-string action is none).
        assert!(matches!(
            message(r#"{"action":5,"event":"stdin","data":"x"}"#),
            ClientMessage::Stdin(None, Ok(_))
        ));
        assert_eq!(
            message(r#"{"action":"dance","event":"stdin","data":"x"}"#),
            ClientMessage::Unsupported
        );
        for text in [
            "not json",
            "[1]",
            "42",
            r#"{"hello":1}"#,
            r#"{"action":"dance"}"#,
            r#"{"language":"ruby","code":"1"}"#,
            r#"{"code":"1"}"#,
            r#"{"language":"bash"}"#,
            r#"{"language":"bash","code":5}"#,
        ] {
            assert_eq!(message(text), ClientMessage::Unsupported, "{text}");
        }
    }

    #[test]
    fn executions_carry_checked_options_or_the_problem() {
        let ClientMessage::Exec(exec) = message(
            r#"{"language":"python","code":"print(1)","output_encoding":"base64","timeout":5}"#,
        ) else {
            panic!("not an execution")
        };
        assert_eq!(exec.language, Language::Python);
        assert_eq!(exec.code, "print(1)");
        let options = exec.options.unwrap();
        assert_eq!(options.output_encoding, OutputEncoding::Base64);
        assert_eq!(options.timeout, Duration::from_secs(5));
        let ClientMessage::Exec(exec) =
            message(r#"{"language":"bash","code":"true","timeout":"5"}"#)
        else {
            panic!("not an execution")
        };
        assert!(exec.options.unwrap_err().starts_with("timeout must be"));
    }

    #[test]
    fn stdin_fields_are_checked_in_order() {
        for (text, expected) in [
            (
                r#"{"event":"stdin","data":"x","eof":"yes","encoding":"hex"}"#,
                Err(r#"eof must be true or false, got "yes""#.to_string()),
            ),
            (
                r#"{"event":"stdin","data":"x","encoding":"hex"}"#,
                Err(r#"encoding must be "text" or "base64", got "hex""#.to_string()),
            ),
            (
                r#"{"event":"stdin","data":"%%","encoding":"base64"}"#,
                Err("stdin data is not valid base64".to_string()),
            ),
            (
                r#"{"event":"stdin"}"#,
                Err("stdin message without \"data\"".to_string()),
            ),
            (
                r#"{"event":"stdin","data":null,"eof":true}"#,
                Err("stdin \"data\" must be a string".to_string()),
            ),
            (
                r#"{"event":"stdin","eof":true}"#,
                Ok(StdinMessage {
                    data: None,
                    eof: true,
                }),
            ),
            (
                r#"{"event":"stdin","data":"AP8=","encoding":"base64","eof":true}"#,
                Ok(StdinMessage {
                    data: Some(vec![0, 255]),
                    eof: true,
                }),
            ),
        ] {
            assert_eq!(
                message(text),
                ClientMessage::Stdin(None, expected),
                "{text}"
            );
        }
    }

    #[test]
    fn request_ids_are_kept_and_invalid_ones_make_the_message_malformed() {
        let envelope = parse(r#"{"id":"7","action":"reconnect"}"#, &LIMITS);
        assert_eq!(envelope.id, Some(RequestId::Text("7".into())));
        assert_eq!(envelope.message, ClientMessage::Reconnect(Received::new()));
        let envelope = parse(r#"{"id":null,"action":"reconnect"}"#, &LIMITS);
        assert_eq!(envelope.id, None, "null is no id");
        assert_eq!(envelope.message, ClientMessage::Reconnect(Received::new()));
        let envelope = parse(r#"{"id":{"no":1},"action":"reconnect"}"#, &LIMITS);
        assert_eq!(envelope.id, None);
        assert!(matches!(envelope.message, ClientMessage::Malformed(_)));
    }

    #[test]
    fn reconnect_says_what_the_client_received_of_each_process() {
        let envelope = parse(
            r#"{"id":"9","action":"reconnect","received":{"3":5,"12":0}}"#,
            &LIMITS,
        );
        let expected = Received::from([(ProcessId(3), 5), (ProcessId(12), 0)]);
        assert_eq!(envelope.message, ClientMessage::Reconnect(expected));
        for (bad, needle) in [
            (
                r#"{"action":"reconnect","received":[1]}"#,
                "must be an object",
            ),
            (
                r#"{"action":"reconnect","received":{"x":1}}"#,
                "process ids",
            ),
            (
                r#"{"action":"reconnect","received":{"0":1}}"#,
                "process ids",
            ),
            (
                r#"{"action":"reconnect","received":{"+3":1}}"#,
                "process ids",
            ),
            (
                r#"{"action":"reconnect","received":{"3":-1}}"#,
                "received[3]",
            ),
            (
                r#"{"action":"reconnect","received":{"3":"1"}}"#,
                "received[3]",
            ),
            (
                r#"{"action":"reconnect","received":{"3":9007199254740992}}"#,
                "received[3]",
            ),
        ] {
            match parse(bad, &LIMITS).message {
                ClientMessage::Malformed(problem) => {
                    assert!(problem.contains(needle), "{bad}: {problem}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
