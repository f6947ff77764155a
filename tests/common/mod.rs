//! Test harness for the integration tests: starts the real `sandbox-server` binary (real runsc,
//! real rootfs) on a free loopback port with its own state directory, a tiny blocking HTTP/1.1
//! client, and helpers to inspect what the server leaves behind (runsc containers, processes,
//! cgroups).
//!
//! Every server is owned by a [`TestServer`] whose `Drop` stops it (SIGTERM, then SIGKILL after
//! 20 s) and force-removes whatever it left (containers, processes naming its state directory,
//! cgroups named after it, the state directory), so a failing test does not leak sandboxes.
//! When the test panics, the server's log is printed for diagnosis.
//!
//! Each test file uses only part of this module.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

pub const SERVER_BIN: &str = env!("CARGO_BIN_EXE_sandbox-server");
pub const AGENT_BIN: &str = env!("CARGO_BIN_EXE_sandbox-agent");
pub const DEFAULT_ROOTFS: &str = "/var/lib/cloud-run-sandbox/rootfs";

/// How long a server may take to answer `GET /status` after it was spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to exit after SIGTERM before it gets SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Default read/write timeout of client sockets: a bound that detects hangs, not a timing check.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh, unique state directory path (not created): `/tmp/crs-test-<pid>-<nnnn>`. Its file
/// name is also the server's cgroup parent, so it must be unique among concurrent servers; the
/// fixed width keeps one from being a prefix of another (`-1` of `-11`), which matters to the
/// cleanup that finds a server's processes by the path on their command line.
pub fn new_state_dir() -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = PathBuf::from(format!("/tmp/crs-test-{}-{n:04}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn rootfs() -> String {
    std::env::var("SANDBOX_ROOTFS")
        .ok()
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| DEFAULT_ROOTFS.to_string())
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// A running `sandbox-server`.
pub struct TestServer {
    pub port: u16,
    pub state_dir: PathBuf,
    pub pid: u32,
    child: Option<Child>,
    log_path: PathBuf,
    /// Drop removes the state directory (false for a server whose directory another server
    /// takes over, as in the restart test).
    owns_state_dir: bool,
}

impl TestServer {
    /// Start a server with its own new state directory. `SANDBOX_POOL_SIZE` defaults to 1, and
    /// the pool does not grow with demand unless `SANDBOX_POOL_MAX` is given.
    pub fn start(extra_env: &[(&str, &str)]) -> TestServer {
        Self::start_on(&new_state_dir(), extra_env, true)
    }

    /// Start a server on `state_dir` (which may hold what a previous server left there).
    pub fn start_on(
        state_dir: &Path,
        extra_env: &[(&str, &str)],
        owns_state_dir: bool,
    ) -> TestServer {
        std::fs::create_dir_all(state_dir).expect("create the state dir");
        let log_path = state_dir.join("server.log");
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .expect("open the log");
            let mut command = server_command(state_dir, port, extra_env);
            command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log));
            let child = command.spawn().expect("spawn sandbox-server");
            let mut server = TestServer {
                port,
                state_dir: state_dir.to_path_buf(),
                pid: child.id(),
                child: Some(child),
                log_path: log_path.clone(),
                owns_state_dir,
            };
            match server.wait_ready() {
                Ok(()) => return server,
                Err(exited) => {
                    last_log = server.log();
                    // Someone took the port between our probe and the server's bind: retry.
                    let port_taken = exited && last_log.contains("Address already in use");
                    // Do not let this attempt's Drop remove the directory we retry in.
                    server.owns_state_dir = false;
                    drop(server);
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        if owns_state_dir {
            force_cleanup(state_dir);
        }
        panic!("sandbox-server did not become ready; its log:\n{last_log}");
    }

    /// Wait until `GET /status` answers 200. `Err(true)` if the process exited.
    fn wait_ready(&mut self) -> Result<(), bool> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return Err(true);
                }
            }
            if let Ok(response) = try_request(
                self.port,
                b"GET /status HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                Duration::from_secs(5),
            ) {
                if response.status == 200 {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(false)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// runsc's state root of this server.
    pub fn runsc_root(&self) -> PathBuf {
        self.state_dir.join("runsc")
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Send SIGTERM and wait up to `timeout` for the exit. `None` if it did not exit in time
    /// (the process is left running).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        if let Ok(Some(status)) = child.try_wait() {
            self.child = None;
            return Some(status);
        }
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let status = wait_child(child, timeout)?;
        self.child = None;
        Some(status)
    }

    /// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]. Returns the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.terminate(STOP_TIMEOUT) {
            return Some(status);
        }
        self.sigkill()
    }

    /// SIGKILL the server (what it started keeps running) and reap it.
    pub fn sigkill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        wait_child(&mut child, STOP_TIMEOUT)
    }

    /// The server's resident memory in KiB (`VmRSS` of /proc/<pid>/status).
    pub fn rss_kib(&self) -> Option<u64> {
        vm_rss_kib(self.pid)
    }

    /// `GET /metrics`, one gauge or counter without labels.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let response = try_request(
            self.port,
            b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            IO_TIMEOUT,
        )
        .ok()?;
        let text = String::from_utf8_lossy(&response.body).into_owned();
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| {
                line.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
    }

    /// Wait until the pool holds `count` ready sandboxes (from `/metrics`).
    pub fn wait_pool_ready(&self, count: usize, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.metric("sandbox_pool_ready") == Some(count as f64)
        })
    }

    pub fn post_execute(
        &self,
        language: &str,
        code: &str,
        timeout: Option<f64>,
        json: bool,
    ) -> Response {
        post_execute(self.port, language, code, timeout, json)
    }

    /// `POST /execute` with `Accept: application/json`; asserts 200 and returns the object.
    pub fn execute_json(&self, language: &str, code: &str, timeout: Option<f64>) -> Value {
        let response = self.post_execute(language, code, timeout, true);
        assert_eq!(response.status, 200, "unexpected response: {response:?}");
        response.json()
    }

    pub fn get(&self, path: &str) -> Response {
        request(
            self.port,
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.port)
    }

    /// Run a trivial execution and check its output: the server still works.
    pub fn assert_healthy(&self) {
        assert_eq!(self.get("/status").status, 200);
        let mut last = None;
        // The test's own sessions or executions may still hold every slot of a small limit
        // while they wind down: retry on 503.
        let healthy = wait_until(Duration::from_secs(30), || {
            let response = self.post_execute("bash", "echo healthy", Some(20.0), true);
            let ok = response.status == 200 && response.json()["stdout"] == "healthy\n";
            last = Some(response);
            ok
        });
        assert!(healthy, "the server no longer runs code: {last:?}");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if self.child.is_some() && self.stop().is_none() {
            eprintln!(
                "test harness: sandbox-server {} could not be stopped",
                self.pid
            );
        }
        if std::thread::panicking() {
            eprintln!(
                "----- sandbox-server log ({}) -----\n{}\n----- end of log -----",
                self.log_path.display(),
                self.log()
            );
        }
        if self.owns_state_dir {
            force_cleanup(&self.state_dir);
        }
    }
}

