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

use serde::Deserialize;
use serde_json::{Map, Value};

use super::exec_options::{self, ExecLimits, ExecOptions, RawExecOptions};
use super::ids::RequestId;
use super::options::{choice, flag, quoted};
use super::text::base64_decode;
use crate::agent_protocol::Language;

/// A message with the request id it carries, if any (kept, not yet echoed: protocol 1 ignores
/// ids; issue 12 echoes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub id: Option<RequestId>,
    pub message: ClientMessage,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// `{"language", "code", ...options}`: run code.
    Exec(ExecMessage),
    /// `{"event": "stdin", "data", "eof", "encoding"}`.
    Stdin(Result<StdinMessage, String>),
    /// `{"action": "kill_process"}`.
    KillProcess,
    /// `{"action": "kill_sandbox"}`.
    KillSandbox,
    /// `{"action": "checkpoint"}`.
    Checkpoint,
    /// `{"action": "snapshot_filesystem", "name"}`: the name, or why it is not a string.
    SnapshotFilesystem(Result<String, String>),
    /// `{"action": "reconnect"}`.
    Reconnect,
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
}

/// Decodes one text message; execution options are checked against `limits`.
pub fn parse(text: &str, limits: &ExecLimits) -> Envelope {
    let Ok(Value::Object(message)) = serde_json::from_str::<Value>(text) else {
        return Envelope {
            id: None,
            message: ClientMessage::Unsupported,
        };
    };
    Envelope {
        id: message.get("id").and_then(RequestId::parse),
        message: dispatch(&message, limits),
    }
}

fn dispatch(message: &Map<String, Value>, limits: &ExecLimits) -> ClientMessage {
    let action_name = message.get("action").and_then(Value::as_str);
    let action = message
        .get("action")
        .and_then(|value| Action::deserialize(value).ok());
    match action {
        Some(Action::KillProcess) => return ClientMessage::KillProcess,
        Some(Action::KillSandbox) => return ClientMessage::KillSandbox,
        Some(Action::Checkpoint) => return ClientMessage::Checkpoint,
        Some(Action::SnapshotFilesystem) => {
            return ClientMessage::SnapshotFilesystem(snapshot_name(message))
        }
        Some(Action::Reconnect) => return ClientMessage::Reconnect,
        None => {}
    }
    if action_name.is_none() && message.get("event").and_then(Value::as_str) == Some("stdin") {
        return ClientMessage::Stdin(stdin(message));
    }
    if message.contains_key("code") || message.contains_key("language") {
        return exec(message, limits);
    }
    ClientMessage::Unsupported
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
            ClientMessage::KillProcess
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
            ClientMessage::Reconnect
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
            ClientMessage::Stdin(Ok(StdinMessage {
                data: Some(b"hi".to_vec()),
                eof: false
            }))
        );
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
            ClientMessage::Stdin(Ok(_))
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
            assert_eq!(message(text), ClientMessage::Stdin(expected), "{text}");
        }
    }

    #[test]
    fn request_ids_are_kept_and_invalid_ones_ignored() {
        let envelope = parse(r#"{"id":"7","action":"reconnect"}"#, &LIMITS);
        assert_eq!(envelope.id, Some(RequestId::Text("7".into())));
        assert_eq!(envelope.message, ClientMessage::Reconnect);
        let envelope = parse(r#"{"id":{"no":1},"action":"reconnect"}"#, &LIMITS);
        assert_eq!(envelope.id, None);
        assert_eq!(envelope.message, ClientMessage::Reconnect);
    }
}
