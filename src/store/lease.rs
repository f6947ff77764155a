//! At most one live copy of a checkpointable sandbox: numbered lease files in its directory.
//!
//! A lease says which instance runs the sandbox and until when; the owner renews it while the
//! sandbox runs. Leases are files `lease-<generation>.json`, and the one with the highest
//! generation is the current one. Taking a lease over (none yet, expired, or released) is an
//! *exclusive create* of the next generation: of several instances racing for generation
//! `g + 1`, the storage lets exactly one create it, whatever the timing, so nobody waits for
//! anyone to settle. What gives that guarantee on each storage (docs/checkpoint.md):
//!
//! - a local disk or NFS (v3 and later): `O_CREAT | O_EXCL`, decided by the server at open;
//! - Cloud Storage FUSE >= 2.8: the object is created with the precondition "does not exist",
//!   so a mount that loses the race gets `EEXIST` at open or `ESTALE` when it writes or syncs.
//!
//! For storage that gives neither, `SANDBOX_LEASE_SETTLE_MS` (off by default) adds the old
//! settle: wait, then read the claim back; only the claim that survived counts.
//!
//! Only the owner rewrites its own file (renewal, release; a single-file rename). After a
//! takeover the new owner removes the superseded files; an instance that read an old state and
//! re-creates a removed generation sees a higher one when it checks, and withdraws. A file that
//! does not parse is a claim being written (`O_EXCL` creates it empty first) while it is recent,
//! and garbage once older than the lease TTL.
//!
//! `lease.json`, the single lease file of servers before generations, is read as generation 0
//! (so a fresh one still keeps this instance out) and never written.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::{now_unix_ms, random_hex, read_bounded, write_atomically};

/// The lease file of servers before generations (read, never written).
pub const LEGACY_LEASE: &str = "lease.json";
const PREFIX: &str = "lease-";
const SUFFIX: &str = ".json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub owner: String,
    pub nonce: String,
    /// Which `lease-<generation>.json` this is (0: the legacy `lease.json`).
    #[serde(default)]
    pub generation: u64,
    /// 0 once released.
    pub expires_unix_ms: u64,
    /// The token's SHA-256, so that an attach to a sandbox that was never checkpointed can
    /// still check the token before saying it is in use elsewhere.
    #[serde(default)]
    pub token_sha256: Option<String>,
    /// Created with `enable_sandbox_handoff`: another instance may ask the owner to hand the
    /// sandbox over (`store::handoff`).
    #[serde(default)]
    pub handoff: bool,
}

