//! The WebSocket protocol (docs/protocol.md) against the real server, runsc and sandbox image:
//! every flow's exact frame order, the additions (exit codes, env, cwd, timeout, base64, EOF),
//! attach / reconnect, idle timeout, and hostile clients (binary frames, oversized messages,
//! floods, clients that never read or vanish).
//!
//! Each test starts its own server (own port and state directory; pool of 1), whose `Drop`
//! stops it and removes every sandbox it left, also on failure. Run with:
//!
//!     cargo test --test websocket -- --test-threads=2
//!
//! The 50-session load test is in `tests/websocket_load.rs`.

mod common;
mod ws;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{run_with_timeout, runsc_binary, runsc_list, wait_until, TestServer};
use serde_json::{json, Value};
use tungstenite::Message;
use ws::{assert_exited, attach, attach_path, connect, create, is_status, Created, Frame};

const LANGUAGES: [&str; 2] = ["python", "bash"];

fn assert_names_languages(message: &str) {
    for language in LANGUAGES {
        assert!(
            message.contains(language),
            "the message must name {language}: {message:?}"
        );
    }
}

/// Whether runsc lists a container of this sandbox. Container ids are per run (a restore gets a
/// new one), so containers are matched by their bundle directory, which is named after the
/// sandbox id.
/// After kill_sandbox: runsc no longer lists the sandbox, and an attach finds nothing.
fn assert_gone(server: &TestServer, sandbox_id: &str, token: &str) {
    assert!(
        !sandbox_listed(server, sandbox_id),
        "runsc still lists {sandbox_id} after kill_sandbox"
    );
    let mut again = connect(server.port, &attach_path(sandbox_id, token));
    again.expect_error("SANDBOX_NOT_FOUND");
    again.expect_close(1011);
}

fn sandbox_listed(server: &TestServer, sandbox_id: &str) -> bool {
    let root = server.runsc_root();
    let output = run_with_timeout(
        Command::new(runsc_binary())
            .arg(format!("--root={}", root.display()))
            .args(["list", "--format=json"]),
        Duration::from_secs(20),
    )
    .expect("runsc list");
    let containers: Value = serde_json::from_str(output.trim()).unwrap_or(Value::Null);
    containers
        .as_array()
        .into_iter()
        .flatten()
        .any(|container| {
            let bundle = container["bundle"].as_str().unwrap_or_default();
            std::path::Path::new(bundle).file_name() == Some(std::ffi::OsStr::new(sandbox_id))
        })
}

/// A random-looking id that no server created.
const UNKNOWN_ID: &str = "0123456789abcdef0123456789abcdef";

// ---------------------------------------------------------------------------------------------
// Create, exec, errors

#[test]
fn create_exec_python_and_bash_then_kill_sandbox() {
    let server = TestServer::start(&[]);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&server, json!({}));
    assert_ne!(sandbox_id, token, "the token must not be the id");
    assert!(
        sandbox_listed(&server, &sandbox_id),
        "runsc does not list {sandbox_id}"
    );

    let result = ws.run(
        "python",
        "import sys\nprint('hello from python')\nprint('to stderr', file=sys.stderr)\nprint(6 * 7)",
    );
    assert_eq!(result.stdout, "hello from python\n42\n", "{result:?}");
    assert_eq!(result.stderr, "to stderr\n", "{result:?}");
    assert_exited(&result.done, 0);

    let result = ws.run("bash", "echo out; echo err >&2; echo $((6 * 7))");
    assert_eq!(result.stdout, "out\n42\n", "{result:?}");
    assert_eq!(result.stderr, "err\n", "{result:?}");
    assert_exited(&result.done, 0);

    // Non-zero exits still end with DONE, with the code.
    let result = ws.run("bash", "echo before; exit 3");
    assert_eq!(result.stdout, "before\n");
    assert_exited(&result.done, 3);
    let result = ws.run("python", "raise ValueError('boom')");
    assert!(result.stderr.contains("ValueError: boom"), "{result:?}");
    assert_exited(&result.done, 1);
    // A signal the process sent itself: "signaled", 128 + N.
    let result = ws.run("bash", "kill -TERM $$");
    assert_eq!(result.done["reason"], "signaled", "{result:?}");
    assert_eq!(result.done["signal"], 15, "{result:?}");
    assert_eq!(result.done["exit_code"], 143, "{result:?}");

    // The access token is nowhere the code can see.
    let result = ws.run(
        "bash",
        "env; cat /proc/[0-9]*/cmdline /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'",
    );
    assert!(result.stdout.contains("PATH="), "{result:?}");
    assert!(
        !result.stdout.contains(&token),
        "the token is visible in the sandbox"
    );

    // Lots of output arrives complete and in order.
    let result = ws.run("python", "for i in range(50000):\n    print(i)");
    let expected: String = (0..50000).map(|i| format!("{i}\n")).collect();
    assert!(
        result.stdout == expected,
        "{} bytes of output, expected {}",
        result.stdout.len(),
        expected.len()
    );
    assert_exited(&result.done, 0);

    // The sandbox keeps state between executions.
    let result = ws.run("bash", "echo kept > /tmp/state.txt");
    assert_exited(&result.done, 0);
    let result = ws.run("python", "print(open('/tmp/state.txt').read(), end='')");
    assert_eq!(result.stdout, "kept\n");

    ws.kill_sandbox();
    assert_gone(&server, &sandbox_id, &token);
}

#[test]
fn second_exec_while_one_runs_is_refused_and_the_first_continues() {
    let server = TestServer::start(&[]);
    let mut created = create(&server, json!({}));
    let ws = &mut created.ws;
    ws.start(
        "python",
        "import time\nprint('first started', flush=True)\ntime.sleep(1.5)\nprint('first ended')",
    );
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    ws.read_stdout_until("first started\n");
    ws.start("bash", "echo second");
    let message = ws.expect_error("SANDBOX_EXECUTION_ERROR");
    assert_eq!(message, "An execution is already in progress.");
    let result = ws.collect_until_done();
    assert_eq!(result.stdout, "first ended\n", "{result:?}");
    assert_exited(&result.done, 0);
    // Afterwards a new one runs.
    let result = ws.run("bash", "echo second");
    assert_eq!(result.stdout, "second\n");
    ws.kill_sandbox();
}

