//! Checkpoint / restore across server instances and filesystem snapshots, against the real
//! server, runsc and sandbox image (docs/protocol.md: Checkpoint, Attach, Snapshot).
//!
//! Each test starts two servers, A and B (own ports and state directories, pool of 1) sharing
//! one `CHECKPOINT_AND_RESTORE_PATH` and one `FILESYSTEM_SNAPSHOT_PATH` under a fresh temporary
//! directory. The servers' `Drop` stops them and removes every sandbox they left; the shared
//! directories are removed after the servers, also on failure. Run with:
//!
//!     cargo test --test checkpoint -- --test-threads=2

mod common;
mod store;
mod ws;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{request, runsc_list, runsc_sandboxes, wait_until, TestServer};
use serde_json::{json, Value};
use store::{entries, SharedDirs};
use ws::{assert_exited, attach_path, connect, create, is_status, ById, Created, Frame, Ws};

/// The `sandbox_token` no server ever hands out.
const WRONG_TOKEN: &str = "ffffffffffffffffffffffffffffffff";

/// The counter started in the sandboxes: it runs in the background and survives checkpoints.
const COUNTER: &str = "nohup bash -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done' >/dev/null 2>&1 &";

// ---------------------------------------------------------------------------------------------
// Fixtures

/// Two servers sharing the directories. Fields drop in order: the servers stop (and may still
/// save into the shared directories) before the directories are removed.
struct Pair {
    a: TestServer,
    b: TestServer,
    dirs: SharedDirs,
}

fn pair() -> Pair {
    pair_with(&[], &[])
}

/// Two servers; `extra_a` / `extra_b` are added to (and override) A's / B's environment.
fn pair_with(extra_a: &[(&str, &str)], extra_b: &[(&str, &str)]) -> Pair {
    let dirs = SharedDirs::new();
    let store_env = dirs.env();
    let shared: Vec<(&str, &str)> = store_env
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    let env_a: Vec<(&str, &str)> = shared.iter().chain(extra_a).copied().collect();
    let env_b: Vec<(&str, &str)> = shared.iter().chain(extra_b).copied().collect();
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| TestServer::start(&env_a));
        let b = scope.spawn(|| TestServer::start(&env_b));
        (a.join(), b.join())
    });
    match (a, b) {
        (Ok(a), Ok(b)) => Pair { a, b, dirs },
        // The other server (if it started) is dropped here, before the directories.
        _ => panic!("a server did not start"),
    }
}

fn random_suffix() -> String {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{:016x}", hasher.finish())
}

// ---------------------------------------------------------------------------------------------
// Flows

/// Run bash code to completion, assert exit 0, return stdout.
fn sh(ws: &mut Ws, code: &str) -> String {
    let result = ws.run("bash", code);
    assert_exited(&result.done, 0);
    result.stdout
}

/// Start the background counter and wait for its first value.
fn start_counter(ws: &mut Ws) {
    sh(ws, COUNTER);
    let started = sh(
        ws,
        // Read until a value: the writer truncates then writes, so a file seen non-empty may
        // read empty a moment later.
        "for k in $(seq 100); do c=$(cat /tmp/count 2>/dev/null); [ -n \"$c\" ] && break; sleep 0.1; done; echo \"$c\"",
    );
    assert!(!started.trim().is_empty(), "the counter did not start");
}

/// The counter's current value (the writer truncates then writes: retry an empty read).
fn read_count(ws: &mut Ws) -> u64 {
    let text = sh(
        ws,
        "for k in $(seq 100); do c=$(cat /tmp/count 2>/dev/null); [ -n \"$c\" ] && break; sleep 0.02; done; echo \"$c\"",
    );
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("bad counter value {text:?}"))
}

/// The counter runs: two reads 1 s apart differ, and both are above `before`.
fn assert_counter_continues(ws: &mut Ws, before: u64) {
    // Let it tick at least twice after a restore.
    std::thread::sleep(Duration::from_millis(500));
    let first = read_count(ws);
    std::thread::sleep(Duration::from_secs(1));
    let second = read_count(ws);
    assert!(
        first > before && second > first,
        "the counter did not continue: {before} before, then {first} and {second} 1 s apart"
    );
}

/// `{"action":"checkpoint"}` and its whole flow: CHECKPOINTING, DELETING, DELETED, CHECKPOINTED,
/// close 1000.
fn checkpoint(ws: &mut Ws) {
    ws.send(json!({"action": "checkpoint"}));
    expect_checkpointed(ws);
}

fn expect_checkpointed(ws: &mut Ws) {
    for status in [
        "SANDBOX_CHECKPOINTING",
        "SANDBOX_DELETING",
        "SANDBOX_DELETED",
        "SANDBOX_CHECKPOINTED",
    ] {
        ws.expect_status(status);
    }
    ws.expect_close(1000);
}

/// Attach to a checkpointed sandbox: RESTORING, RUNNING.
fn restore(server: &TestServer, sandbox_id: &str, token: &str) -> Ws {
    let mut ws = connect(server.port, &attach_path(sandbox_id, token));
    ws.expect_status("SANDBOX_RESTORING");
    ws.expect_status("SANDBOX_RUNNING");
    ws
}

/// A checkpointable sandbox on `server` running the counter, with `/root/keep.txt`.
/// Returns the session and the counter value just before.
fn checkpointable_with_state(server: &TestServer) -> (Created, u64) {
    let mut created = create(server, json!({"enable_checkpoint": true}));
    start_counter(&mut created.ws);
    sh(
        &mut created.ws,
        "echo kept across instances > /root/keep.txt",
    );
    let count = read_count(&mut created.ws);
    (created, count)
}

fn assert_kept_file(ws: &mut Ws) {
    assert_eq!(sh(ws, "cat /root/keep.txt"), "kept across instances\n");
}

/// stdin and a plain exec work.
fn assert_stdin_and_exec(ws: &mut Ws) {
    ws.start("python", "name = input()\nprint('Hello, ' + name)");
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    ws.send(json!({"event": "stdin", "data": "World\n"}));
    let result = ws.collect_until_done();
    assert_eq!(result.stdout, "Hello, World\n");
    assert_exited(&result.done, 0);
    let result = ws.run("python", "print(6 * 7)");
    assert_eq!(result.stdout, "42\n");
}

