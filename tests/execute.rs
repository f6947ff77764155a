//! `POST /execute` against the real server, runsc and sandbox image: output, exit codes,
//! isolation, limits (timeout, fork bomb, memory, output flood) and parallel sandboxes.
//!
//! Each test starts its own server (own port, own state directory, pool of 1) and stops it when
//! it ends, also on failure. Run with two threads on a 2-core machine:
//!
//!     cargo test --test execute -- --test-threads=2

mod common;

use std::time::Duration;

use common::{is_sandbox_id, wait_until, TestServer};
use serde_json::Value;

const JSON_KEYS: &[&str] = &[
    "stdout",
    "stderr",
    "exit_code",
    "signal",
    "reason",
    "timed_out",
    "truncated",
    "duration_ms",
];

fn assert_json_shape(result: &Value) {
    for key in JSON_KEYS {
        assert!(
            result.get(key).is_some(),
            "key {key:?} missing from {result}"
        );
    }
    assert!(
        result["stdout"].is_string() && result["stderr"].is_string(),
        "{result}"
    );
    assert!(result["exit_code"].is_i64(), "{result}");
    assert!(
        result["signal"].is_null() || result["signal"].is_i64(),
        "{result}"
    );
    assert!(result["reason"].is_string(), "{result}");
    assert!(
        result["timed_out"].is_boolean() && result["truncated"].is_boolean(),
        "{result}"
    );
    assert!(result["duration_ms"].is_u64(), "{result}");
}

/// A clean exit: code 0, not signaled, nothing cut.
fn assert_clean_exit(result: &Value) {
    assert_json_shape(result);
    assert_eq!(result["exit_code"], 0, "{result}");
    assert_eq!(result["reason"], "exited", "{result}");
    assert_eq!(result["signal"], Value::Null, "{result}");
    assert_eq!(result["timed_out"], false, "{result}");
    assert_eq!(result["truncated"], false, "{result}");
}

#[test]
fn python_and_bash_output_in_json_and_text() {
    let server = TestServer::start(&[]);

    let response = server.post_execute(
        "python",
        "print('hello from python')\nprint(6 * 7)",
        None,
        true,
    );
    assert_eq!(response.status, 200, "{response:?}");
    assert!(
        response
            .header("content-type")
            .unwrap_or_default()
            .starts_with("application/json"),
        "{response:?}"
    );
    let sandbox_id = response
        .header("x-sandbox-id")
        .expect("X-Sandbox-Id header")
        .to_string();
    assert!(is_sandbox_id(&sandbox_id), "bad sandbox id {sandbox_id:?}");
    let result = response.json();
    assert_clean_exit(&result);
    assert_eq!(result["stdout"], "hello from python\n42\n");
    assert_eq!(result["stderr"], "");

    let response = server.post_execute(
        "bash",
        "echo \"hello from ${0##*/}\" | tr a-z A-Z; echo $((6*7))",
        None,
        true,
    );
    assert_eq!(response.status, 200, "{response:?}");
    let second_id = response
        .header("x-sandbox-id")
        .expect("X-Sandbox-Id header")
        .to_string();
    assert!(is_sandbox_id(&second_id), "bad sandbox id {second_id:?}");
    assert_ne!(
        second_id, sandbox_id,
        "every execution gets a fresh sandbox"
    );
    let result = response.json();
    assert_clean_exit(&result);
    assert_eq!(result["stdout"], "HELLO FROM BASH\n42\n");

    // The default form streams text/plain, chunked, with the sandbox id in the headers.
    let response = server.post_execute("python", "print('streamed')", None, false);
    assert_eq!(response.status, 200, "{response:?}");
    assert!(
        response
            .header("content-type")
            .unwrap_or_default()
            .starts_with("text/plain"),
        "{response:?}"
    );
    assert!(response.chunked, "the text form is chunked: {response:?}");
    assert!(
        is_sandbox_id(response.header("x-sandbox-id").unwrap_or_default()),
        "{response:?}"
    );
    assert_eq!(response.text(), "streamed\n");

    // Non-ASCII output survives.
    let result = server.execute_json("python", "print('héllo wörld ✓')", None);
    assert_eq!(result["stdout"], "héllo wörld ✓\n");
}

