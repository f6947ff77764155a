//! JSON-RPC 2.0 as MCP uses it: one message per HTTP body, decoded into [`Incoming`], and the
//! answers ([`response`], [`error_response`], [`notification`]) built as JSON values. Error
//! codes are the JSON-RPC ones plus MCP's; every error message names what was wrong.

use serde_json::{json, Map, Value};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// MCP (2026-07-28): an `MCP-Protocol-Version`, `Mcp-Method` or `Mcp-Name` header that does
/// not match the body.
pub const HEADER_MISMATCH: i64 = -32020;
/// MCP (2026-07-28): a protocol version this server does not speak.
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

/// An error object of a JSON-RPC response.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        RpcError::new(INVALID_PARAMS, message)
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    fn to_value(&self) -> Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(data) = &self.data {
            error["data"] = data.clone();
        }
        error
    }
}

/// One message a client posted.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A request: it gets exactly one response with its `id`.
    Request {
        id: Value,
        method: String,
        params: Map<String, Value>,
    },
    /// A notification (no `id`): nothing answers it.
    Notification {
        method: String,
        params: Map<String, Value>,
    },
    /// A response to a request of ours (we send none): accepted and ignored.
    Response,
}

/// Why a body is not one message: the error to answer with, and the request id if one could
/// be read (JSON-RPC answers `"id": null` otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub id: Option<Value>,
    pub error: RpcError,
}

/// A JSON-RPC request id: a string or an integer (MCP allows no `null` and no fraction).
fn valid_id(id: &Value) -> bool {
    id.is_string() || id.is_i64() || id.is_u64()
}

/// A value quoted in an error message, bounded.
pub fn shown(value: &Value) -> String {
    let text = value.to_string();
    if text.len() <= 80 {
        return text;
    }
    let mut end = 77;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// Decodes one POST body.
pub fn parse(body: &[u8]) -> Result<Incoming, Rejected> {
    let reject = |id: Option<Value>, code, message: String| {
        Err(Rejected {
            id,
            error: RpcError::new(code, message),
        })
    };
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(error) => return reject(None, PARSE_ERROR, format!("Parse error: {error}")),
    };
    let Value::Object(mut message) = value else {
        let what = if value.is_array() {
            "a batch (a JSON array): post one JSON-RPC message per request".to_string()
        } else {
            format!("not a JSON-RPC message object: {}", shown(&value))
        };
        return reject(None, INVALID_REQUEST, what);
    };
    let id = message.remove("id");
    if let Some(id) = &id {
        if !valid_id(id) {
            return reject(
                None,
                INVALID_REQUEST,
                format!("\"id\" must be a string or an integer, got {}", shown(id)),
            );
        }
    }
    if message.get("jsonrpc") != Some(&Value::from("2.0")) {
        let got = message.get("jsonrpc").map_or("nothing".into(), shown);
        return reject(
            id,
            INVALID_REQUEST,
            format!("\"jsonrpc\" must be \"2.0\", got {got}"),
        );
    }
    if message.contains_key("result") || message.contains_key("error") {
        return match id {
            Some(_) if !message.contains_key("method") => Ok(Incoming::Response),
            _ => reject(
                id,
                INVALID_REQUEST,
                "a response must have an \"id\" and no \"method\"".into(),
            ),
        };
    }
    let method = match message.remove("method") {
        Some(Value::String(method)) => method,
        Some(other) => {
            return reject(
                id,
                INVALID_REQUEST,
                format!("\"method\" must be a string, got {}", shown(&other)),
            )
        }
        None => return reject(id, INVALID_REQUEST, "missing \"method\"".into()),
    };
    let params = match message.remove("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(params)) => params,
        Some(other) => {
            let rejected = Rejected {
                id,
                error: RpcError::invalid_params(format!(
                    "\"params\" must be an object, got {}",
                    shown(&other)
                )),
            };
            return Err(rejected);
        }
    };
    Ok(match id {
        Some(id) => Incoming::Request { id, method, params },
        None => Incoming::Notification { method, params },
    })
}

/// A successful response.
pub fn response(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// An error response (`id: null` when the request's id could not be read).
pub fn error_response(id: Option<&Value>, error: &RpcError) -> Value {
    json!({"jsonrpc": "2.0", "id": id.cloned().unwrap_or(Value::Null), "error": error.to_value()})
}

/// A notification from the server.
pub fn notification(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(body: &str) -> (Option<Value>, i64, String) {
        let error = parse(body.as_bytes()).unwrap_err();
        (error.id, error.error.code, error.error.message)
    }

    #[test]
    fn requests_notifications_and_responses_are_told_apart() {
        assert_eq!(
            parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#),
            Ok(Incoming::Request {
                id: json!(1),
                method: "tools/list".into(),
                params: Map::new()
            })
        );
        let Ok(Incoming::Notification { method, params }) = parse(
            br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"a"}}"#,
        ) else {
            panic!("not a notification")
        };
        assert_eq!(method, "notifications/cancelled");
        assert_eq!(params["requestId"], json!("a"));
        assert_eq!(
            parse(br#"{"jsonrpc":"2.0","id":"x","result":{}}"#),
            Ok(Incoming::Response)
        );
    }

    #[test]
    fn malformed_bodies_get_the_error_that_names_the_problem() {
        let (id, code, message) = rejected("{not json");
        assert_eq!((id, code), (None, PARSE_ERROR));
        assert!(message.starts_with("Parse error: "), "{message}");
        assert_eq!(rejected("[]").1, INVALID_REQUEST);
        assert!(rejected("[]").2.contains("batch"));
        assert_eq!(rejected("3").1, INVALID_REQUEST);
        let (id, code, message) = rejected(r#"{"jsonrpc":"1.0","id":7,"method":"x"}"#);
        assert_eq!((id, code), (Some(json!(7)), INVALID_REQUEST));
        assert_eq!(message, "\"jsonrpc\" must be \"2.0\", got \"1.0\"");
        let (id, code, message) = rejected(r#"{"jsonrpc":"2.0","id":null,"method":"x"}"#);
        assert_eq!((id, code), (None, INVALID_REQUEST));
        assert_eq!(message, "\"id\" must be a string or an integer, got null");
        assert_eq!(
            rejected(r#"{"jsonrpc":"2.0","id":1.5,"method":"x"}"#).1,
            INVALID_REQUEST
        );
        let (_, code, message) = rejected(r#"{"jsonrpc":"2.0","id":1,"method":5}"#);
        assert_eq!(code, INVALID_REQUEST);
        assert_eq!(message, "\"method\" must be a string, got 5");
        let (id, code, message) =
            rejected(r#"{"jsonrpc":"2.0","id":"q","method":"m","params":[1]}"#);
        assert_eq!((id, code), (Some(json!("q")), INVALID_PARAMS));
        assert_eq!(message, "\"params\" must be an object, got [1]");
    }

    #[test]
    fn answers_are_json_rpc() {
        assert_eq!(
            error_response(None, &RpcError::new(PARSE_ERROR, "Parse error")),
            json!({"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}})
        );
        let error = RpcError::new(UNSUPPORTED_PROTOCOL_VERSION, "no").with_data(json!({"a": 1}));
        assert_eq!(
            error_response(Some(&json!("i")), &error)["error"]["data"],
            json!({"a": 1})
        );
        assert_eq!(response(&json!(2), json!({}))["id"], json!(2));
        assert_eq!(shown(&json!("x".repeat(200))).len(), 80);
    }
}
