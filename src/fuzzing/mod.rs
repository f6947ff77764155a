//! Fuzz harnesses: one function per input surface, taking arbitrary bytes.
//!
//! Each harness drives a sans-IO parser or state machine the way the server does, and panics
//! only when an invariant breaks (or the code under test panics by itself), which is what
//! libFuzzer reports as a crash. They live in the library rather than in `fuzz/` so that the
//! unit tests can replay the committed corpus through the very same code on every
//! `cargo test`, without libFuzzer (the tests at the end of this file). Not part of the
//! server's API (`#[doc(hidden)]`).
//!
//! The libFuzzer targets in `fuzz/fuzz_targets/` are one-line wrappers around these; see
//! `scripts/fuzz.sh` and docs/security.md ("Fuzzing").

pub mod agent_frames;
pub mod http_request;
pub mod mcp;
pub mod port_requests;
pub mod query;
pub mod session;

/// Splits `data` into pieces whose sizes come from `sizes` (each byte is a size of 1 to 256;
/// when the sizes run out, the rest is one piece). Lets one input describe both the bytes
/// and how the socket delivered them.
fn pieces<'a>(data: &'a [u8], sizes: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    for &size in sizes {
        if rest.is_empty() {
            break;
        }
        let (piece, after) = rest.split_at((usize::from(size) + 1).min(rest.len()));
        out.push(piece);
        rest = after;
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Runs every committed input of `target` (`fuzz/corpus/<target>/`) through its harness:
    /// the seeds, and every input that once found a crash, stay regression tests on every
    /// `cargo test`, without libFuzzer.
    fn replay_corpus(target: &str, run: fn(&[u8])) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|error| panic!("cannot list {}: {error}", dir.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .collect();
        paths.sort();
        assert!(!paths.is_empty(), "{} is empty", dir.display());
        let failed: Vec<String> = paths
            .iter()
            .filter(|path| {
                let data = std::fs::read(path).expect("a readable corpus file");
                std::panic::catch_unwind(|| run(&data)).is_err()
            })
            .map(|path| path.display().to_string())
            .collect();
        assert!(failed.is_empty(), "inputs that fail: {failed:?}");
    }

    #[test]
    fn http_request_corpus_replays() {
        replay_corpus("http_request", http_request::run);
    }

    #[test]
    fn session_corpus_replays() {
        replay_corpus("session", session::run);
    }

    #[test]
    fn query_corpus_replays() {
        replay_corpus("query", query::run);
    }

    #[test]
    fn mcp_corpus_replays() {
        replay_corpus("mcp", mcp::run);
    }

    #[test]
    fn port_requests_corpus_replays() {
        replay_corpus("port_requests", port_requests::run);
    }

    #[test]
    fn agent_frames_corpus_replays() {
        replay_corpus("agent_frames", agent_frames::run);
    }

    #[test]
    fn pieces_cover_the_input_in_order() {
        let data: Vec<u8> = (0..=255).collect();
        for sizes in [&[][..], &[0, 0, 3], &[255, 255], &[9; 40]] {
            let split = pieces(&data, sizes);
            assert_eq!(split.concat(), data, "{sizes:?}");
            assert!(split.iter().all(|piece| !piece.is_empty()));
        }
        assert_eq!(pieces(&data, &[0, 1]).len(), 3);
        assert!(pieces(&[], &[1, 2]).is_empty());
    }
}
