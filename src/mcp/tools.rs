//! The tools a model sees: their names, JSON Schemas and descriptions (written for a model to
//! read), and the checked arguments of a `tools/call` ([`ToolRequest`]).
//!
//! A wrong tool name or a `params` of the wrong shape is a protocol error (`-32602`); a wrong
//! argument is a tool error (`isError: true`, the MCP revision 2025-11-25 rule), so that the
//! model reads what to fix.

use serde_json::{json, Map, Value};

use super::files::{Encoding, MAX_WRITE_BYTES};
use super::jsonrpc::{shown, RpcError};
use crate::ids::SandboxId;
use crate::session::text::base64_decode;

pub const RUN_COMMAND: &str = "run_command";
pub const RUN_CODE: &str = "run_code";
pub const WRITE_FILE: &str = "write_file";
pub const READ_FILE: &str = "read_file";
pub const LIST_FILES: &str = "list_files";
pub const CLOSE_SANDBOX: &str = "close_sandbox";

/// Which tools the sandboxes behind this server support: the code interpreter (issue 13) and
/// the files API (issue 14) are offered only where the session protocol has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    pub code_interpreter: bool,
    pub files: bool,
}

impl Features {
    /// What this build's sessions speak.
    pub const AVAILABLE: Features = Features {
        code_interpreter: true,
        files: true,
    };

    /// The names of the tools offered, in the order `tools/list` gives them.
    pub fn names(self) -> Vec<&'static str> {
        let mut names = vec![RUN_COMMAND];
        if self.code_interpreter {
            names.push(RUN_CODE);
        }
        if self.files {
            names.extend([WRITE_FILE, READ_FILE, LIST_FILES]);
        }
        names.push(CLOSE_SANDBOX);
        names
    }
}

const SANDBOX_ID_DESCRIPTION: &str = "The sandbox to use, as returned in `sandbox_id` by an \
earlier call. Omit it to use this session's sandbox (created at the first call); a client \
without a session gets a new sandbox and should pass its id on to later calls.";

/// What `tools/list` returns in `tools`.
pub fn list(features: Features) -> Value {
    let names = features.names();
    let tools: Vec<Value> = all_tools()
        .into_iter()
        .filter(|tool| names.iter().any(|name| tool["name"] == *name))
        .collect();
    Value::Array(tools)
}