#[test]
fn unsupported_languages_and_messages_keep_the_socket_usable() {
    let server = TestServer::start(&[]);
    let mut created = create(&server, json!({}));
    let ws = &mut created.ws;
    let bad = [
        json!({"language": "ruby", "code": "puts 1"}).to_string(),
        json!({"language": "Python", "code": "print(1)"}).to_string(),
        json!({"code": "print(1)"}).to_string(),
        json!({"language": "python"}).to_string(),
        json!({"language": 3, "code": "print(1)"}).to_string(),
        json!({"foo": "bar"}).to_string(),
        json!({"action": "dance"}).to_string(),
        json!({"event": "dance"}).to_string(),
        json!({}).to_string(),
        "[1, 2, 3]".to_string(),
        "\"just a string\"".to_string(),
        "not json at all".to_string(),
        "{\"language\": \"python\", \"code\": ".to_string(),
        String::new(),
    ];
    for text in &bad {
        ws.send_text(text);
        let message = ws.expect_error("SANDBOX_EXECUTION_UNSUPPORTED_LANGUAGE_ERROR");
        assert_names_languages(&message);
    }
    let result = ws.run("python", "print('still usable')");
    assert_eq!(result.stdout, "still usable\n");
    assert_exited(&result.done, 0);
    ws.kill_sandbox();
}

// ---------------------------------------------------------------------------------------------
// Stdin

#[test]
fn stdin_input_errors_and_eof() {
    let server = TestServer::start(&[]);
    let mut created = create(&server, json!({}));
    let ws = &mut created.ws;

    // Nothing running.
    ws.send(json!({"event": "stdin", "data": "World\n"}));
    let message = ws.expect_error("SANDBOX_EXECUTION_ERROR");
    assert!(!message.is_empty());

    // input() answered.
    ws.start("python", "name = input()\nprint('Hello, ' + name)");
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    // Stdin without data (and without eof).
    ws.send(json!({"event": "stdin"}));
    ws.expect_error("SANDBOX_STDIN_ERROR");
    ws.send(json!({"event": "stdin", "data": 5}));
    ws.expect_error("SANDBOX_STDIN_ERROR");
    ws.send(json!({"event": "stdin", "data": "World\n"}));
    let result = ws.collect_until_done();
    assert_eq!(result.stdout, "Hello, World\n", "{result:?}");
    assert_eq!(result.stderr, "", "{result:?}");
    assert_exited(&result.done, 0);

    // EOF ends sys.stdin.read(): data in pieces, then a bare eof.
    ws.start(
        "python",
        "import sys\ndata = sys.stdin.read()\nprint(len(data), repr(data))",
    );
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    ws.send(json!({"event": "stdin", "data": "abc\n"}));
    ws.send(json!({"event": "stdin", "data": "def"}));
    ws.send(json!({"event": "stdin", "eof": true}));
    let result = ws.collect_until_done();
    assert_eq!(result.stdout, "7 'abc\\ndef'\n", "{result:?}");
    assert_exited(&result.done, 0);

    // Data and eof together, in base64 (raw bytes), for a bash reader.
    ws.start("bash", "od -An -tu1 | tr -s ' '");
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    ws.send(json!({"event": "stdin", "data": "AP/+", "encoding": "base64", "eof": true}));
    let result = ws.collect_until_done();
    assert_eq!(result.stdout.trim(), "0 255 254", "{result:?}");
    assert_exited(&result.done, 0);

    // Stdin after the execution ended is "nothing running" again.
    ws.send(json!({"event": "stdin", "data": "late\n"}));
    ws.expect_error("SANDBOX_EXECUTION_ERROR");
    ws.kill_sandbox();
}

// ---------------------------------------------------------------------------------------------
// Kill process, kill sandbox

#[test]
fn kill_process_then_kill_sandbox() {
    let server = TestServer::start(&[]);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&server, json!({}));

    // Nothing running.
    ws.send(json!({"action": "kill_process"}));
    ws.expect_error("SANDBOX_EXECUTION_FORCE_KILL_ERROR");

    ws.start("bash", "echo sleeping; sleep 100; echo never");
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    ws.read_stdout_until("sleeping\n");
    let started = Instant::now();
    ws.send(json!({"action": "kill_process"}));
    ws.expect_status("SANDBOX_EXECUTION_FORCE_KILLED");
    let result = ws.collect_until_done();
    assert_eq!(result.stdout, "", "{result:?}");
    assert_eq!(result.done["reason"], "killed", "{result:?}");
    assert_ne!(result.done["exit_code"], 0, "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "kill_process did not end sleep 100"
    );

    // The whole process group goes: a background child too.
    ws.start(
        "bash",
        "(sleep 100; echo orphan) & sleep 0.5; echo started; wait",
    );
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    ws.read_stdout_until("started\n");
    ws.send(json!({"action": "kill_process"}));
    ws.expect_status("SANDBOX_EXECUTION_FORCE_KILLED");
    let result = ws.collect_until_done();
    assert_eq!(result.done["reason"], "killed", "{result:?}");
    let result = ws.run("bash", "sleep 0.5; ps -eo pid,ppid,pgid,stat,args");
    assert!(
        !result.stdout.contains("sleep 100"),
        "the killed process group left a process:\n{}",
        result.stdout
    );

    ws.kill_sandbox();
    assert_gone(&server, &sandbox_id, &token);
}

