//! Checkpoints, restores and filesystem snapshots, as the event loop runs them.
//!
//! A save is a pipeline: `runsc checkpoint` (a child of the runtime) writes the image into a
//! fresh directory of the store; a worker thread hashes and publishes it (see `crate::store`);
//! then a checkpointed sandbox is deleted, while a snapshotted one is restored in place from the
//! image it just wrote and goes on. An attach to a sandbox that is not live here reads the
//! store on a worker thread (token, lease, image check) before anything is restored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::recovery::Peer;
use super::websocket::Waiting;
use super::{Control, Server};
use crate::agent_protocol::ExecId;
use crate::runtime::ids::SandboxId;
use crate::runtime::{Owner, RuntimeError, RuntimeEvent, SandboxKey};
use crate::session::{refusal, token_matches, Out, SaveRequest, Session, SessionId};
use crate::store::{self, lease, leftovers, Manifest};

/// Sandbox directories one sweep of the checkpoint store examines at most.
const SWEEP_MAX_DIRS: usize = 256;

/// What a worker thread reports back.
pub enum JobResult {
    /// An image was hashed and published (or not).
    Published {
        session: SessionId,
        result: Result<Manifest, String>,
    },
    /// The store answered an attach.
    AttachChecked {
        connection: u64,
        sandbox_id: SandboxId,
        outcome: AttachOutcome,
    },
    /// A lease was renewed (or lost) or taken for a new sandbox.
    LeaseRenewed {
        session: SessionId,
        result: Result<lease::Lease, lease::LeaseError>,
    },
    /// The checkpoint store was swept for leftovers of killed instances.
    StoreSwept(leftovers::Sweep),
    /// Fire-and-forget work (removing saved state, releasing a lease).
    Done,
}

pub enum AttachOutcome {
    NotFound,
    PermissionDenied,
    InUse(String),
    Failed(String),
    /// Boxed: a manifest is large next to the other answers.
    Ready {
        manifest: Box<Manifest>,
        image: PathBuf,
        lease: lease::Lease,
    },
}

/// The periodic sweep of the checkpoint store.
pub struct StoreSweep {
    pub next: Instant,
    pub running: bool,
    /// Where the next sweep goes on.
    pub resume_after: Option<String>,
}

impl StoreSweep {
    pub fn new(now: Instant, interval: std::time::Duration) -> Self {
        StoreSweep {
            next: now + interval,
            running: false,
            resume_after: None,
        }
    }
}

/// A save in progress for a session.
pub struct PendingSave {
    pub request: SaveRequest,
    pub base: PathBuf,
    pub image: PathBuf,
    /// For a snapshot: the publish result, reported once the sandbox runs again.
    pub published: Option<Result<(), String>>,
}

/// Snapshots whose image was verified on this instance, by name and generation.
#[derive(Default)]
pub struct SnapshotCache {
    verified: HashMap<String, (u64, PathBuf)>,
}

impl SnapshotCache {
    /// The verified image directory of snapshot `name` (reads and hashes it the first time a
    /// generation is seen).
    pub fn image(
        &mut self,
        root: &Path,
        name: &str,
        rootfs_stamp: &str,
    ) -> Result<PathBuf, String> {
        store::validate_snapshot_name(name)?;
        let base = root.join(name);
        let manifest = store::load(&base)
            .map_err(|error| error.to_string())?
            // The original clients look for "not found" in this creation error.
            .ok_or_else(|| format!("filesystem snapshot {name:?} not found"))?;
        same_image(&manifest, rootfs_stamp)
            .map_err(|error| format!("filesystem snapshot {name:?}: {error}"))?;
        if let Some((generation, image)) = self.verified.get(name) {
            if *generation == manifest.generation && image.exists() {
                return Ok(image.clone());
            }
        }
        let image = store::verify(&base, &manifest)
            .map_err(|error| format!("filesystem snapshot {name:?}: {error}"))?;
        self.verified
            .insert(name.to_string(), (manifest.generation, image.clone()));
        Ok(image)
    }
}