fn all_tools() -> Vec<Value> {
    let sandbox_id = json!({"type": "string", "description": SANDBOX_ID_DESCRIPTION});
    let listed = json!([
        {
            "name": RUN_COMMAND,
            "title": "Run a shell command",
            "description": "Run a bash command in an isolated Linux sandbox (gVisor) and return \
    its stdout, stderr and exit code. The sandbox persists between calls: files written and \
    packages installed stay (each command is a new bash process, so `cd` and shell variables do \
    not carry over: use `cwd` or chain with `&&`). Python 3 and common libraries are installed; \
    the working directory defaults to /root. Output returned is capped (64 KiB per stream by \
    default): past the cap, the whole output is saved to a file in the sandbox whose path the \
    result gives.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The bash command or script to run."},
                    "timeout_s": {
                        "type": "number",
                        "exclusiveMinimum": 0,
                        "description": "Seconds before the command is killed (the server's default otherwise)."
                    },
                    "cwd": {"type": "string", "description": "Absolute working directory (default /root)."},
                    "sandbox_id": {"type": "string", "description": SANDBOX_ID_DESCRIPTION}
                },
                "required": ["command"],
                "additionalProperties": false
            },
            "outputSchema": {
                "type": "object",
                "properties": {
                    "sandbox_id": {"type": "string"},
                    "stdout": {"type": "string"},
                    "stderr": {"type": "string"},
                    "exit_code": {"type": "integer"},
                    "reason": {
                        "type": "string",
                        "description": "How the command ended: exited, timeout, killed, output_limit, sandbox_lost."
                    },
                    "truncated": {"type": "boolean", "description": "Output was cut to the cap."}
                },
                "required": ["sandbox_id", "stdout", "stderr", "exit_code"]
            },
            "annotations": {"destructiveHint": true, "openWorldHint": false}
        },
        {
            "name": CLOSE_SANDBOX,
            "title": "Close a sandbox",
            "description": "Delete a sandbox and everything in it. Without `sandbox_id`, this \
    session's sandbox is closed (the next call gets a fresh one). Sandboxes are also deleted after \
    a while without calls.",
            "inputSchema": {
                "type": "object",
                "properties": {"sandbox_id": {"type": "string", "description": SANDBOX_ID_DESCRIPTION}},
                "additionalProperties": false
            },
            "outputSchema": {
                "type": "object",
                "properties": {"sandbox_id": {"type": "string"}, "closed": {"type": "boolean"}},
                "required": ["sandbox_id", "closed"]
            },
            "annotations": {"destructiveHint": true, "idempotentHint": true, "openWorldHint": false}
        }
    ]);
    let Value::Array(mut tools) = listed else {
        return Vec::new();
    };
    tools.insert(1, json!({
        "name": RUN_CODE,
        "title": "Run Python code",
        "description": "Run Python code in the sandbox's persistent interpreter, like a \
notebook cell: variables, imports and definitions stay for later calls. The result holds the \
printed output and the value of the last expression, and one image per matplotlib figure; an \
exception makes an error result with its traceback. numpy, pandas, matplotlib and other common \
libraries are installed.",
        "inputSchema": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "description": "Python code to run."},
                "timeout_s": {"type": "number", "exclusiveMinimum": 0, "description": "Seconds before the cell is interrupted (KeyboardInterrupt; the state stays)."},
                "sandbox_id": sandbox_id,
            },
            "required": ["code"],
            "additionalProperties": false
        },
        "annotations": {"destructiveHint": true, "openWorldHint": false}
    }));
    tools.insert(2, json!({
        "name": WRITE_FILE,
        "title": "Write a file",
        "description": "Write a file in the sandbox (replacing it; parent directories must \
exist). Relative paths are under /root. Content is text, or base64 with encoding \"base64\"; \
at most 1 MiB per call.",
        "inputSchema": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "content": {"type": "string"},
                "encoding": {"type": "string", "enum": ["utf-8", "base64"], "default": "utf-8"},
                "sandbox_id": sandbox_id,
            },
            "required": ["path", "content"],
            "additionalProperties": false
        },
        "annotations": {"destructiveHint": true, "idempotentHint": true, "openWorldHint": false}
    }));
    tools.insert(3, json!({
        "name": READ_FILE,
        "title": "Read a file",
        "description": "Read a file from the sandbox, as text (utf-8) or base64. Long files are \
cut to the output cap (64 KiB by default) with a note.",
        "inputSchema": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "encoding": {"type": "string", "enum": ["utf-8", "base64"], "default": "utf-8"},
                "sandbox_id": sandbox_id,
            },
            "required": ["path"],
            "additionalProperties": false
        },
        "annotations": {"readOnlyHint": true, "openWorldHint": false}
    }));
    tools.insert(
        4,
        json!({
            "name": LIST_FILES,
            "title": "List files",
            "description": "List a directory of the sandbox (size and path of each entry; \
        directories end with /), `depth` levels down (1 to 10).",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "default": "/root"},
                    "depth": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
                    "sandbox_id": sandbox_id,
                },
                "additionalProperties": false
            },
            "annotations": {"readOnlyHint": true, "openWorldHint": false}
        }),
    );
    tools
}

/// A `tools/call` with its arguments checked.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolRequest {
    RunCommand {
        command: String,
        timeout_s: Option<f64>,
        cwd: Option<String>,
        sandbox_id: Option<String>,
    },
    CloseSandbox {
        sandbox_id: Option<String>,
    },
    RunCode {
        code: String,
        timeout_s: Option<f64>,
        sandbox_id: Option<String>,
    },
    WriteFile {
        path: String,
        content: Vec<u8>,
        sandbox_id: Option<String>,
    },
    ReadFile {
        path: String,
        encoding: Encoding,
        sandbox_id: Option<String>,
    },
    ListFiles {
        path: String,
        depth: u64,
        sandbox_id: Option<String>,
    },
}

