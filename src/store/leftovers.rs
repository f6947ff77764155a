//! What killed instances leave in the checkpoint store: a checkpointable sandbox's directory
//! holds its lease from its creation on; if its instance dies before any checkpoint, the
//! directory keeps only that lease, expired, forever. Whoever finds one removes it: an attach
//! that reads it, and a periodic sweep on a worker thread.
//!
//! Only a directory that holds nothing but lease files (and handoff requests), the current
//! lease expired, is removed, and only with single-file operations: the files seen, then the
//! directory with `remove_dir`, which fails (and leaves everything) if anything appeared in it
//! meanwhile. A lease that expired is nobody's claim any more (any instance may take it over
//! with a new generation, which this leaves alone), so removing it cannot take a live
//! sandbox's away.
//!
//! Everything here blocks on the filesystem; the server calls it from worker threads.

use std::fs;
use std::path::Path;

use std::time::Duration;

use super::now_unix_ms;
use super::{handoff, lease};

/// Entries of one directory looked at (an abandoned one holds a lease or two).
const MAX_ENTRIES: usize = 16;

/// Remove `base` if it holds nothing but lease files and handoff requests, and its current
/// lease expired. Returns whether it was removed.
pub fn remove_if_abandoned(base: &Path) -> bool {
    let Ok(entries) = fs::read_dir(base) else {
        return false;
    };
    let mut files = Vec::new();
    let mut leases = 0;
    for entry in entries {
        let Ok(entry) = entry else {
            return false;
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        if lease::generation_of(&name).is_some() {
            leases += 1;
        } else if handoff::generation_of(&name).is_none() && !is_cut_write(&name) {
            return false;
        }
        if files.len() == MAX_ENTRIES {
            return false;
        }
        files.push(entry.path());
    }
    // Only a lease that reads as expired: a claim being written (unreadable) is left alone.
    let expired = matches!(
        lease::find(base, Duration::ZERO),
        Ok(lease::Found::Lease(held)) if held.expires_unix_ms <= now_unix_ms()
    );
    if leases == 0 || !expired {
        return false;
    }
    // Requests first, leases last: a directory left half-removed still reads as expired.
    files.sort_by_key(|file| {
        lease::generation_of(&file.file_name().unwrap_or_default().to_string_lossy()).is_some()
    });
    files.iter().all(|file| fs::remove_file(file).is_ok()) && fs::remove_dir(base).is_ok()
}

/// The temporary file of a lease or handoff request written atomically (`lease-1.tmp-<hex>`)
/// by an instance killed between its write and its rename. Once the lease expired nobody
/// finishes that write, so it goes with the directory.
fn is_cut_write(name: &str) -> bool {
    (name.starts_with("lease") || name.starts_with("handoff")) && name.contains(".tmp-")
}

/// What one sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    pub examined: usize,
    pub removed: usize,
    /// Where the next sweep goes on (`None`: this one reached the end; start over).
    pub resume_after: Option<String>,
}

