//! Many concurrent WebSocket sessions on one server (the heavy test, kept apart):
//!
//!     cargo test --test websocket_load -- --test-threads=1
//!
//! `SESSIONS` real gVisor sandboxes are live at the same time: every client creates its
//! session, waits until all the others have theirs, runs `print(i)`, and only then kills its
//! sandbox. On the 2-core, 24 GB development machine the 50 sandboxes fit easily (about 8 s in
//! total, about 1.6 GB of memory at the peak).

mod common;
mod ws;

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{runsc_list, wait_until, TestServer};
use serde_json::json;
use ws::{assert_exited, create};

const SESSIONS: usize = 50;
/// Hang detection for the whole test, not a performance assertion.
const BUDGET: Duration = Duration::from_secs(90);

#[test]
fn fifty_concurrent_sessions_all_get_their_output() {
    let limit = (SESSIONS + 10).to_string();
    let server = Arc::new(TestServer::start(&[
        ("SANDBOX_MAX_SANDBOXES", &limit),
        ("SANDBOX_MAX_SESSIONS", &limit),
        ("SANDBOX_POOL_SIZE", "2"),
        // 50 sandboxes starting at once on 2 cores: give each start room.
        ("SANDBOX_CREATE_TIMEOUT_SECS", "80"),
    ]));
    let started = Instant::now();
    let all_created = Arc::new(Rendezvous::default());
    let threads: Vec<_> = (0..SESSIONS)
        .map(|index| {
            let server = Arc::clone(&server);
            let all_created = Arc::clone(&all_created);
            std::thread::spawn(move || {
                let mut created = create(&server, json!({"idle_timeout": 120}));
                // Every sandbox is live before anyone runs or leaves.
                assert!(
                    all_created.arrive_and_wait(SESSIONS, Duration::from_secs(80)),
                    "session {index}: the other sessions were not all created in time"
                );
                let result = created.ws.run("python", &format!("print({index})"));
                assert_eq!(result.stdout, format!("{index}\n"), "session {index}");
                assert_eq!(result.stderr, "", "session {index}");
                assert_exited(&result.done, 0);
                created.ws.kill_sandbox();
            })
        })
        .collect();
    let mut failures = Vec::new();
    for (index, thread) in threads.into_iter().enumerate() {
        if let Err(panic) = thread.join() {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
                .unwrap_or_default();
            failures.push(format!("session {index}: {text}"));
        }
    }
    let elapsed = started.elapsed();
    eprintln!("{SESSIONS} concurrent sessions done in {elapsed:?}");
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(elapsed < BUDGET, "{SESSIONS} sessions took {elapsed:?}");
    // Only the pool is left.
    assert!(
        wait_until(Duration::from_secs(30), || runsc_list(&server.runsc_root())
            .len()
            <= 2),
        "sandboxes left: {:?}",
        runsc_list(&server.runsc_root())
    );
    server.assert_healthy();
}

/// A barrier whose wait is bounded: a session that fails before it must not hang the others.
#[derive(Default)]
struct Rendezvous {
    arrived: Mutex<usize>,
    all_here: Condvar,
}

impl Rendezvous {
    /// Count this thread in and wait for `count` arrivals; false on timeout.
    fn arrive_and_wait(&self, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut arrived = self
            .arrived
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        *arrived += 1;
        self.all_here.notify_all();
        while *arrived < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            arrived = self
                .all_here
                .wait_timeout(arrived, left)
                .unwrap_or_else(|poison| poison.into_inner())
                .0;
        }
        true
    }
}