/// A child forked at the moment of the kill must die with its group. Under gVisor a process
/// forked while `kill(-pgid, SIGKILL)` runs can escape it; each round has a fair chance to hit
/// that window, so 15 rounds find it almost surely.
#[test]
fn kill_process_kills_a_child_forked_during_the_kill() {
    let server = TestServer::start(&[]);
    let mut created = create(&server, json!({}));
    let ws = &mut created.ws;
    for round in 0..15 {
        ws.start("bash", "(sleep 100; echo orphan) & echo started; wait");
        ws.expect_status("SANDBOX_EXECUTION_RUNNING");
        ws.read_stdout_until("started\n");
        ws.send(json!({"action": "kill_process"}));
        ws.expect_status("SANDBOX_EXECUTION_FORCE_KILLED");
        let result = ws.collect_until_done();
        assert_eq!(result.done["reason"], "killed", "{result:?}");
        let result = ws.run("bash", "sleep 0.3; ps -eo pid,ppid,pgid,stat,args");
        assert!(
            !result.stdout.contains("sleep 100"),
            "round {round}: the killed process group left a process:\n{}",
            result.stdout
        );
    }
    ws.kill_sandbox();
}

#[test]
fn kill_sandbox_while_an_execution_runs() {
    let server = TestServer::start(&[]);
    let Created {
        mut ws, sandbox_id, ..
    } = create(&server, json!({}));
    ws.start("bash", "echo busy; sleep 100");
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    ws.read_stdout_until("busy\n");
    ws.send(json!({"action": "kill_sandbox"}));
    ws.expect_status("SANDBOX_KILLING");
    ws.expect_status("SANDBOX_DELETING");
    // The execution may report its end (the sandbox went under it) before DELETED.
    loop {
        let frame = ws.recv();
        if is_status(&frame, "SANDBOX_DELETED") {
            break;
        }
        assert!(
            is_status(&frame, "SANDBOX_EXECUTION_DONE") || frame["event"] == "stdout",
            "unexpected frame while deleting: {frame}\n{:#?}",
            ws.log
        );
    }
    ws.expect_status("SANDBOX_KILLED");
    ws.expect_close(1000);
    assert!(!sandbox_listed(&server, &sandbox_id));
}

// ---------------------------------------------------------------------------------------------
// Checkpoint and snapshot on a server without CHECKPOINT_AND_RESTORE_PATH / FILESYSTEM_SNAPSHOT_PATH

#[test]
fn checkpoint_and_snapshot_without_storage() {
    let server = TestServer::start(&[]);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&server, json!({}));

    // While running: CHECKPOINTING, IN_PROGRESS_ERROR, error; the session continues.
    ws.start(
        "python",
        "import time\nprint('a', flush=True)\ntime.sleep(1.5)\nprint('b')",
    );
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    ws.read_stdout_until("a\n");
    ws.send(json!({"action": "checkpoint"}));
    ws.expect_status("SANDBOX_CHECKPOINTING");
    let message = ws.expect_error("SANDBOX_EXECUTION_IN_PROGRESS_ERROR");
    // The original clients match on this text.
    assert!(
        message.contains("Cannot checkpoint while an execution is in progress"),
        "{message}"
    );
    ws.send(json!({"action": "snapshot_filesystem", "name": "while-running"}));
    ws.expect_status("SANDBOX_FILESYSTEM_SNAPSHOT_CREATING");
    ws.expect_error("SANDBOX_FILESYSTEM_SNAPSHOT_ERROR");
    let result = ws.collect_until_done();
    assert_eq!(result.stdout, "b\n");
    assert_exited(&result.done, 0);

    // Snapshot: CREATING, ERROR + error; the session continues.
    ws.send(json!({"action": "snapshot_filesystem", "name": "snap1"}));
    ws.expect_status("SANDBOX_FILESYSTEM_SNAPSHOT_CREATING");
    let message = ws.expect_error("SANDBOX_FILESYSTEM_SNAPSHOT_ERROR");
    assert!(message.contains("FILESYSTEM_SNAPSHOT_PATH"), "{message}");
    let result = ws.run("bash", "echo after snapshot > /tmp/mark; cat /tmp/mark");
    assert_eq!(result.stdout, "after snapshot\n");

    // Idle: CHECKPOINT_ERROR + error + close 4000, and the sandbox survives.
    ws.send(json!({"action": "checkpoint"}));
    let message = ws.expect_error("SANDBOX_CHECKPOINT_ERROR");
    assert!(message.contains("CHECKPOINT_AND_RESTORE_PATH"), "{message}");
    ws.expect_close(4000);
    assert!(sandbox_listed(&server, &sandbox_id));
    let mut ws = attach(&server, &sandbox_id, &token);
    let result = ws.run("bash", "cat /tmp/mark");
    assert_eq!(
        result.stdout, "after snapshot\n",
        "the sandbox was not kept"
    );
    ws.kill_sandbox();
}

#[test]
fn init_asking_for_checkpoint_or_snapshot_is_a_creation_error() {
    let server = TestServer::start(&[]);
    let cases = [
        (
            json!({"enable_checkpoint": true}),
            "CHECKPOINT_AND_RESTORE_PATH",
        ),
        (
            json!({"enable_idle_timeout_auto_checkpoint": true}),
            "CHECKPOINT_AND_RESTORE_PATH",
        ),
        (
            json!({"filesystem_snapshot_name": "my-snap-42"}),
            "my-snap-42",
        ),
        (json!({"idle_timeout": -1}), "idle_timeout"),
        (json!({"idle_timeout": "soon"}), "idle_timeout"),
    ];
    for (init, needle) in cases {
        let mut ws = connect(server.port, "/create");
        ws.send(init.clone());
        let message = ws.expect_error("SANDBOX_CREATION_ERROR");
        assert!(
            message.contains(needle),
            "init {init}: the message must name {needle}: {message:?}"
        );
        ws.expect_close(4000);
    }
    // The init must be a JSON object.
    for text in ["not json", "[]", "42"] {
        let mut ws = connect(server.port, "/create");
        ws.send_text(text);
        ws.expect_error("SANDBOX_CREATION_ERROR");
        ws.expect_close(4000);
    }
    // Nothing was created for any of them; false flags and unknown keys are fine.
    assert!(runsc_list(&server.runsc_root()).len() <= 1, "only the pool");
    let mut created = create(
        &server,
        json!({"idle_timeout": 300, "enable_checkpoint": false,
               "enable_idle_timeout_auto_checkpoint": false, "enable_sandbox_handoff": false,
               "filesystem_snapshot_name": null, "some_future_key": {"x": 1}}),
    );
    let result = created.ws.run("bash", "echo ok");
    assert_eq!(result.stdout, "ok\n");
    created.ws.kill_sandbox();
}

