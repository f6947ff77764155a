//! Sandbox and server lifecycle against the real server and runsc: a client that goes away,
//! SIGTERM with executions in flight, restart after `kill -9`, and a burst of requests over the
//! sandbox limit. These tests look at what exists on the host (`runsc list`, /proc, the state
//! directory), not only at HTTP answers.
//!
//! Each test starts its own servers and stops them when it ends, also on failure. Run with two
//! threads on a 2-core machine:
//!
//!     cargo test --test lifecycle -- --test-threads=2

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{
    execute_request, force_cleanup, processes_holding, processes_mentioning, run_server_to_exit,
    runsc_list, runsc_sandboxes, wait_until, TestServer,
};

/// How long after a server's exit its sandboxes' processes may still be seen: they were killed
/// and reaped before the exit, so only the kernel's own cleanup is allowed for.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// Assert that no sandbox of a stopped server on `state_dir` survives: no container and no
/// process naming the directory.
fn assert_no_sandbox_left(state_dir: &Path) {
    let containers = runsc_list(&state_dir.join("runsc"));
    assert!(containers.is_empty(), "containers left: {containers:?}");
    let needle = format!("{}/", state_dir.to_string_lossy());
    let gone = wait_until(EXIT_GRACE, || processes_mentioning(&needle).is_empty());
    assert!(gone, "processes left: {:#?}", processes_mentioning(&needle));
}

/// Assert that a stopped server left nothing behind on `state_dir`: no sandbox, no runsc state,
/// bundles or agent copy. Only our log file may remain.
fn assert_nothing_left(state_dir: &Path) {
    assert_no_sandbox_left(state_dir);
    for leftover in ["runsc", "bundles", "agent"] {
        assert!(
            !state_dir.join(leftover).exists(),
            "{leftover} left in {}",
            state_dir.display()
        );
    }
    let entries: Vec<String> = std::fs::read_dir(state_dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        entries.iter().all(|name| name == "server.log"),
        "files left in the state dir: {entries:?}"
    );
}

/// Wait until the server has `live` sandboxes of which `pool` are ready in the pool, and runsc
/// lists exactly those: nothing is starting or being deleted.
fn wait_settled(server: &TestServer, pool: usize, live: usize) {
    let settled = wait_until(Duration::from_secs(30), || {
        server.metric("sandbox_pool_ready") == Some(pool as f64)
            && server.metric("sandbox_live") == Some(live as f64)
            && runsc_list(&server.runsc_root()).len() == live
    });
    assert!(
        settled,
        "expected {live} sandboxes ({pool} in the pool): runsc lists {:?}",
        runsc_list(&server.runsc_root())
    );
}

/// Removes a state directory shared by several servers when the test ends, however it ends.
struct StateDirGuard(PathBuf);

impl Drop for StateDirGuard {
    fn drop(&mut self) {
        force_cleanup(&self.0);
    }
}

#[test]
fn client_disconnect_deletes_the_sandbox() {
    let server = TestServer::start(&[]);
    let root = server.runsc_root();
    let pool = 1;

    // Streamed form: the headers tell us it runs, and carry the sandbox id.
    let mut client = server.connect();
    client.send(&execute_request(
        "bash",
        "echo started; sleep 30",
        Some(60.0),
        false,
    ));
    let head = client.read_head().expect("headers");
    assert_eq!(head.status, 200);
    let id = head
        .header("x-sandbox-id")
        .expect("X-Sandbox-Id")
        .to_string();
    assert!(
        runsc_sandboxes(&root).contains(&id),
        "the executing sandbox is not listed: {:?}",
        runsc_sandboxes(&root)
    );
    drop(client);
    let deleted = wait_until(Duration::from_secs(15), || {
        let list = runsc_sandboxes(&root);
        !list.contains(&id) && list.len() == pool
    });
    assert!(
        deleted,
        "after the client left: {:?} (its sandbox was {id})",
        runsc_list(&root)
    );

    // JSON form: nothing is sent before the end, so watch the sandbox count instead.
    let mut client = server.connect();
    client.send(&execute_request(
        "python",
        "import time\ntime.sleep(30)",
        Some(60.0),
        true,
    ));
    // Taken from the pool, which refills: one executing plus the pool.
    assert!(
        wait_until(Duration::from_secs(15), || server.metric("sandbox_live")
            == Some((pool + 1) as f64)
            && runsc_list(&root).len() == pool + 1),
        "the execution did not start: {:?}",
        runsc_list(&root)
    );
    let before = runsc_list(&root);
    drop(client);
    let deleted = wait_until(Duration::from_secs(15), || runsc_list(&root).len() == pool);
    assert!(
        deleted,
        "after the client left: {:?} (before: {before:?})",
        runsc_list(&root)
    );
    assert!(wait_until(Duration::from_secs(15), || server
        .metric("sandbox_live")
        == Some(pool as f64)));
    server.assert_healthy();
}

