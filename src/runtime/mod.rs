//! The `runsc` driver: creates sandboxes, runs executions in them through their agent, and
//! deletes them. It owns the agents' pipes and the `runsc` helper processes, and reports what
//! happens as [`Notice`]s for the owner of each sandbox (an HTTP request or a session).
//!
//! It never blocks: `runsc run` and `runsc delete` are child processes whose exit arrives via
//! [`Runtime::reap`] (the server is a child subreaper and reaps everything, including the
//! sandbox processes `runsc` leaves behind), and the agents' pipes are non-blocking and
//! registered with the event loop.

pub mod bundle;
mod error;
pub mod exec;
pub mod health;
pub mod ids;
pub mod lifecycle;
pub mod pool;
pub mod runsc;
pub mod state_lock;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use mio::unix::pipe::{Receiver, Sender};
use mio::{Interest, Registry};
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::agent_protocol::{
    AgentConfig, ExecId, ExitStatus, FrameDecoder, FromAgent, Language, ProcessLimits,
    SpawnRequest, Stream, ToAgent, MAX_CHUNK_BYTES,
};
use crate::config::Config;
use crate::io_token::{token, Tag};
use crate::timers::{TimerId, Timers};
pub use error::RuntimeError;
use exec::{ExecOutcome, ExecTracker, OutputVerdict, Reason};
use ids::SandboxId;
use lifecycle::{Action, Event, Lifecycle, State};
use pool::{Admission, Pools, Readiness, Slots};

/// The runtime's handle of a sandbox (small, never reused); the public id is [`SandboxId`].
pub type SandboxKey = u64;

/// Who a sandbox's notices go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Owner {
    Http(u64),
    Session(u64),
}

/// Bytes read from one agent before the loop serves others.
const READ_BUDGET: usize = 256 * 1024;
/// Stdin accepted for one execution and not yet written to its process.
pub const MAX_STDIN_IN_FLIGHT: u64 = 1024 * 1024;
/// After a kill, how long the agent has to report the exit before the sandbox is deleted.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// One execution to run.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub language: Language,
    pub code: String,
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEvent {
    Ready,
    StartFailed(String),
    /// A ready sandbox died (its executions were finished with `SandboxLost` first).
    Lost(String),
    Deleted,
    ExecStarted(ExecId),
    ExecSpawnFailed(ExecId, String),
    Output(ExecId, Stream, Vec<u8>),
    ExecFinished(ExecId, ExecOutcome),
    /// `runsc checkpoint` finished; the container is stopped either way.
    Checkpointed(Result<(), String>),
    /// The checkpoint was refused before anything happened: the sandbox runs on.
    CheckpointRefused(String),
}

/// A runtime event for the owner of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub owner: Owner,
    pub sandbox: SandboxKey,
    pub event: RuntimeEvent,
}

#[derive(Debug, Clone, Copy)]
enum RuntimeTimer {
    Start(SandboxKey),
    ExecTimeout(SandboxKey, ExecId),
    KillGrace(SandboxKey, ExecId),
}

#[derive(Debug, Clone, Copy)]
enum ChildPurpose {
    /// `runsc run` or `runsc restore`.
    Run(SandboxKey),
    Delete(SandboxKey),
    Checkpoint(SandboxKey),
}

struct Sandbox {
    id: SandboxId,
    /// The runsc container id: new for every run or restore (a restore cannot reuse the id of
    /// the stopped container until that one is deleted).
    container: String,
    /// The image the next restore starts from, and whether the agent must then end every
    /// other process (a sandbox started from a snapshot keeps files, not processes).
    restore_from: Option<(PathBuf, bool)>,
    /// Where the requested checkpoint will write; set while the agent is being asked whether
    /// a checkpoint can work.
    checkpoint_to: Option<PathBuf>,
    /// Network egress (namespace, veth), if the sandbox asked for it.
    network: Option<network::SandboxNetwork>,
    lifecycle: Lifecycle,
    owner: Option<Owner>,
    to_agent: Option<Sender>,
    from_agent: Option<Receiver>,
    outgoing: Vec<u8>,
    decoder: FrameDecoder,
    /// The owner cannot take more output now: leave the agent's pipe unread.
    paused: bool,
    /// The pipe may hold unread data (edge-triggered readiness was not fully consumed).
    readable: bool,
    execs: HashMap<ExecId, (ExecTracker, Vec<TimerId>)>,
    next_exec: ExecId,
    bundle: PathBuf,
    created: Instant,
    start_timer: Option<TimerId>,
    /// Started by `runsc restore` (its failures say nothing about runsc itself).
    from_image: bool,
}

impl Sandbox {
    /// A sandbox with no container yet: the caller starts one (or a restore) next.
    fn new(
        id: SandboxId,
        owner: Option<Owner>,
        lifecycle: Lifecycle,
        bundle: PathBuf,
        network: Option<network::SandboxNetwork>,
    ) -> Self {
        Sandbox {
            id,
            container: String::new(),
            restore_from: None,
            checkpoint_to: None,
            network,
            lifecycle,
            owner,
            to_agent: None,
            from_agent: None,
            outgoing: Vec::new(),
            decoder: FrameDecoder::new(),
            paused: false,
            readable: false,
            execs: HashMap::new(),
            next_exec: ExecId(1),
            bundle,
            created: Instant::now(),
            start_timer: None,
            from_image: false,
        }
    }
}

/// Counters the metrics endpoint reports.
#[derive(Debug, Default, Clone)]
pub struct RuntimeStats {
    pub created: u64,
    pub start_failures: u64,
    pub lost: u64,
    /// Pooled sandboxes deleted to give their slot to real work.
    pub pool_evictions: u64,
    /// Seconds from `runsc run` to the agent's hello, one entry per ready sandbox since the
    /// last drain.
    pub start_seconds: Vec<f64>,
}

pub struct Runtime {
    /// Held for the life of the process: one instance per state directory.
    state_lock: state_lock::StateLock,
    registry: Registry,
    runsc: runsc::Runsc,
    rootfs: PathBuf,
    agent_dir: PathBuf,
    bundles_dir: PathBuf,
    cgroup_parent: String,
    agent_config: AgentConfig,
    config: Config,
    sandboxes: HashMap<SandboxKey, Sandbox>,
    by_id: HashMap<SandboxId, SandboxKey>,
    children: HashMap<i32, ChildPurpose>,
    /// Unowned sandboxes (starting or ready): the fresh pool, and sandboxes already restored
    /// (and reset) from snapshot images used recently, so that a create from one of those is as
    /// quick as one from the fresh pool. They give their slots up to real work (`pool`).
    pools: Pools,
    /// Sandboxes admitted while every slot was taken, in the order they get a slot.
    waiting: VecDeque<SandboxKey>,
    /// Sandboxes whose agent pipe must be read again.
    pending_reads: HashSet<SandboxKey>,
    next_key: SandboxKey,
    timers: Timers<RuntimeTimer>,
    notices: VecDeque<Notice>,
    /// Network egress for the sandboxes that ask for it (`None`: disabled or impossible here).
    network: Option<network::Network>,
    network_unavailable: String,
    pub stats: RuntimeStats,
    /// How the last sandbox starts went (for readiness).
    health: health::StartHealth,
}

