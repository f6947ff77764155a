//! The MCP protocol revisions this endpoint speaks, and how a version is chosen.
//!
//! Two eras share the Streamable HTTP transport: the handshake revisions (`initialize`, then an
//! `Mcp-Session-Id`), and the single-exchange revision 2026-07-28 (no handshake, no session:
//! every request carries its version in `params._meta` and the `MCP-Protocol-Version` header).

/// Handshake revisions, newest first: `initialize` answers with the client's version if it is
/// one of these, else with the newest (the client then decides whether it can go on).
pub const HANDSHAKE_VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];
/// Single-exchange revisions.
pub const MODERN_VERSIONS: [&str; 1] = ["2026-07-28"];

/// `params._meta` keys of the single-exchange revision.
pub const PROTOCOL_VERSION_META_KEY: &str = "io.modelcontextprotocol/protocolVersion";
pub const CLIENT_CAPABILITIES_META_KEY: &str = "io.modelcontextprotocol/clientCapabilities";
pub const SERVER_INFO_META_KEY: &str = "io.modelcontextprotocol/serverInfo";

/// The era a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    Handshake,
    SingleExchange,
}

/// The version `initialize` answers for a client that asked for `requested`.
pub fn negotiate(requested: Option<&str>) -> &'static str {
    HANDSHAKE_VERSIONS
        .iter()
        .find(|version| Some(**version) == requested)
        .copied()
        .unwrap_or(HANDSHAKE_VERSIONS[0])
}

pub fn is_handshake(version: &str) -> bool {
    HANDSHAKE_VERSIONS.contains(&version)
}

pub fn is_modern(version: &str) -> bool {
    MODERN_VERSIONS.contains(&version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initialize_keeps_a_known_version_and_offers_the_newest_otherwise() {
        assert_eq!(negotiate(Some("2025-03-26")), "2025-03-26");
        assert_eq!(negotiate(Some("2025-11-25")), "2025-11-25");
        assert_eq!(negotiate(Some("1999-01-01")), "2025-11-25");
        assert_eq!(negotiate(Some("2026-07-28")), "2025-11-25");
        assert_eq!(negotiate(None), "2025-11-25");
        assert!(is_modern("2026-07-28") && !is_modern("2025-11-25"));
        assert!(is_handshake("2024-11-05") && !is_handshake("2026-07-28"));
    }
}
