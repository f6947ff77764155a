//! Asking the instance that runs a sandbox to hand it over, through the shared store only
//! (instances cannot reach each other directly on Cloud Run).
//!
//! The instance that wants the sandbox writes `handoff-<generation>.json` next to the lease of
//! that generation, by exclusive create: of several instances asking at once, one request is
//! made and the others are told the sandbox is in use. The owner looks for the file of its own
//! generation (one small read per sandbox, `SANDBOX_HANDOFF_POLL_MS`); when it finds one it
//! checkpoints the sandbox and releases its lease, which the requester is waiting for, or
//! writes why it cannot into the request (`refused`). Requests of superseded generations are
//! removed with the superseded leases (`lease::acquire`).
//!
//! Everything here blocks on the filesystem; the server calls it from worker threads.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{now_unix_ms, random_hex, read_bounded, write_atomically};

const PREFIX: &str = "handoff-";
const SUFFIX: &str = ".json";
/// A real request is ~150 bytes.
const MAX_REQUEST_BYTES: u64 = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The instance that asks.
    pub requester: String,
    pub nonce: String,
    pub requested_unix_ms: u64,
    /// Set by the owner when it cannot hand the sandbox over (why, for the requester's client).
    #[serde(default)]
    pub refused: Option<String>,
}

/// The generation a request file is addressed to.
pub fn generation_of(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub fn path(base: &Path, generation: u64) -> PathBuf {
    base.join(format!("{PREFIX}{generation}{SUFFIX}"))
}

/// How asking went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// Our request is there.
    Made(Request),
    /// Another instance asked first (its name).
    Taken(String),
}

/// Ask for the sandbox whose lease has `generation`.
pub fn ask(base: &Path, generation: u64, requester: &str) -> Result<Asked, String> {
    let request = Request {
        requester: requester.to_string(),
        nonce: random_hex(8),
        requested_unix_ms: now_unix_ms(),
        refused: None,
    };
    let file = path(base, generation);
    let bytes = serde_json::to_vec(&request).map_err(|error| error.to_string())?;
    let describe = |error: std::io::Error| format!("cannot write {}: {error}", file.display());
    let mut handle = match OpenOptions::new().write(true).create_new(true).open(&file) {
        Ok(handle) => handle,
        Err(error) if error.kind() == ErrorKind::AlreadyExists => {
            return Ok(Asked::Taken(requester_of(&file)));
        }
        Err(error) => return Err(describe(error)),
    };
    match handle.write_all(&bytes).and_then(|()| handle.sync_all()) {
        Ok(()) => Ok(Asked::Made(request)),
        // Cloud Storage FUSE: another mount's request won the precondition.
        Err(error) if error.raw_os_error() == Some(libc::ESTALE) => {
            Ok(Asked::Taken(requester_of(&file)))
        }
        Err(error) => {
            drop(handle);
            let _ = fs::remove_file(&file);
            Err(describe(error))
        }
    }
}

fn requester_of(file: &Path) -> String {
    read(file)
        .map(|request| request.requester)
        .unwrap_or_else(|| "another instance".into())
}

fn read(file: &Path) -> Option<Request> {
    read_bounded(file, MAX_REQUEST_BYTES)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
}

/// The request addressed to `generation`, if there is one (answered or not).
pub fn pending(base: &Path, generation: u64) -> Option<Request> {
    read(&path(base, generation))
}

/// The owner cannot hand the sandbox over: say why in the request.
pub fn refuse(base: &Path, generation: u64, reason: &str) {
    let file = path(base, generation);
    if let Some(mut request) = read(&file) {
        request.refused = Some(reason.to_string());
        if let Ok(bytes) = serde_json::to_vec(&request) {
            let _ = write_atomically(&file, &bytes);
        }
    }
}

/// The requester gives up (timed out, answered, or its client left): its request goes, if it
/// is still its own.
pub fn withdraw(base: &Path, generation: u64, request: &Request) {
    let file = path(base, generation);
    if read(&file).is_some_and(|found| found.nonce == request.nonce) {
        let _ = fs::remove_file(file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_request_per_generation_answered_and_withdrawn() {
        let base = std::env::temp_dir().join(format!("crs-handoff-{}", random_hex(4)));
        fs::create_dir_all(&base).unwrap();
        assert_eq!(pending(&base, 3), None);
        let Asked::Made(request) = ask(&base, 3, "b").unwrap() else {
            panic!("not made")
        };
        assert_eq!(ask(&base, 3, "c").unwrap(), Asked::Taken("b".into()));
        assert!(matches!(ask(&base, 4, "c").unwrap(), Asked::Made(_)));
        assert_eq!(pending(&base, 3), Some(request.clone()));
        refuse(&base, 3, "open TCP connections");
        let answered = pending(&base, 3).unwrap();
        assert_eq!(answered.refused.as_deref(), Some("open TCP connections"));
        assert_eq!(answered.nonce, request.nonce);
        let other = Request {
            nonce: "someone else".into(),
            ..request.clone()
        };
        withdraw(&base, 3, &other);
        assert!(pending(&base, 3).is_some(), "not ours: kept");
        withdraw(&base, 3, &request);
        assert_eq!(pending(&base, 3), None);
        assert_eq!(generation_of("handoff-4.json"), Some(4));
        assert_eq!(generation_of("handoff-.json"), None);
        assert_eq!(generation_of("lease-4.json"), None);
        fs::remove_dir_all(&base).unwrap();
    }
}
