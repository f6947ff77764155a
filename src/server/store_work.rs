//! Everything the server does on the shared store (`CHECKPOINT_AND_RESTORE_PATH`,
//! `FILESYSTEM_SNAPSHOT_PATH`), as blocking functions that run on worker threads
//! (`server::jobs`): the mount may be a Cloud Storage bucket, where a read is a network call
//! and hashing an image takes seconds, so the event loop never calls these itself.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::session::options::validate_snapshot_name;
use crate::session::token;
use crate::store::{self, handoff, lease, leftovers, port_links, Builds, Manifest};

/// What the store says about an attach to a sandbox that is not live here.
#[derive(Debug)]
pub enum AttachOutcome {
    NotFound,
    PermissionDenied,
    /// Running on another instance (named).
    InUse(String),
    /// The sandbox runs on another instance that allows a handoff: our request is made
    /// (`store::handoff`); wait for the owner with [`await_handoff`].
    HandoffAsked(Box<HandoffAsked>),
    /// A handoff did not happen: why, worded for the client.
    HandoffFailed(String),
    Failed(String),
    /// Boxed: a manifest is large next to the other answers.
    Ready {
        manifest: Box<Manifest>,
        image: PathBuf,
        lease: lease::Lease,
    },
}

/// A handoff request made, and whom it was made to.
#[derive(Debug, Clone)]
pub struct HandoffAsked {
    pub generation: u64,
    pub request: handoff::Request,
    pub holder: String,
}

/// Who attaches, and what the store must match.
#[derive(Debug, Clone)]
pub struct AttachCheck {
    pub base: PathBuf,
    pub token: String,
    /// This instance, as named in leases.
    pub owner: String,
    pub builds: Builds,
    pub ttl: Duration,
    pub settle: Duration,
}

/// The store side of an attach: manifest, token (before anything else happens), image and
/// agent builds, lease (or a handoff request to the instance that holds it), image integrity.
pub fn check_attach(check: &AttachCheck) -> AttachOutcome {
    attach_or_ask(check, true)
}

fn attach_or_ask(check: &AttachCheck, may_ask: bool) -> AttachOutcome {
    let AttachCheck {
        base, token, owner, ..
    } = check;
    let manifest = match store::load(base) {
        Ok(manifest) => manifest,
        Err(error) => return AttachOutcome::Failed(error.to_string()),
    };
    let found = match lease::find(base, check.ttl) {
        Ok(found) => found,
        Err(error) => return AttachOutcome::Failed(error.to_string()),
    };
    let held = match &found {
        lease::Found::Lease(current)
            if current.expires_unix_ms > store::now_unix_ms() && &current.owner != owner =>
        {
            Some(current)
        }
        _ => None,
    };
    // The token first: the manifest's, or for a sandbox never checkpointed the lease's.
    let expected = match (&manifest, held) {
        (Some(manifest), _) => manifest.token_sha256.clone(),
        (None, Some(current)) => current.token_sha256.clone(),
        (None, None) => {
            // What an instance that died before any checkpoint left: nothing to restore, so
            // nothing to keep.
            leftovers::remove_if_abandoned(base);
            return AttachOutcome::NotFound;
        }
    };
    let expected = expected.unwrap_or_default();
    if !token::matches(&expected, token) {
        return AttachOutcome::PermissionDenied;
    }
    if let Some(manifest) = &manifest {
        if let Err(message) = check.builds.check(manifest) {
            return AttachOutcome::Failed(message);
        }
    }
    if let Some(current) = held {
        if !(current.handoff && may_ask) {
            return AttachOutcome::InUse(current.owner.clone());
        }
        return match handoff::ask(base, current.generation, owner) {
            Ok(handoff::Asked::Made(request)) => {
                AttachOutcome::HandoffAsked(Box::new(HandoffAsked {
                    generation: current.generation,
                    request,
                    holder: current.owner.clone(),
                }))
            }
            Ok(handoff::Asked::Taken(requester)) => AttachOutcome::HandoffFailed(format!(
                "it runs on another server instance ({}) and is being handed off to {requester}",
                current.owner
            )),
            Err(message) => AttachOutcome::Failed(message),
        };
    }
    let Some(manifest) = manifest else {
        // Its lease expired and it was never checkpointed: gone with its instance.
        leftovers::remove_if_abandoned(base);
        return AttachOutcome::NotFound;
    };
    let handoff = manifest.settings.handoff;
    let lease = match lease::acquire(
        base,
        owner,
        Some(expected),
        handoff,
        check.ttl,
        check.settle,
    ) {
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
            lease::release(base, &lease, check.ttl);
            AttachOutcome::Failed(error.to_string())
        }
    }
}

