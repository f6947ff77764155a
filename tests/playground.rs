//! The browser playground against the real server: its page is served (open, with its
//! Content-Security-Policy) unless `SANDBOX_PLAYGROUND=off`, and the way a browser's WebSocket
//! passes an API key (the `api-key.<base64url>` subprotocol) opens a session like the header
//! does. The page itself is driven in Chromium by tests/playground/ (scripts/test.sh runs it).

mod common;
mod ws;

use common::{request, Client, TestServer};
use serde_json::json;

const KEY: &str = "playground-key/7f3e+c0ffee=";
/// base64url of `KEY`, without padding.
const KEY_SUBPROTOCOL: &str = "api-key.cGxheWdyb3VuZC1rZXkvN2YzZStjMGZmZWU9";

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n").into_bytes()
}

fn upgrade(protocols: &str) -> Vec<u8> {
    get(
        "/create",
        &format!(
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: {protocols}\r\n"
        ),
    )
}

#[test]
fn the_page_is_served_without_a_key_and_everything_else_still_needs_one() {
    let server = TestServer::start(&[("SANDBOX_API_KEYS", KEY), ("SANDBOX_POOL_SIZE", "0")]);
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/playground", "text/html; charset=utf-8"),
        ("/playground/app.js", "text/javascript; charset=utf-8"),
        ("/playground/client.js", "text/javascript; charset=utf-8"),
        ("/playground/style.css", "text/css; charset=utf-8"),
    ] {
        let response = request(server.port, &get(path, ""));
        assert_eq!(response.status, 200, "{path}: {}", response.text());
        assert_eq!(
            response.header("content-type"),
            Some(content_type),
            "{path}"
        );
        let policy = response.header("content-security-policy").unwrap_or("");
        assert!(
            policy.starts_with("default-src 'none'; script-src 'self';"),
            "{path}: {policy}"
        );
        assert_eq!(response.header("x-frame-options"), Some("DENY"));
    }
    let page = request(server.port, &get("/", "")).text();
    assert!(page.contains("<script type=\"module\" src=\"/playground/app.js\">"));
    assert_eq!(
        request(server.port, &get("/playground/missing.js", "")).status,
        404
    );
    // The page opens nothing else: the API still asks for the key.
    for path in ["/metrics", "/snapshots", "/playgroundx"] {
        assert_eq!(request(server.port, &get(path, "")).status, 401, "{path}");
    }
    let upgrade_without_key = request(server.port, &upgrade("cloud-run-sandbox"));
    assert_eq!(upgrade_without_key.status, 401);
}

#[test]
fn sandbox_playground_off_answers_404() {
    let server = TestServer::start(&[("SANDBOX_PLAYGROUND", "off"), ("SANDBOX_POOL_SIZE", "0")]);
    for path in ["/", "/playground", "/playground/app.js"] {
        let response = request(server.port, &get(path, ""));
        assert_eq!(response.status, 404, "{path}");
        assert!(
            response.error_message().contains("SANDBOX_PLAYGROUND=off"),
            "{}",
            response.text()
        );
    }
    // Off with keys: the page's paths are like any other again (401 first).
    let keyed = TestServer::start(&[
        ("SANDBOX_PLAYGROUND", "off"),
        ("SANDBOX_API_KEYS", KEY),
        ("SANDBOX_POOL_SIZE", "0"),
    ]);
    assert_eq!(request(keyed.port, &get("/", "")).status, 401);
    assert_eq!(
        request(
            keyed.port,
            &get("/", &format!("Authorization: Bearer {KEY}\r\n"))
        )
        .status,
        404
    );
}

#[test]
fn a_browser_websocket_passes_the_key_as_a_subprotocol() {
    let server = TestServer::start(&[("SANDBOX_API_KEYS", KEY), ("SANDBOX_POOL_SIZE", "0")]);

    // The handshake selects our subprotocol and never echoes the key's.
    let mut client = Client::connect(server.port);
    client.send(&upgrade(&format!("cloud-run-sandbox, {KEY_SUBPROTOCOL}")));
    let head = client.read_head().unwrap();
    assert_eq!(head.status, 101);
    assert_eq!(
        head.header("sec-websocket-protocol"),
        Some("cloud-run-sandbox")
    );
    drop(client);

    // A whole session opened that way (tungstenite checks the selected subprotocol too).
    let protocols = format!("cloud-run-sandbox, {KEY_SUBPROTOCOL}");
    let mut socket = ws::try_connect_with_headers(
        server.port,
        "/create",
        &[("Sec-WebSocket-Protocol", protocols.as_str())],
    )
    .expect("the key in the subprotocol opens /create");
    socket.send(json!({}));
    socket.expect_status("SANDBOX_CREATING");
    let ids = socket.recv();
    assert_eq!(ids["event"], "sandbox_id", "{ids}");
    socket.expect_status("SANDBOX_RUNNING");
    let result = socket.run("bash", "echo through-the-subprotocol");
    assert_eq!(result.stdout, "through-the-subprotocol\n");
    socket.kill_sandbox();

    // Wrong, doubled or malformed keys are refused before the upgrade; the answer and the log
    // never show the key.
    for (protocols, expected) in [
        ("cloud-run-sandbox, api-key.d3Jvbmc", "not valid"),
        (
            "api-key.cGxheWdyb3VuZC1rZXkvN2YzZStjMGZmZWU9, api-key.cGxheWdyb3VuZC1rZXkvN2YzZStjMGZmZWU9",
            "more than one",
        ),
        ("cloud-run-sandbox, api-key.cGxheWdyb3VuZC1rZXkvN2YzZStjMGZmZWU9=", "base64url"),
    ] {
        let response = request(server.port, &upgrade(protocols));
        assert_eq!(response.status, 401, "{protocols}");
        assert!(response.error_message().contains(expected), "{}", response.text());
        assert!(!response.text().contains("cGxheWdy"), "{}", response.text());
    }
    let log = server.log();
    assert!(!log.contains(KEY) && !log.contains("cGxheWdy"), "{log}");
}
