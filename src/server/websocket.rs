//! WebSocket connections: tungstenite over the loop's non-blocking sockets, one session each.
//!
//! The upgrade request was parsed by our HTTP parser; the handshake answer is written here and
//! the stream handed to tungstenite, which then frames and unframes over the same socket.

use std::io;
use std::time::Instant;

use mio::net::TcpStream;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Error as WsError, Message, WebSocket};

use crate::http::request::Request;
use crate::http::response::{json_error, ResponseHead};
use crate::session::text::base64_decode;
use crate::session::{Out, SessionId};

/// Bytes queued in tungstenite for a slow client before its sandbox's output is paused.
pub const WS_HIGH_WATER: usize = 256 * 1024;

/// What a read produced.
pub enum Incoming {
    Text(String),
    /// The connection is finished (closed, failed or refused by a limit); already answered.
    Gone,
    /// Nothing more to read now.
    Idle,
}

pub struct WsConnection {
    ws: WebSocket<TcpStream>,
    pub session: Option<SessionId>,
    /// The session has not received its init message yet (a `/create` connection).
    pub awaiting_init: bool,
    pub last_seen: Instant,
    pub ping_sent: bool,
    pub closing_since: Option<Instant>,
    /// Bytes written to tungstenite since its last complete flush.
    pub unflushed: usize,
    pub output_paused: bool,
    tokens: f64,
    last_refill: Instant,
    rate: f64,
}

impl WsConnection {
    pub fn new(stream: TcpStream, max_message_bytes: usize, messages_per_sec: u32) -> Self {
        let config = WebSocketConfig {
            max_message_size: Some(max_message_bytes),
            max_frame_size: Some(max_message_bytes),
            // Bounded: we stop producing past WS_HIGH_WATER long before this is reached.
            max_write_buffer_size: 64 * 1024 * 1024,
            ..WebSocketConfig::default()
        };
        let now = Instant::now();
        let rate = f64::from(messages_per_sec.max(1));
        WsConnection {
            ws: WebSocket::from_raw_socket(stream, Role::Server, Some(config)),
            session: None,
            awaiting_init: false,
            last_seen: now,
            ping_sent: false,
            closing_since: None,
            unflushed: 0,
            output_paused: false,
            tokens: rate * 2.0,
            last_refill: now,
            rate,
        }
    }

    pub fn stream_mut(&mut self) -> &mut TcpStream {
        self.ws.get_mut()
    }

    /// Read the next text message, enforcing the binary-frame and rate rules.
    pub fn read(&mut self) -> Incoming {
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    self.last_seen = Instant::now();
                    self.ping_sent = false;
                    if !self.take_token() {
                        self.close(1008, "too many messages; slow down");
                        return Incoming::Gone;
                    }
                    return Incoming::Text(text);
                }
                Ok(Message::Binary(_)) => {
                    self.close(
                        1003,
                        "binary frames are not supported; send JSON text frames",
                    );
                    return Incoming::Gone;
                }
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) | Ok(Message::Frame(_)) => {
                    self.last_seen = Instant::now();
                    self.ping_sent = false;
                }
                Ok(Message::Close(_)) => {
                    // tungstenite queued the reply; flushing it completes the close.
                    let _ = self.ws.flush();
                    return Incoming::Gone;
                }
                Err(WsError::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                    return Incoming::Idle
                }
                Err(WsError::Capacity(_)) => {
                    self.close(1009, "message too large");
                    return Incoming::Gone;
                }
                Err(WsError::Utf8) => {
                    self.close(1007, "text frames must be valid UTF-8");
                    return Incoming::Gone;
                }
                Err(WsError::Protocol(error)) => {
                    self.close(1002, &format!("protocol error: {error}"));
                    return Incoming::Gone;
                }
                Err(_) => return Incoming::Gone,
            }
        }
    }

    fn take_token(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last_refill).as_secs_f64();
        self.last_refill = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate * 2.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Queue the session's output. Returns false if the connection is finished.
    pub fn apply(&mut self, outs: Vec<Out>) -> bool {
        for out in outs {
            match out {
                Out::Send(text) => {
                    self.unflushed += text.len();
                    if let Err(error) = self.ws.write(Message::Text(text)) {
                        if !is_would_block(&error) {
                            return false;
                        }
                    }
                }
                Out::Close(code, reason) => {
                    self.close(code, &reason);
                }
                // Saves are carried out by the server before frames reach the socket.
                Out::Save(_) => {}
            }
        }
        self.flush()
    }

    pub fn close(&mut self, code: u16, reason: &str) {
        if self.closing_since.is_none() {
            self.closing_since = Some(Instant::now());
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: close_reason(reason).to_string().into(),
            };
            let _ = self.ws.close(Some(frame));
            let _ = self.ws.flush();
        }
    }

    pub fn ping(&mut self) {
        self.ping_sent = true;
        let _ = self.ws.write(Message::Ping(Vec::new()));
        let _ = self.ws.flush();
    }

    /// Returns false when the connection failed.
    pub fn flush(&mut self) -> bool {
        match self.ws.flush() {
            Ok(()) => {
                self.unflushed = 0;
                true
            }
            Err(error) if is_would_block(&error) => true,
            Err(WsError::ConnectionClosed) => self.closing_since.is_some(),
            Err(_) => false,
        }
    }
}