/// After [`AttachOutcome::HandoffAsked`]: wait (polling every `poll`, at most `wait`) until the
/// owner checkpointed the sandbox and released its lease, or refused, or its lease expired (it
/// died); then attach as usual. Every way out takes our request back.
pub fn await_handoff(
    check: &AttachCheck,
    asked: &HandoffAsked,
    wait: Duration,
    poll: Duration,
) -> AttachOutcome {
    let deadline = Instant::now() + wait;
    let base = &check.base;
    let outcome = loop {
        if let Some(reason) = handoff::pending(base, asked.generation)
            .filter(|request| request.nonce == asked.request.nonce)
            .and_then(|request| request.refused)
        {
            break Some(AttachOutcome::HandoffFailed(format!(
                "the server instance running it ({}) cannot hand it off: {reason}",
                asked.holder
            )));
        }
        let still_held = match lease::find(base, check.ttl) {
            Ok(lease::Found::Lease(current)) => {
                current.generation == asked.generation
                    && current.expires_unix_ms > store::now_unix_ms()
            }
            Ok(lease::Found::Unreadable { recent, .. }) => recent,
            Ok(lease::Found::Nothing) => false,
            // The store hiccuped: ask again until the deadline.
            Err(_) => true,
        };
        if !still_held {
            break None;
        }
        if Instant::now() >= deadline {
            break Some(AttachOutcome::HandoffFailed(format!(
                "the server instance running it ({}) did not hand it off within {} s; retry",
                asked.holder,
                wait.as_secs()
            )));
        }
        std::thread::sleep(poll);
    };
    handoff::withdraw(base, asked.generation, &asked.request);
    // Released (or expired): take it as any attach would; a faster instance may win it, and a
    // sandbox whose owner died before any checkpoint is gone.
    outcome.unwrap_or_else(|| attach_or_ask(check, false))
}

/// Sessions whose sandbox another instance asked for, among `held` (session, sandbox
/// directory, lease generation). A refused request older than `stale_after` is removed (its
/// requester gave up), so that the next one can be made.
pub fn watch_handoffs<S: Copy>(held: &[(S, PathBuf, u64)], stale_after: Duration) -> Vec<S> {
    let mut asked = Vec::new();
    for (session, base, generation) in held {
        let Some(request) = handoff::pending(base, *generation) else {
            continue;
        };
        if request.refused.is_none() {
            asked.push(*session);
        } else if store::now_unix_ms().saturating_sub(request.requested_unix_ms)
            > stale_after.as_millis() as u64
        {
            handoff::withdraw(base, *generation, &request);
        }
    }
    asked
}

/// A snapshot image verified on this instance: its manifest's generation and directory.
pub type VerifiedImage = (u64, PathBuf);

/// The verified image directory of snapshot `name`. `known` is what this instance verified
/// before (if anything): an image of the same generation that is still there is not hashed
/// again.
pub fn find_snapshot(
    root: &Path,
    name: &str,
    builds: &Builds,
    known: Option<VerifiedImage>,
) -> Result<VerifiedImage, String> {
    validate_snapshot_name(name)?;
    let base = root.join(name);
    let manifest = store::load(&base)
        .map_err(|error| error.to_string())?
        // The original clients look for "not found" in this creation error.
        .ok_or_else(|| format!("filesystem snapshot {name:?} not found"))?;
    builds
        .check(&manifest)
        .map_err(|error| format!("filesystem snapshot {name:?}: {error}"))?;
    if let Some((generation, image)) = known {
        if generation == manifest.generation && image.exists() {
            return Ok((generation, image));
        }
    }
    let image = store::verify(&base, &manifest)
        .map_err(|error| format!("filesystem snapshot {name:?}: {error}"))?;
    Ok((manifest.generation, image))
}

