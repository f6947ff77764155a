//! The MCP endpoint (`crate::mcp::endpoint`) on any sequence of requests.
//!
//! Input: requests separated by the byte 0xFE; each is fields separated by 0xFF: the method
//! (`P` POST, `D` DELETE, else GET), then the `Mcp-Session-Id`, `MCP-Protocol-Version`,
//! `Mcp-Method`, `Mcp-Name` and `Origin` headers (an empty field is an absent header), then the
//! body. Session ids are handed out as `s0`, `s1`, ... so that later requests can name them.
//! Checked: no panic; every answer has a status the transport uses; every JSON body is a
//! JSON-RPC 2.0 message, and an error has an integer code; only `initialize` hands out a
//! session id, and the sessions stay within their bound.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::mcp::endpoint::{Action, Endpoint, Request};
use crate::mcp::registry::Registry;

const MAX_SESSIONS: usize = 4;

pub fn run(data: &[u8]) {
    let mut endpoint = Endpoint::new(
        Registry::new(MAX_SESSIONS, Duration::from_secs(60)),
        vec!["https://allowed.example".into()],
        crate::mcp::tools::Features {
            code_interpreter: true,
            files: true,
        },
    );
    let now = Instant::now();
    let mut next_session = 0;
    for raw in data.split(|byte| *byte == 0xFE) {
        let fields: Vec<&[u8]> = raw.splitn(7, |byte| *byte == 0xFF).collect();
        let text = |index: usize| -> Option<String> {
            fields
                .get(index)
                .filter(|field| !field.is_empty())
                .map(|field| String::from_utf8_lossy(field).into_owned())
        };
        let method = match fields.first().and_then(|field| field.first()) {
            Some(b'P') => "POST",
            Some(b'D') => "DELETE",
            _ => "GET",
        };
        let (session, version, mcp_method, mcp_name, origin) =
            (text(1), text(2), text(3), text(4), text(5));
        let body = fields.get(6).copied().unwrap_or_default();
        let request = Request {
            method,
            body,
            session_id: session.as_deref(),
            protocol_version: version.as_deref(),
            mcp_method: mcp_method.as_deref(),
            mcp_name: mcp_name.as_deref(),
            origin: origin.as_deref(),
            host: Some("127.0.0.1:8080"),
            owner: None,
        };
        let mut handed_out = None;
        let action = endpoint.handle(
            &request,
            || {
                let id = format!("s{next_session}");
                handed_out = Some(id.clone());
                Ok(id)
            },
            now,
        );
        if handed_out.is_some() {
            next_session += 1;
        }
        match action {
            Action::Reply(reply) => {
                assert!(
                    [200, 202, 400, 403, 404, 405, 503].contains(&reply.status),
                    "status {}",
                    reply.status
                );
                if let Some(session) = &reply.session_id {
                    assert_eq!(
                        Some(session),
                        handed_out.as_ref(),
                        "a session id only from initialize"
                    );
                }
                if let Some(body) = &reply.body {
                    check_json_rpc(body);
                }
                assert_eq!(
                    reply.body.is_none(),
                    reply.status == 202,
                    "only 202 has no body"
                );
            }
            Action::Call(call) => {
                assert_eq!(method, "POST");
                assert!(call.rpc_id.is_string() || call.rpc_id.is_i64() || call.rpc_id.is_u64());
            }
            Action::EndSession(_) => assert_eq!(method, "DELETE"),
            Action::Cancel { .. } => assert_eq!(method, "POST"),
        }
        assert!(endpoint.registry.session_count() <= MAX_SESSIONS);
    }
}

fn check_json_rpc(body: &Value) {
    assert_eq!(body["jsonrpc"], "2.0", "{body}");
    match body.get("error") {
        Some(error) => {
            assert!(error["code"].is_i64(), "{body}");
            assert!(error["message"].is_string(), "{body}");
            assert!(body.get("result").is_none());
        }
        None => assert!(body.get("result").is_some(), "{body}"),
    }
}