#[test]
fn sigterm_with_executions_in_flight_exits_cleanly() {
    let mut server = TestServer::start(&[("SANDBOX_SHUTDOWN_TIMEOUT_SECS", "10")]);
    let state_dir = server.state_dir.clone();
    server.assert_healthy();

    let mut streamed = server.connect();
    streamed.send(&execute_request(
        "bash",
        "echo started; sleep 60",
        Some(120.0),
        false,
    ));
    let head = streamed.read_head().expect("headers");
    assert_eq!(head.status, 200);
    let mut json = server.connect();
    json.send(&execute_request(
        "python",
        "import time\nprint('started', flush=True)\ntime.sleep(60)",
        Some(120.0),
        true,
    ));
    // Both running: two executing sandboxes plus the (refilled, ready) pool.
    wait_settled(&server, 1, 3);
    let ids = runsc_list(&server.runsc_root());
    assert!(
        ids.iter().all(|id| !processes_mentioning(id).is_empty()),
        "no runsc process names the containers?"
    );

    let status = server
        .terminate(Duration::from_secs(25))
        .expect("the server did not exit within 25 s of SIGTERM");
    assert_eq!(status.code(), Some(0), "exit status {status:?}");

    // The in-flight clients got complete responses.
    let body = streamed
        .read_body(&head)
        .expect("the streamed response ends properly");
    assert!(
        String::from_utf8_lossy(&body).starts_with("started\n"),
        "{:?}",
        String::from_utf8_lossy(&body)
    );
    let response = json.read_response().expect("the JSON response arrives");
    assert_eq!(response.status, 200, "{response:?}");
    let result = response.json();
    assert_eq!(result["reason"], "sandbox_lost", "{result}");
    // (Whether its first line was forwarded before the sandbox went is a matter of timing.)
    let stdout = result["stdout"].as_str().unwrap();
    assert!(stdout.is_empty() || stdout == "started\n", "{result}");

    assert_nothing_left(&state_dir);
    for id in &ids {
        assert!(
            processes_mentioning(id).is_empty(),
            "a process of container {id} survived"
        );
    }
    let log = server.log();
    assert!(log.contains("shutdown complete"), "{log}");
}