#[test]
fn stderr_is_separate_in_json_and_interleaved_in_text() {
    let server = TestServer::start(&[]);
    // Pauses between writes so the order across the two pipes is well defined.
    let code =
        "echo out1; sleep 0.3; echo err1 >&2; sleep 0.3; echo out2; sleep 0.3; echo err2 >&2";

    let result = server.execute_json("bash", code, Some(30.0));
    assert_clean_exit(&result);
    assert_eq!(result["stdout"], "out1\nout2\n");
    assert_eq!(result["stderr"], "err1\nerr2\n");

    let response = server.post_execute("bash", code, Some(30.0), false);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.text(), "out1\nerr1\nout2\nerr2\n");

    let code = "import sys, time\nprint('p-out', flush=True)\ntime.sleep(0.3)\nprint('p-err', file=sys.stderr, flush=True)";
    let result = server.execute_json("python", code, Some(30.0));
    assert_eq!(result["stdout"], "p-out\n");
    assert_eq!(result["stderr"], "p-err\n");
    let response = server.post_execute("python", code, Some(30.0), false);
    assert_eq!(response.text(), "p-out\np-err\n");
}

#[test]
fn exit_codes_and_python_tracebacks() {
    let server = TestServer::start(&[]);

    let result = server.execute_json("bash", "echo before; exit 3; echo after", None);
    assert_json_shape(&result);
    assert_eq!(result["exit_code"], 3, "{result}");
    assert_eq!(result["reason"], "exited", "{result}");
    assert_eq!(result["signal"], Value::Null);
    assert_eq!(result["stdout"], "before\n");

    let result = server.execute_json("python", "import sys\nprint('x')\nsys.exit(4)", None);
    assert_eq!(result["exit_code"], 4, "{result}");
    assert_eq!(result["reason"], "exited", "{result}");
    assert_eq!(result["stdout"], "x\n");
    assert_eq!(result["stderr"], "");

    // An uncaught exception: exit 1 and the traceback `python3 -c` prints, without any frame of
    // the sandbox's launcher.
    let result = server.execute_json("python", "1/0", None);
    assert_eq!(result["exit_code"], 1, "{result}");
    assert_eq!(result["reason"], "exited", "{result}");
    let stderr = result["stderr"].as_str().unwrap();
    assert!(
        stderr.starts_with("Traceback (most recent call last):\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains("  File \"<string>\", line 1, in <module>\n"),
        "{stderr}"
    );
    assert!(
        stderr.ends_with("ZeroDivisionError: division by zero\n"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("File ").count(),
        1,
        "only the user's frame: {stderr}"
    );

    // A syntax error is reported like python3 -c does, with exit code 1.
    let result = server.execute_json("python", "def broken(:\n    pass", None);
    assert_eq!(result["exit_code"], 1, "{result}");
    let stderr = result["stderr"].as_str().unwrap();
    assert!(stderr.contains("File \"<string>\", line 1"), "{stderr}");
    assert!(stderr.contains("SyntaxError"), "{stderr}");

    // A process that kills itself is "signaled", with the shell's 128+N code.
    let result = server.execute_json("bash", "kill -TERM $$", None);
    assert_eq!(result["exit_code"], 143, "{result}");
    assert_eq!(result["signal"], 15, "{result}");
    assert_eq!(result["reason"], "signaled", "{result}");
}

#[test]
fn sandbox_sees_its_image_and_not_the_host() {
    let server = TestServer::start(&[]);

    let result = server.execute_json("bash", "ls -l /", None);
    assert_clean_exit(&result);
    let listing = result["stdout"].as_str().unwrap();
    for entry in [" usr", " etc", " proc", " tmp", " root"] {
        assert!(
            listing.contains(entry),
            "`ls -l /` lacks {entry:?}:\n{listing}"
        );
    }

    // A marker in the host's /tmp must not appear in the sandbox's /tmp.
    let marker_name = format!("crs-marker-{}", std::process::id());
    let marker = std::path::Path::new("/tmp").join(&marker_name);
    std::fs::write(&marker, "host secret").unwrap();
    struct RemoveOnDrop(std::path::PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _marker_guard = RemoveOnDrop(marker.clone());

    // Host paths that must not exist inside: the repo, this test's binaries, the server's state,
    // the image itself, and what the host's /root holds beyond the image's /root.
    let mut host_paths = vec![
        "/work".to_string(),
        marker.display().to_string(),
        common::SERVER_BIN.to_string(),
        env!("CARGO_MANIFEST_DIR").to_string(),
        server.state_dir.display().to_string(),
        "/var/lib/cloud-run-sandbox".to_string(),
    ];
    let image_root: Vec<String> = std::fs::read_dir(format!("{}/root", common::DEFAULT_ROOTFS))
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir("/root") {
        for entry in entries.flatten().take(30) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !image_root.contains(&name) {
                host_paths.push(format!("/root/{name}"));
            }
        }
    }
    let code = format!(
        "import json, os\npaths = json.loads({:?})\nprint(json.dumps([p for p in paths if os.path.lexists(p)]))\nprint(sorted(os.listdir('/tmp')))",
        serde_json::to_string(&host_paths).unwrap()
    );
    let result = server.execute_json("python", &code, None);
    assert_clean_exit(&result);
    let stdout = result["stdout"].as_str().unwrap();
    let first_line = stdout.lines().next().unwrap_or_default();
    let visible: Vec<String> =
        serde_json::from_str(first_line).unwrap_or_else(|_| panic!("bad output {stdout:?}"));
    assert!(
        visible.is_empty(),
        "host paths visible inside the sandbox: {visible:?} (checked {host_paths:?})"
    );
    assert!(
        !stdout.contains(&marker_name),
        "the host's /tmp leaks into the sandbox: {stdout}"
    );
    assert!(marker.exists(), "the marker must still be on the host");

    // Writes inside do not reach the host.
    let inside_name = format!("crs-inside-{}", std::process::id());
    let result = server.execute_json(
        "bash",
        &format!("echo x > /tmp/{inside_name} && echo x > /{inside_name} && echo wrote"),
        None,
    );
    assert_eq!(result["stdout"], "wrote\n", "{result}");
    assert!(!std::path::Path::new("/tmp").join(&inside_name).exists());
    assert!(!std::path::Path::new("/").join(&inside_name).exists());
    let image_copy = std::path::Path::new(common::DEFAULT_ROOTFS).join(&inside_name);
    assert!(
        !image_copy.exists(),
        "a sandbox wrote into the shared image"
    );
}

#[test]
fn network_is_off() {
    let server = TestServer::start(&[]);
    let code = format!(
        r#"import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=5)
    print("CONNECTED")
except OSError as error:
    print("BLOCKED", type(error).__name__)
try:
    socket.getaddrinfo("example.com", 80)
    print("RESOLVED")
except OSError as error:
    print("NO-DNS", type(error).__name__)
"#,
        port = server.port
    );
    let result = server.execute_json("python", &code, Some(30.0));
    assert_clean_exit(&result);
    let stdout = result["stdout"].as_str().unwrap();
    assert!(
        stdout.starts_with("BLOCKED "),
        "the sandbox reached the server's port: {result}"
    );
    assert!(
        stdout.contains("NO-DNS "),
        "name resolution works inside: {result}"
    );
    // Only a loopback interface, if any.
    let result = server.execute_json("bash", "cat /proc/net/dev", None);
    let interfaces: Vec<&str> = result["stdout"]
        .as_str()
        .unwrap()
        .lines()
        .skip(2)
        .filter_map(|line| line.split(':').next())
        .map(str::trim)
        .collect();
    assert!(
        interfaces.iter().all(|name| *name == "lo"),
        "network interfaces inside: {interfaces:?}"
    );
}

#[test]
fn timeouts() {
    let server = TestServer::start(&[
        ("SANDBOX_EXEC_TIMEOUT_SECS", "20"),
        ("SANDBOX_MAX_EXEC_TIMEOUT_SECS", "30"),
    ]);

    let result = server.execute_json("python", "while True: pass", Some(1.0));
    assert_json_shape(&result);
    assert_eq!(result["reason"], "timeout", "{result}");
    assert_eq!(result["timed_out"], true, "{result}");
    assert_eq!(result["exit_code"], 137, "{result}");
    assert_eq!(result["signal"], 9, "{result}");
    assert!(result["duration_ms"].as_u64().unwrap() >= 900, "{result}");

    // Output written before the timeout is kept; a fractional timeout is accepted.
    let result = server.execute_json("bash", "echo started; sleep 100", Some(1.5));
    assert_eq!(result["reason"], "timeout", "{result}");
    assert_eq!(result["stdout"], "started\n", "{result}");

    // Within the limit is fine; above it, zero, negative or not a number is a 400.
    let result = server.execute_json("bash", "echo ok", Some(30.0));
    assert_eq!(result["stdout"], "ok\n");
    for bad in ["31", "0", "-1", "abc", "nan", "inf", ""] {
        let response = common::request(
            server.port,
            format!("POST /execute?language=bash&timeout={bad} HTTP/1.1\r\nHost: t\r\nContent-Length: 7\r\nConnection: close\r\n\r\necho hi")
                .as_bytes(),
        );
        assert_eq!(response.status, 400, "timeout={bad:?}: {response:?}");
        assert!(
            response.error_message().contains("timeout"),
            "timeout={bad:?}: {}",
            response.text()
        );
    }
}

#[test]
fn bash_fork_bomb_is_contained() {
    let server = TestServer::start(&[]);
    let response = server.post_execute(
        "bash",
        ":(){ :|:& };:\nsleep 1\necho survived",
        Some(5.0),
        true,
    );
    assert_eq!(response.status, 200, "{response:?}");
    let result = response.json();
    assert_json_shape(&result);
    let reason = result["reason"].as_str().unwrap();
    assert!(["exited", "timeout"].contains(&reason), "{result}");
    if reason == "timeout" {
        assert_eq!(result["timed_out"], true, "{result}");
    }
    // The host is fine and the server serves the next request.
    server.assert_healthy();
    let pool = 1;
    assert!(
        wait_until(Duration::from_secs(30), || common::runsc_list(
            &server.runsc_root()
        )
        .len()
            == pool),
        "the fork bomb's sandbox was not deleted: {:?}",
        common::runsc_list(&server.runsc_root())
    );
}

#[test]
fn python_fork_loop_is_contained() {
    let server = TestServer::start(&[]);
    // Counts forks until the process limit stops them; the children just wait.
    let code = "import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            time.sleep(60)\n            os._exit(0)\n        n += 1\nexcept OSError as error:\n    print('fork refused after', n, type(error).__name__)";
    let response = server.post_execute("python", code, Some(60.0), true);
    assert_eq!(response.status, 200, "{response:?}");
    let result = response.json();
    assert_json_shape(&result);
    let stdout = result["stdout"].as_str().unwrap();
    assert!(stdout.starts_with("fork refused after "), "{result}");
    let forks: u64 = stdout
        .split_whitespace()
        .nth(3)
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(forks <= 1024, "the process limit did not hold: {stdout}");

    // The classic bomb: every process forks forever.
    let response = server.post_execute(
        "python",
        "import os\nwhile True:\n    os.fork()",
        Some(3.0),
        true,
    );
    assert_eq!(response.status, 200, "{response:?}");
    let result = response.json();
    assert_json_shape(&result);
    assert!(
        ["exited", "timeout"].contains(&result["reason"].as_str().unwrap()),
        "{result}"
    );
    server.assert_healthy();
}

#[test]
fn memory_hog_gets_memory_error() {
    let server = TestServer::start(&[]);
    let result = server.execute_json(
        "python",
        "x = bytearray(3 * 1024**3)\nprint('allocated')",
        Some(60.0),
    );
    assert_json_shape(&result);
    assert_eq!(result["exit_code"], 1, "{result}");
    assert_eq!(result["reason"], "exited", "{result}");
    assert_eq!(result["stdout"], "", "{result}");
    assert!(
        result["stderr"].as_str().unwrap().contains("MemoryError"),
        "{result}"
    );
    server.assert_healthy();
}

#[test]
fn output_flood_is_cut_at_the_limit() {
    const LIMIT: usize = 1_000_000;
    let server = TestServer::start(&[("SANDBOX_MAX_OUTPUT_BYTES", "1000000")]);

    let result = server.execute_json("bash", "yes", Some(60.0));
    assert_json_shape(&result);
    assert_eq!(result["reason"], "output_limit", "{}", result["reason"]);
    assert_eq!(result["truncated"], true);
    assert_eq!(result["timed_out"], false);
    assert_eq!(result["exit_code"], 137);
    let stdout = result["stdout"].as_str().unwrap();
    assert_eq!(stdout.len(), LIMIT);
    assert!(
        stdout
            .bytes()
            .enumerate()
            .all(|(i, b)| b == if i % 2 == 0 { b'y' } else { b'\n' }),
        "output corrupted"
    );

    // The streamed form sends exactly the limit too.
    let response = server.post_execute(
        "python",
        "import sys\nwhile True:\n    sys.stdout.write('z' * 4096)",
        Some(60.0),
        false,
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), LIMIT);
    assert!(response.body.iter().all(|b| *b == b'z'));

    // stdout and stderr share the limit.
    let result = server.execute_json("bash", "yes out & yes err >&2", Some(60.0));
    assert_eq!(result["reason"], "output_limit");
    let total = result["stdout"].as_str().unwrap().len() + result["stderr"].as_str().unwrap().len();
    assert_eq!(total, LIMIT);
}