/// An attach answered with an error status (+ `error`) and a close: returns the message.
fn attach_error(
    server: &TestServer,
    sandbox_id: &str,
    token: &str,
    status: &str,
    code: u16,
) -> String {
    let mut ws = connect(server.port, &attach_path(sandbox_id, token));
    let message = ws.expect_error(status);
    ws.expect_close(code);
    message
}

fn file_exists_named(dir: &Path, prefix: &str) -> bool {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .any(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
        })
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------------
// Checkpoint on A, restore on B

/// A sandbox with state on A, checkpointed, its lease released: (sandbox id, token).
fn checkpointed_on_a(pair: &Pair) -> (String, String) {
    let (created, _) = checkpointable_with_state(&pair.a);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = created;
    checkpoint(&mut ws);
    pair.dirs.wait_lease_released(&sandbox_id);
    (sandbox_id, token)
}

#[test]
fn checkpoint_on_a_restores_on_b_with_processes_files_and_io() {
    let pair = pair();
    let (created, before) = checkpointable_with_state(&pair.a);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = created;

    checkpoint(&mut ws);
    let manifest = pair.dirs.manifest(&sandbox_id);
    assert!(manifest["token_sha256"].is_string(), "{manifest}");
    assert!(
        !manifest.to_string().contains(&token),
        "the manifest must not hold the token in clear: {manifest}"
    );
    pair.dirs.image_dir(&sandbox_id);
    assert!(
        !runsc_list(&pair.a.runsc_root()).contains(&sandbox_id),
        "checkpointed sandbox still listed on A"
    );

    let mut ws = restore(&pair.b, &sandbox_id, &token);
    assert_counter_continues(&mut ws, before);
    assert_kept_file(&mut ws);
    assert_stdin_and_exec(&mut ws);
    ws.kill_sandbox();
}

#[test]
fn wrong_token_on_b_restores_nothing_then_the_right_token_works() {
    let pair = pair();
    let (sandbox_id, token) = checkpointed_on_a(&pair);
    assert!(pair.b.wait_pool_ready(1, Duration::from_secs(60)));
    let containers_before = runsc_list(&pair.b.runsc_root());
    assert_eq!(
        containers_before.len(),
        1,
        "B's pool: {containers_before:?}"
    );

    for wrong in [WRONG_TOKEN, "", &token[..31]] {
        let message = attach_error(
            &pair.b,
            &sandbox_id,
            wrong,
            "SANDBOX_PERMISSION_DENIAL_ERROR",
            4000,
        );
        assert!(message.contains("token"), "{message}");
    }
    let mut denied = connect(pair.b.port, &format!("/attach/{sandbox_id}"));
    denied.expect_error("SANDBOX_PERMISSION_DENIAL_ERROR");
    denied.expect_close(4000);

    // Nothing was restored on B, and B did not take the lease.
    assert_eq!(
        runsc_list(&pair.b.runsc_root()),
        containers_before,
        "B started something"
    );
    assert!(
        !pair.dirs.lease_held(&sandbox_id),
        "the lease was taken: {:?}",
        pair.dirs.lease(&sandbox_id)
    );
    assert!(pair.dirs.base(&sandbox_id).join("current.json").exists());

    let mut ws = restore(&pair.b, &sandbox_id, &token);
    assert_kept_file(&mut ws);
    assert!(
        pair.dirs.lease_held(&sandbox_id),
        "B runs the sandbox without a lease"
    );
    ws.kill_sandbox();
}

