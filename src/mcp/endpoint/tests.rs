use std::time::Duration;

use super::*;

fn endpoint() -> Endpoint {
    Endpoint::new(
        Registry::new(8, Duration::from_secs(60)),
        vec!["https://playground.example".into()],
        // The tools without the code interpreter and files: what the messages below name.
        Features {
            code_interpreter: false,
            files: false,
        },
    )
}

fn post(body: &str) -> Request<'_> {
    Request {
        method: "POST",
        body: body.as_bytes(),
        host: Some("127.0.0.1:8080"),
        ..Request::default()
    }
}

fn act(endpoint: &mut Endpoint, request: &Request) -> Action {
    endpoint.handle(request, || Ok("sid-1".to_string()), Instant::now())
}

fn reply(action: Action) -> Reply {
    match action {
        Action::Reply(reply) => reply,
        other => panic!("not a reply: {other:?}"),
    }
}

const MODERN_META: &str = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}"#;

fn modern<'a>(body: &'a str, method: &'a str) -> Request<'a> {
    Request {
        protocol_version: Some("2026-07-28"),
        mcp_method: Some(method),
        ..post(body)
    }
}

#[test]
fn the_handshake_gives_a_session_that_later_requests_need() {
    let mut endpoint = endpoint();
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let answer = reply(act(&mut endpoint, &post(init)));
    assert_eq!(answer.status, 200);
    assert_eq!(answer.session_id.as_deref(), Some("sid-1"));
    let body = answer.body.unwrap();
    assert_eq!(body["result"]["protocolVersion"], "2025-06-18");
    assert_eq!(
        body["result"]["capabilities"]["tools"]["listChanged"],
        false
    );
    assert_eq!(body["result"]["serverInfo"]["name"], SERVER_NAME);

    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let missing = reply(act(&mut endpoint, &post(list)));
    assert_eq!(missing.status, 400);
    assert!(missing.body.unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Mcp-Session-Id"));
    let unknown = Request {
        session_id: Some("nope"),
        ..post(list)
    };
    assert_eq!(reply(act(&mut endpoint, &unknown)).status, 404);
    let in_session = Request {
        session_id: Some("sid-1"),
        protocol_version: Some("2025-06-18"),
        ..post(list)
    };
    let tools = reply(act(&mut endpoint, &in_session)).body.unwrap();
    assert_eq!(tools["id"], 2);
    assert_eq!(tools["result"]["tools"][0]["name"], "run_command");
    assert!(
        tools["result"].get("resultType").is_none(),
        "handshake results are plain"
    );

    let initialized = Request {
        session_id: Some("sid-1"),
        ..post(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
    };
    assert_eq!(reply(act(&mut endpoint, &initialized)), Reply::empty(202));
    let cancel = Request {
        session_id: Some("sid-1"),
        ..post(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":7}}"#)
    };
    assert_eq!(
        act(&mut endpoint, &cancel),
        Action::Cancel {
            session: "sid-1".into(),
            request: json!(7)
        }
    );

    let call = Request {
        session_id: Some("sid-1"),
        ..post(
            r#"{"jsonrpc":"2.0","id":"c","method":"tools/call","params":{"name":"run_command","arguments":{"command":"ls"},"_meta":{"progressToken":"p"}}}"#,
        )
    };
    let Action::Call(call) = act(&mut endpoint, &call) else {
        panic!("not a call")
    };
    assert_eq!(call.session.as_deref(), Some("sid-1"));
    assert_eq!(call.progress_token, Some(json!("p")));
    assert_eq!(call.era, Era::Handshake);

    let delete = Request {
        method: "DELETE",
        session_id: Some("sid-1"),
        ..Request::default()
    };
    assert_eq!(act(&mut endpoint, &delete), Action::EndSession(None));
    assert_eq!(reply(act(&mut endpoint, &delete)).status, 404, "ended: 404");
    assert_eq!(reply(act(&mut endpoint, &in_session)).status, 404);
}

#[test]
fn sessions_belong_to_the_key_that_opened_them() {
    let mut endpoint = endpoint();
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;
    let keyed = Request {
        owner: Some("digest-a"),
        ..post(init)
    };
    reply(act(&mut endpoint, &keyed));
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let other = Request {
        session_id: Some("sid-1"),
        owner: Some("digest-b"),
        ..post(list)
    };
    assert_eq!(reply(act(&mut endpoint, &other)).status, 404);
    let same = Request {
        session_id: Some("sid-1"),
        owner: Some("digest-a"),
        ..post(list)
    };
    assert_eq!(reply(act(&mut endpoint, &same)).status, 200);
}

#[test]
fn malformed_input_gets_the_json_rpc_error_and_status_it_calls_for() {
    let mut endpoint = endpoint();
    let parse_error = reply(act(&mut endpoint, &post("{oops")));
    assert_eq!(parse_error.status, 400);
    let body = parse_error.body.unwrap();
    assert_eq!(body["error"]["code"], jsonrpc::PARSE_ERROR);
    assert_eq!(body["id"], Value::Null);
    let batch = reply(act(&mut endpoint, &post("[]")));
    assert_eq!(
        (batch.status, batch.body.unwrap()["error"]["code"].clone()),
        (400, json!(jsonrpc::INVALID_REQUEST))
    );

    reply(act(
        &mut endpoint,
        &post(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#),
    ));
    let in_session = |body: &'static str| Request {
        session_id: Some("sid-1"),
        ..post(body)
    };
    let unknown = reply(act(
        &mut endpoint,
        &in_session(r#"{"jsonrpc":"2.0","id":3,"method":"resources/list"}"#),
    ));
    assert_eq!(
        unknown.status, 200,
        "handshake: errors of well-formed requests come with 200"
    );
    assert_eq!(
        unknown.body.unwrap()["error"]["code"],
        jsonrpc::METHOD_NOT_FOUND
    );
    let no_tool = reply(act(
        &mut endpoint,
        &in_session(r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"nope"}}"#),
    ));
    let body = no_tool.body.unwrap();
    assert_eq!(body["error"]["code"], jsonrpc::INVALID_PARAMS);
    assert_eq!(
        body["error"]["message"],
        "unknown tool \"nope\"; the tools are run_command, close_sandbox"
    );
    let bad_argument = reply(act(
        &mut endpoint,
        &in_session(
            r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"run_command","arguments":{}}}"#,
        ),
    ));
    let body = bad_argument.body.unwrap();
    assert_eq!(
        body["result"]["isError"], true,
        "a wrong argument is a tool error the model reads"
    );
    assert_eq!(
        body["result"]["content"][0]["text"],
        "run_command needs a \"command\" (a string)"
    );

    let get = Request {
        method: "GET",
        ..Request::default()
    };
    let refused = reply(act(&mut endpoint, &get));
    assert_eq!((refused.status, refused.allow), (405, Some("POST, DELETE")));
}

#[test]
fn the_single_exchange_revision_needs_no_session_and_checks_its_envelope() {
    let mut endpoint = endpoint();
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{{{MODERN_META}}}}}"#
    );
    let discover = reply(act(&mut endpoint, &modern(&body, "server/discover")));
    assert_eq!(discover.status, 200);
    assert_eq!(discover.session_id, None);
    let result = &discover.body.unwrap()["result"];
    assert_eq!(result["supportedVersions"], json!(["2026-07-28"]));
    assert_eq!(result["resultType"], "complete");
    assert_eq!(
        result["_meta"][version::SERVER_INFO_META_KEY]["name"],
        SERVER_NAME
    );

    let body =
        format!(r#"{{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{{{MODERN_META}}}}}"#);
    let list = reply(act(&mut endpoint, &modern(&body, "tools/list")))
        .body
        .unwrap();
    assert_eq!(list["result"]["ttlMs"], 0);
    assert_eq!(list["result"]["tools"][1]["name"], "close_sandbox");

    let body = format!(
        r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"close_sandbox",{MODERN_META}}}}}"#
    );
    let Action::Call(call) = act(
        &mut endpoint,
        &Request {
            mcp_name: Some("close_sandbox"),
            ..modern(&body, "tools/call")
        },
    ) else {
        panic!("not a call")
    };
    assert_eq!((call.era, call.session), (Era::SingleExchange, None));
    let mismatch = reply(act(
        &mut endpoint,
        &Request {
            mcp_name: Some("run_command"),
            ..modern(&body, "tools/call")
        },
    ));
    assert_eq!(
        (
            mismatch.status,
            mismatch.body.unwrap()["error"]["code"].clone()
        ),
        (400, json!(jsonrpc::HEADER_MISMATCH))
    );

    let no_meta = reply(act(
        &mut endpoint,
        &modern(
            r#"{"jsonrpc":"2.0","id":4,"method":"tools/list"}"#,
            "tools/list",
        ),
    ));
    assert_eq!(
        (
            no_meta.status,
            no_meta.body.unwrap()["error"]["code"].clone()
        ),
        (400, json!(jsonrpc::INVALID_PARAMS))
    );
    let wrong_method = reply(act(
        &mut endpoint,
        &modern(
            &format!(
                r#"{{"jsonrpc":"2.0","id":5,"method":"tools/list","params":{{{MODERN_META}}}}}"#
            ),
            "tools/call",
        ),
    ));
    assert_eq!(
        wrong_method.body.unwrap()["error"]["code"],
        jsonrpc::HEADER_MISMATCH
    );
    let future = Request {
        protocol_version: Some("2099-01-01"),
        ..modern(
            r#"{"jsonrpc":"2.0","id":6,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2099-01-01","io.modelcontextprotocol/clientCapabilities":{}}}}"#,
            "tools/list",
        )
    };
    let refused = reply(act(&mut endpoint, &future));
    let body = refused.body.unwrap();
    assert_eq!(
        (refused.status, body["error"]["code"].clone()),
        (400, json!(jsonrpc::UNSUPPORTED_PROTOCOL_VERSION))
    );
    assert_eq!(
        body["error"]["data"],
        json!({"supported": ["2026-07-28"], "requested": "2099-01-01"})
    );
    let unknown = reply(act(
        &mut endpoint,
        &modern(
            &format!(r#"{{"jsonrpc":"2.0","id":7,"method":"nope","params":{{{MODERN_META}}}}}"#),
            "nope",
        ),
    ));
    assert_eq!(
        (
            unknown.status,
            unknown.body.unwrap()["error"]["code"].clone()
        ),
        (404, json!(jsonrpc::METHOD_NOT_FOUND))
    );
    let notification = modern(
        r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#,
        "notifications/cancelled",
    );
    assert_eq!(reply(act(&mut endpoint, &notification)).status, 202);
}