#[test]
fn a_busy_sandbox_does_not_block_another() {
    let server = TestServer::start(&[]);
    // The infinite loop streams, so its headers tell us it runs.
    let mut busy = server.connect();
    busy.send(&common::execute_request(
        "python",
        "print('spinning', flush=True)\nwhile True: pass",
        Some(60.0),
        false,
    ));
    let head = busy.read_head().expect("headers of the busy execution");
    assert_eq!(head.status, 200);
    let busy_id = head.header("x-sandbox-id").unwrap().to_string();

    for round in 0..2 {
        let result =
            server.execute_json("python", &format!("print('parallel {round}')"), Some(30.0));
        assert_clean_exit(&result);
        assert_eq!(result["stdout"], format!("parallel {round}\n"));
    }
    assert!(
        common::runsc_sandboxes(&server.runsc_root()).contains(&busy_id),
        "the busy sandbox should still exist"
    );

    // The busy one is still running and streaming: read its first line.
    let first = busy.read_some().expect("the busy execution's output");
    assert!(
        String::from_utf8_lossy(&first).contains("spinning"),
        "{:?}",
        String::from_utf8_lossy(&first)
    );
    drop(busy);
    // Closing the connection ends the loop's sandbox.
    assert!(
        wait_until(Duration::from_secs(15), || !common::runsc_sandboxes(
            &server.runsc_root()
        )
        .contains(&busy_id)),
        "the abandoned sandbox was not deleted"
    );
}