#[test]
fn concurrent_attaches_from_a_and_b_restore_exactly_once() {
    let pair = pair();
    let (sandbox_id, token) = checkpointed_on_a(&pair);

    /// A connection and its first frame.
    type Attached = (Ws, Value);
    let path = attach_path(&sandbox_id, &token);
    let barrier = std::sync::Barrier::new(2);
    let results: Vec<Attached> = std::thread::scope(|scope| {
        let handles: Vec<_> = [pair.a.port, pair.b.port]
            .into_iter()
            .map(|port| {
                let (path, barrier) = (&path, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    let mut ws = connect(port, path);
                    let first = ws.recv();
                    (ws, first)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("attach thread"))
            .collect()
    });
    let firsts: Vec<String> = results.iter().map(|(_, first)| first.to_string()).collect();
    let (mut winners, mut losers): (Vec<Attached>, Vec<Attached>) = results
        .into_iter()
        .partition(|(_, first)| is_status(first, "SANDBOX_RESTORING"));
    assert_eq!(
        (winners.len(), losers.len()),
        (1, 1),
        "exactly one attach must restore: {firsts:?}"
    );
    let (loser, first) = &mut losers[0];
    assert!(is_status(first, "SANDBOX_IN_USE"), "{first}");
    assert!(first["message"].is_string(), "{first}");
    let error = loser.recv();
    assert_eq!(error["event"], "error", "{error}");
    loser.expect_close(1011);

    let (winner, _) = &mut winners[0];
    winner.expect_status("SANDBOX_RUNNING");
    assert_kept_file(winner);
    // While it runs on one instance, the other answers IN_USE.
    for server in [&pair.a, &pair.b] {
        let mut other = connect(server.port, &path);
        let frame = other.recv();
        assert!(
            is_status(&frame, "SANDBOX_IN_USE"),
            "a second attach while restored: {frame}"
        );
    }
    winner.kill_sandbox();
}

/// With the opt-in settle (storage without an exclusive create), an instance that gives an
/// attach up because the storage was too slow withdraws its claim: nobody runs the sandbox, so
/// another instance can restore it at once.
///
/// B is made to always decide too slowly (settle 1 ms: its budget of 0.25 ms is less than any
/// real write); its IN_USE answer is its documented way to back off. The claim it wrote must
/// not stay held for the lease TTL (30 s), locking every other instance out.
#[test]
fn an_attach_that_backs_off_does_not_leave_its_lease_claim() {
    let pair = pair_with(&[], &[("SANDBOX_LEASE_SETTLE_MS", "1")]);
    let (sandbox_id, token) = checkpointed_on_a(&pair);

    let message = attach_error(&pair.b, &sandbox_id, &token, "SANDBOX_IN_USE", 1011);
    assert!(message.contains("too slow"), "{message}");
    let left = wait_until(Duration::from_secs(5), || {
        !pair.dirs.lease_held(&sandbox_id)
    });
    let mut restored = connect(pair.a.port, &attach_path(&sandbox_id, &token));
    let frame = restored.recv();
    assert!(
        left && is_status(&frame, "SANDBOX_RESTORING"),
        "B backed off but left its claim {:?}; A's attach (nobody runs the sandbox) got {frame}",
        pair.dirs.lease(&sandbox_id)
    );
    restored.expect_status("SANDBOX_RUNNING");
    assert_kept_file(&mut restored);
    restored.kill_sandbox();
}

#[test]
fn corrupted_image_or_manifest_is_a_restore_error_and_servers_keep_serving() {
    let pair = pair();
    let (sandbox_id, token) = checkpointed_on_a(&pair);

    // A truncated image.
    let image = pair.dirs.image_dir(&sandbox_id).join("checkpoint.img");
    let size = std::fs::metadata(&image)
        .unwrap_or_else(|error| panic!("{}: {error}", image.display()))
        .len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .and_then(|file| file.set_len(size / 2))
        .expect("truncate the image");
    for server in [&pair.b, &pair.a] {
        let message = attach_error(server, &sandbox_id, &token, "SANDBOX_RESTORE_ERROR", 4000);
        assert!(
            message.contains("checkpoint.img") || message.contains("corrupt"),
            "{message}"
        );
        assert!(
            wait_until(Duration::from_secs(5), || !pair
                .dirs
                .lease_held(&sandbox_id)),
            "a failed restore keeps the lease"
        );
    }
    pair.a.assert_healthy();
    pair.b.assert_healthy();

    // A corrupted manifest.
    std::fs::write(
        pair.dirs.base(&sandbox_id).join("current.json"),
        b"{garbage",
    )
    .expect("write garbage");
    for server in [&pair.a, &pair.b] {
        let message = attach_error(server, &sandbox_id, &token, "SANDBOX_RESTORE_ERROR", 4000);
        assert!(message.contains("manifest"), "{message}");
    }
    pair.a.assert_healthy();
    pair.b.assert_healthy();
    // Nothing was restored anywhere: only the pool runs (once /execute's sandboxes are gone).
    for server in [&pair.a, &pair.b] {
        assert!(
            wait_until(Duration::from_secs(30), || runsc_list(&server.runsc_root())
                .len()
                <= 1),
            "only the pool may run: {:?}",
            runsc_list(&server.runsc_root())
        );
    }
}

/// Manifests in the shared store may come from another instance or be corrupted: absurd values
/// are restore errors (or defaults), never a panic that takes a server down with every session
/// on it.
#[test]
fn hostile_manifests_in_the_store_never_crash_a_server() {
    let pair = pair();
    let (sandbox_id, token) = checkpointed_on_a(&pair);
    let manifest_path = pair.dirs.base(&sandbox_id).join("current.json");
    let good = pair.dirs.manifest(&sandbox_id);
    let write = |manifest: &Value| {
        std::fs::write(&manifest_path, manifest.to_string()).expect("write the manifest")
    };
    let refused = |edit: &dyn Fn(&mut Value), needle: &str| {
        let mut manifest = good.clone();
        edit(&mut manifest);
        write(&manifest);
        let message = attach_error(&pair.b, &sandbox_id, &token, "SANDBOX_RESTORE_ERROR", 4000);
        assert!(message.contains(needle), "{manifest}: {message}");
    };
    // Multi-byte characters where hex digits belong: quoted by characters (slicing 12 bytes
    // split a character and panicked).
    refused(
        &|manifest| manifest["files"][0]["sha256"] = json!("é".repeat(40)),
        &"é".repeat(12),
    );
    refused(
        &|manifest| manifest["rootfs_stamp"] = json!("ü".repeat(30)),
        &format!("({})", "ü".repeat(12)),
    );
    // Paths that leave the sandbox's directory.
    refused(
        &|manifest| manifest["image_dir"] = json!("../../.."),
        "corrupted",
    );
    refused(
        &|manifest| manifest["files"][0]["name"] = json!("../../../../etc/passwd"),
        "corrupted",
    );
    pair.b.assert_healthy();

    // Absurd numbers that are not worth refusing a restore: an idle timeout of 1e300 s (it
    // panicked in Duration::from_secs_f64) means the default; the largest generation does not
    // overflow the next checkpoint's.
    let mut manifest = good.clone();
    manifest["settings"]["idle_timeout_secs"] = json!(1e300);
    manifest["generation"] = json!(u64::MAX);
    write(&manifest);
    let mut ws = restore(&pair.b, &sandbox_id, &token);
    assert_kept_file(&mut ws);
    checkpoint(&mut ws);
    pair.dirs.wait_lease_released(&sandbox_id);
    assert_eq!(
        pair.dirs.manifest(&sandbox_id)["generation"],
        json!(u64::MAX)
    );
    let mut ws = restore(&pair.a, &sandbox_id, &token);
    assert_kept_file(&mut ws);
    ws.kill_sandbox();
    pair.a.assert_healthy();
    pair.b.assert_healthy();
}

/// The agent is mounted from the host, not saved in the image, and a restored agent of another
/// build crashes: a checkpoint taken with another agent build is refused before anything is
/// restored or any lease taken, naming both builds.
#[test]
fn a_checkpoint_of_another_agent_build_is_refused_up_front() {
    let pair = pair();
    let (sandbox_id, token) = checkpointed_on_a(&pair);
    let manifest_path = pair.dirs.base(&sandbox_id).join("current.json");
    let good = pair.dirs.manifest(&sandbox_id);
    let ours = good["agent_build"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        ours.len(),
        64,
        "the manifest records the agent's SHA-256: {good}"
    );
    assert!(
        pair.b.log().contains(&format!("agent build {ours}")),
        "B logs its build"
    );
    let mut other = good.clone();
    other["agent_build"] = json!("0badc0de".repeat(8));
    std::fs::write(&manifest_path, other.to_string()).expect("write the manifest");
    let lease_before = pair.dirs.lease(&sandbox_id);
    let message = attach_error(&pair.b, &sandbox_id, &token, "SANDBOX_RESTORE_ERROR", 4000);
    assert!(
        message.contains("another build of the sandbox agent (0badc0de0bad)")
            && message.contains(&format!("agent build {}", &ours[..12])),
        "{message}"
    );
    assert_eq!(
        pair.dirs.lease(&sandbox_id),
        lease_before,
        "a lease was taken"
    );
    assert!(!runsc_sandboxes(&pair.b.runsc_root()).contains(&sandbox_id));
    // The checkpoint itself is intact: with the right build it restores.
    std::fs::write(&manifest_path, good.to_string()).expect("write the manifest");
    let mut ws = restore(&pair.b, &sandbox_id, &token);
    assert_kept_file(&mut ws);
    ws.kill_sandbox();
}

#[test]
fn sigterm_checkpoints_a_checkpointable_sandbox_and_b_restores_it() {
    let mut pair = pair_with(&[("SANDBOX_SHUTDOWN_TIMEOUT_SECS", SHUTDOWN_SECS)], &[]);
    let (created, before) = checkpointable_with_state(&pair.a);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = created;
    ws.start("bash", "sleep 30");
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    terminate_checkpointing(&mut pair.a, &mut ws);

    pair.dirs.image_dir(&sandbox_id);
    let mut ws = restore(&pair.b, &sandbox_id, &token);
    // The execution that ran during the shutdown goes on and is still the session's: reconnect
    // follows it, and it ends like any other.
    ws.send(json!({"action": "reconnect"}));
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    ws.send(json!({"action": "kill_process"}));
    ws.expect_status("SANDBOX_EXECUTION_FORCE_KILLED");
    let done = ws.expect_status("SANDBOX_EXECUTION_DONE");
    assert_eq!(done["reason"], "killed", "{done}");
    assert_counter_continues(&mut ws, before);
    assert_kept_file(&mut ws);
    ws.kill_sandbox();
}

/// Executions that ran when a shutdown checkpointed the sandbox go on after the restore; new
/// executions there must get ids those do not use.
#[test]
fn an_execution_running_at_a_shutdown_checkpoint_is_followed_after_the_restore() {
    let mut pair = pair_with(&[("SANDBOX_SHUTDOWN_TIMEOUT_SECS", SHUTDOWN_SECS)], &[]);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&pair.a, json!({"enable_checkpoint": true}));
    // Running at the checkpoint: it goes on after the restore.
    ws.start(
        "bash",
        "for i in $(seq 1 600); do echo tick $i; sleep 0.1; done",
    );
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    terminate_checkpointing(&mut pair.a, &mut ws);

    let mut ws = restore(&pair.b, &sandbox_id, &token);
    // One execution at a time, also across a restore.
    ws.start("bash", "echo second");
    let refusal = ws.expect_error("SANDBOX_EXECUTION_ERROR");
    assert!(refusal.contains("already in progress"), "{refusal}");
    // The surviving execution is the session's: reconnect replays it, kill_process ends it.
    ws.send(json!({"action": "reconnect"}));
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    let ticks = ws.read_stdout_until("tick");
    assert!(ticks.contains("tick"), "{ticks}");
    ws.send(json!({"action": "kill_process"}));
    let done = loop {
        let frame = ws.recv();
        if is_status(&frame, "SANDBOX_EXECUTION_DONE") {
            break frame;
        }
    };
    assert_eq!(done["reason"], "killed", "{done}");
    // Afterwards executions run normally, with ids that do not collide with the old one.
    for n in 1..=3 {
        let result = ws.run("bash", &format!("echo exec {n}"));
        assert_eq!(result.stdout, format!("exec {n}\n"));
    }
    ws.kill_sandbox();
}

/// Protocol 2 across a shutdown: the processes running with request ids are saved with the
/// sandbox; after the restore on another instance a reconnect follows each again, under its
/// own request id and process id, and new processes get ids never used in the sandbox.
#[test]
fn processes_with_request_ids_running_at_a_shutdown_go_on_after_the_restore() {
    let mut pair = pair_with(&[("SANDBOX_SHUTDOWN_TIMEOUT_SECS", SHUTDOWN_SECS)], &[]);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&pair.a, json!({"enable_checkpoint": true}));
    let mut before = ById::new();
    ws.request(
        "one",
        json!({"language": "bash", "code": "sleep 8; echo one; exit 3"}),
    );
    ws.request(
        "two",
        json!({"language": "python", "code": "import time\ntime.sleep(8)\nprint('two')"}),
    );
    ws.file_until(&mut before, |by_id| {
        ["one", "two"]
            .iter()
            .all(|id| by_id.get(*id).is_some_and(|run| run.process_id.is_some()))
    });
    terminate_checkpointing(&mut pair.a, &mut ws);

    let mut ws = restore(&pair.b, &sandbox_id, &token);
    let mut after = ById::new();
    ws.request("list", json!({"action": "list_processes"}));
    ws.file_until(&mut after, |by_id| by_id.contains_key("list"));
    let listed = after["list"].others[0]["processes"].clone();
    for id in ["one", "two"] {
        let entry = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|entry| entry["id"] == id)
            .unwrap_or_else(|| panic!("{id} is not listed after the restore: {listed}"));
        assert_eq!(entry["process_id"].as_u64(), before[id].process_id);
        assert_eq!(entry["running"], true, "{entry}");
    }
    ws.request("back", json!({"action": "reconnect"}));
    ws.file_until(&mut after, |by_id| {
        ["one", "two"]
            .iter()
            .all(|id| by_id.get(*id).is_some_and(ws::Answers::is_done))
    });
    assert_eq!(after["one"].stdout, "one\n", "{:?}", after["one"]);
    assert_eq!(after["one"].exit_code(), Some(3));
    assert_eq!(after["two"].stdout, "two\n", "{:?}", after["two"]);
    assert_eq!(after["two"].exit_code(), Some(0));
    for id in ["one", "two"] {
        assert_eq!(after[id].process_id, before[id].process_id, "{id}");
    }
    let highest = before.values().filter_map(|run| run.process_id).max();
    ws.request("new", json!({"language": "bash", "code": "echo new"}));
    ws.file_until(&mut after, |by_id| {
        by_id.get("new").is_some_and(ws::Answers::is_done)
    });
    assert!(
        after["new"].process_id > highest,
        "a process id was reused: {:?} after {highest:?}",
        after["new"].process_id
    );
    ws.kill_sandbox();
}

