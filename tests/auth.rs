//! Optional API keys against the real server: with `SANDBOX_API_KEYS` (or a file of keys) every
//! request but the health probes needs `Authorization: Bearer <key>`; a request without a valid
//! key gets 401 before anything is done for it (no body read, no sandbox, no upgrade).

mod common;
mod ws;

use std::time::Duration;

use common::{request, Client, Response, TestServer, IO_TIMEOUT};
use serde_json::json;

const KEY_A: &str = "test-key-alpha-5f0c2d9e81b7";
const KEY_B: &str = "test-key-beta-a93e7710c4f2";
const KEYS: &str = "test-key-alpha-5f0c2d9e81b7, test-key-beta-a93e7710c4f2";

/// A server asking for keys; no pool, so every sandbox it creates shows in the metrics.
fn server_with(keys_env: (&str, &str)) -> TestServer {
    TestServer::start(&[keys_env, ("SANDBOX_POOL_SIZE", "0")])
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// The raw bytes of one request (`Connection: close`), with an `Authorization` header when
/// `authorization` is given.
fn raw(
    method: &str,
    target: &str,
    authorization: Option<&str>,
    extra: &str,
    body: &str,
) -> Vec<u8> {
    let auth = authorization
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    let length = if body.is_empty() && method == "GET" {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    format!(
        "{method} {target} HTTP/1.1\r\nHost: t\r\n{auth}{extra}{length}Connection: close\r\n\r\n{body}"
    )
    .into_bytes()
}

const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// Every endpoint that needs a key: (method, target, extra headers, body).
fn guarded_requests(sandbox_id: &str) -> Vec<(&'static str, String, &'static str, &'static str)> {
    vec![
        (
            "POST",
            "/execute?language=bash".into(),
            "",
            "echo should-not-run",
        ),
        ("GET", "/create".into(), UPGRADE, ""),
        (
            "GET",
            format!("/attach/{sandbox_id}?sandbox_token=whatever"),
            UPGRADE,
            "",
        ),
        ("GET", "/metrics".into(), "", ""),
        ("GET", "/snapshots".into(), "", ""),
        ("DELETE", "/snapshots/some-name".into(), "", ""),
        ("GET", "/sandboxes".into(), "", ""),
        ("GET", "/sandboxes?checkpointed=1".into(), "", ""),
        ("GET", "/no-such-endpoint".into(), "", ""),
    ]
}

fn assert_unauthorized(response: &Response, what: &str) {
    assert_eq!(response.status, 401, "{what}: {response:?}");
    assert_eq!(
        response.header("www-authenticate"),
        Some("Bearer"),
        "{what}: {response:?}"
    );
    assert_eq!(
        response.header("connection"),
        Some("close"),
        "{what}: {response:?}"
    );
    let message = response.error_message();
    assert!(
        message.contains("api key") || message.contains("bearer"),
        "{what}: {message}"
    );
}

fn metric(server: &TestServer, key: &str, name: &str) -> f64 {
    let response = request(
        server.port,
        &raw("GET", "/metrics", Some(&bearer(key)), "", ""),
    );
    assert_eq!(response.status, 200, "{response:?}");
    response
        .text()
        .lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

#[test]
fn without_a_valid_key_every_endpoint_answers_401_and_nothing_runs() {
    let server = server_with(("SANDBOX_API_KEYS", KEYS));
    // A real sandbox, so that the attach below names one that exists.
    let mut created =
        ws::try_connect_with_headers(server.port, "/create", &[("Authorization", &bearer(KEY_A))])
            .unwrap_or_else(|error| panic!("create with the key: {error}"));
    created.send(json!({}));
    created.expect_status("SANDBOX_CREATING");
    let sandbox_id = created.recv()["sandbox_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    created.expect_status("SANDBOX_RUNNING");
    assert_eq!(metric(&server, KEY_A, "sandbox_created_total"), 1.0);

    let refused = [
        None,
        Some("Bearer not-a-key".to_string()),
        Some(format!("Basic {KEY_A}")),
        Some(format!("Bearer {}", &KEY_A[..KEY_A.len() - 1])),
        Some(format!("Bearer {KEY_A}0")),
        Some("Bearer".to_string()),
    ];
    let mut refusals = 0.0;
    for authorization in &refused {
        for (method, target, extra, body) in guarded_requests(&sandbox_id) {
            let what = format!("{method} {target} with {authorization:?}");
            let response = request(
                server.port,
                &raw(method, &target, authorization.as_deref(), extra, body),
            );
            assert_unauthorized(&response, &what);
            refusals += 1.0;
        }
    }
    // Nothing was created, run or upgraded for them; the session of the key holder goes on.
    assert_eq!(metric(&server, KEY_B, "sandbox_created_total"), 1.0);
    assert_eq!(metric(&server, KEY_B, "sandbox_websockets"), 1.0);
    assert_eq!(
        metric(
            &server,
            KEY_B,
            "sandbox_http_responses_total{status=\"401\"}"
        ),
        refusals
    );
    let result = created.run("bash", "echo still-here");
    assert_eq!(result.stdout, "still-here\n");
    created.kill_sandbox();

    // The probes answer without a key.
    assert_eq!(server.get("/status").status, 200);
    let mut client = Client::connect(server.port);
    client.send(b"HEAD /status HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(client.read_head().expect("a head").status, 200);

    // No key reaches the log.
    let log = server.log();
    assert!(log.contains("api keys"), "{log}");
    assert!(!log.contains(KEY_A) && !log.contains(KEY_B), "{log}");
}

#[test]
fn the_key_is_checked_before_the_body_is_read() {
    let server = server_with(("SANDBOX_API_KEYS", KEYS));
    // The head announces a large body that never comes: the 401 arrives anyway.
    let mut client = Client::connect(server.port);
    client
        .send(b"POST /execute?language=bash HTTP/1.1\r\nHost: t\r\nContent-Length: 500000\r\n\r\n");
    let response = client.read_response().expect("a response without the body");
    assert_unauthorized(&response, "a head without its body");
    assert!(client.wait_closed(IO_TIMEOUT));

    // With Expect: 100-continue the answer is the 401, never a 100.
    let mut client = Client::connect(server.port);
    client.send(
        b"POST /execute?language=bash HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n\
          Content-Length: 20\r\nAuthorization: Bearer wrong\r\n\r\n",
    );
    let head = client.read_head().expect("a head");
    assert_eq!(head.status, 401, "{head:?}");

    // A body larger than the server takes is 401 too (not 413): the key comes first.
    let response = request(
        server.port,
        b"POST /execute?language=bash HTTP/1.1\r\nHost: t\r\nContent-Length: 999999999\r\n\r\n",
    );
    assert_unauthorized(&response, "a too-large body");
    // With the key, the same head gets the size answer.
    let response = request(
        server.port,
        format!(
            "POST /execute?language=bash HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY_B}\r\n\
             Content-Length: 999999999\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(response.status, 413, "{response:?}");
}

#[test]
fn any_configured_key_opens_every_endpoint() {
    let server = server_with(("SANDBOX_API_KEYS", KEYS));
    for key in [KEY_A, KEY_B] {
        let response = request(
            server.port,
            &raw(
                "POST",
                "/execute?language=bash",
                Some(&bearer(key)),
                "Accept: application/json\r\n",
                "echo hello-$((6 * 7))",
            ),
        );
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(response.json()["stdout"], "hello-42\n");
    }
    // The scheme is case-insensitive.
    let response = request(
        server.port,
        &raw("GET", "/metrics", Some(&format!("bearer {KEY_A}")), "", ""),
    );
    assert_eq!(response.status, 200, "{response:?}");
    // Snapshots are not configured here: the answer says so instead of 401.
    let response = request(
        server.port,
        &raw("GET", "/snapshots", Some(&bearer(KEY_B)), "", ""),
    );
    assert_ne!(response.status, 401, "{response:?}");
    assert!(
        response.text().contains("FILESYSTEM_SNAPSHOT_PATH"),
        "{response:?}"
    );
    // The sandbox list answers with the key (and never shows a token).
    let response = request(
        server.port,
        &raw("GET", "/sandboxes", Some(&bearer(KEY_A)), "", ""),
    );
    assert_eq!(response.status, 200, "{response:?}");
    assert!(response.json()["sandboxes"].is_array(), "{response:?}");
    // Keep-alive goes on with the key: two requests on one connection.
    let mut client = Client::connect(server.port);
    for _ in 0..2 {
        client.send(
            format!("GET /metrics HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY_A}\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(client.read_response().expect("a response").status, 200);
    }

    // A WebSocket session with one key, attached again with the other.
    let mut ws =
        ws::try_connect_with_headers(server.port, "/create", &[("Authorization", &bearer(KEY_A))])
            .unwrap_or_else(|error| panic!("create: {error}"));
    ws.send(json!({}));
    ws.expect_status("SANDBOX_CREATING");
    let frame = ws.recv();
    let sandbox_id = frame["sandbox_id"].as_str().unwrap_or_default().to_string();
    let token = frame["sandbox_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ws.expect_status("SANDBOX_RUNNING");
    let result = ws.run("bash", "echo 7 > /tmp/mark; echo created");
    assert_eq!(result.stdout, "created\n");
    ws.close();

    let path = ws::attach_path(&sandbox_id, &token);
    let refused = ws::try_connect_with_headers(server.port, &path, &[]).err();
    assert!(
        refused
            .as_deref()
            .is_some_and(|error| error.contains("401")),
        "attach without a key: {refused:?}"
    );
    let mut attached = None;
    // The server may still count the closed socket as attached for a moment (SANDBOX_IN_USE).
    common::wait_until(Duration::from_secs(10), || {
        let mut ws =
            ws::try_connect_with_headers(server.port, &path, &[("Authorization", &bearer(KEY_B))])
                .unwrap_or_else(|error| panic!("attach: {error}"));
        let frame = ws.recv();
        if ws::is_status(&frame, "SANDBOX_RUNNING") {
            attached = Some(ws);
            true
        } else {
            assert!(ws::is_status(&frame, "SANDBOX_IN_USE"), "{frame}");
            false
        }
    });
    let mut ws = attached.expect("attach with the other key");
    let result = ws.run("bash", "cat /tmp/mark");
    assert_eq!(result.stdout, "7\n", "not the same sandbox?");
    ws.kill_sandbox();
}

#[test]
fn keys_from_a_file() {
    // The file lives in the server's state directory, which the harness removes even on failure.
    let dir = common::new_state_dir();
    std::fs::create_dir_all(&dir).expect("create the state dir");
    let file = dir.join("api-keys");
    std::fs::write(&file, format!("{KEY_A}\n\n  {KEY_B}  \n")).expect("write the key file");
    let server = TestServer::start_on(
        &dir,
        &[
            ("SANDBOX_API_KEYS_FILE", file.to_str().expect("utf-8 path")),
            ("SANDBOX_POOL_SIZE", "0"),
        ],
        true,
    );
    for key in [KEY_A, KEY_B] {
        let response = request(
            server.port,
            &raw(
                "POST",
                "/execute?language=python",
                Some(&bearer(key)),
                "Accept: application/json\r\n",
                "print('from the file key')",
            ),
        );
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(response.json()["stdout"], "from the file key\n");
    }
    let response = request(
        server.port,
        &raw("GET", "/metrics", Some("Bearer other-key"), "", ""),
    );
    assert_unauthorized(&response, "a key not in the file");
}

#[test]
fn bad_key_settings_stop_the_server_at_start() {
    let dir = common::new_state_dir();
    for (name, value, expected) in [
        ("SANDBOX_API_KEYS", "", "SANDBOX_API_KEYS is set but empty"),
        (
            "SANDBOX_API_KEYS",
            "test-key-alpha-5f0c2d9e81b7,,x",
            "key 2 of 3 is empty",
        ),
        (
            "SANDBOX_API_KEYS_FILE",
            "/nonexistent/crs-api-keys",
            "cannot read /nonexistent/crs-api-keys",
        ),
    ] {
        let output = std::process::Command::new(common::SERVER_BIN)
            .env(name, value)
            .env("SANDBOX_STATE_DIR", &dir)
            .env("PORT", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run the server");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}={value:?}: {stderr}");
        assert!(stderr.contains(expected), "{name}={value:?}: {stderr}");
        assert!(!stderr.contains(KEY_A), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
