//! Section `persist`: checkpoint, restore and filesystem snapshots through the real server
//! (WebSocket sessions), next to raw `runsc checkpoint` / `runsc restore` of sandboxes started
//! directly, in the same run. See "Checkpoint, restore, snapshots" in docs/performance.md.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sandbox::store::{self, handoff, lease};
use serde_json::json;

use crate::direct::{agent_status_ok, dir_size, AgentSandbox, Env, RawSandbox};
use crate::report::{Report, Row};
use crate::server::Server;
use crate::support::{seconds, Stat};
use crate::websocket::Session;
use crate::{check, pause};

/// Checkpoint/restore rounds per workload (they are slow), after one idle warm-up round.
const ROUNDS: usize = 5;
/// Creates per kind (fresh, from the snapshot), after one warm-up of each.
const CREATES: usize = 5;
const SNAPSHOT_NAME: &str = "bench-files";
/// Handoff-enabled sandboxes whose requests one look of the handoff watch reads.
const WATCHED: usize = 100;

/// 100 MB held by a background process, every page touched (mostly zeros, so it compresses);
/// it says when it is done.
const MEMORY_WORKLOAD: &str = r#"nohup python3 -c "b=bytearray(100*1024*1024); b[::4096]=b'x'*len(b[::4096]); import time; open('/tmp/touched','w').close(); time.sleep(1e6)" >/dev/null 2>&1 &"#;
/// The same with 100 MB of random bytes, which no compression shrinks.
const RANDOM_WORKLOAD: &str = r#"nohup python3 -c "import os, time; b=os.urandom(100*1024*1024); open('/tmp/touched','w').close(); time.sleep(1e6)" >/dev/null 2>&1 &"#;
const WAIT_TOUCHED: &str =
    "for i in $(seq 600); do [ -e /tmp/touched ] && exit 0; sleep 0.05; done; exit 1";
/// After a restore: the process holding the 100 MB is still there (the brackets keep grep and
/// the shell from matching their own command lines).
const MEMORY_ALIVE: &str = "grep -l 'bytearra[y]' /proc/[0-9]*/cmdline >/dev/null";
const RANDOM_ALIVE: &str = "grep -l 'os.urando[m]' /proc/[0-9]*/cmdline >/dev/null";
/// A few MB of files for the snapshot, and the check that a sandbox created from it has them.
const SNAPSHOT_FILES: &str = "mkdir -p /root/data && head -c 8000000 /dev/urandom > /root/data/random.bin && seq 1 300000 > /root/data/numbers.txt";
const SNAPSHOT_CHECK: &str = "test \"$(stat -c %s /root/data/random.bin)\" = 8000000";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    Idle,
    /// 100 MB touched, mostly zeros.
    Memory,
    /// 100 MB of random bytes.
    Random,
}

impl Workload {
    /// The command that loads the sandbox, and the check that the load survived a restore.
    fn load(self) -> Option<(&'static str, &'static str)> {
        match self {
            Workload::Idle => None,
            Workload::Memory => Some((MEMORY_WORKLOAD, MEMORY_ALIVE)),
            Workload::Random => Some((RANDOM_WORKLOAD, RANDOM_ALIVE)),
        }
    }
}

/// One checkpoint + restore, in seconds and bytes.
struct Round {
    checkpoint: f64,
    size: f64,
    restore: f64,
    /// Reading the manifest and hashing the image's files, as every attach does before it
    /// restores (measured on its own, right after the checkpoint; raw runsc does none).
    verify: f64,
}

#[derive(Default)]
struct Samples {
    checkpoint: Vec<f64>,
    size: Vec<f64>,
    restore: Vec<f64>,
    verify: Vec<f64>,
}

impl Samples {
    fn push(&mut self, round: Round) {
        self.checkpoint.push(round.checkpoint);
        self.size.push(round.size);
        self.restore.push(round.restore);
        self.verify.push(round.verify);
    }
}

/// The store's check of a checkpoint before a restore: its manifest, then every file hashed.
fn verify_image(base: &Path) -> io::Result<f64> {
    let started = Instant::now();
    let manifest = store::load(base)
        .map_err(io::Error::other)?
        .ok_or_else(|| io::Error::other(format!("no manifest in {}", base.display())))?;
    store::verify(base, &manifest).map_err(io::Error::other)?;
    Ok(seconds(started.elapsed()))
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// The size of the image directories (`image-*`) under a store entry.
fn store_image_size(base: &Path) -> f64 {
    let Ok(entries) = std::fs::read_dir(base) else {
        return f64::NAN;
    };
    entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("image-"))
        .map(|entry| dir_size(&entry.path()))
        .sum::<u64>() as f64
}

