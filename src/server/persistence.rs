//! The persistence pipeline: checkpoints, restores and filesystem snapshots, leases, and the
//! store's own upkeep, as the event loop runs them.
//!
//! [`Persistence`] owns the pipeline's state and starts its work on worker threads (every
//! touch of the store is in `store_work`); the machines in `save` and `attach` decide the
//! steps; the `impl Server` part below carries out their decisions that need the runtime or a
//! connection, and routes the workers' results back.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::api::{ApiError, Response};
use super::attach::{Decision, StoredAttach};
use super::connection::{ConnectionId, Phase};
use super::jobs::Jobs;
use super::recovery::Peer;
use super::save::{Action, Report, Save};
use super::sessions::Control;
use super::store_work::{
    self, AttachCheck, AttachOutcome, CheckpointQuery, DeleteError, HandoffAsked, StoredSandbox,
    VerifiedImage,
};
use super::websocket::Waiting;
use super::Server;
use crate::agent_protocol::{ExecId, Language};
use crate::config::Config;
use crate::ids::SandboxId;
use crate::runtime::{Owner, RuntimeEvent};
use crate::session::events::{OutputEncoding, ProcessKind};
use crate::session::{RequestId, SaveRequest, SavedProcess, SavedState, Session, SessionId};
use crate::store::{self, handoff, lease, leftovers, port_links, Builds, SavedSettings};

/// Sandbox directories one sweep of the checkpoint store examines at most.
const SWEEP_MAX_DIRS: usize = 256;
/// How often an attach waiting for a handoff reads the lease (a list and a small read).
const HANDOFF_WAIT_POLL: Duration = Duration::from_millis(100);

/// What a worker thread reports back.
pub enum JobResult {
    /// A save's image directory was made (or not).
    Prepared {
        session: SessionId,
        image: Result<PathBuf, String>,
    },
    /// A save's image was hashed and published (or not).
    Published {
        session: SessionId,
        result: Result<(), String>,
    },
    /// The store answered an attach.
    AttachChecked {
        connection: ConnectionId,
        outcome: AttachOutcome,
    },
    /// The snapshot a session is created from was found and verified (or not).
    SnapshotFound {
        session: SessionId,
        name: String,
        found: Result<VerifiedImage, String>,
    },
    /// `GET /snapshots` was answered.
    SnapshotsListed {
        connection: ConnectionId,
        list: Value,
    },
    /// `DELETE /snapshots/{name}` was carried out (or not).
    SnapshotDeleted {
        connection: ConnectionId,
        name: String,
        result: Result<(), DeleteError>,
    },
    /// A killed session's saved state is gone.
    SavedStateRemoved { session: SessionId },
    /// A lease was renewed (or lost) or taken for a new sandbox.
    LeaseRenewed {
        session: SessionId,
        result: Result<lease::Lease, lease::LeaseError>,
    },
    /// The checkpoint store was swept for leftovers of killed instances.
    StoreSwept(leftovers::Sweep),
    /// The sandboxes other instances asked for (handoff requests found in the store).
    HandoffsWatched(Vec<SessionId>),
    /// `GET /sandboxes?checkpointed=1` was answered.
    CheckpointsListed {
        connection: ConnectionId,
        list: Value,
    },
    /// The store said what it knows of the sandbox of a files request (not live here).
    FilesSandboxChecked {
        connection: ConnectionId,
        sandbox_id: String,
        stored: StoredSandbox,
    },
    /// The store said where the sandbox of a port link unknown here is.
    PortLinkChecked {
        connection: ConnectionId,
        stored: StoredSandbox,
    },
    /// A batch of port link records was written and removed.
    PortLinksUpdated,
    /// Fire-and-forget work (discarding an image, releasing a lease).
    Done,
}

/// Port links looked up in the store at once at most: anyone can present a link, and each
/// look is a read of shared storage (a network call on Cloud Storage).
const MAX_PORT_LINK_LOOKUPS: usize = 16;

/// The periodic sweep of the checkpoint store.
struct StoreSweep {
    next: Instant,
    running: bool,
    /// Where the next sweep goes on.
    resume_after: Option<String>,
}

/// Where the store is and how leases and handoffs behave.
struct StoreSettings {
    checkpoint_root: Option<PathBuf>,
    snapshot_root: Option<PathBuf>,
    lease_ttl: Duration,
    lease_settle: Duration,
    sweep_interval: Duration,
    /// How often the handoff requests of the sandboxes held here are looked for.
    handoff_poll: Duration,
    /// How long an attach waits for another instance to hand a sandbox over.
    handoff_timeout: Duration,
}

/// A lease of a checkpointable sandbox run here.
struct HeldLease {
    base: PathBuf,
    /// `None` until the claim of a new sandbox is written.
    lease: Option<lease::Lease>,
    /// A claim or renewal of it is being written (on a worker thread): a release waits for it,
    /// or the late write would take the lease back.
    writing: bool,
    /// Give it up once the write in progress is done (the session ended or checkpointed).
    release_when_written: bool,
}

/// The periodic look for handoff requests.
struct HandoffWatch {
    next: Instant,
    running: bool,
}