#[test]
fn sigterm_when_idle_exits_cleanly_and_promptly() {
    let mut server = TestServer::start(&[("SANDBOX_POOL_SIZE", "2")]);
    let state_dir = server.state_dir.clone();
    assert!(
        server.wait_pool_ready(2, Duration::from_secs(30)),
        "the pool did not fill"
    );
    // An idle keep-alive connection must not hold the shutdown up.
    let mut idle = server.connect();
    idle.send(b"GET /status HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(idle.read_response().unwrap().status, 200);

    let status = server
        .terminate(Duration::from_secs(20))
        .expect("no exit within 20 s of SIGTERM");
    assert_eq!(status.code(), Some(0));
    assert!(
        idle.wait_closed(Duration::from_secs(5)),
        "the idle connection was not closed"
    );
    assert_nothing_left(&state_dir);
}

#[test]
fn shutdown_removes_the_sandbox_cgroups() {
    let mut server = TestServer::start(&[]);
    let state_dir = server.state_dir.clone();
    server.assert_healthy();
    // Stop right after an execution, while its sandbox is being deleted and the pool refills.
    let result = server.execute_json("bash", "echo last", None);
    assert_eq!(result["stdout"], "last\n");
    assert!(
        !common::cgroup_dirs(&state_dir).is_empty(),
        "the server uses no cgroups here?"
    );
    let status = server
        .terminate(Duration::from_secs(20))
        .expect("no exit within 20 s of SIGTERM");
    assert_eq!(status.code(), Some(0));
    let left = wait_until(Duration::from_secs(5), || {
        common::cgroup_dirs(&state_dir).is_empty()
    });
    assert!(left, "cgroups left: {:?}", common::cgroup_dirs(&state_dir));
}

#[test]
fn restart_after_kill_9_removes_the_leftovers() {
    let state_dir = common::new_state_dir();
    let _guard = StateDirGuard(state_dir.clone());
    let root = state_dir.join("runsc");

    let mut first = TestServer::start_on(&state_dir, &[], false);
    let result = first.execute_json("bash", "echo from A", None);
    assert_eq!(result["stdout"], "from A\n");
    // One execution in flight and a ready pool: two containers when A dies.
    let mut busy = first.connect();
    busy.send(&execute_request(
        "bash",
        "echo busy; sleep 120",
        Some(300.0),
        false,
    ));
    assert_eq!(busy.read_head().expect("headers").status, 200);
    assert!(
        wait_until(Duration::from_secs(20), || first
            .metric("sandbox_pool_ready")
            == Some(1.0)
            && first.metric("sandbox_live") == Some(2.0)
            && runsc_list(&root).len() == 2),
        "{:?}",
        runsc_list(&root)
    );
    let left_by_first = runsc_list(&root);
    let sandboxes_of_first = runsc_sandboxes(&root);
    first.sigkill().expect("SIGKILL the first server");
    drop(busy);
    drop(first);
    // The state directory's lock died with A: none of the runsc processes that outlive it
    // inherited the descriptor (it is close-on-exec), so B can take the lock.
    let lock = state_dir.join("instance.lock");
    assert!(lock.exists(), "A held no lock file?");
    let holders = processes_holding(&lock);
    assert!(
        holders.is_empty(),
        "processes holding A's lock: {holders:?}"
    );
    // kill -9 gave no chance to clean up: the containers are still registered. (Their processes
    // may be ending by themselves: each agent exits when its pipe from the server closes.)
    let after_kill = runsc_list(&root);
    assert!(
        left_by_first.iter().all(|id| after_kill.contains(id)),
        "runsc state should survive a kill -9: {after_kill:?}"
    );

    let mut second = TestServer::start_on(&state_dir, &[], false);
    let now = runsc_list(&root);
    assert!(
        now.iter().all(|id| !left_by_first.contains(id)),
        "A's containers survived B's start: {now:?}"
    );
    assert!(now.len() <= 1, "more containers than B's pool: {now:?}");
    for id in &left_by_first {
        let gone = wait_until(Duration::from_secs(5), || {
            processes_mentioning(id).is_empty()
        });
        assert!(
            gone,
            "processes of A's container {id}: {:#?}",
            processes_mentioning(id)
        );
    }
    for id in &sandboxes_of_first {
        assert!(
            !state_dir.join("bundles").join(id).exists(),
            "A's bundle {id} is left"
        );
        assert!(
            processes_mentioning(id).is_empty(),
            "processes of A's sandbox {id}: {:#?}",
            processes_mentioning(id)
        );
    }
    assert!(
        second.log().contains("left by a previous instance"),
        "{}",
        second.log()
    );

    second.assert_healthy();
    let result = second.execute_json("python", "print('from B')", None);
    assert_eq!(result["stdout"], "from B\n");

    wait_settled(&second, 1, 1);
    let status = second
        .terminate(Duration::from_secs(20))
        .expect("no exit within 20 s of SIGTERM");
    assert_eq!(status.code(), Some(0));
    assert_nothing_left(&state_dir);
}

#[test]
fn burst_over_the_sandbox_limit_gets_200_or_503() {
    const REQUESTS: usize = 20;
    let server = TestServer::start(&[("SANDBOX_MAX_SANDBOXES", "8")]);
    assert!(server.wait_pool_ready(1, Duration::from_secs(30)));
    let port = server.port;
    let barrier = Arc::new(Barrier::new(REQUESTS));
    let threads: Vec<_> = (0..REQUESTS)
        .map(|index| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let code = format!("import time\ntime.sleep(2)\nprint({index} * {index})");
                (
                    index,
                    common::post_execute(port, "python", &code, Some(60.0), true),
                )
            })
        })
        .collect();
    let (mut ok, mut busy) = (0, 0);
    for thread in threads {
        let (index, response) = thread
            .join()
            .expect("a request thread panicked (timeout or I/O error)");
        match response.status {
            200 => {
                let result = response.json();
                assert_eq!(
                    result["stdout"],
                    format!("{}\n", index * index),
                    "request {index}: {result}"
                );
                assert_eq!(result["exit_code"], 0, "request {index}: {result}");
                ok += 1;
            }
            503 => {
                assert!(
                    response.header("retry-after").is_some(),
                    "503 without Retry-After: {response:?}"
                );
                busy += 1;
            }
            other => panic!(
                "request {index}: unexpected status {other}: {}",
                response.text()
            ),
        }
    }
    assert_eq!(ok + busy, REQUESTS);
    assert!(ok >= 1, "no request succeeded");
    assert!(busy >= 1, "20 concurrent executions fit in 8 sandboxes?");

    server.assert_healthy();
    let root = server.runsc_root();
    assert!(
        wait_until(Duration::from_secs(30), || runsc_list(&root).len() == 1),
        "sandboxes left after the burst: {:?}",
        runsc_list(&root)
    );
}

