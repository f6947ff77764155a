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
                reason: reason.to_string().into(),
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

fn is_would_block(error: &WsError) -> bool {
    matches!(error, WsError::Io(error) if error.kind() == io::ErrorKind::WouldBlock)
}

/// The `Sec-WebSocket-Accept` answer for the client's key.
pub fn handshake_response(key: &str) -> Vec<u8> {
    let accept = tungstenite::handshake::derive_accept_key(key.trim().as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nServer: cloud-run-sandbox\r\n\r\n"
    )
    .into_bytes()
}
