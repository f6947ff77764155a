//! The tools a model sees: their names, JSON Schemas and descriptions (written for a model to
//! read), and the checked arguments of a `tools/call` ([`ToolRequest`]).
//!
//! A wrong tool name or a `params` of the wrong shape is a protocol error (`-32602`); a wrong
//! argument is a tool error (`isError: true`, the MCP revision 2025-11-25 rule), so that the
//! model reads what to fix.

use serde_json::{json, Map, Value};

use super::jsonrpc::{shown, RpcError};
use crate::ids::SandboxId;

pub const RUN_COMMAND: &str = "run_command";
pub const CLOSE_SANDBOX: &str = "close_sandbox";
pub const NAMES: [&str; 2] = [RUN_COMMAND, CLOSE_SANDBOX];

const SANDBOX_ID_DESCRIPTION: &str = "The sandbox to use, as returned in `sandbox_id` by an \
earlier call. Omit it to use this session's sandbox (created at the first call); a client \
without a session gets a new sandbox and should pass its id on to later calls.";

/// What `tools/list` returns in `tools`.
pub fn list() -> Value {
    json!([
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
    ])
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
}

impl ToolRequest {
    pub fn sandbox_id(&self) -> Option<&str> {
        match self {
            ToolRequest::RunCommand { sandbox_id, .. }
            | ToolRequest::CloseSandbox { sandbox_id } => sandbox_id.as_deref(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            ToolRequest::RunCommand { .. } => RUN_COMMAND,
            ToolRequest::CloseSandbox { .. } => CLOSE_SANDBOX,
        }
    }
}

/// A checked call, or a protocol error (`Err(Err(..))`), or an argument the model must fix
/// (`Err(Ok(message))`, answered as a tool error).
pub type Checked = Result<ToolRequest, Result<String, RpcError>>;

/// Checks the `params` of a `tools/call`.
pub fn parse_call(params: &Map<String, Value>) -> Checked {
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
    let known: &[&str] = match name {
        RUN_COMMAND => &["command", "timeout_s", "cwd", "sandbox_id"],
        CLOSE_SANDBOX => &["sandbox_id"],
        other => {
            return Err(Err(RpcError::invalid_params(format!(
                "unknown tool {}; the tools are {}",
                shown(&Value::from(other)),
                NAMES.join(", ")
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
            let timeout_s = match arguments.get("timeout_s") {
                None | Some(Value::Null) => None,
                Some(value) => match value.as_f64() {
                    Some(seconds) if seconds > 0.0 && seconds.is_finite() => Some(seconds),
                    _ => {
                        return Err(format!(
                            "timeout_s must be a number of seconds above 0, got {}",
                            shown(value)
                        ))
                    }
                },
            };
            Ok(ToolRequest::RunCommand {
                command,
                timeout_s,
                cwd: text("cwd")?,
                sandbox_id,
            })
        }
        _ => Ok(ToolRequest::CloseSandbox { sandbox_id }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(value: Value) -> Checked {
        parse_call(value.as_object().unwrap())
    }

    #[test]
    fn every_tool_has_a_schema_a_description_and_an_output_schema() {
        let tools = list();
        let names: Vec<&str> = tools
            .as_array()
            .unwrap()
            .iter()
            .map(|tool| {
                assert!(tool["description"].as_str().unwrap().len() > 40);
                assert_eq!(tool["inputSchema"]["type"], "object");
                assert_eq!(tool["outputSchema"]["type"], "object");
                let required = tool["outputSchema"]["required"].as_array().unwrap();
                assert!(required.contains(&json!("sandbox_id")), "{tool}");
                tool["name"].as_str().unwrap()
            })
            .collect();
        assert_eq!(names, NAMES);
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
}