/// The `sandbox-server` command of a test server: only the test's environment, no variable of
/// ours inherited from the caller (but `SANDBOX_RUNSC`).
fn server_command(state_dir: &Path, port: u16, extra_env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(SERVER_BIN);
    for (name, _) in std::env::vars() {
        let ours = name.starts_with("SANDBOX_")
            || name == "PORT"
            || name == "CHECKPOINT_AND_RESTORE_PATH"
            || name == "FILESYSTEM_SNAPSHOT_PATH";
        if ours && name != "SANDBOX_RUNSC" {
            command.env_remove(&name);
        }
    }
    command
        .env("PORT", port.to_string())
        .env("SANDBOX_LISTEN_ADDR", "127.0.0.1")
        .env("SANDBOX_STATE_DIR", state_dir)
        .env("SANDBOX_AGENT_PATH", AGENT_BIN)
        .env("SANDBOX_ROOTFS", rootfs())
        .env("SANDBOX_POOL_SIZE", "1");
    for (name, value) in extra_env {
        command.env(name, value);
    }
    // The pool stays at SANDBOX_POOL_SIZE (tests count sandboxes) unless a test lets it grow.
    if !extra_env
        .iter()
        .any(|(name, _)| *name == "SANDBOX_POOL_MAX")
    {
        let size = extra_env
            .iter()
            .rev()
            .find(|(name, _)| *name == "SANDBOX_POOL_SIZE")
            .map_or("1", |(_, size)| *size);
        command.env("SANDBOX_POOL_MAX", size);
    }
    command
}