impl Control<'_> {
    /// A sandbox started from snapshot `name`: its files, fresh processes and identity.
    pub fn start_from_snapshot(
        &mut self,
        session: SessionId,
        name: &str,
        egress: bool,
    ) -> Result<SandboxKey, RuntimeError> {
        let root = self
            .snapshot_root
            .ok_or_else(|| RuntimeError::Io("filesystem snapshots are not enabled".into()))?;
        let image = self
            .snapshots
            .image(root, name, self.rootfs_stamp)
            .map_err(RuntimeError::Io)?;
        self.runtime
            .acquire_snapshot(Owner::Session(session), image, egress)
    }
}

impl Server {
    pub(super) fn checkpoint_base(&self, sandbox_id: &str) -> Option<PathBuf> {
        self.config
            .checkpoint_path
            .as_ref()
            .map(|root| root.join(sandbox_id))
    }

    /// Start the save a session asked for.
    pub(super) fn start_save(&mut self, session_id: SessionId, request: SaveRequest) {
        let Some(session) = self.sessions.get(&session_id) else {
            return;
        };
        let Some(sandbox) = session.sandbox() else {
            return;
        };
        let base = match &request {
            SaveRequest::Checkpoint { .. } => self.checkpoint_base(session.sandbox_id()),
            SaveRequest::Snapshot(name) => self
                .config
                .snapshot_path
                .as_ref()
                .map(|root| root.join(name)),
        };
        let with_running = matches!(request, SaveRequest::Checkpoint { with_running: true });
        let started = base
            .ok_or_else(|| "saving is not enabled on this server".to_string())
            .and_then(|base| {
                std::fs::create_dir_all(&base)
                    .map_err(|error| format!("cannot write to {}: {error}", base.display()))?;
                let image = store::new_image_dir(&base)
                    .map_err(|error| format!("cannot write to {}: {error}", base.display()))?;
                Ok((base, image))
            })
            .and_then(|(base, image)| {
                self.runtime
                    .checkpoint(sandbox, image.clone(), with_running)
                    .map(|()| (base, image))
                    .map_err(|error| format!("cannot checkpoint: {error}"))
            });
        match started {
            Ok((base, image)) => {
                self.saves.insert(
                    session_id,
                    PendingSave {
                        request,
                        base,
                        image,
                        published: None,
                    },
                );
            }
            Err(message) => self.save_failed(session_id, &request, message, true),
        }
    }

    fn save_failed(
        &mut self,
        session_id: SessionId,
        request: &SaveRequest,
        message: String,
        alive: bool,
    ) {
        eprintln!("persistence: session {session_id}: {message}");
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        let mut control = Control {
            runtime: &mut self.runtime,
            snapshots: &mut self.snapshots,
            snapshot_root: self.config.snapshot_path.as_deref(),
            rootfs_stamp: &self.rootfs_stamp,
        };
        let outs = match request {
            SaveRequest::Checkpoint { .. } => {
                session.on_checkpoint_saved(Err(message), &mut control)
            }
            SaveRequest::Snapshot(_) => {
                session.on_snapshot_finished(Err(message), alive, &mut control)
            }
        };
        self.deliver(session_id, outs);
    }

    /// `runsc checkpoint` finished for a session's sandbox.
    pub(super) fn on_checkpointed(&mut self, session_id: SessionId, result: Result<(), String>) {
        let Some(save) = self.saves.get(&session_id) else {
            return;
        };
        let request = save.request.clone();
        if let Err(message) = result {
            let _ = std::fs::remove_dir_all(&save.image);
            self.saves.remove(&session_id);
            // The container is stopped whatever the reason: it does not run any more.
            return self.save_failed(session_id, &request, message, false);
        }
        let Some(session) = self.sessions.get(&session_id) else {
            return;
        };
        let token = match request {
            SaveRequest::Checkpoint { .. } => Some(session.token_sha256().to_string()),
            SaveRequest::Snapshot(_) => None,
        };
        let settings = session.saved_settings();
        let (base, image) = (save.base.clone(), save.image.clone());
        let stamp = self.rootfs_stamp.clone();
        self.jobs.spawn_or(
            move || JobResult::Published {
                session: session_id,
                result: store::publish(&base, &image, token, settings, &stamp)
                    .map_err(|error| error.to_string()),
            },
            move |message| JobResult::Published {
                session: session_id,
                result: Err(format!("internal error while saving: {message}")),
            },
        );
    }

