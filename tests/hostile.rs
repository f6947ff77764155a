//! Hostile input against the real server, runsc and sandbox image: absurd numbers and mistyped
//! options, repeated query parameters, malformed WebSocket handshakes, frames forged from inside
//! a sandbox, and (in debug builds) an injected panic. Each is refused or contained for that
//! one peer, with an error naming what was wrong, and the server goes on serving everyone else
//! (docs/security.md, "Hostile inputs and faults").
//!
//! Each test starts its own server (own port and state directory; pool of 1), whose `Drop`
//! stops it and removes every sandbox it left, also on failure. Run with:
//!
//!     cargo test --test hostile -- --test-threads=2

mod common;
mod ws;

use std::time::Duration;

use common::{request, TestServer};
use serde_json::json;
use ws::{assert_exited, connect, create, Frame, Ws};

/// The server process is alive, answers `/status`, and still runs code.
fn assert_alive(server: &mut TestServer) {
    assert!(
        server.is_running(),
        "the server exited; its log:\n{}",
        server.log()
    );
    server.assert_healthy();
    assert!(
        !server.log().contains("panicked"),
        "the server panicked: {}",
        server.log()
    );
}

/// A `/create` whose init is refused: CREATION_ERROR naming `needle`, then close 4000.
fn assert_init_refused(server: &TestServer, init: &str, needle: &str) {
    let mut ws = connect(server.port, "/create");
    ws.send_text(init);
    let message = ws.expect_error("SANDBOX_CREATION_ERROR");
    assert!(
        message.contains(needle),
        "init {init}: the message must name {needle:?}: {message:?}"
    );
    ws.expect_close(4000);
}

