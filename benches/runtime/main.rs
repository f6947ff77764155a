//! `cargo bench --bench runtime`: what an execution costs through our path (agent inside the
//! sandbox, `POST /execute` on the real server) next to the same operation on raw `runsc`, in the
//! same run so the ratios are meaningful on a noisy machine. See docs/performance.md.
//!
//! Custom harness: plain `Instant`, median / p90 / best over N iterations. Sections can be
//! chosen with positional arguments: `cargo bench --bench runtime -- agent create server persist`
//! (sections: agent, create, server, ports, persist, code, files, terminal).
//! Prints a table and writes it as markdown to `target/bench-results.md`.
//!
//! Everything created lives under `/tmp/crs-bench-PID` (runsc state roots, bundles, server state
//! dirs) and is removed at the end, on a panic, on SIGINT/SIGTERM, and by a watchdog that ends
//! the run after 10 minutes.
#![forbid(unsafe_code)]

mod direct;
mod files;
mod persist;
mod ports;
mod report;
mod server;
mod support;
mod terminal;
mod websocket;

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use direct::{agent_status_ok, AgentSandbox, Env, RawSandbox};
use report::{Memory, Report, Row, Unit};
use server::{Client, Server};
use support::{seconds, Stat};

const OUTPUT_BYTES: u64 = 200_000_000;
const WATCHDOG: Duration = Duration::from_secs(600);

struct CleanupGuard(PathBuf);

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        support::cleanup_all(&self.0);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes --bench; anything else (e.g. `cargo test --benches`) must not start
    // sandboxes for minutes.
    if !args.iter().any(|arg| arg == "--bench") {
        println!("runtime bench: run it with `cargo bench --bench runtime` (skipped)");
        return;
    }
    let selected: Vec<&str> = args
        .iter()
        .filter(|arg| !arg.starts_with('-'))
        .map(String::as_str)
        .collect();
    let wants = |section: &str| selected.is_empty() || selected.contains(&section);

    let runsc_binary =
        PathBuf::from(std::env::var("SANDBOX_RUNSC").unwrap_or_else(|_| "runsc".into()));
    // Before the reaper starts: detection waits for its own children.
    let features = match direct::detect(&runsc_binary) {
        Ok(features) => features,
        Err(error) => {
            eprintln!(
                "runtime bench: cannot run {}: {error}",
                runsc_binary.display()
            );
            std::process::exit(1);
        }
    };
    let base = PathBuf::from(format!("/tmp/crs-bench-{}", std::process::id()));
    remove_stale_runs(&runsc_binary);
    if let Err(error) = std::fs::create_dir_all(&base) {
        eprintln!("runtime bench: cannot create {}: {error}", base.display());
        std::process::exit(1);
    }
    support::register_base_dir(&base);
    if let Err(error) = support::start_reaper() {
        eprintln!("runtime bench: cannot become a subreaper: {error}");
        std::process::exit(1);
    }
    install_signal_cleanup(runsc_binary.clone());
    start_watchdog(runsc_binary.clone());
    let guard = CleanupGuard(runsc_binary.clone());

    let env = match Env::new(&base, runsc_binary, features) {
        Ok(env) => env,
        Err(error) => {
            eprintln!("runtime bench: setup failed: {error}");
            drop(guard);
            std::process::exit(1);
        }
    };
    if !env.rootfs.join("usr/bin/python3").exists() {
        eprintln!(
            "runtime bench: the sandbox image {} is missing: run scripts/setup.sh",
            env.rootfs.display()
        );
        drop(guard);
        std::process::exit(1);
    }

    let started = Instant::now();
    let mut report = Report::new(&env);
    let mut failures = Vec::new();
    let mut run =
        |name: &str, report: &mut Report, section: &dyn Fn(&Env, &mut Report) -> io::Result<()>| {
            if !wants(name) {
                return;
            }
            eprintln!("== {name}");
            let section_start = Instant::now();
            if let Err(error) = section(&env, report) {
                eprintln!("runtime bench: section {name} failed: {error}");
                failures.push(format!("{name}: {error}"));
            }
            eprintln!(
                "   ({name}: {:.1} s)",
                section_start.elapsed().as_secs_f64()
            );
        };
    run("agent", &mut report, &bench_agent);
    run("create", &mut report, &bench_create);
    run("server", &mut report, &bench_server);
    run("ports", &mut report, &ports::bench_ports);
    run("persist", &mut report, &persist::bench_persist);
    run("code", &mut report, &bench_code);
    run("files", &mut report, &bench_files);
    run("terminal", &mut report, &terminal::bench_terminal);
    report.total = started.elapsed();
    report.load_end = report::load_average();
    report.failures = failures.clone();

    let markdown = report.markdown();
    println!("\n{markdown}");
    let path = target_dir().join("bench-results.md");
    match std::fs::write(&path, &markdown) {
        Ok(()) => eprintln!("runtime bench: results written to {}", path.display()),
        Err(error) => eprintln!("runtime bench: cannot write {}: {error}", path.display()),
    }
    drop(guard);
    if !failures.is_empty() {
        std::process::exit(1);
    }
}

fn target_dir() -> PathBuf {
    // The bench runs as target/<profile>/deps/runtime-HASH.
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent()?.parent().map(Path::to_path_buf))
        .filter(|dir| dir.join("CACHEDIR.TAG").exists())
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// A previous run killed with SIGKILL leaves its directory (and maybe containers): remove them.
fn remove_stale_runs(runsc: &Path) {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("crs-bench-")
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("runtime bench: removing the leftovers of run {pid}");
        let mut roots = vec![entry.path().join("runsc")];
        if let Ok(children) = std::fs::read_dir(entry.path()) {
            roots.extend(children.flatten().map(|child| child.path().join("runsc")));
        }
        for root in roots.iter().filter(|root| root.exists()) {
            direct::delete_all_blocking(runsc, root);
        }
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

fn install_signal_cleanup(runsc: PathBuf) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    eprintln!("runtime bench: signal {signal}, cleaning up");
                    support::cleanup_all(&runsc);
                    std::process::exit(130);
                }
            });
        }
        Err(error) => {
            eprintln!("runtime bench: no signal handling ({error}); Ctrl-C may leave sandboxes")
        }
    }
}

