//! The shared store of the multi-instance tests: checkpoint and snapshot directories that
//! several servers share (removed on drop, after the servers), and what is in them: manifests,
//! images, the numbered lease files (`lease-<generation>.json`, the highest is current).
//!
//! Each test file uses only part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::common::wait_until;

static DIRS: AtomicUsize = AtomicUsize::new(0);

/// The shared checkpoint and snapshot directories; removed on drop.
pub struct SharedDirs {
    pub root: PathBuf,
    pub checkpoints: PathBuf,
    pub snapshots: PathBuf,
}

impl SharedDirs {
    pub fn new() -> SharedDirs {
        let n = DIRS.fetch_add(1, Ordering::SeqCst);
        let root = PathBuf::from(format!("/tmp/crs-ckpt-test-{}-{n:04}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dirs = SharedDirs {
            checkpoints: root.join("checkpoints"),
            snapshots: root.join("snapshots"),
            root,
        };
        std::fs::create_dir_all(&dirs.checkpoints).expect("create the checkpoint dir");
        std::fs::create_dir_all(&dirs.snapshots).expect("create the snapshot dir");
        dirs
    }

    /// `CHECKPOINT_AND_RESTORE_PATH` and `FILESYSTEM_SNAPSHOT_PATH` for a server's environment.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [
            (
                "CHECKPOINT_AND_RESTORE_PATH",
                self.checkpoints.to_string_lossy().into_owned(),
            ),
            (
                "FILESYSTEM_SNAPSHOT_PATH",
                self.snapshots.to_string_lossy().into_owned(),
            ),
        ]
    }

    /// The entries of `<checkpoints>/port-links` (which sandbox each exposed port's link
    /// leads to).
    pub fn port_links(&self) -> Vec<String> {
        entries(&self.checkpoints.join("port-links"))
    }

    /// `<checkpoints>/<sandbox_id>`.
    pub fn base(&self, sandbox_id: &str) -> PathBuf {
        self.checkpoints.join(sandbox_id)
    }

    /// The published manifest of a checkpointed sandbox.
    pub fn manifest(&self, sandbox_id: &str) -> Value {
        let path = self.base(sandbox_id).join("current.json");
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|error| panic!("no manifest {}: {error}", path.display()));
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|error| panic!("manifest {} is not JSON: {error}", path.display()))
    }

    /// The image directory the manifest names; asserts the files it lists are there.
    pub fn image_dir(&self, sandbox_id: &str) -> PathBuf {
        let manifest = self.manifest(sandbox_id);
        let dir = self
            .base(sandbox_id)
            .join(manifest["image_dir"].as_str().expect("image_dir"));
        let files = manifest["files"].as_array().expect("files");
        assert!(!files.is_empty(), "{manifest}");
        for file in files {
            let path = dir.join(file["name"].as_str().expect("file name"));
            let size = std::fs::metadata(&path)
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
                .len();
            assert_eq!(Some(size), file["size"].as_u64(), "{}", path.display());
        }
        dir
    }

    /// The current lease of a sandbox (the highest generation), if there is one.
    pub fn lease(&self, sandbox_id: &str) -> Option<Value> {
        let base = self.base(sandbox_id);
        let generation = entries(&base)
            .iter()
            .filter_map(|name| {
                name.strip_prefix("lease-")?
                    .strip_suffix(".json")?
                    .parse::<u64>()
                    .ok()
            })
            .max()?;
        let bytes = std::fs::read(base.join(format!("lease-{generation}.json"))).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Whether an instance holds the sandbox's lease now (it exists and has not expired).
    pub fn lease_held(&self, sandbox_id: &str) -> bool {
        self.lease(sandbox_id)
            .is_some_and(|lease| lease["expires_unix_ms"].as_u64().unwrap_or(0) > now_unix_ms())
    }

    /// After a checkpoint the instance gives its lease up (on a worker thread).
    pub fn wait_lease_released(&self, sandbox_id: &str) {
        assert!(
            wait_until(Duration::from_secs(10), || !self.lease_held(sandbox_id)),
            "the lease was not released after the checkpoint: {:?}",
            self.lease(sandbox_id)
        );
    }
}

impl Drop for SharedDirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The names in a directory, sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