/// The pipeline's state: worker threads, saves and attaches in progress, leases held.
pub struct Persistence {
    jobs: Jobs<JobResult>,
    store: StoreSettings,
    saves: HashMap<SessionId, Save>,
    /// Attaches waiting for the store, by connection.
    attaches: HashMap<ConnectionId, StoredAttach>,
    /// Leases of checkpointable sandboxes run here.
    leases: HashMap<SessionId, HeldLease>,
    next_lease_renewal: Instant,
    handoff_watch: HandoffWatch,
    /// Snapshot images verified on this instance, by name.
    verified_snapshots: HashMap<String, VerifiedImage>,
    sweep: StoreSweep,
    /// Names this server process in leases.
    instance_id: String,
    /// The sandbox image and agent builds, recorded with checkpoints.
    builds: Builds,
    /// Port links being looked up in the store (see `MAX_PORT_LINK_LOOKUPS`).
    port_lookups: usize,
    /// Port link records to write or remove, in order, one batch at a time (a write and a
    /// removal of the same link on two threads could land in the wrong order).
    port_link_updates: Vec<PortLinkUpdate>,
    port_link_updating: bool,
}

/// Carry out one change to the port link records (on a worker thread).
fn apply_port_link_update(root: &std::path::Path, update: PortLinkUpdate) {
    match update {
        PortLinkUpdate::Record {
            digest,
            sandbox_id,
            port,
        } => {
            if let Err(error) = port_links::write(root, &digest, &sandbox_id, port) {
                eprintln!(
                    "persistence: cannot record the link of port {port} of {sandbox_id}: {error}"
                );
            }
        }
        PortLinkUpdate::Forget(digest) => port_links::remove(root, &digest),
    }
}

/// A change to the store's port link records (`store::port_links`).
enum PortLinkUpdate {
    Record {
        digest: String,
        sandbox_id: String,
        port: u16,
    },
    Forget(String),
}

impl Persistence {
    pub fn new(config: &Config, jobs: Jobs<JobResult>, instance_id: String) -> Self {
        let now = Instant::now();
        // Read once at start, from the local image (not the store).
        let rootfs_stamp = std::fs::read_to_string(config.rootfs.join(".sandbox-image-stamp"))
            .map(|stamp| stamp.trim().to_string())
            .unwrap_or_default();
        // The agent is mounted from the host into every sandbox; a checkpoint records which
        // build ran in it (a restored agent of another build crashes).
        let agent = match store::file_sha256(&config.agent_path) {
            Ok((_, sha256)) => {
                if config.checkpoint_path.is_some() || config.snapshot_path.is_some() {
                    eprintln!("persistence: agent build {sha256} (recorded with checkpoints and snapshots)");
                }
                sha256
            }
            Err(error) => {
                eprintln!(
                    "persistence: cannot hash the agent {}: {error}; checkpoints will not record its build",
                    config.agent_path.display()
                );
                String::new()
            }
        };
        Persistence {
            jobs,
            store: StoreSettings {
                checkpoint_root: config.checkpoint_path.clone(),
                snapshot_root: config.snapshot_path.clone(),
                lease_ttl: config.lease_ttl,
                lease_settle: config.lease_settle,
                sweep_interval: config.store_sweep_interval,
                handoff_poll: config.handoff_poll,
                handoff_timeout: config.handoff_timeout,
            },
            saves: HashMap::new(),
            attaches: HashMap::new(),
            leases: HashMap::new(),
            next_lease_renewal: now,
            handoff_watch: HandoffWatch {
                next: now,
                running: false,
            },
            verified_snapshots: HashMap::new(),
            sweep: StoreSweep {
                next: now + config.store_sweep_interval,
                running: false,
                resume_after: None,
            },
            instance_id,
            builds: Builds {
                rootfs_stamp,
                agent,
            },
            port_lookups: 0,
            port_link_updates: Vec::new(),
            port_link_updating: false,
        }
    }

    /// Worker threads still running (shutdown waits for them).
    pub fn running_jobs(&self) -> usize {
        self.jobs.running()
    }

    pub fn has_checkpoint_store(&self) -> bool {
        self.store.checkpoint_root.is_some()
    }

    fn checkpoint_base(&self, sandbox_id: &str) -> Option<PathBuf> {
        self.store
            .checkpoint_root
            .as_ref()
            .map(|root| root.join(sandbox_id))
    }

    /// Sessions whose sandbox is being saved.
    pub fn saving(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.saves.keys().copied()
    }

    fn attach_check(&self, sandbox_id: &str, token: &str) -> Option<AttachCheck> {
        Some(AttachCheck {
            base: self.checkpoint_base(sandbox_id)?,
            token: token.to_string(),
            owner: self.instance_id.clone(),
            builds: self.builds.clone(),
            ttl: self.store.lease_ttl,
            settle: self.store.lease_settle,
        })
    }

    /// Ask the store about an attach (see `attach`).
    pub fn ask_store(&mut self, connection: ConnectionId, attach: StoredAttach) {
        let Some(check) = self.attach_check(&attach.sandbox_id().to_string(), attach.token())
        else {
            return;
        };
        self.attaches.insert(connection, attach);
        self.jobs.spawn_or(
            move || JobResult::AttachChecked {
                connection,
                outcome: store_work::check_attach(&check),
            },
            move |message| JobResult::AttachChecked {
                connection,
                outcome: AttachOutcome::Failed(format!(
                    "internal error while reading the checkpoint: {message}"
                )),
            },
        );
    }

    /// Wait on a worker thread for the instance that runs the sandbox to hand it over (its
    /// answer comes back like the store's first one).
    pub fn await_handoff(
        &mut self,
        connection: ConnectionId,
        attach: StoredAttach,
        asked: HandoffAsked,
    ) {
        let Some(check) = self.attach_check(&attach.sandbox_id().to_string(), attach.token())
        else {
            return;
        };
        self.attaches.insert(connection, attach);
        let (wait, poll) = (self.store.handoff_timeout, HANDOFF_WAIT_POLL);
        self.jobs.spawn_or(
            move || JobResult::AttachChecked {
                connection,
                outcome: store_work::await_handoff(&check, &asked, wait, poll),
            },
            move |message| JobResult::AttachChecked {
                connection,
                outcome: AttachOutcome::Failed(format!(
                    "internal error while waiting for the handoff: {message}"
                )),
            },
        );
    }

