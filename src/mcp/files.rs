//! One file tool call (`read_file`, `write_file`, `list_files`) as a machine without I/O: the
//! session message it sends (the protocol's file actions, with the call's request id) and the
//! result it makes of the session's answers (`file_data`, `file_ack`, `reply`, or a
//! `SANDBOX_FILE_ERROR` with its `code`). Events are read from their JSON, so that this
//! machine depends only on the protocol (docs/protocol.md, "Files").

use serde_json::{json, Value};

use super::call::ToolResult;
use crate::session::text::{base64_decode, base64_encode};
use crate::session::RequestId;

/// The most `write_file` takes in one call (one chunk of the protocol).
pub const MAX_WRITE_BYTES: usize = 1024 * 1024;
/// Entries a `list_files` result shows at most.
const MAX_LISTED: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Utf8,
    Base64,
}

impl Encoding {
    pub fn parse(name: Option<&str>) -> Result<Encoding, String> {
        match name {
            None | Some("utf-8") => Ok(Encoding::Utf8),
            Some("base64") => Ok(Encoding::Base64),
            Some(other) => Err(format!(
                "encoding must be \"utf-8\" or \"base64\", got {:?}",
                other.chars().take(40).collect::<String>()
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Encoding::Utf8 => "utf-8",
            Encoding::Base64 => "base64",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Read(Encoding),
    Write,
    List,
}

#[derive(Debug)]
pub struct FileCall {
    request: RequestId,
    sandbox_id: String,
    path: String,
    op: Op,
    /// Bytes read so far (at most `cap`), and how many there were.
    data: Vec<u8>,
    total: u64,
    cap: usize,
}

impl FileCall {
    fn new(request: RequestId, sandbox_id: String, path: String, op: Op, cap: usize) -> Self {
        FileCall {
            request,
            sandbox_id,
            path,
            op,
            data: Vec::new(),
            total: 0,
            cap,
        }
    }

    /// `read_file`: the call and its message.
    pub fn read(
        request: RequestId,
        sandbox_id: String,
        path: String,
        encoding: Encoding,
        cap: usize,
    ) -> (FileCall, String) {
        let message = json!({"action": "read_file", "id": request, "path": path}).to_string();
        let call = FileCall::new(request, sandbox_id, path, Op::Read(encoding), cap);
        (call, message)
    }

    /// `write_file` of `content` (already decoded), in one chunk.
    pub fn write(
        request: RequestId,
        sandbox_id: String,
        path: String,
        content: &[u8],
    ) -> (FileCall, String) {
        let message = json!({
            "action": "write_file", "id": request, "path": path,
            "data": base64_encode(content), "more": false
        })
        .to_string();
        (
            FileCall::new(request, sandbox_id, path, Op::Write, 0),
            message,
        )
    }

    /// `list_files` of `path`, `depth` levels down.
    pub fn list(
        request: RequestId,
        sandbox_id: String,
        path: String,
        depth: u64,
    ) -> (FileCall, String) {
        let message = json!({"action": "list_files", "id": request, "path": path, "depth": depth})
            .to_string();
        (
            FileCall::new(request, sandbox_id, path, Op::List, 0),
            message,
        )
    }

    pub fn request(&self) -> &RequestId {
        &self.request
    }

    /// The call ends without an answer from the sandbox.
    pub fn fail(&self, message: &str) -> ToolResult {
        let mut result = ToolResult::error(Some(&self.sandbox_id), message);
        result.structured["path"] = json!(self.path);
        result
    }

    /// An event of the session for this call (its JSON); the result once there is one.
    pub fn on_event(&mut self, event: &Value) -> Option<ToolResult> {
        match event["event"].as_str() {
            Some("file_data") => {
                let chunk = event["data"]
                    .as_str()
                    .and_then(base64_decode)
                    .unwrap_or_default();
                self.total += chunk.len() as u64;
                let room = self.cap.saturating_sub(self.data.len());
                self.data.extend_from_slice(&chunk[..room.min(chunk.len())]);
                None
            }
            Some("reply") => Some(self.result(event)),
            Some("error") => {
                let message = event["message"]
                    .as_str()
                    .unwrap_or("the file operation failed");
                let text = match event["code"].as_str() {
                    Some(code) => format!("{code}: {message}"),
                    None => message.to_string(),
                };
                let mut result = ToolResult::error(Some(&self.sandbox_id), &text);
                result.structured["path"] = json!(self.path);
                result.structured["code"] = event["code"].clone();
                Some(result)
            }
            _ => None,
        }
    }

    fn result(&self, reply: &Value) -> ToolResult {
        match &self.op {
            Op::Write => {
                let size = reply["size"].as_u64().unwrap_or_default();
                ToolResult::ok(
                    format!("wrote {size} bytes to {}", self.path),
                    json!({"sandbox_id": self.sandbox_id, "path": self.path, "size": size}),
                )
            }
            Op::Read(encoding) => {
                let truncated = self.total > self.data.len() as u64;
                let content = match encoding {
                    Encoding::Utf8 => String::from_utf8_lossy(&self.data).into_owned(),
                    Encoding::Base64 => base64_encode(&self.data),
                };
                let mut text = content.clone();
                if truncated {
                    text.push_str(&format!(
                        "\n[{} truncated: the first {} of {} bytes are shown; read the rest in parts with run_command (e.g. `tail -c +{} {}` or `sed -n`)]",
                        self.path,
                        self.data.len(),
                        self.total,
                        self.data.len() + 1,
                        self.path
                    ));
                }
                ToolResult::ok(
                    text,
                    json!({
                        "sandbox_id": self.sandbox_id, "path": self.path,
                        "size": reply["size"].as_u64().unwrap_or(self.total),
                        "content": content, "encoding": encoding.name(), "truncated": truncated,
                    }),
                )
            }
            Op::List => {
                let entries = reply["entries"].as_array().cloned().unwrap_or_default();
                let mut lines: Vec<String> = entries
                    .iter()
                    .take(MAX_LISTED)
                    .map(|entry| {
                        let kind = entry["type"].as_str().unwrap_or("other");
                        let path = entry["path"].as_str().unwrap_or_default();
                        let suffix = if kind == "dir" { "/" } else { "" };
                        format!(
                            "{:>10}  {path}{suffix}",
                            entry["size"].as_u64().unwrap_or_default()
                        )
                    })
                    .collect();
                if entries.len() > MAX_LISTED {
                    lines.push(format!(
                        "[{} more entries not shown]",
                        entries.len() - MAX_LISTED
                    ));
                }
                if reply["truncated"] == true {
                    lines.push("[the listing was cut at the server's limit]".into());
                }
                if lines.is_empty() {
                    lines.push(format!("{} is empty", self.path));
                }
                let shown: Vec<Value> = entries.into_iter().take(MAX_LISTED).collect();
                ToolResult::ok(
                    lines.join("\n"),
                    json!({
                        "sandbox_id": self.sandbox_id, "path": self.path,
                        "entries": shown, "truncated": reply["truncated"] == true,
                    }),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> RequestId {
        RequestId::Text("m3".into())
    }

    #[test]
    fn a_write_is_one_chunk_and_answers_its_size() {
        let (mut call, message) =
            FileCall::write(id(), "sid".into(), "/root/a.txt".into(), b"hi\n");
        let message: Value = serde_json::from_str(&message).unwrap();
        assert_eq!(
            message,
            json!({"action": "write_file", "id": "m3", "path": "/root/a.txt", "data": "aGkK", "more": false})
        );
        assert_eq!(
            call.on_event(&json!({"event": "file_ack", "id": "m3", "written": 3, "window": 4})),
            None
        );
        let result = call
            .on_event(&json!({"event": "reply", "id": "m3", "size": 3}))
            .unwrap();
        assert_eq!(
            result.structured,
            json!({"sandbox_id": "sid", "path": "/root/a.txt", "size": 3})
        );
        assert!(!result.is_error);
    }

    #[test]
    fn a_read_keeps_up_to_its_cap_and_says_how_to_get_the_rest() {
        let (mut call, message) =
            FileCall::read(id(), "sid".into(), "/root/b".into(), Encoding::Utf8, 4);
        assert_eq!(
            serde_json::from_str::<Value>(&message).unwrap()["action"],
            "read_file"
        );
        call.on_event(&json!({"event": "file_data", "id": "m3", "data": base64_encode(b"abc")}));
        call.on_event(&json!({"event": "file_data", "id": "m3", "data": base64_encode(b"defg")}));
        let result = call
            .on_event(&json!({"event": "reply", "id": "m3", "size": 7}))
            .unwrap();
        assert_eq!(result.structured["content"], "abcd");
        assert_eq!(result.structured["truncated"], true);
        assert_eq!(result.structured["size"], 7);
        assert!(
            result.text.contains("the first 4 of 7 bytes are shown"),
            "{}",
            result.text
        );
        let (mut binary, _) =
            FileCall::read(id(), "sid".into(), "/p".into(), Encoding::Base64, 100);
        binary.on_event(&json!({"event": "file_data", "data": base64_encode(&[0, 255])}));
        let result = binary
            .on_event(&json!({"event": "reply", "size": 2}))
            .unwrap();
        assert_eq!(result.structured["content"], "AP8=");
    }

    #[test]
    fn a_listing_and_an_error() {
        let (mut call, _) = FileCall::list(id(), "sid".into(), "/root".into(), 1);
        let reply = json!({"event": "reply", "id": "m3", "entries": [
            {"name": "a", "path": "/root/a", "type": "file", "size": 5, "mode": 420, "mtime_unix_ms": 1},
            {"name": "d", "path": "/root/d", "type": "dir", "size": 4096, "mode": 493, "mtime_unix_ms": 1}
        ]});
        let result = call.on_event(&reply).unwrap();
        assert_eq!(result.text, "         5  /root/a\n      4096  /root/d/");
        assert_eq!(result.structured["entries"].as_array().unwrap().len(), 2);
        let (mut missing, _) =
            FileCall::read(id(), "sid".into(), "/nope".into(), Encoding::Utf8, 10);
        assert_eq!(missing.on_event(&json!({"event": "status_update", "status": "SANDBOX_FILE_ERROR", "code": "not_found", "message": "no"})), None);
        let result = missing
            .on_event(
                &json!({"event": "error", "code": "not_found", "message": "cannot open /nope"}),
            )
            .unwrap();
        assert!(result.is_error);
        assert_eq!(result.text, "not_found: cannot open /nope");
        assert_eq!(result.structured["code"], "not_found");
        assert_eq!(
            Encoding::parse(Some("latin-1")),
            Err("encoding must be \"utf-8\" or \"base64\", got \"latin-1\"".into())
        );
    }
}