impl Runtime {
    /// Prepare the state directory (after cleaning what a previous instance left there).
    pub fn new(config: &Config, registry: Registry) -> io::Result<Self> {
        // First of all: the cleanup below would destroy another live instance's sandboxes.
        let state_lock = state_lock::StateLock::acquire(&config.state_dir)?;
        let features = runsc::Features::detect(&config.runsc).map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("cannot run {}: {error}", config.runsc.display()),
            )
        })?;
        eprintln!(
            "runtime: {} (overlay2: {})",
            features.version, features.overlay2
        );
        if !config.rootfs.join("usr/bin/python3").exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "the sandbox image {} is missing or incomplete: run scripts/setup.sh",
                    config.rootfs.display()
                ),
            ));
        }
        if let Some(bundle) = &config.ca_bundle {
            if !bundle.is_file() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("SANDBOX_CA_BUNDLE {} is not a file", bundle.display()),
                ));
            }
        }
        if let Some(wheelhouse) = &config.wheelhouse {
            if !wheelhouse.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "SANDBOX_WHEELHOUSE {} is not a directory",
                        wheelhouse.display()
                    ),
                ));
            }
        }
        let (network, network_unavailable) = egress_network(config);
        let state_dir = &config.state_dir;
        let runsc = runsc::Runsc::new(config.runsc.clone(), state_dir.join("runsc"), features);
        let bundles_dir = state_dir.join("bundles");
        let agent_dir = state_dir.join("agent");
        let cgroup_parent = format!(
            "/{}",
            state_dir
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_else(|| "cloud-run-sandbox".into())
        );
        cleanup::remove_leftovers(&runsc, state_dir, &cgroup_parent);
        for dir in [state_dir, runsc.state_root(), &bundles_dir, &agent_dir] {
            std::fs::create_dir_all(dir)?;
        }
        // The sandbox sees a directory holding only the agent, never the host's build tree.
        let agent_copy = agent_dir.join(bundle::AGENT_FILE);
        // Readable and executable by all: the sandbox starts it as its own uid, not root.
        std::fs::copy(&config.agent_path, &agent_copy)
            .and_then(|_| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&agent_copy, std::fs::Permissions::from_mode(0o755))
            })
            .map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!(
                        "cannot copy the agent {}: {error}",
                        config.agent_path.display()
                    ),
                )
            })?;
        let limits = &config.limits;
        let agent_config = AgentConfig {
            limits: ProcessLimits {
                address_space_bytes: Some(limits.process_memory_mb * 1024 * 1024),
                processes: Some(limits.max_processes),
                cpu_seconds: None,
                file_size_bytes: Some(limits.max_file_mb * 1024 * 1024),
                open_files: Some(1024),
            },
            base_env: bundle::base_env(
                config.wheelhouse.is_some(),
                false,
                config.ca_bundle.is_some(),
            ),
            python_standby: true,
        };
        Ok(Runtime {
            state_lock,
            registry,
            runsc,
            rootfs: config.rootfs.clone(),
            agent_dir,
            bundles_dir,
            cgroup_parent,
            agent_config,
            config: config.clone(),
            sandboxes: HashMap::new(),
            by_id: HashMap::new(),
            children: HashMap::new(),
            pools: Pools::new(if config.snapshot_pool_size == 0 {
                0
            } else {
                config.snapshot_pools_max
            }),
            waiting: VecDeque::new(),
            pending_reads: HashSet::new(),
            next_key: 1,
            timers: Timers::default(),
            notices: VecDeque::new(),
            network,
            network_unavailable,
            stats: RuntimeStats::default(),
            health: health::StartHealth::default(),
        })
    }

    /// Sandboxes that exist as runsc sandboxes (pooled and being deleted included; not those
    /// waiting for a slot).
    pub fn live_sandboxes(&self) -> usize {
        self.sandboxes.len().saturating_sub(self.waiting.len())
    }

    /// Requests admitted that wait for a sandbox being deleted to free its slot.
    pub fn waiting_for_slot(&self) -> usize {
        self.waiting.len()
    }

    pub fn pool_ready(&self) -> usize {
        self.count_ready(self.pools.fresh())
    }

    pub fn snapshot_pool_ready(&self) -> usize {
        self.count_ready(self.pools.snapshot_sandboxes())
    }

    /// Snapshot images that have a pool now (at most `SANDBOX_SNAPSHOT_POOLS_MAX`).
    pub fn snapshot_pools(&self) -> usize {
        self.pools.snapshot_pools()
    }

    fn count_ready(&self, keys: impl Iterator<Item = SandboxKey>) -> usize {
        keys.filter(|key| self.state(*key) == Some(State::Ready))
            .count()
    }

    fn slots(&self) -> Slots {
        let releasing = self
            .sandboxes
            .values()
            .filter(|sandbox| {
                matches!(sandbox.lifecycle.state(), State::Deleting | State::Aborting)
            })
            .count();
        Slots {
            max: self.config.max_sandboxes,
            live: self.live_sandboxes(),
            releasing,
            waiting: self.waiting.len(),
        }
    }

    /// How a new sandbox gets a slot: real work (`owner`) may wait for one or take one from the
    /// pools; a pool refill only uses a free one.
    fn admit(&self, owner: Option<Owner>) -> Result<Admission, RuntimeError> {
        let slots = self.slots();
        let admission = match owner {
            Some(_) => self.pools.admit(slots),
            None if slots.free() > 0 => Admission::Start,
            None => Admission::Refuse,
        };
        match admission {
            Admission::Refuse => Err(RuntimeError::AtCapacity(self.config.max_sandboxes)),
            admission => Ok(admission),
        }
    }

    /// Queue the new sandbox `key` for a slot, giving up a pooled sandbox for it if admitted so.
    /// The wait is bounded by the create timeout.
    fn wait_for_slot(&mut self, key: SandboxKey, admission: Admission) {
        if let Admission::Evict(pooled) = admission {
            self.pools.remove(pooled);
            self.stats.pool_evictions += 1;
            self.delete(pooled);
        }
        let timer = self.timers.arm(
            Instant::now() + self.config.create_timeout,
            RuntimeTimer::Start(key),
        );
        if let Some(sandbox) = self.sandboxes.get_mut(&key) {
            sandbox.start_timer = Some(timer);
        }
        self.waiting.push_back(key);
    }

    /// Start waiting sandboxes in the slots freed since.
    fn grant_slots(&mut self) {
        while self.slots().can_grant() {
            let Some(key) = self.waiting.pop_front() else {
                return;
            };
            let Some(sandbox) = self.sandboxes.get_mut(&key) else {
                continue;
            };
            if let Some(timer) = sandbox.start_timer.take() {
                self.timers.cancel(timer);
            }
            sandbox.created = Instant::now();
            self.apply(key, Event::SlotGranted);
        }
    }

    /// How far a pooled sandbox is from being usable.
    fn readiness(sandboxes: &HashMap<SandboxKey, Sandbox>, key: SandboxKey) -> Readiness {
        match sandboxes.get(&key).map(|sandbox| sandbox.lifecycle.state()) {
            Some(State::Ready) => Readiness::Ready,
            Some(State::Starting) => Readiness::Starting,
            _ => Readiness::Unusable,
        }
    }

    pub fn state(&self, key: SandboxKey) -> Option<State> {
        self.sandboxes
            .get(&key)
            .map(|sandbox| sandbox.lifecycle.state())
    }

    pub fn sandbox_id(&self, key: SandboxKey) -> Option<SandboxId> {
        self.sandboxes.get(&key).map(|sandbox| sandbox.id)
    }

    pub fn find(&self, id: &SandboxId) -> Option<SandboxKey> {
        self.by_id.get(id).copied()
    }

    pub fn next_notice(&mut self) -> Option<Notice> {
        self.notices.pop_front()
    }

    pub fn next_deadline(&mut self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    pub fn has_pending_work(&self) -> bool {
        !self.notices.is_empty()
            || self
                .pending_reads
                .iter()
                .any(|key| self.sandboxes.get(key).is_some_and(|s| !s.paused))
    }

    /// A sandbox for `owner`: a pooled one if any (ready or still starting), else a new one.
    /// The owner gets `Ready` (at once if it was ready) or `StartFailed`.
    pub fn acquire(&mut self, owner: Owner) -> Result<SandboxKey, RuntimeError> {
        let sandboxes = &self.sandboxes;
        if let Some(key) = self.pools.take_fresh(|key| Self::readiness(sandboxes, key)) {
            if self.hand_over(key, owner) {
                return Ok(key);
            }
        }
        self.create(Some(owner))
    }

    /// Give a pooled sandbox to `owner`, telling it at once if the sandbox is ready.
    fn hand_over(&mut self, key: SandboxKey, owner: Owner) -> bool {
        let Some(sandbox) = self.sandboxes.get_mut(&key) else {
            return false;
        };
        sandbox.owner = Some(owner);
        if sandbox.lifecycle.state() == State::Ready {
            self.notices.push_back(Notice {
                owner,
                sandbox: key,
                event: RuntimeEvent::Ready,
            });
        }
        true
    }

    /// A sandbox with the files of the snapshot image `image` and nothing else of it: a pooled
    /// one if there is one, else a restore (with `reset`). Without egress, the pool for that
    /// image is refilled afterwards (`SANDBOX_SNAPSHOT_POOL_SIZE`); a new pool beyond
    /// `SANDBOX_SNAPSHOT_POOLS_MAX` replaces the least recently used one.
    pub fn acquire_snapshot(
        &mut self,
        owner: Owner,
        image: PathBuf,
        egress: bool,
    ) -> Result<SandboxKey, RuntimeError> {
        if egress {
            let id = SandboxId::random().map_err(RuntimeError::NoRandomness)?;
            return self.restore(owner, id, image, true, true);
        }
        self.prune_snapshot_pools();
        for dropped in self.pools.use_snapshot(&image) {
            self.delete(dropped);
        }
        let sandboxes = &self.sandboxes;
        if let Some(key) = self
            .pools
            .take_snapshot(&image, |key| Self::readiness(sandboxes, key))
        {
            if self.hand_over(key, owner) {
                return Ok(key);
            }
        }
        let id = SandboxId::random().map_err(RuntimeError::NoRandomness)?;
        self.restore(owner, id, image, true, false)
    }

    /// Start the requests waiting for a slot in the slots freed since; then, in the slots still
    /// free, keep `pool_size` unowned sandboxes started, and for every snapshot image with a pool
    /// (most recently used first) `snapshot_pool_size` restored ones (forgetting images that
    /// are gone: the snapshot was replaced or deleted).
    pub fn refill_pool(&mut self) {
        self.grant_slots();
        self.refill_fresh_pool();
        for image in self.pools.images() {
            let wanted = self.config.snapshot_pool_size;
            if self.pools.snapshot_len(&image) >= wanted || self.slots().free() == 0 {
                continue;
            }
            // Only checked when a refill is due: on a mounted bucket this is a network call.
            if !image.is_dir() {
                self.prune_snapshot_pools();
                continue;
            }
            while self.pools.snapshot_len(&image) < wanted && self.slots().free() > 0 {
                let id = match SandboxId::random() {
                    Ok(id) => id,
                    Err(_) => return,
                };
                match self.restore_unowned(id, image.clone()) {
                    Ok(key) => {
                        if !self.pools.add_snapshot(&image, key) {
                            self.delete(key);
                        }
                    }
                    Err(error) => {
                        eprintln!(
                            "runtime: cannot refill the pool of {}: {error}",
                            image.display()
                        );
                        break;
                    }
                }
            }
        }
    }

    /// Delete pooled sandboxes of snapshot images that are gone (the snapshot was replaced or
    /// deleted), so nobody gets an outdated one.
    pub fn prune_snapshot_pools(&mut self) {
        for key in self.pools.drop_pools(|image| !image.is_dir()) {
            self.delete(key);
        }
    }

    fn refill_fresh_pool(&mut self) {
        while self.pools.fresh_len() < self.config.pool_size && self.slots().free() > 0 {
            match self.create(None) {
                Ok(key) => self.pools.add_fresh(key),
                Err(error) => {
                    eprintln!("runtime: cannot refill the pool: {error}");
                    return;
                }
            }
        }
    }

    /// Start a new sandbox. It is ready when its owner gets `RuntimeEvent::Ready`.
    pub fn create(&mut self, owner: Option<Owner>) -> Result<SandboxKey, RuntimeError> {
        self.create_with(owner, false)
    }

    /// Start a new sandbox, with network egress if `egress`.
    pub fn create_with(
        &mut self,
        owner: Option<Owner>,
        egress: bool,
    ) -> Result<SandboxKey, RuntimeError> {
        let admission = self.admit(owner)?;
        let key = self.next_key;
        self.next_key += 1;
        let id = SandboxId::random().map_err(RuntimeError::NoRandomness)?;
        let bundle_dir = self.bundles_dir.join(id.to_string());
        let network = if egress {
            Some(self.prepare_network(&bundle_dir)?)
        } else {
            None
        };
        let lifecycle = match admission {
            Admission::Start => Lifecycle::new(),
            _ => Lifecycle::waiting(),
        };
        self.sandboxes
            .insert(key, Sandbox::new(id, owner, lifecycle, bundle_dir, network));
        self.by_id.insert(id, key);
        if admission != Admission::Start {
            self.stats.created += 1;
            self.wait_for_slot(key, admission);
            return Ok(key);
        }
        match self.start_fresh(key) {
            Ok(()) => {
                self.stats.created += 1;
                Ok(key)
            }
            Err(error) => {
                // Nothing was started: forget the sandbox without a delete.
                if let Some(sandbox) = self.sandboxes.remove(&key) {
                    self.by_id.remove(&sandbox.id);
                    if let (Some(manager), Some(network)) =
                        (self.network.as_mut(), sandbox.network.as_ref())
                    {
                        manager.destroy(network);
                    }
                    let _ = std::fs::remove_dir_all(&sandbox.bundle);
                }
                self.stats.start_failures += 1;
                let error = RuntimeError::Start(error);
                self.health.failed(&error.to_string());
                Err(error)
            }
        }
    }

    /// Spawn `runsc run` for the sandbox `key` (new, or waiting until now), under the create
    /// timeout.
    fn start_fresh(&mut self, key: SandboxKey) -> io::Result<()> {
        let container = SandboxId::random()?.to_string();
        let Some(sandbox) = self.sandboxes.get(&key) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such sandbox"));
        };
        let (bundle, network) = (sandbox.bundle.clone(), sandbox.network.clone());
        let (to_agent, from_agent) =
            self.start_container(key, &container, &bundle, None, network.as_ref())?;
        let start_timer = self.timers.arm(
            Instant::now() + self.config.create_timeout,
            RuntimeTimer::Start(key),
        );
        if let Some(sandbox) = self.sandboxes.get_mut(&key) {
            sandbox.container = container;
            sandbox.to_agent = Some(to_agent);
            sandbox.from_agent = Some(from_agent);
            sandbox.start_timer = Some(start_timer);
        }
        Ok(())
    }

    /// Network egress for a new sandbox: its namespace and veth, and its `/etc/hosts` (the
    /// resolved policy) in the bundle.
    fn prepare_network(
        &mut self,
        bundle_dir: &Path,
    ) -> Result<network::SandboxNetwork, RuntimeError> {
        let manager = self
            .network
            .as_mut()
            .ok_or_else(|| RuntimeError::EgressUnavailable(self.network_unavailable.clone()))?;
        let (allowed, hosts) = manager.resolve().map_err(RuntimeError::Network)?;
        std::fs::create_dir_all(bundle_dir)
            .and_then(|()| std::fs::write(bundle_dir.join("hosts"), hosts))
            .map_err(RuntimeError::Prepare)?;
        manager.create(&allowed).map_err(RuntimeError::Network)
    }

    /// Whether sandboxes can have network egress here (and if not, why).
    pub fn egress_unavailable(&self) -> Option<&str> {
        self.network
            .is_none()
            .then_some(self.network_unavailable.as_str())
    }

    /// Why this server cannot create sandboxes now (`None`: it can). Looks at a few paths on
    /// local disk, so it is cheap enough for every readiness probe.
    pub fn cannot_create(&self) -> Option<String> {
        let agent_copy = self.agent_dir.join(bundle::AGENT_FILE);
        health::missing_files(&self.config.state_dir, &agent_copy, &self.rootfs)
            .or_else(|| self.health.problem(self.config.ready_start_failures))
    }

    /// Shutdown: remove this instance's (now empty) cgroup directories.
    pub fn remove_cgroups(&self) {
        cleanup::remove_cgroups(&self.cgroup_parent);
    }

    /// Shutdown, last step: remove the state directory's lock file (the lock is held until
    /// the process exits).
    pub fn remove_state_lock_file(&self) {
        self.state_lock.remove_file();
    }

    /// Shutdown: remove the egress table and namespaces.
    pub fn stop_network(&self) {
        if let Some(network) = &self.network {
            network.stop();
        }
    }

    /// Write config.json for the next container in `bundle_dir`. The cgroup is named after the
    /// container, not the sandbox: a restored container must not share a cgroup with the
    /// checkpointed one that is being deleted beside it.
    fn write_bundle(
        &self,
        container: &str,
        bundle_dir: &Path,
        network: Option<&network::SandboxNetwork>,
    ) -> io::Result<()> {
        std::fs::create_dir_all(bundle_dir)?;
        let cgroup = format!("{}/{}", self.cgroup_parent, container);
        let netns = network.map(|network| network.netns_path.as_path());
        let hosts = bundle_dir.join("hosts");
        let hosts = (network.is_some() && hosts.exists()).then_some(hosts.as_path());
        let wheelhouse = self.config.wheelhouse.as_deref();
        let agent = AgentConfig {
            base_env: bundle::base_env(
                wheelhouse.is_some(),
                netns.is_some(),
                self.config.ca_bundle.is_some(),
            ),
            ..self.agent_config.clone()
        };
        let spec = bundle::spec(&bundle::BundleSpec {
            rootfs: &self.rootfs,
            agent_dir: &self.agent_dir,
            agent: &agent,
            limits: &self.config.limits,
            cgroup: &cgroup,
            cpu_features: self.config.cpu_features.as_deref(),
            wheelhouse,
            ca_bundle: self.config.ca_bundle.as_deref(),
            netns,
            hosts,
        });
        std::fs::write(
            bundle_dir.join("config.json"),
            serde_json::to_vec_pretty(&spec)?,
        )
    }

    /// Spawn `runsc run` (or `runsc restore` from `image`) with fresh agent pipes.
    fn start_container(
        &mut self,
        key: SandboxKey,
        container: &str,
        bundle_dir: &Path,
        image: Option<&Path>,
        network: Option<&network::SandboxNetwork>,
    ) -> io::Result<(Sender, Receiver)> {
        self.write_bundle(container, bundle_dir, network)?;
        let egress = network.is_some();
        // The agent's stderr. Only its owner may open it: inside the sandbox that is the
        // agent's uid, not user code (agent::identity).
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(bundle_dir.join("sandbox.log"))?;
        let (mut to_agent, agent_stdin) = mio::unix::pipe::new()?;
        let (agent_stdout, mut from_agent) = mio::unix::pipe::new()?;
        let mut command = match image {
            Some(image) => self
                .runsc
                .restore_detached(image, bundle_dir, container, egress),
            None => self.runsc.run_detached(bundle_dir, container, egress),
        };
        command
            .stdin(Stdio::from(OwnedFd::from(agent_stdin)))
            .stdout(Stdio::from(OwnedFd::from(agent_stdout)))
            .stderr(Stdio::from(log));
        let child = command.spawn()?;
        // Dropping the command closes our copies of the agent's ends of the pipes, so that the
        // agent's exit shows up here as end-of-file.
        drop(command);
        self.children
            .insert(child.id() as i32, ChildPurpose::Run(key));
        self.registry.register(
            &mut from_agent,
            token(Tag::AgentOut, key),
            Interest::READABLE,
        )?;
        self.registry
            .register(&mut to_agent, token(Tag::AgentIn, key), Interest::WRITABLE)?;
        Ok((to_agent, from_agent))
    }

    /// Checkpoint a ready, idle sandbox into `image` (which must exist). The owner gets
    /// `Checkpointed`; the sandbox is then stopped, to be deleted or restored.
    /// With `with_running` (shutdown), running executions are checkpointed too: they go on
    /// after a restore, without an owner for their output.
    pub fn checkpoint(
        &mut self,
        key: SandboxKey,
        image: PathBuf,
        with_running: bool,
    ) -> Result<(), RuntimeError> {
        let sandbox = self.sandbox_in(key, State::Ready)?;
        if !sandbox.execs.is_empty() && !with_running {
            return Err(RuntimeError::WrongState("running an execution"));
        }
        if sandbox.checkpoint_to.is_some() {
            return Err(RuntimeError::WrongState("already being checkpointed"));
        }
        let dropped: Vec<TimerId> = sandbox
            .execs
            .drain()
            .flat_map(|(_, (_, timers))| timers)
            .collect();
        // A failed `runsc checkpoint` leaves the container stopped, so first ask the agent
        // about what is known to make it fail; the answer (`Inspection`) continues this.
        sandbox.checkpoint_to = Some(image);
        ToAgent::Inspect.encode(&mut sandbox.outgoing);
        dropped
            .into_iter()
            .for_each(|timer| self.timers.cancel(timer));
        self.flush_to_agent(key);
        Ok(())
    }

    /// The sandbox `key`, if it is in `state` (the error names the state it is in).
    fn sandbox_in(&mut self, key: SandboxKey, state: State) -> Result<&mut Sandbox, RuntimeError> {
        let sandbox = self
            .sandboxes
            .get_mut(&key)
            .ok_or(RuntimeError::NoSuchSandbox)?;
        let current = sandbox.lifecycle.state();
        if current != state {
            return Err(RuntimeError::WrongState(current.name()));
        }
        Ok(sandbox)
    }

    /// Start a stopped sandbox again from `image` (after a checkpoint or a snapshot). The owner
    /// gets `Ready` or `StartFailed`.
    pub fn restore_in_place(
        &mut self,
        key: SandboxKey,
        image: PathBuf,
        reset: bool,
    ) -> Result<(), RuntimeError> {
        let sandbox = self.sandbox_in(key, State::Stopped)?;
        sandbox.restore_from = Some((image, reset));
        self.apply(key, Event::RestoreRequested);
        Ok(())
    }

    /// A sandbox restored from a saved image, under the public id `id`. With `reset`, it keeps
    /// the image's files but none of its processes (snapshots).
    pub fn restore(
        &mut self,
        owner: Owner,
        id: SandboxId,
        image: PathBuf,
        reset: bool,
        egress: bool,
    ) -> Result<SandboxKey, RuntimeError> {
        self.restore_for(Some(owner), id, image, reset, egress)
    }

    /// A pooled sandbox restored from a snapshot image (reset, no egress, no owner yet).
    fn restore_unowned(
        &mut self,
        id: SandboxId,
        image: PathBuf,
    ) -> Result<SandboxKey, RuntimeError> {
        self.restore_for(None, id, image, true, false)
    }

    fn restore_for(
        &mut self,
        owner: Option<Owner>,
        id: SandboxId,
        image: PathBuf,
        reset: bool,
        egress: bool,
    ) -> Result<SandboxKey, RuntimeError> {
        if self.by_id.contains_key(&id) {
            return Err(RuntimeError::WrongState("already running here"));
        }
        let admission = self.admit(owner)?;
        let key = self.next_key;
        self.next_key += 1;
        let bundle_dir = self.bundles_dir.join(id.to_string());
        let network = if egress {
            Some(self.prepare_network(&bundle_dir)?)
        } else {
            None
        };
        let lifecycle = match admission {
            Admission::Start => Lifecycle::stopped(),
            _ => Lifecycle::waiting(),
        };
        let mut sandbox = Sandbox::new(id, owner, lifecycle, bundle_dir, network);
        sandbox.restore_from = Some((image, reset));
        self.sandboxes.insert(key, sandbox);
        self.by_id.insert(id, key);
        self.stats.created += 1;
        match admission {
            Admission::Start => self.apply(key, Event::RestoreRequested),
            _ => self.wait_for_slot(key, admission),
        }
        Ok(key)
    }

    /// Follow an execution that was running when the sandbox was checkpointed and runs on in
    /// the restored sandbox: its output and end are reported again, under the usual timeout.
    pub fn adopt_exec(&mut self, key: SandboxKey, exec: ExecId) -> Result<(), RuntimeError> {
        let output_limit = self.config.limits.max_output_bytes;
        let timeout = self.config.limits.exec_timeout;
        let sandbox = self
            .sandboxes
            .get_mut(&key)
            .ok_or(RuntimeError::NoSuchSandbox)?;
        sandbox.next_exec = sandbox.next_exec.max(exec.next().unwrap_or(exec));
        let now = Instant::now();
        let timer = self
            .timers
            .arm(deadline(now, timeout), RuntimeTimer::ExecTimeout(key, exec));
        sandbox
            .execs
            .insert(exec, (ExecTracker::new(output_limit, now), vec![timer]));
        Ok(())
    }

    /// Run code in a ready sandbox. Output and the end arrive as notices.
    pub fn start_exec(&mut self, key: SandboxKey, spec: ExecSpec) -> Result<ExecId, RuntimeError> {
        let limits = self.agent_config.limits.clone();
        let output_limit = self.config.limits.max_output_bytes;
        let sandbox = self
            .sandboxes
            .get_mut(&key)
            .ok_or(RuntimeError::NoSuchSandbox)?;
        let state = sandbox.lifecycle.state();
        if !state.can_exec() {
            return Err(RuntimeError::WrongState(state.name()));
        }
        let exec = take_exec_id(&mut sandbox.next_exec)?;
        let request = SpawnRequest {
            language: spec.language,
            code: spec.code,
            env: spec.env,
            cwd: spec.cwd,
            limits,
        };
        ToAgent::Spawn(exec, request).encode(&mut sandbox.outgoing);
        let now = Instant::now();
        let timer = self.timers.arm(
            deadline(now, spec.timeout),
            RuntimeTimer::ExecTimeout(key, exec),
        );
        sandbox
            .execs
            .insert(exec, (ExecTracker::new(output_limit, now), vec![timer]));
        self.flush_to_agent(key);
        Ok(exec)
    }

    pub fn write_stdin(
        &mut self,
        key: SandboxKey,
        exec: ExecId,
        data: &[u8],
    ) -> Result<(), RuntimeError> {
        let sandbox = self
            .sandboxes
            .get_mut(&key)
            .ok_or(RuntimeError::NoSuchSandbox)?;
        let (tracker, _) = sandbox
            .execs
            .get_mut(&exec)
            .ok_or(RuntimeError::NoSuchExecution)?;
        if tracker.stdin_in_flight + data.len() as u64 > MAX_STDIN_IN_FLIGHT {
            return Err(RuntimeError::StdinFull);
        }
        tracker.stdin_in_flight += data.len() as u64;
        for chunk in data.chunks(MAX_CHUNK_BYTES) {
            ToAgent::Stdin(exec, chunk.to_vec()).encode(&mut sandbox.outgoing);
        }
        self.flush_to_agent(key);
        Ok(())
    }

    pub fn close_stdin(&mut self, key: SandboxKey, exec: ExecId) -> Result<(), RuntimeError> {
        let sandbox = self
            .sandboxes
            .get_mut(&key)
            .ok_or(RuntimeError::NoSuchSandbox)?;
        if !sandbox.execs.contains_key(&exec) {
            return Err(RuntimeError::NoSuchExecution);
        }
        ToAgent::CloseStdin(exec).encode(&mut sandbox.outgoing);
        self.flush_to_agent(key);
        Ok(())
    }

    /// Kill the execution's process group. Its `ExecFinished` carries `reason`.
    pub fn kill_exec(
        &mut self,
        key: SandboxKey,
        exec: ExecId,
        reason: Reason,
    ) -> Result<(), RuntimeError> {
        let sandbox = self
            .sandboxes
            .get_mut(&key)
            .ok_or(RuntimeError::NoSuchSandbox)?;
        let (tracker, timers) = sandbox
            .execs
            .get_mut(&exec)
            .ok_or(RuntimeError::NoSuchExecution)?;
        tracker.mark_killed(reason);
        ToAgent::Signal(exec, libc::SIGKILL).encode(&mut sandbox.outgoing);
        timers.push(self.timers.arm(
            Instant::now() + KILL_GRACE,
            RuntimeTimer::KillGrace(key, exec),
        ));
        self.flush_to_agent(key);
        Ok(())
    }

    /// Stop reading the sandbox's output (its owner's buffer is full) or resume.
    pub fn set_output_paused(&mut self, key: SandboxKey, paused: bool) {
        if let Some(sandbox) = self.sandboxes.get_mut(&key) {
            sandbox.paused = paused;
            if !paused && sandbox.readable {
                self.pending_reads.insert(key);
            }
        }
    }

    /// Delete the sandbox (idempotent). Its owner gets `Deleted` when it is gone.
    pub fn delete(&mut self, key: SandboxKey) {
        self.apply(key, Event::DeleteRequested);
    }

    /// Delete every sandbox (shutdown).
    /// Delete every sandbox but `keep` (shutdown: those being checkpointed).
    pub fn delete_all_except(&mut self, keep: &HashSet<SandboxKey>) {
        let keys: Vec<SandboxKey> = self
            .sandboxes
            .keys()
            .copied()
            .filter(|key| !keep.contains(key))
            .collect();
        for key in keys {
            self.delete(key);
        }
        self.pools.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.sandboxes.is_empty()
    }

    pub fn agent_readable(&mut self, key: SandboxKey) {
        self.read_agent(key);
    }

    pub fn agent_writable(&mut self, key: SandboxKey) {
        self.flush_to_agent(key);
    }

    /// Read agents that still had data when their budget ran out or that were resumed.
    pub fn service_pending_reads(&mut self) {
        let keys: Vec<SandboxKey> = self.pending_reads.drain().collect();
        for key in keys {
            self.read_agent(key);
        }
    }

    pub fn fire_timers(&mut self, now: Instant) {
        for timer in self.timers.pop_expired(now) {
            match timer {
                RuntimeTimer::Start(key) => self.apply(key, Event::StartTimedOut),
                RuntimeTimer::ExecTimeout(key, exec) => {
                    let _ = self.kill_exec(key, exec, Reason::Timeout);
                }
                RuntimeTimer::KillGrace(key, exec) => {
                    eprintln!("runtime: sandbox key {key}: execution {exec} ignored SIGKILL; deleting the sandbox");
                    self.lose(key, format!("the sandbox did not stop execution {exec}"));
                }
            }
        }
    }

    /// Collect every exited child. Ours advance their sandbox; others (the sandbox processes
    /// runsc leaves to us as subreaper) are just reaped, which `runsc delete` waits for.
    pub fn reap(&mut self) {
        loop {
            let (pid, success) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code == 0),
                Ok(WaitStatus::Signaled(pid, _, _)) => (pid, false),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(error) => {
                    eprintln!("runtime: waitpid: {error}");
                    return;
                }
            };
            match self.children.remove(&pid.as_raw()) {
                Some(ChildPurpose::Run(key)) => {
                    let result = if success {
                        Ok(())
                    } else {
                        Err(self.log_tail(key))
                    };
                    self.apply(key, Event::RunExited(result));
                }
                Some(ChildPurpose::Delete(key)) => self.apply(key, Event::DeleteExited),
                Some(ChildPurpose::Checkpoint(key)) => {
                    let result = if success {
                        Ok(())
                    } else {
                        Err(self.checkpoint_error(key))
                    };
                    self.apply(key, Event::CheckpointExited(result));
                }
                None => {}
            }
        }
    }

    fn log_tail(&self, key: SandboxKey) -> String {
        let Some(sandbox) = self.sandboxes.get(&key) else {
            return String::new();
        };
        let text = read_tail(&sandbox.bundle.join("sandbox.log"), 2048);
        let lines: Vec<&str> = text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .collect();
        let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
        if tail.is_empty() {
            "runsc failed to start the sandbox".to_string()
        } else {
            format!("runsc failed to start the sandbox: {tail}")
        }
    }

    fn checkpoint_error(&self, key: SandboxKey) -> String {
        let Some(sandbox) = self.sandboxes.get(&key) else {
            return String::new();
        };
        let text = read_tail(&sandbox.bundle.join("checkpoint.log"), 2048);
        let lines: Vec<&str> = text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .collect();
        match lines.last() {
            Some(line) => format!("runsc checkpoint failed: {}", line.trim()),
            None => "runsc checkpoint failed".to_string(),
        }
    }

    fn lose(&mut self, key: SandboxKey, reason: String) {
        self.apply(key, Event::AgentLost(reason));
    }

    fn apply(&mut self, key: SandboxKey, event: Event) {
        let Some(sandbox) = self.sandboxes.get_mut(&key) else {
            return;
        };
        let actions = sandbox.lifecycle.handle(event);
        for action in actions {
            self.carry_out(key, action);
        }
    }

    fn notify(&mut self, key: SandboxKey, event: RuntimeEvent) {
        if let Some(owner) = self.sandboxes.get(&key).and_then(|sandbox| sandbox.owner) {
            self.notices.push_back(Notice {
                owner,
                sandbox: key,
                event,
            });
        }
    }

    fn carry_out(&mut self, key: SandboxKey, action: Action) {
        match action {
            Action::NotifyReady => {
                if let Some(sandbox) = self.sandboxes.get_mut(&key) {
                    if let Some(timer) = sandbox.start_timer.take() {
                        self.timers.cancel(timer);
                    }
                    self.stats
                        .start_seconds
                        .push(sandbox.created.elapsed().as_secs_f64());
                }
                self.health.started();
                self.notify(key, RuntimeEvent::Ready);
            }
            Action::NotifyStartFailed(message) => {
                self.stats.start_failures += 1;
                if self
                    .sandboxes
                    .get(&key)
                    .is_some_and(|sandbox| !sandbox.from_image)
                {
                    self.health.failed(&message);
                }
                eprintln!("runtime: sandbox key {key} failed to start: {message}");
                self.notify(key, RuntimeEvent::StartFailed(message));
            }
            Action::NotifyLost(message) => {
                self.stats.lost += 1;
                eprintln!("runtime: sandbox key {key} lost: {message}");
                self.finish_all_execs(key);
                self.notify(key, RuntimeEvent::Lost(message));
            }
            Action::StartDelete => {
                self.finish_all_execs(key);
                let Some(sandbox) = self.sandboxes.get_mut(&key) else {
                    return;
                };
                if let Some(timer) = sandbox.start_timer.take() {
                    self.timers.cancel(timer);
                }
                // Closing the agent's stdin makes it kill its processes; delete does the rest.
                if let Some(mut pipe) = sandbox.to_agent.take() {
                    let _ = self.registry.deregister(&mut pipe);
                }
                if let Some(mut pipe) = sandbox.from_agent.take() {
                    let _ = self.registry.deregister(&mut pipe);
                }
                self.pending_reads.remove(&key);
                self.pools.remove(key);
                let id = sandbox.container.clone();
                if id.is_empty() {
                    // No container was ever made (its start failed before runsc ran).
                    self.apply(key, Event::DeleteExited);
                    return;
                }
                match self.runsc.delete_force(&id).spawn() {
                    Ok(child) => {
                        self.children
                            .insert(child.id() as i32, ChildPurpose::Delete(key));
                    }
                    Err(error) => {
                        eprintln!("runtime: cannot run runsc delete for {id}: {error}");
                        self.apply(key, Event::DeleteExited);
                    }
                }
            }
            Action::StartCheckpoint => {
                let Some(sandbox) = self.sandboxes.get_mut(&key) else {
                    return;
                };
                let image = sandbox
                    .checkpoint_to
                    .take()
                    .unwrap_or_else(|| sandbox.bundle.join("image"));
                let log = std::fs::File::create(sandbox.bundle.join("checkpoint.log"));
                let mut command = self.runsc.checkpoint(&image, &sandbox.container);
                if let Ok(log) = log {
                    command.stderr(Stdio::from(log));
                }
                match command.spawn() {
                    Ok(child) => {
                        self.children
                            .insert(child.id() as i32, ChildPurpose::Checkpoint(key));
                    }
                    Err(error) => self.apply(
                        key,
                        Event::CheckpointExited(Err(format!(
                            "cannot run runsc checkpoint: {error}"
                        ))),
                    ),
                }
            }
            Action::NotifyCheckpointed(result) => {
                // The container is stopped: its agent pipes are dead.
                if let Some(sandbox) = self.sandboxes.get_mut(&key) {
                    if let Some(mut pipe) = sandbox.to_agent.take() {
                        let _ = self.registry.deregister(&mut pipe);
                    }
                    if let Some(mut pipe) = sandbox.from_agent.take() {
                        let _ = self.registry.deregister(&mut pipe);
                    }
                    sandbox.outgoing.clear();
                    sandbox.decoder = FrameDecoder::new();
                }
                self.pending_reads.remove(&key);
                self.notify(key, RuntimeEvent::Checkpointed(result));
            }
            Action::StartRestore => self.start_restore(key),
            Action::StartContainer => {
                let restoring = self
                    .sandboxes
                    .get(&key)
                    .is_some_and(|sandbox| sandbox.restore_from.is_some());
                if restoring {
                    self.start_restore(key);
                } else if let Err(error) = self.start_fresh(key) {
                    self.apply(
                        key,
                        Event::RunExited(Err(format!("cannot start a sandbox: {error}"))),
                    );
                }
            }
            Action::NotifyNoSlot => {
                let message = format!(
                    "the server is at its limit of {} sandboxes and no slot became free within {} s; retry shortly",
                    self.config.max_sandboxes,
                    self.config.create_timeout.as_secs()
                );
                self.notify(key, RuntimeEvent::StartFailed(message));
            }
            Action::Forget => {
                self.waiting.retain(|waiting| *waiting != key);
                if let Some(sandbox) = self.sandboxes.remove(&key) {
                    self.by_id.remove(&sandbox.id);
                    if let Some(timer) = sandbox.start_timer {
                        self.timers.cancel(timer);
                    }
                    if let (Some(manager), Some(network)) =
                        (self.network.as_mut(), sandbox.network.as_ref())
                    {
                        manager.destroy(network);
                    }
                    // A sandbox that only waited for a slot may have no bundle.
                    match std::fs::remove_dir_all(&sandbox.bundle) {
                        Err(error) if error.kind() != io::ErrorKind::NotFound => eprintln!(
                            "runtime: cannot remove {}: {error}",
                            sandbox.bundle.display()
                        ),
                        _ => {}
                    }
                    if let Some(owner) = sandbox.owner {
                        self.notices.push_back(Notice {
                            owner,
                            sandbox: key,
                            event: RuntimeEvent::Deleted,
                        });
                    }
                }
            }
        }
    }

    fn start_restore(&mut self, key: SandboxKey) {
        let Some(sandbox) = self.sandboxes.get_mut(&key) else {
            return;
        };
        sandbox.from_image = true;
        let Some((image, reset)) = sandbox.restore_from.take() else {
            return self.apply(
                key,
                Event::RunExited(Err("no image to restore from".into())),
            );
        };
        let stopped = std::mem::take(&mut sandbox.container);
        let bundle = sandbox.bundle.clone();
        let network = sandbox.network.clone();
        if !stopped.is_empty() {
            // The checkpointed container still holds its id; remove it on the side (its exit is
            // reaped like any orphan's).
            let _ = self.runsc.delete_force(&stopped).spawn();
        }
        let container = match SandboxId::random() {
            Ok(id) => id.to_string(),
            Err(error) => {
                return self.apply(
                    key,
                    Event::RunExited(Err(format!("no randomness: {error}"))),
                )
            }
        };
        match self.start_container(key, &container, &bundle, Some(&image), network.as_ref()) {
            Ok((to_agent, from_agent)) => {
                let timer = self.timers.arm(
                    Instant::now() + self.config.create_timeout,
                    RuntimeTimer::Start(key),
                );
                let Some(sandbox) = self.sandboxes.get_mut(&key) else {
                    return;
                };
                sandbox.container = container;
                sandbox.to_agent = Some(to_agent);
                sandbox.from_agent = Some(from_agent);
                sandbox.created = Instant::now();
                sandbox.start_timer = Some(timer);
                // The restored agent is mid-loop: ask it to say hello (and to reset if asked).
                ToAgent::Resume { reset }.encode(&mut sandbox.outgoing);
                self.flush_to_agent(key);
            }
            Err(error) => self.apply(
                key,
                Event::RunExited(Err(format!("cannot run runsc restore: {error}"))),
            ),
        }
    }

    /// End every execution of a dying sandbox, so owners are never left waiting.
    fn finish_all_execs(&mut self, key: SandboxKey) {
        let Some(sandbox) = self.sandboxes.get_mut(&key) else {
            return;
        };
        let execs: Vec<(ExecId, (ExecTracker, Vec<TimerId>))> = sandbox.execs.drain().collect();
        let now = Instant::now();
        for (exec, (mut tracker, timers)) in execs {
            timers
                .into_iter()
                .for_each(|timer| self.timers.cancel(timer));
            tracker.mark_killed(Reason::SandboxLost);
            let outcome = tracker.finish(ExitStatus::Signal(libc::SIGKILL), now);
            self.notify(key, RuntimeEvent::ExecFinished(exec, outcome));
        }
    }

    fn flush_to_agent(&mut self, key: SandboxKey) {
        let Some(sandbox) = self.sandboxes.get_mut(&key) else {
            return;
        };
        let Some(pipe) = sandbox.to_agent.as_mut() else {
            sandbox.outgoing.clear();
            return;
        };
        let mut written = 0;
        let mut failed = None;
        while written < sandbox.outgoing.len() {
            match pipe.write(&sandbox.outgoing[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            }
        }
        sandbox.outgoing.drain(..written);
        if let Some(error) = failed {
            self.lose(key, format!("cannot write to the sandbox agent: {error}"));
        }
    }

    /// Read and handle what the agent sent. Frames come from inside the sandbox: should
    /// handling one panic (a bug), that sandbox is lost, not the server.
    fn read_agent(&mut self, key: SandboxKey) {
        if let Err(message) = crate::guard::catch(|| self.read_agent_frames(key)) {
            eprintln!("runtime: sandbox key {key}: internal error handling its agent: {message}");
            let _ = crate::guard::catch(|| {
                self.lose(key, "internal server error handling the sandbox".into())
            });
        }
    }

    fn read_agent_frames(&mut self, key: SandboxKey) {
        let mut frames = Vec::new();
        let mut lost = None;
        {
            let Some(sandbox) = self.sandboxes.get_mut(&key) else {
                return;
            };
            sandbox.readable = true;
            if sandbox.paused {
                return;
            }
            let Some(pipe) = sandbox.from_agent.as_mut() else {
                return;
            };
            let mut buffer = [0u8; 64 * 1024];
            let mut total = 0;
            loop {
                if total >= READ_BUDGET {
                    self.pending_reads.insert(key);
                    break;
                }
                match pipe.read(&mut buffer) {
                    Ok(0) => {
                        sandbox.readable = false;
                        lost = Some("the sandbox stopped unexpectedly".to_string());
                        break;
                    }
                    Ok(n) => {
                        total += n;
                        sandbox.decoder.push(&buffer[..n]);
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        sandbox.readable = false;
                        break;
                    }
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                    Err(error) => {
                        lost = Some(format!("cannot read from the sandbox agent: {error}"));
                        break;
                    }
                }
            }
            loop {
                match sandbox.decoder.next_from_agent() {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => break,
                    Err(error) => {
                        lost = Some(error.to_string());
                        break;
                    }
                }
            }
        }
        for frame in frames {
            self.handle_frame(key, frame);
        }
        if let Some(reason) = lost {
            let reason = match self.state(key) {
                Some(State::Starting) => self.log_tail(key),
                _ => reason,
            };
            self.lose(key, reason);
        }
    }

    fn handle_frame(&mut self, key: SandboxKey, frame: FromAgent) {
        match frame {
            FromAgent::Ready(hello) => {
                if let Some(sandbox) = self.sandboxes.get_mut(&key) {
                    sandbox.next_exec = sandbox.next_exec.max(ExecId(hello.next_exec_id));
                }
                self.apply(key, Event::AgentReady)
            }
            FromAgent::Started(exec) => self.notify(key, RuntimeEvent::ExecStarted(exec)),
            FromAgent::SpawnFailed(exec, message) => {
                self.drop_exec(key, exec);
                self.notify(key, RuntimeEvent::ExecSpawnFailed(exec, message));
            }
            FromAgent::Output(exec, stream, mut data) => {
                let Some(sandbox) = self.sandboxes.get_mut(&key) else {
                    return;
                };
                let Some((tracker, _)) = sandbox.execs.get_mut(&exec) else {
                    return;
                };
                let verdict = tracker.on_output(data.len());
                let (deliver, kill) = match verdict {
                    OutputVerdict::Deliver(n) => (n, false),
                    OutputVerdict::DeliverThenKill(n) => (n, true),
                };
                data.truncate(deliver);
                if !data.is_empty() {
                    self.notify(key, RuntimeEvent::Output(exec, stream, data));
                }
                if kill {
                    let _ = self.kill_exec(key, exec, Reason::OutputLimit);
                }
            }
            FromAgent::StdinWritten(exec, count) => {
                if let Some((tracker, _)) = self
                    .sandboxes
                    .get_mut(&key)
                    .and_then(|sandbox| sandbox.execs.get_mut(&exec))
                {
                    tracker.stdin_in_flight = tracker.stdin_in_flight.saturating_sub(count as u64);
                }
            }
            FromAgent::Inspection(inspection) => {
                let Some(sandbox) = self.sandboxes.get_mut(&key) else {
                    return;
                };
                if sandbox.checkpoint_to.is_none() || sandbox.lifecycle.state() != State::Ready {
                    return;
                }
                if inspection.open_tcp_connections > 0 {
                    sandbox.checkpoint_to = None;
                    let message = format!(
                        "cannot save the sandbox: it has {} open TCP connection(s), which runsc cannot checkpoint; close them and retry",
                        inspection.open_tcp_connections
                    );
                    self.notify(key, RuntimeEvent::CheckpointRefused(message));
                } else {
                    self.apply(key, Event::CheckpointRequested);
                }
            }
            FromAgent::Exited(exec, status) => {
                if let Some(tracker) = self.drop_exec(key, exec) {
                    let outcome = tracker.finish(status, Instant::now());
                    self.notify(key, RuntimeEvent::ExecFinished(exec, outcome));
                }
            }
        }
    }

    fn drop_exec(&mut self, key: SandboxKey, exec: ExecId) -> Option<ExecTracker> {
        let (tracker, timers) = self.sandboxes.get_mut(&key)?.execs.remove(&exec)?;
        timers
            .into_iter()
            .for_each(|timer| self.timers.cancel(timer));
        Some(tracker)
    }
}

