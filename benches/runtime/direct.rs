//! Sandboxes started by the bench itself, exactly as the server starts them (same bundle from
//! `sandbox::runtime::bundle::spec`, same `runsc run --detach` command line from
//! `sandbox::runtime::runsc::Runsc`, same agent configuration), but driven directly: the bench
//! speaks the agent protocol over the container's stdio, or uses `runsc exec`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sandbox::agent_protocol::{
    AgentConfig, ExecId, ExitStatus, FrameDecoder, FromAgent, Language, SpawnRequest, Stream,
    ToAgent, CREDIT_BATCH_BYTES,
};
use sandbox::config::{Config, Limits};
use sandbox::runtime::bundle;
use sandbox::runtime::runsc::{Features, Runsc};

use crate::support;

const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// What the installed runsc supports (as the server detects it).
pub fn detect(runsc: &Path) -> io::Result<Features> {
    Features::detect(runsc)
}

/// Delete every container under `root` before the reaper runs (plain blocking waits).
pub fn delete_all_blocking(runsc: &Path, root: &Path) {
    let root_arg = format!("--root={}", root.display());
    let Ok(output) = Command::new(runsc)
        .arg(&root_arg)
        .args(["list", "--quiet"])
        .stderr(Stdio::null())
        .output()
    else {
        return;
    };
    for id in String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|id| !id.is_empty())
    {
        let _ = Command::new(runsc)
            .arg(&root_arg)
            .args(["delete", "--force", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

pub fn agent_status_ok(outcome: &Outcome) -> bool {
    outcome.status == ExitStatus::Code(0)
}

/// Paths and settings shared by every sandbox the bench starts directly.
pub struct Env {
    pub runsc_binary: PathBuf,
    pub runsc: Runsc,
    pub root: PathBuf,
    pub rootfs: PathBuf,
    pub agent_dir: PathBuf,
    pub bundles: PathBuf,
    pub agent_config: AgentConfig,
    pub limits: Limits,
    /// As the server passes it to the bundle (pinned CPU features, if configured).
    pub cpu_features: Option<String>,
    pub wheelhouse: Option<PathBuf>,
    pub ca_bundle: Option<PathBuf>,
    pub cgroup_parent: String,
    pub agent_binary: PathBuf,
    pub server_binary: PathBuf,
    pub base: PathBuf,
    pub version: String,
}

impl Env {
    /// `features` must be detected before the reaper starts (detection waits for its children).
    pub fn new(base: &Path, runsc_binary: PathBuf, features: Features) -> io::Result<Env> {
        // The configuration the servers started by the bench will read (they inherit this
        // environment), so directly started sandboxes get the same limits, image and bundle.
        let config = Config::from_env().map_err(|error| io::Error::other(error.0))?;
        let root = base.join("runsc");
        let agent_dir = base.join("agent");
        let bundles = base.join("bundles");
        for dir in [&root, &agent_dir, &bundles] {
            std::fs::create_dir_all(dir)?;
        }
        support::register_runsc_root(&root);
        // SANDBOX_AGENT_PATH (as for the server) allows trying another agent build.
        let agent_binary = std::env::var_os("SANDBOX_AGENT_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sandbox-agent")));
        std::fs::copy(&agent_binary, agent_dir.join(bundle::AGENT_FILE))?;
        let limits = config.limits.clone();
        let agent_config = sandbox::runtime::agent_config(&config);
        let cgroup_parent = base
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        support::register_cgroup_parent(&cgroup_parent);
        let version = features.version.clone();
        Ok(Env {
            runsc: Runsc::new(runsc_binary.clone(), root.clone(), features),
            runsc_binary,
            root,
            rootfs: config.rootfs.clone(),
            agent_dir,
            bundles,
            agent_config,
            limits,
            cpu_features: config.cpu_features.clone(),
            wheelhouse: config.wheelhouse.clone(),
            ca_bundle: config.ca_bundle.clone(),
            cgroup_parent,
            agent_binary,
            server_binary: PathBuf::from(env!("CARGO_BIN_EXE_sandbox-server")),
            base: base.to_path_buf(),
            version,
        })
    }

    /// A fixed-length container id (ids that prefix each other confuse runsc).
    fn next_id(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        format!(
            "bench{:08}{:06}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Write the bundle of a new container; `init` replaces the agent as its first process.
    fn write_bundle(&self, id: &str, init: Option<&[&str]>, standbys: bool) -> io::Result<PathBuf> {
        let dir = self.bundles.join(id);
        std::fs::create_dir_all(&dir)?;
        let cgroup = format!("/{}/{id}", self.cgroup_parent);
        let agent_config = AgentConfig {
            python_standby: standbys,
            bash_standby: standbys,
            file_standby: standbys,
            ..self.agent_config.clone()
        };
        let mut spec = bundle::spec(&bundle::BundleSpec {
            rootfs: &self.rootfs,
            agent_dir: &self.agent_dir,
            agent: &agent_config,
            limits: &self.limits,
            cgroup: &cgroup,
            cpu_features: self.cpu_features.as_deref(),
            wheelhouse: self.wheelhouse.as_deref(),
            ca_bundle: self.ca_bundle.as_deref(),
            netns: None,
            hosts: None,
        });
        if let Some(args) = init {
            // A bare container: its first process runs as plain root without capabilities,
            // as user code does under the agent (the agent's own uid is only for the agent).
            spec["process"]["args"] = serde_json::json!(args);
            spec["process"]["user"] = serde_json::json!({"uid": 0, "gid": 0});
            if let Some(process) = spec["process"].as_object_mut() {
                process.remove("capabilities");
            }
        }
        std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&spec)?)?;
        Ok(dir)
    }

    fn runsc_command(&self) -> Command {
        let mut command = Command::new(&self.runsc_binary);
        command.arg(format!("--root={}", self.root.display()));
        command
    }

    fn delete(&self, id: &str, bundle: &Path) -> io::Result<Duration> {
        let started = Instant::now();
        let status = support::run_status(&mut self.runsc.delete_force(id), STEP_TIMEOUT)?;
        let elapsed = started.elapsed();
        let _ = std::fs::remove_dir_all(bundle);
        if status != 0 {
            return Err(io::Error::other(format!(
                "runsc delete {id} exited with {status}"
            )));
        }
        Ok(elapsed)
    }
}

fn log_tail(bundle: &Path) -> String {
    let text = std::fs::read_to_string(bundle.join("sandbox.log")).unwrap_or_default();
    let start = text.len().saturating_sub(1500);
    text.get(start..).unwrap_or("").to_string()
}

/// Total size in bytes of the files under `dir` (recursively).
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_size(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The result of one execution through the agent.
pub struct Outcome {
    pub status: ExitStatus,
    pub elapsed: Duration,
    pub stdout_bytes: u64,
    /// Stdout frames received (their average size shows how the agent reads the pipe).
    pub stdout_frames: u64,
    /// The first MiB of stdout.
    pub stdout: Vec<u8>,
}

/// A sandbox whose first process is our agent, driven over its stdio.
pub struct AgentSandbox<'a> {
    env: &'a Env,
    pub id: String,
    bundle: PathBuf,
    to_agent: Option<ChildStdin>,
    from_agent: Option<ChildStdout>,
    decoder: FrameDecoder,
    buffer: Vec<u8>,
    next_exec: u32,
    /// From spawning `runsc run --detach` to its exit.
    pub run_returned: Duration,
    /// From spawning `runsc run --detach` to the agent's Ready frame.
    pub ready: Duration,
    deleted: bool,
}

impl<'a> AgentSandbox<'a> {
    pub fn start(env: &'a Env) -> io::Result<AgentSandbox<'a>> {
        Self::start_with(env, true)
    }

    /// `standbys: false` starts the agent without the processes it starts ahead of requests
    /// (the Python forkserver and its child, a bash).
    pub fn start_with(env: &'a Env, standbys: bool) -> io::Result<AgentSandbox<'a>> {
        let id = env.next_id();
        let bundle = env.write_bundle(&id, None, standbys)?;
        let command = env.runsc.run_detached(&bundle, &id, false);
        let (mut sandbox, child, started) = AgentSandbox::launch(env, id, bundle, command)?;
        // The agent's hello; end-of-file here means runsc failed (all writers are gone).
        match sandbox.next_frame()? {
            FromAgent::Ready(_) => {}
            other => {
                return Err(io::Error::other(format!(
                    "unexpected frame before ready: {other:?}"
                )));
            }
        }
        sandbox.ready = started.elapsed();
        let (code, exited_at) = support::wait_timed(child.id(), STEP_TIMEOUT)
            .ok_or_else(|| io::Error::other("runsc run --detach did not return"))?;
        sandbox.run_returned = exited_at - started;
        if code != 0 {
            return Err(io::Error::other(format!(
                "runsc run exited with {code}: {}",
                log_tail(&sandbox.bundle)
            )));
        }
        Ok(sandbox)
    }

    fn next_frame(&mut self) -> io::Result<FromAgent> {
        loop {
            if let Some(frame) = self.decoder.next_from_agent().map_err(io::Error::other)? {
                return Ok(frame);
            }
            let reader = self
                .from_agent
                .as_mut()
                .ok_or_else(|| io::Error::other("agent pipe closed"))?;
            let n = reader.read(&mut self.buffer)?;
            if n == 0 {
                return Err(io::Error::other(format!(
                    "the agent's stdout closed; log: {}",
                    log_tail(&self.bundle)
                )));
            }
            self.decoder.push(&self.buffer[..n]);
        }
    }

    /// Spawn `command` (`runsc run` or `restore`, detached) with the agent's pipes as its
    /// stdin/stdout and the bundle's log as stderr; returns the sandbox, the runsc child and
    /// when it was spawned.
    fn launch(
        env: &'a Env,
        id: String,
        bundle: PathBuf,
        mut command: Command,
    ) -> io::Result<(AgentSandbox<'a>, std::process::Child, Instant)> {
        let log = File::create(bundle.join("sandbox.log"))?;
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let started = Instant::now();
        let mut child = support::spawn(&mut command)?;
        drop(command);
        let sandbox = AgentSandbox {
            env,
            id,
            bundle,
            to_agent: child.stdin.take(),
            from_agent: child.stdout.take(),
            decoder: FrameDecoder::new(),
            buffer: vec![0; 256 * 1024],
            next_exec: 1,
            run_returned: Duration::ZERO,
            ready: Duration::ZERO,
            deleted: false,
        };
        Ok((sandbox, child, started))
    }

    /// Run code through the agent: from writing the spawn frame to reading the exit frame.
    pub fn exec(
        &mut self,
        language: &str,
        code: &str,
        env: &[(&str, &str)],
    ) -> io::Result<Outcome> {
        let exec = ExecId(self.next_exec);
        self.next_exec += 1;
        let language = Language::parse(language)
            .ok_or_else(|| io::Error::other(format!("no language {language:?}")))?;
        let request = SpawnRequest {
            language,
            code: code.into(),
            env: env
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            cwd: "/root".into(),
            limits: self.env.agent_config.limits.clone(),
            file: None,
            pty: None,
        };
        let mut frame = Vec::new();
        ToAgent::Spawn(exec, request).encode(&mut frame);
        let started = Instant::now();
        self.write_to_agent(&frame)?;
        let mut stdout_bytes = 0u64;
        let mut stdout_frames = 0u64;
        let mut stdout = Vec::new();
        // Output is given back to the agent's window in batches, as the server does
        // (runtime::execs).
        let mut owed_credit = 0u32;
        loop {
            match self.next_frame()? {
                FromAgent::Output(id, Stream::Stdout, data) if id == exec => {
                    stdout_bytes += data.len() as u64;
                    stdout_frames += 1;
                    let room = (1usize << 20).saturating_sub(stdout.len());
                    stdout.extend_from_slice(&data[..room.min(data.len())]);
                    owed_credit += data.len() as u32;
                    if owed_credit >= CREDIT_BATCH_BYTES {
                        self.send(&ToAgent::Credit(exec, owed_credit))?;
                        owed_credit = 0;
                    }
                }
                FromAgent::Exited(id, status) if id == exec => {
                    return Ok(Outcome {
                        status,
                        elapsed: started.elapsed(),
                        stdout_bytes,
                        stdout_frames,
                        stdout,
                    })
                }
                FromAgent::SpawnFailed(id, message) if id == exec => {
                    return Err(io::Error::other(format!("spawn failed: {message}")))
                }
                _ => {}
            }
        }
    }

    /// Write one frame to the agent.
    fn send(&mut self, frame: &ToAgent) -> io::Result<()> {
        let mut bytes = Vec::new();
        frame.encode(&mut bytes);
        self.write_to_agent(&bytes)
    }

    fn write_to_agent(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.to_agent
            .as_mut()
            .ok_or_else(|| io::Error::other("agent pipe closed"))?
            .write_all(bytes)
    }

    /// `runsc exec ID ARGS...` on this sandbox: from spawning it to reading all of its stdout and
    /// collecting its exit status. Returns the elapsed time and the stdout byte count.
    pub fn runsc_exec(&self, args: &[&str]) -> io::Result<(Duration, u64, i32)> {
        runsc_exec(self.env, &self.id, args)
    }

    /// `runsc checkpoint --image-path=IMAGE ID` (the server's command line), timed around the
    /// command; the stopped container is then deleted (not timed).
    pub fn checkpoint(mut self, image: &Path) -> io::Result<Duration> {
        std::fs::create_dir_all(image)?;
        let started = Instant::now();
        let status = support::run_status(
            &mut self.env.runsc.checkpoint(image, &self.id),
            STEP_TIMEOUT,
        )?;
        let elapsed = started.elapsed();
        if status != 0 {
            return Err(io::Error::other(format!(
                "runsc checkpoint {} exited with {status}: {}",
                self.id,
                log_tail(&self.bundle)
            )));
        }
        self.deleted = true;
        self.to_agent = None;
        self.from_agent = None;
        self.env.delete(&self.id, &self.bundle)?;
        Ok(elapsed)
    }

    /// `runsc restore --detach --image-path=IMAGE --bundle B NEWID` (the server's command line)
    /// into a new container whose bundle is the same as a fresh one's, with the same kind of
    /// stdio as the agent gets from the server (pipes: the agent ends when its stdin closes).
    /// Returns once the command has returned, with the time it took. The restored agent is not
    /// asked for anything.
    pub fn restore(env: &'a Env, image: &Path) -> io::Result<(AgentSandbox<'a>, Duration)> {
        let id = env.next_id();
        let bundle = env.write_bundle(&id, None, true)?;
        let command = env.runsc.restore_detached(image, &bundle, &id, false);
        let (mut sandbox, child, started) = AgentSandbox::launch(env, id, bundle, command)?;
        let (code, exited_at) = support::wait_timed(child.id(), STEP_TIMEOUT)
            .ok_or_else(|| io::Error::other("runsc restore --detach did not return"))?;
        let elapsed = exited_at - started;
        sandbox.run_returned = elapsed;
        if code != 0 {
            return Err(io::Error::other(format!(
                "runsc restore exited with {code}: {}",
                log_tail(&sandbox.bundle)
            )));
        }
        Ok((sandbox, elapsed))
    }

    /// Close the agent's pipes (it exits) and `runsc delete --force`; the time of the delete.
    pub fn delete(mut self) -> io::Result<Duration> {
        self.deleted = true;
        self.to_agent = None;
        self.from_agent = None;
        self.env.delete(&self.id, &self.bundle)
    }
}

impl Drop for AgentSandbox<'_> {
    fn drop(&mut self) {
        if !self.deleted {
            self.to_agent = None;
            self.from_agent = None;
            let _ = self.env.delete(&self.id, &self.bundle);
        }
    }
}

pub fn runsc_exec(env: &Env, id: &str, args: &[&str]) -> io::Result<(Duration, u64, i32)> {
    let mut command = env.runsc_command();
    command.arg("exec").arg(id).args(args);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut buffer = vec![0u8; 256 * 1024];
    let started = Instant::now();
    let mut child = support::spawn(&mut command)?;
    let mut total = 0u64;
    if let Some(mut stdout) = child.stdout.take() {
        loop {
            match stdout.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }
    let code = support::wait(child.id(), STEP_TIMEOUT)
        .ok_or_else(|| io::Error::other("runsc exec did not exit"))?;
    Ok((started.elapsed(), total, code))
}

/// A sandbox started with plain runsc (first process `sleep`, no agent): the raw baseline.
pub struct RawSandbox<'a> {
    env: &'a Env,
    pub id: String,
    bundle: PathBuf,
    deleted: bool,
}

impl<'a> RawSandbox<'a> {
    /// `runsc run --detach` until it returns; the time it took.
    pub fn start(env: &'a Env) -> io::Result<(RawSandbox<'a>, Duration)> {
        let id = env.next_id();
        let bundle = env.write_bundle(&id, Some(&["/bin/sleep", "1000000"]), false)?;
        let log = File::create(bundle.join("sandbox.log"))?;
        let mut command = env.runsc.run_detached(&bundle, &id, false);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let started = Instant::now();
        let child = support::spawn(&mut command)?;
        drop(command);
        let sandbox = RawSandbox {
            env,
            id,
            bundle,
            deleted: false,
        };
        let (code, exited_at) = support::wait_timed(child.id(), STEP_TIMEOUT)
            .ok_or_else(|| io::Error::other("runsc run did not return"))?;
        let elapsed = exited_at - started;
        if code != 0 {
            return Err(io::Error::other(format!(
                "runsc run exited with {code}: {}",
                log_tail(&sandbox.bundle)
            )));
        }
        Ok((sandbox, elapsed))
    }

    pub fn runsc_exec(&self, args: &[&str]) -> io::Result<(Duration, u64, i32)> {
        runsc_exec(self.env, &self.id, args)
    }

    pub fn delete(mut self) -> io::Result<Duration> {
        self.deleted = true;
        self.env.delete(&self.id, &self.bundle)
    }
}

impl Drop for RawSandbox<'_> {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = self.env.delete(&self.id, &self.bundle);
        }
    }
}