/// `GET /snapshots`: the published snapshots, by name (what cannot be read is left out).
pub fn list_snapshots(root: &Path) -> Value {
    let mut snapshots = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if validate_snapshot_name(&name).is_err() {
                continue;
            }
            if let Ok(Some(manifest)) = store::load(&entry.path()) {
                let size: u64 = manifest.files.iter().map(|file| file.size).sum();
                snapshots.push(json!({
                    "name": name,
                    "created_unix_ms": manifest.created_unix_ms,
                    "size_bytes": size,
                }));
            }
        }
    }
    snapshots.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    json!({ "snapshots": snapshots })
}

/// A page of `GET /sandboxes?checkpointed=1`.
#[derive(Debug, Clone)]
pub struct CheckpointQuery {
    /// Start after this sandbox id.
    pub after: Option<String>,
    /// Checkpoints listed at most.
    pub limit: usize,
    /// Tells a lease that is still held from one that expired.
    pub ttl: Duration,
}

/// What the store says about a sandbox a files request names that is not live here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredSandbox {
    /// Not in the store, or the token does not match (the same answer: no hint it exists).
    Unknown,
    /// Checkpointed and held by no instance: an attach restores it.
    Checkpointed,
    /// Running on another instance (named).
    Elsewhere(String),
}

/// A files request for a sandbox that is not live on this instance (`owner`): the token is
/// checked against the manifest (or, for a sandbox never checkpointed, its lease) first.
/// Nothing is changed in the store. A store that cannot be read counts as not knowing it.
pub fn stored_sandbox(base: &Path, token: &str, owner: &str, ttl: Duration) -> StoredSandbox {
    let manifest = store::load(base).ok().flatten();
    let held = held_elsewhere(base, owner, ttl);
    let expected = match (&manifest, &held) {
        (Some(manifest), _) => manifest.token_sha256.clone(),
        (None, Some(current)) => current.token_sha256.clone(),
        (None, None) => return StoredSandbox::Unknown,
    };
    if !token::matches(&expected.unwrap_or_default(), token) {
        return StoredSandbox::Unknown;
    }
    match held {
        Some(current) => StoredSandbox::Elsewhere(current.owner),
        None => StoredSandbox::Checkpointed,
    }
}

/// The lease of a sandbox that another instance than `owner` holds now.
fn held_elsewhere(base: &Path, owner: &str, ttl: Duration) -> Option<lease::Lease> {
    match lease::find(base, ttl) {
        Ok(lease::Found::Lease(current))
            if current.expires_unix_ms > store::now_unix_ms() && current.owner != owner =>
        {
            Some(current)
        }
        _ => None,
    }
}

/// A port link whose capability this instance does not know (`port`: the host form's port,
/// which must match). Its entry in `port-links` names the sandbox, which then must exist in
/// the store: held by another instance, or checkpointed. Nothing is changed in the store.
pub fn port_link_sandbox(
    root: &Path,
    digest: &str,
    port: Option<u16>,
    owner: &str,
    ttl: Duration,
) -> StoredSandbox {
    let Some((sandbox_id, exposed)) = port_links::find(root, digest) else {
        return StoredSandbox::Unknown;
    };
    if port.is_some_and(|port| port != exposed) {
        return StoredSandbox::Unknown;
    }
    let base = root.join(&sandbox_id);
    if let Some(current) = held_elsewhere(&base, owner, ttl) {
        return StoredSandbox::Elsewhere(current.owner);
    }
    match store::load(&base) {
        Ok(Some(_)) => StoredSandbox::Checkpointed,
        Ok(None) => {
            // Neither held nor checkpointed: the sandbox is gone (its instance died before
            // removing the entry).
            port_links::remove_if_older(root, digest, STALE_PORT_LINK);
            StoredSandbox::Unknown
        }
        Err(_) => StoredSandbox::Unknown,
    }
}

/// A port link entry whose sandbox is gone from the store is removed once it is this old (a
/// new sandbox's lease may be written after its first link's entry).
const STALE_PORT_LINK: Duration = Duration::from_secs(60);

