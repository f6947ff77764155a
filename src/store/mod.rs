//! Saved sandbox images on a shared path: checkpoints under `CHECKPOINT_AND_RESTORE_PATH`,
//! filesystem snapshots under `FILESYSTEM_SNAPSHOT_PATH`.
//!
//! The path may be a Cloud Storage bucket mounted with Cloud Storage FUSE, so the layout uses
//! only what that offers reliably: create, write, read, delete, and rename of a single file.
//! No hard links, no locks, no directory renames.
//!
//! ```text
//! <base>/                         one sandbox (by id) or one snapshot (by name)
//!   image-<generation>-<nonce>/   what `runsc checkpoint` wrote; never renamed
//!   current.json                  the manifest: which image, file sizes and SHA-256s, settings
//!   lease-<generation>.json       who runs the sandbox now (checkpoints only; see `lease`)
//!   handoff-<generation>.json     another instance asks for the sandbox (see `handoff`)
//! <checkpoint root>/port-links/     which sandbox an exposed port's link leads to (see
//!                                 `port_links`)
//! ```
//! A directory left with only an expired lease (its instance died before any checkpoint) is
//! removed by whoever finds it (see `leftovers`).
//! A reader follows `current.json`, which is published last with one rename, and verifies the
//! files against it: a half-written or corrupted image is never restored.
//!
//! Everything here blocks on the filesystem; the server calls it from worker threads.

mod error;
pub mod handoff;
pub mod lease;
pub mod leftovers;
pub mod port_links;

pub use error::{ManifestProblem, StoreError};

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::{hex, random_hex};

pub const MANIFEST: &str = "current.json";

/// Largest manifest read: a real one lists a handful of files. Another instance or a corrupted
/// file must not make us allocate without bound.
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// Settings of a checkpointed session, restored with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SavedSettings {
    pub idle_timeout_secs: Option<f64>,
    pub auto_checkpoint: bool,
    /// Created with network egress (restored with it too).
    #[serde(default)]
    pub network: bool,
    /// The compatible (id-less) execution that was running when the sandbox was
    /// checkpointed at shutdown: it goes on after the restore, and the restored session
    /// follows it (reconnect replays it).
    #[serde(default)]
    pub running_exec: Option<SavedExec>,
    /// The other processes running then (started with a request id, protocol 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<SavedExec>,
    /// Created with `enable_sandbox_handoff`.
    #[serde(default)]
    pub handoff: bool,
    /// The labels given at create (listed by `GET /sandboxes`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The exposed ports (issue 20), with their capabilities: the same URLs work again once
    /// the sandbox is restored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<SavedPort>,
}

/// An exposed port kept in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPort {
    pub port: u16,
    pub capability: String,
}

/// A process that runs on in a checkpoint. Every field but the first two is optional, so that
/// manifests written before they existed still read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedExec {
    /// Its execution id, which is also its process id.
    pub id: u32,
    pub base64: bool,
    /// The request id that started it, as the client sent it (a string or an integer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default)]
    pub started_unix_ms: u64,
    /// Bytes of stdin the server had accepted and the agent had written, so that the
    /// acknowledgements go on where they were.
    #[serde(default)]
    pub stdin_received: u64,
    #[serde(default)]
    pub stdin_consumed: u64,
    /// `"terminal"` for a process on a pseudo-terminal; absent for code on pipes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub generation: u64,
    pub image_dir: String,
    pub files: Vec<FileEntry>,
    /// SHA-256 of the session token (checkpoints only): attach compares against it before
    /// anything is restored.
    pub token_sha256: Option<String>,
    pub settings: SavedSettings,
    pub created_unix_ms: u64,
    /// The sandbox image (rootfs stamp) the checkpoint was taken on.
    pub rootfs_stamp: String,
    /// The SHA-256 of the agent binary that ran in the sandbox: the agent is mounted from the
    /// host, not saved in the image, and a restored agent of another build crashes. Empty in
    /// manifests written before it was recorded.
    #[serde(default)]
    pub agent_build: String,
}