    /// How long an attach socket may wait for a handoff, the store's answer after it included.
    pub fn handoff_bound(&self, store_answer: Duration) -> Duration {
        self.store.handoff_timeout + store_answer
    }

    /// Take a handoff request back (its attach was abandoned).
    fn withdraw_handoff(&mut self, sandbox_id: &str, asked: HandoffAsked) {
        if let Some(base) = self.checkpoint_base(sandbox_id) {
            self.jobs.spawn(move || {
                handoff::withdraw(&base, asked.generation, &asked.request);
                JobResult::Done
            });
        }
    }

    /// Find and verify the snapshot a session is created from.
    pub fn find_snapshot(&mut self, session: SessionId, name: &str) {
        let Some(root) = self.store.snapshot_root.clone() else {
            // The session checked this already; answer the same way regardless.
            let found = Err("filesystem snapshots are not enabled".to_string());
            return self.jobs.spawn(move || JobResult::SnapshotFound {
                session,
                name: String::new(),
                found,
            });
        };
        let name = name.to_string();
        let builds = self.builds.clone();
        let known = self.verified_snapshots.get(&name).cloned();
        let for_panic = name.clone();
        self.jobs.spawn_or(
            move || JobResult::SnapshotFound {
                found: store_work::find_snapshot(&root, &name, &builds, known),
                session,
                name,
            },
            move |message| JobResult::SnapshotFound {
                session,
                name: for_panic,
                found: Err(format!(
                    "internal error while reading the snapshot: {message}"
                )),
            },
        );
    }

    /// Remember a verified snapshot image (it is not hashed again while its generation holds).
    fn snapshot_verified(&mut self, name: String, image: VerifiedImage) {
        self.verified_snapshots.insert(name, image);
    }

    /// `GET /snapshots`, answered on a worker thread.
    pub fn list_snapshots(&mut self, connection: ConnectionId) -> Result<(), ApiError> {
        let root = self.snapshot_root()?;
        self.jobs.spawn_or(
            move || JobResult::SnapshotsListed {
                connection,
                list: store_work::list_snapshots(&root),
            },
            move |_| JobResult::SnapshotsListed {
                connection,
                list: Value::Null,
            },
        );
        Ok(())
    }

    /// `DELETE /snapshots/{name}`, carried out on a worker thread.
    pub fn delete_snapshot(
        &mut self,
        connection: ConnectionId,
        name: &str,
    ) -> Result<(), ApiError> {
        let root = self.snapshot_root()?;
        crate::session::options::validate_snapshot_name(name).map_err(ApiError::BadRequest)?;
        let name = name.to_string();
        let for_panic = name.clone();
        self.jobs.spawn_or(
            move || JobResult::SnapshotDeleted {
                result: store_work::delete_snapshot(&root, &name),
                connection,
                name,
            },
            move |message| JobResult::SnapshotDeleted {
                connection,
                name: for_panic,
                result: Err(DeleteError::Failed(message)),
            },
        );
        Ok(())
    }

    fn snapshot_root(&self) -> Result<PathBuf, ApiError> {
        self.store.snapshot_root.clone().ok_or_else(|| {
            ApiError::NotEnabled(
                "filesystem snapshots are not enabled on this server (set FILESYSTEM_SNAPSHOT_PATH)"
                    .into(),
            )
        })
    }

    /// Take the lease of a new checkpointable sandbox (nobody else knows its id yet).
    pub fn claim_lease(
        &mut self,
        session: SessionId,
        sandbox_id: &str,
        token_sha256: &str,
        handoff: bool,
    ) {
        if self.leases.contains_key(&session) {
            return;
        }
        let Some(base) = self.checkpoint_base(sandbox_id) else {
            return;
        };
        self.leases.insert(
            session,
            HeldLease {
                base: base.clone(),
                lease: None,
                writing: true,
                release_when_written: false,
            },
        );
        let (owner, token, ttl) = (
            self.instance_id.clone(),
            token_sha256.to_string(),
            self.store.lease_ttl,
        );
        self.jobs.spawn(move || JobResult::LeaseRenewed {
            session,
            result: store_work::claim_lease(&base, &owner, &token, handoff, ttl),
        });
    }

    /// A restored session holds the lease its attach took.
    fn keep_lease(&mut self, session: SessionId, sandbox_id: &str, held: lease::Lease) {
        let base = self.checkpoint_base(sandbox_id).unwrap_or_default();
        self.leases.insert(
            session,
            HeldLease {
                base,
                lease: Some(held),
                writing: false,
                release_when_written: false,
            },
        );
    }

    /// A claim or renewal was written (or not). Returns the holder if another instance took
    /// the lease over: the sandbox must stop here.
    fn lease_renewed(
        &mut self,
        session: SessionId,
        result: Result<lease::Lease, lease::LeaseError>,
    ) -> Option<String> {
        let held = self.leases.get_mut(&session)?;
        held.writing = false;
        let lost = match result {
            Ok(renewed) => {
                held.lease = Some(renewed);
                None
            }
            Err(lease::LeaseError::InUse(holder)) => Some(holder),
            Err(error) => {
                // The store failed this time: the lease stays ours until it expires; the next
                // renewal tries again.
                eprintln!("persistence: session {session}: lease renewal failed: {error}");
                None
            }
        };
        if held.release_when_written || lost.is_some() {
            self.release_lease(session);
        }
        lost
    }