/// Requests that find no ready sandbox wait in line, each served by the next sandbox to become
/// ready (issue 15): a burst on a server without a pool is served, each request in a sandbox of
/// its own, and a client that leaves the line leaves no sandbox behind.
#[test]
fn requests_in_line_are_served_and_a_client_that_leaves_the_line_leaves_nothing() {
    let server = TestServer::start(&[("SANDBOX_POOL_SIZE", "0")]);
    let ids: Vec<String> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..4)
            .map(|n| {
                let server = &server;
                scope.spawn(move || {
                    let result = server.execute_json("bash", &format!("echo {n}"), None);
                    assert_clean_exit(&result);
                    assert_eq!(result["stdout"], format!("{n}\n"));
                    result["sandbox_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                })
            })
            .collect();
        clients
            .into_iter()
            .map(|client| client.join().expect("client"))
            .collect()
    });
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "one sandbox per request: {ids:?}");

    let mut gone = server.connect();
    gone.send(&common::execute_request("bash", "true", None, true));
    assert!(
        wait_until(Duration::from_secs(10), || server
            .metric("sandbox_requests_waiting")
            == Some(1.0)),
        "the request never waited in line"
    );
    drop(gone);
    assert!(
        wait_until(Duration::from_secs(30), || {
            server.metric("sandbox_requests_waiting") == Some(0.0)
                && server.metric("sandbox_live") == Some(0.0)
                && common::runsc_sandboxes(&server.runsc_root()).is_empty()
        }),
        "the start made for the request that left was not deleted"
    );
    server.assert_healthy();
}