impl ToolRequest {
    pub fn sandbox_id(&self) -> Option<&str> {
        match self {
            ToolRequest::RunCommand { sandbox_id, .. }
            | ToolRequest::CloseSandbox { sandbox_id }
            | ToolRequest::RunCode { sandbox_id, .. }
            | ToolRequest::WriteFile { sandbox_id, .. }
            | ToolRequest::ReadFile { sandbox_id, .. }
            | ToolRequest::ListFiles { sandbox_id, .. } => sandbox_id.as_deref(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            ToolRequest::RunCommand { .. } => RUN_COMMAND,
            ToolRequest::CloseSandbox { .. } => CLOSE_SANDBOX,
            ToolRequest::RunCode { .. } => RUN_CODE,
            ToolRequest::WriteFile { .. } => WRITE_FILE,
            ToolRequest::ReadFile { .. } => READ_FILE,
            ToolRequest::ListFiles { .. } => LIST_FILES,
        }
    }
}

/// A checked call, or a protocol error (`Err(Err(..))`), or an argument the model must fix
/// (`Err(Ok(message))`, answered as a tool error).
pub type Checked = Result<ToolRequest, Result<String, RpcError>>;

/// Checks the `params` of a `tools/call`.
pub fn parse_call(params: &Map<String, Value>, features: Features) -> Checked {
    let name = match params.get("name") {
        Some(Value::String(name)) => name.as_str(),
        Some(other) => {
            return Err(Err(RpcError::invalid_params(format!(
                "tools/call: \"name\" must be a string, got {}",
                shown(other)
            ))))
        }
        None => return Err(Err(RpcError::invalid_params("tools/call needs a \"name\""))),
    };
    let empty = Map::new();
    let arguments = match params.get("arguments") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(arguments)) => arguments,
        Some(other) => {
            return Err(Err(RpcError::invalid_params(format!(
                "tools/call: \"arguments\" must be an object, got {}",
                shown(other)
            ))))
        }
    };
    let offered = features.names();
    let known: &[&str] = match name {
        RUN_COMMAND => &["command", "timeout_s", "cwd", "sandbox_id"],
        CLOSE_SANDBOX => &["sandbox_id"],
        RUN_CODE if offered.contains(&RUN_CODE) => &["code", "timeout_s", "sandbox_id"],
        WRITE_FILE if offered.contains(&WRITE_FILE) => {
            &["path", "content", "encoding", "sandbox_id"]
        }
        READ_FILE if offered.contains(&READ_FILE) => &["path", "encoding", "sandbox_id"],
        LIST_FILES if offered.contains(&LIST_FILES) => &["path", "depth", "sandbox_id"],
        other => {
            return Err(Err(RpcError::invalid_params(format!(
                "unknown tool {}; the tools are {}",
                shown(&Value::from(other)),
                offered.join(", ")
            ))))
        }
    };
    arguments_of(name, known, arguments).map_err(Ok)
}