    /// Renew every lease we hold (called from the sweep, every third of the TTL).
    pub fn renew_leases(&mut self, now: Instant) {
        if now < self.next_lease_renewal {
            return;
        }
        let ttl = self.store.lease_ttl;
        self.next_lease_renewal = now + ttl / 3;
        for (session, held) in self.leases.iter_mut() {
            let Some(mut lease) = held.lease.clone() else {
                continue;
            };
            if held.writing || held.release_when_written {
                continue;
            }
            held.writing = true;
            let (session, base) = (*session, held.base.clone());
            self.jobs.spawn(move || {
                let result = lease::renew(&base, &mut lease, ttl).map(|()| lease);
                JobResult::LeaseRenewed { session, result }
            });
        }
    }

    /// Give the lease of a session up (at once, or once its write in progress is done).
    pub fn release_lease(&mut self, session: SessionId) {
        let Some(held) = self.leases.get_mut(&session) else {
            return;
        };
        if held.writing {
            held.release_when_written = true;
            return;
        }
        let Some(held) = self.leases.remove(&session) else {
            return;
        };
        if let Some(lease) = held.lease {
            let (base, ttl) = (held.base, self.store.lease_ttl);
            self.jobs.spawn(move || {
                lease::release(&base, &lease, ttl);
                JobResult::Done
            });
        }
    }

    /// Give up a lease taken for an attach that restores nothing.
    fn release_attach_lease(&mut self, sandbox_id: &str, held: lease::Lease) {
        if let Some(base) = self.checkpoint_base(sandbox_id) {
            let ttl = self.store.lease_ttl;
            self.jobs.spawn(move || {
                lease::release(&base, &held, ttl);
                JobResult::Done
            });
        }
    }

    /// Every `SANDBOX_HANDOFF_POLL_MS`, look in the store for requests for the sandboxes held
    /// here with handoff enabled: one small read per sandbox, all on one worker thread.
    pub fn watch_handoffs(&mut self, now: Instant) {
        if self.handoff_watch.running || now < self.handoff_watch.next {
            return;
        }
        let watched: Vec<(SessionId, PathBuf, u64)> = self
            .leases
            .iter()
            .filter(|(_, held)| !held.release_when_written)
            .filter_map(|(session, held)| {
                let lease = held.lease.as_ref().filter(|lease| lease.handoff)?;
                Some((*session, held.base.clone(), lease.generation))
            })
            .collect();
        if watched.is_empty() {
            return;
        }
        self.handoff_watch.next = now + self.store.handoff_poll;
        self.handoff_watch.running = true;
        let stale_after = self.store.handoff_timeout * 2;
        self.jobs.spawn(move || {
            JobResult::HandoffsWatched(store_work::watch_handoffs(&watched, stale_after))
        });
    }

    /// When the next look for handoff requests is due, if any sandbox held here allows one.
    pub fn next_handoff_watch(&self) -> Option<Instant> {
        let watching = self
            .leases
            .values()
            .any(|held| held.lease.as_ref().is_some_and(|lease| lease.handoff));
        (watching && !self.handoff_watch.running).then_some(self.handoff_watch.next)
    }

    /// The sandbox of `session` cannot be handed off: say why in the request.
    pub fn refuse_handoff(&mut self, session: SessionId, reason: String) {
        let Some(held) = self.leases.get(&session) else {
            return;
        };
        let Some(generation) = held.lease.as_ref().map(|lease| lease.generation) else {
            return;
        };
        let base = held.base.clone();
        self.jobs.spawn(move || {
            handoff::refuse(&base, generation, &reason);
            JobResult::Done
        });
    }

    /// `GET /sandboxes?checkpointed=1`, answered on a worker thread.
    pub fn list_checkpoints(
        &mut self,
        connection: ConnectionId,
        query: CheckpointQuery,
    ) -> Result<(), ApiError> {
        let root = self.store.checkpoint_root.clone().ok_or_else(|| {
            ApiError::NotEnabled(
                "checkpointing is not enabled on this server (set CHECKPOINT_AND_RESTORE_PATH)"
                    .into(),
            )
        })?;
        self.jobs.spawn_or(
            move || JobResult::CheckpointsListed {
                connection,
                list: store_work::list_checkpoints(&root, &query),
            },
            move |_| JobResult::CheckpointsListed {
                connection,
                list: Value::Null,
            },
        );
        Ok(())
    }

    /// A files request for a sandbox that is not live here: ask the store (on a worker
    /// thread) whether it is checkpointed or elsewhere, to answer why not. `None`: there is no
    /// store (or the id cannot be one of ours), so it is simply unknown.
    pub fn check_files_sandbox(
        &mut self,
        connection: ConnectionId,
        sandbox_id: &str,
        token: String,
    ) -> Option<()> {
        let base = self.checkpoint_base(&SandboxId::parse(sandbox_id)?.to_string())?;
        let (owner, ttl) = (self.instance_id.clone(), self.store.lease_ttl);
        let sandbox_id = sandbox_id.to_string();
        let stand_in = sandbox_id.clone();
        self.jobs.spawn_or(
            move || JobResult::FilesSandboxChecked {
                connection,
                stored: store_work::stored_sandbox(&base, &token, &owner, ttl),
                sandbox_id,
            },
            move |_| JobResult::FilesSandboxChecked {
                connection,
                sandbox_id: stand_in,
                stored: StoredSandbox::Unknown,
            },
        );
        Some(())
    }

