//! Response serialisation: plain byte builders so the event loop can queue them on a socket.
//!
//! Framing headers (`Content-Length`, `Transfer-Encoding`, `Connection`, `Server`) are always
//! written by [`ResponseHead::encode`] and never taken from the caller, so a handler cannot
//! produce a response whose framing disagrees with what is actually sent.

/// Standard reason phrase for `status` (`"Unknown"` for codes this server never sends).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Headers managed by [`ResponseHead::encode`]; caller-supplied copies are dropped.
const MANAGED_HEADERS: [&str; 4] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "server",
];

/// Status line plus caller headers; framing is added at [`encode`](ResponseHead::encode) time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    status: u16,
    headers: Vec<(String, String)>,
}

impl ResponseHead {
    pub fn new(status: u16) -> Self {
        ResponseHead {
            status,
            headers: Vec::new(),
        }
    }

    /// Adds a header. Names that are not HTTP tokens are dropped and CR/LF/NUL in values are
    /// replaced by spaces at encode time, so untrusted text (e.g. a sandbox id) cannot split
    /// the response.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// Serialises the head. `body_len: None` means a chunked body follows (only valid towards
    /// HTTP/1.1 clients). 1xx and 204 responses get no framing headers because they carry no
    /// body; 1xx ones also keep any caller `Connection` header (needed for `101` upgrades).
    pub fn encode(&self, body_len: Option<usize>, keep_alive: bool) -> Vec<u8> {
        let informational = (100..200).contains(&self.status);
        let mut out = Vec::with_capacity(128 + self.headers.len() * 32);
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(self.status.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(reason_phrase(self.status).as_bytes());
        out.extend_from_slice(b"\r\n");
        if !informational {
            out.extend_from_slice(b"Server: cloud-run-sandbox\r\n");
        }
        for (name, value) in &self.headers {
            if !is_token(name) {
                continue;
            }
            let managed = MANAGED_HEADERS
                .iter()
                .any(|managed| name.eq_ignore_ascii_case(managed));
            if managed && !informational {
                continue;
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend(value.bytes().map(|b| match b {
                b'\r' | b'\n' | 0 => b' ',
                other => other,
            }));
            out.extend_from_slice(b"\r\n");
        }
        if !informational {
            if self.status != 204 {
                match body_len {
                    Some(len) => {
                        out.extend_from_slice(b"Content-Length: ");
                        out.extend_from_slice(len.to_string().as_bytes());
                        out.extend_from_slice(b"\r\n");
                    }
                    None => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
                }
            }
            out.extend_from_slice(if keep_alive {
                b"Connection: keep-alive\r\n".as_slice()
            } else {
                b"Connection: close\r\n".as_slice()
            });
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// Head followed by `body`, with a matching `Content-Length`.
    pub fn encode_with_body(&self, body: &[u8], keep_alive: bool) -> Vec<u8> {
        let mut out = self.encode(Some(body.len()), keep_alive);
        out.extend_from_slice(body);
        out
    }
}

fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// `{"error":"<message>"}` with JSON escaping done by serde_json.
pub fn json_error_body(message: &str) -> Vec<u8> {
    // Serialising a map of one string cannot fail; the fallback only exists to avoid a panic path.
    serde_json::to_vec(&serde_json::json!({ "error": message }))
        .unwrap_or_else(|_| b"{\"error\":\"internal error\"}".to_vec())
}

/// Appends one chunk of a chunked body. Empty data writes nothing, because an empty chunk would
/// be read by the client as the end of the body.
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Terminating chunk (no trailers).
pub fn final_chunk() -> &'static [u8] {
    b"0\r\n\r\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: &[u8]) -> String {
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn encodes_content_length_head() {
        let head = ResponseHead::new(200)
            .header("Content-Type", "text/plain")
            .header("X-Sandbox-Id", "abc")
            .encode(Some(5), true);
        assert_eq!(
            text(&head),
            "HTTP/1.1 200 OK\r\nServer: cloud-run-sandbox\r\nContent-Type: text/plain\r\n\
             X-Sandbox-Id: abc\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn encodes_chunked_head_and_close() {
        let head = text(&ResponseHead::new(200).encode(None, false));
        assert!(head.contains("Transfer-Encoding: chunked\r\n"));
        assert!(head.contains("Connection: close\r\n"));
        assert!(!head.contains("Content-Length"));
    }

    #[test]
    fn caller_cannot_override_framing_or_inject() {
        let head = text(
            &ResponseHead::new(200)
                .header("content-length", "999")
                .header("Connection", "keep-alive")
                .header("X-Evil", "a\r\nSet-Cookie: x=1")
                .header("Bad Name", "v")
                .encode(Some(2), false),
        );
        assert!(!head.contains("999"));
        assert_eq!(head.matches("Connection:").count(), 1);
        assert!(head.contains("X-Evil: a  Set-Cookie: x=1\r\n"));
        assert!(!head.contains("Bad Name"));
    }

    #[test]
    fn informational_and_no_content_heads() {
        let head = text(
            &ResponseHead::new(101)
                .header("Upgrade", "websocket")
                .header("Connection", "Upgrade")
                .encode(None, true),
        );
        assert_eq!(
            head,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        );
        let head = text(&ResponseHead::new(204).encode(Some(0), true));
        assert!(!head.contains("Content-Length"));
        assert!(head.contains("Connection: keep-alive"));
    }

    #[test]
    fn json_error_bodies_are_escaped() {
        let body = json_error_body("bad \"lang\"\n\u{1}");
        assert_eq!(body, br#"{"error":"bad \"lang\"\n\u0001"}"#);
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["error"], "bad \"lang\"\n\u{1}");
    }

    #[test]
    fn chunks() {
        let mut out = Vec::new();
        encode_chunk(b"", &mut out);
        assert!(out.is_empty());
        encode_chunk(b"hello", &mut out);
        encode_chunk(&[b'x'; 26], &mut out);
        out.extend_from_slice(final_chunk());
        let expected = format!("5\r\nhello\r\n1a\r\n{}\r\n0\r\n\r\n", "x".repeat(26));
        assert_eq!(text(&out), expected);
    }

    #[test]
    fn reason_phrases() {
        assert_eq!(reason_phrase(413), "Content Too Large");
        assert_eq!(reason_phrase(431), "Request Header Fields Too Large");
        assert_eq!(reason_phrase(799), "Unknown");
    }
}