/// Found by the session fuzz target: a creation error quoting a long non-ASCII value made a
/// close reason over the 123 bytes a close frame holds, and the client saw a protocol error
/// instead of the close.
#[test]
fn a_creation_error_quoting_a_long_value_still_closes_with_4000() {
    let server = TestServer::start(&[]);
    let name = "\u{e9}".repeat(80);
    let mut ws = connect(server.port, "/create");
    ws.send(json!({ "filesystem_snapshot_name": name }));
    let message = ws.expect_error("SANDBOX_CREATION_ERROR");
    assert!(message.contains(&name), "{message:?}");
    ws.expect_close(4000);
}

// ---------------------------------------------------------------------------------------------
// Attach

#[test]
fn attach_after_drop_and_attach_errors() {
    let server = TestServer::start(&[]);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&server, json!({}));
    let result = ws.run("bash", "echo 1 > /tmp/attach-mark");
    assert_exited(&result.done, 0);

    // Another client while the creator is attached: IN_USE, close 1011.
    let mut other = connect(server.port, &attach_path(&sandbox_id, &token));
    other.expect_error("SANDBOX_IN_USE");
    other.expect_close(1011);

    ws.drop_abruptly();
    let mut ws = attach(&server, &sandbox_id, &token);
    let result = ws.run("bash", "cat /tmp/attach-mark");
    assert_eq!(result.stdout, "1\n", "a different sandbox?");

    // Permission: wrong token, empty token, no token, a prefix of the token.
    let wrong = "f".repeat(32);
    for path in [
        attach_path(&sandbox_id, &wrong),
        attach_path(&sandbox_id, ""),
        format!("/attach/{sandbox_id}"),
        attach_path(&sandbox_id, &token[..31]),
        format!("{}0", attach_path(&sandbox_id, &token)),
    ] {
        let mut denied = connect(server.port, &path);
        denied.expect_error("SANDBOX_PERMISSION_DENIAL_ERROR");
        denied.expect_close(4000);
    }
    // Unknown ids (also malformed ones).
    for id in [UNKNOWN_ID, "nope", "../../etc"] {
        let mut missing = connect(server.port, &attach_path(id, &token));
        missing.expect_error("SANDBOX_NOT_FOUND");
        missing.expect_close(1011);
    }
    // A second concurrent attach: IN_USE; the attached client is unaffected.
    let mut second = connect(server.port, &attach_path(&sandbox_id, &token));
    second.expect_error("SANDBOX_IN_USE");
    second.expect_close(1011);
    let result = ws.run("python", "print('still mine')");
    assert_eq!(result.stdout, "still mine\n");

    // A clean close, then attach again.
    ws.close();
    let mut ws = attach(&server, &sandbox_id, &token);
    let result = ws.run("bash", "echo again");
    assert_eq!(result.stdout, "again\n");
    ws.kill_sandbox();
}

// ---------------------------------------------------------------------------------------------
// Reconnect

/// Lines "0".."5" from `text`.
fn numbers(text: &str) -> Vec<u32> {
    text.lines()
        .map(|line| {
            line.trim()
                .parse()
                .unwrap_or_else(|_| panic!("not a number line: {line:?}"))
        })
        .collect()
}

#[test]
fn reconnect_resends_the_output_produced_while_away() {
    let server = TestServer::start(&[]);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&server, json!({}));
    ws.start(
        "python",
        "import time\nfor i in range(6):\n    print(i, flush=True)\n    time.sleep(0.3)",
    );
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    let before = ws.read_stdout_until("\n");
    ws.drop_abruptly();
    let received = numbers(&before);
    assert!(!received.is_empty());

    let mut ws = attach(&server, &sandbox_id, &token);
    ws.send(json!({"action": "reconnect"}));
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    let result = ws.collect_until_done();
    assert_exited(&result.done, 0);
    let mut all = received.clone();
    all.extend(numbers(&result.stdout));
    assert_eq!(
        all,
        (0..6).collect::<Vec<u32>>(),
        "before the drop {before:?}, after the reconnect {:?}",
        result.stdout
    );

    // Nothing running: reconnect sends nothing and the session stays usable.
    ws.send(json!({"action": "reconnect"}));
    ws.expect_silence(Duration::from_secs(1));
    let result = ws.run("bash", "echo usable");
    assert_eq!(result.stdout, "usable\n");

    // An execution that ended while the client was away: its output and DONE are kept.
    ws.start(
        "python",
        "import time\nprint('first', flush=True)\ntime.sleep(0.5)\nprint('second')\nraise SystemExit(4)",
    );
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    ws.read_stdout_until("first\n");
    ws.drop_abruptly();
    std::thread::sleep(Duration::from_secs(2));
    let mut ws = attach(&server, &sandbox_id, &token);
    // Nothing is sent before the client asks.
    ws.expect_silence(Duration::from_millis(500));
    ws.send(json!({"action": "reconnect"}));
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    let result = ws.collect_until_done();
    assert_eq!(result.stdout, "second\n", "{result:?}");
    assert_exited(&result.done, 4);
    // Only once.
    ws.send(json!({"action": "reconnect"}));
    ws.expect_silence(Duration::from_secs(1));
    ws.kill_sandbox();
}