/// Examine at most `max_dirs` sandbox directories of `root` (in name order, after
/// `resume_after`) and remove the abandoned ones. The cost of one sweep is one listing of
/// `root` plus `max_dirs` small directories, whatever the size of the store.
pub fn sweep(root: &Path, resume_after: Option<&str>, max_dirs: usize) -> Sweep {
    let Ok(entries) = fs::read_dir(root) else {
        return Sweep::default();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| crate::ids::SandboxId::parse(name).is_some())
        .filter(|name| resume_after.is_none_or(|after| name.as_str() > after))
        .collect();
    names.sort_unstable();
    let reached_end = names.len() <= max_dirs;
    names.truncate(max_dirs);
    let mut done = Sweep::default();
    for name in &names {
        done.examined += 1;
        if remove_if_abandoned(&root.join(name)) {
            done.removed += 1;
        }
    }
    done.resume_after = if reached_end { None } else { names.pop() };
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::lease::{Lease, LEGACY_LEASE};

    fn temp_root(name: &str) -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!(
            "crs-leftovers-{name}-{}",
            crate::ids::random_hex(4)
        ));
        fs::create_dir_all(&root).unwrap();
        root
    }

    fn sandbox_dir(root: &Path, index: u8) -> std::path::PathBuf {
        let base = root.join(format!("{index:032x}"));
        fs::create_dir_all(&base).unwrap();
        base
    }

    fn write_lease(base: &Path, expires_unix_ms: u64) {
        let lease = Lease {
            owner: "killed-instance".into(),
            nonce: "n".into(),
            generation: 1,
            expires_unix_ms,
            token_sha256: None,
            handoff: false,
        };
        fs::write(lease::path(base, 1), serde_json::to_vec(&lease).unwrap()).unwrap();
    }

    #[test]
    fn only_a_lone_expired_lease_is_removed() {
        let root = temp_root("lone");
        let past = now_unix_ms() - 60_000;
        let future = now_unix_ms() + 60_000;

        let abandoned = sandbox_dir(&root, 1);
        write_lease(&abandoned, past);
        let fresh = sandbox_dir(&root, 2);
        write_lease(&fresh, future);
        let checkpointed = sandbox_dir(&root, 3);
        write_lease(&checkpointed, past);
        fs::write(checkpointed.join(crate::store::MANIFEST), b"{}").unwrap();
        let with_image = sandbox_dir(&root, 4);
        write_lease(&with_image, past);
        fs::create_dir_all(with_image.join("image-1-ab")).unwrap();
        let empty = sandbox_dir(&root, 5);
        let unreadable_lease = sandbox_dir(&root, 6);
        fs::write(lease::path(&unreadable_lease, 1), b"{garbage").unwrap();
        // An expired lease, superseded files and an old request: all of it goes.
        let generations = sandbox_dir(&root, 7);
        write_lease(&generations, past);
        fs::write(generations.join(LEGACY_LEASE), b"{}").unwrap();
        fs::write(handoff::path(&generations, 1), b"{}").unwrap();
        // Something else in it: kept.
        let other_file = sandbox_dir(&root, 8);
        write_lease(&other_file, past);
        fs::write(other_file.join("notes.txt"), b"mine").unwrap();

        // An instance killed in the middle of renewing its lease leaves the temporary file.
        fs::write(abandoned.join("lease-1.tmp-96f918c51101"), b"{").unwrap();
        assert!(remove_if_abandoned(&abandoned));
        assert!(!abandoned.exists());
        assert!(remove_if_abandoned(&generations));
        assert!(!generations.exists());
        for kept in [
            &fresh,
            &checkpointed,
            &with_image,
            &empty,
            &unreadable_lease,
            &other_file,
        ] {
            assert!(!remove_if_abandoned(kept), "{}", kept.display());
            assert!(kept.exists(), "{}", kept.display());
        }
        assert!(
            !remove_if_abandoned(&root.join("never-existed")),
            "a missing directory is not an error"
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_sweep_is_bounded_and_resumes_where_it_stopped() {
        let root = temp_root("sweep");
        let past = now_unix_ms() - 1;
        for index in 1..=5 {
            write_lease(&sandbox_dir(&root, index), past);
        }
        write_lease(&sandbox_dir(&root, 6), now_unix_ms() + 60_000);
        // Not a sandbox id: never touched.
        let other = root.join("lost+found");
        fs::create_dir_all(&other).unwrap();

        let first = sweep(&root, None, 4);
        assert_eq!(first.examined, 4);
        assert_eq!(first.removed, 4);
        assert_eq!(first.resume_after, Some(format!("{:032x}", 4)));
        let second = sweep(&root, first.resume_after.as_deref(), 4);
        assert_eq!(
            second,
            Sweep {
                examined: 2,
                removed: 1,
                resume_after: None
            }
        );
        let left: Vec<String> = fs::read_dir(&root)
            .unwrap()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        let mut left = left;
        left.sort();
        assert_eq!(left, vec![format!("{:032x}", 6), "lost+found".to_string()]);
        fs::remove_dir_all(&root).unwrap();
    }
}