fn run_ok(session: &mut Session, code: &str) -> io::Result<()> {
    let (_, _, done) = session.run("bash", code)?;
    check(done["exit_code"] == 0, || {
        format!("{code:?} over WebSocket: {done}")
    })
}

fn exec_ok(sandbox: &mut AgentSandbox, code: &str) -> io::Result<()> {
    let outcome = sandbox.exec("bash", code, &[])?;
    check(agent_status_ok(&outcome), || {
        format!("{code:?} through the agent: {:?}", outcome.status)
    })
}

/// Through the server: create with checkpointing, load, checkpoint, attach (restore), check.
fn server_round(server: &Server, checkpoints: &Path, workload: Workload) -> io::Result<Round> {
    server.wait_settled(0, Duration::from_secs(30))?;
    let created = Session::create_with(server.port, json!({"enable_checkpoint": true}))?;
    let mut session = created.session;
    if let Some((command, _)) = workload.load() {
        run_ok(&mut session, command)?;
        run_ok(&mut session, WAIT_TOUCHED)?;
    }
    pause(500);
    let checkpoint = session.checkpoint()?;
    let base = checkpoints.join(&created.sandbox_id);
    let size = store_image_size(&base);
    let verify = verify_image(&base)?;
    pause(200);
    let (mut session, restore) = Session::attach(server.port, &created.sandbox_id, &created.token)?;
    run_ok(&mut session, "true")?;
    if let Some((_, alive)) = workload.load() {
        run_ok(&mut session, alive)?;
    }
    session.kill_checked()?;
    Ok(Round {
        checkpoint,
        size,
        restore,
        verify,
    })
}

/// `runsc restore --detach` of `image` + a first `runsc exec ID /bin/true`; the restored sandbox.
fn raw_restore<'a>(env: &'a Env, image: &Path) -> io::Result<(AgentSandbox<'a>, f64)> {
    let (restored, returned) = AgentSandbox::restore(env, image)?;
    let (exec, _, code) = restored.runsc_exec(&["/bin/true"])?;
    check(code == 0, || {
        format!("first runsc exec after restore exited with {code}")
    })?;
    Ok((restored, seconds(returned + exec)))
}

/// Raw runsc on a sandbox started directly, with the same workload.
fn raw_round(env: &Env, images: &Path, workload: Workload) -> io::Result<Round> {
    let mut sandbox = AgentSandbox::start(env)?;
    if let Some((command, _)) = workload.load() {
        exec_ok(&mut sandbox, command)?;
        exec_ok(&mut sandbox, WAIT_TOUCHED)?;
    }
    pause(500);
    let image = images.join(&sandbox.id);
    let checkpoint = seconds(sandbox.checkpoint(&image)?);
    let size = dir_size(&image) as f64;
    pause(200);
    let (restored, restore) = raw_restore(env, &image)?;
    if let Some((_, alive)) = workload.load() {
        let (_, _, code) = restored.runsc_exec(&["/bin/sh", "-c", alive])?;
        check(code == 0, || {
            "the 100 MB process is gone after runsc restore".into()
        })?;
    }
    restored.delete()?;
    let _ = std::fs::remove_dir_all(&image);
    Ok(Round {
        checkpoint,
        size,
        restore,
        verify: 0.0,
    })
}

/// One look of the handoff watch over `WATCHED` sandboxes that nobody asks for (the common
/// case): a read of a missing `handoff-<generation>.json` per sandbox, on a local directory.
/// Returns the seconds of each look.
fn handoff_watch_looks(base: &Path, looks: usize) -> io::Result<Vec<f64>> {
    let held: Vec<(PathBuf, u64)> = (0..WATCHED)
        .map(|index| {
            let dir = base.join(format!("{index:032x}"));
            std::fs::create_dir_all(&dir)?;
            let lease = lease::claim_new(&dir, "bench", "hash", true, Duration::from_secs(30))
                .map_err(io::Error::other)?;
            Ok((dir, lease.generation))
        })
        .collect::<io::Result<_>>()?;
    let mut samples = Vec::new();
    for _ in 0..looks {
        let started = Instant::now();
        let asked = held
            .iter()
            .filter(|(dir, generation)| handoff::pending(dir, *generation).is_some())
            .count();
        samples.push(seconds(started.elapsed()));
        check(asked == 0, || format!("{asked} requests nobody made"))?;
    }
    let _ = std::fs::remove_dir_all(base);
    Ok(samples)
}