#[test]
fn output_held_for_an_absent_client_is_bounded_and_nothing_is_dropped() {
    let server = TestServer::start(&[
        ("SANDBOX_DETACHED_OUTPUT_BYTES", "65536"),
        ("SANDBOX_MAX_OUTPUT_BYTES", "67108864"),
    ]);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&server, json!({}));
    // 20 MB of numbered lines, written only after the client is gone.
    const LINES: usize = 200_000;
    ws.start(
        "python",
        &format!(
            "import sys, time\nprint('ready', flush=True)\ntime.sleep(1)\nfor i in range({LINES}):\n    sys.stdout.write(f'{{i:099d}}\\n')\nprint('end')"
        ),
    );
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    ws.read_stdout_until("ready\n");
    let baseline = server.rss_kib().expect("server RSS");
    ws.drop_abruptly();
    let mut peak = baseline;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        peak = peak.max(server.rss_kib().expect("server RSS"));
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("server RSS while detached: baseline {baseline} KiB, peak {peak} KiB");
    assert!(
        peak < baseline + 10 * 1024,
        "the server held the output of an absent client: RSS {baseline} -> {peak} KiB"
    );

    let mut ws = attach(&server, &sandbox_id, &token);
    ws.send(json!({"action": "reconnect"}));
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    let result = ws.collect_until_done();
    assert_exited(&result.done, 0);
    let mut lines = result.stdout.lines();
    for expected in 0..LINES {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("output ends before line {expected}"));
        assert_eq!(
            line,
            format!("{expected:099}"),
            "line {expected} lost or reordered"
        );
    }
    assert_eq!(lines.next(), Some("end"));
    assert_eq!(lines.next(), None);
    ws.kill_sandbox();
}

#[test]
fn pings_keep_a_reading_client_and_drop_a_silent_one() {
    let server = TestServer::start(&[
        ("SANDBOX_WS_PING_INTERVAL_SECS", "1"),
        ("SANDBOX_WS_PONG_TIMEOUT_SECS", "3"),
    ]);
    // A client that reads (and so answers pings) stays through a 6 s silent execution.
    let mut reader = create(&server, json!({}));
    let result = reader.ws.run("bash", "sleep 6; echo still here");
    assert_eq!(result.stdout, "still here\n");
    reader.ws.kill_sandbox();

    // A client that neither reads nor sends is dropped; its sandbox stays.
    let Created {
        ws: silent,
        sandbox_id,
        token,
    } = create(&server, json!({}));
    std::thread::sleep(Duration::from_secs(7));
    let mut silent = silent;
    let closed = match silent.next_within(Duration::from_secs(5)) {
        Frame::Json(frame) => panic!("unexpected frame {frame}"),
        Frame::Timeout => false,
        Frame::Close(..) | Frame::Eof(_) => true,
    };
    assert!(closed, "a peer that does not answer pings must be dropped");
    let mut back = attach(&server, &sandbox_id, &token);
    let result = back.run("bash", "echo kept");
    assert_eq!(result.stdout, "kept\n");
    back.kill_sandbox();
}

// ---------------------------------------------------------------------------------------------
// Idle timeout

/// The idle timeout never ends a sandbox whose client is connected, even one that is silent
/// for longer than the timeout (an agent thinking); once the client is gone it fires, and
/// the next attach says why the sandbox is gone.
#[test]
fn a_connected_client_keeps_its_sandbox_and_the_idle_timeout_runs_once_it_is_gone() {
    let server = TestServer::start(&[]);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&server, json!({"idle_timeout": 2}));
    // Thinking, connected, for twice the idle timeout: nothing happens.
    ws.expect_silence(Duration::from_secs(4));
    let result = ws.run("bash", "echo still here");
    assert_eq!(result.stdout, "still here\n", "{result:?}");
    ws.close();
    let gone_since = Instant::now();
    assert!(
        wait_until(Duration::from_secs(20), || !sandbox_listed(
            &server,
            &sandbox_id
        )),
        "an unattended sandbox outlived its idle timeout"
    );
    assert!(
        gone_since.elapsed() >= Duration::from_millis(1500),
        "deleted before its idle timeout ran out"
    );
    let mut again = connect(server.port, &attach_path(&sandbox_id, &token));
    let message = again.expect_error("SANDBOX_NOT_FOUND");
    assert_eq!(
        message,
        format!("sandbox {sandbox_id} was deleted after 2 s without a client (idle_timeout)")
    );
    again.expect_close(1011);
    // Without the token, nothing says the sandbox ever existed.
    let mut stranger = connect(server.port, &attach_path(&sandbox_id, "wrong"));
    let message = stranger.expect_error("SANDBOX_NOT_FOUND");
    assert!(!message.contains("idle_timeout"), "{message}");
    stranger.expect_close(1011);
}

#[test]
fn a_running_execution_keeps_the_session_alive_past_its_idle_timeout() {
    let server = TestServer::start(&[]);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&server, json!({"idle_timeout": 2}));
    ws.start("bash", "sleep 5; echo survived");
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    ws.close();
    // Away for longer than the idle timeout while it runs.
    std::thread::sleep(Duration::from_secs(3));
    let mut ws = attach(&server, &sandbox_id, &token);
    ws.send(json!({"action": "reconnect"}));
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    let result = ws.collect_until_done();
    assert_eq!(result.stdout, "survived\n", "{result:?}");
    assert_exited(&result.done, 0);
    // Afterwards, without a client, it ends.
    ws.close();
    assert!(wait_until(Duration::from_secs(20), || !sandbox_listed(
        &server,
        &sandbox_id
    )));
}

#[test]
fn idle_timeout_defaults_and_is_capped_by_the_server_maximum() {
    let server = TestServer::start(&[
        ("SANDBOX_IDLE_TIMEOUT_SECS", "2"),
        ("SANDBOX_MAX_IDLE_TIMEOUT_SECS", "3"),
        ("SANDBOX_POOL_SIZE", "2"),
    ]);
    // No value (server default), null, 0 ("never", capped) and a huge value (capped): all end
    // once their client is gone.
    let inits = [
        json!({}),
        json!({"idle_timeout": null}),
        json!({"idle_timeout": 0}),
        json!({"idle_timeout": 100000}),
    ];
    let sessions: Vec<Created> = inits
        .into_iter()
        .map(|init| create(&server, init))
        .collect();
    let mut ids = Vec::new();
    for created in sessions {
        ids.push(created.sandbox_id.clone());
        created.ws.close();
    }
    for sandbox_id in &ids {
        assert!(
            wait_until(Duration::from_secs(30), || !sandbox_listed(
                &server, sandbox_id
            )),
            "{sandbox_id} outlived its (capped) idle timeout"
        );
    }
}

