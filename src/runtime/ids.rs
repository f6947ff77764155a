//! Random identifiers: sandbox ids (also the runsc container ids) and access tokens.

use std::fmt;
use std::io::Read;

/// Fill `buffer` from the kernel's CSPRNG.
pub fn random_bytes(buffer: &mut [u8]) -> std::io::Result<()> {
    std::fs::File::open("/dev/urandom")?.read_exact(buffer)
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
}