fn median(samples: &[f64]) -> f64 {
    Stat::latency(samples).median
}

fn ms(value: f64) -> String {
    format!("{:.0} ms", value * 1000.0)
}

pub fn bench_persist(env: &Env, report: &mut Report) -> io::Result<()> {
    let checkpoints = env.base.join("checkpoints");
    let snapshots = env.base.join("snapshots");
    let images = env.base.join("raw-images");
    for dir in [&checkpoints, &snapshots, &images] {
        std::fs::create_dir_all(dir)?;
    }
    // The default configuration: no lease settle (the exclusive create decides).
    let store_env = [
        ("CHECKPOINT_AND_RESTORE_PATH", path_str(&checkpoints)),
        ("FILESYSTEM_SNAPSHOT_PATH", path_str(&snapshots)),
    ];
    let mut extra: Vec<(&str, &str)> = store_env
        .iter()
        .map(|(key, value)| (*key, value.as_str()))
        .collect();
    // No pool (neither fresh nor from snapshots): nothing refills in the background while a
    // checkpoint or restore is timed, and creates are cold.
    extra.push(("SANDBOX_SNAPSHOT_POOL_SIZE", "0"));
    let server = Server::start(env, "persist", 0, &extra)?;

    // Checkpoint and restore, idle and with 100 MB, interleaved with raw runsc round by round.
    server_round(&server, &checkpoints, Workload::Idle)?; // warm-up
    raw_round(env, &images, Workload::Idle)?;
    let (mut ours_idle, mut raw_idle) = (Samples::default(), Samples::default());
    let (mut ours_memory, mut raw_memory) = (Samples::default(), Samples::default());
    let (mut ours_random, mut raw_random) = (Samples::default(), Samples::default());
    for _ in 0..ROUNDS {
        ours_idle.push(server_round(&server, &checkpoints, Workload::Idle)?);
        raw_idle.push(raw_round(env, &images, Workload::Idle)?);
        ours_memory.push(server_round(&server, &checkpoints, Workload::Memory)?);
        raw_memory.push(raw_round(env, &images, Workload::Memory)?);
        ours_random.push(server_round(&server, &checkpoints, Workload::Random)?);
        raw_random.push(raw_round(env, &images, Workload::Random)?);
    }
    let workloads = [
        ("idle sandbox", &ours_idle, &raw_idle),
        (
            "sandbox holding 100 MB (touched pages)",
            &ours_memory,
            &raw_memory,
        ),
        (
            "sandbox holding 100 MB of random bytes",
            &ours_random,
            &raw_random,
        ),
    ];
    for (label, ours, raw) in workloads {
        report.rows.push(Row::latency(
            &format!("checkpoint, {label}: `{{\"action\":\"checkpoint\"}}` to the close after `SANDBOX_CHECKPOINTED`"),
            &ours.checkpoint,
            &format!("`runsc checkpoint --image-path=DIR ID`, {label} (agent as init)"),
            Some(Stat::latency(&raw.checkpoint)),
        ));
    }
    for (label, ours, raw) in workloads {
        report.rows.push(Row::size(
            &format!("checkpoint image size, {label} (files in `image-*/`)"),
            &ours.size,
            "size of the `runsc checkpoint` image directory",
            Some(Stat::latency(&raw.size)),
        ));
    }
    for (label, ours, raw) in workloads {
        report.rows.push(Row::latency(
            &format!("restore, {label}: `/attach/{{id}}?sandbox_token=T` to `SANDBOX_RUNNING` (default configuration)"),
            &ours.restore,
            "`runsc restore --detach` + first `runsc exec ID /bin/true`",
            Some(Stat::latency(&raw.restore)),
        ));
    }
    for (label, ours, _) in workloads {
        report.rows.push(Row::latency(
            &format!("verification before a restore, {label}: manifest + SHA-256 of the image (part of every attach)"),
            &ours.verify,
            "none (raw runsc restores what it is given)",
            None,
        ));
    }
    let ratios: Vec<String> = workloads
        .iter()
        .map(|(label, ours, raw)| {
            let (ours, raw, verify) = (
                median(&ours.restore),
                median(&raw.restore),
                median(&ours.verify),
            );
            format!(
                "{label}: {} / ({} + {}) = {:.2}",
                ms(ours),
                ms(raw),
                ms(verify),
                ours / (raw + verify)
            )
        })
        .collect();
    report.notes.push(format!(
        "attach with restore against raw `runsc restore` plus the verification (medians; target <= 1.2): {}",
        ratios.join("; ")
    ));
    let extra_costs: Vec<String> = workloads
        .iter()
        .map(|(label, ours, raw)| {
            format!(
                "{} ({label})",
                ms(median(&ours.checkpoint) - median(&raw.checkpoint))
            )
        })
        .collect();
    report.notes.push(format!(
        "checkpoint through the server minus raw `runsc checkpoint` (medians): {}; the server also asks the agent about open connections, hashes and publishes the image, and deletes the stopped container before `SANDBOX_CHECKPOINTED`",
        extra_costs.join(", ")
    ));

    // Filesystem snapshot: taken once, on a sandbox with a few MB of files; raw counterpart
    // (checkpoint + restore + first exec, which is what a snapshot does) once too.
    server.wait_settled(0, Duration::from_secs(30))?;
    let mut session = Session::create(server.port)?;
    run_ok(&mut session, SNAPSHOT_FILES)?;
    pause(500);
    let snapshot_time = session.snapshot(SNAPSHOT_NAME)?;
    run_ok(&mut session, SNAPSHOT_CHECK)?; // the session goes on
    session.kill_checked()?;
    let snapshot_size = store_image_size(&snapshots.join(SNAPSHOT_NAME));
    let mut sandbox = AgentSandbox::start(env)?;
    exec_ok(&mut sandbox, SNAPSHOT_FILES)?;
    pause(500);
    let raw_snapshot_image: PathBuf = images.join("snapshot");
    let raw_checkpoint = seconds(sandbox.checkpoint(&raw_snapshot_image)?);
    let raw_snapshot_size = dir_size(&raw_snapshot_image) as f64;
    let (restored, first_restore) = raw_restore(env, &raw_snapshot_image)?;
    restored.delete()?;
    report.rows.push(Row::latency(
        "filesystem snapshot of a sandbox with ~10 MB of new files: `snapshot_filesystem` to `SANDBOX_FILESYSTEM_SNAPSHOT_CREATED`",
        &[snapshot_time],
        "`runsc checkpoint` + `runsc restore --detach` + first `runsc exec ID /bin/true`",
        Some(Stat::latency(&[raw_checkpoint + first_restore])),
    ));
    report.rows.push(Row::size(
        "snapshot image size (files in `image-*/`)",
        &[snapshot_size],
        "size of the `runsc checkpoint` image directory",
        Some(Stat::latency(&[raw_snapshot_size])),
    ));

    // Creates, cold (no pool): fresh vs from the snapshot, with raw runsc interleaved.
    let fresh = || Session::create_with(server.port, json!({}));
    let from_snapshot = || {
        Session::create_with(
            server.port,
            json!({"filesystem_snapshot_name": SNAPSHOT_NAME}),
        )
    };
    let check_files = |mut session: Session| -> io::Result<()> {
        run_ok(&mut session, SNAPSHOT_CHECK)?;
        session.kill_checked()
    };
    server.wait_settled(0, Duration::from_secs(30))?;
    // Warm-ups; the first create from a snapshot on an instance also verifies its image.
    let created = from_snapshot()?;
    let first_from_snapshot = created.elapsed;
    check_files(created.session)?;
    server.wait_settled(0, Duration::from_secs(30))?;
    fresh()?.session.kill_checked()?;
    let (mut cold_fresh, mut cold_snapshot) = (Vec::new(), Vec::new());
    let (mut raw_create, mut raw_snapshot_restore) = (Vec::new(), Vec::new());
    for _ in 0..CREATES {
        server.wait_settled(0, Duration::from_secs(30))?;
        pause(200);
        let created = fresh()?;
        cold_fresh.push(created.elapsed);
        created.session.kill_checked()?;
        server.wait_settled(0, Duration::from_secs(30))?;
        pause(200);
        let created = from_snapshot()?;
        cold_snapshot.push(created.elapsed);
        check_files(created.session)?;
        pause(200);
        let (raw, run) = RawSandbox::start(env)?;
        let (exec, _, code) = raw.runsc_exec(&["/bin/bash", "-c", "true"])?;
        check(code == 0, || format!("first runsc exec exited with {code}"))?;
        raw_create.push(seconds(run + exec));
        raw.delete()?;
        pause(200);
        let (restored, restore) = raw_restore(env, &raw_snapshot_image)?;
        raw_snapshot_restore.push(restore);
        restored.delete()?;
    }
    server.stop();
    let raw_create = Stat::latency(&raw_create);
    let raw_snapshot_restore = Stat::latency(&raw_snapshot_restore);
    report.rows.push(Row::latency(
        "create from the snapshot, no pool: `/create` `{\"filesystem_snapshot_name\": N}` to `SANDBOX_RUNNING`",
        &cold_snapshot,
        "`runsc restore --detach` of the same kind of image + first `runsc exec ID /bin/true`",
        Some(raw_snapshot_restore),
    ));
    report.rows.push(Row::latency(
        "fresh create, no pool (SANDBOX_POOL_SIZE=0): `/create` `{}` to `SANDBOX_RUNNING`",
        &cold_fresh,
        "`runsc run --detach` (sleep as init) + first `runsc exec bash -c true`",
        Some(raw_create),
    ));
    report.rows.push(Row::latency(
        "first create from the snapshot on a server instance (verifies the image's SHA-256s), no pool",
        &[first_from_snapshot],
        "`runsc restore --detach` of the same kind of image + first `runsc exec ID /bin/true`",
        Some(raw_snapshot_restore),
    ));

    // With the pools at their default sizes: a fresh create takes one of 2 pooled sandboxes, a
    // create from a snapshot the one sandbox kept restored from it (SANDBOX_SNAPSHOT_POOL_SIZE=1,
    // filled after the first use of the snapshot).
    let extra = [("FILESYSTEM_SNAPSHOT_PATH", store_env[1].1.as_str())];
    let server = Server::start(env, "persist-pool", 2, &extra)?;
    let settle_pool = |server: &Server| -> io::Result<()> {
        // 2 fresh sandboxes ready, plus the snapshot's pooled one once the snapshot was used.
        server.wait_settled_with(2, 3, Duration::from_secs(30))?;
        pause(300); // the new pooled sandbox's standby interpreter starts
        Ok(())
    };
    let fresh = || Session::create_with(server.port, json!({}));
    let from_snapshot = || {
        Session::create_with(
            server.port,
            json!({"filesystem_snapshot_name": SNAPSHOT_NAME}),
        )
    };
    server.wait_settled(2, Duration::from_secs(30))?;
    check_files(from_snapshot()?.session)?; // warm-up (verifies the image on this instance)
    settle_pool(&server)?;
    fresh()?.session.kill_checked()?;
    let (mut pool_fresh, mut pool_snapshot) = (Vec::new(), Vec::new());
    for _ in 0..CREATES {
        settle_pool(&server)?;
        let created = fresh()?;
        pool_fresh.push(created.elapsed);
        created.session.kill_checked()?;
        settle_pool(&server)?;
        let created = from_snapshot()?;
        pool_snapshot.push(created.elapsed);
        check_files(created.session)?;
    }
    server.wait_settled_with(2, 3, Duration::from_secs(30))?;
    server.stop();
    report.rows.push(Row::latency(
        "create from the snapshot, with its pool (SANDBOX_SNAPSHOT_POOL_SIZE=1, default): `/create` to `SANDBOX_RUNNING`",
        &pool_snapshot,
        "`runsc restore --detach` of the same kind of image + first `runsc exec ID /bin/true`",
        Some(raw_snapshot_restore),
    ));
    report.rows.push(Row::latency(
        "fresh create, pool of 2 ready (default): `/create` `{}` to `SANDBOX_RUNNING`",
        &pool_fresh,
        "`runsc run --detach` (sleep as init) + first `runsc exec bash -c true`",
        Some(raw_create),
    ));
    report.notes.push(format!(
        "create from a snapshot vs fresh: {} vs {} without pools ({:.1}x), {} vs {} with the default pools ({:.1}x); the snapshot itself took {} ({:.1} MB image)",
        ms(median(&cold_snapshot)),
        ms(median(&cold_fresh)),
        median(&cold_snapshot) / median(&cold_fresh),
        ms(median(&pool_snapshot)),
        ms(median(&pool_fresh)),
        median(&pool_snapshot) / median(&pool_fresh),
        ms(snapshot_time),
        snapshot_size / 1e6,
    ));
    let _ = std::fs::remove_dir_all(&images);

    // What the handoff watch costs an instance that holds handoff-enabled sandboxes.
    let looks = handoff_watch_looks(&env.base.join("handoff-watch"), 50)?;
    report.rows.push(Row::latency(
        &format!("handoff watch: one look for requests to {WATCHED} held sandboxes (a read of a missing file each, local disk)"),
        &looks,
        "none",
        None,
    ));
    report.notes.push(format!(
        "the handoff watch looks every SANDBOX_HANDOFF_POLL_MS (500 ms): {:.1} us per held sandbox per look here, i.e. 2 reads per second per handoff-enabled sandbox (on Cloud Storage FUSE each is a metadata lookup of the bucket)",
        median(&looks) * 1e6 / WATCHED as f64
    ));
    Ok(())
}