fn start_watchdog(runsc: PathBuf) {
    std::thread::spawn(move || {
        std::thread::sleep(WATCHDOG);
        eprintln!(
            "runtime bench: still running after {} s, giving up",
            WATCHDOG.as_secs()
        );
        support::cleanup_all(&runsc);
        std::process::exit(1);
    });
}

pub(crate) fn pause(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

pub(crate) fn check(condition: bool, what: impl FnOnce() -> String) -> io::Result<()> {
    if condition {
        Ok(())
    } else {
        Err(io::Error::other(what()))
    }
}

// ---------------------------------------------------------------------------------------------
// Warm executions in one running sandbox: through the agent vs `runsc exec`, and the bare
// fork+exec inside the sandbox; output throughput; memory of an idle sandbox.

const FORK_EXEC_SCRIPT: &str = r#"
import json, os, time
def fork_exec(argv):
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    assert status == 0, status
    return time.perf_counter() - start
def spawn(argv):
    start = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, os.environ)
    _, status = os.waitpid(pid, 0)
    assert status == 0, status
    return time.perf_counter() - start
result = {"bash": [], "true": [], "spawn_bash": []}
for _ in range(ITERATIONS):
    result["bash"].append(fork_exec(["/bin/bash", "-c", "true"]))
    result["true"].append(fork_exec(["/bin/true"]))
    result["spawn_bash"].append(spawn(["/bin/bash", "-c", "true"]))
print(json.dumps(result))
"#;

const BASH_FORK_EXEC_SCRIPT: &str =
    "for i in $(seq 100); do s=$EPOCHREALTIME; /bin/bash -c true; e=$EPOCHREALTIME; echo \"$s $e\"; done";