/// A terminal running at a shutdown checkpoint is restored with the sandbox (issue 19): the
/// same shell, on the same pseudo-terminal, with what it had in memory; after a reconnect it
/// takes keystrokes and ends with its own exit code. (A checkpoint a client asks for while a
/// terminal runs is refused instead, as for any process: tests/terminals.rs.)
#[test]
fn a_terminal_running_at_a_shutdown_checkpoint_is_the_same_shell_after_the_restore() {
    let mut pair = pair_with(&[("SANDBOX_SHUTDOWN_TIMEOUT_SECS", SHUTDOWN_SECS)], &[]);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&pair.a, json!({"enable_checkpoint": true}));
    let mut before = ById::new();
    ws.request(
        "t",
        json!({"language": "bash", "code": "", "pty": {"cols": 100, "rows": 30}}),
    );
    ws.file_until(&mut before, |by_id| {
        by_id.get("t").is_some_and(|run| run.process_id.is_some())
    });
    let process_id = before["t"].process_id;
    let keys = |ws: &mut Ws, id: &str, data: &str| {
        ws.request(
            id,
            json!({"event": "stdin", "process_id": process_id, "data": data}),
        );
    };
    // A shell variable: only the same shell process knows it after the restore.
    keys(&mut ws, "k1", "KEPT=$((6*7)); echo set-$KEPT-$$\n");
    ws.file_until(&mut before, |by_id| by_id["t"].stdout.contains("set-42-"));
    let shell_pid = before["t"].stdout.rsplit("set-42-").next().unwrap_or("");
    let shell_pid: String = shell_pid.chars().take_while(char::is_ascii_digit).collect();
    terminate_checkpointing(&mut pair.a, &mut ws);

    let mut ws = restore(&pair.b, &sandbox_id, &token);
    let mut after = ById::new();
    ws.request("back", json!({"action": "reconnect"}));
    keys(
        &mut ws,
        "k2",
        "echo again-$KEPT-$$-$(tty); stty size; exit 4\n",
    );
    ws.file_until(&mut after, |by_id| {
        by_id.get("t").is_some_and(ws::Answers::is_done)
    });
    let output = &after["t"].stdout;
    assert!(
        output.contains(&format!("again-42-{shell_pid}-/dev/pts/")),
        "not the same shell on its terminal (pid {shell_pid}): {output:?}"
    );
    assert!(output.contains("30 100"), "the window size: {output:?}");
    assert_eq!(after["t"].exit_code(), Some(4), "{:?}", after["t"]);
    assert_eq!(after["t"].process_id, process_id);
    assert!(
        after["t"].stderr.is_empty(),
        "one output stream: {:?}",
        after["t"]
    );
    ws.kill_sandbox();
}