#[test]
fn sigterm_while_sandboxes_are_starting() {
    // Right after start the pool is still starting: `runsc run` is in flight when SIGTERM comes.
    // A few rounds, since how far the starts got is a matter of timing.
    for _ in 0..3 {
        let mut server = TestServer::start(&[("SANDBOX_POOL_SIZE", "2")]);
        let state_dir = server.state_dir.clone();
        let status = server
            .terminate(Duration::from_secs(25))
            .expect("no exit within 25 s of SIGTERM");
        assert_eq!(status.code(), Some(0));
        assert_nothing_left(&state_dir);
    }
}

/// A request that leaves while its new sandbox is still starting (no pool, so `runsc run` is in
/// flight). Returns the server and the ids of the containers those requests started.
fn leave_while_starting() -> (TestServer, Vec<String>) {
    let server = TestServer::start(&[("SANDBOX_POOL_SIZE", "0")]);
    let root = server.runsc_root();
    let mut started = Vec::new();
    // Several rounds: whether `runsc run` is still in flight when the delete comes is timing.
    for (round, json) in [true, false, true, false].into_iter().enumerate() {
        let mut client = server.connect();
        client.send(&execute_request("bash", "echo never seen", None, json));
        // Long enough for the server to take the request and spawn `runsc run`, too short for
        // the sandbox to be ready.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            server.metric("sandbox_created_total"),
            Some(round as f64 + 1.0),
            "no sandbox was started"
        );
        drop(client);
        assert!(
            wait_until(Duration::from_secs(20), || server.metric("sandbox_live")
                == Some(0.0)),
            "the server still counts the sandbox of a departed client"
        );
        // Whatever runsc registered for it.
        std::thread::sleep(Duration::from_millis(500));
        for id in runsc_list(&root) {
            if !started.contains(&id) {
                started.push(id);
            }
        }
    }
    (server, started)
}

#[test]
fn client_gone_while_its_sandbox_starts() {
    let (server, started) = leave_while_starting();
    for id in &started {
        let gone = wait_until(Duration::from_secs(10), || {
            processes_mentioning(id).is_empty()
        });
        assert!(
            gone,
            "processes of abandoned container {id}: {:#?}",
            processes_mentioning(id)
        );
    }
    server.assert_healthy();
}

#[test]
fn client_gone_while_its_sandbox_starts_leaves_no_container() {
    let (server, _) = leave_while_starting();
    let root = server.runsc_root();
    assert!(
        wait_until(Duration::from_secs(20), || runsc_list(&root).is_empty()),
        "containers of departed clients are still registered: {:?}",
        runsc_list(&root)
    );
}

/// SIGTERM while a client reads nothing of a big streamed output: the sandbox is deleted at once,
/// the connection cannot drain, and the server gives up on it at the shutdown deadline.
fn stop_with_a_stalled_reader() -> (TestServer, std::process::ExitStatus, common::Client) {
    let mut server = TestServer::start(&[
        ("SANDBOX_SHUTDOWN_TIMEOUT_SECS", "3"),
        ("SANDBOX_MAX_OUTPUT_BYTES", "1000000000"),
    ]);
    let mut client = server.connect();
    client.send(&execute_request("bash", "yes", Some(600.0), false));
    assert_eq!(client.read_head().expect("headers").status, 200);
    // Let the buffers fill up: the sandbox is now paused by back-pressure.
    std::thread::sleep(Duration::from_secs(1));
    wait_settled(&server, 1, 2);
    let status = server
        .terminate(Duration::from_secs(20))
        .expect("no exit within 20 s of SIGTERM");
    (server, status, client)
}

