//! The MCP endpoint `/mcp` against the real server and runsc, with raw HTTP: both revisions of
//! the Streamable HTTP transport, sandboxes that keep their state between calls, sessions kept
//! apart, DELETE and the idle timeout freeing sandboxes, cancellation, API key ownership, and
//! malformed input answered while the server keeps serving. (The official SDK clients are
//! tested against the same server by clients/python/tests/test_mcp.py and clients/js.)

mod common;

use std::time::Duration;

use common::{wait_until, Client, Response, TestServer, IO_TIMEOUT};
use serde_json::{json, Value};

const MODERN: &str = "2026-07-28";

/// One POST to /mcp on a new connection, with extra headers.
fn post(server: &TestServer, headers: &[(&str, &str)], body: &str) -> Response {
    let mut client = server.connect();
    client.send(&post_bytes(headers, body));
    client.read_response().expect("a response from /mcp")
}

fn post_bytes(headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut text = String::from("POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nConnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    text.into_bytes()
}

fn rpc(id: u64, method: &str, params: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
}

fn meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {}
    })
}

/// A single-exchange `tools/call` (its answer's JSON-RPC `result`).
fn modern_call(server: &TestServer, name: &str, arguments: Value) -> Value {
    let body = rpc(
        1,
        "tools/call",
        json!({"name": name, "arguments": arguments, "_meta": meta()}),
    );
    let response = post(
        server,
        &[
            ("MCP-Protocol-Version", MODERN),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", name),
        ],
        &body,
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let answer = response.json();
    assert_eq!(answer["result"]["resultType"], "complete", "{answer}");
    answer["result"].clone()
}

/// A handshake session: its id.
fn initialize(server: &TestServer, extra: &[(&str, &str)]) -> String {
    let body = rpc(
        0,
        "initialize",
        json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}),
    );
    let response = post(server, extra, &body);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["result"]["protocolVersion"], "2025-11-25");
    let session = response
        .header("mcp-session-id")
        .expect("a session id")
        .to_string();
    assert_eq!(session.len(), 32, "128 random bits in hex: {session}");
    let mut headers = vec![("Mcp-Session-Id", session.as_str())];
    headers.extend_from_slice(extra);
    let initialized = post(
        server,
        &headers,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    assert_eq!(initialized.status, 202);
    session
}

fn session_call(server: &TestServer, session: &str, name: &str, arguments: Value) -> Value {
    let body = rpc(
        2,
        "tools/call",
        json!({"name": name, "arguments": arguments}),
    );
    let response = post(
        server,
        &[
            ("Mcp-Session-Id", session),
            ("MCP-Protocol-Version", "2025-11-25"),
        ],
        &body,
    );
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["result"].clone()
}

fn sessions_metric(server: &TestServer) -> f64 {
    server.metric("sandbox_sessions").unwrap_or(-1.0)
}