fn arguments_of(
    name: &str,
    known: &[&str],
    arguments: &Map<String, Value>,
) -> Result<ToolRequest, String> {
    if let Some(unknown) = arguments.keys().find(|key| !known.contains(&key.as_str())) {
        return Err(format!(
            "{name} has no argument {}; its arguments are {}",
            shown(&Value::from(unknown.as_str())),
            known.join(", ")
        ));
    }
    let text = |key: &str| -> Result<Option<String>, String> {
        match arguments.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(format!("{key} must be a string, got {}", shown(other))),
        }
    };
    let sandbox_id = text("sandbox_id")?;
    if let Some(id) = &sandbox_id {
        if SandboxId::parse(id).is_none() {
            return Err(format!(
                "sandbox_id must be a sandbox id (32 hexadecimal digits, as an earlier result's sandbox_id), got {}",
                shown(&Value::from(id.as_str()))
            ));
        }
    }
    match name {
        RUN_COMMAND => {
            let command = text("command")?.ok_or("run_command needs a \"command\" (a string)")?;
            let timeout_s = timeout(arguments)?;
            Ok(ToolRequest::RunCommand {
                command,
                timeout_s,
                cwd: text("cwd")?,
                sandbox_id,
            })
        }
        RUN_CODE => Ok(ToolRequest::RunCode {
            code: text("code")?.ok_or("run_code needs \"code\" (a string of Python)")?,
            timeout_s: timeout(arguments)?,
            sandbox_id,
        }),
        WRITE_FILE => {
            let path = text("path")?.ok_or("write_file needs a \"path\"")?;
            let content = text("content")?.ok_or("write_file needs \"content\" (a string)")?;
            let encoding = Encoding::parse(text("encoding")?.as_deref())?;
            let content = match encoding {
                Encoding::Utf8 => content.into_bytes(),
                Encoding::Base64 => base64_decode(&content)
                    .ok_or("content is not valid base64 (encoding is \"base64\")")?,
            };
            if content.len() > MAX_WRITE_BYTES {
                return Err(format!(
                    "content is {} bytes; write_file takes at most {MAX_WRITE_BYTES} per call (append the rest with run_command, or write it in parts)",
                    content.len()
                ));
            }
            Ok(ToolRequest::WriteFile {
                path,
                content,
                sandbox_id,
            })
        }
        READ_FILE => Ok(ToolRequest::ReadFile {
            path: text("path")?.ok_or("read_file needs a \"path\"")?,
            encoding: Encoding::parse(text("encoding")?.as_deref())?,
            sandbox_id,
        }),
        LIST_FILES => {
            let depth = match arguments.get("depth") {
                None | Some(Value::Null) => 1,
                Some(value) => value
                    .as_u64()
                    .filter(|depth| (1..=10).contains(depth))
                    .ok_or_else(|| {
                        format!(
                            "depth must be an integer from 1 to 10, got {}",
                            shown(value)
                        )
                    })?,
            };
            Ok(ToolRequest::ListFiles {
                path: text("path")?.unwrap_or_else(|| "/root".into()),
                depth,
                sandbox_id,
            })
        }
        _ => Ok(ToolRequest::CloseSandbox { sandbox_id }),
    }
}

