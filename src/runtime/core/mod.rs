//! The runtime's decisions, without I/O: every sandbox's state (its lifecycle, its executions,
//! its pending checkpoint or restore), the pools and slots, and the timers.
//!
//! It is driven like quinn-proto's `Connection`: the driver (`runtime::driver`) feeds it events
//! (a request from the server, a frame from an agent, a child that exited, the time), and it
//! pushes what must be done on ONE queue of [`Action`]s (start a container, send a frame, spawn
//! `runsc delete` or `checkpoint`, release a sandbox's files, notify its owner), which the
//! driver drains and performs. The core never calls the driver: when performing an action
//! fails, the driver feeds that back as an event, whose actions join the end of the queue. So
//! nothing is re-entrant, the order of effects is the order of the queue, and every flow is a
//! unit test with synthetic events (`tests.rs`), no runsc needed.
//!
//! Timers are data here: the core arms and cancels deadlines in its heap, the driver asks for
//! the next one ([`Core::next_deadline`]) and calls [`Core::handle_timeout`] when it passed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::agent_protocol::MAX_CHUNK_BYTES;
use crate::agent_protocol::{
    CellRequest, ContextCommand, ExecId, FromAgent, ProcessLimits, SpawnRequest, TerminalSize,
    ToAgent,
};
use crate::ids::SandboxId;
use crate::timers::{TimerId, Timers};

use super::exec::Reason;
use super::execs::Execs;
use super::health::StartHealth;
use super::lifecycle::{self, Event, Lifecycle, State};
use super::pool::{Admission, Pools, Readiness, Slots};
use super::refill::{FreshTarget, RefillBackoff};
use super::{ExecSpec, Notice, Owner, RuntimeError, RuntimeEvent, RuntimeStats, SandboxKey};

#[cfg(test)]
mod tests;

/// After a kill, how long the agent has to report the exit before the sandbox is deleted.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// What the core is told once, at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `SANDBOX_MAX_SANDBOXES`: live runsc sandboxes, pooled ones included.
    pub max_sandboxes: usize,
    /// How long a start (or a wait for a slot) may take.
    pub create_timeout: Duration,
    /// Output allowed per execution.
    pub max_output_bytes: u64,
    /// Limits of every process the agent spawns.
    pub process_limits: ProcessLimits,
    /// At most this many snapshot pools (0: none).
    pub snapshot_pools_max: usize,
    /// `SANDBOX_POOL_SIZE`: fresh sandboxes kept started at least (0: no pool).
    pub pool_size: usize,
    /// `SANDBOX_POOL_MAX`: how deep the fresh pool may grow with demand.
    pub pool_max: usize,
}

/// What the driver must do, in queue order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start the sandbox's container with fresh agent pipes: `runsc run`, or `runsc restore`
    /// from `image` (deleting the stopped container it replaces, if any). The start timer runs
    /// already; if nothing could be spawned, the driver reports [`Core::start_failed`].
    Start {
        key: SandboxKey,
        image: Option<PathBuf>,
    },
    /// Send a frame to the sandbox's agent (dropped if its pipes are closed).
    Send(SandboxKey, ToAgent),
    /// Close the agent's pipes: its container is stopped.
    Disconnect(SandboxKey),
    /// Close the agent's pipes and spawn `runsc delete --force`; the driver reports
    /// [`Core::delete_exited`] (at once when there is no container to delete).
    Delete(SandboxKey),
    /// Spawn `runsc checkpoint` into `image`; the driver reports [`Core::checkpoint_exited`].
    Checkpoint { key: SandboxKey, image: PathBuf },
    /// The sandbox is gone: remove its bundle and its network.
    Release(SandboxKey),
    /// Hand this notice to the sandbox's owner.
    Notify(Notice),
}

/// Where a new sandbox's container comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `runsc run`.
    Fresh,
    /// `runsc restore` from a saved image; with `reset`, only its files are kept (snapshots).
    Image { image: PathBuf, reset: bool },
}

#[derive(Debug, Clone, Copy)]
enum Timer {
    /// The start (or the wait for a slot) took too long.
    Start(SandboxKey),
    ExecTimeout(SandboxKey, ExecId),
    /// A killed execution did not end.
    KillGrace(SandboxKey, ExecId),
    /// A deferred `runsc delete` may wait no longer.
    DeferredDelete(SandboxKey),
    /// A request waited for a fresh sandbox too long (the key names its claim).
    Claim(SandboxKey),
}

/// Real work waiting for a fresh sandbox, whichever becomes ready first (see
/// [`Core::queue_claim`]).
struct Claim {
    owner: Owner,
    /// Names the claim in the notice of its failure: a key reserved for it, never a sandbox's.
    key: SandboxKey,
    timer: TimerId,
}

/// How a request for a fresh sandbox was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// This ready sandbox is the owner's now (its `Ready` notice is queued).
    Sandbox(SandboxKey),
    /// The owner waits in line: it gets `Ready` from the sandbox it is given, or `StartFailed`
    /// naming this key (the claim's, not a sandbox's).
    Queued(SandboxKey),
}

struct Sandbox {
    id: SandboxId,
    owner: Option<Owner>,
    lifecycle: Lifecycle,
    execs: Execs,
    /// The image the next restore starts from, and whether the agent must then end every
    /// other process (a sandbox started from a snapshot keeps files, not processes).
    restore_from: Option<(PathBuf, bool)>,
    /// Where the requested checkpoint will write; set while the agent is being asked whether
    /// a checkpoint can work.
    checkpoint_to: Option<PathBuf>,
    /// When its current start began (for the start-time metric).
    created: Instant,
    start_timer: Option<TimerId>,
    /// Started by `runsc restore` (its failures say nothing about runsc itself).
    from_image: bool,
}

