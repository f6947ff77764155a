//! Sandbox tokens: the server keeps only their SHA-256 (in memory and in saved manifests), and
//! compares hashes in constant time, so the time an attach takes says nothing about how much
//! of a guess matched.

/// The SHA-256 of `token`, in lower-case hex (as manifests and leases store it).
pub fn hash(token: &str) -> String {
    crate::ids::sha256_hex(token.as_bytes())
}

/// Whether `given` is the token whose SHA-256 is `expected_sha256`. An empty token never
/// matches.
pub fn matches(expected_sha256: &str, given: &str) -> bool {
    !given.is_empty() && same(expected_sha256, &hash(given))
}

/// Constant-time comparison of two strings; empty ones never match.
pub fn same(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    let mut difference = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for (index, byte) in a.iter().enumerate() {
        difference |= byte ^ b.get(index).copied().unwrap_or(0);
    }
    difference == 0 && !a.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
        assert!(!same("abc", ""));
        assert!(!same("", ""));
    }

    #[test]
    fn hashes_are_checked_against_the_token() {
        let expected = hash("the-token");
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(matches(&expected, "the-token"));
        assert!(!matches(&expected, "the-tokeN"));
        assert!(!matches(&expected, ""));
        assert!(!matches(&hash(""), ""));
    }
}