#[test]
fn sigterm_with_a_client_that_does_not_read_ends_at_the_shutdown_deadline() {
    let (server, status, _client) = stop_with_a_stalled_reader();
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert_no_sandbox_left(&server.state_dir);
}

#[test]
fn sigterm_with_a_client_that_does_not_read_removes_the_state() {
    let (server, status, _client) = stop_with_a_stalled_reader();
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert_nothing_left(&server.state_dir);
}

#[test]
fn a_second_server_on_the_same_state_dir_exits_and_leaves_the_first_alone() {
    let first = TestServer::start(&[]);
    first.assert_healthy();
    wait_settled(&first, 1, 1);
    let containers = runsc_list(&first.runsc_root());

    let (status, stderr) = run_server_to_exit(&first.state_dir, &[], Duration::from_secs(30))
        .expect("the second server kept running on the first one's state directory");
    assert!(
        !status.success(),
        "exit status {status:?}; stderr: {stderr}"
    );
    let directory = first.state_dir.display().to_string();
    assert!(
        stderr.contains(&directory) && stderr.contains(&format!("PID {}", first.pid)),
        "the refusal must name the directory and the holder's PID: {stderr}"
    );
    assert!(
        !stderr.contains("cleanup:"),
        "the second server cleaned up before it knew the directory was taken: {stderr}"
    );

    // The first one's sandboxes are untouched and it goes on serving.
    assert_eq!(runsc_list(&first.runsc_root()), containers);
    first.assert_healthy();
}

/// `POST /execute` that keeps the connection open (no `Connection: close`).
fn keep_alive_execute(code: &str, json: bool) -> Vec<u8> {
    let bytes = execute_request("bash", code, Some(120.0), json);
    let text = String::from_utf8(bytes).expect("ASCII request");
    text.replacen("Connection: close\r\n", "", 1).into_bytes()
}

#[test]
fn sigterm_with_keep_alive_clients_does_not_wait_for_the_deadline() {
    let mut server = TestServer::start(&[("SANDBOX_SHUTDOWN_TIMEOUT_SECS", "10")]);
    let state_dir = server.state_dir.clone();
    server.assert_healthy();

    // An idle keep-alive connection after a response,
    let mut idle = server.connect();
    idle.send(b"GET /status HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(idle.read_response().unwrap().status, 200);
    // a keep-alive JSON /execute and a keep-alive streamed one, both running at SIGTERM.
    let mut json = server.connect();
    json.send(&keep_alive_execute("echo started; sleep 60", true));
    let mut streamed = server.connect();
    streamed.send(&keep_alive_execute("echo started; sleep 60", false));
    let head = streamed.read_head().expect("headers");
    assert_eq!(head.status, 200);
    assert_ne!(
        head.header("connection"),
        Some("close"),
        "keep-alive by default"
    );
    wait_settled(&server, 1, 3);

    let signalled = Instant::now();
    let status = server
        .terminate(Duration::from_secs(20))
        .expect("no exit within 20 s of SIGTERM");
    let took = signalled.elapsed();
    eprintln!("SIGTERM to exit: {took:?}");
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    // The budget is 10 s; waiting for it would mean a connection held the shutdown up. The
    // bound is generous for a loaded machine: the point is not to reach the deadline.
    assert!(
        took < Duration::from_secs(5),
        "SIGTERM took {took:?}; log:\n{}",
        server.log()
    );
    assert!(
        !server.log().contains("deadline passed"),
        "{}",
        server.log()
    );

    // The JSON response finished during the shutdown: complete, and the last on its
    // connection.
    let response = json.read_response().expect("the JSON response arrives");
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("connection"), Some("close"), "{response:?}");
    assert_eq!(response.json()["reason"], "sandbox_lost");
    assert!(json.wait_closed(Duration::from_secs(5)));
    // The streamed one had said keep-alive already: it ends properly, then the connection.
    // (Whether "started" was forwarded before the sandbox went is a matter of timing.)
    let body = streamed.read_body(&head).expect("the streamed body ends");
    let body = String::from_utf8_lossy(&body);
    assert!(body.is_empty() || body.starts_with("started"), "{body:?}");
    assert!(streamed.wait_closed(Duration::from_secs(5)));
    assert!(idle.wait_closed(Duration::from_secs(5)));
    assert_nothing_left(&state_dir);
}

