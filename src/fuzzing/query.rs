//! The query-string and path decoders, on any request-target text.
//!
//! Input: the raw text after `?` (invalid UTF-8 is replaced first: httparse only hands the
//! server valid UTF-8 targets). Checked: no panic; decoding is the inverse of encoding
//! (encoding the decoded pairs and parsing again gives the same pairs); `query_param` finds the
//! first pair of a name; a path without `%` decodes to itself, and a decoded path survives a
//! second encode/decode unchanged.

use crate::http::query::{parse_query, percent_decode_path, query_param};

pub fn run(data: &[u8]) {
    let raw = String::from_utf8_lossy(data);
    let pairs = parse_query(&raw);
    assert!(pairs.len() <= raw.split('&').count());

    let encoded: Vec<String> = pairs
        .iter()
        .map(|(key, value)| format!("{}={}", form_encode(key), form_encode(value)))
        .collect();
    assert_eq!(
        parse_query(&encoded.join("&")),
        pairs,
        "decode(encode(pairs)) differs"
    );

    if let Some((key, value)) = pairs.first() {
        assert_eq!(query_param(&pairs, key), Some(value.as_str()));
    }

    match percent_decode_path(&raw) {
        Some(path) => {
            if !raw.contains('%') {
                assert_eq!(path, raw, "a path without escapes must decode to itself");
            }
            assert_eq!(percent_decode_path(&path_encode(&path)), Some(path));
        }
        None => assert!(raw.contains('%'), "only an escape can make a path invalid"),
    }
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~".contains(&byte)
}

/// `application/x-www-form-urlencoded`, as a browser would write it.
fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        match byte {
            b' ' => out.push('+'),
            _ if is_unreserved(byte) => out.push(char::from(byte)),
            _ => push_escape(&mut out, byte),
        }
    }
    out
}

fn path_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if is_unreserved(byte) || byte == b'/' {
            out.push(char::from(byte));
        } else {
            push_escape(&mut out, byte);
        }
    }
    out
}

fn push_escape(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 15)]));
}