/// `timeout_s`, if given: a number of seconds above 0.
fn timeout(arguments: &Map<String, Value>) -> Result<Option<f64>, String> {
    match arguments.get("timeout_s") {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_f64() {
            Some(seconds) if seconds > 0.0 && seconds.is_finite() => Ok(Some(seconds)),
            _ => Err(format!(
                "timeout_s must be a number of seconds above 0, got {}",
                shown(value)
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Features = Features {
        code_interpreter: true,
        files: true,
    };

    const BASIC: Features = Features {
        code_interpreter: false,
        files: false,
    };

    fn call(value: Value) -> Checked {
        parse_call(value.as_object().unwrap(), BASIC)
    }

    #[test]
    fn every_tool_has_a_schema_a_description_and_an_output_schema() {
        let tools = list(ALL);
        let names: Vec<&str> = tools
            .as_array()
            .unwrap()
            .iter()
            .map(|tool| {
                assert!(tool["description"].as_str().unwrap().len() > 40);
                assert_eq!(tool["inputSchema"]["type"], "object");
                assert!(
                    tool["inputSchema"]["properties"]["sandbox_id"].is_object(),
                    "{tool}"
                );
                if let Some(output) = tool.get("outputSchema") {
                    let required = output["required"].as_array().unwrap();
                    assert!(required.contains(&json!("sandbox_id")), "{tool}");
                }
                tool["name"].as_str().unwrap()
            })
            .collect();
        assert_eq!(names, ALL.names());
        assert_eq!(
            ALL.names(),
            [
                RUN_COMMAND,
                RUN_CODE,
                WRITE_FILE,
                READ_FILE,
                LIST_FILES,
                CLOSE_SANDBOX
            ]
        );
        let offered = list(Features::AVAILABLE);
        assert_eq!(
            offered.as_array().unwrap().len(),
            Features::AVAILABLE.names().len()
        );
    }

    #[test]
    fn arguments_are_checked_with_messages_a_model_can_act_on() {
        assert_eq!(
            call(json!({"name": "run_command", "arguments": {"command": "ls", "timeout_s": 2}})),
            Ok(ToolRequest::RunCommand {
                command: "ls".into(),
                timeout_s: Some(2.0),
                cwd: None,
                sandbox_id: None
            })
        );
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            call(json!({"name": "close_sandbox", "arguments": {"sandbox_id": id}})),
            Ok(ToolRequest::CloseSandbox {
                sandbox_id: Some(id.into())
            })
        );
        assert_eq!(
            call(json!({"name": "close_sandbox"})),
            Ok(ToolRequest::CloseSandbox { sandbox_id: None })
        );
        for (arguments, message) in [
            (json!({}), "run_command needs a \"command\" (a string)"),
            (json!({"command": 1}), "command must be a string, got 1"),
            (json!({"command": "x", "timeout_s": 0}), "timeout_s must be a number of seconds above 0, got 0"),
            (json!({"command": "x", "timeout_s": "5"}), "timeout_s must be a number of seconds above 0, got \"5\""),
            (json!({"command": "x", "cmd": "y"}), "run_command has no argument \"cmd\"; its arguments are command, timeout_s, cwd, sandbox_id"),
            (json!({"command": "x", "sandbox_id": "../etc"}), "sandbox_id must be a sandbox id (32 hexadecimal digits, as an earlier result's sandbox_id), got \"../etc\""),
        ] {
            assert_eq!(
                call(json!({"name": "run_command", "arguments": arguments})),
                Err(Ok(message.to_string()))
            );
        }
        for (params, message) in [
            (json!({}), "tools/call needs a \"name\""),
            (
                json!({"name": 3}),
                "tools/call: \"name\" must be a string, got 3",
            ),
            (
                json!({"name": "rm_rf"}),
                "unknown tool \"rm_rf\"; the tools are run_command, close_sandbox",
            ),
            (
                json!({"name": "run_command", "arguments": [1]}),
                "tools/call: \"arguments\" must be an object, got [1]",
            ),
        ] {
            assert_eq!(call(params), Err(Err(RpcError::invalid_params(message))));
        }
    }

    #[test]
    fn code_and_file_tools_are_checked_and_offered_only_with_their_feature() {
        let all = |value: Value| parse_call(value.as_object().unwrap(), ALL);
        assert_eq!(
            all(json!({"name": "run_code", "arguments": {"code": "1+1", "timeout_s": 3}})),
            Ok(ToolRequest::RunCode {
                code: "1+1".into(),
                timeout_s: Some(3.0),
                sandbox_id: None
            })
        );
        assert_eq!(
            all(
                json!({"name": "write_file", "arguments": {"path": "a", "content": "AP8=", "encoding": "base64"}})
            ),
            Ok(ToolRequest::WriteFile {
                path: "a".into(),
                content: vec![0, 255],
                sandbox_id: None
            })
        );
        assert_eq!(
            all(json!({"name": "list_files", "arguments": {}})),
            Ok(ToolRequest::ListFiles {
                path: "/root".into(),
                depth: 1,
                sandbox_id: None
            })
        );
        for (params, message) in [
            (
                json!({"name": "run_code", "arguments": {}}),
                "run_code needs \"code\" (a string of Python)",
            ),
            (
                json!({"name": "write_file", "arguments": {"path": "a", "content": "!", "encoding": "base64"}}),
                "content is not valid base64 (encoding is \"base64\")",
            ),
            (
                json!({"name": "read_file", "arguments": {"path": "a", "encoding": "latin-1"}}),
                "encoding must be \"utf-8\" or \"base64\", got \"latin-1\"",
            ),
            (
                json!({"name": "list_files", "arguments": {"depth": 11}}),
                "depth must be an integer from 1 to 10, got 11",
            ),
        ] {
            assert_eq!(all(params), Err(Ok(message.to_string())));
        }
        let too_big = "x".repeat(MAX_WRITE_BYTES + 1);
        let Err(Ok(message)) =
            all(json!({"name": "write_file", "arguments": {"path": "a", "content": too_big}}))
        else {
            panic!("a write over the limit passed")
        };
        assert!(
            message.starts_with("content is 1048577 bytes; write_file takes at most 1048576"),
            "{message}"
        );
        assert_eq!(
            call(json!({"name": "run_code", "arguments": {"code": "1"}})),
            Err(Err(RpcError::invalid_params(
                "unknown tool \"run_code\"; the tools are run_command, close_sandbox"
            )))
        );
    }
}