fn bench_agent(env: &Env, report: &mut Report) -> io::Result<()> {
    let mut sandbox = AgentSandbox::start(env)?;
    pause(500); // the standby interpreter finishes starting
                // Warm-up: first executions touch files for the first time.
    for _ in 0..3 {
        sandbox.exec("bash", "true", &[])?;
        sandbox.runsc_exec(&["/bin/bash", "-c", "true"])?;
    }
    pause(300);
    sandbox.exec("python", "print(1)", &[])?;
    sandbox.runsc_exec(&["/usr/bin/python3", "-c", "print(1)"])?;

    // bash -c true, interleaved so that both see the same machine.
    let (mut agent, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..40 {
        // Each measurement after a pause, so that neither sees the other's aftermath (a
        // `runsc exec` keeps host processes busy for a while after it returns).
        pause(50);
        let outcome = sandbox.exec("bash", "true", &[])?;
        check(agent_status_ok(&outcome), || {
            format!("bash true through the agent: {:?}", outcome.status)
        })?;
        agent.push(seconds(outcome.elapsed));
        pause(50);
        let (elapsed, _, code) = sandbox.runsc_exec(&["/bin/bash", "-c", "true"])?;
        check(code == 0, || {
            format!("runsc exec bash -c true exited with {code}")
        })?;
        raw.push(seconds(elapsed));
    }
    let bash_raw = Stat::latency(&raw);
    report.bash_agent = Some(Stat::latency(&agent));
    report.bash_runsc_exec = Some(bash_raw);
    report.rows.push(Row::latency(
        "warm `bash -c true`, request to exit status (agent)",
        &agent,
        "`runsc exec ID /bin/bash -c true`",
        Some(bash_raw),
    ));

    // python print(1): standby ready (gaps let the agent start the next interpreter), against
    // `runsc exec python3 -c 'print(1)'`, each measured after the same pause.
    let (mut agent, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        pause(400);
        let (elapsed, bytes, code) = sandbox.runsc_exec(&["/usr/bin/python3", "-c", "print(1)"])?;
        check(code == 0 && bytes == 2, || {
            format!("runsc exec python3: exit {code}, {bytes} bytes")
        })?;
        raw.push(seconds(elapsed));
        pause(400);
        let outcome = sandbox.exec("python", "print(1)", &[])?;
        check(
            agent_status_ok(&outcome) && outcome.stdout == b"1\n",
            || {
                format!(
                    "python print(1) through the agent: {:?} {:?}",
                    outcome.status,
                    String::from_utf8_lossy(&outcome.stdout)
                )
            },
        )?;
        agent.push(seconds(outcome.elapsed));
    }
    let python_raw = Stat::latency(&raw);
    report.python_agent = Some(Stat::latency(&agent));
    report.python_runsc_exec = Some(python_raw);
    report.rows.push(Row::latency(
        "warm python `print(1)`, standby interpreter ready (agent)",
        &agent,
        "`runsc exec ID python3 -c 'print(1)'`",
        Some(python_raw),
    ));

    // Back to back: the standby used by the previous execution is still starting.
    pause(300);
    let mut agent = Vec::new();
    for _ in 0..10 {
        let outcome = sandbox.exec("python", "print(1)", &[])?;
        check(agent_status_ok(&outcome), || {
            format!("python back to back: {:?}", outcome.status)
        })?;
        agent.push(seconds(outcome.elapsed));
    }
    report.rows.push(Row::latency(
        "python `print(1)` back to back, no pause (agent)",
        &agent,
        "`runsc exec ID python3 -c 'print(1)'`",
        Some(python_raw),
    ));

    // A fresh interpreter through the agent: an env var starting with PYTHON makes the agent
    // bypass the standby (it cannot change interpreter settings after start).
    let mut agent = Vec::new();
    for _ in 0..10 {
        pause(100);
        let outcome = sandbox.exec("python", "print(1)", &[("PYTHONBENCHFRESH", "1")])?;
        check(
            agent_status_ok(&outcome) && outcome.stdout == b"1\n",
            || format!("fresh python: {:?}", outcome.status),
        )?;
        agent.push(seconds(outcome.elapsed));
    }
    report.rows.push(Row::latency(
        "python `print(1)`, fresh interpreter, no standby (agent)",
        &agent,
        "`runsc exec ID python3 -c 'print(1)'`",
        Some(python_raw),
    ));

    // Bare fork+exec inside the sandbox, timed inside by Python (perf_counter).
    pause(300);
    let script = FORK_EXEC_SCRIPT.replace("ITERATIONS", "100");
    let outcome = sandbox.exec("python", &script, &[])?;
    check(agent_status_ok(&outcome), || {
        format!(
            "fork+exec script: {:?} {}",
            outcome.status,
            String::from_utf8_lossy(&outcome.stdout)
        )
    })?;
    let samples: serde_json::Value =
        serde_json::from_slice(&outcome.stdout).map_err(io::Error::other)?;
    let list = |key: &str| -> Vec<f64> {
        samples[key]
            .as_array()
            .map(|values| values.iter().filter_map(|v| v.as_f64()).collect())
            .unwrap_or_default()
    };
    let python_fork = list("bash");
    let python_spawn = list("spawn_bash");
    // The same from bash (a process about as small as the agent), timed with $EPOCHREALTIME.
    let outcome = sandbox.exec("bash", BASH_FORK_EXEC_SCRIPT, &[])?;
    check(agent_status_ok(&outcome), || {
        format!("bash fork+exec loop: {:?}", outcome.status)
    })?;
    let bash_fork: Vec<f64> = String::from_utf8_lossy(&outcome.stdout)
        .lines()
        .filter_map(|line| {
            let (start, end) = line.split_once(' ')?;
            Some(end.parse::<f64>().ok()? - start.parse::<f64>().ok()?)
        })
        .collect();
    check(bash_fork.len() == 100, || {
        format!("bash loop printed {} samples", bash_fork.len())
    })?;
    // The target's baseline: the cheapest of the three ways to fork+exec `bash -c true` inside.
    let baseline = [&bash_fork, &python_fork, &python_spawn]
        .into_iter()
        .map(|samples| Stat::latency(samples))
        .min_by(|a, b| a.median.total_cmp(&b.median));
    report.fork_exec_bash = baseline;
    report.rows.push(Row::latency(
        "inside the sandbox: bash loop, fork+exec+wait `/bin/bash -c true`",
        &bash_fork,
        "",
        None,
    ));
    report.rows.push(Row::latency(
        "inside the sandbox: python os.fork+execv+waitpid `/bin/bash -c true`",
        &python_fork,
        "",
        None,
    ));
    report.rows.push(Row::latency(
        "inside the sandbox: python os.posix_spawn+waitpid `/bin/bash -c true`",
        &python_spawn,
        "",
        None,
    ));
    report.rows.push(Row::latency(
        "inside the sandbox: python os.fork+execv+waitpid `/bin/true`",
        &list("true"),
        "",
        None,
    ));

    // Output throughput: 200 MB of zeros to the bench.
    let head = format!("head -c {OUTPUT_BYTES} /dev/zero");
    let count = OUTPUT_BYTES.to_string();
    let (mut agent, mut raw) = (Vec::new(), Vec::new());
    let mut frames = 0u64;
    for _ in 0..3 {
        let outcome = sandbox.exec("bash", &head, &[])?;
        frames += outcome.stdout_frames;
        check(
            agent_status_ok(&outcome) && outcome.stdout_bytes == OUTPUT_BYTES,
            || {
                format!(
                    "agent head: {:?}, {} bytes",
                    outcome.status, outcome.stdout_bytes
                )
            },
        )?;
        agent.push(OUTPUT_BYTES as f64 / seconds(outcome.elapsed) / 1e6);
        let (elapsed, bytes, code) =
            sandbox.runsc_exec(&["/usr/bin/head", "-c", &count, "/dev/zero"])?;
        check(code == 0 && bytes == OUTPUT_BYTES, || {
            format!("runsc exec head: exit {code}, {bytes} bytes")
        })?;
        raw.push(OUTPUT_BYTES as f64 / seconds(elapsed) / 1e6);
    }
    let throughput_raw = Stat::rate(&raw);
    report.throughput_runsc_exec = Some(throughput_raw);
    report.rows.push(Row::rate(
        &format!(
            "output throughput, 200 MB stdout through the agent (average frame {:.1} KiB)",
            (3 * OUTPUT_BYTES) as f64 / frames.max(1) as f64 / 1024.0
        ),
        &agent,
        Unit::MegabytesPerSecond,
        "`runsc exec ID head -c 200000000 /dev/zero`",
        Some(throughput_raw),
    ));

    // What the producer itself does inside the sandbox (timed inside, so no reader outside
    // the sandbox): the ceiling of the rows above, whatever carries its output.
    for (what, pipeline) in [
        (
            "`head -c 200000000 /dev/zero > /dev/null`",
            format!("{head} > /dev/null"),
        ),
        (
            "`head -c 200000000 /dev/zero | cat > /dev/null` (a pipe inside the sandbox)",
            format!("{head} | cat > /dev/null"),
        ),
    ] {
        let script = format!("s=$EPOCHREALTIME; {pipeline}; e=$EPOCHREALTIME; echo \"$s $e\"");
        let mut rates = Vec::new();
        for _ in 0..3 {
            let outcome = sandbox.exec("bash", &script, &[])?;
            let text = String::from_utf8_lossy(&outcome.stdout).to_string();
            let times: Vec<f64> = text
                .split_whitespace()
                .filter_map(|word| word.parse().ok())
                .collect();
            check(agent_status_ok(&outcome) && times.len() == 2, || {
                format!("inside {pipeline}: {:?}, printed {text:?}", outcome.status)
            })?;
            rates.push(OUTPUT_BYTES as f64 / (times[1] - times[0]) / 1e6);
        }
        report.rows.push(Row::rate(
            &format!("inside the sandbox: {what}"),
            &rates,
            Unit::MegabytesPerSecond,
            "",
            None,
        ));
    }

    // The same path with a producer that writes 1 MiB per call (`head` writes 8 KiB, each
    // write a trap into the sentry): what the agent and its pipes can carry.
    let dd_args = [
        "/bin/dd",
        "if=/dev/zero",
        "bs=1M",
        "count=200",
        "status=none",
    ];
    let dd = dd_args.join(" ");
    let dd_bytes = 200 * 1024 * 1024;
    let (mut agent, mut raw) = (Vec::new(), Vec::new());
    let mut frames = 0u64;
    for _ in 0..3 {
        let outcome = sandbox.exec("bash", &dd, &[])?;
        frames += outcome.stdout_frames;
        check(
            agent_status_ok(&outcome) && outcome.stdout_bytes == dd_bytes,
            || {
                format!(
                    "agent dd: {:?}, {} bytes",
                    outcome.status, outcome.stdout_bytes
                )
            },
        )?;
        agent.push(dd_bytes as f64 / seconds(outcome.elapsed) / 1e6);
        let (elapsed, bytes, code) = sandbox.runsc_exec(&dd_args)?;
        check(code == 0 && bytes == dd_bytes, || {
            format!("runsc exec dd: exit {code}, {bytes} bytes")
        })?;
        raw.push(dd_bytes as f64 / seconds(elapsed) / 1e6);
    }
    report.rows.push(Row::rate(
        &format!(
            "output throughput, 200 MiB of `dd bs=1M` through the agent (average frame {:.1} KiB)",
            (3 * dd_bytes) as f64 / frames.max(1) as f64 / 1024.0
        ),
        &agent,
        Unit::MegabytesPerSecond,
        "`runsc exec ID dd if=/dev/zero bs=1M count=200`",
        Some(Stat::rate(&raw)),
    ));

    // Memory of the idle sandbox (agent + standby interpreter), the only one under our root now.
    pause(1000);
    let pids = support::sandbox_processes(&env.root);
    let (pss, readable) = support::total_pss(&pids);
    report.memory.push(Memory {
        what: "idle sandbox started directly (agent + standby python): PSS of its host processes"
            .into(),
        bytes: (readable > 0).then_some(pss),
        note: format!("{readable} processes (runsc-sandbox, runsc-gofer and their children)"),
    });
    let memcg = support::memcg_usage(&format!("/{}/{}", env.cgroup_parent, sandbox.id));
    report.memory.push(Memory {
        what: "same sandbox: memory cgroup usage".into(),
        bytes: memcg,
        note: "memory.usage_in_bytes (cgroup v1; includes page cache)".into(),
    });
    sandbox.delete()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Sandbox creation: `runsc run --detach` of our bundle until the agent's hello, against raw runsc
// (a bundle whose first process is `sleep`) until its first `runsc exec` has run.

fn bench_create(env: &Env, report: &mut Report) -> io::Result<()> {
    let (mut ready, mut returned, mut deletes) = (Vec::new(), Vec::new(), Vec::new());
    let mut ready_no_standby = Vec::new();
    let (mut raw_run, mut raw_first_exec, mut raw_deletes) = (Vec::new(), Vec::new(), Vec::new());
    // One warm-up pair, not recorded.
    for iteration in 0..9 {
        let sandbox = AgentSandbox::start(env)?;
        let (ready_at, returned_at) = (sandbox.ready, sandbox.run_returned);
        pause(250);
        let delete = sandbox.delete()?;
        pause(150);
        let (raw, run) = RawSandbox::start(env)?;
        let (exec, _, code) = raw.runsc_exec(&["/bin/bash", "-c", "true"])?;
        check(code == 0, || format!("first runsc exec exited with {code}"))?;
        pause(250);
        let raw_delete = raw.delete()?;
        pause(150);
        let sandbox = AgentSandbox::start_with(env, false)?;
        let no_standby_at = sandbox.ready;
        pause(250);
        sandbox.delete()?;
        pause(150);
        if iteration > 0 {
            ready_no_standby.push(seconds(no_standby_at));
            ready.push(seconds(ready_at));
            returned.push(seconds(returned_at));
            deletes.push(seconds(delete));
            raw_run.push(seconds(run));
            raw_first_exec.push(seconds(run + exec));
            raw_deletes.push(seconds(raw_delete));
        }
    }
    let first_exec = Stat::latency(&raw_first_exec);
    report.raw_create_and_exec = Some(first_exec);
    report.rows.push(Row::latency(
        "create to ready: `runsc run --detach` of our bundle until the agent's hello",
        &ready,
        "`runsc run --detach` (sleep as init) + first `runsc exec bash -c true`",
        Some(first_exec),
    ));
    report.rows.push(Row::latency(
        "create to ready, agent started without its standby interpreter",
        &ready_no_standby,
        "`runsc run --detach` (sleep as init) + first `runsc exec bash -c true`",
        Some(first_exec),
    ));
    report.rows.push(Row::latency(
        "`runsc run --detach` of our bundle until it returns",
        &returned,
        "`runsc run --detach` (sleep as init) until it returns",
        Some(Stat::latency(&raw_run)),
    ));
    report.rows.push(Row::latency(
        "delete: close the agent's pipes + `runsc delete --force`",
        &deletes,
        "`runsc delete --force` (sleep as init)",
        Some(Stat::latency(&raw_deletes)),
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The real server: POST /execute without and with the pool, requests per second, streamed
// output, memory.

fn execute_ok(
    client: &mut Client,
    language: &str,
    code: &str,
) -> io::Result<(f64, serde_json::Value)> {
    let started = Instant::now();
    let response = client.execute(language, code, true, 1 << 20)?;
    let elapsed = seconds(started.elapsed());
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap_or_default();
    check(response.status == 200 && body["exit_code"] == 0, || {
        format!(
            "POST /execute {language} {code:?}: {} {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        )
    })?;
    Ok((elapsed, body))
}

fn bench_server(env: &Env, report: &mut Report) -> io::Result<()> {
    // Without a pool: every request creates its sandbox.
    let server = Server::start(env, "cold", 0, &[])?;
    pause(500);
    report.memory.push(Memory {
        what: "server RSS, idle, no pool".into(),
        bytes: support::rss_bytes(server.pid),
        note: "VmRSS of sandbox-server".into(),
    });
    let mut client = Client::new(server.port)?;
    execute_ok(&mut client, "bash", "true")?; // warm-up
    let mut cold = Vec::new();
    for _ in 0..8 {
        server.wait_settled(0, Duration::from_secs(30))?;
        pause(200);
        cold.push(execute_ok(&mut client, "bash", "true")?.0);
    }
    report.execute_cold = Some(Stat::latency(&cold));
    report.rows.push(Row::latency(
        "`POST /execute` bash `true`, no pool (SANDBOX_POOL_SIZE=0), total request time",
        &cold,
        "`runsc run --detach` + first `runsc exec bash -c true`",
        report.raw_create_and_exec,
    ));
    drop(client);
    server.stop();

    // With a pool of 2 (the default), and an output limit above the throughput test's size.
    let server = Server::start(
        env,
        "pool",
        2,
        &[("SANDBOX_MAX_OUTPUT_BYTES", "1000000000")],
    )?;
    pause(1000);
    report.memory.push(Memory {
        what: "server RSS with a pool of 2 ready sandboxes".into(),
        bytes: support::rss_bytes(server.pid),
        note: "VmRSS of sandbox-server only".into(),
    });
    let pids = support::sandbox_processes(&server.state_dir.join("runsc"));
    let (pss, readable) = support::total_pss(&pids);
    report.memory.push(Memory {
        what: "per pooled idle sandbox (PSS of the pool's host processes / 2)".into(),
        bytes: (readable > 0).then_some(pss / 2),
        note: format!("{readable} processes for 2 sandboxes"),
    });
    let mut client = Client::new(server.port)?;
    execute_ok(&mut client, "bash", "true")?; // warm-up

    let settle = |server: &Server| -> io::Result<()> {
        server.wait_settled(2, Duration::from_secs(30))?;
        pause(300); // the new sandbox's standby interpreter starts
        Ok(())
    };
    let mut pooled = Vec::new();
    for _ in 0..12 {
        settle(&server)?;
        pooled.push(execute_ok(&mut client, "bash", "true")?.0);
    }
    report.execute_pooled = Some(Stat::latency(&pooled));
    report.rows.push(Row::latency(
        "`POST /execute` bash `true`, pool of 2 ready, total request time",
        &pooled,
        "`runsc exec ID /bin/bash -c true` on a running sandbox",
        report.bash_runsc_exec,
    ));
    let mut pooled_python = Vec::new();
    for _ in 0..10 {
        settle(&server)?;
        let (elapsed, body) = execute_ok(&mut client, "python", "print(1)")?;
        check(body["stdout"] == "1\n", || {
            format!("python via /execute printed {}", body["stdout"])
        })?;
        pooled_python.push(elapsed);
    }
    report.rows.push(Row::latency(
        "`POST /execute` python `print(1)`, pool of 2 ready, total request time",
        &pooled_python,
        "`runsc exec ID python3 -c 'print(1)'` on a running sandbox",
        report.python_runsc_exec,
    ));

    // Streamed output: MB/s from the response head to the last chunk.
    let head = format!("head -c {OUTPUT_BYTES} /dev/zero");
    let mut throughput = Vec::new();
    for _ in 0..3 {
        settle(&server)?;
        let response = client.execute("bash", &head, false, 0)?;
        let elapsed = response.head_at.elapsed();
        check(
            response.status == 200 && response.body_bytes == OUTPUT_BYTES,
            || {
                format!(
                    "streamed head: status {}, {} bytes",
                    response.status, response.body_bytes
                )
            },
        )?;
        throughput.push(OUTPUT_BYTES as f64 / seconds(elapsed) / 1e6);
    }
    report.rows.push(Row::rate(
        "output throughput, 200 MB streamed by `POST /execute` (chunked)",
        &throughput,
        Unit::MegabytesPerSecond,
        "`runsc exec ID head -c 200000000 /dev/zero`",
        report.throughput_runsc_exec,
    ));
    drop(client);
    bench_websocket(&server, report)?;

    // Back to back: requests that do not wait for the pool to refill (the pool grows with
    // demand, so this runs after the rows that expect exactly 2 pooled sandboxes).
    settle(&server)?;
    let mut client = Client::new(server.port)?;
    let mut back_to_back = Vec::new();
    for _ in 0..BACK_TO_BACK_REQUESTS {
        back_to_back.push(execute_ok(&mut client, "bash", "true")?.0);
    }
    report.rows.push(Row::latency(
        &format!("`POST /execute` bash `true`, {BACK_TO_BACK_REQUESTS} requests back to back (no wait for the pool), total request time"),
        &back_to_back,
        "`runsc run --detach` + first `runsc exec bash -c true`",
        report.raw_create_and_exec,
    ));
    drop(client);

    // Requests per second: 4 clients in a loop for a fixed time, fresh sandbox per request.
    server.wait_pool_ready(2, Duration::from_secs(60))?;
    pause(300);
    let (server_rate, latencies, errors) = requests_per_second(&server)?;
    let server_rss_peak = support::rss_bytes(server.pid);
    server.wait_pool_ready(2, Duration::from_secs(60))?;
    server.stop();
    let raw_rate = raw_requests_per_second(env)?;
    report.rows.push(Row::rate(
        &format!("`POST /execute` bash `true` per second, {CLIENTS} clients x {} s, pool of 2 growing with demand ({errors} errors)", LOAD_TIME.as_secs()),
        &[server_rate],
        Unit::PerSecond,
        &format!("{CLIENTS} threads x {} s looping `runsc run` + `runsc exec bash -c true` + `runsc delete`", LOAD_TIME.as_secs()),
        Some(Stat::rate(&[raw_rate])),
    ));
    report.rows.push(Row::latency(
        &format!("request time under that load ({CLIENTS} clients)"),
        &latencies,
        "",
        None,
    ));
    report.memory.push(Memory {
        what: format!("server RSS right after the {CLIENTS}-client load"),
        bytes: server_rss_peak,
        note: "VmRSS of sandbox-server".into(),
    });
    Ok(())
}

/// The code interpreter (issue 13): cells on a warm context in one WebSocket session, next to a
/// fresh python `print(1)` execution in the same session and run.
fn bench_code(env: &Env, report: &mut Report) -> io::Result<()> {
    let server = Server::start(env, "code", 1, &[])?;
    server.wait_settled(1, Duration::from_secs(30))?;
    let mut session = websocket::Session::create(server.port)?;
    // The context starts with the first cell (not timed): the interpreter and the driver.
    session.run_code("x = 0")?;
    let mut pairs = Vec::new();
    let mut singles = Vec::new();
    for index in 0..40 {
        pause(20);
        let started = Instant::now();
        session.run_code(&format!("x = {index}"))?;
        let (_, text) = session.run_code("x")?;
        pairs.push(started.elapsed().as_secs_f64());
        check(text == index.to_string(), || {
            format!("run_code(\"x\") gave {text:?}, not {index}")
        })?;
        pause(20);
        singles.push(session.run_code("x")?.0);
    }
    report.rows.push(Row::latency(
        "code interpreter: `run_code(\"x = 1\")` then `run_code(\"x\")`, warm context, WebSocket, first message to the second DONE",
        &pairs,
        "",
        None,
    ));
    report.rows.push(Row::latency(
        "code interpreter: one cell `x` (a result), warm context, message to DONE",
        &singles,
        "",
        None,
    ));
    let mut python = Vec::new();
    for _ in 0..10 {
        pause(400); // the standby interpreter of the previous execution's successor starts
        python.push(session.run("python", "print(1)")?.0);
    }
    report.rows.push(Row::latency(
        "same session and run: a python `print(1)` execution (a new process), message to DONE",
        &python,
        "`runsc exec ID python3 -c 'print(1)'` on a running sandbox",
        report.python_runsc_exec,
    ));
    session.kill();
    server.stop();
    Ok(())
}

/// One WebSocket session: warm round trips (the sandbox stays) and output throughput.
fn bench_websocket(server: &Server, report: &mut Report) -> io::Result<()> {
    server.wait_settled(2, Duration::from_secs(30))?;
    let mut session = websocket::Session::create(server.port)?;
    session.run("bash", "true")?; // warm-up
                                  // The same `bash true` through /mcp (single exchange, one keep-alive connection, a sandbox
                                  // of its own), interleaved with the WebSocket samples so both see the same machine.
    let mut mcp = McpBench::start(server.port)?;
    let mut bash = Vec::new();
    let mut through_mcp = Vec::new();
    for _ in 0..15 {
        pause(50);
        bash.push(session.run("bash", "true")?.0);
        pause(50);
        through_mcp.push(mcp.run_true()?);
    }
    report.rows.push(Row::latency(
        "WebSocket session: `bash` `true`, message to `SANDBOX_EXECUTION_DONE`",
        &bash,
        "`runsc exec ID /bin/bash -c true` on a running sandbox",
        report.bash_runsc_exec,
    ));
    report.rows.push(Row::latency(
        "MCP: `run_command` `true` through `/mcp` (2026-07-28 single exchange, keep-alive), request to response",
        &through_mcp,
        "the same `bash` `true` in a WebSocket session (row above)",
        Some(Stat::latency(&bash)),
    ));
    mcp.close()?;
    let mut python = Vec::new();
    for _ in 0..10 {
        pause(400); // the standby interpreter of the previous execution's successor starts
        let (elapsed, bytes, done) = session.run("python", "print(1)")?;
        check(bytes == 2 && done["exit_code"] == 0, || {
            format!("python over WebSocket: {done}")
        })?;
        python.push(elapsed);
    }
    report.rows.push(Row::latency(
        "WebSocket session: python `print(1)`, message to `SANDBOX_EXECUTION_DONE`",
        &python,
        "`runsc exec ID python3 -c 'print(1)'` on a running sandbox",
        report.python_runsc_exec,
    ));
    let code = format!("yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c {OUTPUT_BYTES}");
    let mut throughput = Vec::new();
    for _ in 0..3 {
        let (elapsed, bytes, _) = session.run("bash", &code)?;
        check(bytes as u64 == OUTPUT_BYTES, || {
            format!("{bytes} bytes of output over WebSocket")
        })?;
        throughput.push(OUTPUT_BYTES as f64 / elapsed / 1e6);
    }
    report.rows.push(Row::rate(
        "output throughput, 200 MB of text through one WebSocket session",
        &throughput,
        Unit::MegabytesPerSecond,
        "`runsc exec ID head -c 200000000 /dev/zero`",
        report.throughput_runsc_exec,
    ));

    // Protocol 2: several executions at once in the one session, each with its request id.
    for count in [1, 4, 16] {
        session.run_concurrent(count, "true")?; // warm-up
        let mut samples = Vec::new();
        for _ in 0..10 {
            pause(100);
            samples.push(session.run_concurrent(count, "true")?);
        }
        report.rows.push(Row::latency(
            &format!("WebSocket session: {count} concurrent `bash` `true` (request ids), first message to last `SANDBOX_EXECUTION_DONE`"),
            &samples,
            "`runsc exec ID /bin/bash -c true` on a running sandbox (one)",
            report.bash_runsc_exec,
        ));
    }
    // Protocol 2: stdin with flow control (the window and acknowledgements).
    let data: Vec<u8> = (0..STDIN_BYTES)
        .map(|index| (index * 7 + index / 251) as u8)
        .collect();
    let mut stdin = Vec::new();
    for _ in 0..5 {
        pause(100);
        let elapsed = session.stdin_throughput(&data)?;
        stdin.push(STDIN_BYTES as f64 / elapsed / 1e6);
    }
    report.rows.push(Row::rate(
        "stdin throughput, 16 MiB through one WebSocket session into `wc -c` (1 MiB base64 messages within the stdin window)",
        &stdin,
        Unit::MegabytesPerSecond,
        "",
        None,
    ));
    session.kill();
    Ok(())
}

/// The files API (issue 14), next to `runsc exec cat` on a sandbox started directly: a 1 KiB
/// read's round trip, 100 MB up and down through the WebSocket and through HTTP.
fn bench_files(env: &Env, report: &mut Report) -> io::Result<()> {
    use files::TRANSFER_BYTES;
    let megabytes = TRANSFER_BYTES as f64 / 1e6;
    // The baselines: `runsc exec cat` of the same sizes.
    let (cat_small, cat_large) = {
        let sandbox = AgentSandbox::start(env)?;
        let make = format!(
            "head -c 1024 /dev/urandom > /root/1k && head -c {TRANSFER_BYTES} /dev/urandom > /root/large"
        );
        let (_, _, code) = sandbox.runsc_exec(&["/bin/sh", "-c", &make])?;
        check(code == 0, || {
            format!("making the baseline's files exited with {code}")
        })?;
        sandbox.runsc_exec(&["/bin/cat", "/root/1k"])?; // warm-up
        let mut small = Vec::new();
        for _ in 0..20 {
            pause(50);
            let (elapsed, bytes, code) = sandbox.runsc_exec(&["/bin/cat", "/root/1k"])?;
            check(code == 0 && bytes == 1024, || {
                format!("runsc exec cat 1k: {code}, {bytes}")
            })?;
            small.push(seconds(elapsed));
        }
        let mut large = Vec::new();
        for _ in 0..3 {
            let (elapsed, bytes, code) = sandbox.runsc_exec(&["/bin/cat", "/root/large"])?;
            check(code == 0 && bytes == TRANSFER_BYTES as u64, || {
                format!("runsc exec cat large: {code}, {bytes}")
            })?;
            large.push(megabytes / seconds(elapsed));
        }
        (Stat::latency(&small), Stat::rate(&large))
    };

    let server = Server::start(env, "files", 1, &[])?;
    server.wait_settled(1, Duration::from_secs(30))?;
    let mut session = files::FilesSession::create(server.port)?;
    let small: Vec<u8> = (0..1024u32).map(|index| (index * 7) as u8).collect();
    session.write("/root/1k", &small)?;
    session.read("/root/1k")?; // warm-up
    session.run_bash("true")?;
    // Interleaved with a warm `bash true` in the same session, for scale: both are one
    // process started ahead of its request (the file helper, the bash standby).
    let (mut reads, mut bash) = (Vec::new(), Vec::new());
    for _ in 0..30 {
        pause(50);
        let (elapsed, bytes) = session.read("/root/1k")?;
        check(bytes == 1024, || {
            format!("read_file of 1 KiB gave {bytes} bytes")
        })?;
        reads.push(elapsed);
        pause(50);
        bash.push(session.run_bash("true")?);
    }
    report.rows.push(Row::latency(
        "files: 1 KiB `read_file` over the WebSocket, message to reply (target: p50 <= 5 ms)",
        &reads,
        "`runsc exec ID cat FILE` (1 KiB)",
        Some(cat_small),
    ));
    report.rows.push(Row::latency(
        "files, for scale: warm `bash true` in the same session, message to DONE",
        &bash,
        "`runsc exec ID cat FILE` (1 KiB)",
        Some(cat_small),
    ));
    // The fallback: two reads at once, the second served by a helper started for it.
    let mut fresh = Vec::new();
    for _ in 0..15 {
        pause(50);
        fresh.push(session.read_pair("/root/1k")?.1);
    }
    report.rows.push(Row::latency(
        "files: 1 KiB `read_file` sent together with another: the second (a helper started for it, none waiting)",
        &fresh,
        "`runsc exec ID cat FILE` (1 KiB)",
        Some(cat_small),
    ));

    let data: Vec<u8> = (0..TRANSFER_BYTES)
        .map(|index| (index * 31 + index / 997) as u8)
        .collect();
    let (mut ws_up, mut ws_down, mut http_up, mut http_down) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        ws_up.push(megabytes / session.write("/root/large", &data)?);
        let (elapsed, bytes) = session.read("/root/large")?;
        check(bytes == TRANSFER_BYTES, || {
            format!("read_file gave {bytes} bytes")
        })?;
        ws_down.push(megabytes / elapsed);
        http_up.push(megabytes / session.http_put("/root/large", &data)?);
        let (elapsed, bytes) = session.http_get("/root/large")?;
        check(bytes == TRANSFER_BYTES, || {
            format!("GET gave {bytes} bytes")
        })?;
        http_down.push(megabytes / elapsed);
    }
    let rows = [
        ("files: 100 MB upload, `write_file` over the WebSocket (1 MiB base64 chunks within the window)", ws_up, ""),
        ("files: 100 MB download, `read_file` over the WebSocket (base64 `file_data`)", ws_down, "`runsc exec ID cat FILE` (100 MB)"),
        ("files: 100 MB upload, `PUT /sandboxes/{id}/files` (Content-Length, streamed)", http_up, ""),
        ("files: 100 MB download, `GET /sandboxes/{id}/files` (chunked, streamed)", http_down, "`runsc exec ID cat FILE` (100 MB)"),
    ];
    for (what, samples, raw_what) in rows {
        let raw = (!raw_what.is_empty()).then_some(cat_large);
        report.rows.push(Row::rate(
            what,
            &samples,
            Unit::MegabytesPerSecond,
            raw_what,
            raw,
        ));
    }
    session.kill();
    server.stop();
    Ok(())
}

/// `run_command` through `/mcp` on one keep-alive connection, in a sandbox made by its first
/// call.
struct McpBench {
    client: Client,
    sandbox_id: String,
}

impl McpBench {
    const HEADERS: &'static str =
        "MCP-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/call\r\nMcp-Name: run_command\r\n";

    fn call(
        client: &mut Client,
        arguments: serde_json::Value,
        name: &str,
    ) -> io::Result<serde_json::Value> {
        let body = serde_json::json!({
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": name, "arguments": arguments, "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {}}}
        });
        let headers = Self::HEADERS.replace("run_command", name);
        let response = client.mcp(&headers, &body.to_string())?;
        let answer: serde_json::Value =
            serde_json::from_slice(&response.body).map_err(|error| {
                io::Error::other(format!("/mcp answered {}: {error}", response.status))
            })?;
        check(
            response.status == 200 && answer["result"]["isError"] == false,
            || format!("/mcp answered {}: {answer}", response.status),
        )?;
        Ok(answer["result"]["structuredContent"].clone())
    }

    fn start(port: u16) -> io::Result<McpBench> {
        let mut client = Client::new(port)?;
        let created = Self::call(
            &mut client,
            serde_json::json!({"command": "true"}),
            "run_command",
        )?;
        let sandbox_id = created["sandbox_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut bench = McpBench { client, sandbox_id };
        bench.run_true()?; // warm-up
        Ok(bench)
    }

    /// One `run_command("true")` in the bench's sandbox: seconds from request to response.
    fn run_true(&mut self) -> io::Result<f64> {
        let started = Instant::now();
        let result = Self::call(
            &mut self.client,
            serde_json::json!({"command": "true", "sandbox_id": self.sandbox_id}),
            "run_command",
        )?;
        let elapsed = started.elapsed().as_secs_f64();
        check(result["exit_code"] == 0, || {
            format!("run_command true: {result}")
        })?;
        Ok(elapsed)
    }

    fn close(mut self) -> io::Result<()> {
        let sandbox_id = self.sandbox_id.clone();
        Self::call(
            &mut self.client,
            serde_json::json!({"sandbox_id": sandbox_id}),
            "close_sandbox",
        )?;
        Ok(())
    }
}

/// Bytes sent through stdin by the stdin throughput row.
const STDIN_BYTES: usize = 16 * 1024 * 1024;

const CLIENTS: usize = 4;
const LOAD_TIME: Duration = Duration::from_secs(8);

/// `/execute` requests sent one after the other without waiting for the pool.
const BACK_TO_BACK_REQUESTS: usize = 15;

fn requests_per_second(server: &Server) -> io::Result<(f64, Vec<f64>, usize)> {
    let started = Instant::now();
    let deadline = started + LOAD_TIME;
    let results: Vec<io::Result<(Vec<f64>, usize, Instant)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|_| {
                scope.spawn(move || -> io::Result<(Vec<f64>, usize, Instant)> {
                    let mut client = Client::new(server.port)?;
                    let (mut latencies, mut errors) = (Vec::new(), 0);
                    let mut last = Instant::now();
                    while Instant::now() < deadline {
                        let request_start = Instant::now();
                        match client.execute("bash", "true", true, 4096) {
                            Ok(response) if response.status == 200 => {
                                latencies.push(seconds(request_start.elapsed()))
                            }
                            Ok(_) => errors += 1,
                            Err(_) => {
                                errors += 1;
                                client = Client::new(server.port)?;
                            }
                        }
                        last = Instant::now();
                    }
                    Ok((latencies, errors, last))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("client panicked")))
            })
            .collect()
    });
    let (mut latencies, mut errors, mut end) = (Vec::new(), 0, started);
    for result in results {
        let (worker_latencies, worker_errors, worker_end) = result?;
        latencies.extend(worker_latencies);
        errors += worker_errors;
        end = end.max(worker_end);
    }
    Ok((
        latencies.len() as f64 / seconds(end - started),
        latencies,
        errors,
    ))
}

fn raw_requests_per_second(env: &Env) -> io::Result<f64> {
    let started = Instant::now();
    let deadline = started + LOAD_TIME;
    let results: Vec<io::Result<(usize, Instant)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|_| {
                scope.spawn(move || -> io::Result<(usize, Instant)> {
                    let (mut done, mut last) = (0, Instant::now());
                    while Instant::now() < deadline {
                        let (raw, _) = RawSandbox::start(env)?;
                        let (_, _, code) = raw.runsc_exec(&["/bin/bash", "-c", "true"])?;
                        check(code == 0, || format!("runsc exec exited with {code}"))?;
                        // The response would be complete here; the delete still costs CPU.
                        done += 1;
                        last = Instant::now();
                        raw.delete()?;
                    }
                    Ok((done, last))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("worker panicked")))
            })
            .collect()
    });
    let (mut done, mut end) = (0, started);
    for result in results {
        let (worker_done, worker_end) = result?;
        done += worker_done;
        end = end.max(worker_end);
    }
    Ok(done as f64 / seconds(end - started))
}