#[test]
fn client_messages_restart_the_idle_timer() {
    let server = TestServer::start(&[]);
    let mut created = create(&server, json!({"idle_timeout": 3}));
    let ws = &mut created.ws;
    // 6 s of activity, a message every second: never 3 s idle.
    for _ in 0..6 {
        ws.send(json!({"action": "reconnect"}));
        ws.expect_silence(Duration::from_secs(1));
    }
    let result = ws.run("bash", "echo alive");
    assert_eq!(result.stdout, "alive\n");
    ws.kill_sandbox();
}

// ---------------------------------------------------------------------------------------------
// Additions to the execution message

#[test]
fn exec_env_cwd_timeout_and_output_limit() {
    let server = TestServer::start(&[("SANDBOX_MAX_OUTPUT_BYTES", "1000000")]);
    let mut created = create(&server, json!({}));
    let ws = &mut created.ws;

    let result = ws.run_with(
        "bash",
        "echo \"$GREETING|$OTHER\"",
        json!({"env": {"GREETING": "hi there", "OTHER": "x=y"}}),
    );
    assert_eq!(result.stdout, "hi there|x=y\n", "{result:?}");
    let result = ws.run_with(
        "python",
        "import os\nprint(os.environ['GREETING'])",
        json!({"env": {"GREETING": "from python"}}),
    );
    assert_eq!(result.stdout, "from python\n", "{result:?}");
    // Env is per execution.
    let result = ws.run("bash", "echo \"[${GREETING:-unset}]\"");
    assert_eq!(result.stdout, "[unset]\n");

    let result = ws.run("bash", "pwd; echo $HOME");
    assert_eq!(result.stdout, "/root\n/root\n", "default cwd");
    let result = ws.run_with("bash", "pwd", json!({"cwd": "/tmp"}));
    assert_eq!(result.stdout, "/tmp\n");
    let result = ws.run_with(
        "python",
        "import os\nprint(os.getcwd())",
        json!({"cwd": "/tmp"}),
    );
    assert_eq!(result.stdout, "/tmp\n");

    let started = Instant::now();
    let result = ws.run_with(
        "bash",
        "echo start; sleep 30; echo never",
        json!({"timeout": 1}),
    );
    assert_eq!(result.stdout, "start\n", "{result:?}");
    assert_eq!(result.done["reason"], "timeout", "{result:?}");
    assert_eq!(result.done["timed_out"], true, "{result:?}");
    assert_eq!(result.done["exit_code"], 137, "{result:?}");
    assert_eq!(result.done["signal"], 9, "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(25));
    let result = ws.run_with("bash", "echo quick", json!({"timeout": 0.5}));
    assert_exited(&result.done, 0);

    // Past SANDBOX_MAX_OUTPUT_BYTES the process is killed.
    let result = ws.run_with("bash", "yes", json!({"timeout": 60}));
    assert_eq!(result.done["reason"], "output_limit", "{}", result.done);
    assert!(
        result.stdout.len() <= 1_000_000,
        "{} bytes",
        result.stdout.len()
    );
    assert!(result.stdout.starts_with("y\ny\n"));

    // Bad values are execution errors, not crashes.
    for extra in [
        json!({"env": {"A": 1}}),
        json!({"env": "A=1"}),
        json!({"env": {"A=B": "1"}}),
        json!({"cwd": "relative/dir"}),
        json!({"cwd": 5}),
        json!({"timeout": 0}),
        json!({"timeout": -1}),
        json!({"timeout": "10"}),
    ] {
        let mut message = json!({"language": "bash", "code": "echo no"});
        for (key, value) in extra.as_object().unwrap() {
            message[key] = value.clone();
        }
        ws.send(message.clone());
        let error = ws.expect_error("SANDBOX_EXECUTION_ERROR");
        assert!(!error.is_empty(), "{message}");
    }
    let result = ws.run("bash", "echo fine");
    assert_eq!(result.stdout, "fine\n");
    ws.kill_sandbox();
}

#[test]
fn output_encodings() {
    let server = TestServer::start(&[]);
    let mut created = create(&server, json!({}));
    let ws = &mut created.ws;

    // base64: the exact bytes, and every output frame says so.
    ws.start_with(
        "bash",
        "printf '\\x00\\xff\\xfe'; printf 'err\\x80' >&2",
        json!({"output_encoding": "base64"}),
    );
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let done = loop {
        let frame = ws.recv();
        match frame["event"].as_str() {
            Some("stdout") | Some("stderr") => {
                assert_eq!(frame["encoding"], "base64", "{frame}");
                let bytes = ws::base64_decode(frame["data"].as_str().unwrap());
                if frame["event"] == "stdout" {
                    stdout.extend(bytes);
                } else {
                    stderr.extend(bytes);
                }
            }
            _ => break frame,
        }
    };
    assert!(is_status(&done, "SANDBOX_EXECUTION_DONE"), "{done}");
    assert_eq!(stdout, [0x00, 0xff, 0xfe]);
    assert_eq!(stderr, b"err\x80");

    // Bigger binary output survives byte for byte.
    ws.start_with(
        "python",
        "import sys\nsys.stdout.buffer.write(bytes(range(256)) * 512)",
        json!({"output_encoding": "base64"}),
    );
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    let mut stdout = Vec::new();
    loop {
        let frame = ws.recv();
        if frame["event"] == "stdout" {
            stdout.extend(ws::base64_decode(frame["data"].as_str().unwrap()));
        } else {
            assert!(is_status(&frame, "SANDBOX_EXECUTION_DONE"), "{frame}");
            break;
        }
    }
    let expected: Vec<u8> = (0..512).flat_map(|_| 0..=255u8).collect();
    assert!(
        stdout == expected,
        "{} bytes differ from the expected {}",
        stdout.len(),
        expected.len()
    );

    // Text: a character split across writes arrives intact.
    let result = ws.run(
        "python",
        "import sys, time\nfor b in '€ü'.encode():\n    sys.stdout.buffer.write(bytes([b]))\n    sys.stdout.buffer.flush()\n    time.sleep(0.2)\nprint()",
    );
    assert_eq!(result.stdout, "€ü\n", "{result:?}");
    for (_, data) in &result.frames {
        assert!(
            !data.contains('\u{FFFD}'),
            "a split character was broken: {result:?}"
        );
    }
    assert_exited(&result.done, 0);

    // Invalid UTF-8 becomes U+FFFD in text mode; the rest is kept.
    let result = ws.run(
        "python",
        "import sys\nsys.stdout.buffer.write(b'a\\xffb\\n')\nsys.stdout.buffer.flush()\nsys.stderr.buffer.write(b'\\xe2\\x82')",
    );
    assert_eq!(result.stdout, "a\u{FFFD}b\n", "{result:?}");
    assert!(
        result.stderr.starts_with('\u{FFFD}') && !result.stderr.contains('\u{20AC}'),
        "a truncated character at the end must be replaced: {result:?}"
    );
    ws.kill_sandbox();
}

// ---------------------------------------------------------------------------------------------
// Hostile clients

#[test]
fn binary_frame_is_refused_with_1003() {
    let server = TestServer::start(&[]);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&server, json!({}));
    ws.try_send(Message::Binary(
        b"{\"language\":\"bash\",\"code\":\"echo\"}".to_vec(),
    ))
    .expect("send a binary frame");
    ws.expect_close(1003);
    // The sandbox outlives the refused connection.
    let mut ws = attach(&server, &sandbox_id, &token);
    let result = ws.run("bash", "echo ok");
    assert_eq!(result.stdout, "ok\n");
    ws.kill_sandbox();
}