impl Lease {
    fn is_fresh(&self) -> bool {
        self.expires_unix_ms > now_unix_ms()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseError {
    /// Another instance holds the lease: its name (or why we could not tell).
    InUse(String),
    /// The lease could not be read or written, or vanished: what happened, with the path.
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

/// Largest lease file read (a real one is ~250 bytes); a larger one is treated as corrupted.
const MAX_LEASE_BYTES: u64 = 64 * 1024;
/// Entries of a sandbox directory looked at when searching its leases (a real one has a
/// handful): a directory filled by someone else costs a bounded read.
const MAX_DIR_ENTRIES: usize = 4096;

/// What the highest lease file of a directory holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Nothing,
    Lease(Lease),
    /// It does not parse: a claim being written if `recent` (younger than the TTL), else
    /// garbage that blocks nobody.
    Unreadable {
        generation: u64,
        recent: bool,
    },
}

impl Found {
    /// The generation a takeover creates next, or who holds the lease now.
    fn next_generation(&self, owner: &str) -> Result<u64, LeaseError> {
        match self {
            Found::Nothing => Ok(1),
            Found::Lease(current) if current.owner != owner && current.is_fresh() => {
                Err(LeaseError::InUse(current.owner.clone()))
            }
            Found::Lease(current) => Ok(current.generation.saturating_add(1)),
            Found::Unreadable { recent: true, .. } => Err(LeaseError::InUse(
                "unknown (another instance is writing its claim; retry)".into(),
            )),
            Found::Unreadable { generation, .. } => Ok(generation.saturating_add(1)),
        }
    }

    /// Whether this is exactly `lease` (same generation and nonce).
    fn is(&self, lease: &Lease) -> bool {
        matches!(self, Found::Lease(current)
            if current.generation == lease.generation && current.nonce == lease.nonce)
    }

    fn holder(&self) -> String {
        match self {
            Found::Lease(current) => current.owner.clone(),
            _ => "unknown".into(),
        }
    }
}

/// The generation of a lease file name: `lease-<n>.json` is n, the legacy `lease.json` 0.
pub fn generation_of(name: &str) -> Option<u64> {
    if name == LEGACY_LEASE {
        return Some(0);
    }
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn file_name(generation: u64) -> String {
    if generation == 0 {
        LEGACY_LEASE.to_string()
    } else {
        format!("{PREFIX}{generation}{SUFFIX}")
    }
}

pub fn path(base: &Path, generation: u64) -> PathBuf {
    base.join(file_name(generation))
}

/// The generations of the lease files in `base`, unsorted.
fn generations(base: &Path) -> std::io::Result<Vec<u64>> {
    let entries = match fs::read_dir(base) {
        Ok(entries) => entries,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    Ok(entries
        .take(MAX_DIR_ENTRIES)
        .flatten()
        .filter_map(|entry| generation_of(&entry.file_name().to_string_lossy()))
        .collect())
}

/// The current (highest) lease of `base`. `ttl` tells a claim being written from garbage.
pub fn find(base: &Path, ttl: Duration) -> Result<Found, LeaseError> {
    let describe = |error: std::io::Error| {
        LeaseError::Io(format!(
            "cannot read the leases in {}: {error}",
            base.display()
        ))
    };
    // A file can vanish between the listing and the read (a new owner removes superseded
    // ones): list again, a few times at most.
    for _ in 0..3 {
        let Some(generation) = generations(base).map_err(describe)?.into_iter().max() else {
            return Ok(Found::Nothing);
        };
        let file = path(base, generation);
        match read_bounded(&file, MAX_LEASE_BYTES) {
            Ok(bytes) => {
                return Ok(match serde_json::from_slice::<Lease>(&bytes) {
                    Ok(mut lease) => {
                        lease.generation = generation;
                        Found::Lease(lease)
                    }
                    Err(_) => Found::Unreadable {
                        generation,
                        recent: modified_within(&file, ttl),
                    },
                })
            }
            Err(error) if error.kind() == ErrorKind::NotFound => continue,
            Err(error) if error.kind() == ErrorKind::InvalidData => {
                return Ok(Found::Unreadable {
                    generation,
                    recent: false,
                })
            }
            Err(error) => return Err(describe(error)),
        }
    }
    Err(LeaseError::Io(format!(
        "the leases in {} keep changing; retry",
        base.display()
    )))
}

fn modified_within(file: &Path, ttl: Duration) -> bool {
    fs::metadata(file)
        .and_then(|metadata| metadata.modified())
        .ok()
        .and_then(|modified| SystemTime::now().duration_since(modified).ok())
        .is_none_or(|age| age < ttl)
}

fn to_bytes(lease: &Lease) -> Result<Vec<u8>, LeaseError> {
    serde_json::to_vec(lease).map_err(|error| LeaseError::Io(error.to_string()))
}

/// How creating a file exclusively ended.
enum Created {
    Yes,
    /// Someone else's file is there (or won the storage's precondition).
    Lost,
}

/// Create `file` with `bytes` only if it does not exist; the storage decides between racing
/// creators (see the module's documentation).
fn create_exclusive(file: &Path, bytes: &[u8]) -> std::io::Result<Created> {
    let mut handle = match OpenOptions::new().write(true).create_new(true).open(file) {
        Ok(handle) => handle,
        Err(error) if error.kind() == ErrorKind::AlreadyExists => return Ok(Created::Lost),
        Err(error) => return Err(error),
    };
    match write_and_sync(&mut handle, bytes) {
        Ok(()) => Ok(Created::Yes),
        // Cloud Storage FUSE: another mount created the object first. It is theirs: do not
        // remove it.
        Err(error) if error.raw_os_error() == Some(libc::ESTALE) => Ok(Created::Lost),
        Err(error) => {
            // Ours (we created it), but incomplete: remove it rather than block everyone with
            // an unreadable claim until it is old enough to ignore.
            drop(handle);
            let _ = fs::remove_file(file);
            Err(error)
        }
    }
}

fn write_and_sync(handle: &mut File, bytes: &[u8]) -> std::io::Result<()> {
    handle.write_all(bytes)?;
    handle.sync_all()
}

/// Take the lease of `base` for `owner`. `settle`: zero (the default) trusts the storage's
/// exclusive create; otherwise the claim is read back after that long (opt-in, for storage
/// without one).
pub fn acquire(
    base: &Path,
    owner: &str,
    token_sha256: Option<String>,
    handoff: bool,
    ttl: Duration,
    settle: Duration,
) -> Result<Lease, LeaseError> {
    let started = Instant::now();
    let generation = find(base, ttl)?.next_generation(owner)?;
    let lease = Lease {
        owner: owner.to_string(),
        nonce: random_hex(8),
        generation,
        expires_unix_ms: now_unix_ms() + ttl.as_millis() as u64,
        token_sha256,
        handoff,
    };
    let file = path(base, generation);
    match create_exclusive(&file, &to_bytes(&lease)?) {
        Ok(Created::Yes) => {}
        Ok(Created::Lost) => return Err(LeaseError::InUse(find(base, ttl)?.holder())),
        Err(error) => {
            return Err(LeaseError::Io(format!(
                "cannot write the lease {}: {error}",
                file.display()
            )))
        }
    }
    if !settle.is_zero() {
        if started.elapsed() > settle / 4 {
            // Too slow to be sure another instance's claim did not interleave: back off,
            // without leaving our claim to block everyone else until it expires.
            release(base, &lease, ttl);
            return Err(LeaseError::InUse(
                "unknown (the storage was too slow to decide; retry)".into(),
            ));
        }
        std::thread::sleep(settle);
    }
    // Ours must be the highest: an instance that read an old state re-creates a generation
    // that was already superseded and removed, and must not run the sandbox.
    let now = find(base, ttl)?;
    if !now.is(&lease) {
        remove_if_ours(&file, &lease);
        return Err(LeaseError::InUse(now.holder()));
    }
    remove_superseded(base, generation);
    Ok(lease)
}

/// Claim the lease of a sandbox that was just created: nobody else knows its id yet.
pub fn claim_new(
    base: &Path,
    owner: &str,
    token_sha256: &str,
    handoff: bool,
    ttl: Duration,
) -> Result<Lease, LeaseError> {
    let lease = Lease {
        owner: owner.to_string(),
        nonce: random_hex(8),
        generation: 1,
        expires_unix_ms: now_unix_ms() + ttl.as_millis() as u64,
        token_sha256: Some(token_sha256.to_string()),
        handoff,
    };
    let file = path(base, 1);
    match create_exclusive(&file, &to_bytes(&lease)?) {
        Ok(Created::Yes) => Ok(lease),
        Ok(Created::Lost) => Err(LeaseError::InUse(find(base, ttl)?.holder())),
        Err(error) => Err(LeaseError::Io(format!(
            "cannot write the lease {}: {error}",
            file.display()
        ))),
    }
}

/// Extend our lease; fails if it is not the current one any more (someone took it over after
/// it expired, or the sandbox's directory was removed).
pub fn renew(base: &Path, lease: &mut Lease, ttl: Duration) -> Result<(), LeaseError> {
    match find(base, ttl)? {
        current if current.is(lease) => {}
        Found::Lease(current) => return Err(LeaseError::InUse(current.owner)),
        _ => {
            return Err(LeaseError::Io(format!(
                "the lease in {} is gone",
                base.display()
            )))
        }
    }
    lease.expires_unix_ms = now_unix_ms() + ttl.as_millis() as u64;
    rewrite(base, lease)
}

/// Only the owner rewrites its file: a single-file replace (temporary file and rename).
fn rewrite(base: &Path, lease: &Lease) -> Result<(), LeaseError> {
    let file = path(base, lease.generation);
    write_atomically(&file, &to_bytes(lease)?).map_err(|error| {
        LeaseError::Io(format!(
            "cannot write the lease {}: {error}",
            file.display()
        ))
    })
}

/// The current lease of `base`, if one can be read (expired or not).
pub fn current(base: &Path, ttl: Duration) -> Option<Lease> {
    match find(base, ttl) {
        Ok(Found::Lease(lease)) => Some(lease),
        _ => None,
    }
}

/// Give the lease up (only if it is still ours): the file stays, expired, so that the next
/// owner takes the next generation.
pub fn release(base: &Path, lease: &Lease, ttl: Duration) {
    if find(base, ttl).is_ok_and(|current| current.is(lease)) {
        let released = Lease {
            expires_unix_ms: 0,
            ..lease.clone()
        };
        let _ = rewrite(base, &released);
    }
}

fn remove_if_ours(file: &Path, lease: &Lease) {
    let ours = read_bounded(file, MAX_LEASE_BYTES)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Lease>(&bytes).ok())
        .is_some_and(|found| found.nonce == lease.nonce);
    if ours {
        let _ = fs::remove_file(file);
    }
}

/// Remove the lease files below `generation` and the handoff requests addressed to them.
fn remove_superseded(base: &Path, generation: u64) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.take(MAX_DIR_ENTRIES).flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let old = generation_of(&name).or_else(|| super::handoff::generation_of(&name));
        if old.is_some_and(|old| old < generation) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    const TTL: Duration = Duration::from_secs(30);

    fn temp_base(name: &str) -> PathBuf {
        let base = std::env::temp_dir().join(format!("crs-lease-{name}-{}", random_hex(4)));
        fs::create_dir_all(&base).unwrap();
        base
    }

    fn take(base: &Path, owner: &str) -> Result<Lease, LeaseError> {
        acquire(base, owner, None, false, TTL, Duration::ZERO)
    }

    fn names(base: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(base)
            .unwrap()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn one_owner_at_a_time_and_expiry() {
        let base = temp_base("owner");
        let mut a = take(&base, "a").unwrap();
        assert_eq!(a.generation, 1);
        assert_eq!(take(&base, "b"), Err(LeaseError::InUse("a".into())));
        renew(&base, &mut a, Duration::from_millis(1)).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let b = take(&base, "b").unwrap();
        assert_eq!(b.generation, 2);
        assert_eq!(names(&base), ["lease-2.json"], "the superseded lease goes");
        let lost = renew(&base, &mut a, TTL).expect_err("a lost it");
        assert_eq!(lost.to_string(), "the sandbox is in use by b");
        release(&base, &a, TTL);
        assert_eq!(
            current(&base, TTL),
            Some(b.clone()),
            "a's release does nothing"
        );
        release(&base, &b, TTL);
        let released = current(&base, TTL).unwrap();
        assert_eq!(
            released.expires_unix_ms, 0,
            "released, kept for its generation"
        );
        let c = take(&base, "c").unwrap();
        assert_eq!(c.generation, 3);
        fs::remove_dir_all(&base).unwrap();
    }

    /// Whatever the interleaving, the storage's exclusive create lets one claimant of a
    /// generation through: no sleeps, no timing assumptions.
    #[test]
    fn racing_acquirers_have_exactly_one_winner() {
        for round in 0..20 {
            let base = temp_base("race");
            if round % 2 == 1 {
                // An expired lease to take over, rather than none.
                let mut old = take(&base, "old").unwrap();
                renew(&base, &mut old, Duration::ZERO).unwrap();
            }
            let start = Arc::new(Barrier::new(8));
            let handles: Vec<_> = (0..8)
                .map(|index| {
                    let (base, start) = (base.clone(), Arc::clone(&start));
                    std::thread::spawn(move || {
                        start.wait();
                        take(&base, &format!("instance-{index}"))
                    })
                })
                .collect();
            let results: Vec<_> = handles
                .into_iter()
                .map(|handle| handle.join().unwrap())
                .collect();
            let winners: Vec<&Lease> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
            assert_eq!(winners.len(), 1, "round {round}: {results:?}");
            assert_eq!(current(&base, TTL).as_ref(), Some(winners[0]));
            for result in &results {
                if let Err(error) = result {
                    assert!(matches!(error, LeaseError::InUse(_)), "{error:?}");
                }
            }
            fs::remove_dir_all(&base).unwrap();
        }
    }

    /// An instance that read the lease long ago and claims a generation that was superseded
    /// (and removed) meanwhile must see the newer one and withdraw.
    #[test]
    fn a_claim_of_a_superseded_generation_withdraws() {
        let base = temp_base("stale");
        let mut first = take(&base, "a").unwrap();
        renew(&base, &mut first, Duration::ZERO).unwrap();
        let second = take(&base, "b").unwrap();
        assert_eq!(second.generation, 2);
        // "c" read generation 0 (nothing) and creates generation 1 now that it is gone.
        let stale = Lease {
            owner: "c".into(),
            nonce: "c-nonce".into(),
            generation: 1,
            expires_unix_ms: now_unix_ms() + 30_000,
            token_sha256: None,
            handoff: false,
        };
        fs::write(path(&base, 1), serde_json::to_vec(&stale).unwrap()).unwrap();
        assert!(find(&base, TTL).unwrap().is(&second), "the highest wins");
        remove_if_ours(&path(&base, 1), &stale);
        assert_eq!(names(&base), ["lease-2.json"]);
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn unreadable_claims_block_while_recent_and_the_legacy_lease_counts() {
        let base = temp_base("unreadable");
        // O_EXCL created it, its content is not written yet.
        fs::write(path(&base, 4), b"").unwrap();
        let error = take(&base, "a").unwrap_err();
        assert!(error.to_string().contains("writing its claim"), "{error}");
        // Garbage older than the TTL blocks nobody.
        let lease = acquire(&base, "a", None, false, Duration::ZERO, Duration::ZERO).unwrap();
        assert_eq!(lease.generation, 5);
        fs::remove_dir_all(&base).unwrap();

        let base = temp_base("legacy");
        let legacy = serde_json::json!({"owner": "old-server", "nonce": "n",
            "expires_unix_ms": now_unix_ms() + 60_000});
        fs::write(base.join(LEGACY_LEASE), legacy.to_string()).unwrap();
        assert_eq!(
            take(&base, "a"),
            Err(LeaseError::InUse("old-server".into()))
        );
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn the_opt_in_settle_reads_the_claim_back() {
        let base = temp_base("settle");
        let lease = acquire(&base, "a", None, true, TTL, Duration::from_millis(400)).unwrap();
        assert!(lease.handoff);
        assert_eq!(current(&base, TTL), Some(lease));
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn names_and_generations() {
        assert_eq!(generation_of("lease-12.json"), Some(12));
        assert_eq!(generation_of("lease.json"), Some(0));
        for name in [
            "lease-.json",
            "lease-1a.json",
            "lease-1.json.tmp-ab",
            "lease-+1.json",
        ] {
            assert_eq!(generation_of(name), None, "{name}");
        }
        assert_eq!(file_name(3), "lease-3.json");
    }
}
