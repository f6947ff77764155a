//! What can go wrong with the shared store, worded for the client that asked (a restore, a
//! save, a create from a snapshot), with the path or value at fault and the cause kept.

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::abbreviate;

#[derive(Debug)]
pub enum StoreError {
    /// Hashing the image `runsc checkpoint` wrote, or publishing its manifest, failed.
    Save {
        image_dir: PathBuf,
        source: io::Error,
    },
    /// `runsc checkpoint` left the image directory empty.
    NoImageFiles { image_dir: PathBuf },
    /// The image directory has no name (a path like `/`): nothing of ours.
    BadImageDir { image_dir: PathBuf },
    /// The manifest of `base` is not one we can trust.
    CorruptedManifest {
        base: PathBuf,
        problem: ManifestProblem,
    },
    /// A file of the store could not be read (the mount failed, permissions).
    Read { path: PathBuf, source: io::Error },
    /// A file the manifest lists is missing or unreadable.
    IncompleteImage { path: PathBuf, source: io::Error },
    /// A file of the image differs from what the manifest says.
    CorruptedImage {
        file: String,
        size: u64,
        sha256: String,
        expected_size: u64,
        expected_sha256: String,
    },
}

/// Why a manifest is refused.
#[derive(Debug)]
pub enum ManifestProblem {
    /// Larger than any manifest we write.
    TooLarge(io::Error),
    Json(serde_json::Error),
    /// Its image directory is not a plain `image-...` name inside the sandbox's directory.
    ImageDir(String),
    /// One of its file names is not a plain name.
    FileName(String),
}

impl fmt::Display for ManifestProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManifestProblem::TooLarge(error) => write!(f, "{error}"),
            ManifestProblem::Json(error) => write!(f, "{error}"),
            ManifestProblem::ImageDir(name) => {
                write!(f, "image_dir {name:?} is not an image directory")
            }
            ManifestProblem::FileName(name) => write!(f, "file name {name:?} is not a plain name"),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Save { image_dir, source } => {
                write!(f, "cannot save the image in {}: {source}", image_dir.display())
            }
            StoreError::NoImageFiles { image_dir } => {
                write!(f, "runsc wrote no image files in {}", image_dir.display())
            }
            StoreError::BadImageDir { image_dir } => {
                write!(f, "bad image directory {}", image_dir.display())
            }
            StoreError::CorruptedManifest { base, problem } => write!(
                f,
                "the saved manifest in {} is corrupted: {problem}",
                base.display()
            ),
            StoreError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            StoreError::IncompleteImage { path, source } => write!(
                f,
                "the saved image is incomplete: {}: {source}",
                path.display()
            ),
            StoreError::CorruptedImage {
                file,
                size,
                sha256,
                expected_size,
                expected_sha256,
            } => write!(
                f,
                "the saved image is corrupted: {file} has {size} bytes (sha256 {}), expected {expected_size} bytes (sha256 {})",
                abbreviate(sha256),
                abbreviate(expected_sha256)
            ),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Save { source, .. }
            | StoreError::Read { source, .. }
            | StoreError::IncompleteImage { source, .. } => Some(source),
            StoreError::CorruptedManifest {
                problem: ManifestProblem::TooLarge(source),
                ..
            } => Some(source),
            StoreError::CorruptedManifest {
                problem: ManifestProblem::Json(source),
                ..
            } => Some(source),
            _ => None,
        }
    }
}
