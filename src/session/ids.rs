//! The session's identifiers: which session, which process inside its sandbox, and which client
//! request a message or an event belongs to.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// A session of this server (small, never reused while the server runs). The runtime knows
/// sessions as the owners of sandboxes by this number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An execution inside a session's sandbox, as clients will address it (`process_id`,
/// docs/protocol design, issue 12): chosen by the session, positive, never reused by it.
/// Distinct from the runtime's `ExecId`, which names the execution towards the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ProcessId(pub u64);

impl fmt::Display for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The `id` a client may put on any message, echoed unchanged (same JSON type) on what answers
/// it: 1 to 64 printable ASCII characters, or an integer from 0 to 2^53 - 1 (what every JSON
/// reader represents exactly).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum RequestId {
    Text(String),
    Number(u64),
}

/// 2^53: the first integer a JavaScript number cannot tell from its neighbour.
const MAX_NUMBER_ID: u64 = 1 << 53;
const MAX_TEXT_ID_BYTES: usize = 64;

impl RequestId {
    /// The id of a message, if `value` is a valid one.
    pub fn parse(value: &Value) -> Option<RequestId> {
        match value {
            Value::String(text)
                if (1..=MAX_TEXT_ID_BYTES).contains(&text.len())
                    && text
                        .bytes()
                        .all(|byte| byte.is_ascii_graphic() || byte == b' ') =>
            {
                Some(RequestId::Text(text.clone()))
            }
            Value::Number(number) => number
                .as_u64()
                .filter(|number| *number < MAX_NUMBER_ID)
                .map(RequestId::Number),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_ids_are_short_printable_strings_or_exact_integers() {
        for (value, expected) in [
            (json!("7"), Some(RequestId::Text("7".into()))),
            (json!("a b~"), Some(RequestId::Text("a b~".into()))),
            (json!(0), Some(RequestId::Number(0))),
            (
                json!(9007199254740991u64),
                Some(RequestId::Number((1 << 53) - 1)),
            ),
            (json!(9007199254740992u64), None),
            (json!(-1), None),
            (json!(1.5), None),
            (json!(""), None),
            (json!("x".repeat(65)), None),
            (json!("tab\there"), None),
            (json!("é"), None),
            (json!(null), None),
            (json!(["1"]), None),
        ] {
            assert_eq!(RequestId::parse(&value), expected, "{value}");
        }
        assert_eq!(json!(RequestId::Number(7)), json!(7));
        assert_eq!(json!(RequestId::Text("7".into())), json!("7"));
    }
}