#[test]
fn oversized_message_is_refused_with_1009() {
    let server = TestServer::start(&[("SANDBOX_WS_MAX_MESSAGE_BYTES", "65536")]);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&server, json!({}));
    // Just under the limit is fine.
    let code = format!("x = '{}'\nprint(len(x))", "a".repeat(60_000));
    let result = ws.run("python", &code);
    assert_eq!(result.stdout, "60000\n");

    let code = format!("print('{}')", "a".repeat(100_000));
    let _ = ws.try_send(Message::Text(
        json!({"language": "python", "code": code}).to_string(),
    ));
    ws.expect_close(1009);
    let mut ws = attach(&server, &sandbox_id, &token);
    ws.kill_sandbox();
    assert!(server.get("/status").status == 200);
}

#[test]
fn invalid_utf8_text_frame_is_refused_with_1007() {
    let server = TestServer::start(&[]);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&server, json!({}));
    // A masked text frame holding 0xff 0xfe: not UTF-8 (tungstenite cannot send one).
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let payload = [0xffu8, 0xfe];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, byte)| byte ^ mask[i % 4]),
    );
    {
        use std::io::Write;
        let mut stream = ws.stream();
        stream.write_all(&frame).expect("write a raw frame");
    }
    ws.expect_close(1007);
    let mut ws = attach(&server, &sandbox_id, &token);
    ws.kill_sandbox();
}

#[test]
fn message_flood_is_refused_with_1008() {
    let server = TestServer::start(&[("SANDBOX_WS_MESSAGES_PER_SEC", "20")]);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&server, json!({}));
    // A sustained rate under the limit is fine.
    for _ in 0..10 {
        ws.send(json!({"action": "reconnect"}));
        std::thread::sleep(Duration::from_millis(100));
    }
    ws.expect_silence(Duration::from_millis(200));
    // 200 messages at once: far over 20/s (bursts of 40).
    for _ in 0..200 {
        if ws
            .try_send(Message::Text(json!({"action": "reconnect"}).to_string()))
            .is_err()
        {
            break;
        }
    }
    ws.expect_close(1008);
    // The server and the sandbox are fine.
    let mut ws = attach(&server, &sandbox_id, &token);
    let result = ws.run("bash", "echo ok");
    assert_eq!(result.stdout, "ok\n");
    ws.kill_sandbox();
}

#[test]
fn a_client_that_never_reads_does_not_grow_the_server() {
    let server = TestServer::start(&[]);
    let Created {
        ws: mut flooder, ..
    } = create(&server, json!({}));
    let baseline = server.rss_kib().expect("server RSS");
    // `yes` writes as fast as it can; this client never reads.
    flooder.start_with(
        "bash",
        "yes 'flood flood flood flood'",
        json!({"timeout": 60}),
    );
    let mut peak = baseline;
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline {
        peak = peak.max(server.rss_kib().expect("server RSS"));
        std::thread::sleep(Duration::from_millis(100));
    }

    // Another session on the same server works normally meanwhile.
    let mut other = create(&server, json!({}));
    let result = other.ws.run("python", "print(sum(range(10)))");
    assert_eq!(result.stdout, "45\n");
    assert_exited(&result.done, 0);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        peak = peak.max(server.rss_kib().expect("server RSS"));
        std::thread::sleep(Duration::from_millis(100));
    }
    other.ws.kill_sandbox();
    eprintln!("server RSS: baseline {baseline} KiB, peak {peak} KiB");
    assert!(
        peak < 150 * 1024,
        "server RSS grew to {peak} KiB (baseline {baseline} KiB) for a client that never reads"
    );
    // The flood was real and is still running (paused, not finished): RUNNING then output.
    flooder.expect_status("SANDBOX_EXECUTION_RUNNING");
    for _ in 0..10 {
        let frame = flooder.recv();
        assert_eq!(frame["event"], "stdout", "{frame}");
        assert!(frame["data"].as_str().unwrap_or_default().contains("flood"));
    }
    // The flooder can still stop it (the server reads its messages while it cannot write).
    flooder.send(json!({"action": "kill_process"}));
    let mut read = 0usize;
    let done = loop {
        let frame = flooder.recv();
        if frame["event"] == "stdout" {
            read += frame["data"].as_str().unwrap_or_default().len();
        } else if is_status(&frame, "SANDBOX_EXECUTION_DONE") {
            break frame;
        } else {
            assert!(
                is_status(&frame, "SANDBOX_EXECUTION_FORCE_KILLED"),
                "{frame}"
            );
        }
    };
    assert_eq!(done["reason"], "killed", "{done} after {read} bytes");
    flooder.kill_sandbox();
    assert!(wait_until(Duration::from_secs(30), || runsc_list(
        &server.runsc_root()
    )
    .len()
        <= 1));
}

