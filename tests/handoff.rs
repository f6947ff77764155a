//! Handoff between instances that share a checkpoint store (docs/checkpoint.md "Handoff",
//! docs/protocol.md "Handoff"), against real servers, runsc and the sandbox image: a client
//! attaches on B to a sandbox created with `enable_sandbox_handoff` that runs on A; A
//! checkpoints it (told through the store only) and B restores it.
//!
//! Each test starts two or three servers on one shared store under a fresh temporary
//! directory; their `Drop` stops them and removes every sandbox they left, then the directory
//! goes. Run with:
//!
//!     cargo test --test handoff -- --test-threads=2

mod common;
mod store;
mod ws;

use std::time::Duration;

use common::{force_cleanup, runsc_sandboxes, wait_until, TestServer};
use serde_json::{json, Value};
use store::SharedDirs;
use ws::{assert_exited, attach_path, connect, create, is_status, Created, Frame, Ws};

/// A lease TTL short enough that a test can wait for a dead instance's lease to expire.
const SHORT_TTL_SECS: &str = "3";

/// Servers on one store. Fields drop in order: the servers stop (and may still save into the
/// store) before the directories are removed.
struct Cluster {
    servers: Vec<TestServer>,
    dirs: SharedDirs,
}

/// `count` servers sharing a store, each with `extra` in its environment.
fn cluster(count: usize, extra: &[(&str, &str)]) -> Cluster {
    let dirs = SharedDirs::new();
    let store_env = dirs.env();
    let mut env: Vec<(&str, &str)> = store_env
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    env.extend_from_slice(extra);
    let started: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .map(|_| scope.spawn(|| TestServer::start(&env)))
            .collect();
        handles.into_iter().map(|handle| handle.join()).collect()
    });
    let servers: Vec<TestServer> = started.into_iter().filter_map(Result::ok).collect();
    assert_eq!(servers.len(), count, "a server did not start");
    Cluster { servers, dirs }
}

/// Run bash code to completion, assert exit 0, return stdout.
fn sh(ws: &mut Ws, code: &str) -> String {
    let result = ws.run("bash", code);
    assert_exited(&result.done, 0);
    result.stdout
}

/// A sandbox with handoff on `server`, with a background counter and a file.
fn handoff_sandbox(server: &TestServer) -> Created {
    let mut created = create(
        server,
        json!({"enable_sandbox_handoff": true, "labels": {"test": "handoff"}}),
    );
    sh(
        &mut created.ws,
        "nohup bash -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done' >/dev/null 2>&1 &
         echo state from A > /root/keep.txt
         for k in $(seq 100); do [ -s /tmp/count ] && break; sleep 0.1; done",
    );
    created
}

fn read_count(ws: &mut Ws) -> u64 {
    let text = sh(
        ws,
        "for k in $(seq 100); do c=$(cat /tmp/count 2>/dev/null); [ -n \"$c\" ] && break; sleep 0.02; done; echo \"$c\"",
    );
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("bad counter value {text:?}"))
}

/// The sandbox's processes and files came along: the counter goes on from where it was.
fn assert_continues(ws: &mut Ws, before: u64) {
    assert_eq!(sh(ws, "cat /root/keep.txt"), "state from A\n");
    let first = read_count(ws);
    std::thread::sleep(Duration::from_secs(1));
    let second = read_count(ws);
    assert!(
        first >= before && second > first,
        "the counter did not continue: {before} before, then {first} and {second} 1 s apart"
    );
}

/// The attach on the instance that takes the sandbox: LOCK_ACQUIRING (while the other one
/// checkpoints it), LOCK_ACQUIRED, RESTORING, RUNNING.
fn expect_handed_over(ws: &mut Ws) {
    for status in [
        "SANDBOX_LOCK_ACQUIRING",
        "SANDBOX_LOCK_ACQUIRED",
        "SANDBOX_RESTORING",
        "SANDBOX_RUNNING",
    ] {
        ws.expect_status(status);
    }
}

