//! WebSocket connections: tungstenite over the loop's non-blocking sockets, one session each.
//!
//! The upgrade request was parsed by our HTTP parser; the handshake answer is written here and
//! the stream handed to tungstenite, which then frames and unframes over the same socket.

use std::io::{self, Read};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Error as WsError, Message, WebSocket};

use crate::session::{refusal, Out, SessionId, Status};

/// Bytes queued in tungstenite for a slow client before its sandbox's output is paused.
pub const WS_HIGH_WATER: usize = 256 * 1024;
/// A connection the server closed is dropped after this even if the peer never answers.
pub const CLOSE_DEADLINE: Duration = Duration::from_secs(5);
/// Input of a refused peer read and thrown away before giving up on delivering the close.
const LINGER_MAX_BYTES: usize = 8 * 1024 * 1024;

/// What a read produced.
pub enum Incoming {
    Text(String),
    /// The connection is finished (closed by the peer, or failed); drop it.
    Gone,
    /// We refused the peer (rate limit, size, frame type, protocol) and queued a close frame;
    /// the peer may still be sending. Keep the socket to deliver the close (see `linger`).
    Refused,
    /// Nothing more to read now.
    Idle,
}

/// What a socket waits for before it belongs to a session. While it waits it does not count
/// as a session, and the wait is bounded (see [`overdue`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// It has a session, or is closing.
    Nothing,
    /// A `/create` socket: the client's init message.
    Init,
    /// An `/attach` socket: the answer of the checkpoint store (read on a worker thread).
    StoreAnswer,
    /// An `/attach` socket: the instance running the sandbox was asked to hand it off, and a
    /// worker thread waits for it (then reads the store again).
    Handoff,
}

/// How long a socket may wait for each thing.
#[derive(Debug, Clone, Copy)]
pub struct WaitBounds {
    pub init: Duration,
    pub store_answer: Duration,
    /// The handoff's own wait plus the store's answer after it.
    pub handoff: Duration,
}

/// The refusal for a socket that has waited `waited` for `waiting`, if that is too long.
pub fn overdue(waiting: Waiting, waited: Duration, bounds: WaitBounds) -> Option<Vec<Out>> {
    match waiting {
        Waiting::Init if waited > bounds.init => {
            let message = format!(
                "no init message within {} s: send the init JSON object first",
                bounds.init.as_secs()
            );
            Some(refusal(Status::CreationError, &message, 4000))
        }
        Waiting::StoreAnswer if waited > bounds.store_answer => {
            let message = format!(
                "the checkpoint store did not answer within {} s; retry later",
                bounds.store_answer.as_secs()
            );
            Some(refusal(Status::RestoreError, &message, 4000))
        }
        Waiting::Handoff if waited > bounds.handoff => {
            let message = format!(
                "the sandbox was not handed off to this server instance within {} s; retry later",
                bounds.handoff.as_secs()
            );
            Some(refusal(Status::InUse, &message, 1011))
        }
        _ => None,
    }
}

/// How lingering after a refusal goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linger {
    /// Still delivering the close or draining the peer's input.
    Going,
    /// The peer closed (or the bound was reached, or the socket failed): drop it.
    Done,
}

/// What reading and throwing away a closing peer's input came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discarded {
    /// Nothing more to read now.
    Blocked,
    /// The peer closed its side.
    PeerClosed,
    /// More than the bound came, or the socket failed.
    GiveUp,
}

/// Read and throw away what `stream` holds, counting it in `discarded` (at most `max_bytes`
/// in all): lingering after a refusal (a WebSocket's close, an HTTP response), so that
/// closing with unread input does not reset the connection under what was sent.
pub fn discard_input(stream: &mut impl Read, discarded: &mut usize, max_bytes: usize) -> Discarded {
    let mut buffer = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return Discarded::PeerClosed,
            Ok(n) => {
                *discarded += n;
                if *discarded > max_bytes {
                    return Discarded::GiveUp;
                }
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Discarded::Blocked,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Discarded::GiveUp,
        }
    }
}

#[derive(Debug, Default)]
struct Lingering {
    write_shut: bool,
    discarded: usize,
}