#[test]
fn a_client_probing_discover_in_the_handshake_era_learns_it_is_not_there() {
    let mut endpoint = endpoint();
    reply(act(
        &mut endpoint,
        &post(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#),
    ));
    let probe = Request {
        session_id: Some("sid-1"),
        ..post(r#"{"jsonrpc":"2.0","id":2,"method":"server/discover"}"#)
    };
    let body = reply(act(&mut endpoint, &probe)).body.unwrap();
    assert_eq!(body["error"]["code"], jsonrpc::METHOD_NOT_FOUND);
}

#[test]
fn foreign_origins_are_refused() {
    let allowed = vec!["https://playground.example".to_string()];
    assert!(origin_allowed(None, Some("h:1"), &allowed), "not a browser");
    assert!(origin_allowed(
        Some("http://127.0.0.1:8080"),
        Some("127.0.0.1:8080"),
        &allowed
    ));
    assert!(origin_allowed(
        Some("https://sandbox.run.app"),
        Some("sandbox.run.app"),
        &allowed
    ));
    assert!(origin_allowed(
        Some("https://playground.example/"),
        Some("h"),
        &allowed
    ));
    assert!(!origin_allowed(
        Some("http://evil.example"),
        Some("127.0.0.1:8080"),
        &allowed
    ));
    assert!(!origin_allowed(
        Some("http://127.0.0.1:8080.evil.example"),
        Some("127.0.0.1:8080"),
        &allowed
    ));
    assert!(!origin_allowed(Some("null"), None, &allowed));
    let mut endpoint = endpoint();
    let request = Request {
        origin: Some("http://evil.example"),
        ..post("{}")
    };
    assert_eq!(reply(act(&mut endpoint, &request)).status, 403);
}