/// What the client on the instance that gives the sandbox up hears (output of a running
/// execution may come in between): LOCK_RELEASE_REQUESTED (message), CHECKPOINTING, DELETING,
/// DELETED, CHECKPOINTED, LOCK_RELEASED (message), close 4001.
fn expect_moved(ws: &mut Ws) -> Vec<Value> {
    let mut statuses = Vec::new();
    let close = loop {
        match ws.next_within(Duration::from_secs(60)) {
            Frame::Json(frame) if frame["event"] == "status_update" => statuses.push(frame),
            Frame::Json(_) => {}
            other => break other,
        }
    };
    let names: Vec<&str> = statuses
        .iter()
        .map(|frame| frame["status"].as_str().unwrap_or_default())
        .filter(|status| !status.starts_with("SANDBOX_EXECUTION"))
        .collect();
    assert_eq!(
        names,
        [
            "SANDBOX_LOCK_RELEASE_REQUESTED",
            "SANDBOX_CHECKPOINTING",
            "SANDBOX_DELETING",
            "SANDBOX_DELETED",
            "SANDBOX_CHECKPOINTED",
            "SANDBOX_LOCK_RELEASED"
        ],
        "{statuses:?}"
    );
    assert!(
        matches!(close, Frame::Close(Some(4001), _)),
        "close: {close:?}"
    );
    statuses
}