pub struct WsConnection {
    ws: WebSocket<TcpStream>,
    pub session: Option<SessionId>,
    pub waiting: Waiting,
    /// When the current wait began.
    pub waiting_since: Instant,
    pub last_seen: Instant,
    pub ping_sent: bool,
    pub closing_since: Option<Instant>,
    /// Bytes written to tungstenite since its last complete flush.
    pub unflushed: usize,
    pub output_paused: bool,
    /// The server's origin as this client reached it (`https://host`), for port URLs.
    pub origin: String,
    /// Set after a refusal: the close is being delivered and the peer's input thrown away.
    lingering: Option<Lingering>,
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
            waiting: Waiting::Nothing,
            waiting_since: now,
            last_seen: now,
            ping_sent: false,
            closing_since: None,
            unflushed: 0,
            output_paused: false,
            origin: String::new(),
            lingering: None,
            tokens: rate * 2.0,
            last_refill: now,
            rate,
        }
    }

    pub fn stream_mut(&mut self) -> &mut TcpStream {
        self.ws.get_mut()
    }

    /// Wait for `waiting` from now on.
    pub fn wait_for(&mut self, waiting: Waiting, now: Instant) {
        self.waiting = waiting;
        self.waiting_since = now;
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
                        return Incoming::Refused;
                    }
                    return Incoming::Text(text);
                }
                Ok(Message::Binary(_)) => {
                    self.close(
                        1003,
                        "binary frames are not supported; send JSON text frames",
                    );
                    return Incoming::Refused;
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
                    return Incoming::Refused;
                }
                Err(WsError::Utf8) => {
                    self.close(1007, "text frames must be valid UTF-8");
                    return Incoming::Refused;
                }
                Err(WsError::Protocol(error)) => {
                    self.close(1002, &format!("protocol error: {error}"));
                    return Incoming::Refused;
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
                Out::Send(event) => {
                    let text = event.to_json();
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
                // Work for the server's pipelines is taken out before frames reach the socket.
                Out::Save(_)
                | Out::FindSnapshot(_)
                | Out::RemoveSavedState
                | Out::HandoffRefused(_)
                | Out::HttpFile { .. } => {}
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

    pub fn is_lingering(&self) -> bool {
        self.lingering.is_some()
    }

    /// Deliver the close frame of a refusal to a peer that may still be sending. Dropping a
    /// socket with unread input makes the kernel answer with a reset and throw away what it
    /// has not sent yet, the close frame included (it often waits behind output the peer has
    /// not read). So: read and discard the peer's input (a peer blocked on sending may not
    /// read before it can send), flush what is queued, close frame last, then shut our write
    /// side (FIN) and keep discarding until the peer closes too. Bounded by `LINGER_MAX_BYTES`
    /// here and by [`CLOSE_DEADLINE`] in the sweep. Called on every readiness of the socket
    /// from the refusal on; tungstenite reads nothing more.
    pub fn linger(&mut self) -> Linger {
        let lingering = self.lingering.get_or_insert_with(Lingering::default);
        let peer_closed = match discard_input(
            self.ws.get_mut(),
            &mut lingering.discarded,
            LINGER_MAX_BYTES,
        ) {
            Discarded::PeerClosed => true,
            Discarded::Blocked => false,
            Discarded::GiveUp => return Linger::Done,
        };
        if !lingering.write_shut {
            match self.ws.flush() {
                Ok(()) => {}
                Err(error) if is_would_block(&error) => return Linger::Going,
                Err(_) => return Linger::Done,
            }
            if self.ws.get_ref().shutdown(Shutdown::Write).is_err() {
                return Linger::Done;
            }
            lingering.write_shut = true;
        }
        if peer_closed {
            Linger::Done
        } else {
            Linger::Going
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

/// The `Sec-WebSocket-Accept` answer for the client's key, selecting `subprotocol` if any.
pub fn handshake_response(key: &str, subprotocol: Option<&str>) -> Vec<u8> {
    let accept = tungstenite::handshake::derive_accept_key(key.trim().as_bytes());
    let protocol = subprotocol
        .map(|name| format!("Sec-WebSocket-Protocol: {name}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{protocol}Server: cloud-run-sandbox\r\n\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: WaitBounds = WaitBounds {
        init: Duration::from_secs(10),
        store_answer: Duration::from_secs(30),
        handoff: Duration::from_secs(70),
    };

    fn close_code(outs: &[Out]) -> Option<u16> {
        outs.iter().find_map(|out| match out {
            Out::Close(code, _) => Some(*code),
            _ => None,
        })
    }

    #[test]
    fn a_socket_without_init_is_refused_after_the_bound_only() {
        let secs = Duration::from_secs;
        assert_eq!(overdue(Waiting::Init, secs(10), BOUNDS), None);
        let outs = overdue(Waiting::Init, secs(11), BOUNDS).expect("overdue");
        assert!(
            matches!(&outs[0], Out::Send(event) if event.status() == Some(Status::CreationError) && event.message().is_some_and(|message| message.contains("no init message within 10 s"))),
            "{outs:?}"
        );
        assert_eq!(close_code(&outs), Some(4000));
    }

    #[test]
    fn an_attach_waits_for_the_store_up_to_its_own_bound() {
        let secs = Duration::from_secs;
        assert_eq!(overdue(Waiting::StoreAnswer, secs(20), BOUNDS), None);
        let outs = overdue(Waiting::StoreAnswer, secs(31), BOUNDS).expect("overdue");
        assert!(
            matches!(&outs[0], Out::Send(event) if event.status() == Some(Status::RestoreError)),
            "{outs:?}"
        );
        assert_eq!(close_code(&outs), Some(4000));
        // A handoff has its own, longer bound; past it the sandbox is still in use elsewhere.
        assert_eq!(overdue(Waiting::Handoff, secs(60), BOUNDS), None);
        let outs = overdue(Waiting::Handoff, secs(71), BOUNDS).expect("overdue");
        assert!(
            matches!(&outs[0], Out::Send(event) if event.status() == Some(Status::InUse)),
            "{outs:?}"
        );
        assert_eq!(close_code(&outs), Some(1011));
    }

    #[test]
    fn a_socket_that_waits_for_nothing_never_expires() {
        assert_eq!(
            overdue(Waiting::Nothing, Duration::from_secs(86_400), BOUNDS),
            None
        );
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
