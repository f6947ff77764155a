//! Warm pools never starve real work (issue 10, item 4), against the real server, runsc and
//! sandbox image: pooled sandboxes give their slots up to `/execute`, WebSocket creates, creates
//! from a snapshot and restores on attach; the number of snapshot pools is capped; and the limit
//! of live runsc sandboxes holds throughout (checked with `runsc list`, not only /metrics).
//!
//!     cargo test --test pools -- --test-threads=2
//!
//! Each test starts one server with its own snapshot (and checkpoint) directory under /tmp; the
//! server's `Drop` removes every sandbox it left, then the directories are removed.

mod common;
mod ws;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{runsc_list, wait_until, TestServer};
use serde_json::json;
use ws::{assert_exited, attach_path, connect, create, Created, Ws};

/// Hang detection for the pools to fill, not a performance bound.
const FILL_TIMEOUT: Duration = Duration::from_secs(90);

static DIRS: AtomicUsize = AtomicUsize::new(0);

/// Snapshot and checkpoint directories for one server; removed on drop.
struct Dirs {
    root: PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        let n = DIRS.fetch_add(1, Ordering::SeqCst);
        let root = PathBuf::from(format!("/tmp/crs-pools-test-{}-{n:04}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for dir in ["snapshots", "checkpoints"] {
            std::fs::create_dir_all(root.join(dir)).expect("create the test directories");
        }
        Dirs { root }
    }

    fn path(&self, dir: &str) -> String {
        self.root.join(dir).to_string_lossy().into_owned()
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A server and its directories; the server stops before the directories go.
struct Fixture {
    server: TestServer,
    _dirs: Dirs,
}

fn start(extra: &[(&str, &str)]) -> Fixture {
    let dirs = Dirs::new();
    let snapshots = dirs.path("snapshots");
    let checkpoints = dirs.path("checkpoints");
    let mut env = vec![
        ("FILESYSTEM_SNAPSHOT_PATH", snapshots.as_str()),
        ("CHECKPOINT_AND_RESTORE_PATH", checkpoints.as_str()),
    ];
    env.extend_from_slice(extra);
    Fixture {
        server: TestServer::start(&env),
        _dirs: dirs,
    }
}

fn metric(server: &TestServer, name: &str) -> usize {
    server
        .metric(name)
        .unwrap_or_else(|| panic!("no metric {name}")) as usize
}

/// Run bash code in a session, assert exit 0, return stdout.
fn sh(ws: &mut Ws, code: &str) -> String {
    let result = ws.run("bash", code);
    assert_exited(&result.done, 0);
    result.stdout
}

/// Save the session's filesystem as snapshot `name`.
fn snapshot(ws: &mut Ws, name: &str) {
    ws.send(json!({"action": "snapshot_filesystem", "name": name}));
    ws.expect_status("SANDBOX_FILESYSTEM_SNAPSHOT_CREATING");
    ws.expect_status("SANDBOX_FILESYSTEM_SNAPSHOT_CREATED");
}

/// Make one snapshot per name, each holding `/root/which` = its name.
fn make_snapshots(server: &TestServer, names: &[String]) {
    let Created { mut ws, .. } = create(server, json!({}));
    for name in names {
        sh(&mut ws, &format!("echo {name} > /root/which"));
        snapshot(&mut ws, name);
    }
    ws.kill_sandbox();
}

/// Create a sandbox from snapshot `name`, check its file, and kill it (its pool stays).
fn use_snapshot(server: &TestServer, name: &str) {
    let Created { mut ws, .. } = create(server, json!({"filesystem_snapshot_name": name}));
    assert_eq!(sh(&mut ws, "cat /root/which"), format!("{name}\n"));
    ws.kill_sandbox();
}

/// Wait until every one of the `max` slots holds a ready pooled sandbox.
fn wait_full_of_pools(server: &TestServer, max: usize) {
    let full = wait_until(FILL_TIMEOUT, || {
        metric(server, "sandbox_live") == max
            && metric(server, "sandbox_pool_ready") + metric(server, "sandbox_snapshot_pool_ready")
                == max
    });
    assert!(
        full,
        "the pools did not fill the {max} slots: {} live, {} fresh and {} snapshot sandboxes ready",
        metric(server, "sandbox_live"),
        metric(server, "sandbox_pool_ready"),
        metric(server, "sandbox_snapshot_pool_ready"),
    );
}

/// Samples `runsc list` of the server until dropped; `max_seen` is the most containers seen.
struct ContainerWatch {
    stop: Arc<AtomicBool>,
    max_seen: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ContainerWatch {
    fn start(server: &TestServer) -> ContainerWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let max_seen = Arc::new(AtomicUsize::new(0));
        let root = server.runsc_root();
        let thread = {
            let (stop, max_seen) = (Arc::clone(&stop), Arc::clone(&max_seen));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    max_seen.fetch_max(runsc_list(&root).len(), Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        ContainerWatch {
            stop,
            max_seen,
            thread: Some(thread),
        }
    }

    /// Stop sampling; the most runsc containers seen at once.
    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.max_seen.load(Ordering::SeqCst)
    }
}

impl Drop for ContainerWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[test]
fn six_snapshot_pools_filling_every_slot_give_way_to_real_work() {
    const MAX: usize = 6;
    let fixture = start(&[
        ("SANDBOX_MAX_SANDBOXES", "6"),
        ("SANDBOX_POOL_SIZE", "1"),
        ("SANDBOX_SNAPSHOT_POOLS_MAX", "6"),
    ]);
    let server = &fixture.server;
    let names: Vec<String> = (0..6).map(|n| format!("pool-{n}")).collect();
    make_snapshots(server, &names);
    // Using the sixth while five pools and the fresh pool hold every slot already takes a
    // pooled sandbox's slot: a create from a snapshot gives way too.
    for name in &names {
        use_snapshot(server, name);
    }
    assert_eq!(metric(server, "sandbox_snapshot_pools"), 6);
    wait_full_of_pools(server, MAX);

    // Six concurrent executions, each holding its sandbox for a while: one takes the fresh
    // pooled sandbox, the five others each need a snapshot pool's slot (it was 5 x 503).
    let evictions_before = metric(server, "sandbox_pool_evictions_total");
    let watch = ContainerWatch::start(server);
    let barrier = Arc::new(Barrier::new(MAX));
    let port = server.port;
    let threads: Vec<_> = (0..MAX)
        .map(|index| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let code = format!("sleep 3; echo {index}");
                common::post_execute(port, "bash", &code, Some(60.0), true)
            })
        })
        .collect();
    for (index, thread) in threads.into_iter().enumerate() {
        let response = thread.join().expect("a request thread panicked");
        assert_eq!(response.status, 200, "request {index}: {response:?}");
        let result = response.json();
        assert_eq!(
            result["stdout"],
            format!("{index}\n"),
            "request {index}: {result}"
        );
        assert_eq!(result["exit_code"], 0, "request {index}: {result}");
    }
    let evicted = metric(server, "sandbox_pool_evictions_total") - evictions_before;
    assert!(
        evicted >= 1,
        "six overlapping executions in six slots full of pooled sandboxes evicted none"
    );

