//! Plumbing shared by the benchmarks: a reaper (the bench is a child subreaper, like the server),
//! the cleanup of everything the bench created, statistics and memory sampling.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

// ---------------------------------------------------------------------------------------------
// Reaper

/// Children are reaped by one thread calling `waitpid(-1)`, because `runsc run --detach` leaves
/// the sandbox processes to us (we are a subreaper) and `runsc delete` waits until they are
/// reaped. So nothing else may wait for children: spawn with [`spawn`] and wait with [`wait`].
struct Reaper {
    state: Mutex<ReapState>,
    exited: Condvar,
}

#[derive(Default)]
struct ReapState {
    /// Children spawned through [`spawn`] whose status nobody collected yet.
    tracked: HashSet<i32>,
    /// Exit status (shell convention) of tracked children that ended, and when they were reaped.
    statuses: HashMap<i32, (i32, Instant)>,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();

fn reaper() -> &'static Reaper {
    REAPER.get_or_init(|| Reaper {
        state: Mutex::new(ReapState::default()),
        exited: Condvar::new(),
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Become a child subreaper and start reaping. Call once, before any child is spawned.
pub fn start_reaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)?;
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(|| loop {
            match waitpid(None, None) {
                Ok(status) => {
                    let (pid, code) = match status {
                        WaitStatus::Exited(pid, code) => (pid, code),
                        WaitStatus::Signaled(pid, signal, _) => (pid, 128 + signal as i32),
                        _ => continue,
                    };
                    let reaper = reaper();
                    let mut state = lock(&reaper.state);
                    // Orphans (sandbox processes re-parented to us) are just collected.
                    if state.tracked.remove(&pid.as_raw()) {
                        state.statuses.insert(pid.as_raw(), (code, Instant::now()));
                        reaper.exited.notify_all();
                    }
                }
                Err(Errno::ECHILD) => std::thread::sleep(Duration::from_millis(2)),
                Err(_) => {}
            }
        })?;
    Ok(())
}

/// Spawn `command` so that its exit status can be collected with [`wait`]. The lock is held
/// across the spawn so the reaper cannot collect the child before it is known.
pub fn spawn(command: &mut Command) -> io::Result<Child> {
    let reaper = reaper();
    let mut state = lock(&reaper.state);
    let child = command.spawn()?;
    state.tracked.insert(child.id() as i32);
    Ok(child)
}

/// Wait for a child spawned with [`spawn`]; `None` if it is still running after `timeout`.
pub fn wait(pid: u32, timeout: Duration) -> Option<i32> {
    wait_timed(pid, timeout).map(|(code, _)| code)
}

/// [`wait`], also returning when the child was reaped.
pub fn wait_timed(pid: u32, timeout: Duration) -> Option<(i32, Instant)> {
    let reaper = reaper();
    let deadline = Instant::now() + timeout;
    let mut state = lock(&reaper.state);
    loop {
        if let Some(exit) = state.statuses.remove(&(pid as i32)) {
            return Some(exit);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        state = reaper
            .exited
            .wait_timeout(state, deadline - now)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// Run a command to completion with its stdout captured (stderr discarded).
pub fn run_output(command: &mut Command, timeout: Duration) -> io::Result<(i32, Vec<u8>)> {
    use std::io::Read;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = spawn(command)?;
    let mut output = Vec::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_end(&mut output)?;
    }
    let code = wait(child.id(), timeout).ok_or_else(|| {
        io::Error::new(io::ErrorKind::TimedOut, format!("{command:?} did not exit"))
    })?;
    Ok((code, output))
}

/// Run a command to completion, stdio discarded; its exit status.
pub fn run_status(command: &mut Command, timeout: Duration) -> io::Result<i32> {
    Ok(run_output(command, timeout)?.0)
}

// ---------------------------------------------------------------------------------------------
// Cleanup

/// Everything the bench created outside its own memory, removed by [`cleanup_all`] (at the end,
/// on a panic through the guard in `main`, on SIGINT/SIGTERM and by the watchdog).
#[derive(Default)]
struct Created {
    base_dir: Option<PathBuf>,
    /// runsc `--root` state dirs whose containers must be deleted.
    runsc_roots: Vec<PathBuf>,
    /// Cgroup parents (relative to each controller) to remove.
    cgroup_parents: Vec<String>,
    /// Servers started by the bench, by pid.
    servers: Vec<u32>,
}

static CREATED: Mutex<Option<Created>> = Mutex::new(None);

fn with_created<R>(f: impl FnOnce(&mut Created) -> R) -> R {
    let mut guard = lock(&CREATED);
    f(guard.get_or_insert_with(Created::default))
}

pub fn register_base_dir(dir: &Path) {
    with_created(|created| created.base_dir = Some(dir.to_path_buf()));
}

pub fn register_runsc_root(root: &Path) {
    with_created(|created| created.runsc_roots.push(root.to_path_buf()));
}

pub fn register_cgroup_parent(parent: &str) {
    with_created(|created| {
        created
            .cgroup_parents
            .push(parent.trim_start_matches('/').to_string())
    });
}

pub fn register_server(pid: u32) {
    with_created(|created| created.servers.push(pid));
}

pub fn forget_server(pid: u32) {
    with_created(|created| created.servers.retain(|other| *other != pid));
}

/// Stop a server the bench started: SIGTERM (it deletes its sandboxes), SIGKILL if it lingers.
pub fn stop_server(pid: u32) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    if wait(pid, Duration::from_secs(20)).is_none() {
        eprintln!("bench: server {pid} ignored SIGTERM; killing it");
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        let _ = wait(pid, Duration::from_secs(5));
    }
    forget_server(pid);
}

/// Delete every container under `root` (`runsc list`, then `delete --force` each).
pub fn delete_all_containers(runsc: &Path, root: &Path) {
    if !root.exists() {
        return;
    }
    let mut list = Command::new(runsc);
    list.arg(format!("--root={}", root.display()))
        .args(["list", "--quiet"]);
    let ids = run_output(&mut list, Duration::from_secs(20))
        .map(|(_, out)| out)
        .unwrap_or_default();
    for id in String::from_utf8_lossy(&ids)
        .lines()
        .map(str::trim)
        .filter(|id| !id.is_empty())
    {
        eprintln!(
            "bench cleanup: deleting container {id} under {}",
            root.display()
        );
        let mut delete = Command::new(runsc);
        delete
            .arg(format!("--root={}", root.display()))
            .args(["delete", "--force", id]);
        let _ = run_status(&mut delete, Duration::from_secs(30));
    }
}

/// Remove what the bench created. Idempotent; safe to call from any thread.
pub fn cleanup_all(runsc: &Path) {
    let created = lock(&CREATED).take().unwrap_or_default();
    for pid in created.servers {
        stop_server(pid);
    }
    for root in &created.runsc_roots {
        delete_all_containers(runsc, root);
    }
    for parent in &created.cgroup_parents {
        remove_cgroup_tree(parent);
    }
    if let Some(dir) = created.base_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn remove_cgroup_tree(parent: &str) {
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for controller in controllers.flatten() {
        let dir = controller.path().join(parent);
        if let Ok(children) = std::fs::read_dir(&dir) {
            for child in children.flatten() {
                if child.path().is_dir() {
                    let _ = std::fs::remove_dir(child.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics

/// Summary of samples. For latencies `tail` is the 90th percentile and `best` the minimum; for
/// rates (higher is better) `tail` is the 10th percentile and `best` the maximum.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    pub median: f64,
    pub tail: f64,
    pub best: f64,
    pub n: usize,
}

impl Stat {
    fn sorted(samples: &[f64]) -> Vec<f64> {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        sorted.sort_by(|a, b| a.total_cmp(b));
        sorted
    }

    fn median_of(sorted: &[f64]) -> f64 {
        let n = sorted.len();
        if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        }
    }

    /// Nearest-rank percentile `p` (0..=1) of sorted samples.
    fn percentile(sorted: &[f64], p: f64) -> f64 {
        let n = sorted.len();
        sorted[((p * n as f64).ceil() as usize).clamp(1, n) - 1]
    }

    pub fn latency(samples: &[f64]) -> Stat {
        let sorted = Self::sorted(samples);
        if sorted.is_empty() {
            return Stat {
                median: f64::NAN,
                tail: f64::NAN,
                best: f64::NAN,
                n: 0,
            };
        }
        Stat {
            median: Self::median_of(&sorted),
            tail: Self::percentile(&sorted, 0.9),
            best: sorted[0],
            n: sorted.len(),
        }
    }

    pub fn rate(samples: &[f64]) -> Stat {
        let sorted = Self::sorted(samples);
        if sorted.is_empty() {
            return Stat {
                median: f64::NAN,
                tail: f64::NAN,
                best: f64::NAN,
                n: 0,
            };
        }
        let best = sorted[sorted.len() - 1];
        Stat {
            median: Self::median_of(&sorted),
            tail: Self::percentile(&sorted, 0.1),
            best,
            n: sorted.len(),
        }
    }
}

pub fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// Memory

/// Proportional set size of a process in bytes (`smaps_rollup`), if readable.
pub fn pss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    field_kb(&text, "Pss:").map(|kb| kb * 1024)
}

/// Resident set size of a process in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    field_kb(&text, "VmRSS:").map(|kb| kb * 1024)
}

fn field_kb(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|line| line.starts_with(name))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Host processes of the sandboxes under a runsc state root: every process whose command line
/// names `--root=ROOT` (runsc-sandbox, runsc-gofer), plus all their descendants (the ptrace
/// platform's stub processes). Grouped by container id when the command line names it.
pub fn sandbox_processes(root: &Path) -> Vec<u32> {
    let needle = format!("--root={}", root.display());
    let mut parents: HashMap<u32, u32> = HashMap::new();
    let mut roots: HashSet<u32> = HashSet::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) {
            // The fields after the command name, which may contain spaces, follow the last ')'.
            if let Some(ppid) = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse().ok())
            {
                parents.insert(pid, ppid);
            }
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let is_ours = cmdline
                .split(|byte| *byte == 0)
                .any(|arg| arg == needle.as_bytes());
            let arg0 = cmdline.split(|byte| *byte == 0).next().unwrap_or(&[]);
            // Not the short-lived `runsc exec`/`delete` commands: only the sandbox's own processes.
            if is_ours && (arg0.ends_with(b"runsc-sandbox") || arg0.ends_with(b"runsc-gofer")) {
                roots.insert(pid);
            }
        }
    }
    let mut found: Vec<u32> = Vec::new();
    for pid in parents.keys() {
        let mut current = *pid;
        for _ in 0..64 {
            if roots.contains(&current) {
                found.push(*pid);
                break;
            }
            match parents.get(&current) {
                Some(parent) if *parent > 1 => current = *parent,
                _ => break,
            }
        }
    }
    found.sort_unstable();
    found
}

/// Sum of the PSS of the given processes, and how many were readable.
pub fn total_pss(pids: &[u32]) -> (u64, usize) {
    pids.iter()
        .filter_map(|pid| pss_bytes(*pid))
        .fold((0, 0), |(sum, n), pss| (sum + pss, n + 1))
}

/// Memory cgroup usage (v1) of a cgroup path, if present.
pub fn memcg_usage(cgroup: &str) -> Option<u64> {
    let path = format!(
        "/sys/fs/cgroup/memory/{}/memory.usage_in_bytes",
        cgroup.trim_start_matches('/')
    );
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}