    /// Record in the store which sandbox and port the capability of SHA-256 `digest` leads to,
    /// so that the other instances can tell where its link's sandbox is.
    pub fn record_port_link(&mut self, digest: String, sandbox_id: &str, port: u16) {
        let sandbox_id = sandbox_id.to_string();
        self.update_port_links(PortLinkUpdate::Record {
            digest,
            sandbox_id,
            port,
        });
    }

    /// The links of SHA-256 `digests` are revoked or their sandbox is gone.
    pub fn forget_port_links(&mut self, digests: Vec<String>) {
        for digest in digests {
            self.update_port_links(PortLinkUpdate::Forget(digest));
        }
    }

    fn update_port_links(&mut self, update: PortLinkUpdate) {
        if self.store.checkpoint_root.is_some() {
            self.port_link_updates.push(update);
            self.start_port_link_updates();
        }
    }

    /// The updates waiting go to the store in one job, once the previous one is done.
    fn start_port_link_updates(&mut self) {
        let Some(root) = self.store.checkpoint_root.clone() else {
            return;
        };
        if self.port_link_updating || self.port_link_updates.is_empty() {
            return;
        }
        self.port_link_updating = true;
        let updates = std::mem::take(&mut self.port_link_updates);
        self.jobs.spawn_or(
            move || {
                for update in updates {
                    apply_port_link_update(&root, update);
                }
                JobResult::PortLinksUpdated
            },
            |_| JobResult::PortLinksUpdated,
        );
    }

    /// A port link this instance does not know: ask the store (on a worker thread) whether it
    /// leads to a sandbox held elsewhere or checkpointed. `None`: no store, or too many looks
    /// under way; the link is then simply unknown.
    pub fn check_port_link(
        &mut self,
        connection: ConnectionId,
        digest: String,
        port: Option<u16>,
    ) -> Option<()> {
        let root = self.store.checkpoint_root.clone()?;
        if self.port_lookups >= MAX_PORT_LINK_LOOKUPS {
            return None;
        }
        self.port_lookups += 1;
        let (owner, ttl) = (self.instance_id.clone(), self.store.lease_ttl);
        self.jobs.spawn_or(
            move || JobResult::PortLinkChecked {
                connection,
                stored: store_work::port_link_sandbox(&root, &digest, port, &owner, ttl),
            },
            move |_| JobResult::PortLinkChecked {
                connection,
                stored: StoredSandbox::Unknown,
            },
        );
        Some(())
    }

    /// Remove a killed sandbox's saved state (its checkpoints and lease).
    pub fn remove_saved_state(&mut self, session: SessionId, sandbox_id: &str) {
        let base = self.checkpoint_base(sandbox_id);
        self.jobs.spawn_or(
            move || {
                if let Some(base) = base {
                    store_work::remove_saved_state(&base);
                }
                JobResult::SavedStateRemoved { session }
            },
            move |_| JobResult::SavedStateRemoved { session },
        );
    }

    /// A session is gone: its lease goes, its save (if any) is abandoned.
    pub fn forget(&mut self, session: SessionId) {
        self.release_lease(session);
        self.saves.remove(&session);
    }

    /// Every `SANDBOX_STORE_SWEEP_SECS`, sweep part of the checkpoint store for directories
    /// that killed instances left (one sweep at a time).
    pub fn sweep_store(&mut self, now: Instant) {
        let interval = self.store.sweep_interval;
        let Some(root) = self.store.checkpoint_root.clone() else {
            return;
        };
        if interval.is_zero() || self.sweep.running || now < self.sweep.next {
            return;
        }
        self.sweep.next = now + interval;
        self.sweep.running = true;
        let resume_after = self.sweep.resume_after.take();
        self.jobs.spawn(move || {
            JobResult::StoreSwept(leftovers::sweep(
                &root,
                resume_after.as_deref(),
                SWEEP_MAX_DIRS,
            ))
        });
    }

    fn store_swept(&mut self, sweep: leftovers::Sweep) {
        if sweep.removed > 0 {
            eprintln!(
                "persistence: removed {} abandoned sandbox directories from the checkpoint store",
                sweep.removed
            );
        }
        self.sweep.running = false;
        self.sweep.resume_after = sweep.resume_after;
    }

    /// Make an image directory for a save.
    fn prepare(&mut self, session: SessionId, base: PathBuf) {
        self.jobs.spawn_or(
            move || JobResult::Prepared {
                session,
                image: store_work::prepare_image(&base),
            },
            move |message| JobResult::Prepared {
                session,
                image: Err(format!("internal error while saving: {message}")),
            },
        );
    }

    fn publish(
        &mut self,
        session: SessionId,
        base: PathBuf,
        image: PathBuf,
        token: Option<String>,
        settings: SavedSettings,
    ) {
        let builds = self.builds.clone();
        self.jobs.spawn_or(
            move || JobResult::Published {
                session,
                result: store::publish(&base, &image, token, settings, &builds)
                    .map(|_manifest| ())
                    .map_err(|error| error.to_string()),
            },
            move |message| JobResult::Published {
                session,
                result: Err(format!("internal error while saving: {message}")),
            },
        );
    }

    fn discard(&mut self, image: PathBuf, base_if_empty: Option<PathBuf>) {
        self.jobs.spawn(move || {
            store_work::discard_image(&image, base_if_empty.as_deref());
            JobResult::Done
        });
    }
}