/// A runsc that fails `run` while `flag` exists and behaves normally otherwise.
fn flaky_runsc(dir: &Path, flag: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("flaky-runsc");
    let text = format!(
        "#!/bin/sh\nif [ -e '{}' ]; then\n  for arg in \"$@\"; do\n    if [ \"$arg\" = run ]; then echo 'flaky-runsc: simulated failure' >&2; exit 1; fi\n  done\nfi\nexec '{}' \"$@\"\n",
        flag.display(),
        common::runsc_binary()
    );
    std::fs::write(&script, text).expect("write the wrapper");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    script
}

/// `GET /readyz`: (status, reason).
fn readiness(server: &TestServer) -> (u16, String) {
    let response = server.get("/readyz");
    let body = response.json();
    match response.status {
        200 => assert_eq!(body["status"], "ready", "{body}"),
        503 => assert_eq!(body["status"], "unavailable", "{body}"),
        other => panic!("/readyz answered {other}: {body}"),
    }
    (
        response.status,
        body["reason"].as_str().unwrap_or_default().to_string(),
    )
}

/// Renames a path and puts it back when dropped (also when the test fails).
struct Moved {
    from: PathBuf,
    to: PathBuf,
}

impl Moved {
    fn new(from: &Path) -> Moved {
        let to = from.with_extension("moved-away");
        std::fs::rename(from, &to).expect("rename");
        Moved {
            from: from.to_path_buf(),
            to,
        }
    }
}

impl Drop for Moved {
    fn drop(&mut self) {
        let _ = std::fs::rename(&self.to, &self.from);
    }
}

#[test]
fn readiness_fails_while_sandboxes_cannot_be_created() {
    // The server's own view of the image (a symlink) and a runsc that can be made to fail;
    // the shared image itself is never touched.
    let private = common::new_state_dir().with_extension("readyz");
    let _guard = StateDirGuard(private.clone());
    std::fs::create_dir_all(&private).expect("create the test dir");
    let rootfs = private.join("rootfs");
    let shared_rootfs = std::env::var("SANDBOX_ROOTFS")
        .ok()
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| common::DEFAULT_ROOTFS.to_string());
    std::os::unix::fs::symlink(&shared_rootfs, &rootfs).expect("symlink the rootfs");
    let flag = private.join("fail-runsc");
    let runsc = flaky_runsc(&private, &flag);
    let server = TestServer::start(&[
        ("SANDBOX_POOL_SIZE", "0"),
        ("SANDBOX_ROOTFS", rootfs.to_str().unwrap()),
        ("SANDBOX_RUNSC", runsc.to_str().unwrap()),
        ("SANDBOX_READY_START_FAILURES", "2"),
    ]);
    assert_eq!(readiness(&server), (200, String::new()));
    let mut client = server.connect();
    client.send(b"HEAD /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let head = client.read_head().expect("the head");
    assert_eq!(head.status, 200);
    assert!(
        client.wait_closed(Duration::from_secs(10)),
        "HEAD has no body"
    );
    server.assert_healthy();

    // runsc fails: one failure is not enough, two in a row are.
    std::fs::write(&flag, b"").unwrap();
    assert_eq!(
        server.post_execute("bash", "echo x", None, true).status,
        500
    );
    assert_eq!(readiness(&server).0, 200);
    assert_eq!(
        server.post_execute("bash", "echo x", None, true).status,
        500
    );
    let (status, reason) = readiness(&server);
    assert_eq!(status, 503);
    assert!(
        reason.contains("2 sandbox starts failed") && reason.contains("simulated failure"),
        "{reason}"
    );
    // /status stays as it was.
    assert_eq!(server.get("/status").status, 200);
    // One successful start and it is ready again.
    std::fs::remove_file(&flag).unwrap();
    server.assert_healthy();
    assert_eq!(readiness(&server), (200, String::new()));

    // The image goes away, and comes back.
    {
        let _moved = Moved::new(&rootfs);
        let (status, reason) = readiness(&server);
        assert_eq!(status, 503);
        assert!(reason.contains(rootfs.to_str().unwrap()), "{reason}");
    }
    assert_eq!(readiness(&server).0, 200);

    // The state directory goes away, and comes back.
    {
        let _moved = Moved::new(&server.state_dir);
        let (status, reason) = readiness(&server);
        assert_eq!(status, 503);
        assert!(
            reason.contains("state directory")
                && reason.contains(server.state_dir.to_str().unwrap()),
            "{reason}"
        );
    }
    assert_eq!(readiness(&server).0, 200);
    server.assert_healthy();
}