    // The same with sessions that stay: every slot ends up held by real work, and only then is
    // a create refused. One of them is restored from a checkpoint on attach while the pools
    // are full again.
    let checkpointed = create(server, json!({"enable_checkpoint": true}));
    let Created {
        ws: mut saving,
        sandbox_id,
        token,
    } = checkpointed;
    sh(&mut saving, "echo before the checkpoint > /root/kept");
    saving.checkpoint_to_the_end();
    wait_full_of_pools(server, MAX);
    let evictions_before = metric(server, "sandbox_pool_evictions_total");

    let mut restored = connect(server.port, &attach_path(&sandbox_id, &token));
    restored.expect_status("SANDBOX_RESTORING");
    restored.expect_status("SANDBOX_RUNNING");
    assert_eq!(
        sh(&mut restored, "cat /root/kept"),
        "before the checkpoint\n"
    );
    let mut holders = vec![restored];
    for index in 1..MAX {
        let Created { mut ws, .. } = create(server, json!({}));
        assert_eq!(sh(&mut ws, &format!("echo {index}")), format!("{index}\n"));
        holders.push(ws);
    }
    // Six sessions hold the six slots: the pools gave up all six of theirs but the one fresh
    // sandbox the first fresh create took.
    assert_eq!(
        metric(server, "sandbox_pool_evictions_total") - evictions_before,
        MAX - 1
    );
    assert_eq!(metric(server, "sandbox_snapshot_pool_ready"), 0);
    let mut refused = connect(server.port, "/create");
    refused.send(json!({}));
    refused.expect_status("SANDBOX_CREATING");
    let message = refused.expect_error("SANDBOX_CREATION_ERROR");
    assert!(message.contains("limit of 6 sandboxes"), "{message}");
    let response = server.post_execute("bash", "echo never", None, true);
    assert_eq!(response.status, 503, "{response:?}");
    let max_seen = watch.finish();
    assert!(
        max_seen <= MAX,
        "{max_seen} runsc containers existed at once with SANDBOX_MAX_SANDBOXES={MAX}"
    );

    for mut holder in holders {
        holder.kill_sandbox();
    }
    server.assert_healthy();
}