impl Manifest {
    /// The image directory and the file names are joined to the store's paths: each must be
    /// one plain name inside `<base>` (a manifest from elsewhere could say `../../etc`).
    fn check_paths(&self) -> Result<(), ManifestProblem> {
        let plain = |name: &str| {
            !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
        };
        if !self.image_dir.starts_with("image-") || !plain(&self.image_dir) {
            return Err(ManifestProblem::ImageDir(self.image_dir.clone()));
        }
        if let Some(file) = self.files.iter().find(|file| !plain(&file.name)) {
            return Err(ManifestProblem::FileName(file.name.clone()));
        }
        Ok(())
    }
}

/// What a saved image is bound to on the host that restores it: the sandbox image and the
/// agent binary (neither is saved in the image).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Builds {
    /// The sandbox image's stamp (`.sandbox-image-stamp` in the root filesystem).
    pub rootfs_stamp: String,
    /// The SHA-256 of the agent binary.
    pub agent: String,
}

impl Builds {
    /// Whether an image saved under `manifest` restores here; the reason if not. An empty
    /// value (not recorded, or unknown here) does not refuse.
    pub fn check(&self, manifest: &Manifest) -> Result<(), String> {
        let differs =
            |saved: &str, here: &str| !saved.is_empty() && !here.is_empty() && saved != here;
        if differs(&manifest.rootfs_stamp, &self.rootfs_stamp) {
            return Err(format!(
                "the image was saved on another version of the sandbox image ({}); this server runs {}",
                abbreviate(&manifest.rootfs_stamp),
                abbreviate(&self.rootfs_stamp)
            ));
        }
        if differs(&manifest.agent_build, &self.agent) {
            return Err(format!(
                "the image was saved with another build of the sandbox agent ({}); this server runs agent build {} (a restored agent of another build crashes: attach through an instance of the revision that saved it, see docs/checkpoint.md)",
                abbreviate(&manifest.agent_build),
                abbreviate(&self.agent)
            ));
        }
        Ok(())
    }
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn file_sha256(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buffer[..n]);
    }
    Ok((size, hex(&hasher.finalize())))
}

