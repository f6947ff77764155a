//! The runtime as the event loop sees it: the public API, and the I/O the core asks for.
//!
//! Every call follows the same shape: hand the request or what happened (a readable agent
//! pipe, SIGCHLD, the time) to the [`Core`], then [`Runtime::drain`] its action queue,
//! performing each action (spawn a container, queue a frame, close pipes, release files,
//! pass a notice on). An action that fails is reported back to the core as an event; its
//! consequences join the end of the same queue. Frames queued in one drain are written to
//! each agent together at its end.
//!
//! What lives here: the agents' pipes ([`AgentLink`]), the `runsc` children ([`Children`]),
//! each sandbox's bundle directory, container id and network, and the notices waiting for
//! the server.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::Registry;

use crate::agent_protocol::{ExecId, TerminalSize};
use crate::config::Config;
use crate::ids::SandboxId;

use super::agent_link::{AgentLink, READ_BUDGET, READ_BUFFER_BYTES};
use super::children::{self, Children, Purpose};
use super::core::{Action, Claimed, Core, Origin, Settings};
use super::exec::Reason;
use super::lifecycle::State;
use super::network::{Network, SandboxNetwork};
use super::pool::Admission;
use super::{
    bundle, health, setup, state_lock, ExecSpec, Notice, Owner, RuntimeError, RuntimeStats,
    SandboxKey,
};

/// The host side of one sandbox.
struct Resources {
    bundle: PathBuf,
    /// The runsc container id: new for every run or restore (a restore cannot reuse the id of
    /// the stopped container until that one is deleted).
    container: Option<String>,
    /// Network egress (namespace, veth), if the sandbox asked for it.
    network: Option<SandboxNetwork>,
}

pub struct Runtime {
    core: Core,
    /// Held for the life of the process: one instance per state directory.
    state_lock: state_lock::StateLock,
    registry: Registry,
    children: Children,
    config: Config,
    bundles_dir: PathBuf,
    agent_copy: PathBuf,
    resources: HashMap<SandboxKey, Resources>,
    links: HashMap<SandboxKey, AgentLink>,
    /// Links with frames queued in this drain, written at its end.
    unflushed: Vec<SandboxKey>,
    /// Sandboxes whose agent pipe must be read again (its budget was used up).
    pending_reads: HashSet<SandboxKey>,
    /// What every agent's pipe is read into.
    read_buffer: Vec<u8>,
    notices: VecDeque<Notice>,
    network: Option<Network>,
    network_unavailable: String,
}

impl Runtime {
    /// Prepare the state directory (after cleaning what a previous instance left there).
    pub fn new(config: &Config, registry: Registry) -> io::Result<Self> {
        let prepared = setup::prepare(config)?;
        let core = Core::new(Settings {
            max_sandboxes: config.max_sandboxes,
            create_timeout: config.create_timeout,
            max_output_bytes: config.limits.max_output_bytes,
            process_limits: prepared.bundles.agent.limits.clone(),
            snapshot_pools_max: if config.snapshot_pool_size == 0 {
                0
            } else {
                config.snapshot_pools_max
            },
            pool_size: config.pool_size,
            pool_max: config.pool_max,
        });
        let agent_copy = prepared.bundles.agent_dir.join(bundle::AGENT_FILE);
        Ok(Runtime {
            core,
            state_lock: prepared.state_lock,
            registry,
            children: Children::new(prepared.runsc, prepared.bundles),
            config: config.clone(),
            bundles_dir: prepared.bundles_dir,
            agent_copy,
            resources: HashMap::new(),
            links: HashMap::new(),
            unflushed: Vec::new(),
            pending_reads: HashSet::new(),
            read_buffer: vec![0; READ_BUFFER_BYTES],
            notices: VecDeque::new(),
            network: prepared.network,
            network_unavailable: prepared.network_unavailable,
        })
    }

    // ---- Queries ----------------------------------------------------------------------------