#[test]
fn each_execution_gets_a_fresh_sandbox_without_stdin() {
    let server = TestServer::start(&[]);
    let result = server.execute_json(
        "bash",
        "pwd; echo $HOME; id -u; echo secret > /root/left-behind; ls /root",
        None,
    );
    assert_clean_exit(&result);
    let lines: Vec<&str> = result["stdout"].as_str().unwrap().lines().collect();
    assert_eq!(&lines[..3], &["/root", "/root", "0"], "{result}");
    assert!(lines.contains(&"left-behind"), "{result}");

    // The next execution does not see what the previous one wrote.
    let result = server.execute_json("bash", "ls -a /root; cat /root/left-behind", None);
    assert!(
        !result["stdout"].as_str().unwrap().contains("left-behind"),
        "{result}"
    );
    assert_ne!(result["exit_code"], 0, "{result}");

    // There is no stdin: reads see end-of-file at once instead of hanging.
    let result = server.execute_json(
        "python",
        "import sys\nprint(repr(sys.stdin.read()))\ninput()",
        Some(20.0),
    );
    assert_eq!(result["stdout"], "''\n", "{result}");
    assert!(
        result["stderr"].as_str().unwrap().contains("EOFError"),
        "{result}"
    );
    let result = server.execute_json(
        "bash",
        "read line; echo \"read=$? line=[$line]\"",
        Some(20.0),
    );
    assert_eq!(result["stdout"], "read=1 line=[]\n", "{result}");

    // The agent's directory, shared by all sandboxes, is read-only.
    let agent = server.state_dir.join("agent/sandbox-agent");
    let before = std::fs::read(&agent).expect("the server's copy of the agent");
    let result = server.execute_json(
        "bash",
        "echo pwned > /.sandbox/sandbox-agent; echo rc=$?; touch /.sandbox/new; echo rc=$?",
        None,
    );
    assert_eq!(result["stdout"], "rc=1\nrc=1\n", "{result}");
    assert_eq!(
        std::fs::read(&agent).unwrap(),
        before,
        "a sandbox modified the shared agent binary"
    );
    assert!(!server.state_dir.join("agent/new").exists());
}