/// The next execution id of a sandbox. The agent's hello can raise the counter to any value
/// (it comes from inside the sandbox), so running out is an error, not an overflow.
fn take_exec_id(next: &mut ExecId) -> Result<ExecId, RuntimeError> {
    let id = *next;
    *next = id.next().ok_or(RuntimeError::NoExecIdsLeft)?;
    Ok(id)
}

/// `now + timeout`, without the panic of `Instant + Duration` on overflow: a timeout too far to
/// represent is as good as none.
fn deadline(now: Instant, timeout: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(timeout)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}

fn read_tail(path: &Path, max: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let length = file.metadata().map(|meta| meta.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(length.saturating_sub(max)));
    let mut bytes = Vec::new();
    let _ = file.take(max).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

mod cleanup;
pub mod network;

/// Set up network egress as configured, or say why sandboxes cannot have it.
fn egress_network(config: &Config) -> (Option<network::Network>, String) {
    if !config.egress.enabled {
        return (
            None,
            "network egress is disabled on this server (SANDBOX_EGRESS=off)".into(),
        );
    }
    if !network::Network::available() {
        return (
            None,
            "network egress is not available: this host lacks the ip or nft command".into(),
        );
    }
    let created = network::Network::new(
        &config.state_dir,
        &config.egress.subnet,
        config.egress.allow.clone(),
    )
    .and_then(|mut network| network.start().map(|()| network));
    match created {
        Ok(network) => (Some(network), String::new()),
        Err(error) => {
            eprintln!("runtime: network egress disabled: {error}");
            (
                None,
                format!("network egress is not available on this server: {error}"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execution_ids_run_out_with_an_error_not_an_overflow() {
        let mut next = ExecId(1);
        assert_eq!(take_exec_id(&mut next).ok(), Some(ExecId(1)));
        assert_eq!(next, ExecId(2));
        // A forged hello from inside the sandbox can set the counter to the last id.
        next = ExecId(u32::MAX);
        assert!(matches!(
            take_exec_id(&mut next),
            Err(RuntimeError::NoExecIdsLeft)
        ));
        assert_eq!(next, ExecId(u32::MAX));
    }

    #[test]
    fn deadlines_do_not_overflow() {
        let now = Instant::now();
        assert_eq!(
            deadline(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert!(deadline(now, Duration::MAX) > now + Duration::from_secs(3600 * 24 * 365));
    }
}