    fn on_published(&mut self, session_id: SessionId, result: Result<Manifest, String>) {
        let Some(save) = self.saves.get_mut(&session_id) else {
            return;
        };
        let result = result.map(|_| ());
        match save.request.clone() {
            SaveRequest::Checkpoint { .. } => {
                if result.is_err() {
                    let _ = std::fs::remove_dir_all(&save.image);
                }
                self.saves.remove(&session_id);
                self.release_lease(session_id);
                let Some(session) = self.sessions.get_mut(&session_id) else {
                    return;
                };
                let mut control = Control {
                    runtime: &mut self.runtime,
                    snapshots: &mut self.snapshots,
                    snapshot_root: self.config.snapshot_path.as_deref(),
                    rootfs_stamp: &self.rootfs_stamp,
                };
                let outs = session.on_checkpoint_saved(result, &mut control);
                self.deliver(session_id, outs);
            }
            SaveRequest::Snapshot(name) => {
                save.published =
                    Some(result.map_err(|error| format!("cannot save snapshot {name:?}: {error}")));
                let image = save.image.clone();
                let sandbox = self.sessions.get(&session_id).and_then(Session::sandbox);
                let restarted = sandbox.map(|key| self.runtime.restore_in_place(key, image, false));
                if !matches!(restarted, Some(Ok(()))) {
                    let message =
                        "the sandbox could not be restarted after the snapshot".to_string();
                    self.saves.remove(&session_id);
                    self.save_failed(session_id, &SaveRequest::Snapshot(name), message, false);
                }
            }
        }
    }

