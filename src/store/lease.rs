//! At most one live copy of a checkpointable sandbox: a lease file in its directory.
//!
//! `lease.json` names the instance that runs the sandbox and when that claim expires; the owner
//! renews it while the sandbox runs. To take a lease, an instance reads it (a fresh lease of
//! another instance means `InUse`), writes its own claim with a unique nonce by a single-file
//! rename, waits a settle delay, and reads it back: only the instance whose nonce survived owns
//! it. Two instances racing both rename; the later rename wins and the other sees the winner's
//! nonce when it reads back. This relies on the storage being read-after-write consistent
//! (local disks and Cloud Storage are) and on each instance completing its read-then-rename in
//! well under the settle delay, which `acquire` checks and otherwise gives up.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{now_unix_ms, random_hex, write_atomically};

pub const LEASE: &str = "lease.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub owner: String,
    pub nonce: String,
    pub expires_unix_ms: u64,
    /// The token's SHA-256, so that an attach to a sandbox that was never checkpointed can
    /// still check the token before saying it is in use elsewhere.
    #[serde(default)]
    pub token_sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseError {
    /// Another instance holds the lease: its name (or why we could not tell).
    InUse(String),
    /// The lease could not be written or vanished: what happened, with the path.
    Io(String),
}

impl std::fmt::Display for LeaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeaseError::InUse(owner) => write!(f, "the sandbox is in use by {owner}"),
            LeaseError::Io(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for LeaseError {}

/// Largest lease file read (a real one is ~200 bytes); a larger one is treated as corrupted.
const MAX_LEASE_BYTES: u64 = 64 * 1024;

fn read(base: &Path) -> Option<Lease> {
    super::read_bounded(&base.join(LEASE), MAX_LEASE_BYTES)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
}

fn write(base: &Path, lease: &Lease) -> Result<(), LeaseError> {
    let bytes = serde_json::to_vec(lease).map_err(|error| LeaseError::Io(error.to_string()))?;
    write_atomically(&base.join(LEASE), &bytes).map_err(|error| {
        LeaseError::Io(format!(
            "cannot write the lease in {}: {error}",
            base.display()
        ))
    })
}

/// Take the lease for `owner` (blocks for `settle`).
pub fn acquire(
    base: &Path,
    owner: &str,
    token_sha256: Option<String>,
    ttl: Duration,
    settle: Duration,
) -> Result<Lease, LeaseError> {
    let started = Instant::now();
    if let Some(current) = read(base) {
        if current.owner != owner && current.expires_unix_ms > now_unix_ms() {
            return Err(LeaseError::InUse(current.owner));
        }
    }
    let lease = Lease {
        owner: owner.to_string(),
        nonce: random_hex(8),
        expires_unix_ms: now_unix_ms() + ttl.as_millis() as u64,
        token_sha256,
    };
    write(base, &lease)?;
    if started.elapsed() > settle / 4 {
        // Too slow to be sure another instance's claim did not interleave: back off, without
        // leaving our claim to block everyone else until it expires.
        release(base, &lease);
        return Err(LeaseError::InUse(
            "unknown (the storage was too slow to decide; retry)".into(),
        ));
    }
    std::thread::sleep(settle);
    match read(base) {
        Some(current) if current.nonce == lease.nonce => Ok(lease),
        Some(current) => Err(LeaseError::InUse(current.owner)),
        None => Err(LeaseError::Io(
            "the lease vanished while it was being taken".into(),
        )),
    }
}

/// Claim the lease of a sandbox that was just created: nobody else knows its id yet, so there
/// is no race to settle.
pub fn claim_new(
    base: &Path,
    owner: &str,
    token_sha256: &str,
    ttl: Duration,
) -> Result<Lease, LeaseError> {
    let lease = Lease {
        owner: owner.to_string(),
        nonce: random_hex(8),
        expires_unix_ms: now_unix_ms() + ttl.as_millis() as u64,
        token_sha256: Some(token_sha256.to_string()),
    };
    write(base, &lease)?;
    Ok(lease)
}

/// Extend our lease; fails if someone else holds it now.
pub fn renew(base: &Path, lease: &mut Lease, ttl: Duration) -> Result<(), LeaseError> {
    match read(base) {
        Some(current) if current.nonce == lease.nonce => {}
        Some(current) => return Err(LeaseError::InUse(current.owner)),
        None => {}
    }
    lease.expires_unix_ms = now_unix_ms() + ttl.as_millis() as u64;
    write(base, lease)
}

/// The current lease of `base`, if any (expired or not).
pub fn current(base: &Path) -> Option<Lease> {
    read(base)
}

/// Give the lease up (only if it is still ours).
pub fn release(base: &Path, lease: &Lease) {
    if read(base).is_some_and(|current| current.nonce == lease.nonce) {
        let _ = std::fs::remove_file(base.join(LEASE));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_owner_at_a_time_and_expiry() {
        let base = std::env::temp_dir().join(format!("crs-lease-{}", random_hex(4)));
        std::fs::create_dir_all(&base).unwrap();
        let settle = Duration::from_millis(200);
        let mut a = acquire(&base, "a", None, Duration::from_secs(30), settle).unwrap();
        assert_eq!(
            acquire(&base, "b", None, Duration::from_secs(30), settle),
            Err(LeaseError::InUse("a".into()))
        );
        renew(&base, &mut a, Duration::from_millis(1)).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let b = acquire(&base, "b", None, Duration::from_secs(30), settle).unwrap();
        let lost = renew(&base, &mut a, Duration::from_secs(30)).expect_err("a lost it");
        assert_eq!(lost.to_string(), "the sandbox is in use by b");
        release(&base, &a);
        assert!(
            base.join(LEASE).exists(),
            "releasing someone else's lease does nothing"
        );
        release(&base, &b);
        assert!(!base.join(LEASE).exists());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn racing_acquirers_have_exactly_one_winner() {
        let base = std::env::temp_dir().join(format!("crs-lease-race-{}", random_hex(4)));
        std::fs::create_dir_all(&base).unwrap();
        let handles: Vec<_> = (0..8)
            .map(|index| {
                let base = base.clone();
                std::thread::spawn(move || {
                    acquire(
                        &base,
                        &format!("instance-{index}"),
                        None,
                        Duration::from_secs(30),
                        Duration::from_millis(100),
                    )
                    .is_ok()
                })
            })
            .collect();
        let winners = handles
            .into_iter()
            .filter_map(|handle| handle.join().ok())
            .filter(|won| *won)
            .count();
        assert_eq!(winners, 1);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