/// Start a server that is expected to refuse to start: wait up to `timeout` for its exit and
/// return its status and what it wrote to stderr. `None` if it was still running (it is then
/// killed).
pub fn run_server_to_exit(
    state_dir: &Path,
    extra_env: &[(&str, &str)],
    timeout: Duration,
) -> Option<(ExitStatus, String)> {
    let mut child = server_command(state_dir, free_port(), extra_env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sandbox-server");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    match wait_child(&mut child, timeout) {
        Some(status) => Some((status, reader.join().unwrap_or_default())),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }
}

/// Processes (other than this one) with an open descriptor on `path`.
pub fn processes_holding(path: &Path) -> Vec<i32> {
    let own = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path));
        if holds {
            found.push(pid);
        }
    }
    found
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// Remove everything a server on `state_dir` may have left: its containers, any process naming
/// the directory, cgroups named after it, and the directory.
pub fn force_cleanup(state_dir: &Path) {
    let root = state_dir.join("runsc");
    if root.exists() {
        for id in runsc_list(&root) {
            let _ = run_with_timeout(
                Command::new(runsc_binary())
                    .arg(format!("--root={}", root.display()))
                    .args(["delete", "--force", &id]),
                Duration::from_secs(20),
            );
        }
    }
    // With the separator, the path of another state directory it prefixes does not match.
    let needle = format!("{}/", state_dir.to_string_lossy());
    for (pid, _) in processes_mentioning(&needle) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    remove_cgroups(state_dir);
    let _ = std::fs::remove_dir_all(state_dir);
}

/// The cgroup directories a server on `state_dir` creates (one per controller).
pub fn cgroup_dirs(state_dir: &Path) -> Vec<PathBuf> {
    let Some(name) = state_dir.file_name() else {
        return Vec::new();
    };
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    controllers
        .flatten()
        .map(|controller| controller.path().join(name))
        .filter(|dir| dir.is_dir())
        .collect()
}

/// Remove the (empty) cgroups named after the state directory. A sandbox's processes may take a
/// moment to leave their cgroup after the server exits (they are reparented and reaped by init),
/// so this retries for a few seconds.
fn remove_cgroups(state_dir: &Path) {
    wait_until(Duration::from_secs(10), || {
        for dir in cgroup_dirs(state_dir) {
            if let Ok(children) = std::fs::read_dir(&dir) {
                for child in children.flatten() {
                    if child.path().is_dir() {
                        let _ = std::fs::remove_dir(child.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(&dir);
        }
        cgroup_dirs(state_dir).is_empty()
    });
}

pub fn runsc_binary() -> String {
    std::env::var("SANDBOX_RUNSC")
        .ok()
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| "runsc".to_string())
}

/// Run a command, capturing stdout, killing it after `timeout`.
pub fn run_with_timeout(command: &mut Command, timeout: Duration) -> Option<String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    match wait_child(&mut child, timeout) {
        Some(status) => {
            let text = reader.join().unwrap_or_default();
            status.success().then_some(text)
        }
        None => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }
}

/// Container ids under a runsc state root (`runsc --root ROOT list --quiet`); empty if the root
/// does not exist.
pub fn runsc_list(root: &Path) -> Vec<String> {
    if !root.exists() {
        return Vec::new();
    }
    let output = run_with_timeout(
        Command::new(runsc_binary())
            .arg(format!("--root={}", root.display()))
            .args(["list", "--quiet"]),
        Duration::from_secs(20),
    )
    .unwrap_or_default();
    output
        .lines()
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .collect()
}

/// The sandbox ids (as in `X-Sandbox-Id`) of the containers under a runsc state root. A
/// container's id may differ from its sandbox's id; the bundle directory is named after the
/// sandbox (`<state>/bundles/<sandbox id>`).
pub fn runsc_sandboxes(root: &Path) -> Vec<String> {
    if !root.exists() {
        return Vec::new();
    }
    let output = run_with_timeout(
        Command::new(runsc_binary())
            .arg(format!("--root={}", root.display()))
            .args(["list", "--format=json"]),
        Duration::from_secs(20),
    )
    .unwrap_or_default();
    let entries: Vec<Value> = serde_json::from_str(output.trim()).unwrap_or_default();
    entries
        .iter()
        .filter_map(|entry| {
            let bundle = Path::new(entry["bundle"].as_str()?);
            Some(bundle.file_name()?.to_string_lossy().into_owned())
        })
        .collect()
}

/// Kill the agent (PID 1) of sandbox `sandbox_id` from the host (`runsc kill CONTAINER KILL`),
/// as a crash of the sandbox would. User code cannot do it (tests/agent_isolation.rs). Returns
/// whether runsc did it.
pub fn kill_agent_from_host(root: &Path, sandbox_id: &str) -> bool {
    let output = run_with_timeout(
        Command::new(runsc_binary())
            .arg(format!("--root={}", root.display()))
            .args(["list", "--format=json"]),
        Duration::from_secs(20),
    )
    .unwrap_or_default();
    let entries: Vec<Value> = serde_json::from_str(output.trim()).unwrap_or_default();
    let container = entries.iter().find_map(|entry| {
        let bundle = Path::new(entry["bundle"].as_str()?);
        (bundle.file_name()? == sandbox_id).then(|| entry["id"].as_str().map(str::to_string))?
    });
    let Some(container) = container else {
        return false;
    };
    run_with_timeout(
        Command::new(runsc_binary())
            .arg(format!("--root={}", root.display()))
            .args(["kill", &container, "KILL"]),
        Duration::from_secs(20),
    )
    .is_some()
}

/// Processes (other than this one) whose command line contains `needle`: (pid, cmdline).
pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let own = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push((pid, cmdline.trim().to_string()));
        }
    }
    found
}

pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Poll `condition` every 100 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn is_sandbox_id(text: &str) -> bool {
    text.len() == 32
        && text
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

// ---------------------------------------------------------------------------------------------
// HTTP client

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body came with `Transfer-Encoding: chunked`.
    pub chunked: bool,
}

impl Response {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.text()))
    }

    /// The `error` message of a JSON error body.
    pub fn error_message(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message in {}", self.text()))
            .to_string()
    }
}

/// A status line and headers.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|value| value.to_ascii_lowercase().contains("chunked"))
    }
}

/// One client connection, for keep-alive, pipelining and partial writes.
pub struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        Self::try_connect(port, IO_TIMEOUT).expect("connect to the server")
    }

    pub fn try_connect(port: u16, timeout: Duration) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Client {
            reader: BufReader::with_capacity(64 * 1024, stream),
        })
    }

    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    pub fn set_read_timeout(&self, timeout: Duration) {
        self.stream()
            .set_read_timeout(Some(timeout))
            .expect("set_read_timeout");
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).expect("send to the server");
    }

    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut stream = self.reader.get_ref();
        stream.write_all(bytes)?;
        stream.flush()
    }

    /// Read one status line and its headers (1xx included).
    pub fn read_head(&mut self) -> io::Result<Head> {
        let line = read_line(&mut self.reader)?;
        let mut parts = line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        if !version.starts_with("HTTP/1.") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {line:?}"),
            ));
        }
        let status = parts
            .next()
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad status line {line:?}"),
                )
            })?;
        let mut headers = Vec::new();
        loop {
            let line = read_line(&mut self.reader)?;
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad header line {line:?}"),
                )
            })?;
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        Ok(Head { status, headers })
    }

    /// Read the body that follows `head` (Content-Length, chunked, or up to end of stream).
    pub fn read_body(&mut self, head: &Head) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        self.read_body_with(head, |chunk| body.extend_from_slice(chunk))?;
        Ok(body)
    }

    /// Like [`Client::read_body`], handing the body to `sink` piece by piece (for big bodies).
    pub fn read_body_with(&mut self, head: &Head, mut sink: impl FnMut(&[u8])) -> io::Result<()> {
        if (100..200).contains(&head.status) || head.status == 204 || head.status == 304 {
            return Ok(());
        }
        if head.is_chunked() {
            loop {
                let line = read_line(&mut self.reader)?;
                let size_text = line.split(';').next().unwrap_or_default().trim();
                let size = u64::from_str_radix(size_text, 16).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad chunk size line {line:?}"),
                    )
                })?;
                if size == 0 {
                    // Trailers, up to the empty line.
                    while !read_line(&mut self.reader)?.is_empty() {}
                    return Ok(());
                }
                copy_exact(&mut self.reader, size, &mut sink)?;
                let end = read_line(&mut self.reader)?;
                if !end.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "chunk data not followed by CRLF",
                    ));
                }
            }
        } else if let Some(length) = head.header("content-length") {
            let length: u64 = length
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?;
            copy_exact(&mut self.reader, length, &mut sink)
        } else {
            let mut buffer = [0u8; 64 * 1024];
            loop {
                let n = self.reader.read(&mut buffer)?;
                if n == 0 {
                    return Ok(());
                }
                sink(&buffer[..n]);
            }
        }
    }

    /// Read a complete response, skipping interim (1xx) responses.
    pub fn read_response(&mut self) -> io::Result<Response> {
        loop {
            let head = self.read_head()?;
            if (100..200).contains(&head.status) {
                continue;
            }
            let body = self.read_body(&head)?;
            let chunked = head.is_chunked();
            return Ok(Response {
                status: head.status,
                headers: head.headers,
                body,
                chunked,
            });
        }
    }

    /// Whether the server closed the connection (reads end of stream, or a reset) within
    /// `timeout`. Any data read meanwhile is discarded.
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        self.set_read_timeout(timeout);
        let mut buffer = [0u8; 4096];
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.reader.read(&mut buffer) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return false
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return true,
            }
        }
        false
    }

    /// Read whatever arrives next (buffered bytes first); empty at end of stream.
    pub fn read_some(&mut self) -> io::Result<Vec<u8>> {
        let mut buffer = vec![0u8; 64 * 1024];
        let n = self.reader.read(&mut buffer)?;
        buffer.truncate(n);
        Ok(buffer)
    }

    pub fn shutdown_write(&self) {
        let _ = self.stream().shutdown(Shutdown::Write);
    }
}