    /// A snapshotted sandbox runs again: report the snapshot.
    pub(super) fn on_ready_after_snapshot(&mut self, session_id: SessionId) -> bool {
        let Some(save) = self.saves.get(&session_id) else {
            return false;
        };
        let Some(published) = save.published.clone() else {
            return false;
        };
        self.saves.remove(&session_id);
        if published.is_ok() {
            self.snapshots_created += 1;
        }
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return true;
        };
        let mut control = Control {
            runtime: &mut self.runtime,
            snapshots: &mut self.snapshots,
            snapshot_root: self.config.snapshot_path.as_deref(),
            rootfs_stamp: &self.rootfs_stamp,
        };
        let outs = session.on_snapshot_finished(published, true, &mut control);
        self.deliver(session_id, outs);
        true
    }

    /// Results of worker threads.
    pub(super) fn collect_jobs(&mut self) {
        for result in self.jobs.drain() {
            let peer = match &result {
                JobResult::Published { session, .. } | JobResult::LeaseRenewed { session, .. } => {
                    Peer::Session(*session)
                }
                JobResult::AttachChecked { connection, .. } => Peer::Connection(*connection),
                // Bookkeeping of the server itself, no peer to blame: handled as is.
                JobResult::StoreSwept(_) => {
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
            JobResult::Published { session, result } => self.on_published(session, result),
            JobResult::AttachChecked {
                connection,
                sandbox_id,
                outcome,
            } => self.finish_attach(connection, sandbox_id, outcome),
            JobResult::LeaseRenewed { session, result } => match result {
                Ok(lease) => {
                    if let Some(held) = self.leases.get_mut(&session) {
                        held.1 = Some(lease);
                    }
                }
                Err(error) => {
                    eprintln!("persistence: session {session}: lease renewal failed: {error:?}");
                }
            },
            JobResult::StoreSwept(sweep) => {
                if sweep.removed > 0 {
                    eprintln!(
                        "persistence: removed {} abandoned sandbox directories from the checkpoint store",
                        sweep.removed
                    );
                }
                self.store_sweep.running = false;
                self.store_sweep.resume_after = sweep.resume_after;
            }
            JobResult::Done => {}
        }
    }

    /// `/attach` for a sandbox that is not live here: check the store on a worker thread.
    pub(super) fn begin_restore_attach(
        &mut self,
        connection: u64,
        sandbox_id: &str,
        token: &str,
    ) -> Option<Vec<Out>> {
        let id = SandboxId::parse(sandbox_id)?;
        let base = self.checkpoint_base(sandbox_id)?;
        let token = token.to_string();
        let owner = self.instance_id.clone();
        let stamp = self.rootfs_stamp.clone();
        let (ttl, settle) = (self.config.lease_ttl, self.config.lease_settle);
        self.jobs.spawn_or(
            move || {
                let outcome = check_attach(&base, &token, &owner, &stamp, ttl, settle);
                JobResult::AttachChecked {
                    connection,
                    sandbox_id: id,
                    outcome,
                }
            },
            move |message| JobResult::AttachChecked {
                connection,
                sandbox_id: id,
                outcome: AttachOutcome::Failed(format!(
                    "internal error while reading the checkpoint: {message}"
                )),
            },
        );
        Some(Vec::new())
    }

    fn finish_attach(&mut self, connection: u64, id: SandboxId, outcome: AttachOutcome) {
        let sandbox_id = id.to_string();
        let Some(socket) = self
            .websockets
            .get_mut(&connection)
            .filter(|socket| socket.waiting == Waiting::StoreAnswer)
        else {
            // The client left, or was told the store took too long: restore nothing, so the
            // checkpoint stays where its next attach (here or elsewhere) finds it.
            if let AttachOutcome::Ready { lease, .. } = outcome {
                eprintln!("persistence: attach of {sandbox_id} abandoned: its client is gone");
                self.release_lease_later(&sandbox_id, lease);
            }
            return;
        };
        socket.wait_for(Waiting::Nothing, Instant::now());
        // A restore makes a session: it obeys the session limit like a create.
        let outcome = match (outcome, self.session_limit_refusal()) {
            (AttachOutcome::Ready { lease, .. }, Some(refused)) => {
                self.release_lease_later(&sandbox_id, lease);
                return self.refuse(connection, refused);
            }
            (outcome, _) => outcome,
        };
        let (outs, lease) = match outcome {
            AttachOutcome::NotFound => (
                refusal(
                    "SANDBOX_NOT_FOUND",
                    &format!("sandbox {sandbox_id} does not exist"),
                    1011,
                ),
                None,
            ),
            AttachOutcome::PermissionDenied => (
                refusal(
                    "SANDBOX_PERMISSION_DENIAL_ERROR",
                    "wrong or missing sandbox_token",
                    4000,
                ),
                None,
            ),
            AttachOutcome::InUse(owner) => {
                let message =
                    format!("sandbox {sandbox_id} is running on another server instance ({owner})");
                (refusal("SANDBOX_IN_USE", &message, 1011), None)
            }
            AttachOutcome::Failed(message) => {
                (refusal("SANDBOX_RESTORE_ERROR", &message, 4000), None)
            }
            AttachOutcome::Ready {
                manifest,
                image,
                lease,
            } => {
                let session_id = self.next_session;
                self.next_session += 1;
                match self.runtime.restore(
                    Owner::Session(session_id),
                    id,
                    image,
                    false,
                    manifest.settings.network,
                ) {
                    Ok(key) => {
                        if let Some(exec) = manifest.settings.running_exec {
                            let _ = self.runtime.adopt_exec(
                                key,
                                ExecId(exec.id),
                                self.config.limits.exec_timeout,
                            );
                        }
                        let session = Session::restored(
                            session_id,
                            manifest.token_sha256.clone().unwrap_or_default(),
                            &manifest.settings,
                            key,
                            sandbox_id.clone(),
                            self.session_settings(),
                            Instant::now(),
                        );
                        self.sessions.insert(session_id, session);
                        self.session_by_sandbox_id
                            .insert(sandbox_id.clone(), session_id);
                        self.session_connection.insert(session_id, connection);
                        if let Some(socket) = self.websockets.get_mut(&connection) {
                            socket.session = Some(session_id);
                        }
                        let base = self.checkpoint_base(&sandbox_id).unwrap_or_default();
                        self.leases.insert(session_id, (base, Some(lease)));
                        let restoring = serde_json::json!({"event":"status_update","status":"SANDBOX_RESTORING"});
                        (vec![Out::Send(restoring.to_string())], None)
                    }
                    Err(error) => (
                        refusal(
                            "SANDBOX_RESTORE_ERROR",
                            &format!("cannot restore: {error}"),
                            4000,
                        ),
                        Some(lease),
                    ),
                }
            }
        };
        if let Some(lease) = lease {
            self.release_lease_later(&sandbox_id, lease);
        }
        if let Some(socket) = self.websockets.get_mut(&connection) {
            if !socket.apply(outs) {
                self.drop_websocket(connection);
            }
        }
    }

    /// Give up a lease taken for an attach that restores nothing (on a worker thread).
    fn release_lease_later(&mut self, sandbox_id: &str, lease: lease::Lease) {
        if let Some(base) = self.checkpoint_base(sandbox_id) {
            self.jobs.spawn(move || {
                lease::release(&base, &lease);
                JobResult::Done
            });
        }
    }

    /// Every `SANDBOX_STORE_SWEEP_SECS`, sweep part of the checkpoint store for directories
    /// that killed instances left (on a worker thread, one sweep at a time).
    pub(super) fn sweep_store(&mut self, now: Instant) {
        let interval = self.config.store_sweep_interval;
        let Some(root) = self.config.checkpoint_path.clone() else {
            return;
        };
        if interval.is_zero() || self.store_sweep.running || now < self.store_sweep.next {
            return;
        }
        self.store_sweep.next = now + interval;
        self.store_sweep.running = true;
        let resume_after = self.store_sweep.resume_after.take();
        self.jobs.spawn(move || {
            JobResult::StoreSwept(leftovers::sweep(
                &root,
                resume_after.as_deref(),
                SWEEP_MAX_DIRS,
            ))
        });
    }

    /// Take the lease of a new checkpointable sandbox (nobody else knows its id yet).
    pub(super) fn claim_lease(&mut self, session_id: SessionId) {
        let Some(session) = self.sessions.get(&session_id) else {
            return;
        };
        if !session.is_checkpointable() || self.leases.contains_key(&session_id) {
            return;
        }
        let Some(base) = self.checkpoint_base(session.sandbox_id()) else {
            return;
        };
        let token = session.token_sha256().to_string();
        self.leases.insert(session_id, (base.clone(), None));
        let owner = self.instance_id.clone();
        let ttl = self.config.lease_ttl;
        self.jobs.spawn(move || {
            let result = std::fs::create_dir_all(&base)
                .map_err(|error| lease::LeaseError::Io(error.to_string()))
                .and_then(|()| lease::claim_new(&base, &owner, &token, ttl));
            JobResult::LeaseRenewed {
                session: session_id,
                result,
            }
        });
    }

    /// Renew every lease we hold (called from the sweep, every third of the TTL).
    pub(super) fn renew_leases(&mut self, now: Instant) {
        if now < self.next_lease_renewal {
            return;
        }
        self.next_lease_renewal = now + self.config.lease_ttl / 3;
        let ttl = self.config.lease_ttl;
        let held: Vec<(SessionId, PathBuf, lease::Lease)> = self
            .leases
            .iter()
            .filter_map(|(session, (base, lease))| {
                lease.clone().map(|lease| (*session, base.clone(), lease))
            })
            .collect();
        for (session, base, mut lease) in held {
            self.jobs.spawn(move || {
                let result = lease::renew(&base, &mut lease, ttl).map(|()| lease);
                JobResult::LeaseRenewed { session, result }
            });
        }
    }

    pub(super) fn release_lease(&mut self, session_id: SessionId) {
        if let Some((base, Some(held))) = self.leases.remove(&session_id) {
            self.jobs.spawn(move || {
                lease::release(&base, &held);
                JobResult::Done
            });
        }
    }

    pub(super) fn handle_session_runtime_event(
        &mut self,
        session_id: SessionId,
        event: &RuntimeEvent,
    ) -> bool {
        match event {
            RuntimeEvent::Checkpointed(result) => {
                self.on_checkpointed(session_id, result.clone());
                true
            }
            RuntimeEvent::CheckpointRefused(_) => {
                if let Some(save) = self.saves.remove(&session_id) {
                    let _ = std::fs::remove_dir_all(&save.image);
                    // A snapshot that never existed leaves no empty directory behind (this
                    // fails harmlessly when the directory holds a manifest or a lease).
                    let _ = std::fs::remove_dir(&save.base);
                }
                false
            }
            RuntimeEvent::Ready => {
                if self.on_ready_after_snapshot(session_id) {
                    return true;
                }
                false
            }
            _ => false,
        }
    }
}

/// The store side of an attach, on a worker thread: manifest, token (before anything else
/// happens), lease, image integrity.
fn check_attach(
    base: &Path,
    token: &str,
    owner: &str,
    rootfs_stamp: &str,
    ttl: std::time::Duration,
    settle: std::time::Duration,
) -> AttachOutcome {
    let manifest = match store::load(base) {
        Ok(Some(manifest)) => manifest,
        Ok(None) => {
            // Never checkpointed: it may be running on another instance (its lease says so
            // and carries the token hash, checked first).
            return match lease::current(base) {
                Some(current) if current.expires_unix_ms > store::now_unix_ms() => {
                    match current.token_sha256 {
                        Some(expected) if token_matches(&expected, token) => {
                            AttachOutcome::InUse(current.owner)
                        }
                        _ => AttachOutcome::PermissionDenied,
                    }
                }
                _ => {
                    // What an instance that died before any checkpoint left: nothing to
                    // restore, so nothing to keep.
                    leftovers::remove_if_abandoned(base);
                    AttachOutcome::NotFound
                }
            };
        }
        Err(error) => return AttachOutcome::Failed(error.to_string()),
    };
    let expected = manifest.token_sha256.clone().unwrap_or_default();
    if !token_matches(&expected, token) {
        return AttachOutcome::PermissionDenied;
    }
    if let Err(message) = same_image(&manifest, rootfs_stamp) {
        return AttachOutcome::Failed(message);
    }
    let lease = match lease::acquire(base, owner, Some(expected.clone()), ttl, settle) {
        Ok(lease) => lease,
        Err(lease::LeaseError::InUse(holder)) => return AttachOutcome::InUse(holder),
        Err(lease::LeaseError::Io(message)) => return AttachOutcome::Failed(message),
    };
    match store::verify(base, &manifest) {
        Ok(image) => AttachOutcome::Ready {
            manifest: Box::new(manifest),
            image,
            lease,
        },
        Err(error) => {
            lease::release(base, &lease);
            AttachOutcome::Failed(error.to_string())
        }
    }
}

fn not_enabled() -> (u16, Vec<u8>) {
    let message =
        "filesystem snapshots are not enabled on this server (set FILESYSTEM_SNAPSHOT_PATH)";
    (501, crate::http::response::json_error_body(message))
}

/// `GET /snapshots`: the published snapshots, by name.
pub fn list_snapshots(root: Option<&Path>) -> (u16, Vec<u8>) {
    let Some(root) = root else {
        return not_enabled();
    };
    let mut snapshots = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if store::validate_snapshot_name(&name).is_err() {
                continue;
            }
            if let Ok(Some(manifest)) = store::load(&entry.path()) {
                let size: u64 = manifest.files.iter().map(|file| file.size).sum();
                snapshots.push(serde_json::json!({
                    "name": name,
                    "created_unix_ms": manifest.created_unix_ms,
                    "size_bytes": size,
                }));
            }
        }
    }
    snapshots.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    (
        200,
        serde_json::json!({ "snapshots": snapshots })
            .to_string()
            .into_bytes(),
    )
}

