//! Which sandbox an exposed port's link leads to, for the instances that do not hold it
//! (issue 20 with issue 16's instances): a link lands on whichever instance the load balancer
//! picks, and one that never held the sandbox would otherwise only know that the capability is
//! not among its own.
//!
//! ```text
//! <checkpoint root>/port-links/<SHA-256 of the capability>.json   {"sandbox_id": ..., "port": ...}
//! ```
//! Written when a port is exposed, removed when it is unexposed or its sandbox is deleted. The
//! file is named by the capability's digest, so only the holder of the link can find it, and
//! the name cannot be taken for a sandbox's directory (those are named by sandbox ids).
//! An entry is a hint, not a proof: the sandbox's manifest or lease says whether it still
//! exists (an instance that died leaves its entries behind).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::SandboxId;

/// The directory of the entries, under the checkpoint root.
pub const DIR: &str = "port-links";

/// An entry is a few dozen bytes; a larger file is not one of ours.
const MAX_ENTRY_BYTES: u64 = 4096;

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    sandbox_id: String,
    port: u16,
}

fn entry_path(root: &Path, digest: &str) -> Option<PathBuf> {
    let well_formed = digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit());
    well_formed.then(|| root.join(DIR).join(format!("{digest}.json")))
}

/// Record that the capability of SHA-256 `digest` leads to `port` of `sandbox_id`.
pub fn write(root: &Path, digest: &str, sandbox_id: &str, port: u16) -> std::io::Result<()> {
    let path = entry_path(root, digest).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a SHA-256 digest")
    })?;
    std::fs::create_dir_all(root.join(DIR))?;
    let entry = Entry {
        sandbox_id: sandbox_id.to_string(),
        port,
    };
    let bytes = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
    super::write_atomically(&path, &bytes)
}

/// Forget the capability of SHA-256 `digest` (gone already is fine).
pub fn remove(root: &Path, digest: &str) {
    if let Some(path) = entry_path(root, digest) {
        let _ = std::fs::remove_file(path);
    }
}

/// Remove the entry of `digest` if it was written at least `age` ago: one whose sandbox is
/// gone from the store (its instance died before removing it). A younger one may be of a
/// sandbox whose lease is still being written.
pub fn remove_if_older(root: &Path, digest: &str, age: Duration) {
    let Some(path) = entry_path(root, digest) else {
        return;
    };
    let old_enough = std::fs::metadata(&path)
        .and_then(|metadata| metadata.modified())
        .ok()
        .and_then(|written| written.elapsed().ok())
        .is_some_and(|elapsed| elapsed >= age);
    if old_enough {
        let _ = std::fs::remove_file(path);
    }
}

/// The sandbox and port the capability of SHA-256 `digest` leads to, if an entry says so.
pub fn find(root: &Path, digest: &str) -> Option<(String, u16)> {
    let bytes = super::read_bounded(&entry_path(root, digest)?, MAX_ENTRY_BYTES).ok()?;
    let entry: Entry = serde_json::from_slice(&bytes).ok()?;
    // Shared storage: only a well-formed id names a directory.
    let sandbox_id = SandboxId::parse(&entry.sandbox_id)?.to_string();
    Some((sandbox_id, entry.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("crs-port-links-{}", crate::ids::random_hex(8)));
        std::fs::create_dir_all(&root).unwrap();
        root
    }

    #[test]
    fn an_entry_leads_to_its_sandbox_until_removed() {
        let root = root();
        let digest = crate::ids::sha256_hex(b"capability");
        let sandbox = format!("{:032x}", 7);
        assert_eq!(find(&root, &digest), None);
        write(&root, &digest, &sandbox, 8000).unwrap();
        assert_eq!(find(&root, &digest), Some((sandbox, 8000)));
        // Too young to be taken for a leftover.
        remove_if_older(&root, &digest, Duration::from_secs(60));
        assert!(find(&root, &digest).is_some());
        remove_if_older(&root, &digest, Duration::ZERO);
        assert_eq!(find(&root, &digest), None);
        write(&root, &digest, &format!("{:032x}", 8), 8001).unwrap();
        remove(&root, &digest);
        assert_eq!(find(&root, &digest), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn names_and_contents_from_the_store_are_checked() {
        let root = root();
        assert!(write(&root, "../../etc", "x", 1).is_err());
        assert_eq!(find(&root, "../current"), None);
        let digest = crate::ids::sha256_hex(b"other");
        std::fs::create_dir_all(root.join(DIR)).unwrap();
        std::fs::write(
            root.join(DIR).join(format!("{digest}.json")),
            br#"{"sandbox_id": "../x", "port": 1}"#,
        )
        .unwrap();
        assert_eq!(find(&root, &digest), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