#[test]
fn invalid_utf8_output() {
    let server = TestServer::start(&[]);
    let code = "printf 'a\\xff\\xfeb\\n'; printf '\\xe2\\x82' >&2";
    // JSON: replaced with U+FFFD.
    let result = server.execute_json("bash", code, None);
    assert_eq!(result["stdout"], "a\u{fffd}\u{fffd}b\n", "{result}");
    assert_eq!(result["stderr"], "\u{fffd}", "{result}");
    // Text: the exact bytes.
    let response = server.post_execute("bash", "printf 'a\\xff\\xfeb\\n'", None, false);
    assert_eq!(response.body, b"a\xff\xfeb\n");
}

#[test]
fn output_exactly_at_the_limit_is_complete() {
    let server = TestServer::start(&[("SANDBOX_MAX_OUTPUT_BYTES", "100000")]);
    let result = server.execute_json(
        "python",
        "import sys\nsys.stdout.write('o' * 60000)\nsys.stderr.write('e' * 40000)",
        None,
    );
    assert_clean_exit(&result);
    assert_eq!(result["stdout"].as_str().unwrap().len(), 60000);
    assert_eq!(result["stderr"].as_str().unwrap().len(), 40000);
    let result = server.execute_json("python", "import sys\nsys.stdout.write('o' * 100001)", None);
    assert_eq!(result["reason"], "output_limit", "{}", result["reason"]);
    assert_eq!(result["truncated"], true);
    assert_eq!(result["stdout"].as_str().unwrap().len(), 100000);
}

/// The one sandbox in a pool of 1, once it is ready and the only one left (its id is the next
/// request's sandbox).
fn pooled_sandbox(server: &TestServer) -> String {
    let mut ids = Vec::new();
    // Ready first, then alone: a sandbox that is ready is listed, so a single entry is it (the
    // other order could see only the previous, dying one and then the metric of the next).
    let alone = wait_until(Duration::from_secs(60), || {
        server.metric("sandbox_pool_ready") == Some(1.0) && {
            ids = common::runsc_sandboxes(&server.runsc_root());
            ids.len() == 1
        }
    });
    assert!(alone, "no single ready pooled sandbox: {ids:?}");
    ids.remove(0)
}