/// `DELETE /snapshots/{name}`.
pub fn delete_snapshot(root: Option<&Path>, name: &str) -> (u16, Vec<u8>) {
    let Some(root) = root else {
        return not_enabled();
    };
    if let Err(message) = store::validate_snapshot_name(name) {
        return (400, crate::http::response::json_error_body(&message));
    }
    let base = root.join(name);
    if !base.join(store::MANIFEST).exists() {
        let message = format!("filesystem snapshot {name:?} not found");
        return (404, crate::http::response::json_error_body(&message));
    }
    // The manifest goes first: from then on nobody starts from the snapshot.
    let removed = std::fs::remove_file(base.join(store::MANIFEST))
        .and_then(|()| std::fs::remove_dir_all(&base));
    match removed {
        Ok(()) => (
            200,
            serde_json::json!({ "deleted": name })
                .to_string()
                .into_bytes(),
        ),
        Err(error) => {
            let message = format!("cannot delete filesystem snapshot {name:?}: {error}");
            (500, crate::http::response::json_error_body(&message))
        }
    }
}

/// A saved image only restores on the sandbox image it was taken on.
fn same_image(manifest: &Manifest, rootfs_stamp: &str) -> Result<(), String> {
    if manifest.rootfs_stamp.is_empty()
        || rootfs_stamp.is_empty()
        || manifest.rootfs_stamp == rootfs_stamp
    {
        Ok(())
    } else {
        Err(format!(
            "the image was saved on another version of the sandbox image ({}); this server runs {}",
            store::abbreviate(&manifest.rootfs_stamp),
            store::abbreviate(rootfs_stamp)
        ))
    }
}
