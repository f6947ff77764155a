//! The agent frame decoder, in both directions: what the server reads from an agent (code in
//! the sandbox can write there) and what the agent reads from the server.
//!
//! Input layout: `[n] [n piece sizes] [stream...]`; the stream is pushed in pieces of those
//! sizes (1 to 256 bytes, the rest at once) and decoded as server-to-agent frames and, on a
//! second decoder, as agent-to-server frames. Checked: no panic; bytes held stay within one
//! frame; every decoded frame encodes to bytes that decode to the same frame; and the frames
//! and the verdict do not depend on how the stream was split.

use crate::agent_protocol::{FrameDecoder, FromAgent, ProtocolError, ToAgent, MAX_FRAME_BYTES};

pub fn run(data: &[u8]) {
    let [count, rest @ ..] = data else {
        return;
    };
    let (sizes, stream) = rest.split_at(usize::from(*count % 32).min(rest.len()));
    let split = super::pieces(stream, sizes);
    check_direction(stream, &split, FrameDecoder::next_to_agent, encode_to);
    check_direction(stream, &split, FrameDecoder::next_from_agent, encode_from);
}

fn encode_to(frame: &ToAgent) -> Vec<u8> {
    let mut out = Vec::new();
    frame.encode(&mut out);
    out
}

fn encode_from(frame: &FromAgent) -> Vec<u8> {
    let mut out = Vec::new();
    frame.encode(&mut out);
    out
}

/// `FrameDecoder::next_to_agent` or `FrameDecoder::next_from_agent`.
type Next<F> = fn(&mut FrameDecoder) -> Result<Option<F>, ProtocolError>;

fn check_direction<F: PartialEq + std::fmt::Debug>(
    stream: &[u8],
    split: &[&[u8]],
    next: Next<F>,
    encode: fn(&F) -> Vec<u8>,
) {
    let (frames, failed) = decode(split, next);
    let (whole_frames, whole_failed) = decode(&[stream], next);
    assert_eq!(
        frames, whole_frames,
        "frames depend on how the stream was split"
    );
    assert_eq!(
        failed, whole_failed,
        "verdict depends on how the stream was split"
    );
    for frame in &frames {
        let (again, failed) = decode(&[&encode(frame)], next);
        assert!(!failed, "{frame:?} does not decode after encoding");
        assert_eq!(again.as_slice(), std::slice::from_ref(frame));
    }
}

/// All frames until the stream ends or an error; and whether it ended in an error.
fn decode<F>(pieces: &[&[u8]], next: Next<F>) -> (Vec<F>, bool) {
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    for piece in pieces {
        decoder.push(piece);
        loop {
            match next(&mut decoder) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(error) => {
                    assert!(!error.0.is_empty());
                    return (frames, true);
                }
            }
        }
        assert!(
            decoder.pending() < 4 + MAX_FRAME_BYTES,
            "{} bytes pending",
            decoder.pending()
        );
    }
    (frames, false)
}
