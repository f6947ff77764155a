//! The files API's WebSocket actions (docs/protocol.md, "Files"), decoded into [`FileMessage`].
//!
//! Every file action needs a request id: its answers (data, acknowledgements, the reply) are
//! paired by it, and the chunks of one write continue the transfer under the same id.

use serde_json::{Map, Value};

use super::options::{flag, quoted};
use super::text::base64_decode;

/// Where relative paths start: the sessions' default working directory.
pub const HOME: &str = "/root";

/// The mode of a written file when the client names none (0644).
pub const DEFAULT_FILE_MODE: u32 = 0o644;

/// Largest chunk of a write, raw bytes (as for stdin).
pub const MAX_WRITE_CHUNK_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileMessage {
    Read {
        path: String,
    },
    /// A chunk of a write. The first chunk of a transfer names the path (a later one may
    /// repeat it); `more` says whether chunks follow.
    Write {
        path: Option<String>,
        mode: u32,
        append: bool,
        data: Vec<u8>,
        more: bool,
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

/// The file action named `action`, if it is one: the message, or why it is malformed.
pub fn parse(action: &str, message: &Map<String, Value>) -> Option<Result<FileMessage, String>> {
    let parsed = match action {
        "read_file" => path(message, "path").map(|path| FileMessage::Read { path }),
        "write_file" => write(message),
        "list_files" => list(message),
        "stat_file" => path(message, "path").map(|path| FileMessage::Stat { path }),
        "exists" => path(message, "path").map(|path| FileMessage::Exists { path }),
        "make_dir" => path(message, "path").and_then(|path| {
            let parents = match message.get("parents") {
                None | Some(Value::Null) => true,
                Some(_) => flag(message, "parents")?,
            };
            Ok(FileMessage::MakeDir { path, parents })
        }),
        "remove_file" => path(message, "path").and_then(|path| {
            Ok(FileMessage::Remove {
                path,
                recursive: flag(message, "recursive")?,
            })
        }),
        "rename_file" => path(message, "from").and_then(|from| {
            Ok(FileMessage::Rename {
                from,
                to: path(message, "to")?,
            })
        }),
        _ => return None,
    };
    Some(parsed.map_err(|problem| format!("{action}: {problem}")))
}

fn path(message: &Map<String, Value>, key: &str) -> Result<String, String> {
    match message.get(key) {
        Some(Value::String(path)) if !path.is_empty() => Ok(path.clone()),
        None | Some(Value::Null) => Err(format!("needs a \"{key}\"")),
        Some(other) => Err(format!(
            "{key} must be a non-empty string, got {}",
            quoted(other)
        )),
    }
}

fn write(message: &Map<String, Value>) -> Result<FileMessage, String> {
    let path = match message.get("path") {
        None | Some(Value::Null) => None,
        Some(_) => Some(path(message, "path")?),
    };
    let mode = match message.get("mode") {
        None | Some(Value::Null) => DEFAULT_FILE_MODE,
        Some(value) => value
            .as_u64()
            .filter(|mode| *mode <= 0o7777)
            .map(|mode| mode as u32)
            .ok_or_else(|| {
                format!(
                    "mode must be an integer from 0 to 4095 (0o7777), got {}",
                    quoted(value)
                )
            })?,
    };
    let data = match message.get("data") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(text)) => base64_decode(text).ok_or("data is not valid base64")?,
        Some(other) => {
            return Err(format!(
                "data must be a base64 string, got {}",
                quoted(other)
            ))
        }
    };
    if data.len() > MAX_WRITE_CHUNK_BYTES {
        return Err(format!(
            "a chunk holds at most {MAX_WRITE_CHUNK_BYTES} bytes, got {}",
            data.len()
        ));
    }
    Ok(FileMessage::Write {
        path,
        mode,
        append: flag(message, "append")?,
        data,
        more: flag(message, "more")?,
    })
}

fn list(message: &Map<String, Value>) -> Result<FileMessage, String> {
    let path = path(message, "path")?;
    let depth = match message.get("depth") {
        None | Some(Value::Null) => 1,
        Some(value) => value
            .as_u64()
            .filter(|depth| (1..=10).contains(depth))
            .map(|depth| depth as u32)
            .ok_or_else(|| {
                format!(
                    "depth must be an integer from 1 to 10, got {}",
                    quoted(value)
                )
            })?,
    };
    Ok(FileMessage::List { path, depth })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Result<FileMessage, String> {
        let Value::Object(message) = serde_json::from_str(text).unwrap() else {
            panic!("not an object")
        };
        let action = message["action"].as_str().unwrap().to_string();
        parse(&action, &message).unwrap()
    }

    #[test]
    fn file_actions_and_their_defaults() {
        assert_eq!(
            parsed(r#"{"action":"write_file","path":"a","data":"aGk=","more":true}"#),
            Ok(FileMessage::Write {
                path: Some("a".into()),
                mode: 0o644,
                append: false,
                data: b"hi".to_vec(),
                more: true
            })
        );
        assert_eq!(
            parsed(r#"{"action":"list_files","path":"/root"}"#),
            Ok(FileMessage::List {
                path: "/root".into(),
                depth: 1
            })
        );
        assert_eq!(
            parsed(r#"{"action":"make_dir","path":"d"}"#),
            Ok(FileMessage::MakeDir {
                path: "d".into(),
                parents: true
            })
        );
    }

    #[test]
    fn bad_fields_are_named() {
        for (text, problem) in [
            (r#"{"action":"read_file"}"#, r#"read_file: needs a "path""#),
            (
                r#"{"action":"read_file","path":7}"#,
                "read_file: path must be a non-empty string, got 7",
            ),
            (
                r#"{"action":"write_file","path":"a","mode":70000}"#,
                "write_file: mode must be an integer from 0 to 4095 (0o7777), got 70000",
            ),
            (
                r#"{"action":"write_file","path":"a","data":"!!"}"#,
                "write_file: data is not valid base64",
            ),
            (
                r#"{"action":"list_files","path":"/","depth":11}"#,
                "list_files: depth must be an integer from 1 to 10, got 11",
            ),
            (
                r#"{"action":"rename_file","from":"a"}"#,
                r#"rename_file: needs a "to""#,
            ),
        ] {
            assert_eq!(parsed(text), Err(problem.to_string()), "{text}");
        }
    }
}