/// The shutdown timeout of the servers that are stopped with SIGTERM.
const SHUTDOWN_SECS: &str = "20";

/// SIGTERM `server` while `ws` (a checkpointable session) runs an execution: the server exits 0
/// within its shutdown timeout after checkpointing, and the client is told.
fn terminate_checkpointing(server: &mut TestServer, ws: &mut Ws) {
    let limit = Duration::from_secs(SHUTDOWN_SECS.parse().unwrap());
    let started = Instant::now();
    let status = server
        .terminate(limit + Duration::from_secs(10))
        .expect("the server did not exit after SIGTERM");
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0), "exited with {status:?}");
    assert!(took < limit, "took {took:?}, past its shutdown timeout");
    assert!(
        server.log().contains("shutdown complete"),
        "the server gave up at its deadline"
    );
    // The client heard that its sandbox is being checkpointed, then the socket was closed:
    // 1001 (going away) right away, or 1000 after CHECKPOINTED. Output the execution wrote
    // before the checkpoint may still come first (a terminal's prompt, say): only statuses
    // count here.
    let mut seen = Vec::new();
    let close = loop {
        match ws.next_within(Duration::from_secs(10)) {
            Frame::Json(frame) if frame["event"] == "status_update" => {
                seen.push(frame["status"].as_str().unwrap_or("").to_string())
            }
            Frame::Json(_) => {}
            other => break other,
        }
    };
    assert_eq!(
        seen.first().map(String::as_str),
        Some("SANDBOX_CHECKPOINTING"),
        "frames during shutdown: {seen:?}"
    );
    let complete = seen.last().map(String::as_str) == Some("SANDBOX_CHECKPOINTED");
    assert!(
        matches!(close, Frame::Close(Some(1001), _))
            || (complete && matches!(close, Frame::Close(Some(1000), _))),
        "{close:?} after {seen:?}"
    );
}