/// Write `bytes` to `path` so that readers see the old or the new content, never a mix.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = path.with_extension(format!("tmp-{}", random_hex(6)));
    let result = (|| {
        let mut file = File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

/// A fresh directory for the next image of `base` (never reused, never renamed).
pub fn new_image_dir(base: &Path) -> std::io::Result<PathBuf> {
    let generation = load(base)
        .ok()
        .flatten()
        .map(|manifest| manifest.generation.saturating_add(1))
        .unwrap_or(1);
    let dir = base.join(format!("image-{generation}-{}", random_hex(4)));
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Publish the image in `image_dir` as the current one of `base`: hash its files, write the
/// manifest with one rename, then remove superseded images.
pub fn publish(
    base: &Path,
    image_dir: &Path,
    token_sha256: Option<String>,
    settings: SavedSettings,
    builds: &Builds,
) -> Result<Manifest, StoreError> {
    let describe = |source: std::io::Error| StoreError::Save {
        image_dir: image_dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(image_dir).map_err(describe)? {
        let entry = entry.map_err(describe)?;
        if !entry.file_type().map_err(describe)?.is_file() {
            continue;
        }
        let (size, sha256) = file_sha256(&entry.path()).map_err(describe)?;
        files.push(FileEntry {
            name: entry.file_name().to_string_lossy().into_owned(),
            size,
            sha256,
        });
    }
    if files.is_empty() {
        return Err(StoreError::NoImageFiles {
            image_dir: image_dir.to_path_buf(),
        });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    let image_name = image_dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .ok_or_else(|| StoreError::BadImageDir {
            image_dir: image_dir.to_path_buf(),
        })?;
    let generation = image_name
        .strip_prefix("image-")
        .and_then(|rest| rest.split('-').next())
        .and_then(|number| number.parse().ok())
        .unwrap_or(1);
    let manifest = Manifest {
        generation,
        image_dir: image_name.clone(),
        files,
        token_sha256,
        settings,
        created_unix_ms: now_unix_ms(),
        rootfs_stamp: builds.rootfs_stamp.clone(),
        agent_build: builds.agent.clone(),
    };
    // Serializing plain strings and numbers cannot fail; should it, nothing is published.
    let bytes = serde_json::to_vec_pretty(&manifest)
        .map_err(|error| describe(std::io::Error::other(error)))?;
    write_atomically(&base.join(MANIFEST), &bytes).map_err(describe)?;
    remove_images_except(base, &image_name);
    Ok(manifest)
}

/// Remove every image directory of `base` but `keep` (superseded or abandoned ones).
pub fn remove_images_except(base: &Path, keep: &str) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("image-") && name != keep {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Reads a small file of the shared store, refusing one larger than `max` bytes.
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(bytes)
}

/// The first characters of an identifier for a message (never splits a UTF-8 character: what
/// is read from the store may be anything).
pub fn abbreviate(text: &str) -> &str {
    match text.char_indices().nth(12) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// The current manifest of `base`, if one was published.
pub fn load(base: &Path) -> Result<Option<Manifest>, StoreError> {
    let corrupted = |problem| StoreError::CorruptedManifest {
        base: base.to_path_buf(),
        problem,
    };
    match read_bounded(&base.join(MANIFEST), MAX_MANIFEST_BYTES) {
        Ok(bytes) => {
            let manifest: Manifest = serde_json::from_slice(&bytes)
                .map_err(|error| corrupted(ManifestProblem::Json(error)))?;
            manifest.check_paths().map_err(corrupted)?;
            Ok(Some(manifest))
        }
        Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
            Err(corrupted(ManifestProblem::TooLarge(error)))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Read {
            path: base.join(MANIFEST),
            source,
        }),
    }
}

/// Check every file of the image against the manifest; returns the image directory.
pub fn verify(base: &Path, manifest: &Manifest) -> Result<PathBuf, StoreError> {
    let dir = base.join(&manifest.image_dir);
    for file in &manifest.files {
        let path = dir.join(&file.name);
        let (size, sha256) = file_sha256(&path).map_err(|source| StoreError::IncompleteImage {
            path: path.clone(),
            source,
        })?;
        if size != file.size || sha256 != file.sha256 {
            return Err(StoreError::CorruptedImage {
                file: file.name.clone(),
                size,
                sha256,
                expected_size: file.size,
                expected_sha256: file.sha256.clone(),
            });
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builds() -> Builds {
        Builds {
            rootfs_stamp: "stamp".into(),
            agent: "agent-1".into(),
        }
    }

    #[test]
    fn images_restore_only_with_the_same_image_and_agent() {
        let manifest = |stamp: &str, agent: &str| Manifest {
            generation: 1,
            image_dir: "image-1-a".into(),
            files: Vec::new(),
            token_sha256: None,
            settings: SavedSettings::default(),
            created_unix_ms: 0,
            rootfs_stamp: stamp.into(),
            agent_build: agent.into(),
        };
        let here = builds();
        assert_eq!(here.check(&manifest("stamp", "agent-1")), Ok(()));
        // Not recorded (older manifests): not refused.
        assert_eq!(here.check(&manifest("", "")), Ok(()));
        let error = here.check(&manifest("stamp", "agent-0")).unwrap_err();
        assert!(
            error.contains("another build of the sandbox agent (agent-0)")
                && error.contains("agent build agent-1"),
            "{error}"
        );
        let error = here.check(&manifest("old-stamp", "agent-1")).unwrap_err();
        assert!(
            error.contains("another version of the sandbox image (old-stamp)"),
            "{error}"
        );
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("crs-store-{name}-{}", random_hex(4)));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn publish_load_verify_and_supersede() {
        let base = temp_dir("publish");
        let first = new_image_dir(&base).unwrap();
        fs::write(first.join("checkpoint.img"), b"first image").unwrap();
        let manifest = publish(
            &base,
            &first,
            Some(crate::ids::sha256_hex(b"token")),
            SavedSettings::default(),
            &builds(),
        )
        .unwrap();
        assert_eq!(manifest.generation, 1);
        assert_eq!(load(&base).unwrap().unwrap(), manifest);
        assert_eq!(verify(&base, &manifest).unwrap(), first);

        let second = new_image_dir(&base).unwrap();
        fs::write(second.join("checkpoint.img"), b"second image").unwrap();
        let newer = publish(&base, &second, None, SavedSettings::default(), &builds()).unwrap();
        assert_eq!(newer.generation, 2);
        assert!(!first.exists(), "the superseded image is removed");

        fs::write(second.join("checkpoint.img"), b"second imagX").unwrap();
        let error = verify(&base, &newer).unwrap_err();
        assert!(
            matches!(&error, StoreError::CorruptedImage { file, size: 12, .. } if file == "checkpoint.img"),
            "{error:?}"
        );
        assert!(error.to_string().contains("corrupted"), "{error}");
        fs::write(second.join("checkpoint.img"), b"short").unwrap();
        assert!(verify(&base, &newer).is_err());
        fs::remove_file(second.join("checkpoint.img")).unwrap();
        let error = verify(&base, &newer).unwrap_err();
        assert!(
            matches!(error, StoreError::IncompleteImage { .. }),
            "{error:?}"
        );
        assert!(
            std::error::Error::source(&error).is_some(),
            "the io error is kept"
        );
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn missing_and_garbage_manifests() {
        let base = temp_dir("missing");
        assert_eq!(load(&base).unwrap(), None);
        fs::write(base.join(MANIFEST), b"{not json").unwrap();
        let error = load(&base).unwrap_err();
        assert!(
            matches!(
                error,
                StoreError::CorruptedManifest {
                    problem: ManifestProblem::Json(_),
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("corrupted"), "{error}");
        fs::write(
            base.join(MANIFEST),
            vec![b' '; MAX_MANIFEST_BYTES as usize + 1],
        )
        .unwrap();
        let error = load(&base).unwrap_err().to_string();
        assert!(
            error.contains("corrupted") && error.contains("larger than"),
            "{error}"
        );
        fs::remove_dir_all(&base).unwrap();
    }

    /// A manifest written by another instance, or corrupted, is data to check, not to trust.
    #[test]
    fn hostile_manifests_are_errors_not_panics_or_escapes() {
        let base = temp_dir("hostile");
        let image = new_image_dir(&base).unwrap();
        fs::write(image.join("checkpoint.img"), b"image").unwrap();
        let good = publish(&base, &image, None, SavedSettings::default(), &builds()).unwrap();
        let write = |manifest: &Manifest| {
            fs::write(base.join(MANIFEST), serde_json::to_vec(manifest).unwrap()).unwrap()
        };

        // A hash made of multi-byte characters: the message quotes a prefix without splitting
        // one (slicing bytes [..12] panicked here).
        let mut manifest = good.clone();
        manifest.files[0].sha256 = "é".repeat(40);
        let error = verify(&base, &manifest).unwrap_err().to_string();
        assert!(error.contains(&"é".repeat(12)), "{error}");

        // The largest generation: the next image directory does not overflow.
        manifest = good.clone();
        manifest.generation = u64::MAX;
        write(&manifest);
        let next = new_image_dir(&base).unwrap();
        assert!(next
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&format!("image-{}-", u64::MAX)));

        for (image_dir, file) in [
            ("../../etc", "passwd"),
            ("/etc", "passwd"),
            ("image-1/../..", "x"),
            (good.image_dir.as_str(), "../../../etc/passwd"),
            (good.image_dir.as_str(), ".."),
            (good.image_dir.as_str(), ""),
        ] {
            manifest = good.clone();
            manifest.image_dir = image_dir.to_string();
            manifest.files[0].name = file.to_string();
            write(&manifest);
            let error = load(&base).unwrap_err().to_string();
            assert!(error.contains("corrupted"), "{image_dir} {file}: {error}");
        }
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn abbreviations_respect_characters() {
        assert_eq!(abbreviate("0123456789abcdef"), "0123456789ab");
        assert_eq!(abbreviate("short"), "short");
        assert_eq!(abbreviate(""), "");
        assert_eq!(abbreviate(&"€".repeat(20)), "€".repeat(12));
        assert_eq!(abbreviate("aaaaaaaaaaa€€"), "aaaaaaaaaaa€");
    }
}