fn owner_of_lease(dirs: &SharedDirs, sandbox_id: &str) -> String {
    dirs.lease(sandbox_id)
        .and_then(|lease| lease["owner"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Where the sandbox runs: the servers whose runsc lists it.
fn running_on(servers: &[&TestServer], sandbox_id: &str) -> Vec<usize> {
    servers
        .iter()
        .enumerate()
        .filter(|(_, server)| {
            runsc_sandboxes(&server.runsc_root()).contains(&sandbox_id.to_string())
        })
        .map(|(index, _)| index)
        .collect()
}

#[test]
fn an_idle_sandbox_moves_and_its_client_on_a_is_told() {
    let cluster = cluster(2, &[]);
    let (a, b) = (&cluster.servers[0], &cluster.servers[1]);
    let Created {
        ws: mut on_a,
        sandbox_id,
        token,
    } = handoff_sandbox(a);
    let before = read_count(&mut on_a);
    assert!(wait_until(Duration::from_secs(10), || cluster
        .dirs
        .lease_held(&sandbox_id)));
    let a_owner = owner_of_lease(&cluster.dirs, &sandbox_id);

    // A's client stays attached; B's attach takes the sandbox over.
    let mut on_b = connect(b.port, &attach_path(&sandbox_id, &token));
    expect_handed_over(&mut on_b);
    let statuses = expect_moved(&mut on_a);
    let requested = statuses[0]["message"].as_str().unwrap_or_default();
    assert!(
        requested.contains("another server instance asked for sandbox"),
        "{requested}"
    );
    let released = statuses.last().unwrap()["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        released.contains("moved to another server instance"),
        "{released}"
    );

    assert_continues(&mut on_b, before);
    // One live copy, on B, which holds the lease now.
    assert_eq!(running_on(&[a, b], &sandbox_id), [1]);
    let b_owner = owner_of_lease(&cluster.dirs, &sandbox_id);
    assert!(
        !b_owner.is_empty() && b_owner != a_owner,
        "{a_owner} -> {b_owner}"
    );
    let listed = b.get("/sandboxes").json();
    let entry = listed["sandboxes"]
        .as_array()
        .and_then(|all| {
            all.iter()
                .find(|entry| entry["sandbox_id"] == sandbox_id.as_str())
        })
        .unwrap_or_else(|| panic!("B does not list it: {listed}"))
        .clone();
    assert_eq!(entry["labels"]["test"], "handoff", "{entry}");
    assert_eq!(entry["checkpointed"], true, "{entry}");
    assert!(
        !listed.to_string().contains(&token),
        "a token is listed: {listed}"
    );
    let on_a_list = a.get("/sandboxes").json();
    assert!(!on_a_list.to_string().contains(&sandbox_id), "{on_a_list}");

    // And back: the handoff setting travels with the sandbox.
    let mut again = connect(a.port, &attach_path(&sandbox_id, &token));
    expect_handed_over(&mut again);
    expect_moved(&mut on_b);
    assert_eq!(sh(&mut again, "cat /root/keep.txt"), "state from A\n");
    again.kill_sandbox();
}

/// Without `enable_sandbox_handoff`, as before: the sandbox stays where it runs and an attach
/// elsewhere is told it is in use.
#[test]
fn without_the_flag_an_attach_elsewhere_is_in_use() {
    let cluster = cluster(2, &[]);
    let (a, b) = (&cluster.servers[0], &cluster.servers[1]);
    let Created {
        ws: mut on_a,
        sandbox_id,
        token,
    } = create(a, json!({"enable_checkpoint": true}));
    assert!(wait_until(Duration::from_secs(10), || cluster
        .dirs
        .lease_held(&sandbox_id)));
    let mut on_b = connect(b.port, &attach_path(&sandbox_id, &token));
    let message = on_b.expect_error("SANDBOX_IN_USE");
    assert!(message.contains("another server instance"), "{message}");
    on_b.expect_close(1011);
    on_a.expect_silence(Duration::from_secs(2));
    assert_eq!(sh(&mut on_a, "echo still here"), "still here\n");
    on_a.kill_sandbox();
}

/// An execution that runs during the handoff goes on after the restore on B: `reconnect`
/// follows it, as after a shutdown checkpoint.
#[test]
fn a_running_execution_continues_on_b() {
    let cluster = cluster(2, &[]);
    let (a, b) = (&cluster.servers[0], &cluster.servers[1]);
    let Created {
        ws: mut on_a,
        sandbox_id,
        token,
    } = create(a, json!({"enable_sandbox_handoff": true}));
    on_a.start(
        "bash",
        "for i in $(seq 1 600); do echo tick $i; sleep 0.1; done",
    );
    on_a.expect_status("SANDBOX_EXECUTION_RUNNING");
    let ticks = on_a.read_stdout_until("tick 3");
    assert!(ticks.contains("tick 3"), "{ticks}");
    assert!(wait_until(Duration::from_secs(10), || cluster
        .dirs
        .lease_held(&sandbox_id)));

    let mut on_b = connect(b.port, &attach_path(&sandbox_id, &token));
    expect_handed_over(&mut on_b);
    expect_moved(&mut on_a);
    // One execution at a time, also across the move; the moved one is the session's.
    on_b.start("bash", "echo second");
    let refusal = on_b.expect_error("SANDBOX_EXECUTION_ERROR");
    assert!(refusal.contains("already in progress"), "{refusal}");
    on_b.send(json!({"action": "reconnect"}));
    on_b.expect_status("SANDBOX_EXECUTION_RUNNING");
    // The ticks go on after the move (each read waits for more output, within its bound).
    let numbers = |text: &str| -> Vec<u64> {
        text.lines()
            .filter_map(|line| line.strip_prefix("tick ")?.trim().parse().ok())
            .collect()
    };
    let mut after_move = String::new();
    while !numbers(&after_move).iter().any(|n| *n > 3) {
        after_move.push_str(&on_b.read_stdout_until("\n"));
    }
    on_b.send(json!({"action": "kill_process"}));
    let done = loop {
        let frame = on_b.recv();
        if is_status(&frame, "SANDBOX_EXECUTION_DONE") {
            break frame;
        }
    };
    assert_eq!(done["reason"], "killed", "{done}");
    assert_eq!(sh(&mut on_b, "echo after"), "after\n");
    on_b.kill_sandbox();
}

/// B and C attach at once to the sandbox A runs: exactly one of them gets it, the other is told
/// it is in use, and nothing of the sandbox is lost.
#[test]
fn two_attaches_racing_for_a_handoff_have_one_winner() {
    let cluster = cluster(3, &[]);
    let servers: Vec<&TestServer> = cluster.servers.iter().collect();
    let Created {
        ws: mut on_a,
        sandbox_id,
        token,
    } = handoff_sandbox(servers[0]);
    let before = read_count(&mut on_a);
    assert!(wait_until(Duration::from_secs(10), || cluster
        .dirs
        .lease_held(&sandbox_id)));

    let path = attach_path(&sandbox_id, &token);
    let barrier = std::sync::Barrier::new(2);
    // Each attach: its connection and the statuses up to RUNNING or a refusal.
    let results: Vec<(Ws, Vec<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = [servers[1].port, servers[2].port]
            .into_iter()
            .map(|port| {
                let (path, barrier) = (&path, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    let mut ws = connect(port, path);
                    let mut seen = Vec::new();
                    loop {
                        let frame = ws.recv();
                        let status = frame["status"].as_str().unwrap_or("event").to_string();
                        let last = matches!(status.as_str(), "SANDBOX_RUNNING" | "SANDBOX_IN_USE");
                        seen.push(status);
                        if last {
                            break;
                        }
                    }
                    (ws, seen)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("attach thread"))
            .collect()
    });
    let outcomes: Vec<&Vec<String>> = results.iter().map(|(_, seen)| seen).collect();
    let winners: Vec<usize> = (0..2)
        .filter(|index| outcomes[*index].last().map(String::as_str) == Some("SANDBOX_RUNNING"))
        .collect();
    assert_eq!(winners.len(), 1, "exactly one attach wins: {outcomes:?}");
    let winner = winners[0];
    let loser = 1 - winner;
    assert_eq!(
        outcomes[loser].last().map(String::as_str),
        Some("SANDBOX_IN_USE"),
        "{outcomes:?}"
    );
    expect_moved(&mut on_a);

    let mut results = results;
    let (mut loser_ws, _) = results.remove(loser);
    let error = loser_ws.recv();
    assert_eq!(error["event"], "error", "{error}");
    loser_ws.expect_close(1011);
    let (mut winner_ws, _) = results.remove(0);
    assert_continues(&mut winner_ws, before);
    // One live copy, on the winner (servers 1 and 2 are B and C).
    assert_eq!(running_on(&servers, &sandbox_id), [winner + 1]);
    winner_ws.kill_sandbox();
}

/// A dies while it runs the sandbox (killed with everything it started, as an instance is on
/// Cloud Run). An attach on B waits for A's lease to expire (nobody answers the request) and
/// restores the last checkpoint; what A did after it is gone with A.
#[test]
fn a_handoff_from_a_dead_instance_restores_the_last_checkpoint_once_its_lease_expires() {
    let cluster = cluster(2, &[("SANDBOX_LEASE_TTL_SECS", SHORT_TTL_SECS)]);
    let a = &cluster.servers[0];
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = handoff_sandbox(a);
    ws.checkpoint_to_the_end();
    cluster.dirs.wait_lease_released(&sandbox_id);
    let mut ws = connect(a.port, &attach_path(&sandbox_id, &token));
    ws.expect_status("SANDBOX_RESTORING");
    ws.expect_status("SANDBOX_RUNNING");
    sh(&mut ws, "echo not checkpointed > /root/later.txt");
    assert!(wait_until(Duration::from_secs(10), || cluster
        .dirs
        .lease_held(&sandbox_id)));

    let mut cluster = cluster;
    cluster.servers[0].sigkill().expect("SIGKILL A");
    force_cleanup(&cluster.servers[0].state_dir);
    let b = &cluster.servers[1];
    let mut on_b = connect(b.port, &attach_path(&sandbox_id, &token));
    expect_handed_over(&mut on_b);
    assert_eq!(sh(&mut on_b, "cat /root/keep.txt"), "state from A\n");
    assert_eq!(
        sh(&mut on_b, "cat /root/later.txt 2>/dev/null || echo gone"),
        "gone\n"
    );
    assert_eq!(running_on(&[b], &sandbox_id), [0]);
    on_b.kill_sandbox();
}

/// A is SIGKILLed in the middle of the handoff's checkpoint (with everything it started): the
/// image it was writing is never published, B restores the previous checkpoint once A's lease
/// expires, and the half-written image does not stay in the store after B's next checkpoint.
#[test]
fn an_instance_killed_mid_checkpoint_leaves_the_previous_checkpoint_restorable() {
    let cluster = cluster(2, &[("SANDBOX_LEASE_TTL_SECS", SHORT_TTL_SECS)]);
    let (a, b) = (&cluster.servers[0], &cluster.servers[1]);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = handoff_sandbox(a);
    ws.checkpoint_to_the_end();
    cluster.dirs.wait_lease_released(&sandbox_id);
    let first_image = cluster.dirs.image_dir(&sandbox_id);
    let mut on_a = connect(a.port, &attach_path(&sandbox_id, &token));
    on_a.expect_status("SANDBOX_RESTORING");
    on_a.expect_status("SANDBOX_RUNNING");
    // 200 MB of memory: the checkpoint takes long enough to be killed in the middle.
    sh(
        &mut on_a,
        "nohup python3 -c \"import os, time; b=os.urandom(200*1024*1024); open('/tmp/touched','w').close(); time.sleep(1e6)\" >/dev/null 2>&1 &
         for i in $(seq 600); do [ -e /tmp/touched ] && exit 0; sleep 0.05; done; exit 1",
    );
    assert!(wait_until(Duration::from_secs(10), || cluster
        .dirs
        .lease_held(&sandbox_id)));

    let mut on_b = connect(b.port, &attach_path(&sandbox_id, &token));
    on_b.expect_status("SANDBOX_LOCK_ACQUIRING");
    on_a.expect_status("SANDBOX_LOCK_RELEASE_REQUESTED");
    on_a.expect_status("SANDBOX_CHECKPOINTING");
    let mut cluster = cluster;
    cluster.servers[0].sigkill().expect("SIGKILL A");
    force_cleanup(&cluster.servers[0].state_dir);
    let b = &cluster.servers[1];

    for status in [
        "SANDBOX_LOCK_ACQUIRED",
        "SANDBOX_RESTORING",
        "SANDBOX_RUNNING",
    ] {
        on_b.expect_status(status);
    }
    assert_eq!(sh(&mut on_b, "cat /root/keep.txt"), "state from A\n");
    let image = cluster.dirs.image_dir(&sandbox_id);
    assert_eq!(
        image, first_image,
        "the image of the killed checkpoint was published"
    );
    // B's own checkpoint supersedes everything else in the directory, the half-written image
    // included.
    on_b.send(json!({"action": "checkpoint"}));
    for status in [
        "SANDBOX_CHECKPOINTING",
        "SANDBOX_DELETING",
        "SANDBOX_DELETED",
        "SANDBOX_CHECKPOINTED",
    ] {
        on_b.expect_status(status);
    }
    let images: Vec<String> = store::entries(&cluster.dirs.base(&sandbox_id))
        .into_iter()
        .filter(|name| name.starts_with("image-"))
        .collect();
    assert_eq!(images.len(), 1, "{images:?}");
    let mut again = connect(b.port, &attach_path(&sandbox_id, &token));
    again.expect_status("SANDBOX_RESTORING");
    again.expect_status("SANDBOX_RUNNING");
    assert_eq!(sh(&mut again, "cat /root/keep.txt"), "state from A\n");
    again.kill_sandbox();
}