#[test]
fn a_handshake_session_owns_one_sandbox_until_delete() {
    let server = TestServer::start(&[]);
    let session = initialize(&server, &[]);
    let list = post(
        &server,
        &[("Mcp-Session-Id", &session)],
        &rpc(1, "tools/list", json!({})),
    );
    let names: Vec<Value> = list.json()["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|tool| tool["name"].clone())
        .collect();
    // What this build offers: run_command and close_sandbox, with run_code (issue 13) and the
    // file tools (issue 14) in between where the sessions speak them.
    let offered: Vec<Value> = sandbox::mcp::tools::Features::AVAILABLE
        .names()
        .into_iter()
        .map(Value::from)
        .collect();
    assert_eq!(names, offered);
    assert_eq!(names.first(), Some(&json!("run_command")));
    assert_eq!(names.last(), Some(&json!("close_sandbox")));

    let first = session_call(
        &server,
        &session,
        "run_command",
        json!({"command": "echo kept > /root/state; echo out; echo err >&2; exit 3"}),
    );
    assert_eq!(first["isError"], false, "{first}");
    let structured = &first["structuredContent"];
    assert_eq!(
        (
            structured["exit_code"].clone(),
            structured["stdout"].clone(),
            structured["stderr"].clone()
        ),
        (json!(3), json!("out\n"), json!("err\n"))
    );
    let sandbox_id = structured["sandbox_id"]
        .as_str()
        .expect("sandbox_id")
        .to_string();
    assert!(first["content"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with("exit code 3"));

    let second = session_call(
        &server,
        &session,
        "run_command",
        json!({"command": "cat /root/state", "cwd": "/tmp"}),
    );
    assert_eq!(
        second["structuredContent"]["stdout"], "kept\n",
        "state across calls: {second}"
    );
    assert_eq!(
        second["structuredContent"]["sandbox_id"],
        sandbox_id.as_str()
    );

    // Another session has a sandbox of its own.
    let other = initialize(&server, &[]);
    let isolated = session_call(
        &server,
        &other,
        "run_command",
        json!({"command": "cat /root/state"}),
    );
    assert_ne!(isolated["structuredContent"]["exit_code"], 0, "{isolated}");
    assert_ne!(
        isolated["structuredContent"]["sandbox_id"],
        sandbox_id.as_str()
    );
    assert_eq!(sessions_metric(&server), 2.0);
    assert_eq!(server.metric("sandbox_mcp_sessions"), Some(2.0));
    assert_eq!(server.metric("sandbox_mcp_sandboxes"), Some(2.0));

    // DELETE ends the session and frees its sandbox; the id is unknown from then on.
    let mut client = server.connect();
    client.send(format!("DELETE /mcp HTTP/1.1\r\nHost: t\r\nMcp-Session-Id: {session}\r\nConnection: close\r\n\r\n").as_bytes());
    assert_eq!(client.read_response().unwrap().status, 200);
    assert!(
        wait_until(IO_TIMEOUT, || sessions_metric(&server) == 1.0
            && server.metric("sandbox_mcp_sandboxes") == Some(1.0)
            && server.metric("sandbox_mcp_sessions") == Some(1.0)),
        "the sandbox was not freed"
    );
    let after = post(
        &server,
        &[("Mcp-Session-Id", &session)],
        &rpc(3, "tools/list", json!({})),
    );
    assert_eq!(after.status, 404, "{}", after.text());
    let gone = modern_call(
        &server,
        "run_command",
        json!({"command": "true", "sandbox_id": sandbox_id}),
    );
    assert_eq!(gone["isError"], true, "{gone}");
    assert!(gone["content"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with(&format!("no sandbox {sandbox_id}")));

    // close_sandbox frees the other one; the session's next call gets a fresh sandbox.
    let closed = session_call(&server, &other, "close_sandbox", json!({}));
    assert_eq!(closed["structuredContent"]["closed"], true, "{closed}");
    let fresh = modern_call(&server, "run_command", json!({"command": "true"}));
    assert_eq!(fresh["structuredContent"]["exit_code"], 0);
    server.assert_healthy();
}

#[test]
fn output_past_the_cap_is_in_a_file_the_result_names() {
    let server = TestServer::start(&[("SANDBOX_MCP_OUTPUT_BYTES", "1000")]);
    // About 15 MB: more than the spill may fall behind, so the command is paused meanwhile.
    let big = modern_call(
        &server,
        "run_command",
        json!({"command": "seq 1 2000000; echo done >&2"}),
    );
    let structured = &big["structuredContent"];
    assert_eq!(structured["exit_code"], 0, "{structured}");
    assert_eq!(structured["truncated"], true);
    assert_eq!(structured["stderr"], "done\n");
    let stdout = structured["stdout"].as_str().unwrap();
    assert!(stdout.starts_with("1\n2\n3\n"), "{stdout}");
    let path = stdout
        .split("all of it is in the file ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no file named: {stdout}"));
    assert!(path.starts_with("/tmp/mcp-output/"), "{path}");
    let sandbox_id = structured["sandbox_id"].as_str().unwrap();
    let check = modern_call(
        &server,
        "run_command",
        json!({"command": format!("wc -c < {path}; tail -n 1 {path}; seq 1 2000000 | cmp - {path} && echo same"), "sandbox_id": sandbox_id}),
    );
    assert_eq!(
        check["structuredContent"]["stdout"], "14888896\n2000000\nsame\n",
        "{check}"
    );
}

#[test]
fn single_exchange_calls_pass_their_sandbox_on_and_a_closed_stream_cancels() {
    let server = TestServer::start(&[]);
    let discover = post(
        &server,
        &[
            ("MCP-Protocol-Version", MODERN),
            ("Mcp-Method", "server/discover"),
        ],
        &rpc(1, "server/discover", json!({"_meta": meta()})),
    );
    assert_eq!(discover.status, 200, "{}", discover.text());
    assert_eq!(
        discover.json()["result"]["supportedVersions"],
        json!([MODERN])
    );
    assert!(discover.header("mcp-session-id").is_none());

    let created = modern_call(
        &server,
        "run_command",
        json!({"command": "echo 41 > /root/n"}),
    );
    let sandbox_id = created["structuredContent"]["sandbox_id"]
        .as_str()
        .unwrap()
        .to_string();
    let again = modern_call(
        &server,
        "run_command",
        json!({"command": "cat /root/n", "sandbox_id": sandbox_id}),
    );
    assert_eq!(again["structuredContent"]["stdout"], "41\n");

    // A long command with a progress token streams; closing the stream kills it.
    let body = rpc(
        5,
        "tools/call",
        json!({
            "name": "run_command",
            "arguments": {"command": "echo started; sleep 100; echo 42 > /root/n", "sandbox_id": sandbox_id},
            "_meta": {"progressToken": "p1", "io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
        }),
    );
    let mut client = server.connect();
    client.send(&post_bytes(
        &[
            ("MCP-Protocol-Version", MODERN),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "run_command"),
        ],
        &body,
    ));
    let head = client.read_head().unwrap();
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("started") {
        seen.extend(
            client
                .read_some()
                .expect("progress before the command ends"),
        );
    }
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(
        text.contains(r#""method":"notifications/progress""#)
            && text.contains(r#""progressToken":"p1""#),
        "{text}"
    );
    drop(client);
    assert!(
        wait_until(IO_TIMEOUT, || {
            let check = modern_call(
                &server,
                "run_command",
                json!({"command": "pgrep -x sleep || echo none", "sandbox_id": sandbox_id}),
            );
            check["structuredContent"]["stdout"] == "none\n"
        }),
        "the cancelled command still runs"
    );
    let kept = modern_call(
        &server,
        "run_command",
        json!({"command": "cat /root/n", "sandbox_id": sandbox_id}),
    );
    assert_eq!(
        kept["structuredContent"]["stdout"], "41\n",
        "state kept, command cut: {kept}"
    );
    let closed = modern_call(&server, "close_sandbox", json!({"sandbox_id": sandbox_id}));
    assert_eq!(
        closed["structuredContent"],
        json!({"sandbox_id": sandbox_id, "closed": true})
    );
    assert!(wait_until(IO_TIMEOUT, || sessions_metric(&server) == 0.0));
}

#[test]
fn notifications_cancelled_kills_the_command_of_a_handshake_call() {
    let server = TestServer::start(&[]);
    let session = initialize(&server, &[]);
    let body = rpc(
        9,
        "tools/call",
        json!({"name": "run_command", "arguments": {"command": "echo started; sleep 100"}, "_meta": {"progressToken": 9}}),
    );
    let mut client = server.connect();
    client.send(&post_bytes(&[("Mcp-Session-Id", &session)], &body));
    let head = client.read_head().unwrap();
    let mut stream = Vec::new();
    while !String::from_utf8_lossy(&stream).contains("started") {
        stream.extend(client.read_some().unwrap());
    }
    let cancel = post(
        &server,
        &[("Mcp-Session-Id", &session)],
        r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":9,"reason":"test"}}"#,
    );
    assert_eq!(cancel.status, 202);
    client
        .read_body_with(&head, |bytes| stream.extend_from_slice(bytes))
        .unwrap();
    let text = String::from_utf8_lossy(&stream).into_owned();
    assert!(text.contains(r#""reason":"killed""#), "{text}");
    let after = session_call(
        &server,
        &session,
        "run_command",
        json!({"command": "echo alive"}),
    );
    assert_eq!(after["structuredContent"]["stdout"], "alive\n");
}

#[test]
fn malformed_input_is_answered_while_the_server_keeps_serving() {
    let server = TestServer::start(&[("SANDBOX_MCP_ALLOWED_ORIGINS", "https://allowed.example")]);
    let parse_error = post(&server, &[], "{not json");
    assert_eq!(parse_error.status, 400);
    assert_eq!(parse_error.json()["error"]["code"], -32700);
    let batch = post(&server, &[], "[]");
    assert_eq!(
        (batch.status, batch.json()["error"]["code"].clone()),
        (400, json!(-32600))
    );
    let no_session = post(&server, &[], &rpc(1, "tools/list", json!({})));
    assert_eq!(no_session.status, 400);
    let session = initialize(&server, &[]);
    let unknown = post(
        &server,
        &[("Mcp-Session-Id", &session)],
        &rpc(2, "resources/list", json!({})),
    );
    assert_eq!(unknown.json()["error"]["code"], -32601);
    let bad_params = post(
        &server,
        &[("Mcp-Session-Id", &session)],
        &rpc(3, "tools/call", json!({"name": "nope"})),
    );
    assert_eq!(bad_params.json()["error"]["code"], -32602);
    let bad_argument = session_call(
        &server,
        &session,
        "run_command",
        json!({"command": "x", "timeout_s": -1}),
    );
    assert_eq!(bad_argument["isError"], true);
    let modern_no_meta = post(
        &server,
        &[("MCP-Protocol-Version", MODERN)],
        &rpc(4, "tools/list", json!({})),
    );
    assert_eq!(
        (
            modern_no_meta.status,
            modern_no_meta.json()["error"]["code"].clone()
        ),
        (400, json!(-32602))
    );
    let foreign = post(
        &server,
        &[("Origin", "http://evil.example")],
        &rpc(5, "tools/list", json!({})),
    );
    assert_eq!(foreign.status, 403);
    let allowed = post(
        &server,
        &[
            ("Origin", "https://allowed.example"),
            ("Mcp-Session-Id", &session),
        ],
        &rpc(6, "tools/list", json!({})),
    );
    assert_eq!(allowed.status, 200);
    let own = post(
        &server,
        &[("Origin", "http://127.0.0.1"), ("Mcp-Session-Id", &session)],
        &rpc(7, "tools/list", json!({})),
    );
    assert_eq!(own.status, 200, "the server's own origin (Host)");
    let get = server.get("/mcp");
    assert_eq!(
        (get.status, get.header("allow")),
        (405, Some("POST, DELETE"))
    );
    // Garbage bytes on a connection: that one is refused, everyone else is served.
    let mut garbage = Client::connect(server.port);
    garbage.send(b"POST /mcp HTTP/1.1\r\nContent-Length: zz\r\n\r\n");
    assert!(garbage
        .read_response()
        .map(|response| response.status >= 400)
        .unwrap_or(true));
    let works = session_call(
        &server,
        &session,
        "run_command",
        json!({"command": "echo still"}),
    );
    assert_eq!(works["structuredContent"]["stdout"], "still\n");
    server.assert_healthy();
}

#[test]
fn idle_sandboxes_are_deleted_and_sandboxes_answer_only_their_key() {
    let server = TestServer::start(&[
        ("SANDBOX_MCP_IDLE_TIMEOUT_SECS", "2"),
        ("SANDBOX_API_KEYS", "key-one-4b1e, key-two-99ac"),
        ("SANDBOX_POOL_SIZE", "0"),
    ]);
    let one = [
        ("Authorization", "Bearer key-one-4b1e"),
        ("MCP-Protocol-Version", MODERN),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", "run_command"),
    ];
    let two = [
        ("Authorization", "Bearer key-two-99ac"),
        ("MCP-Protocol-Version", MODERN),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", "run_command"),
    ];
    let call = |headers: &[(&str, &str)], arguments: Value| {
        let body = rpc(
            1,
            "tools/call",
            json!({"name": "run_command", "arguments": arguments, "_meta": meta()}),
        );
        post(&server, headers, &body).json()["result"].clone()
    };
    let created = call(&one, json!({"command": "echo mine"}));
    let sandbox_id = created["structuredContent"]["sandbox_id"]
        .as_str()
        .unwrap()
        .to_string();
    let stolen = call(
        &two,
        json!({"command": "echo theirs", "sandbox_id": sandbox_id}),
    );
    assert_eq!(
        stolen["isError"], true,
        "another key does not find it: {stolen}"
    );
    let owned = call(
        &one,
        json!({"command": "echo again", "sandbox_id": sandbox_id}),
    );
    assert_eq!(owned["structuredContent"]["stdout"], "again\n");
    let unauthorized = post(&server, &[], &rpc(1, "tools/list", json!({})));
    assert_eq!(unauthorized.status, 401);
    // Without calls for 2 s it is deleted: the metrics show it freed.
    assert!(
        wait_until(Duration::from_secs(30), || {
            let metrics = common::request(
                server.port,
                b"GET /metrics HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer key-one-4b1e\r\nConnection: close\r\n\r\n",
            )
            .text();
            metrics.lines().any(|line| line == "sandbox_sessions 0")
                && metrics.lines().any(|line| line == "sandbox_live 0")
        }),
        "the idle sandbox was not deleted"
    );
    let expired = call(&one, json!({"command": "true", "sandbox_id": sandbox_id}));
    assert_eq!(expired["isError"], true);
}