#[test]
fn a_sandbox_whose_agent_dies_loses_only_itself() {
    let server = TestServer::start(&[]);
    let pool = 1;
    // The agent is PID 1 inside; killing it ends the sandbox. User code cannot reach it
    // (tests/agent_isolation.rs), so it is killed from the host, as a crash would.
    let code = "echo before; sleep 60";
    // Streamed: the headers name the sandbox and the first line arrives; then the agent dies.
    let mut client = server.connect();
    client.send(&common::execute_request("bash", code, Some(90.0), false));
    let head = client.read_head().expect("headers");
    assert_eq!(head.status, 200);
    let sandbox_id = head
        .header("x-sandbox-id")
        .expect("X-Sandbox-Id")
        .to_string();
    let mut body = Vec::new();
    let mut killed = false;
    client
        .read_body_with(&head, |chunk| {
            body.extend_from_slice(chunk);
            if !killed && body.starts_with(b"before\n") {
                killed = common::kill_agent_from_host(&server.runsc_root(), &sandbox_id);
            }
        })
        .expect("the body still ends properly (a complete chunked response)");
    assert!(killed, "runsc kill failed");
    assert!(head
        .header("transfer-encoding")
        .is_some_and(|value| value.contains("chunked")));
    assert_eq!(String::from_utf8_lossy(&body), "before\n");

    // JSON: the response comes at the end, so the sandbox is the one the pool held.
    let sandbox_id = pooled_sandbox(&server);
    let mut client = server.connect();
    client.send(&common::execute_request("bash", code, Some(90.0), true));
    // (Give the execution a moment to start; if the kill comes first, a 500 is fine too.)
    std::thread::sleep(Duration::from_millis(500));
    assert!(common::kill_agent_from_host(
        &server.runsc_root(),
        &sandbox_id
    ));
    let response = client.read_response().expect("a well-formed response");
    assert!(
        response.status == 200 || response.status == 500,
        "{response:?}"
    );
    if response.status == 200 {
        let result = response.json();
        assert_json_shape(&result);
        assert_eq!(result["reason"], "sandbox_lost", "{result}");
    }

    server.assert_healthy();
    assert!(
        wait_until(Duration::from_secs(30), || common::runsc_list(
            &server.runsc_root()
        )
        .len()
            == pool),
        "lost sandboxes were not deleted: {:?}",
        common::runsc_list(&server.runsc_root())
    );
}

#[test]
fn an_agent_that_talks_garbage_loses_only_its_sandbox() {
    // A stand-in agent: it says hello like the real one, then answers the first frame from the
    // server with bytes that are no frame (user code cannot write on the agent's channel:
    // tests/agent_isolation.rs).
    use sandbox::agent_protocol::{AgentHello, FromAgent};
    let mut hello = Vec::new();
    FromAgent::Ready(AgentHello {
        version: "stand-in".into(),
        python_standby: false,
        next_exec_id: 1,
    })
    .encode(&mut hello);
    let escaped: String = hello.iter().map(|byte| format!("\\x{byte:02x}")).collect();
    let dir = common::new_state_dir().with_extension("agent");
    std::fs::create_dir_all(&dir).expect("create the stand-in's directory");
    let agent = dir.join("sandbox-agent");
    std::fs::write(
        &agent,
        format!("#!/bin/bash\nprintf '{escaped}'\nhead -c 9 >/dev/null\nprintf 'garbage-garbage-garbage'\nsleep 60\n"),
    )
    .expect("write the stand-in");
    let agent_path = agent.to_string_lossy().into_owned();
    let server = TestServer::start(&[("SANDBOX_AGENT_PATH", agent_path.as_str())]);
    let _ = std::fs::remove_dir_all(&dir); // the server keeps its own copy
    for json in [true, false] {
        let response = server.post_execute("bash", "echo never", Some(30.0), json);
        assert!(
            response.status == 200 || response.status == 500,
            "{response:?}"
        );
        if json && response.status == 200 {
            let result = response.json();
            assert_json_shape(&result);
            assert_eq!(result["reason"], "sandbox_lost", "{result}");
        }
    }
    // The server itself is unharmed.
    assert_eq!(server.get("/status").status, 200);
    assert!(
        server.metric("sandbox_lost_total").unwrap_or(0.0) >= 2.0,
        "{}",
        server.log()
    );
}

#[test]
fn agent_killed_at_once_still_gets_a_valid_response() {
    let server = TestServer::start(&[]);
    // An agent killed right after the request arrives often dies before its "started" message
    // reaches the server; whichever wins, the client must get a well-formed HTTP response.
    // Several rounds, killing a little later each time, since which one wins is timing.
    for round in 0..30u64 {
        let (language, code) = if round % 2 == 0 {
            ("python", "import time; time.sleep(30)")
        } else {
            ("bash", "sleep 30")
        };
        let sandbox_id = pooled_sandbox(&server);
        let mut client = server.connect();
        client.send(&common::execute_request(language, code, Some(60.0), false));
        std::thread::sleep(Duration::from_millis(round % 5 * 10));
        assert!(
            common::kill_agent_from_host(&server.runsc_root(), &sandbox_id),
            "round {round}: cannot kill sandbox {sandbox_id}"
        );
        let response = client.read_response().unwrap_or_else(|error| {
            panic!("round {round} ({language}): malformed response: {error}")
        });
        assert!(
            response.status == 200 || response.status == 500,
            "round {round}: {response:?}"
        );
    }
    server.assert_healthy();
}