/// What the manifest keeps of a session, and back.
impl From<&SavedState> for SavedSettings {
    fn from(state: &SavedState) -> Self {
        let saved = |process: &SavedProcess| store::SavedExec {
            id: process.exec.0,
            base64: process.output_encoding == OutputEncoding::Base64,
            request: process.request.as_ref().map(|id| serde_json::json!(id)),
            language: process
                .language
                .map(|language| language.as_str().to_string()),
            started_unix_ms: process.started_unix_ms,
            stdin_received: process.stdin_received,
            stdin_consumed: process.stdin_consumed,
            kind: (process.kind == ProcessKind::Terminal).then(|| "terminal".to_string()),
        };
        let (compatible, others): (Vec<&SavedProcess>, Vec<&SavedProcess>) = state
            .running
            .iter()
            .partition(|process| process.request.is_none());
        SavedSettings {
            idle_timeout_secs: state.idle_timeout_secs,
            auto_checkpoint: state.auto_checkpoint,
            network: state.network,
            running_exec: compatible.first().map(|process| saved(process)),
            processes: others.into_iter().map(saved).collect(),
            handoff: state.handoff,
            labels: state.labels.clone(),
            // Kept by the server, not the session (`server::ports`): added when published.
            ports: Vec::new(),
        }
    }
}

/// The manifest is shared storage (another instance wrote it, or it is corrupted): a request
/// id or language that does not parse is dropped, never trusted.
impl From<&SavedSettings> for SavedState {
    fn from(settings: &SavedSettings) -> Self {
        let restored = |saved: &store::SavedExec| SavedProcess {
            exec: ExecId(saved.id),
            output_encoding: if saved.base64 {
                OutputEncoding::Base64
            } else {
                OutputEncoding::Text
            },
            request: saved.request.as_ref().and_then(RequestId::parse),
            language: saved.language.as_deref().and_then(Language::parse),
            started_unix_ms: saved.started_unix_ms,
            stdin_received: saved.stdin_received,
            stdin_consumed: saved.stdin_consumed,
            kind: if saved.kind.as_deref() == Some("terminal") {
                ProcessKind::Terminal
            } else {
                ProcessKind::Exec
            },
        };
        let compatible = settings.running_exec.iter().map(|saved| SavedProcess {
            // The compatible execution has no request id, whatever the file says.
            request: None,
            ..restored(saved)
        });
        let others = settings
            .processes
            .iter()
            .map(restored)
            // One without a (valid) request id would be a second compatible execution.
            .filter(|process| process.request.is_some());
        SavedState {
            idle_timeout_secs: settings.idle_timeout_secs,
            auto_checkpoint: settings.auto_checkpoint,
            network: settings.network,
            running: compatible.chain(others).collect(),
            handoff: settings.handoff,
            labels: settings.labels.clone(),
        }
    }
}

impl Server {
    /// Start the save a session asked for.
    pub(super) fn start_save(&mut self, session_id: SessionId, request: SaveRequest) {
        let Some(session) = self.sessions.get(session_id) else {
            return;
        };
        // runsc cannot checkpoint open TCP connections: connections through the sandbox's
        // ports end here (their clients reconnect once it runs again).
        let sandbox_id = session.sandbox_id().to_string();
        self.close_port_connections(&sandbox_id, None);
        let Some(session) = self.sessions.get(session_id) else {
            return;
        };
        let base = match &request {
            SaveRequest::Checkpoint { .. } => {
                self.persistence.checkpoint_base(session.sandbox_id())
            }
            SaveRequest::Snapshot(name) => self
                .persistence
                .store
                .snapshot_root
                .as_ref()
                .map(|root| root.join(name)),
        };
        let (save, actions) = Save::start(request, base);
        self.persistence.saves.insert(session_id, save);
        self.carry_out(session_id, actions);
    }

