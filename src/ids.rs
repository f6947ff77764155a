//! Identifiers and names that several layers share, so that none has to reach into another
//! for them: random bytes (tokens, nonces), sandbox ids (also the runsc container ids), snapshot
//! names, and the SHA-256 digests that tokens and images are kept as.

use std::fmt;
use std::io::Read;

use sha2::{Digest, Sha256};

/// Fill `buffer` from the kernel's CSPRNG.
pub fn random_bytes(buffer: &mut [u8]) -> std::io::Result<()> {
    std::fs::File::open("/dev/urandom")?.read_exact(buffer)
}

/// `bytes` random bytes as lowercase hex, for names that must differ (temporary files, image
/// directories, lease nonces). Falls back to the time only if /dev/urandom is unreadable.
pub fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    if random_bytes(&mut buffer).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or(0);
        return format!("{nanos:x}");
    }
    hex(&buffer)
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The SHA-256 of `bytes` as 64 lowercase hex digits (how tokens are kept and compared).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// A snapshot name that could be made into a path or is not what a user can type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotNameError {
    pub name: String,
}

impl fmt::Display for SnapshotNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid snapshot name {:?}: use 1 to 64 characters from A-Z a-z 0-9 . _ - , not starting with a dot",
            self.name
        )
    }
}

impl std::error::Error for SnapshotNameError {}

/// Snapshot names: what a user can type, nothing a path can be made of.
pub fn validate_snapshot_name(name: &str) -> Result<(), SnapshotNameError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    if name.is_empty() || name.len() > 64 || !name.chars().all(allowed) || name.starts_with('.') {
        return Err(SnapshotNameError {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// 128 random bits, shown as 32 lowercase hex digits. Fixed length on purpose: runsc mistakes a
/// container id that is a prefix of another ("c1", "c10") for an ambiguous reference.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SandboxId([u8; 16]);

impl SandboxId {
    pub fn random() -> std::io::Result<Self> {
        let mut bytes = [0u8; 16];
        random_bytes(&mut bytes)?;
        Ok(SandboxId(bytes))
    }

    /// Parse the 32-hex-digit form; anything else is not an id of ours.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
        }
        Some(SandboxId(bytes))
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl fmt::Debug for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SandboxId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_fixed_length_hex_and_round_trip() {
        let id = SandboxId::random().unwrap();
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(SandboxId::parse(&text), Some(id));
        assert_ne!(SandboxId::random().unwrap(), id);
        assert_eq!(SandboxId::parse("xyz"), None);
        assert_eq!(SandboxId::parse(&"g".repeat(32)), None);
        assert_eq!(SandboxId::parse("é".repeat(16).as_str()), None);
    }

    #[test]
    fn snapshot_names_are_plain_and_errors_quote_them() {
        for good in ["my-snapshot", "a", "v1.2_x", &"x".repeat(64)] {
            assert_eq!(validate_snapshot_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "../x",
            "a b",
            "é",
            &"x".repeat(65),
            "a\0b",
        ] {
            let error = validate_snapshot_name(bad).expect_err(bad);
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("invalid snapshot name {bad:?}")),
                "{error}"
            );
        }
    }

    #[test]
    fn digests_and_random_names_are_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let name = random_hex(4);
        assert_eq!(name.len(), 8);
        assert!(name.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(random_hex(4), name);
    }
}
