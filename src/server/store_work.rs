//! Everything the server does on the shared store (`CHECKPOINT_AND_RESTORE_PATH`,
//! `FILESYSTEM_SNAPSHOT_PATH`), as blocking functions that run on worker threads
//! (`server::jobs`): the mount may be a Cloud Storage bucket, where a read is a network call
//! and hashing an image takes seconds, so the event loop never calls these itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::session::options::validate_snapshot_name;
use crate::session::token;
use crate::store::{self, lease, leftovers, Manifest};

/// What the store says about an attach to a sandbox that is not live here.
#[derive(Debug)]
pub enum AttachOutcome {
    NotFound,
    PermissionDenied,
    /// Running on another instance (named).
    InUse(String),
    Failed(String),
    /// Boxed: a manifest is large next to the other answers.
    Ready {
        manifest: Box<Manifest>,
        image: PathBuf,
        lease: lease::Lease,
    },
}

/// The store side of an attach: manifest, token (before anything else happens), lease, image
/// integrity.
pub fn check_attach(
    base: &Path,
    token: &str,
    owner: &str,
    rootfs_stamp: &str,
    ttl: Duration,
    settle: Duration,
) -> AttachOutcome {
    let manifest = match store::load(base) {
        Ok(Some(manifest)) => manifest,
        Ok(None) => {
            // Never checkpointed: it may be running on another instance (its lease says so
            // and carries the token hash, checked first).
            return match lease::current(base) {
                Some(current) if current.expires_unix_ms > store::now_unix_ms() => {
                    match current.token_sha256 {
                        Some(expected) if token::matches(&expected, token) => {
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
    if !token::matches(&expected, token) {
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

/// A snapshot image verified on this instance: its manifest's generation and directory.
pub type VerifiedImage = (u64, PathBuf);

/// The verified image directory of snapshot `name`. `known` is what this instance verified
/// before (if anything): an image of the same generation that is still there is not hashed
/// again.
pub fn find_snapshot(
    root: &Path,
    name: &str,
    rootfs_stamp: &str,
    known: Option<VerifiedImage>,
) -> Result<VerifiedImage, String> {
    validate_snapshot_name(name)?;
    let base = root.join(name);
    let manifest = store::load(&base)
        .map_err(|error| error.to_string())?
        // The original clients look for "not found" in this creation error.
        .ok_or_else(|| format!("filesystem snapshot {name:?} not found"))?;
    same_image(&manifest, rootfs_stamp)
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
    ttl: Duration,
) -> Result<lease::Lease, lease::LeaseError> {
    std::fs::create_dir_all(base)
        .map_err(|error| lease::LeaseError::Io(error.to_string()))
        .and_then(|()| lease::claim_new(base, owner, token_sha256, ttl))
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

    fn publish_snapshot(root: &Path, name: &str, content: &[u8]) {
        let base = root.join(name);
        let image = prepare_image(&base).unwrap();
        std::fs::write(image.join("checkpoint.img"), content).unwrap();
        store::publish(&base, &image, None, SavedSettings::default(), "stamp").unwrap();
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

        let (generation, image) = find_snapshot(&root, "b-snap", "stamp", None).unwrap();
        assert!(image.join("checkpoint.img").exists());
        // Known and unchanged: not hashed again (a corrupted file goes unnoticed here).
        std::fs::write(image.join("checkpoint.img"), b"BYTES").unwrap();
        assert_eq!(
            find_snapshot(&root, "b-snap", "stamp", Some((generation, image.clone()))),
            Ok((generation, image.clone()))
        );
        let error = find_snapshot(&root, "b-snap", "stamp", None).unwrap_err();
        assert!(error.contains("corrupted"), "{error}");
        let error = find_snapshot(&root, "b-snap", "other-stamp", None).unwrap_err();
        assert!(
            error.contains("another version of the sandbox image"),
            "{error}"
        );
        let error = find_snapshot(&root, "nothing", "stamp", None).unwrap_err();
        assert_eq!(error, "filesystem snapshot \"nothing\" not found");
        assert!(find_snapshot(&root, "../x", "stamp", None).is_err());

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

    /// Long enough that writing a lease file locally is well within a quarter of it (the
    /// lease backs off otherwise).
    const SETTLE: Duration = Duration::from_millis(400);

    #[test]
    fn attach_checks_the_token_before_anything_else() {
        let root = temp_dir("attach");
        let base = root.join("sandbox");
        let image = prepare_image(&base).unwrap();
        std::fs::write(image.join("checkpoint.img"), b"image").unwrap();
        let hash = token::hash("the-token");
        store::publish(&base, &image, Some(hash), SavedSettings::default(), "stamp").unwrap();
        let check = |token: &str, stamp: &str| {
            check_attach(&base, token, "me", stamp, Duration::from_secs(30), SETTLE)
        };
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
            AttachOutcome::Failed(_)
        ));
        let AttachOutcome::Ready { lease, image, .. } = check("the-token", "stamp") else {
            panic!("not restorable")
        };
        assert!(image.join("checkpoint.img").exists());
        // Ours now: another instance is told it runs here.
        let other = check_attach(
            &base,
            "the-token",
            "another",
            "stamp",
            Duration::from_secs(30),
            SETTLE,
        );
        assert!(matches!(other, AttachOutcome::InUse(owner) if owner == "me"));
        lease::release(&base, &lease);
        let AttachOutcome::Ready { lease, .. } = check("the-token", "stamp") else {
            panic!("released, so restorable again")
        };
        lease::release(&base, &lease);
        assert!(matches!(
            check_attach(
                &root.join("never"),
                "t",
                "me",
                "stamp",
                Duration::from_secs(30),
                Duration::ZERO
            ),
            AttachOutcome::NotFound
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