#[test]
fn the_number_of_snapshot_pools_is_capped() {
    let fixture = start(&[
        ("SANDBOX_POOL_SIZE", "1"),
        ("SANDBOX_SNAPSHOT_POOLS_MAX", "2"),
    ]);
    let server = &fixture.server;
    let names: Vec<String> = (0..3).map(|n| format!("cap-{n}")).collect();
    make_snapshots(server, &names);
    for name in &names {
        use_snapshot(server, name);
        assert!(metric(server, "sandbox_snapshot_pools") <= 2);
    }
    assert_eq!(metric(server, "sandbox_snapshot_pools"), 2);
    // The fresh sandbox and one per remaining pool; the dropped pool's sandbox is gone.
    let root = server.runsc_root();
    let settled = wait_until(FILL_TIMEOUT, || {
        metric(server, "sandbox_snapshot_pool_ready") == 2
            && metric(server, "sandbox_pool_ready") == 1
            && runsc_list(&root).len() == 3
    });
    assert!(
        settled,
        "expected 1 fresh + 2 snapshot pooled sandboxes, found {} containers: {:?}",
        runsc_list(&root).len(),
        server.get("/metrics").text()
    );
    // A dropped pool comes back when its snapshot is used again (and drops another).
    use_snapshot(server, &names[0]);
    assert_eq!(metric(server, "sandbox_snapshot_pools"), 2);
    server.assert_healthy();
}

/// Requests that find no ready sandbox in the fresh pool deepen it, up to `SANDBOX_POOL_MAX`
/// (issue 15): the next burst finds it full.
#[test]
fn requests_that_find_the_pool_empty_deepen_it_up_to_the_max() {
    let server = TestServer::start(&[("SANDBOX_POOL_SIZE", "1"), ("SANDBOX_POOL_MAX", "3")]);
    assert!(server.wait_pool_ready(1, FILL_TIMEOUT));
    assert_eq!(metric(&server, "sandbox_pool_target"), 1);
    // Back to back: the first takes the ready sandbox, the next ones find none ready.
    for _ in 0..4 {
        let result = server.execute_json("bash", "echo hi", None);
        assert_eq!(result["stdout"], "hi\n", "{result}");
    }
    assert_eq!(
        metric(&server, "sandbox_pool_target"),
        3,
        "capped by the max"
    );
    // Once the requests pause, the pool fills to its new depth, and no further.
    assert!(server.wait_pool_ready(3, FILL_TIMEOUT));
    assert!(wait_until(FILL_TIMEOUT, || metric(&server, "sandbox_live") == 3));
    assert_eq!(runsc_list(&server.runsc_root()).len(), 3);
    server.assert_healthy();
}

/// A runsc that fails `run` while `flag` exists, and records every `run` in `log`.
fn failing_runsc(dir: &std::path::Path, flag: &std::path::Path, log: &std::path::Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("failing-runsc");
    let text = format!(
        "#!/bin/sh\nfor arg in \"$@\"; do\n  if [ \"$arg\" = run ]; then\n    echo run >> '{}'\n    if [ -e '{}' ]; then echo 'failing-runsc: simulated failure' >&2; exit 1; fi\n  fi\ndone\nexec '{}' \"$@\"\n",
        log.display(),
        flag.display(),
        common::runsc_binary()
    );
    std::fs::write(&script, text).expect("write the wrapper");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    script
}

/// While runsc fails, the pool retries its start after a wait that doubles (it retried at once,
/// a tight loop of failing `runsc run`s); once runsc works again, the pool fills.
#[test]
fn a_pool_whose_starts_fail_waits_longer_each_time_and_fills_once_they_work() {
    let dirs = Dirs::new();
    let flag = dirs.root.join("fail");
    let log = dirs.root.join("runs");
    std::fs::write(&flag, b"").unwrap();
    let runsc = failing_runsc(&dirs.root, &flag, &log);
    let server = TestServer::start(&[
        ("SANDBOX_POOL_SIZE", "1"),
        ("SANDBOX_RUNSC", runsc.to_str().unwrap()),
    ]);
    let runs = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(30), || runs() >= 1),
        "no start tried"
    );
    let first = runs();
    std::thread::sleep(Duration::from_secs(3));
    // Waits of 0.1, 0.2, 0.4, 0.8 and 1.6 s fit in 3 s: a handful of tries, not hundreds.
    let tried = runs() - first;
    assert!((1..=6).contains(&tried), "{tried} failed starts in 3 s");
    assert_eq!(metric(&server, "sandbox_pool_ready"), 0);
    std::fs::remove_file(&flag).unwrap();
    assert!(
        server.wait_pool_ready(1, FILL_TIMEOUT),
        "the pool did not fill"
    );
    server.assert_healthy();
    drop(server);
}