pub struct Core {
    settings: Settings,
    sandboxes: HashMap<SandboxKey, Sandbox>,
    by_id: HashMap<SandboxId, SandboxKey>,
    /// Unowned sandboxes (starting or ready): the fresh pool, and sandboxes already restored
    /// (and reset) from snapshot images used recently. They give their slots up to real work.
    pools: Pools,
    /// Sandboxes admitted while every slot was taken, in the order they get a slot.
    waiting: VecDeque<SandboxKey>,
    /// Requests waiting for a fresh sandbox, oldest first: each fresh pooled sandbox that
    /// becomes ready goes to the first of them.
    claims: VecDeque<Claim>,
    timers: Timers<Timer>,
    actions: VecDeque<Action>,
    next_key: u64,
    stats: RuntimeStats,
    /// How the last sandbox starts went (for readiness).
    health: StartHealth,
    /// How many fresh sandboxes the pool keeps, with demand.
    fresh_target: FreshTarget,
    /// Refills wait while starts keep failing.
    refill_backoff: RefillBackoff,
    /// Sandboxes whose agent is disconnected (their processes are gone) but whose `runsc
    /// delete` waits for the starts under way to end (see [`DEFERRED_DELETES_MAX`]).
    deferred_deletes: Vec<SandboxKey>,
    /// When real work last found a ready sandbox in the fresh pool, unless a request found
    /// none since (see [`Core::fresh_refill_wanted`]).
    last_hit: Option<Instant>,
}

/// Fresh pooled sandboxes started at the same time at most. A start spends much of its
/// ~150 ms waiting (processes spawned, the sentry booting, the agent's hello) rather than on
/// the CPU, so on 2 CPUs four starts at once finish about three times as many sandboxes per
/// second as one at a time (docs/performance.md); beyond that they mostly slow each other
/// and the real work beside them.
pub const POOL_STARTS_AT_ONCE: usize = 4;

/// The pool above `SANDBOX_POOL_SIZE` is refilled once no request found a ready sandbox in it
/// for this long, or at once after a request found none.
pub const DEEP_REFILL_QUIET: Duration = Duration::from_millis(250);

/// Used sandboxes whose `runsc delete` may wait at once, at most. While sandboxes start (a
/// burst of requests waits for them), each delete's CPU (a `runsc` process, the sandbox's and
/// gofer's teardown) slows the starts the requests wait for. A deferred sandbox is
/// disconnected at once, so its agent and every process in it end; only the host-side cleanup
/// waits, for [`DELETE_DEFER_MAX`] at most, and never while a request waits for a slot.
pub const DEFERRED_DELETES_MAX: usize = 8;

/// The longest a deferred `runsc delete` waits.
pub const DELETE_DEFER_MAX: Duration = Duration::from_secs(1);

impl Core {
    pub fn new(settings: Settings) -> Self {
        let fresh_target = FreshTarget::new(settings.pool_size, settings.pool_max);
        Core {
            pools: Pools::new(settings.snapshot_pools_max),
            settings,
            sandboxes: HashMap::new(),
            by_id: HashMap::new(),
            waiting: VecDeque::new(),
            claims: VecDeque::new(),
            timers: Timers::default(),
            actions: VecDeque::new(),
            next_key: 1,
            stats: RuntimeStats::default(),
            health: StartHealth::default(),
            fresh_target,
            refill_backoff: RefillBackoff::default(),
            deferred_deletes: Vec::new(),
            last_hit: None,
        }
    }

    // ---- What the driver asks -------------------------------------------------------------

    /// The next thing to do, in the order the events asked for them.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Core::handle_timeout`] must next be called.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        self.timers.next_deadline()
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

    pub fn is_empty(&self) -> bool {
        self.sandboxes.is_empty()
    }

    /// Sandboxes that exist as runsc sandboxes (pooled and being deleted included; not those
    /// waiting for a slot).
    pub fn live_sandboxes(&self) -> usize {
        self.sandboxes.len().saturating_sub(self.waiting.len())
    }

    pub fn waiting_for_slot(&self) -> usize {
        self.waiting.len()
    }

    /// Requests waiting in line for a fresh sandbox.
    pub fn waiting_for_sandbox(&self) -> usize {
        self.claims.len()
    }

    pub fn stats(&self) -> &RuntimeStats {
        &self.stats
    }

    pub fn stats_mut(&mut self) -> &mut RuntimeStats {
        &mut self.stats
    }