/// A close frame is a control frame: 125 bytes at most, 2 of them the code (RFC 6455 §5.5).
/// Reasons can quote what a client sent, so they are cut, on a character boundary.
fn close_reason(reason: &str) -> &str {
    const MAX: usize = 123;
    if reason.len() <= MAX {
        return reason;
    }
    let mut end = MAX;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

fn is_would_block(error: &WsError) -> bool {
    matches!(error, WsError::Io(error) if error.kind() == io::ErrorKind::WouldBlock)
}

/// The only WebSocket version there is (RFC 6455); older drafts are refused.
const WEBSOCKET_VERSION: &str = "13";

/// Checks the client's half of the opening handshake (RFC 6455 §4.2.1) and returns its key, or
/// the status and response that refuse it: 426 with the version we speak for another version
/// (§4.4), 400 for a key that is not the base64 of 16 bytes.
pub fn check_handshake(request: &Request) -> Result<String, (u16, Vec<u8>)> {
    let values = |name: &'static str| -> Vec<&str> {
        request
            .headers
            .iter()
            .filter(|(header, _)| header == name)
            .map(|(_, value)| value.as_str())
            .collect()
    };
    let versions = values("sec-websocket-version");
    if versions != [WEBSOCKET_VERSION] {
        let shown: Vec<String> = versions
            .iter()
            .map(|version| version.chars().take(32).collect::<String>())
            .collect();
        let message = format!(
            "unsupported Sec-WebSocket-Version {shown:?}: this server speaks version {WEBSOCKET_VERSION} (RFC 6455)"
        );
        let body = crate::http::response::json_error_body(&message);
        let response = ResponseHead::new(426)
            .header("Content-Type", "application/json")
            .header("Sec-WebSocket-Version", WEBSOCKET_VERSION)
            .encode_with_body(&body, false);
        return Err((426, response));
    }
    let bad_key = |message: String| Err((400, json_error(400, &message, false)));
    match values("sec-websocket-key").as_slice() {
        [] => bad_key("missing Sec-WebSocket-Key header".into()),
        [key] if key.len() == 24 && base64_decode(key).is_some_and(|nonce| nonce.len() == 16) => {
            Ok(key.to_string())
        }
        [key] => {
            let shown: String = key.chars().take(32).collect();
            bad_key(format!(
                "invalid Sec-WebSocket-Key {shown:?}: it must be the base64 of 16 bytes"
            ))
        }
        _ => bad_key("Sec-WebSocket-Key is given more than once".into()),
    }
}

/// The `Sec-WebSocket-Accept` answer for the client's key.
pub fn handshake_response(key: &str) -> Vec<u8> {
    let accept = tungstenite::handshake::derive_accept_key(key.trim().as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nServer: cloud-run-sandbox\r\n\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade(headers: &[(&str, &str)]) -> Request {
        let mut request = Request {
            method: "GET".into(),
            path: "/create".into(),
            target: "/create".into(),
            version_minor: 1,
            ..Request::default()
        };
        for (name, value) in [("upgrade", "websocket"), ("connection", "Upgrade")]
            .iter()
            .chain(headers)
        {
            request.headers.push((name.to_string(), value.to_string()));
        }
        request
    }

    fn status_and_text(result: Result<String, (u16, Vec<u8>)>) -> (u16, String) {
        let (status, bytes) = result.unwrap_err();
        (status, String::from_utf8(bytes).unwrap())
    }

    /// What Python's `websockets` and Node's `ws` send: 16 random bytes in base64, version 13.
    #[test]
    fn the_clients_handshake_is_accepted() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let request = upgrade(&[("sec-websocket-key", key), ("sec-websocket-version", "13")]);
        assert_eq!(check_handshake(&request), Ok(key.to_string()));
    }

    #[test]
    fn other_versions_get_426_with_the_version_we_speak() {
        let key = ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        for versions in [
            vec![],
            vec!["8"],
            vec!["12"],
            vec!["13, 8"],
            vec!["13", "13"],
        ] {
            let mut headers = vec![key];
            headers.extend(versions.iter().map(|v| ("sec-websocket-version", *v)));
            let (status, text) = status_and_text(check_handshake(&upgrade(&headers)));
            assert_eq!(status, 426, "{versions:?}");
            assert!(
                text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
                "{text}"
            );
            assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{text}");
        }
    }

    #[test]
    fn malformed_keys_get_400() {
        for (keys, needle) in [
            (vec![], "missing Sec-WebSocket-Key"),
            (vec!["x"], "invalid Sec-WebSocket-Key \\\"x\\\""),
            (vec!["dGhlIHNhbXBsZSBub25jZQ"], "base64 of 16 bytes"),
            (vec!["dGhlIHNhbXBsZSBub25jZQ=="; 2], "more than once"),
            // 24 characters, but not base64 / not 16 bytes.
            (vec!["dGhlIHNhbXBsZSBub25jZ!=="], "base64 of 16 bytes"),
            (vec!["dGhlIHNhbXBsZSBub25jZQAA"], "base64 of 16 bytes"),
            (vec!["dGhlIHNhbXBsZSBub25j ZQ="], "base64 of 16 bytes"),
        ] {
            let mut headers = vec![("sec-websocket-version", "13")];
            headers.extend(keys.iter().map(|k| ("sec-websocket-key", *k)));
            let (status, text) = status_and_text(check_handshake(&upgrade(&headers)));
            assert_eq!(status, 400, "{keys:?}");
            assert!(text.contains(needle), "{keys:?}: {text}");
            assert!(text.contains("Connection: close"), "{text}");
        }
    }

    #[test]
    fn close_reasons_fit_a_control_frame() {
        assert_eq!(close_reason("done"), "done");
        let long = "é".repeat(100);
        let cut = close_reason(&long);
        assert!(cut.len() <= 123 && long.starts_with(cut), "{}", cut.len());
        assert_eq!(cut.chars().count(), 61);
    }
}