    /// Sandboxes that exist as runsc sandboxes (pooled and being deleted included; not those
    /// waiting for a slot).
    pub fn live_sandboxes(&self) -> usize {
        self.core.live_sandboxes()
    }

    /// Requests admitted that wait for a sandbox being deleted to free its slot.
    pub fn waiting_for_slot(&self) -> usize {
        self.core.waiting_for_slot()
    }

    /// Requests waiting in line for a fresh sandbox (see [`Runtime::claim_fresh`]).
    pub fn waiting_for_sandbox(&self) -> usize {
        self.core.waiting_for_sandbox()
    }

    pub fn pool_ready(&self) -> usize {
        self.core.pool_ready()
    }

    /// How many fresh sandboxes the pool keeps now (it grows with demand).
    pub fn pool_target(&mut self) -> usize {
        self.core.fresh_pool_target(Instant::now())
    }

    pub fn snapshot_pool_ready(&self) -> usize {
        self.core.snapshot_pool_ready()
    }

    /// Snapshot images that have a pool now (at most `SANDBOX_SNAPSHOT_POOLS_MAX`).
    pub fn snapshot_pools(&self) -> usize {
        self.core.snapshot_pools()
    }

    /// Counters for the metrics endpoint.
    pub fn stats(&self) -> &RuntimeStats {
        self.core.stats()
    }

    /// The start times recorded since the last call (for the metrics histogram).
    pub fn take_start_seconds(&mut self) -> Vec<f64> {
        std::mem::take(&mut self.core.stats_mut().start_seconds)
    }

    pub fn state(&self, key: SandboxKey) -> Option<State> {
        self.core.state(key)
    }

    pub fn sandbox_id(&self, key: SandboxKey) -> Option<SandboxId> {
        self.core.sandbox_id(key)
    }

    pub fn find(&self, id: &SandboxId) -> Option<SandboxKey> {
        self.core.find(id)
    }

    pub fn is_empty(&self) -> bool {
        self.core.is_empty()
    }

    pub fn next_notice(&mut self) -> Option<Notice> {
        self.notices.pop_front()
    }