/// `GET /sandboxes?checkpointed=1`: checkpointed sandboxes in the store, in id order, from
/// `after` on, at most `limit` (never a token). The work is bounded: one listing of the store,
/// then at most `4 * limit` sandbox directories (the others, never checkpointed, are live
/// somewhere); `next_after` is where the next page starts, `null` at the end.
pub fn list_checkpoints(root: &Path, query: &CheckpointQuery) -> Value {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| entry.file_name().into_string().ok())
                .filter(|name| crate::ids::SandboxId::parse(name).is_some())
                .filter(|name| {
                    query
                        .after
                        .as_deref()
                        .is_none_or(|after| name.as_str() > after)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort_unstable();
    let examine = query.limit.saturating_mul(4);
    let mut listed = Vec::new();
    let mut last = None;
    for name in names.iter().take(examine) {
        if listed.len() == query.limit {
            break;
        }
        last = Some(name.clone());
        let base = root.join(name);
        let Ok(Some(manifest)) = store::load(&base) else {
            continue;
        };
        let running = lease::current(&base, query.ttl)
            .is_some_and(|held| held.expires_unix_ms > store::now_unix_ms());
        let size: u64 = manifest.files.iter().map(|file| file.size).sum();
        listed.push(json!({
            "sandbox_id": name,
            "state": if running { "running" } else { "checkpointed" },
            "checkpointed": true,
            "checkpoint_unix_ms": manifest.created_unix_ms,
            "size_bytes": size,
            "labels": manifest.settings.labels,
            "handoff": manifest.settings.handoff,
        }));
    }
    let more = last
        .as_ref()
        .is_some_and(|last| names.last().is_some_and(|final_name| final_name > last));
    json!({
        "sandboxes": listed,
        "next_after": if more { last } else { None },
    })
}

/// Why a snapshot could not be deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteError {
    NotFound(String),
    Failed(String),
}

/// `DELETE /snapshots/{name}` (a valid name).
pub fn delete_snapshot(root: &Path, name: &str) -> Result<(), DeleteError> {
    let base = root.join(name);
    if !base.join(store::MANIFEST).exists() {
        return Err(DeleteError::NotFound(format!(
            "filesystem snapshot {name:?} not found"
        )));
    }
    // The manifest goes first: from then on nobody starts from the snapshot.
    std::fs::remove_file(base.join(store::MANIFEST))
        .and_then(|()| std::fs::remove_dir_all(&base))
        .map_err(|error| {
            DeleteError::Failed(format!(
                "cannot delete filesystem snapshot {name:?}: {error}"
            ))
        })
}

/// A fresh image directory under `base` (made if missing), for `runsc checkpoint` to write.
pub fn prepare_image(base: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(base)
        .and_then(|()| store::new_image_dir(base))
        .map_err(|error| format!("cannot write to {}: {error}", base.display()))
}

/// Remove an image that will not be published; with `base_if_empty`, also its sandbox or
/// snapshot directory if nothing else is in it (a snapshot that never existed leaves no empty
/// directory behind; one with a manifest or a lease stays).
pub fn discard_image(image: &Path, base_if_empty: Option<&Path>) {
    let _ = std::fs::remove_dir_all(image);
    if let Some(base) = base_if_empty {
        let _ = std::fs::remove_dir(base);
    }
}

/// Remove a killed sandbox's directory: its checkpoints and its lease.
pub fn remove_saved_state(base: &Path) {
    let _ = std::fs::remove_dir_all(base);
}