    /// Why sandboxes cannot be started, once `threshold` fresh starts failed in a row.
    pub fn start_problem(&self, threshold: u32) -> Option<String> {
        self.health.problem(threshold)
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
            max: self.settings.max_sandboxes,
            live: self.live_sandboxes(),
            releasing,
            waiting: self.waiting.len(),
        }
    }

    /// Slots nobody holds or has claimed: what a pool refill may use.
    pub fn free_slots(&self) -> usize {
        self.slots().free()
    }

    // ---- Admission, creation and pools ----------------------------------------------------

    /// How a new sandbox gets a slot: real work may wait for one or take one from the pools; a
    /// pool refill only uses a free one.
    pub fn admit(&self, real_work: bool) -> Result<Admission, RuntimeError> {
        let slots = self.slots();
        let admission = match real_work {
            true => self.pools.admit(slots),
            false if slots.free() > 0 => Admission::Start,
            false => Admission::Refuse,
        };
        match admission {
            Admission::Refuse => Err(RuntimeError::AtCapacity(self.settings.max_sandboxes)),
            admission => Ok(admission),
        }
    }

    /// A key for a sandbox about to be added (the driver names its pipes after it before the
    /// container of a fresh start exists).
    pub fn reserve_key(&mut self) -> SandboxKey {
        let key = SandboxKey(self.next_key);
        self.next_key += 1;
        key
    }

    /// A new sandbox under `key`. A fresh one admitted to start has its `runsc run` spawned
    /// already (the driver does that first, so that a failure is the caller's error); one
    /// from an image is restored now; one admitted to wait gets its slot later.
    pub fn add(
        &mut self,
        key: SandboxKey,
        id: SandboxId,
        owner: Option<Owner>,
        admission: Admission,
        origin: Origin,
        now: Instant,
    ) {
        let starts = admission == Admission::Start;
        let (lifecycle, restore_from) = match (origin, starts) {
            (Origin::Fresh, true) => (Lifecycle::new(), None),
            (Origin::Fresh, false) => (Lifecycle::waiting(), None),
            (Origin::Image { image, reset }, true) => (Lifecycle::stopped(), Some((image, reset))),
            (Origin::Image { image, reset }, false) => (Lifecycle::waiting(), Some((image, reset))),
        };
        let restoring = restore_from.is_some();
        self.sandboxes.insert(
            key,
            Sandbox {
                id,
                owner,
                lifecycle,
                execs: Execs::new(self.settings.max_output_bytes),
                restore_from,
                checkpoint_to: None,
                created: now,
                start_timer: None,
                from_image: false,
            },
        );
        self.by_id.insert(id, key);
        self.stats.created += 1;
        if !starts {
            self.wait_for_slot(key, admission, now);
        } else if restoring {
            self.apply(key, Event::RestoreRequested, now);
        } else {
            self.arm_start_timer(key, now);
        }
    }

    /// A fresh start failed before a sandbox was added (its `runsc run` could not be spawned).
    pub fn count_failed_start(&mut self, message: &str, now: Instant) {
        self.stats.start_failures += 1;
        self.health.failed(message);
        self.refill_backoff.failed(now);
    }

    /// How many fresh sandboxes the pool should hold now (see `runtime::refill`).
    pub fn fresh_pool_target(&mut self, now: Instant) -> usize {
        self.fresh_target.target(now)
    }

    /// Whether pools may start sandboxes now: not while starts keep failing.
    pub fn refill_allowed(&self, now: Instant) -> bool {
        self.refill_backoff.allows(now)
    }

    /// When refills may start again, while they wait after failed starts.
    pub fn refill_not_before(&self) -> Option<Instant> {
        self.refill_backoff.not_before()
    }

    /// How many fresh sandboxes to start for the pool now (before the slot limit): up to its
    /// target, at most [`POOL_STARTS_AT_ONCE`] starting at a time. Below `SANDBOX_POOL_SIZE`
    /// at once. The part above it (grown with demand): at once after a request found no
    /// ready sandbox (requests are waiting for starts: the sooner the better), but while
    /// requests find ready ones, only after [`DEEP_REFILL_QUIET`] without such a hit, so that
    /// the requests the deep pool serves do not share the CPU with `runsc run`s starting their
    /// successors. The starts promised to requests in line count neither as pool nor as pool
    /// starts (as when a request took a start for itself).
    pub fn fresh_refill_wanted(&mut self, now: Instant) -> usize {
        if !self.refill_backoff.allows(now) {
            return 0;
        }
        let quiet = self
            .last_hit
            .is_none_or(|hit| now.saturating_duration_since(hit) >= DEEP_REFILL_QUIET);
        let target = if quiet {
            self.fresh_target.target(now)
        } else {
            self.settings.pool_size
        };
        let promised = self.claims.len();
        let starting = self.fresh_pool_starting().saturating_sub(promised);
        let room = POOL_STARTS_AT_ONCE.saturating_sub(starting);
        target.saturating_sub(self.fresh_spare()).min(room)
    }

    /// Pooled fresh sandboxes not promised to the requests in line.
    fn fresh_spare(&self) -> usize {
        self.pools.fresh_len().saturating_sub(self.claims.len())
    }

    /// When refills must next be looked at again although nothing happened: the end of their
    /// wait after failed starts, or of the quiet before the deep pool is refilled.
    pub fn refill_deadline(&mut self, now: Instant) -> Option<Instant> {
        let backoff = self.refill_backoff.not_before().filter(|at| *at > now);
        let deep = self
            .last_hit
            .map(|hit| hit + DEEP_REFILL_QUIET)
            .filter(|at| *at > now && self.fresh_spare() < self.fresh_target.target(now));
        match (backoff, deep) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Pooled fresh sandboxes beyond the target (demand went down): to be deleted, the oldest
    /// first. The starts that requests in line wait for are not surplus (without a pool,
    /// `SANDBOX_POOL_SIZE=0`, they are the only fresh pooled sandboxes).
    pub fn surplus_fresh(&mut self, now: Instant) -> Vec<SandboxKey> {
        let target = self.fresh_target.target(now) + self.claims.len();
        let mut surplus = Vec::new();
        while self.pools.fresh_len() > target {
            let oldest = self.pools.fresh().next();
            match oldest {
                Some(key) => {
                    self.pools.remove(key);
                    surplus.push(key);
                }
                None => break,
            }
        }
        surplus
    }

    /// Queue the new sandbox `key` for a slot, giving up a pooled sandbox for it if admitted so.
    /// The wait is bounded by the create timeout.
    fn wait_for_slot(&mut self, key: SandboxKey, admission: Admission, now: Instant) {
        if let Admission::Evict(pooled) = admission {
            self.pools.remove(pooled);
            self.stats.pool_evictions += 1;
            self.delete(pooled, now);
        }
        self.arm_start_timer(key, now);
        self.waiting.push_back(key);
        // The slot it waits for may be one whose delete was deferred.
        self.end_deferred_deletes();
    }

    fn arm_start_timer(&mut self, key: SandboxKey, now: Instant) {
        let timer = self.timers.arm(
            deadline(now, self.settings.create_timeout),
            Timer::Start(key),
        );
        if let Some(sandbox) = self.sandboxes.get_mut(&key) {
            if let Some(old) = sandbox.start_timer.replace(timer) {
                self.timers.cancel(old);
            }
        }
    }

    fn cancel_start_timer(&mut self, key: SandboxKey) {
        if let Some(timer) = self
            .sandboxes
            .get_mut(&key)
            .and_then(|sandbox| sandbox.start_timer.take())
        {
            self.timers.cancel(timer);
        }
    }

    /// Start waiting sandboxes in the slots freed since.
    pub fn grant_slots(&mut self, now: Instant) {
        while self.slots().can_grant() {
            let Some(key) = self.waiting.pop_front() else {
                return;
            };
            if !self.sandboxes.contains_key(&key) {
                continue;
            }
            self.cancel_start_timer(key);
            if let Some(sandbox) = self.sandboxes.get_mut(&key) {
                sandbox.created = now;
            }
            self.apply(key, Event::SlotGranted, now);
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

    fn count_ready(&self, keys: impl Iterator<Item = SandboxKey>) -> usize {
        keys.filter(|key| self.state(*key) == Some(State::Ready))
            .count()
    }

    pub fn pool_ready(&self) -> usize {
        self.count_ready(self.pools.fresh())
    }

    pub fn snapshot_pool_ready(&self) -> usize {
        self.count_ready(self.pools.snapshot_sandboxes())
    }

    /// Snapshot images that have a pool now.
    pub fn snapshot_pools(&self) -> usize {
        self.pools.snapshot_pools()
    }

    pub fn fresh_pool_len(&self) -> usize {
        self.pools.fresh_len()
    }

    /// Pooled fresh sandboxes still starting.
    pub fn fresh_pool_starting(&self) -> usize {
        self.pools
            .fresh()
            .filter(|key| self.state(*key) == Some(State::Starting))
            .count()
    }

    pub fn snapshot_pool_len(&self, image: &Path) -> usize {
        self.pools.snapshot_len(image)
    }

    /// The images that have a pool, most recently used first (the order refills follow).
    pub fn pool_images(&self) -> Vec<PathBuf> {
        self.pools.images()
    }

    pub fn add_to_fresh_pool(&mut self, key: SandboxKey) {
        self.pools.add_fresh(key);
    }

    /// Pool `key` for `image`; if `image` has no pool any more, `key` is deleted.
    pub fn add_to_snapshot_pool(&mut self, image: &Path, key: SandboxKey, now: Instant) {
        if !self.pools.add_snapshot(image, key) {
            self.delete(key, now);
        }
    }

    /// A pooled fresh sandbox for real work that keeps the sandbox it is given (a WebSocket
    /// session): ready first, else the oldest still starting. Not finding a ready one is a
    /// miss: the pool deepens (see `runtime::refill`), and its deep part is refilled at once.
    /// While requests wait in line for a fresh sandbox, the starts under way are theirs: none
    /// is taken (the caller starts its own).
    pub fn take_fresh(&mut self, now: Instant) -> Option<SandboxKey> {
        let sandboxes = &self.sandboxes;
        let taken = if self.claims.is_empty() {
            self.pools.take_fresh(|key| Self::readiness(sandboxes, key))
        } else {
            None
        };
        self.count_hit_or_miss(taken, now);
        taken
    }

    /// A ready pooled fresh sandbox for `owner`, if there is one and no request waits in line
    /// before it (see [`Core::queue_claim`]); a miss otherwise (see [`Core::take_fresh`]).
    pub fn take_ready_fresh(&mut self, owner: Owner, now: Instant) -> Option<SandboxKey> {
        let sandboxes = &self.sandboxes;
        let ready_only = |key| match Self::readiness(sandboxes, key) {
            Readiness::Ready => Readiness::Ready,
            _ => Readiness::Unusable,
        };
        let taken = if self.claims.is_empty() {
            self.pools.take_fresh(ready_only)
        } else {
            None
        };
        self.count_hit_or_miss(taken, now);
        taken.filter(|key| self.hand_over(*key, owner))
    }

    fn count_hit_or_miss(&mut self, taken: Option<SandboxKey>, now: Instant) {
        if taken.is_none_or(|key| self.state(key) != Some(State::Ready)) {
            self.fresh_target.missed(now);
            self.last_hit = None;
        } else {
            self.last_hit = Some(now);
        }
    }

    /// Pooled fresh sandboxes on their way to ready: starting, or admitted to wait for a slot.
    fn fresh_starts_under_way(&self) -> usize {
        self.pools
            .fresh()
            .filter(|key| matches!(self.state(*key), Some(State::Starting | State::Waiting)))
            .count()
    }

    /// Whether one more request may wait in line, and if it needs a fresh start of its own, how
    /// that start gets a slot. Each request in line has a start under way (the starts serve the
    /// line in order, whichever ends first): `None` if the starts under way are more than the
    /// requests in line. Else, like any real work, the start may wait for a slot being freed or
    /// take a pooled sandbox's. Refused (as a create would be) when every slot holds real work
    /// or a start already promised to the line.
    pub fn admit_claim(&self) -> Result<Option<Admission>, RuntimeError> {
        if self.claims.len() < self.fresh_starts_under_way() {
            return Ok(None);
        }
        match self.admit(true)? {
            // No ready one is pooled while requests wait: this one is promised to the line.
            Admission::Evict(pooled) if self.pools.is_fresh(pooled) => {
                Err(RuntimeError::AtCapacity(self.settings.max_sandboxes))
            }
            admission => Ok(Some(admission)),
        }
    }

    /// `owner` found no ready fresh sandbox (see [`Core::take_ready_fresh`]) and waits in line:
    /// the fresh pooled sandboxes that become ready go to the requests in line in the order
    /// they came, whichever start ends first. A start belongs to nobody until it is ready, so
    /// an early request never waits for a slow start while later ones are served by faster
    /// ones. The wait is bounded by the create timeout.
    pub fn queue_claim(&mut self, owner: Owner, now: Instant) -> SandboxKey {
        let key = self.reserve_key();
        let timer = self.timers.arm(
            deadline(now, self.settings.create_timeout),
            Timer::Claim(key),
        );
        self.claims.push_back(Claim { owner, key, timer });
        key
    }

    /// The owner no longer waits (its client went away): its place in line is given up. The
    /// starts under way stay in the pool, for the next request.
    pub fn withdraw_claims(&mut self, owner: Owner) {
        let timers: Vec<TimerId> = self
            .claims
            .iter()
            .filter(|claim| claim.owner == owner)
            .map(|claim| claim.timer)
            .collect();
        timers
            .into_iter()
            .for_each(|timer| self.timers.cancel(timer));
        self.claims.retain(|claim| claim.owner != owner);
    }

    /// A sandbox handed to an owner that went away before it used it (its `Ready` notice found
    /// nobody): back to the line or the fresh pool if nothing ever ran in it, deleted otherwise.
    pub fn give_back(&mut self, key: SandboxKey, now: Instant) {
        let unused = self.sandboxes.get_mut(&key).is_some_and(|sandbox| {
            sandbox.lifecycle.state() == State::Ready
                && !sandbox.from_image
                && sandbox.execs.is_empty()
                && sandbox.checkpoint_to.is_none()
        });
        if !unused {
            return self.delete(key, now);
        }
        if let Some(sandbox) = self.sandboxes.get_mut(&key) {
            sandbox.owner = None;
        }
        self.pools.add_fresh(key);
        self.serve_claim(key);
    }

    /// The fresh pooled sandbox `key` is ready: it goes to the first request in line, if any.
    fn serve_claim(&mut self, key: SandboxKey) {
        if !self.pools.is_fresh(key) || self.state(key) != Some(State::Ready) {
            return;
        }
        let Some(claim) = self.claims.pop_front() else {
            return;
        };
        self.timers.cancel(claim.timer);
        self.pools.remove(key);
        self.hand_over(key, claim.owner);
    }

    /// A fresh pooled start failed: the requests in line beyond the starts still under way
    /// fail with it, the newest first (the older ones are served first by the starts left).
    fn fail_uncovered_claims(&mut self, message: &str) {
        while self.claims.len() > self.fresh_starts_under_way() {
            let Some(claim) = self.claims.pop_back() else {
                return;
            };
            self.timers.cancel(claim.timer);
            self.notify_claim(&claim, message.to_string());
        }
    }

    /// A request in line waited for the create timeout.
    fn claim_timed_out(&mut self, key: SandboxKey) {
        let Some(position) = self.claims.iter().position(|claim| claim.key == key) else {
            return;
        };
        let Some(claim) = self.claims.remove(position) else {
            return;
        };
        let message = format!(
            "no sandbox became ready within {} s; retry shortly",
            self.settings.create_timeout.as_secs()
        );
        self.notify_claim(&claim, message);
    }

    fn notify_claim(&mut self, claim: &Claim, message: String) {
        self.actions.push_back(Action::Notify(Notice {
            owner: claim.owner,
            sandbox: claim.key,
            event: RuntimeEvent::StartFailed(message),
        }));
    }

    /// A create from the snapshot `image` is asked for: its pool becomes the most recently
    /// used (made if need be; one beyond the cap drops the least recently used pool, whose
    /// sandboxes are deleted). Then a pooled sandbox of it, if there is one.
    pub fn take_snapshot(&mut self, image: &Path, now: Instant) -> Option<SandboxKey> {
        for dropped in self.pools.use_snapshot(image) {
            self.delete(dropped, now);
        }
        let sandboxes = &self.sandboxes;
        self.pools
            .take_snapshot(image, |key| Self::readiness(sandboxes, key))
    }

    /// Delete the pooled sandboxes of the images `gone` names (the snapshot was replaced or
    /// deleted), so nobody gets an outdated one.
    pub fn drop_snapshot_pools(&mut self, gone: impl Fn(&Path) -> bool, now: Instant) {
        for key in self.pools.drop_pools(gone) {
            self.delete(key, now);
        }
    }

    /// Give a pooled sandbox to `owner`, telling it at once if the sandbox is ready.
    pub fn hand_over(&mut self, key: SandboxKey, owner: Owner) -> bool {
        let Some(sandbox) = self.sandboxes.get_mut(&key) else {
            return false;
        };
        sandbox.owner = Some(owner);
        if sandbox.lifecycle.state() == State::Ready {
            self.notify(key, RuntimeEvent::Ready);
        }
        true
    }

    // ---- Requests on a sandbox ------------------------------------------------------------

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

    /// Run code in a ready sandbox. Output and the end arrive as notices.
    pub fn start_exec(
        &mut self,
        key: SandboxKey,
        spec: ExecSpec,
        now: Instant,
    ) -> Result<ExecId, RuntimeError> {
        let limits = self.settings.process_limits.clone();
        let sandbox = self
            .sandboxes
            .get_mut(&key)
            .ok_or(RuntimeError::NoSuchSandbox)?;
        let state = sandbox.lifecycle.state();
        if !state.can_exec() {
            return Err(RuntimeError::WrongState(state.name()));
        }
        let exec = sandbox.execs.start(now, spec.stdin_bound)?;
        if spec.file.is_some() || spec.pty.is_some() {
            // SANDBOX_MAX_OUTPUT_BYTES bounds a run of code: not a file operation (its output
            // is the file) nor a terminal session.
            sandbox.execs.lift_output_limit(exec);
        }
        let frame = match spec.cell {
            Some(cell) => {
                sandbox.execs.mark_cell(exec);
                let request = CellRequest {
                    context_id: cell.context_id,
                    cwd: cell.cwd,
                    code: spec.code,
                    max_result_bytes: cell.max_result_bytes,
                };
                ToAgent::RunCell(exec, request)
            }
            None => {
                let request = SpawnRequest {
                    language: spec.language,
                    code: spec.code,
                    env: spec.env,
                    cwd: spec.cwd,
                    limits,
                    file: spec.file,
                    pty: spec.pty,
                };
                ToAgent::Spawn(exec, request)
            }
        };
        self.actions.push_back(Action::Send(key, frame));
        let timer = self
            .timers
            .arm(deadline(now, spec.timeout), Timer::ExecTimeout(key, exec));
        self.add_exec_timer(key, exec, timer);
        Ok(exec)
    }

    /// Open a relay to `port` on the sandbox's loopback (issue 20): an execution without a
    /// process, output limit or timeout. Its bytes arrive as `Output` notices, its end as
    /// `ExecFinished`; nothing listening is an `ExecSpawnFailed`.
    pub fn start_relay(
        &mut self,
        key: SandboxKey,
        port: u16,
        stdin_bound: u64,
        now: Instant,
    ) -> Result<ExecId, RuntimeError> {
        let sandbox = self
            .sandboxes
            .get_mut(&key)
            .ok_or(RuntimeError::NoSuchSandbox)?;
        let state = sandbox.lifecycle.state();
        if !state.can_exec() {
            return Err(RuntimeError::WrongState(state.name()));
        }
        let exec = sandbox.execs.start_relay(now, stdin_bound)?;
        self.actions
            .push_back(Action::Send(key, ToAgent::Connect(exec, port)));
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
        now: Instant,
    ) -> Result<(), RuntimeError> {
        let sandbox = self
            .sandboxes
            .get_mut(&key)
            .ok_or(RuntimeError::NoSuchSandbox)?;
        sandbox.execs.adopt(exec, now, stdin_bound);
        let timer = self
            .timers
            .arm(deadline(now, timeout), Timer::ExecTimeout(key, exec));
        self.add_exec_timer(key, exec, timer);
        Ok(())
    }

    fn add_exec_timer(&mut self, key: SandboxKey, exec: ExecId, timer: TimerId) {
        if let Some(sandbox) = self.sandboxes.get_mut(&key) {
            sandbox.execs.add_timer(exec, timer);
        }
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
        sandbox.execs.send_stdin(exec, data.len())?;
        for chunk in data.chunks(MAX_CHUNK_BYTES) {
            self.actions
                .push_back(Action::Send(key, ToAgent::Stdin(exec, chunk.to_vec())));
        }
        Ok(())
    }

    pub fn close_stdin(&mut self, key: SandboxKey, exec: ExecId) -> Result<(), RuntimeError> {
        let sandbox = self
            .sandboxes
            .get(&key)
            .ok_or(RuntimeError::NoSuchSandbox)?;
        if !sandbox.execs.contains(exec) {
            return Err(RuntimeError::NoSuchExecution);
        }
        self.actions
            .push_back(Action::Send(key, ToAgent::CloseStdin(exec)));
        Ok(())
    }

    /// Create or delete a code context in a ready sandbox (the agent answers with its table of
    /// contexts, `CodeContexts`).
    pub fn context_command(
        &mut self,
        key: SandboxKey,
        command: ContextCommand,
    ) -> Result<(), RuntimeError> {
        let sandbox = self
            .sandboxes
            .get(&key)
            .ok_or(RuntimeError::NoSuchSandbox)?;
        let state = sandbox.lifecycle.state();
        if !state.can_exec() {
            return Err(RuntimeError::WrongState(state.name()));
        }
        self.actions
            .push_back(Action::Send(key, ToAgent::Context(command)));
        Ok(())
    }

    /// Kill the execution's process group (a code cell is interrupted instead: SIGINT, and
    /// the agent kills its context if it does not come back within 2 s). Its `ExecFinished`
    /// carries `reason`; if it does not end within [`KILL_GRACE`], the sandbox is deleted.
    pub fn kill_exec(
        &mut self,
        key: SandboxKey,
        exec: ExecId,
        reason: Reason,
        now: Instant,
    ) -> Result<(), RuntimeError> {
        let sandbox = self
            .sandboxes
            .get_mut(&key)
            .ok_or(RuntimeError::NoSuchSandbox)?;
        sandbox.execs.mark_killed(exec, reason)?;
        let signal = if sandbox.execs.is_cell(exec) {
            libc::SIGINT
        } else {
            libc::SIGKILL
        };
        self.actions
            .push_back(Action::Send(key, ToAgent::Signal(exec, signal)));
        let timer = self
            .timers
            .arm(deadline(now, KILL_GRACE), Timer::KillGrace(key, exec));
        self.add_exec_timer(key, exec, timer);
        Ok(())
    }

    /// Set the window size of terminal execution `exec`.
    pub fn resize_terminal(
        &mut self,
        key: SandboxKey,
        exec: ExecId,
        size: TerminalSize,
    ) -> Result<(), RuntimeError> {
        let sandbox = self
            .sandboxes
            .get(&key)
            .ok_or(RuntimeError::NoSuchSandbox)?;
        if !sandbox.execs.contains(exec) {
            return Err(RuntimeError::NoSuchExecution);
        }
        self.actions
            .push_back(Action::Send(key, ToAgent::Resize(exec, size)));
        Ok(())
    }

    /// The sandbox's owner cannot take more output now (its buffer is full), or can again.
    /// Paused, the output already given to the owner is not given back to the agent's windows,
    /// so each execution stops once its window is used up.
    pub fn set_output_paused(&mut self, key: SandboxKey, paused: bool) {
        let Some(sandbox) = self.sandboxes.get_mut(&key) else {
            return;
        };
        for (exec, credit) in sandbox.execs.set_output_paused(paused) {
            self.send_credit(key, exec, credit);
        }
    }

    /// The owner cannot take more output of `exec` now (nobody reads it), or can again; the
    /// other executions go on.
    pub fn set_exec_output_paused(&mut self, key: SandboxKey, exec: ExecId, paused: bool) {
        let Some(sandbox) = self.sandboxes.get_mut(&key) else {
            return;
        };
        let credit = sandbox.execs.set_exec_output_paused(exec, paused);
        self.send_credit(key, exec, credit);
    }

    fn send_credit(&mut self, key: SandboxKey, exec: ExecId, bytes: u32) {
        if bytes > 0 {
            self.actions
                .push_back(Action::Send(key, ToAgent::Credit(exec, bytes)));
        }
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
        // Port relays do not count: the owner closes them before it asks (their sockets are
        // reset by the agent before it answers the inspection, which follows in its pipe);
        // any left are forgotten with the processes.
        if sandbox.execs.any_process() && !with_running {
            return Err(RuntimeError::WrongState("running an execution"));
        }
        if sandbox.checkpoint_to.is_some() {
            return Err(RuntimeError::WrongState("already being checkpointed"));
        }
        let timers = sandbox.execs.forget_all();
        // A failed `runsc checkpoint` leaves the container stopped, so first ask the agent
        // about what is known to make it fail; the answer (`Inspection`) continues this.
        sandbox.checkpoint_to = Some(image);
        timers
            .into_iter()
            .for_each(|timer| self.timers.cancel(timer));
        self.actions.push_back(Action::Send(key, ToAgent::Inspect));
        Ok(())
    }

    /// Start a stopped sandbox again from `image` (after a checkpoint or a snapshot). The owner
    /// gets `Ready` or `StartFailed`.
    pub fn restore_in_place(
        &mut self,
        key: SandboxKey,
        image: PathBuf,
        reset: bool,
        now: Instant,
    ) -> Result<(), RuntimeError> {
        let sandbox = self.sandbox_in(key, State::Stopped)?;
        sandbox.restore_from = Some((image, reset));
        self.apply(key, Event::RestoreRequested, now);
        Ok(())
    }

    /// Delete the sandbox (idempotent). Its owner gets `Deleted` when it is gone.
    pub fn delete(&mut self, key: SandboxKey, now: Instant) {
        self.apply(key, Event::DeleteRequested, now);
    }

    /// Delete every sandbox but `keep` (shutdown: those being checkpointed).
    pub fn delete_all_except(&mut self, keep: &HashSet<SandboxKey>, now: Instant) {
        let mut keys: Vec<SandboxKey> = self
            .sandboxes
            .keys()
            .copied()
            .filter(|key| !keep.contains(key))
            .collect();
        keys.sort();
        for key in keys {
            self.delete(key, now);
        }
        self.end_deferred_deletes();
        self.pools.clear();
        for claim in std::mem::take(&mut self.claims) {
            self.timers.cancel(claim.timer);
            self.notify_claim(&claim, "the server is shutting down".into());
        }
    }

    // ---- What happened (reported by the driver) --------------------------------------------

    /// A frame from the sandbox's agent. Frames come from inside the sandbox: nothing here
    /// trusts their numbers.
    pub fn on_frame(&mut self, key: SandboxKey, frame: FromAgent, now: Instant) {
        match frame {
            FromAgent::Ready(hello) => {
                if let Some(sandbox) = self.sandboxes.get_mut(&key) {
                    sandbox.execs.reserve_below(ExecId(hello.next_exec_id));
                }
                self.apply(key, Event::AgentReady, now)
            }
            FromAgent::Started(exec) => self.notify(key, RuntimeEvent::ExecStarted(exec)),
            FromAgent::SpawnFailed(exec, message) => {
                let timers = self
                    .sandboxes
                    .get_mut(&key)
                    .and_then(|sandbox| sandbox.execs.remove(exec));
                timers
                    .into_iter()
                    .flatten()
                    .for_each(|timer| self.timers.cancel(timer));
                self.notify(key, RuntimeEvent::ExecSpawnFailed(exec, message));
            }
            FromAgent::Output(exec, stream, mut data) => {
                let Some(sandbox) = self.sandboxes.get_mut(&key) else {
                    return;
                };
                let Some(step) = sandbox.execs.on_output(exec, data.len()) else {
                    // Nobody follows it: its output goes nowhere, and must not stall it.
                    let credit = u32::try_from(data.len()).unwrap_or(u32::MAX);
                    self.send_credit(key, exec, credit);
                    return;
                };
                data.truncate(step.deliver);
                if !data.is_empty() {
                    self.notify(key, RuntimeEvent::Output(exec, stream, data));
                }
                self.send_credit(key, exec, step.credit);
                if step.kill {
                    let _ = self.kill_exec(key, exec, Reason::OutputLimit, now);
                }
            }
            FromAgent::CellEvent(exec, mut data, last) => {
                // A cell's results count against its output limit like its output.
                let Some(sandbox) = self.sandboxes.get_mut(&key) else {
                    return;
                };
                let Some(step) = sandbox.execs.on_output(exec, data.len()) else {
                    let credit = u32::try_from(data.len()).unwrap_or(u32::MAX);
                    self.send_credit(key, exec, credit);
                    return;
                };
                let whole = step.deliver == data.len();
                data.truncate(step.deliver);
                // A part cut by the limit makes the event unreadable: the session drops it.
                self.notify(key, RuntimeEvent::CellEvent(exec, data, last || !whole));
                self.send_credit(key, exec, step.credit);
                if step.kill {
                    let _ = self.kill_exec(key, exec, Reason::OutputLimit, now);
                }
            }
            FromAgent::Contexts(contexts) => self.notify(key, RuntimeEvent::CodeContexts(contexts)),
            FromAgent::StdinWritten(exec, count) => {
                let Some(sandbox) = self.sandboxes.get_mut(&key) else {
                    return;
                };
                if sandbox.execs.contains(exec) {
                    sandbox.execs.stdin_written(exec, count);
                    self.notify(key, RuntimeEvent::StdinWritten(exec, count));
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
                    self.apply(key, Event::CheckpointRequested, now);
                }
            }
            FromAgent::Exited(exec, status) => {
                let ended = self
                    .sandboxes
                    .get_mut(&key)
                    .and_then(|sandbox| sandbox.execs.finish(exec, status, now));
                if let Some(ended) = ended {
                    ended
                        .timers
                        .into_iter()
                        .for_each(|timer| self.timers.cancel(timer));
                    self.notify(key, RuntimeEvent::ExecFinished(exec, ended.outcome));
                }
            }
        }
    }

    /// The agent's pipe closed, failed or spoke garbage: `reason` says which (or, while the
    /// sandbox was starting, what runsc logged).
    pub fn agent_lost(&mut self, key: SandboxKey, reason: String, now: Instant) {
        self.apply(key, Event::AgentLost(reason), now);
    }

    /// `runsc run` or `runsc restore` exited; `Err` carries what runsc logged.
    pub fn run_exited(&mut self, key: SandboxKey, result: Result<(), String>, now: Instant) {
        self.apply(key, Event::RunExited(result), now);
    }

    /// An [`Action::Start`] could not spawn anything.
    pub fn start_failed(&mut self, key: SandboxKey, message: String, now: Instant) {
        self.apply(key, Event::RunExited(Err(message)), now);
    }

    pub fn delete_exited(&mut self, key: SandboxKey, now: Instant) {
        self.apply(key, Event::DeleteExited, now);
    }

    /// `runsc checkpoint` exited (or could not be spawned); `Err` carries why it failed.
    pub fn checkpoint_exited(&mut self, key: SandboxKey, result: Result<(), String>, now: Instant) {
        self.apply(key, Event::CheckpointExited(result), now);
    }

    /// Act on every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        for timer in self.timers.pop_expired(now) {
            match timer {
                Timer::Start(key) => self.apply(key, Event::StartTimedOut, now),
                Timer::ExecTimeout(key, exec) => {
                    let _ = self.kill_exec(key, exec, Reason::Timeout, now);
                }
                Timer::DeferredDelete(key) => self.end_deferred_delete(key),
                Timer::Claim(key) => self.claim_timed_out(key),
                Timer::KillGrace(key, exec) => {
                    eprintln!(
                        "runtime: sandbox key {key}: execution {exec} ignored SIGKILL; deleting the sandbox"
                    );
                    let reason = format!("the sandbox did not stop execution {exec}");
                    self.apply(key, Event::AgentLost(reason), now);
                }
            }
        }
    }

    // ---- The lifecycle and its effects -----------------------------------------------------

    /// Feed `event` to the sandbox's lifecycle and queue what its actions mean. An action that
    /// cannot be carried out turns into the next event for the same lifecycle, handled in turn
    /// (never by calling back into this function).
    fn apply(&mut self, key: SandboxKey, event: Event, now: Instant) {
        let mut events = VecDeque::from([event]);
        while let Some(event) = events.pop_front() {
            let Some(sandbox) = self.sandboxes.get_mut(&key) else {
                break;
            };
            for action in sandbox.lifecycle.handle(event) {
                if let Some(next) = self.carry_out(key, action, now) {
                    events.push_back(next);
                }
            }
        }
        if !self.deferred_deletes.is_empty() && !self.deletes_may_wait() {
            self.end_deferred_deletes();
        }
    }

    /// Whether one more used sandbox's `runsc delete` may wait (see [`DEFERRED_DELETES_MAX`]).
    fn may_defer_delete(&self) -> bool {
        self.deferred_deletes.len() < DEFERRED_DELETES_MAX && self.deletes_may_wait()
    }

    /// Deletes wait only while sandboxes start and no request waits for a slot.
    fn deletes_may_wait(&self) -> bool {
        self.waiting.is_empty()
            && self
                .sandboxes
                .values()
                .any(|sandbox| sandbox.lifecycle.state() == State::Starting)
    }

    /// Spawn the deferred deletes now.
    fn end_deferred_deletes(&mut self) {
        for key in std::mem::take(&mut self.deferred_deletes) {
            self.actions.push_back(Action::Delete(key));
        }
    }

    fn end_deferred_delete(&mut self, key: SandboxKey) {
        if let Some(at) = self.deferred_deletes.iter().position(|k| *k == key) {
            self.deferred_deletes.remove(at);
            self.actions.push_back(Action::Delete(key));
        }
    }

    fn notify(&mut self, key: SandboxKey, event: RuntimeEvent) {
        if let Some(owner) = self.sandboxes.get(&key).and_then(|sandbox| sandbox.owner) {
            self.actions.push_back(Action::Notify(Notice {
                owner,
                sandbox: key,
                event,
            }));
        }
    }

    fn carry_out(
        &mut self,
        key: SandboxKey,
        action: lifecycle::Action,
        now: Instant,
    ) -> Option<Event> {
        use lifecycle::Action as Do;
        match action {
            Do::NotifyReady => {
                self.cancel_start_timer(key);
                if let Some(sandbox) = self.sandboxes.get(&key) {
                    let seconds = now.saturating_duration_since(sandbox.created).as_secs_f64();
                    self.stats.start_seconds.push(seconds);
                }
                self.health.started();
                self.refill_backoff.succeeded();
                self.notify(key, RuntimeEvent::Ready);
                self.serve_claim(key);
            }
            Do::NotifyStartFailed(message) => {
                self.stats.start_failures += 1;
                let (fresh, pooled) = self.sandboxes.get(&key).map_or((false, false), |sandbox| {
                    (!sandbox.from_image, sandbox.owner.is_none())
                });
                if fresh {
                    self.health.failed(&message);
                }
                // A pool refill must not retry at once what just failed (a fresh start: runsc
                // itself; a pooled restore: its snapshot's image).
                if fresh || pooled {
                    self.refill_backoff.failed(now);
                }
                eprintln!("runtime: sandbox key {key} failed to start: {message}");
                if fresh && pooled && self.pools.is_fresh(key) {
                    self.fail_uncovered_claims(&message);
                }
                self.notify(key, RuntimeEvent::StartFailed(message));
            }
            Do::NotifyLost(message) => {
                self.stats.lost += 1;
                eprintln!("runtime: sandbox key {key} lost: {message}");
                self.end_all_execs(key, now);
                self.notify(key, RuntimeEvent::Lost(message));
            }
            Do::StartDelete => {
                self.end_all_execs(key, now);
                self.cancel_start_timer(key);
                self.pools.remove(key);
                if self.may_defer_delete() {
                    self.actions.push_back(Action::Disconnect(key));
                    self.deferred_deletes.push(key);
                    self.timers
                        .arm(deadline(now, DELETE_DEFER_MAX), Timer::DeferredDelete(key));
                } else {
                    self.actions.push_back(Action::Delete(key));
                }
            }
            Do::StartCheckpoint => {
                let image = self
                    .sandboxes
                    .get_mut(&key)
                    .and_then(|sandbox| sandbox.checkpoint_to.take());
                match image {
                    Some(image) => self.actions.push_back(Action::Checkpoint { key, image }),
                    None => {
                        return Some(Event::CheckpointExited(Err(
                            "no image directory to checkpoint into".into(),
                        )))
                    }
                }
            }
            Do::NotifyCheckpointed(result) => {
                // The container is stopped: its agent pipes are dead.
                self.actions.push_back(Action::Disconnect(key));
                self.notify(key, RuntimeEvent::Checkpointed(result));
            }
            Do::StartRestore => return self.start_restore(key, now),
            Do::StartContainer => {
                let restoring = self
                    .sandboxes
                    .get(&key)
                    .is_some_and(|sandbox| sandbox.restore_from.is_some());
                if restoring {
                    return self.start_restore(key, now);
                }
                self.arm_start_timer(key, now);
                self.actions.push_back(Action::Start { key, image: None });
            }
            Do::NotifyNoSlot => {
                let message = format!(
                    "the server is at its limit of {} sandboxes and no slot became free within {} s; retry shortly",
                    self.settings.max_sandboxes,
                    self.settings.create_timeout.as_secs()
                );
                self.notify(key, RuntimeEvent::StartFailed(message));
            }
            Do::Forget => {
                self.waiting.retain(|waiting| *waiting != key);
                // A pooled start admitted to wait for a slot (for a request in line).
                self.pools.remove(key);
                self.cancel_start_timer(key);
                if let Some(sandbox) = self.sandboxes.remove(&key) {
                    self.by_id.remove(&sandbox.id);
                    self.actions.push_back(Action::Release(key));
                    if let Some(owner) = sandbox.owner {
                        self.actions.push_back(Action::Notify(Notice {
                            owner,
                            sandbox: key,
                            event: RuntimeEvent::Deleted,
                        }));
                    }
                }
            }
        }
        None
    }

    /// `runsc restore` from the sandbox's image, then ask the restored agent (which is
    /// mid-loop) to say hello, and to end every other process first if asked.
    fn start_restore(&mut self, key: SandboxKey, now: Instant) -> Option<Event> {
        let sandbox = self.sandboxes.get_mut(&key)?;
        sandbox.from_image = true;
        let Some((image, reset)) = sandbox.restore_from.take() else {
            return Some(Event::RunExited(Err("no image to restore from".into())));
        };
        sandbox.created = now;
        self.arm_start_timer(key, now);
        self.actions.push_back(Action::Start {
            key,
            image: Some(image),
        });
        self.actions
            .push_back(Action::Send(key, ToAgent::Resume { reset }));
        None
    }

    /// End every execution of a dying sandbox, so owners are never left waiting.
    fn end_all_execs(&mut self, key: SandboxKey, now: Instant) {
        let Some(sandbox) = self.sandboxes.get_mut(&key) else {
            return;
        };
        for ended in sandbox.execs.end_all_lost(now) {
            ended
                .timers
                .into_iter()
                .for_each(|timer| self.timers.cancel(timer));
            self.notify(key, RuntimeEvent::ExecFinished(ended.exec, ended.outcome));
        }
    }
}

/// `now + timeout`, without the panic of `Instant + Duration` on overflow: a timeout too far to
/// represent is as good as none.
pub fn deadline(now: Instant, timeout: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(timeout)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}