    /// When the runtime must next be woken: a timer of the core, or the end of the refills'
    /// wait after failed starts.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let refill = self.core.refill_deadline(now);
        match (self.core.next_deadline(), refill) {
            (Some(timer), Some(refill)) => Some(timer.min(refill)),
            (timer, refill) => timer.or(refill),
        }
    }

    pub fn has_pending_work(&self) -> bool {
        !self.notices.is_empty() || !self.pending_reads.is_empty()
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
        health::missing_files(
            &self.config.state_dir,
            &self.agent_copy,
            &self.config.rootfs,
        )
        .or_else(|| self.core.start_problem(self.config.ready_start_failures))
    }

    // ---- Sandboxes: acquire, create, restore, pools -------------------------------------------

    /// A sandbox for `owner`: a pooled one if any (ready or still starting), else a new one.
    /// The owner gets `Ready` (at once if it was ready) or `StartFailed`.
    pub fn acquire(&mut self, owner: Owner) -> Result<SandboxKey, RuntimeError> {
        if let Some(key) = self.core.take_fresh(Instant::now()) {
            if self.core.hand_over(key, owner) {
                self.drain(Instant::now());
                return Ok(key);
            }
        }
        self.create(Some(owner))
    }

    /// A fresh sandbox for `owner`, whichever is ready first (`/execute`): a ready pooled one
    /// at once if nobody waits in line; else the owner waits in line (and, unless the starts
    /// under way suffice for the line, one more is started as real work). The sandbox comes
    /// with its `Ready` notice; `StartFailed` names the claim's key instead.
    pub fn claim_fresh(&mut self, owner: Owner) -> Result<Claimed, RuntimeError> {
        let now = Instant::now();
        if let Some(key) = self.core.take_ready_fresh(owner, now) {
            self.drain(now);
            return Ok(Claimed::Sandbox(key));
        }
        if let Some(admission) = self.core.admit_claim()? {
            let key = self.create_admitted(None, admission, false)?;
            self.core.add_to_fresh_pool(key);
        }
        let now = Instant::now();
        let claim = self.core.queue_claim(owner, now);
        self.drain(now);
        Ok(Claimed::Queued(claim))
    }

    /// `owner` no longer waits in line for a fresh sandbox (its client went away).
    pub fn withdraw_claims(&mut self, owner: Owner) {
        self.core.withdraw_claims(owner);
    }

    /// A sandbox whose `Ready` notice found its owner gone: back to the line or the pool if it
    /// was never used, else deleted.
    pub fn give_back(&mut self, sandbox: SandboxKey) {
        let now = Instant::now();
        self.core.give_back(sandbox, now);
        self.drain(now);
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
        let id = SandboxId::random().map_err(RuntimeError::NoRandomness)?;
        if egress {
            return self.restore(owner, id, image, true, true);
        }
        self.prune_snapshot_pools();
        let now = Instant::now();
        let pooled = self.core.take_snapshot(&image, now);
        self.drain(now);
        if let Some(key) = pooled {
            if self.core.hand_over(key, owner) {
                self.drain(now);
                return Ok(key);
            }
        }
        self.restore(owner, id, image, true, false)
    }

    /// Start the requests waiting for a slot in the slots freed since; then, in the slots still
    /// free, keep `pool_size` unowned sandboxes started, and for every snapshot image with a pool
    /// (most recently used first) `snapshot_pool_size` restored ones (forgetting images that
    /// are gone: the snapshot was replaced or deleted).
    pub fn refill_pool(&mut self) {
        let now = Instant::now();
        self.core.grant_slots(now);
        self.drain(now);
        for surplus in self.core.surplus_fresh(now) {
            self.core.delete(surplus, now);
        }
        self.drain(now);
        if !self.core.refill_allowed(now) {
            return;
        }
        self.refill_fresh_pool(now);
        for image in self.core.pool_images() {
            let wanted = self.config.snapshot_pool_size;
            if self.core.snapshot_pool_len(&image) >= wanted || self.core.free_slots() == 0 {
                continue;
            }
            // Only checked when a refill is due: on a mounted bucket this is a network call.
            if !image.is_dir() {
                self.prune_snapshot_pools();
                continue;
            }
            while self.core.snapshot_pool_len(&image) < wanted && self.core.free_slots() > 0 {
                let Ok(id) = SandboxId::random() else {
                    return;
                };
                match self.restore_for(None, id, image.clone(), true, false) {
                    Ok(key) => {
                        let now = Instant::now();
                        self.core.add_to_snapshot_pool(&image, key, now);
                        self.drain(now);
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
        let now = Instant::now();
        self.core.drop_snapshot_pools(|image| !image.is_dir(), now);
        self.drain(now);
    }

    /// Start fresh sandboxes as the core says (its target grows with demand; see
    /// `Core::fresh_refill_wanted`), in the slots nobody holds or claimed.
    fn refill_fresh_pool(&mut self, now: Instant) {
        while self.core.fresh_refill_wanted(now) > 0 && self.core.free_slots() > 0 {
            match self.create(None) {
                Ok(key) => self.core.add_to_fresh_pool(key),
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

    /// Start a new sandbox, with network egress if `egress`. A fresh start that cannot even
    /// spawn `runsc run` is the caller's error, not a notice.
    pub fn create_with(
        &mut self,
        owner: Option<Owner>,
        egress: bool,
    ) -> Result<SandboxKey, RuntimeError> {
        let admission = self.core.admit(owner.is_some())?;
        self.create_admitted(owner, admission, egress)
    }

    /// Start a new sandbox (or queue it for a slot) as `admission` says.
    fn create_admitted(
        &mut self,
        owner: Option<Owner>,
        admission: Admission,
        egress: bool,
    ) -> Result<SandboxKey, RuntimeError> {
        let id = SandboxId::random().map_err(RuntimeError::NoRandomness)?;
        let key = self.add_resources(id, egress)?;
        // The start time counts from before `runsc run` is spawned.
        let now = Instant::now();
        if admission == Admission::Start {
            if let Err(error) = self.start_container(key, None) {
                // Nothing was started: forget the sandbox without a delete.
                self.release(key);
                let error = RuntimeError::Start(error);
                self.core.count_failed_start(&error.to_string(), now);
                return Err(error);
            }
        }
        self.core.add(key, id, owner, admission, Origin::Fresh, now);
        self.drain(now);
        Ok(key)
    }

    /// A key and the host side of a new sandbox: its bundle directory and, with `egress`, its
    /// network (namespace, veth, and its `/etc/hosts` in the bundle).
    fn add_resources(&mut self, id: SandboxId, egress: bool) -> Result<SandboxKey, RuntimeError> {
        let bundle = self.bundles_dir.join(id.to_string());
        let network = if egress {
            Some(self.prepare_network(&bundle)?)
        } else {
            None
        };
        let key = self.core.reserve_key();
        self.resources.insert(
            key,
            Resources {
                bundle,
                container: None,
                network,
            },
        );
        Ok(key)
    }

    fn prepare_network(&mut self, bundle_dir: &Path) -> Result<SandboxNetwork, RuntimeError> {
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

    fn restore_for(
        &mut self,
        owner: Option<Owner>,
        id: SandboxId,
        image: PathBuf,
        reset: bool,
        egress: bool,
    ) -> Result<SandboxKey, RuntimeError> {
        if self.core.find(&id).is_some() {
            return Err(RuntimeError::WrongState("already running here"));
        }
        let admission = self.core.admit(owner.is_some())?;
        let key = self.add_resources(id, egress)?;
        let now = Instant::now();
        self.core.add(
            key,
            id,
            owner,
            admission,
            Origin::Image { image, reset },
            now,
        );
        self.drain(now);
        Ok(key)
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
        self.core.checkpoint(key, image, with_running)?;
        self.drain(Instant::now());
        Ok(())
    }

    /// Start a stopped sandbox again from `image` (after a checkpoint or a snapshot). The owner
    /// gets `Ready` or `StartFailed`.
    pub fn restore_in_place(
        &mut self,
        key: SandboxKey,
        image: PathBuf,
        reset: bool,
    ) -> Result<(), RuntimeError> {
        let now = Instant::now();
        self.core.restore_in_place(key, image, reset, now)?;
        self.drain(now);
        Ok(())
    }

    /// Delete the sandbox (idempotent). Its owner gets `Deleted` when it is gone.
    pub fn delete(&mut self, key: SandboxKey) {
        let now = Instant::now();
        self.core.delete(key, now);
        self.drain(now);
    }

    /// Delete every sandbox but `keep` (shutdown: those being checkpointed).
    pub fn delete_all_except(&mut self, keep: &HashSet<SandboxKey>) {
        let now = Instant::now();
        self.core.delete_all_except(keep, now);
        self.drain(now);
    }

    // ---- Executions ---------------------------------------------------------------------------

    /// Run code in a ready sandbox. Output and the end arrive as notices.
    pub fn start_exec(&mut self, key: SandboxKey, spec: ExecSpec) -> Result<ExecId, RuntimeError> {
        let now = Instant::now();
        let exec = self.core.start_exec(key, spec, now)?;
        self.drain(now);
        Ok(exec)
    }

    /// Open a relay to `port` inside a ready sandbox (see `Core::start_relay`), with `first`,
    /// the first bytes for the application (counted as its stdin).
    ///
    /// They go in the same write as the connect: the agent holds them until the connection is
    /// made. Written apart, the second write costs the agent another wake-up, which under
    /// gVisor's ptrace platform came about 1 ms after the first.
    pub fn start_relay(
        &mut self,
        key: SandboxKey,
        port: u16,
        stdin_bound: u64,
        first: &[u8],
    ) -> Result<ExecId, RuntimeError> {
        let now = Instant::now();
        let exec = self.core.start_relay(key, port, stdin_bound, now)?;
        if !first.is_empty() {
            if let Err(error) = self.core.write_stdin(key, exec, first) {
                // More than `stdin_bound`: no relay then.
                let _ = self.core.kill_exec(key, exec, Reason::Killed, now);
                self.drain(now);
                return Err(error);
            }
        }
        self.drain(now);
        Ok(exec)
    }

    /// Follow an execution that was running when the sandbox was checkpointed and runs on in
    /// the restored sandbox: its output and end are reported again; it is killed after
    /// `timeout`; at most `stdin_bound` bytes of its stdin may be in flight.
    pub fn adopt_exec(
        &mut self,
        key: SandboxKey,
        exec: ExecId,
        timeout: Duration,
        stdin_bound: u64,
    ) -> Result<(), RuntimeError> {
        let now = Instant::now();
        self.core.adopt_exec(key, exec, timeout, stdin_bound, now)?;
        self.drain(now);
        Ok(())
    }

    pub fn write_stdin(
        &mut self,
        key: SandboxKey,
        exec: ExecId,
        data: &[u8],
    ) -> Result<(), RuntimeError> {
        self.core.write_stdin(key, exec, data)?;
        self.drain(Instant::now());
        Ok(())
    }

    pub fn close_stdin(&mut self, key: SandboxKey, exec: ExecId) -> Result<(), RuntimeError> {
        self.core.close_stdin(key, exec)?;
        self.drain(Instant::now());
        Ok(())
    }

    /// Create or delete a code context (issue 13); the agent's table of contexts comes back
    /// as `CodeContexts`.
    pub fn context_command(
        &mut self,
        key: SandboxKey,
        command: crate::agent_protocol::ContextCommand,
    ) -> Result<(), RuntimeError> {
        let now = Instant::now();
        self.core.context_command(key, command)?;
        self.drain(now);
        Ok(())
    }

    /// Kill the execution's process group. Its `ExecFinished` carries `reason`.
    pub fn kill_exec(
        &mut self,
        key: SandboxKey,
        exec: ExecId,
        reason: Reason,
    ) -> Result<(), RuntimeError> {
        let now = Instant::now();
        self.core.kill_exec(key, exec, reason, now)?;
        self.drain(now);
        Ok(())
    }

    /// Set the window size of terminal execution `exec` (its program gets SIGWINCH).
    pub fn resize_terminal(
        &mut self,
        key: SandboxKey,
        exec: ExecId,
        size: TerminalSize,
    ) -> Result<(), RuntimeError> {
        self.core.resize_terminal(key, exec, size)?;
        self.drain(Instant::now());
        Ok(())
    }

    /// The sandbox's owner cannot take more output now (its buffer is full), or can again:
    /// its executions stop once their output windows are used up, and go on when resumed.
    pub fn set_output_paused(&mut self, key: SandboxKey, paused: bool) {
        self.core.set_output_paused(key, paused);
        self.drain(Instant::now());
    }

    /// The owner cannot take more output of one execution now (nobody reads it), or can
    /// again: that execution stops once its window is used up; the others go on.
    pub fn set_exec_output_paused(&mut self, key: SandboxKey, exec: ExecId, paused: bool) {
        self.core.set_exec_output_paused(key, exec, paused);
        self.drain(Instant::now());
    }

    // ---- What the event loop saw ----------------------------------------------------------------

    /// The agent pipe registered under `token_id` (a [`SandboxKey`]) is readable.
    pub fn agent_readable(&mut self, token_id: u64) {
        self.read_agent(SandboxKey(token_id));
    }

    /// The pipe to the agent registered under `token_id` has room again.
    pub fn agent_writable(&mut self, token_id: u64) {
        let key = SandboxKey(token_id);
        self.flush_link(key, Instant::now());
        self.drain(Instant::now());
    }

    /// Read agents that still had data when their budget ran out or that were resumed.
    pub fn service_pending_reads(&mut self) {
        let keys: Vec<SandboxKey> = self.pending_reads.drain().collect();
        for key in keys {
            self.read_agent(key);
        }
    }

    pub fn fire_timers(&mut self, now: Instant) {
        self.core.handle_timeout(now);
        self.drain(now);
    }

    /// SIGCHLD: collect every exited child and tell the core about ours.
    pub fn reap(&mut self) {
        for exit in self.children.reap() {
            let now = Instant::now();
            let bundle = self
                .resources
                .get(&exit.key)
                .map(|resources| resources.bundle.clone());
            let failure = |describe: fn(&Path) -> String| {
                Err(bundle.as_deref().map(describe).unwrap_or_default())
            };
            match exit.purpose {
                Purpose::Run => {
                    let result = if exit.success {
                        Ok(())
                    } else {
                        failure(children::start_error)
                    };
                    self.core.run_exited(exit.key, result, now);
                }
                Purpose::Delete => self.core.delete_exited(exit.key, now),
                Purpose::Checkpoint => {
                    let result = if exit.success {
                        Ok(())
                    } else {
                        failure(children::checkpoint_error)
                    };
                    self.core.checkpoint_exited(exit.key, result, now);
                }
            }
            self.drain(now);
        }
    }

    /// Read and handle what the agent sent. Frames come from inside the sandbox: should
    /// handling one panic (a bug), that sandbox is lost, not the server.
    fn read_agent(&mut self, key: SandboxKey) {
        if let Err(message) = crate::guard::catch(|| self.read_agent_frames(key)) {
            eprintln!("runtime: sandbox key {key}: internal error handling its agent: {message}");
            let _ = crate::guard::catch(|| {
                let now = Instant::now();
                let reason = "internal server error handling the sandbox".to_string();
                self.core.agent_lost(key, reason, now);
                self.drain(now);
            });
        }
    }

    fn read_agent_frames(&mut self, key: SandboxKey) {
        let Some(link) = self.links.get_mut(&key) else {
            return;
        };
        let received = link.read(READ_BUDGET, &mut self.read_buffer);
        if received.more {
            self.pending_reads.insert(key);
        }
        let now = Instant::now();
        for frame in received.frames {
            self.core.on_frame(key, frame, now);
        }
        if let Some(reason) = received.lost {
            // While starting, what runsc logged says more than a closed pipe.
            let reason = match (self.core.state(key), self.resources.get(&key)) {
                (Some(State::Starting), Some(resources)) => {
                    children::start_error(&resources.bundle)
                }
                _ => reason,
            };
            self.core.agent_lost(key, reason, now);
        }
        self.drain(now);
    }

    // ---- Performing the core's actions ------------------------------------------------------

    /// Perform every queued action, then write the frames they queued; repeat while that
    /// gives the core more to do.
    fn drain(&mut self, now: Instant) {
        loop {
            while let Some(action) = self.core.poll_action() {
                self.perform(action, now);
            }
            if self.unflushed.is_empty() {
                return;
            }
            for key in std::mem::take(&mut self.unflushed) {
                self.flush_link(key, now);
            }
        }
    }

    fn perform(&mut self, action: Action, now: Instant) {
        match action {
            Action::Start { key, image } => {
                let restoring = image.is_some();
                if let Err(error) = self.start_container(key, image.as_deref()) {
                    let message = if restoring {
                        format!("cannot run runsc restore: {error}")
                    } else {
                        format!("cannot start a sandbox: {error}")
                    };
                    self.core.start_failed(key, message, now);
                }
            }
            Action::Send(key, frame) => {
                if let Some(link) = self.links.get_mut(&key) {
                    link.queue(&frame);
                    if !self.unflushed.contains(&key) {
                        self.unflushed.push(key);
                    }
                }
            }
            Action::Disconnect(key) => self.disconnect(key),
            Action::Delete(key) => {
                self.disconnect(key);
                let container = self
                    .resources
                    .get_mut(&key)
                    .and_then(|resources| resources.container.take());
                let Some(container) = container else {
                    // No container was ever made (its start failed before runsc ran).
                    self.core.delete_exited(key, now);
                    return;
                };
                if let Err(error) = self.children.delete(key, &container) {
                    eprintln!("runtime: cannot run runsc delete for {container}: {error}");
                    self.core.delete_exited(key, now);
                }
            }
            Action::Checkpoint { key, image } => {
                let spawned = match self.resources.get(&key) {
                    Some(Resources {
                        bundle,
                        container: Some(container),
                        ..
                    }) => self.children.checkpoint(key, container, &image, bundle),
                    _ => Err(io::Error::new(io::ErrorKind::NotFound, "no container")),
                };
                if let Err(error) = spawned {
                    let message = format!("cannot run runsc checkpoint: {error}");
                    self.core.checkpoint_exited(key, Err(message), now);
                }
            }
            Action::Release(key) => self.release(key),
            Action::Notify(notice) => self.notices.push_back(notice),
        }
    }

    /// Spawn `runsc run` (or `runsc restore` from `image`) for `key` with fresh agent pipes.
    fn start_container(&mut self, key: SandboxKey, image: Option<&Path>) -> io::Result<()> {
        let container = SandboxId::random()?.to_string();
        let Some(resources) = self.resources.get_mut(&key) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such sandbox"));
        };
        if let Some(stopped) = resources.container.take() {
            // The checkpointed container still holds its id; remove it on the side.
            self.children.delete_on_the_side(&stopped);
        }
        let netns = resources
            .network
            .as_ref()
            .map(|network| network.netns_path.clone());
        let bundle = resources.bundle.clone();
        let (to_agent, from_agent) =
            self.children
                .start_container(key, &container, &bundle, image, netns.as_deref())?;
        let link = AgentLink::new(&self.registry, key, to_agent, from_agent)?;
        if let Some(resources) = self.resources.get_mut(&key) {
            resources.container = Some(container);
        }
        if let Some(old) = self.links.insert(key, link) {
            old.close(&self.registry);
        }
        Ok(())
    }

    /// Close the agent's pipes.
    fn disconnect(&mut self, key: SandboxKey) {
        if let Some(link) = self.links.remove(&key) {
            link.close(&self.registry);
        }
        self.pending_reads.remove(&key);
        self.unflushed.retain(|unflushed| *unflushed != key);
    }

    /// Forget the host side of a sandbox that is gone (or never started).
    fn release(&mut self, key: SandboxKey) {
        self.disconnect(key);
        let Some(resources) = self.resources.remove(&key) else {
            return;
        };
        if let (Some(manager), Some(network)) = (self.network.as_mut(), &resources.network) {
            manager.destroy(network);
        }
        // A sandbox that only waited for a slot may have no bundle.
        match std::fs::remove_dir_all(&resources.bundle) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => eprintln!(
                "runtime: cannot remove {}: {error}",
                resources.bundle.display()
            ),
            _ => {}
        }
    }

    fn flush_link(&mut self, key: SandboxKey, now: Instant) {
        let Some(link) = self.links.get_mut(&key) else {
            return;
        };
        if !link.has_outgoing() {
            return;
        }
        if let Err(error) = link.flush() {
            let reason = format!("cannot write to the sandbox agent: {error}");
            self.core.agent_lost(key, reason, now);
        }
    }

    // ---- Shutdown -------------------------------------------------------------------------------

    /// Shutdown: remove this instance's (now empty) cgroup directories.
    pub fn remove_cgroups(&self) {
        super::cleanup::remove_cgroups(self.children.cgroup_parent());
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
}