fn read_line(reader: &mut BufReader<TcpStream>) -> io::Result<String> {
    let mut line = Vec::new();
    let n = reader
        .by_ref()
        .take(64 * 1024)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "line too long or cut",
        ));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "line is not UTF-8"))
}

fn copy_exact(
    reader: &mut BufReader<TcpStream>,
    mut remaining: u64,
    sink: &mut impl FnMut(&[u8]),
) -> io::Result<()> {
    while remaining > 0 {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside a body",
            ));
        }
        let n = available.len().min(remaining as usize);
        sink(&available[..n]);
        reader.consume(n);
        remaining -= n as u64;
    }
    Ok(())
}

/// Send raw bytes on a new connection and read one response.
pub fn try_request(port: u16, bytes: &[u8], timeout: Duration) -> io::Result<Response> {
    let mut client = Client::try_connect(port, timeout)?;
    client.try_send(bytes)?;
    client.read_response()
}

/// Send raw bytes on a new connection and read one response (panics on I/O errors).
pub fn request(port: u16, bytes: &[u8]) -> Response {
    try_request(port, bytes, IO_TIMEOUT).unwrap_or_else(|error| panic!("request failed: {error}"))
}

/// The bytes of `POST /execute` (with `Content-Length` and `Connection: close`).
pub fn execute_request(language: &str, code: &str, timeout: Option<f64>, json: bool) -> Vec<u8> {
    let mut target = format!("/execute?language={language}");
    if let Some(timeout) = timeout {
        target.push_str(&format!("&timeout={timeout}"));
    }
    let accept = if json { "application/json" } else { "*/*" };
    let mut bytes = format!(
        "POST {target} HTTP/1.1\r\nHost: t\r\nAccept: {accept}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        code.len()
    )
    .into_bytes();
    bytes.extend_from_slice(code.as_bytes());
    bytes
}

/// `POST /execute?language=L[&timeout=T]` with `code` as the body; `json` asks for the JSON form.
pub fn post_execute(
    port: u16,
    language: &str,
    code: &str,
    timeout: Option<f64>,
    json: bool,
) -> Response {
    request(port, &execute_request(language, code, timeout, json))
}
