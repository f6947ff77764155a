//! Output encodings for WebSocket clients: incremental UTF-8 and base64.

/// Decodes a byte stream as UTF-8 across chunk boundaries: a character split between two reads
/// is kept until its last byte arrives; invalid bytes become U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::with_capacity(self.pending.len());
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    out.push_str(valid);
                    rest = &[];
                    break;
                }
                Err(error) => {
                    let (valid, after) = rest.split_at(error.valid_up_to());
                    // `valid` is valid UTF-8 by construction of `valid_up_to`.
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match error.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                        None => {
                            // An incomplete character at the end: wait for the rest.
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }

    /// The stream ended: an incomplete character left over is invalid.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        String::from_utf8_lossy(&rest).into_owned()
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (index, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if index <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The value of each base64 digit, by byte; `INVALID` for bytes that are none.
const INVALID: u8 = 0xff;
const DIGIT_VALUES: [u8; 256] = {
    let mut values = [INVALID; 256];
    let mut index = 0;
    while index < ALPHABET.len() {
        values[ALPHABET[index] as usize] = index as u8;
        index += 1;
    }
    values
};

/// Standard base64 with padding; whitespace is ignored. A table lookup per digit: stdin of
/// protocol 2 arrives as megabytes of base64 (docs/protocol.md).
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let spaced;
    let digits: &[u8] = if bytes.iter().any(u8::is_ascii_whitespace) {
        spaced = bytes
            .iter()
            .copied()
            .filter(|byte| !byte.is_ascii_whitespace())
            .collect::<Vec<u8>>();
        &spaced
    } else {
        bytes
    };
    if !digits.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(digits.len() / 4 * 3);
    let quads = digits.chunks_exact(4);
    let last = quads.len().saturating_sub(1);
    for (position, quad) in quads.enumerate() {
        // Padding may only end the last quad: "xx==" or "xxx=".
        let padding = if position == last {
            match quad {
                [_, _, b'=', b'='] => 2,
                [_, _, _, b'='] => 1,
                _ => 0,
            }
        } else {
            0
        };
        let mut n = 0u32;
        for digit in &quad[..4 - padding] {
            let value = DIGIT_VALUES[usize::from(*digit)];
            if value == INVALID {
                return None;
            }
            n = (n << 6) | u32::from(value);
        }
        n <<= 6 * padding as u32;
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&decoded[..3 - padding]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_characters_are_never_broken() {
        let text = "héllo €𝄞";
        let bytes = text.as_bytes();
        for split in 0..bytes.len() {
            let mut stream = Utf8Stream::default();
            let mut out = stream.push(&bytes[..split]);
            out += &stream.push(&bytes[split..]);
            out += &stream.finish();
            assert_eq!(out, text, "split at {split}");
        }
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut stream = Utf8Stream::default();
        assert_eq!(stream.push(b"a\xffb"), "a\u{FFFD}b");
        assert_eq!(stream.push(b"\xe2\x82"), "");
        assert_eq!(stream.finish(), "\u{FFFD}");
    }

    #[test]
    fn base64_round_trips() {
        for length in 0..20 {
            let bytes: Vec<u8> = (0..length).map(|i| (i * 37 + 250) as u8).collect();
            let encoded = base64_encode(&bytes);
            assert_eq!(base64_decode(&encoded), Some(bytes));
        }
        assert_eq!(base64_encode(b"hi!"), "aGkh");
        assert_eq!(base64_encode(b"h"), "aA==");
        assert_eq!(base64_decode("a"), None);
        assert_eq!(base64_decode("a=bc"), None);
        assert_eq!(base64_decode("aA==aA=="), None, "padding only at the end");
        assert_eq!(base64_decode("a==="), None);
        assert_eq!(base64_decode("aG\nkh"), Some(b"hi!".to_vec()));
        assert_eq!(base64_decode("aGk-"), None);
        assert_eq!(base64_decode(""), Some(Vec::new()));
    }
}