    /// Carry out a save's next steps.
    fn carry_out(&mut self, session_id: SessionId, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Prepare(base) => self.persistence.prepare(session_id, base),
                Action::Checkpoint {
                    image,
                    with_running,
                } => {
                    let sandbox = self.sessions.get(session_id).and_then(Session::sandbox);
                    let started = match sandbox {
                        Some(sandbox) => self
                            .runtime
                            .checkpoint(sandbox, image, with_running)
                            .map_err(|error| error.to_string()),
                        None => Err("the sandbox is gone".into()),
                    };
                    if let Err(message) = started {
                        let next =
                            self.save_step(session_id, |save| save.checkpoint_not_started(message));
                        self.carry_out(session_id, next);
                    }
                }
                Action::Publish { base, image, token } => {
                    let Some(session) = self.sessions.get(session_id) else {
                        continue;
                    };
                    let token = token.then(|| session.token_sha256().to_string());
                    let mut settings = SavedSettings::from(&session.saved_state());
                    settings.ports = self.saved_ports(session.sandbox_id());
                    self.persistence
                        .publish(session_id, base, image, token, settings);
                }
                Action::Discard {
                    image,
                    base_if_empty,
                } => self.persistence.discard(image, base_if_empty),
                Action::RestoreInPlace(image) => {
                    let sandbox = self.sessions.get(session_id).and_then(Session::sandbox);
                    let restarted =
                        sandbox.map(|key| self.runtime.restore_in_place(key, image, false));
                    if !matches!(restarted, Some(Ok(()))) {
                        let next = self.save_step(session_id, Save::restart_not_started);
                        self.carry_out(session_id, next);
                    }
                }
                Action::ReleaseLease => self.persistence.release_lease(session_id),
                Action::Report(report) => self.report_save(session_id, report),
            }
        }
        if self
            .persistence
            .saves
            .get(&session_id)
            .is_some_and(Save::is_done)
        {
            self.persistence.saves.remove(&session_id);
        }
    }

    /// Feed a save machine; no machine, no steps.
    fn save_step(
        &mut self,
        session_id: SessionId,
        step: impl FnOnce(&mut Save) -> Vec<Action>,
    ) -> Vec<Action> {
        self.persistence
            .saves
            .get_mut(&session_id)
            .map(step)
            .unwrap_or_default()
    }

    fn report_save(&mut self, session_id: SessionId, report: Report) {
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        let failure = match &report {
            Report::Checkpoint(Err(message))
            | Report::Snapshot {
                result: Err(message),
                ..
            } => Some(message.clone()),
            _ => None,
        };
        if let Some(message) = failure {
            eprintln!("persistence: session {session_id}: {message}");
        }
        let mut control = Control(&mut self.runtime);
        let outs = match report {
            Report::Checkpoint(result) => session.on_checkpoint_saved(result, &mut control),
            Report::Snapshot { result, alive } => {
                session.on_snapshot_finished(result, alive, &mut control)
            }
        };
        self.deliver(session_id, outs);
    }

    /// A runtime notice that belongs to a save in progress. Returns true if the session must
    /// not see it.
    pub(super) fn save_notice(&mut self, session_id: SessionId, event: &RuntimeEvent) -> bool {
        let (actions, consumed) = match event {
            RuntimeEvent::Checkpointed(result) => {
                let result = result.clone();
                (
                    self.save_step(session_id, |save| save.checkpointed(result)),
                    true,
                )
            }
            // The session reports the refusal itself.
            RuntimeEvent::CheckpointRefused(_) => {
                (self.save_step(session_id, Save::refused), false)
            }
            RuntimeEvent::Ready => match self
                .persistence
                .saves
                .get_mut(&session_id)
                .and_then(Save::restarted)
            {
                Some(actions) => (actions, true),
                None => return false,
            },
            _ => return false,
        };
        self.carry_out(session_id, actions);
        consumed
    }

    /// Results of worker threads.
    pub(super) fn collect_jobs(&mut self) {
        for result in self.persistence.jobs.drain() {
            let peer = match &result {
                JobResult::Prepared { session, .. }
                | JobResult::Published { session, .. }
                | JobResult::SnapshotFound { session, .. }
                | JobResult::SavedStateRemoved { session }
                | JobResult::LeaseRenewed { session, .. } => Peer::Session(*session),
                JobResult::AttachChecked { connection, .. }
                | JobResult::SnapshotsListed { connection, .. }
                | JobResult::CheckpointsListed { connection, .. }
                | JobResult::FilesSandboxChecked { connection, .. }
                | JobResult::PortLinkChecked { connection, .. }
                | JobResult::SnapshotDeleted { connection, .. } => Peer::Connection(*connection),
                // Bookkeeping of the server itself, no peer to blame: handled as is (each
                // session it concerns is guarded on its own).
                JobResult::StoreSwept(_)
                | JobResult::HandoffsWatched(_)
                | JobResult::PortLinksUpdated => {
                    self.job_finished(result);
                    continue;
                }
                JobResult::Done => continue,
            };
            self.guarded(peer, |server| server.job_finished(result));
        }
    }

    fn job_finished(&mut self, result: JobResult) {
        match result {
            JobResult::Prepared { session, image } => {
                let actions = match self.persistence.saves.get_mut(&session) {
                    Some(save) => save.prepared(image),
                    // The session ended meanwhile: do not leave the directory behind.
                    None => {
                        if let Ok(image) = image {
                            self.persistence.discard(image, None);
                        }
                        return;
                    }
                };
                self.carry_out(session, actions);
            }
            JobResult::Published { session, result } => {
                let actions = self.save_step(session, |save| save.published(result));
                self.carry_out(session, actions);
            }
            JobResult::AttachChecked {
                connection,
                outcome,
            } => self.attach_checked(connection, outcome),
            JobResult::SnapshotFound {
                session,
                name,
                found,
            } => {
                let image = found.map(|verified| {
                    self.persistence.snapshot_verified(name, verified.clone());
                    verified.1
                });
                self.snapshot_found(session, image);
            }
            JobResult::SnapshotsListed { connection, list } => {
                let answer = if list.is_null() {
                    Err(ApiError::Internal("cannot list the snapshots".into()))
                } else {
                    Ok(Response::json(200, &list))
                };
                self.answer_waiting(connection, answer);
            }
            JobResult::SnapshotDeleted {
                connection,
                name,
                result,
            } => {
                // Sandboxes pooled from it must not be handed out any more.
                self.runtime.prune_snapshot_pools();
                let answer = match result {
                    Ok(()) => Ok(Response::json(200, &serde_json::json!({ "deleted": name }))),
                    Err(DeleteError::NotFound(message)) => Err(ApiError::NotFound(message)),
                    Err(DeleteError::Failed(message)) => Err(ApiError::Internal(message)),
                };
                self.answer_waiting(connection, answer);
            }
            JobResult::CheckpointsListed { connection, list } => {
                let answer = if list.is_null() {
                    Err(ApiError::Internal("cannot list the checkpoints".into()))
                } else {
                    Ok(Response::json(200, &list))
                };
                self.answer_waiting(connection, answer);
            }
            JobResult::FilesSandboxChecked {
                connection,
                sandbox_id,
                stored,
            } => {
                let answer = super::files_http::not_live_answer(&sandbox_id, &stored);
                self.answer_waiting(connection, Err(answer));
            }
            JobResult::PortLinksUpdated => {
                self.persistence.port_link_updating = false;
                self.persistence.start_port_link_updates();
            }
            JobResult::PortLinkChecked { connection, stored } => {
                self.persistence.port_lookups -= 1;
                let answer = super::ports::not_here_answer(&stored);
                self.answer_waiting(connection, Ok(answer));
            }
            JobResult::SavedStateRemoved { session } => self.saved_state_removed(session),
            JobResult::LeaseRenewed { session, result } => {
                if let Some(holder) = self.persistence.lease_renewed(session, result) {
                    self.lease_lost(session, &holder);
                }
            }
            JobResult::StoreSwept(sweep) => self.persistence.store_swept(sweep),
            JobResult::HandoffsWatched(asked) => {
                self.persistence.handoff_watch.running = false;
                for session in asked {
                    self.guarded(Peer::Session(session), |server| server.hand_off(session));
                }
            }
            JobResult::Done => {}
        }
    }

    /// The store answered an attach: refuse, or restore and make the session.
    fn attach_checked(&mut self, connection: ConnectionId, outcome: AttachOutcome) {
        let Some(mut attach) = self.persistence.attaches.remove(&connection) else {
            return;
        };
        let sandbox_id = attach.sandbox_id();
        let waiting = self
            .connections
            .websockets
            .get(&connection)
            .is_some_and(|socket| {
                matches!(socket.waiting, Waiting::StoreAnswer | Waiting::Handoff)
            });
        let mut decision = if waiting {
            let limit = self.session_limit_refusal();
            attach.on_store_answer(outcome, limit)
        } else {
            eprintln!("persistence: attach of {sandbox_id} abandoned: its client is gone");
            attach.abandon(outcome)
        };
        if let Some(socket) = self.connections.websockets.get_mut(&connection) {
            socket.wait_for(Waiting::Nothing, Instant::now());
        }
        if let Decision::Restore { image, manifest } = decision {
            let session_id = self.sessions.new_id();
            let restored = self.runtime.restore(
                Owner::Session(session_id.0),
                sandbox_id,
                image,
                false,
                manifest.settings.network,
            );
            decision = match restored {
                Ok(key) => {
                    let saved = SavedState::from(&manifest.settings);
                    let session = Session::restored(
                        session_id,
                        manifest.token_sha256.clone().unwrap_or_default(),
                        &saved,
                        key,
                        sandbox_id.to_string(),
                        self.session_settings(),
                        Instant::now(),
                    );
                    for (exec, timeout, stdin_bound) in session.adopted_execs() {
                        let _ = self.runtime.adopt_exec(key, exec, timeout, stdin_bound);
                    }
                    self.restore_ports(&sandbox_id.to_string(), &manifest.settings.ports);
                    self.sessions.insert(session);
                    self.sessions.link(session_id, connection);
                    if let Some(socket) = self.connections.websockets.get_mut(&connection) {
                        socket.session = Some(session_id);
                    }
                    let decision = attach.restored(Ok(()));
                    if let Decision::Restoring { lease, .. } = &decision {
                        self.persistence.keep_lease(
                            session_id,
                            &sandbox_id.to_string(),
                            lease.clone(),
                        );
                    }
                    decision
                }
                Err(error) => attach.restored(Err(error.to_string())),
            };
        }
        let out = match decision {
            Decision::Refuse { out, release } => {
                if let Some(held) = release {
                    self.persistence
                        .release_attach_lease(&sandbox_id.to_string(), held);
                }
                out
            }
            Decision::Restoring { out, .. } => out,
            Decision::AwaitHandoff { out, asked } => {
                if let Some(socket) = self.connections.websockets.get_mut(&connection) {
                    socket.wait_for(Waiting::Handoff, Instant::now());
                }
                self.persistence.await_handoff(connection, attach, *asked);
                out
            }
            Decision::Abandon { release, withdraw } => {
                if let Some(held) = release {
                    self.persistence
                        .release_attach_lease(&sandbox_id.to_string(), held);
                }
                if let Some(asked) = withdraw {
                    self.persistence
                        .withdraw_handoff(&sandbox_id.to_string(), *asked);
                }
                return;
            }
            Decision::Restore { .. } => return,
        };
        if let Some(socket) = self.connections.websockets.get_mut(&connection) {
            if !socket.apply(out) {
                self.drop_websocket(connection);
            }
        }
    }

    /// Another instance asked for the sandbox of `session_id`: its session begins the
    /// handoff (a checkpoint), unless it cannot now (the request stays and is seen again).
    fn hand_off(&mut self, session_id: SessionId) {
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        if let Some(outs) = session.on_handoff_requested() {
            eprintln!(
                "persistence: session {session_id}: sandbox {} is asked for by another instance: handing it off",
                session.sandbox_id()
            );
            self.deliver(session_id, outs);
        }
    }

    /// Another instance took over the lease of a sandbox that runs here: stop it here.
    fn lease_lost(&mut self, session_id: SessionId, holder: &str) {
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        eprintln!(
            "persistence: session {session_id}: sandbox {} lost its lease to {holder}: stopping it here",
            session.sandbox_id()
        );
        let outs = session.on_lease_lost(holder, &mut Control(&mut self.runtime));
        self.deliver(session_id, outs);
    }

    /// Answer an HTTP request that waited for the store.
    fn answer_waiting(&mut self, id: ConnectionId, answer: Result<Response, ApiError>) {
        let Some(connection) = self.connections.http.get_mut(&id) else {
            return;
        };
        let Phase::Waiting { keep_alive, .. } = connection.phase else {
            // Answered already (the store took too long).
            return;
        };
        connection.phase = Phase::Reading;
        let response = answer.unwrap_or_else(|error| error.response());
        self.respond(id, &response, keep_alive, false);
        self.flush(id);
        self.process_requests(id);
    }
}