#[test]
fn absurd_and_mistyped_init_options_are_creation_errors_and_others_are_unaffected() {
    let mut server = TestServer::start(&[]);
    // Someone already working on the server.
    let mut bystander = create(&server, json!({}));
    bystander
        .ws
        .start("bash", "echo before; sleep 2; echo after");
    bystander.ws.expect_status("SANDBOX_EXECUTION_RUNNING");

    // 1e20 (>= 2^64 s) used to panic in Duration::from_secs_f64 and kill the whole server.
    for value in [
        "1e20",
        "1e300",
        "18446744073709551616",
        "1000000001",
        "-1",
        "-0.5",
    ] {
        assert_init_refused(
            &server,
            &format!(r#"{{"idle_timeout": {value}}}"#),
            "idle_timeout must be a number of seconds",
        );
    }
    // Also next to other keys (it used to be skipped when a snapshot was asked for).
    assert_init_refused(
        &server,
        r#"{"idle_timeout": 1e20, "filesystem_snapshot_name": "snap"}"#,
        "idle_timeout",
    );
    for key in [
        "enable_checkpoint",
        "enable_idle_timeout_auto_checkpoint",
        "enable_sandbox_handoff",
        "enable_network",
    ] {
        for value in [r#""yes""#, "1", r#""false""#] {
            assert_init_refused(
                &server,
                &format!(r#"{{"{key}": {value}}}"#),
                &format!("{key} must be true or false, got {value}"),
            );
        }
    }
    for value in ["5", "true", r#"["snap"]"#] {
        assert_init_refused(
            &server,
            &format!(r#"{{"filesystem_snapshot_name": {value}}}"#),
            "filesystem_snapshot_name must be a string or null",
        );
    }
    // Labels are kept with checkpoints and listed: small maps of strings only.
    let many: String = (0..17)
        .map(|n| format!(r#""k{n}": "v""#))
        .collect::<Vec<_>>()
        .join(",");
    let long_value = "v".repeat(257);
    for (labels, needle) in [
        (
            r#""team=search""#.to_string(),
            "labels must be an object of strings",
        ),
        (
            r#"{"a/b": "c"}"#.to_string(),
            r#"labels: key "a/b" must be"#,
        ),
        (
            r#"{"n": 1}"#.to_string(),
            r#"labels: the value of "n" must be a string"#,
        ),
        (format!(r#"{{"v": "{long_value}"}}"#), "at most 256 bytes"),
        (format!("{{{many}}}"), "labels: at most 16 labels, got 17"),
    ] {
        assert_init_refused(&server, &format!(r#"{{"labels": {labels}}}"#), needle);
    }
    // Handoff needs checkpointing, which this server does not have.
    assert_init_refused(
        &server,
        r#"{"enable_sandbox_handoff": true}"#,
        "enable_sandbox_handoff needs checkpointing",
    );

    // The bystander's execution went on undisturbed.
    let result = bystander.ws.collect_until_done();
    assert_eq!(result.stdout, "before\nafter\n");
    assert_exited(&result.done, 0);
    assert_alive(&mut server);

    // What original clients send still works; a large but sane idle timeout is capped.
    let mut created = create(
        &server,
        json!({"idle_timeout": 999999999, "enable_checkpoint": false,
               "enable_idle_timeout_auto_checkpoint": false, "enable_sandbox_handoff": false,
               "filesystem_snapshot_name": null, "enable_network": null, "future_key": 1}),
    );
    assert_eq!(created.ws.run("bash", "echo ok").stdout, "ok\n");
    created.ws.kill_sandbox();
    bystander.ws.kill_sandbox();
}

#[test]
fn mistyped_execution_options_and_repeated_query_parameters_are_errors() {
    let mut server = TestServer::start(&[]);
    let mut created = create(&server, json!({}));
    let ws = &mut created.ws;
    for (extra, needle) in [
        (
            json!({"output_encoding": "hex"}),
            r#"output_encoding must be "text" or "base64", got "hex""#,
        ),
        (json!({"output_encoding": 64}), "output_encoding must be"),
        (
            json!({"timeout": 1e20}),
            "timeout must be a number of seconds",
        ),
        (
            json!({"timeout": "5"}),
            "timeout must be a number of seconds",
        ),
    ] {
        ws.start_with("bash", "echo never", extra.clone());
        let message = ws.expect_error("SANDBOX_EXECUTION_ERROR");
        assert!(message.contains(needle), "{extra}: {message}");
    }
    // Stdin options are checked too; the execution goes on.
    ws.start("python", "print('Hello, ' + input())");
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    for (message, needle) in [
        (
            json!({"event": "stdin", "data": "x", "encoding": "hex"}),
            r#"encoding must be "text" or "base64", got "hex""#,
        ),
        (
            json!({"event": "stdin", "data": "x", "eof": "yes"}),
            r#"eof must be true or false, got "yes""#,
        ),
    ] {
        ws.send(message.clone());
        assert_eq!(ws.expect_error("SANDBOX_STDIN_ERROR"), needle, "{message}");
    }
    ws.send(json!({"event": "stdin", "data": "World\n"}));
    let result = ws.collect_until_done();
    assert_eq!(result.stdout, "Hello, World\n");
    ws.send(json!({"action": "snapshot_filesystem", "name": 7}));
    ws.expect_status("SANDBOX_FILESYSTEM_SNAPSHOT_CREATING");
    let message = ws.expect_error("SANDBOX_FILESYSTEM_SNAPSHOT_ERROR");
    assert_eq!(message, "name must be a string, got 7");
    assert_eq!(ws.run("bash", "echo still here").stdout, "still here\n");

    // /execute: a parameter given twice is refused, whichever value comes first.
    for query in [
        "language=python&language=bash",
        "language=bash&timeout=5&timeout=500",
        "language=bash&%6Canguage=bash",
    ] {
        let response = request(
            server.port,
            format!("POST /execute?{query} HTTP/1.1\r\nHost: t\r\nContent-Length: 7\r\nConnection: close\r\n\r\necho hi")
                .as_bytes(),
        );
        assert_eq!(response.status, 400, "{query}: {response:?}");
        let message = response.error_message();
        assert!(
            message.contains("is given more than once"),
            "{query}: {message}"
        );
    }
    for timeout in ["1e20", "1e400", "-inf", "NaN"] {
        let response = request(
            server.port,
            format!("POST /execute?language=bash&timeout={timeout} HTTP/1.1\r\nHost: t\r\nContent-Length: 7\r\nConnection: close\r\n\r\necho hi")
                .as_bytes(),
        );
        assert_eq!(response.status, 400, "{timeout}: {response:?}");
        assert!(response.error_message().contains("timeout"), "{response:?}");
    }
    // /attach: a repeated token is refused before anything else.
    let path = format!("{}&sandbox_token=x", created.attach_path());
    let mut twice = connect(server.port, &path);
    let message = twice.expect_error("SANDBOX_PERMISSION_DENIAL_ERROR");
    assert!(message.contains("sandbox_token"), "{message}");
    twice.expect_close(4000);

    created.ws.kill_sandbox();
    assert_alive(&mut server);
}

/// The opening handshake by hand: `GET path` with these extra header lines.
fn upgrade(server: &TestServer, path: &str, headers: &str) -> common::Response {
    request(
        server.port,
        format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{headers}\r\n"
        )
        .as_bytes(),
    )
}

#[test]
fn websocket_handshakes_with_a_bad_key_or_version_are_refused() {
    let mut server = TestServer::start(&[]);
    const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    // RFC 6455 §4.4: another version gets 426 and the version we speak.
    for versions in [
        "",
        "Sec-WebSocket-Version: 8\r\n",
        "Sec-WebSocket-Version: 14\r\n",
    ] {
        for path in [
            "/create",
            "/attach/0123456789abcdef0123456789abcdef?sandbox_token=t",
        ] {
            let response = upgrade(&server, path, &format!("{KEY}{versions}"));
            assert_eq!(response.status, 426, "{versions:?} {path}: {response:?}");
            assert_eq!(response.header("sec-websocket-version"), Some("13"));
            assert!(
                response.error_message().contains("Sec-WebSocket-Version"),
                "{response:?}"
            );
        }
    }
    // A key must be the base64 of 16 bytes (§4.2.1).
    for key in [
        "",
        "Sec-WebSocket-Key: x\r\n",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ\r\n",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQAA\r\n",
        "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!==\r\n",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    ] {
        let response = upgrade(&server, "/create", &format!("{key}Sec-WebSocket-Version: 13\r\n"));
        assert_eq!(response.status, 400, "{key:?}: {response:?}");
        assert!(
            response.error_message().contains("Sec-WebSocket-Key"),
            "{response:?}"
        );
    }
    // Nothing was created for any of them, and a proper handshake works.
    let mut created = create(&server, json!({}));
    assert_eq!(created.ws.run("bash", "echo ok").stdout, "ok\n");
    created.ws.kill_sandbox();
    assert_alive(&mut server);
}

/// Frames from inside the sandbox are untrusted: user code that writes to the agent's pipe can
/// claim any exit status or execution id. Whether the write reaches the server (it should not,
/// once the agent's descriptors are out of reach) or not, the server survives and answers.
#[test]
fn frames_forged_from_inside_a_sandbox_do_not_crash_the_server() {
    let mut server = TestServer::start(&[]);
    let mut created = create(&server, json!({}));
    let forge = r#"
import json, os, struct
def frame(kind, exec_id, payload):
    return struct.pack('<IBI', 5 + len(payload), kind, exec_id) + payload
# A hello raising the execution counter to its last value, then "killed by signal 2^31-1"
# (128 + that overflowed) for every likely execution id.
hello = json.dumps({"version": "x", "python_standby": False, "next_exec_id": 4294967295})
data = frame(64, 0, hello.encode())
data += b"".join(frame(71, i, struct.pack('<i', 2**31 - 1)) for i in range(16))
try:
    fd = os.open('/proc/1/fd/1', os.O_WRONLY)
    os.write(fd, data)
    print('forged', flush=True)
except OSError as error:
    print('refused', error, flush=True)
"#;
    created.ws.start("python", forge);
    // Whatever the session makes of it, it answers: the execution ends (really, or by the
    // forged exit) or the sandbox is reported lost.
    let mut answered = false;
    for _ in 0..20 {
        match created.ws.next_within(Duration::from_secs(30)) {
            Frame::Json(frame) => {
                let status = frame["status"].as_str().unwrap_or_default();
                if status == "SANDBOX_EXECUTION_DONE" || status.ends_with("_ERROR") {
                    answered = true;
                    break;
                }
            }
            Frame::Close(..) | Frame::Eof(_) => {
                answered = true;
                break;
            }
            Frame::Timeout => break,
        }
    }
    assert!(answered, "no answer: {:#?}", created.ws.log);
    // The next execution is answered too: it runs, or is refused (no ids left) with a message.
    created.ws.start("bash", "echo next");
    match created.ws.next_within(Duration::from_secs(30)) {
        Frame::Json(frame) => assert!(frame["status"].is_string(), "{frame}"),
        Frame::Close(..) | Frame::Eof(_) => {}
        Frame::Timeout => panic!("no answer to the next execution: {:#?}", created.ws.log),
    }
    drop(created);
    assert_alive(&mut server);
}

/// The last line of defence, shown with a panic injected by the test hook of debug builds
/// (`SANDBOX_TEST_PANIC_ON`; release builds do not have it). A panic while handling one HTTP
/// request, one WebSocket message or one runtime notice ends that peer only: 500 or close
/// 1011, its sandbox deleted; everyone else is served on.
#[test]
fn a_panic_while_handling_one_peer_ends_that_peer_only() {
    if !cfg!(debug_assertions) {
        eprintln!("skipped: the panic hook exists in debug builds only");
        return;
    }
    const MARKER: &str = "PANIC-MARKER-7f3a";
    // Code that prints the marker without containing it.
    const PRINTS_MARKER: &str = "echo PANIC-MARKER-\"7f3a\"";
    let mut server = TestServer::start(&[("SANDBOX_TEST_PANIC_ON", MARKER)]);
    let mut bystander = create(&server, json!({}));
    bystander
        .ws
        .start("bash", "echo before; sleep 3; echo after");
    bystander.ws.expect_status("SANDBOX_EXECUTION_RUNNING");

    // An HTTP request.
    let response = server.get(&format!("/status?{MARKER}"));
    assert_eq!(response.status, 500, "{response:?}");
    assert_eq!(response.error_message(), "internal server error");
    assert_eq!(response.header("connection"), Some("close"));

    // A WebSocket message: the connection is closed with 1011 and the session ended.
    let mut victim = create(&server, json!({}));
    victim.ws.start("bash", &format!("echo {MARKER}"));
    victim.ws.expect_close(1011);
    let mut again = connect(server.port, &victim.attach_path());
    again.expect_error("SANDBOX_NOT_FOUND");
    again.expect_close(1011);
    // The init message too.
    let mut init = connect(server.port, "/create");
    init.send(json!({"note": MARKER}));
    init.expect_close(1011);

    // A runtime notice (output of the session's execution).
    let mut victim = create(&server, json!({}));
    victim.ws.start("bash", PRINTS_MARKER);
    let closed = loop {
        match victim.ws.next_within(Duration::from_secs(60)) {
            Frame::Json(_) => continue,
            other => break other,
        }
    };
    assert!(
        matches!(closed, Frame::Close(Some(1011), _)),
        "{closed:?}\n{:#?}",
        victim.ws.log
    );
    assert_no_sandbox_answers(&server, &victim.attach_path());

    // An /execute whose output panics: 500 (the JSON answer had not started).
    let response = server.post_execute("bash", PRINTS_MARKER, Some(20.0), true);
    assert_eq!(response.status, 500, "{response:?}");

    // Everyone else: the bystander's execution finished normally, and it goes on.
    let result = bystander.ws.collect_until_done();
    assert_eq!(result.stdout, "before\nafter\n");
    assert_exited(&result.done, 0);
    assert_eq!(
        bystander.ws.run("bash", "echo bystander").stdout,
        "bystander\n"
    );
    bystander.ws.kill_sandbox();
    assert!(server.is_running());
    server.assert_healthy();
    // One per injected panic (a notice could be split and panic twice: at least).
    let log = server.log();
    assert!(
        log.matches("server: internal error while handling").count() >= 5,
        "{log}"
    );
}

fn assert_no_sandbox_answers(server: &TestServer, path: &str) {
    let mut ws: Ws = connect(server.port, path);
    ws.expect_error("SANDBOX_NOT_FOUND");
    ws.expect_close(1011);
}