/// Take the lease of a new checkpointable sandbox (nobody else knows its id yet).
pub fn claim_lease(
    base: &Path,
    owner: &str,
    token_sha256: &str,
    handoff: bool,
    ttl: Duration,
) -> Result<lease::Lease, lease::LeaseError> {
    std::fs::create_dir_all(base)
        .map_err(|error| lease::LeaseError::Io(error.to_string()))
        .and_then(|()| lease::claim_new(base, owner, token_sha256, handoff, ttl))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SavedSettings;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "crs-store-work-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn builds(stamp: &str) -> Builds {
        Builds {
            rootfs_stamp: stamp.into(),
            agent: "agent-build".into(),
        }
    }

    fn publish_snapshot(root: &Path, name: &str, content: &[u8]) {
        let base = root.join(name);
        let image = prepare_image(&base).unwrap();
        std::fs::write(image.join("checkpoint.img"), content).unwrap();
        store::publish(
            &base,
            &image,
            None,
            SavedSettings::default(),
            &builds("stamp"),
        )
        .unwrap();
    }
    #[test]
    fn snapshots_are_found_verified_listed_and_deleted() {
        let root = temp_dir("snapshots");
        publish_snapshot(&root, "b-snap", b"bytes");
        publish_snapshot(&root, "a-snap", b"more bytes");
        std::fs::create_dir_all(root.join(".hidden")).unwrap();

        let listed = list_snapshots(&root);
        let names: Vec<&str> = listed["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|snapshot| snapshot["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a-snap", "b-snap"]);
        assert_eq!(listed["snapshots"][0]["size_bytes"], 10);

        let (generation, image) = find_snapshot(&root, "b-snap", &builds("stamp"), None).unwrap();
        assert!(image.join("checkpoint.img").exists());
        // Known and unchanged: not hashed again (a corrupted file goes unnoticed here).
        std::fs::write(image.join("checkpoint.img"), b"BYTES").unwrap();
        assert_eq!(
            find_snapshot(
                &root,
                "b-snap",
                &builds("stamp"),
                Some((generation, image.clone()))
            ),
            Ok((generation, image.clone()))
        );
        let error = find_snapshot(&root, "b-snap", &builds("stamp"), None).unwrap_err();
        assert!(error.contains("corrupted"), "{error}");
        let error = find_snapshot(&root, "b-snap", &builds("other-stamp"), None).unwrap_err();
        assert!(
            error.contains("another version of the sandbox image"),
            "{error}"
        );
        let error = find_snapshot(&root, "nothing", &builds("stamp"), None).unwrap_err();
        assert_eq!(error, "filesystem snapshot \"nothing\" not found");
        assert!(find_snapshot(&root, "../x", &builds("stamp"), None).is_err());

        assert_eq!(delete_snapshot(&root, "a-snap"), Ok(()));
        assert!(!root.join("a-snap").exists());
        assert_eq!(
            delete_snapshot(&root, "a-snap"),
            Err(DeleteError::NotFound(
                "filesystem snapshot \"a-snap\" not found".into()
            ))
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn discarded_images_take_their_empty_directory_along() {
        let root = temp_dir("discard");
        let base = root.join("snap");
        let image = prepare_image(&base).unwrap();
        discard_image(&image, Some(&base));
        assert!(!base.exists());
        let image = prepare_image(&base).unwrap();
        std::fs::write(base.join(store::MANIFEST), b"{}").unwrap();
        discard_image(&image, Some(&base));
        assert!(!image.exists() && base.exists(), "a directory in use stays");
        std::fs::remove_dir_all(&root).unwrap();
    }

    const TTL: Duration = Duration::from_secs(30);

    fn check_for(base: &Path, token: &str, owner: &str, stamp: &str) -> AttachCheck {
        AttachCheck {
            base: base.to_path_buf(),
            token: token.into(),
            owner: owner.into(),
            builds: builds(stamp),
            ttl: TTL,
            settle: Duration::ZERO,
        }
    }

    /// A sandbox directory with a checkpoint of token "the-token".
    fn checkpointed(root: &Path, handoff: bool) -> PathBuf {
        let base = root.join("sandbox");
        let image = prepare_image(&base).unwrap();
        std::fs::write(image.join("checkpoint.img"), b"image").unwrap();
        let settings = SavedSettings {
            handoff,
            ..SavedSettings::default()
        };
        let hash = Some(token::hash("the-token"));
        store::publish(&base, &image, hash, settings, &builds("stamp")).unwrap();
        base
    }

    #[test]
    fn attach_checks_the_token_before_anything_else() {
        let root = temp_dir("attach");
        let base = checkpointed(&root, false);
        let check = |token: &str, stamp: &str| check_attach(&check_for(&base, token, "me", stamp));
        assert!(matches!(
            check("wrong", "stamp"),
            AttachOutcome::PermissionDenied
        ));
        assert!(matches!(
            check("", "other"),
            AttachOutcome::PermissionDenied
        ));
        assert!(matches!(
            check("the-token", "other"),
            AttachOutcome::Failed(message) if message.contains("another version of the sandbox image")
        ));
        let mut other_agent = check_for(&base, "the-token", "me", "stamp");
        other_agent.builds.agent = "agent-2".into();
        assert!(matches!(
            check_attach(&other_agent),
            AttachOutcome::Failed(message) if message.contains("another build of the sandbox agent (agent-build)")
                && message.contains("agent build agent-2")
        ));
        let AttachOutcome::Ready { lease, image, .. } = check("the-token", "stamp") else {
            panic!("not restorable")
        };
        assert!(image.join("checkpoint.img").exists());
        // Ours now: another instance is told it runs here (no handoff: not enabled).
        let other = check_attach(&check_for(&base, "the-token", "another", "stamp"));
        assert!(matches!(other, AttachOutcome::InUse(owner) if owner == "me"));
        lease::release(&base, &lease, TTL);
        let AttachOutcome::Ready { lease, .. } = check("the-token", "stamp") else {
            panic!("released, so restorable again")
        };
        lease::release(&base, &lease, TTL);
        assert!(matches!(
            check_attach(&check_for(&root.join("never"), "t", "me", "stamp")),
            AttachOutcome::NotFound
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// The store's side of a handoff: A holds the sandbox, B asks, A checkpoints and releases,
    /// B takes it; one request at a time; refusals and timeouts answer B.
    #[test]
    fn a_handoff_goes_through_the_store_only() {
        let root = temp_dir("handoff");
        let base = checkpointed(&root, true);
        let a = check_for(&base, "the-token", "a", "stamp");
        let b = check_for(&base, "the-token", "b", "stamp");
        let c = check_for(&base, "the-token", "c", "stamp");
        let AttachOutcome::Ready { lease: held, .. } = check_attach(&a) else {
            panic!("A cannot take it")
        };
        assert!(
            held.handoff,
            "the lease carries the sandbox's handoff setting"
        );
        assert!(matches!(
            check_attach(&check_for(&base, "wrong", "b", "stamp")),
            AttachOutcome::PermissionDenied
        ));
        let AttachOutcome::HandoffAsked(asked) = check_attach(&b) else {
            panic!("B did not ask")
        };
        assert_eq!(
            (asked.generation, asked.holder.as_str()),
            (held.generation, "a")
        );
        // C comes second: in use, and why.
        assert!(matches!(check_attach(&c),
            AttachOutcome::HandoffFailed(message) if message.contains("being handed off to b")));
        // A sees the request (and only for its generation).
        let watched = [
            (1, base.clone(), held.generation),
            (2, base.clone(), held.generation + 1),
        ];
        assert_eq!(watch_handoffs(&watched, TTL), [1]);

        // A refuses: B hears why at once, and its request is gone.
        handoff::refuse(&base, held.generation, "open TCP connections");
        let outcome = await_handoff(
            &b,
            &asked,
            Duration::from_secs(30),
            Duration::from_millis(5),
        );
        assert!(
            matches!(&outcome, AttachOutcome::HandoffFailed(message)
            if message.contains("cannot hand it off: open TCP connections")),
            "{outcome:?}"
        );
        assert_eq!(handoff::pending(&base, held.generation), None);

        // Asked again; A does not answer in time.
        let AttachOutcome::HandoffAsked(asked) = check_attach(&b) else {
            panic!("B did not ask again")
        };
        let outcome = await_handoff(&b, &asked, Duration::ZERO, Duration::from_millis(5));
        assert!(
            matches!(&outcome, AttachOutcome::HandoffFailed(message)
            if message.contains("did not hand it off within 0 s")),
            "{outcome:?}"
        );
        assert_eq!(handoff::pending(&base, held.generation), None, "withdrawn");

        // Asked again; A hands off (a new checkpoint, then its lease released) while B waits.
        let AttachOutcome::HandoffAsked(asked) = check_attach(&b) else {
            panic!("B did not ask a third time")
        };
        let waiter = {
            let (b, asked) = (b.clone(), asked.clone());
            std::thread::spawn(move || {
                await_handoff(
                    &b,
                    &asked,
                    Duration::from_secs(30),
                    Duration::from_millis(5),
                )
            })
        };
        let image = prepare_image(&base).unwrap();
        std::fs::write(image.join("checkpoint.img"), b"newer image").unwrap();
        let settings = SavedSettings {
            handoff: true,
            ..SavedSettings::default()
        };
        store::publish(
            &base,
            &image,
            Some(token::hash("the-token")),
            settings,
            &builds("stamp"),
        )
        .unwrap();
        lease::release(&base, &held, TTL);
        let AttachOutcome::Ready { lease, image, .. } = waiter.join().unwrap() else {
            panic!("B did not get it")
        };
        assert_eq!(
            (lease.owner.as_str(), lease.generation),
            ("b", held.generation + 1)
        );
        assert_eq!(
            std::fs::read(image.join("checkpoint.img")).unwrap(),
            b"newer image"
        );
        assert_eq!(handoff::pending(&base, held.generation), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn checkpoints_are_listed_in_pages_without_tokens() {
        let root = temp_dir("list");
        let ids: Vec<String> = (1..=5).map(|n| format!("{n:032x}")).collect();
        for (index, id) in ids.iter().enumerate() {
            let base = root.join(id);
            if index == 2 {
                // Never checkpointed (live somewhere): only a lease.
                std::fs::create_dir_all(&base).unwrap();
                lease::claim_new(&base, "a", "hash", false, TTL).unwrap();
                continue;
            }
            let image = prepare_image(&base).unwrap();
            std::fs::write(image.join("checkpoint.img"), b"image").unwrap();
            let settings = SavedSettings {
                labels: [("n".to_string(), index.to_string())].into(),
                ..SavedSettings::default()
            };
            let token = Some(token::hash("secret-token"));
            store::publish(&base, &image, token, settings, &builds("stamp")).unwrap();
        }
        // The first one runs somewhere again.
        lease::claim_new(&root.join(&ids[0]), "a", "hash", false, TTL).unwrap();
        std::fs::create_dir_all(root.join("not-a-sandbox")).unwrap();
        let page = |after: Option<&str>, limit| {
            let query = CheckpointQuery {
                after: after.map(str::to_string),
                limit,
                ttl: TTL,
            };
            list_checkpoints(&root, &query)
        };
        let first = page(None, 2);
        let listed: Vec<&str> = first["sandboxes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| entry["sandbox_id"].as_str().unwrap())
            .collect();
        assert_eq!(listed, [ids[0].as_str(), ids[1].as_str()]);
        assert_eq!(first["sandboxes"][0]["state"], "running");
        assert_eq!(first["sandboxes"][1]["state"], "checkpointed");
        assert_eq!(first["sandboxes"][1]["labels"]["n"], "1");
        assert_eq!(first["next_after"], ids[1].as_str());
        let second = page(first["next_after"].as_str(), 2);
        let listed: Vec<&str> = second["sandboxes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| entry["sandbox_id"].as_str().unwrap())
            .collect();
        assert_eq!(
            listed,
            [ids[3].as_str(), ids[4].as_str()],
            "the live one is skipped"
        );
        assert_eq!(second["next_after"], Value::Null);
        assert!(!second.to_string().contains("token"), "{second}");
        assert!(!first.to_string().contains("hash"), "{first}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// The owner died: its lease expires and the waiting instance restores the last checkpoint;
    /// a sandbox that was never checkpointed is gone with it.
    #[test]
    fn a_handoff_to_a_dead_owner_ends_when_its_lease_expires() {
        let root = temp_dir("handoff-dead");
        let base = checkpointed(&root, true);
        let short = Duration::from_millis(300);
        let a = AttachCheck {
            ttl: short,
            ..check_for(&base, "the-token", "a", "stamp")
        };
        let b = check_for(&base, "the-token", "b", "stamp");
        assert!(matches!(check_attach(&a), AttachOutcome::Ready { .. }));
        let AttachOutcome::HandoffAsked(asked) = check_attach(&b) else {
            panic!("B did not ask")
        };
        let outcome = await_handoff(
            &b,
            &asked,
            Duration::from_secs(30),
            Duration::from_millis(20),
        );
        assert!(matches!(outcome, AttachOutcome::Ready { lease, .. } if lease.owner == "b"));

        let never = root.join("never-checkpointed");
        std::fs::create_dir_all(&never).unwrap();
        lease::claim_new(&never, "a", &token::hash("the-token"), true, short).unwrap();
        let b = check_for(&never, "the-token", "b", "stamp");
        let AttachOutcome::HandoffAsked(asked) = check_attach(&b) else {
            panic!("B did not ask")
        };
        let outcome = await_handoff(
            &b,
            &asked,
            Duration::from_secs(30),
            Duration::from_millis(20),
        );
        assert!(matches!(outcome, AttachOutcome::NotFound), "{outcome:?}");
        assert!(!never.exists(), "what the dead instance left is removed");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