#[test]
fn round_trip_then_kill_sandbox_removes_the_saved_state() {
    let pair = pair();
    let (created, before) = checkpointable_with_state(&pair.a);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = created;
    checkpoint(&mut ws);
    assert_eq!(pair.dirs.manifest(&sandbox_id)["generation"], 1);
    let first_image = pair.dirs.image_dir(&sandbox_id);

    // A -> B -> A: the second checkpoint supersedes the first image.
    let mut ws = restore(&pair.b, &sandbox_id, &token);
    assert_kept_file(&mut ws);
    let middle = read_count(&mut ws);
    assert!(middle > before, "{before} then {middle}");
    checkpoint(&mut ws);
    assert_eq!(pair.dirs.manifest(&sandbox_id)["generation"], 2);
    let second_image = pair.dirs.image_dir(&sandbox_id);
    assert_ne!(first_image, second_image);
    assert!(!first_image.exists(), "the superseded image was kept");
    let mut ws = restore(&pair.a, &sandbox_id, &token);
    assert_counter_continues(&mut ws, middle);
    assert_kept_file(&mut ws);

    ws.kill_sandbox();
    assert!(
        !pair.dirs.base(&sandbox_id).exists(),
        "kill_sandbox left {:?}",
        std::fs::read_dir(pair.dirs.base(&sandbox_id))
            .map(|entries| entries.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    for server in [&pair.b, &pair.a] {
        attach_error(server, &sandbox_id, &token, "SANDBOX_NOT_FOUND", 1011);
    }
    // Still gone a moment later (no lease renewal or release recreated it).
    std::thread::sleep(Duration::from_secs(1));
    assert!(!pair.dirs.base(&sandbox_id).exists());
}

#[test]
fn checkpoint_with_an_open_tcp_connection_is_refused_up_front() {
    let pair = pair();
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&pair.a, json!({"enable_checkpoint": true}));
    let script = r#"cat > /tmp/loop.py <<'EOF'
import socket, time
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(1)
client = socket.create_connection(server.getsockname())
peer, _ = server.accept()
open("/tmp/tcp-ready", "w").write("ready")
time.sleep(1000)
EOF
nohup python3 /tmp/loop.py >/dev/null 2>&1 &
for k in $(seq 200); do [ -s /tmp/tcp-ready ] && break; sleep 0.1; done
cat /tmp/tcp-ready"#;
    assert_eq!(sh(&mut ws, script), "ready");

    // While an execution runs: CHECKPOINTING, IN_PROGRESS_ERROR, error; the session goes on.
    ws.start("bash", "sleep 1; echo slept");
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    ws.send(json!({"action": "checkpoint"}));
    ws.expect_status("SANDBOX_CHECKPOINTING");
    ws.expect_error("SANDBOX_EXECUTION_IN_PROGRESS_ERROR");
    let result = ws.collect_until_done();
    assert_eq!(result.stdout, "slept\n");

    ws.send(json!({"action": "checkpoint"}));
    ws.expect_status("SANDBOX_CHECKPOINTING");
    let message = ws.expect_error("SANDBOX_CHECKPOINT_ERROR");
    assert!(message.contains("TCP"), "{message}");
    // The session goes on, with its processes.
    assert_eq!(sh(&mut ws, "echo still here"), "still here\n");
    let processes = sh(&mut ws, "ps -eo args");
    assert!(processes.contains("loop.py"), "{processes}");
    assert!(
        !pair.dirs.base(&sandbox_id).join("current.json").exists(),
        "a refused checkpoint published something"
    );
    assert!(
        !file_exists_named(&pair.dirs.base(&sandbox_id), "image-"),
        "a refused checkpoint left an image directory"
    );
    // A snapshot is refused the same way.
    let name = format!("t-{}", random_suffix());
    ws.send(json!({"action": "snapshot_filesystem", "name": name}));
    ws.expect_status("SANDBOX_FILESYSTEM_SNAPSHOT_CREATING");
    let message = ws.expect_error("SANDBOX_FILESYSTEM_SNAPSHOT_ERROR");
    assert!(message.contains("TCP"), "{message}");
    assert!(!list_snapshots(&pair.a).contains(&name));
    // And the sandbox is still the live one here.
    drop(ws);
    let mut ws = ws::attach(&pair.a, &sandbox_id, &token);
    assert_eq!(sh(&mut ws, "cat /tmp/tcp-ready"), "ready");
    // As the message says: close them and retry.
    sh(
        &mut ws,
        "pkill python3; for k in $(seq 100); do pgrep python3 >/dev/null || break; sleep 0.1; done",
    );
    checkpoint(&mut ws);
    let mut ws = restore(&pair.b, &sandbox_id, &token);
    assert_eq!(sh(&mut ws, "cat /tmp/tcp-ready"), "ready");
    ws.kill_sandbox();
}

// ---------------------------------------------------------------------------------------------
// Filesystem snapshots

fn list_snapshots(server: &TestServer) -> Vec<String> {
    let response = server.get("/snapshots");
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["snapshots"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", response.text()))
        .iter()
        .map(|entry| entry["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn delete_snapshot(server: &TestServer, name: &str) -> common::Response {
    request(
        server.port,
        format!("DELETE /snapshots/{name} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
}

#[test]
fn snapshot_on_a_starts_new_sandboxes_on_b_with_the_files_but_not_the_processes() {
    let pair = pair();
    let name = format!("t-{}", random_suffix());
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&pair.a, json!({}));
    start_counter(&mut ws);
    sh(
        &mut ws,
        "nohup sleep 1000 >/dev/null 2>&1 & mkdir -p /root/data && echo from the snapshot > /root/data/file.txt",
    );

    ws.send(json!({"action": "snapshot_filesystem", "name": name}));
    ws.expect_status("SANDBOX_FILESYSTEM_SNAPSHOT_CREATING");
    ws.expect_status("SANDBOX_FILESYSTEM_SNAPSHOT_CREATED");
    // The session goes on, background processes included.
    let before = read_count(&mut ws);
    assert_counter_continues(&mut ws, before);
    let processes = sh(&mut ws, "ps -eo args");
    assert!(processes.contains("sleep 1000"), "{processes}");
    assert_eq!(
        sh(&mut ws, "cat /root/data/file.txt"),
        "from the snapshot\n"
    );
    assert!(pair
        .dirs
        .snapshots
        .join(&name)
        .join("current.json")
        .exists());

    for server in [&pair.a, &pair.b] {
        assert!(
            list_snapshots(server).contains(&name),
            "GET /snapshots: {:?}",
            list_snapshots(server)
        );
    }

    // Two sandboxes from it on B: new identities, the files, none of the processes.
    let mut identities = vec![(sandbox_id.clone(), token.clone())];
    let mut copies = Vec::new();
    for _ in 0..2 {
        let Created {
            ws: mut copy,
            sandbox_id: copy_id,
            token: copy_token,
        } = create(&pair.b, json!({"filesystem_snapshot_name": name}));
        for (id, old_token) in &identities {
            assert_ne!(&copy_id, id, "a sandbox from a snapshot needs a new id");
            assert_ne!(&copy_token, old_token, "and a new token");
        }
        identities.push((copy_id.clone(), copy_token.clone()));
        assert_eq!(
            sh(&mut copy, "cat /root/data/file.txt"),
            "from the snapshot\n"
        );
        let processes = sh(&mut copy, "ps -eo args");
        assert!(
            !processes.contains("sleep 1000") && !processes.contains("while true"),
            "processes came with the snapshot: {processes}"
        );
        let stale = sh(&mut copy, "cat /tmp/count; sleep 0.6; cat /tmp/count");
        let values: Vec<&str> = stale.lines().collect();
        assert!(
            values.len() != 2 || values[0] == values[1],
            "a counter runs in the copy: {values:?}"
        );
        assert_eq!(
            sh(
                &mut copy,
                "echo fresh > /root/data/copy.txt; cat /root/data/copy.txt"
            ),
            "fresh\n"
        );
        copies.push(copy);
    }
    // The copies are independent of each other and of the original.
    assert_eq!(sh(&mut ws, "ls /root/data"), "file.txt\n");

    let response = delete_snapshot(&pair.b, &name);
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(!pair.dirs.snapshots.join(&name).exists());
    for server in [&pair.a, &pair.b] {
        assert!(!list_snapshots(server).contains(&name));
    }
    let response = delete_snapshot(&pair.a, &name);
    assert_eq!(response.status, 404, "{}", response.text());
    for server in [&pair.b, &pair.a] {
        let mut gone = connect(server.port, "/create");
        gone.send(json!({"filesystem_snapshot_name": name}));
        gone.expect_status("SANDBOX_CREATING");
        let message = gone.expect_error("SANDBOX_CREATION_ERROR");
        assert!(message.contains(&name), "{message}");
        gone.expect_close(4000);
    }
    // The original sandbox and the copies started from it are unaffected by the deletion.
    assert_eq!(
        sh(&mut ws, "cat /root/data/file.txt"),
        "from the snapshot\n"
    );
    ws.kill_sandbox();
    for mut copy in copies {
        assert_eq!(
            sh(&mut copy, "cat /root/data/file.txt /root/data/copy.txt"),
            "from the snapshot\nfresh\n"
        );
        copy.kill_sandbox();
    }
}

#[test]
fn invalid_snapshot_names_and_unknown_snapshots_are_errors() {
    let pair = pair();
    let Created { mut ws, .. } = create(&pair.a, json!({}));
    let long = "x".repeat(65);
    for name in ["../x", ".hidden", long.as_str(), "a b", "", "a/b"] {
        ws.send(json!({"action": "snapshot_filesystem", "name": name}));
        ws.expect_status("SANDBOX_FILESYSTEM_SNAPSHOT_CREATING");
        let message = ws.expect_error("SANDBOX_FILESYSTEM_SNAPSHOT_ERROR");
        assert!(
            message.contains("A-Z a-z 0-9 . _ -"),
            "name {name:?}: the message must list the allowed characters: {message}"
        );
        assert_eq!(sh(&mut ws, "echo alive"), "alive\n");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&pair.dirs.snapshots)
        .expect("snapshot dir")
        .flatten()
        .map(|entry| entry.file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(!pair.dirs.root.join("x").exists());
    ws.kill_sandbox();

    let unknown = format!("t-unknown-{}", random_suffix());
    for server in [&pair.a, &pair.b] {
        let mut missing = connect(server.port, "/create");
        missing.send(json!({"filesystem_snapshot_name": unknown}));
        missing.expect_status("SANDBOX_CREATING");
        let message = missing.expect_error("SANDBOX_CREATION_ERROR");
        // The original clients look for "not found".
        assert!(
            message.contains(&unknown) && message.contains("not found"),
            "{message}"
        );
        missing.expect_close(4000);
    }
    for name in ["../x", ".hidden"] {
        let mut bad = connect(pair.b.port, "/create");
        bad.send(json!({"filesystem_snapshot_name": name}));
        let message = bad.expect_error("SANDBOX_CREATION_ERROR");
        assert!(message.contains("A-Z a-z 0-9"), "{message}");
        bad.expect_close(4000);
    }
    let response = delete_snapshot(&pair.a, ".hidden");
    assert_eq!(response.status, 400, "{}", response.text());
    pair.a.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// Idle timeout with auto-checkpoint

/// With auto-checkpoint, the idle timeout checkpoints instead of deleting: never while the
/// client is connected (it may be thinking), once it has left.
#[test]
fn idle_timeout_auto_checkpoints_and_the_sandbox_can_be_attached_again() {
    let pair = pair();
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(
        &pair.a,
        json!({"idle_timeout": 2, "enable_idle_timeout_auto_checkpoint": true}),
    );
    start_counter(&mut ws);
    sh(&mut ws, "echo kept across instances > /root/keep.txt");
    // Connected and silent for longer than the idle timeout: nothing happens.
    ws.expect_silence(Duration::from_secs(3));
    let before = read_count(&mut ws);
    ws.close();
    let left = Instant::now();
    let manifest = pair.dirs.base(&sandbox_id).join("current.json");
    assert!(
        wait_until(Duration::from_secs(60), || manifest.exists()),
        "no checkpoint after the client left"
    );
    assert!(
        left.elapsed() >= Duration::from_millis(1500),
        "checkpointed after only {:?} without a client",
        left.elapsed()
    );
    assert_eq!(
        pair.dirs.manifest(&sandbox_id)["settings"]["auto_checkpoint"],
        true
    );

    // Attach again (on B, once A has let it go): it comes back, with its settings: it does
    // not auto-checkpoint while the client is attached.
    let mut ws = restore_when_released(&pair.b, &sandbox_id, &token);
    assert_kept_file(&mut ws);
    assert_counter_continues(&mut ws, before);
    ws.kill_sandbox();
}

/// [`restore`], retried while the instance that checkpoints the sandbox still holds it.
fn restore_when_released(server: &TestServer, sandbox_id: &str, token: &str) -> Ws {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut ws = connect(server.port, &attach_path(sandbox_id, token));
        let frame = ws.recv();
        if is_status(&frame, "SANDBOX_RESTORING") {
            ws.expect_status("SANDBOX_RUNNING");
            return ws;
        }
        assert!(
            is_status(&frame, "SANDBOX_IN_USE") && Instant::now() < deadline,
            "attach answered {frame}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

// ---------------------------------------------------------------------------------------------
// A store that does not answer, and what killed instances leave in it

/// One server on the shared checkpoint directory, without a pool (these tests start no
/// sandbox on it), plus `extra` variables.
fn store_server(dirs: &SharedDirs, extra: &[(&str, &str)]) -> TestServer {
    let checkpoints = dirs.checkpoints.to_string_lossy().into_owned();
    let mut env = vec![
        ("CHECKPOINT_AND_RESTORE_PATH", checkpoints.as_str()),
        ("SANDBOX_POOL_SIZE", "0"),
    ];
    env.extend_from_slice(extra);
    TestServer::start(&env)
}

#[test]
fn an_attach_whose_store_does_not_answer_is_refused_after_the_bound() {
    let dirs = SharedDirs::new();
    let server = store_server(&dirs, &[("SANDBOX_CREATE_TIMEOUT_SECS", "3")]);
    // A manifest that is a FIFO: reading it blocks until someone writes, like a hung mount.
    let sandbox_id = "0123456789abcdef0123456789abcdef";
    let base = dirs.base(sandbox_id);
    std::fs::create_dir_all(&base).unwrap();
    let manifest = base.join("current.json");
    nix::unistd::mkfifo(&manifest, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");

    let message = attach_error(
        &server,
        sandbox_id,
        WRONG_TOKEN,
        "SANDBOX_RESTORE_ERROR",
        4000,
    );
    assert!(message.contains("did not answer within 3 s"), "{message}");

    // Let the stuck reader go: it reads garbage, and its late answer finds nobody waiting.
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut writer = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(&manifest)
            .expect("the store check is still reading the manifest");
        writer.write_all(b"{not json").unwrap();
    }
    std::fs::remove_file(&manifest).unwrap();
    // The server goes on serving, attaches included.
    assert_eq!(server.get("/status").status, 200);
    attach_error(&server, sandbox_id, WRONG_TOKEN, "SANDBOX_NOT_FOUND", 1011);
}

/// A lease file of a made-up instance, expiring `from_now_ms` from now (may be negative), in the
/// format of servers before lease generations (`lease.json`, read as generation 0).
fn write_lease(base: &Path, from_now_ms: i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    std::fs::create_dir_all(base).unwrap();
    let lease = json!({"owner": "elsewhere", "nonce": "n", "expires_unix_ms": now + from_now_ms});
    std::fs::write(base.join("lease.json"), lease.to_string()).unwrap();
}

#[test]
fn directories_a_killed_instance_left_are_removed_once_expired() {
    let dirs = SharedDirs::new();
    // A creates two checkpointable sandboxes (each claims a lease in the store) and is killed
    // before any checkpoint.
    let mut a = store_server(&dirs, &[("SANDBOX_LEASE_TTL_SECS", "2")]);
    let first = create(&a, json!({"enable_checkpoint": true}));
    let second = create(&a, json!({"enable_checkpoint": true}));
    for created in [&first, &second] {
        assert!(
            wait_until(Duration::from_secs(10), || dirs
                .lease_held(&created.sandbox_id)),
            "no lease for {}",
            created.sandbox_id
        );
    }
    a.sigkill().expect("SIGKILL A");
    for created in [&first, &second] {
        // A kill in the middle of a renewal may also leave the renewal's temporary file
        // (`lease-1.tmp-<hex>`): it is removed with the directory.
        let left: Vec<String> = entries(&dirs.base(&created.sandbox_id))
            .into_iter()
            .filter(|name| !name.starts_with("lease-1.tmp-"))
            .collect();
        assert_eq!(left, ["lease-1.json"]);
    }
    // Wait for the leases to expire (2 s after their last renewal).
    std::thread::sleep(Duration::from_secs(3));

    // An attach that finds one removes it (this instance does not sweep).
    let b = store_server(&dirs, &[("SANDBOX_STORE_SWEEP_SECS", "0")]);
    attach_error(
        &b,
        &first.sandbox_id,
        &first.token,
        "SANDBOX_NOT_FOUND",
        1011,
    );
    assert!(
        !dirs.base(&first.sandbox_id).exists(),
        "left: {:?}",
        entries(&dirs.base(&first.sandbox_id))
    );
    assert!(dirs.base(&second.sandbox_id).exists());
    drop(b);

    // The periodic sweep removes the other one, and nothing that is still someone's.
    let fresh = dirs.base("00000000000000000000000000000001");
    write_lease(&fresh, 3_600_000);
    let checkpointed = dirs.base("00000000000000000000000000000002");
    write_lease(&checkpointed, -60_000);
    std::fs::write(checkpointed.join("current.json"), b"{}").unwrap();
    let c = store_server(&dirs, &[("SANDBOX_STORE_SWEEP_SECS", "1")]);
    assert!(
        wait_until(Duration::from_secs(30), || !dirs
            .base(&second.sandbox_id)
            .exists()),
        "the sweep left {:?}",
        entries(&dirs.base(&second.sandbox_id))
    );
    assert_eq!(entries(&fresh), ["lease.json"]);
    assert_eq!(entries(&checkpointed), ["current.json", "lease.json"]);
    // The directory goes before the job's result reaches the loop, which logs it.
    assert!(
        wait_until(Duration::from_secs(10), || c
            .log()
            .contains("removed 1 abandoned sandbox directories")),
        "{}",
        c.log()
    );
    drop(c);
    drop(a);
}