#[test]
fn a_vanished_client_leaves_the_server_up_and_the_sandbox_attachable_until_idle() {
    let server = TestServer::start(&[]);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&server, json!({"idle_timeout": 4}));
    ws.start(
        "python",
        "import time\nprint('working', flush=True)\ntime.sleep(1)\nprint('finished')",
    );
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    ws.read_stdout_until("working\n");
    ws.drop_abruptly();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(server.get("/status").status, 200);

    let mut ws = attach(&server, &sandbox_id, &token);
    ws.send(json!({"action": "reconnect"}));
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    let result = ws.collect_until_done();
    assert_eq!(result.stdout, "finished\n");
    assert_exited(&result.done, 0);
    ws.drop_abruptly();

    // Unattended past its idle timeout (4 s): deleted.
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(20), || !sandbox_listed(
            &server,
            &sandbox_id
        )),
        "an unattended sandbox outlived its idle timeout"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "deleted before its idle timeout"
    );
    let mut gone = connect(server.port, &attach_path(&sandbox_id, &token));
    gone.expect_error("SANDBOX_NOT_FOUND");
    gone.expect_close(1011);
    server.assert_healthy();
}

#[test]
fn a_client_that_floods_then_reads_receives_the_1008_close() {
    let server = TestServer::start(&[("SANDBOX_WS_MESSAGES_PER_SEC", "20")]);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&server, json!({}));
    // Output the client does not read, until every buffer on the way is full (the sandbox is
    // then paused by back-pressure): the close frame will queue behind it.
    ws.start("bash", "yes");
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    std::thread::sleep(Duration::from_secs(3));
    // Far over the message limit, and still sending long after the refusal: the server must
    // read and discard the rest rather than close on unread input (the reset that would send
    // throws away the queued output and the close frame behind it).
    let message = json!({"action": "reconnect"}).to_string();
    for _ in 0..50 {
        if ws.write_raw_text_frames(&message, 1000).is_err() {
            break;
        }
    }
    // Now read: the output, then the close.
    let close = loop {
        match ws.next_within(Duration::from_secs(30)) {
            Frame::Json(frame) if frame["event"] == "stdout" => continue,
            other => break other,
        }
    };
    assert!(
        matches!(close, Frame::Close(Some(1008), _)),
        "expected close 1008 after the output, got {close:?}"
    );
    // The server and the sandbox are fine.
    let mut ws = attach(&server, &sandbox_id, &token);
    ws.kill_sandbox();
    server.assert_healthy();
}

#[test]
fn sockets_without_init_hold_no_session_and_are_closed_after_the_bound() {
    let server = TestServer::start(&[
        ("SANDBOX_MAX_SESSIONS", "2"),
        ("SANDBOX_WS_INIT_TIMEOUT_SECS", "3"),
    ]);
    // As many sockets as there are session slots, none sending an init.
    let mut idle: Vec<ws::Ws> = (0..2).map(|_| connect(server.port, "/create")).collect();
    // They hold no slot: creating works at once.
    let mut first = create(&server, json!({}));
    // Each gets a creation error naming the bound, and the close.
    for socket in &mut idle {
        let message = socket.expect_error("SANDBOX_CREATION_ERROR");
        assert!(message.contains("no init message within 3 s"), "{message}");
        socket.expect_close(4000);
    }
    // The second slot works, and the limit still holds for real sessions.
    let mut second = create(&server, json!({}));
    let mut third = connect(server.port, "/create");
    let message = third.expect_error("SANDBOX_CREATION_ERROR");
    assert!(message.contains("limit"), "{message}");
    third.expect_close(1013);
    // A socket let in while a slot was free, whose init arrives when the server is full
    // again, is refused then.
    first.ws.kill_sandbox();
    let mut late = connect(server.port, "/create");
    let mut fourth = create(&server, json!({}));
    late.send(json!({}));
    let message = late.expect_error("SANDBOX_CREATION_ERROR");
    assert!(message.contains("limit"), "{message}");
    late.expect_close(1013);
    second.ws.kill_sandbox();
    fourth.ws.kill_sandbox();
}

#[test]
fn session_limit_is_a_creation_error_with_1013() {
    let server = TestServer::start(&[("SANDBOX_MAX_SESSIONS", "1")]);
    let mut first = create(&server, json!({}));
    let mut second = connect(server.port, "/create");
    let message = second.expect_error("SANDBOX_CREATION_ERROR");
    assert!(message.contains("limit"), "{message}");
    second.expect_close(1013);
    let result = first.ws.run("bash", "echo first");
    assert_eq!(result.stdout, "first\n");
    first.ws.kill_sandbox();
    // The slot is free again.
    let mut third = create(&server, json!({}));
    third.ws.kill_sandbox();
}

#[test]
fn server_shutdown_closes_sessions_with_1001() {
    let mut server = TestServer::start(&[]);
    let mut idle = create(&server, json!({}));
    let mut busy = create(&server, json!({}));
    busy.ws.start("bash", "echo busy; sleep 100");
    busy.ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    busy.ws.read_stdout_until("busy\n");
    let status = server
        .terminate(Duration::from_secs(30))
        .expect("the server did not exit on SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    idle.ws.expect_close(1001);
    busy.ws.expect_close(1001);
    assert!(
        runsc_list(&server.runsc_root()).is_empty(),
        "sandboxes left after shutdown"
    );
}

#[test]
fn websocket_endpoints_without_upgrade_answer_426() {
    let server = TestServer::start(&[]);
    for path in ["/create", &format!("/attach/{UNKNOWN_ID}?sandbox_token=x")] {
        let response = server.get(path);
        assert_eq!(response.status, 426, "{path}: {response:?}");
        assert!(
            response
                .header("content-type")
                .unwrap_or_default()
                .starts_with("application/json"),
            "{response:?}"
        );
        let message = response.error_message();
        assert!(message.contains("WebSocket"), "{message}");
    }
    // An upgrade to any other path is refused before the handshake.
    let refused = ws::try_connect(server.port, "/nope")
        .err()
        .unwrap_or_default();
    assert!(refused.contains("404"), "{refused}");
    assert!(runsc_list(&server.runsc_root()).len() <= 1, "only the pool");
}
