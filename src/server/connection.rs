//! The server's client connections: each HTTP one with its parser, its output buffer and its
//! deadlines, and the WebSockets they became.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::time::Instant;

use mio::net::TcpStream;

use super::execute::ExecuteJob;
use super::websocket::{discard_input, Discarded, Linger, WsConnection};
use crate::http::request::{HeadCheck, Limits, RelayCheck, RequestParser};

/// A client connection (HTTP, then WebSocket after an upgrade: the id stays), never reused
/// while the server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Every client connection of the server.
pub struct Connections {
    pub http: HashMap<ConnectionId, Connection>,
    pub websockets: HashMap<ConnectionId, WsConnection>,
    last_id: u64,
    limits: Limits,
    /// The API key check every request head goes through (`None`: no keys configured).
    head_check: Option<HeadCheck>,
    /// Which requests are relayed to a port of a sandbox.
    relay_check: RelayCheck,
}

impl Connections {
    pub fn new(limits: Limits, head_check: Option<HeadCheck>, relay_check: RelayCheck) -> Self {
        Connections {
            relay_check,
            http: HashMap::new(),
            websockets: HashMap::new(),
            last_id: 0,
            limits,
            head_check,
        }
    }

    /// HTTP connections and WebSockets (those waiting for an init message included).
    pub fn len(&self) -> usize {
        self.http.len() + self.websockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn new_id(&mut self) -> ConnectionId {
        self.last_id += 1;
        ConnectionId(self.last_id)
    }

    /// The limits and key check of request heads, for heads parsed after a connection's
    /// parser handed it over (the later requests through a port, `crate::ports::requests`).
    pub fn head_rules(&self) -> (Limits, Option<HeadCheck>) {
        (self.limits, self.head_check.clone())
    }

    /// A new HTTP connection on `stream`, with the server's parser limits and key check.
    pub fn add(&mut self, id: ConnectionId, stream: TcpStream) {
        let mut parser = RequestParser::new(self.limits)
            .with_streamed_bodies(super::files_http::stream_check())
            .with_relay_check(self.relay_check.clone());
        if let Some(check) = &self.head_check {
            parser = parser.with_head_check(check.clone());
        }
        self.http.insert(id, Connection::new(stream, parser));
    }
}

/// Output buffered for a client before its sandbox's output is paused.
pub const OUT_HIGH_WATER: usize = 256 * 1024;
/// Below this, paused output resumes.
pub const OUT_LOW_WATER: usize = 64 * 1024;

#[derive(Debug)]
pub enum Phase {
    /// Waiting for (the rest of) a request.
    Reading,
    /// A `/execute` request is running.
    Executing(Box<ExecuteJob>),
    /// A request waits for the store's answer (read on a worker thread).
    Waiting { since: Instant, keep_alive: bool },
    /// A files request's transfer is under way (`server/files_http.rs`).
    File(Box<super::files_http::FileJob>),
    /// Relayed to a port of a sandbox (issue 20): a byte pipe from now on.
    Port(Box<super::ports::PortRelay>),
    /// A `/mcp` tool call is running; its answer completes the request.
    Mcp(McpWaiting),
    /// Send what is buffered, then close.
    Closing,
    /// The last response is out and the write side is shut: what the client still sends (the
    /// rest of a refused body) is read and dropped until it closes too, so that closing does
    /// not reset the connection under the response (see [`Connection::drain_lingering`]).
    Lingering { since: Instant, discarded: usize },
}

/// How long a closing connection waits for its client to close too.
pub const LINGER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// How much of a client's unwanted input a closing connection reads at most.
const LINGER_MAX_BYTES: usize = 64 * 1024 * 1024;

/// The `/mcp` tool call a connection waits for.
#[derive(Debug, Clone)]
pub struct McpWaiting {
    /// The call's request id towards the sandbox's session.
    pub call: crate::session::RequestId,
    /// The sandbox whose output a full connection buffer pauses.
    pub sandbox: crate::runtime::SandboxKey,
}

impl Phase {
    /// A file transfer's job, the phase becoming `next`; `None` for any other phase, which
    /// stays as it is (an `/execute`, an MCP call or a port is not a transfer's to end).
    pub fn take_file_job(&mut self, next: Phase) -> Option<Box<super::files_http::FileJob>> {
        if !matches!(self, Phase::File(_)) {
            return None;
        }
        match std::mem::replace(self, next) {
            Phase::File(job) => Some(job),
            _ => None,
        }
    }
}

pub struct Connection {
    pub stream: TcpStream,
    pub parser: RequestParser,
    pub out: Vec<u8>,
    pub phase: Phase,
    /// When the current request began arriving (for the request timeout).
    pub request_started: Option<Instant>,
    /// Last time a byte moved in either direction.
    pub last_activity: Instant,
    /// Last time buffered output made progress, while output is waiting.
    pub last_write_progress: Instant,
    /// The sandbox's output is paused because `out` is full.
    pub output_paused: bool,
    pub peer_closed: bool,
    /// Reading stopped with bytes maybe left in the socket, because a streamed upload's body
    /// waits to be passed on: whoever makes room reads again.
    pub read_paused: bool,
}

/// What a read did.
pub enum ReadOutcome {
    /// Some bytes (or none yet); the connection is still open for reading.
    Open,
    /// The peer closed its side (or the socket failed).
    Closed,
}

impl Connection {
    pub fn new(stream: TcpStream, parser: RequestParser) -> Self {
        let now = Instant::now();
        Connection {
            stream,
            parser,
            out: Vec::new(),
            phase: Phase::Reading,
            request_started: None,
            last_activity: now,
            last_write_progress: now,
            output_paused: false,
            peer_closed: false,
            read_paused: false,
        }
    }

    /// Read what is available into the parser. A parser error is returned for the caller to
    /// answer; the bytes stay bounded by the parser's limits.
    pub fn read_available(&mut self) -> Result<ReadOutcome, crate::http::request::HttpError> {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            if self.parser.streamed_bytes() >= super::files_http::MAX_UPLOAD_BUFFER {
                // Back-pressure on an upload: the client waits in TCP until there is room.
                self.read_paused = true;
                return Ok(ReadOutcome::Open);
            }
            match self.stream.read(&mut buffer) {
                Ok(0) => {
                    self.peer_closed = true;
                    return Ok(ReadOutcome::Closed);
                }
                Ok(n) => {
                    self.last_activity = Instant::now();
                    if self.request_started.is_none() {
                        self.request_started = Some(self.last_activity);
                    }
                    self.parser.push(&buffer[..n])?;
                    if self.parser.is_raw() {
                        // A request for a port: the rest is read by its relay, as it has
                        // room (the socket is read again once the relay is set up).
                        return Ok(ReadOutcome::Open);
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(ReadOutcome::Open)
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.peer_closed = true;
                    return Ok(ReadOutcome::Closed);
                }
            }
        }
    }

    /// Write what the socket takes. Returns false when the socket failed.
    pub fn flush(&mut self) -> bool {
        let mut written = 0;
        let mut ok = true;
        while written < self.out.len() {
            match self.stream.write(&self.out[written..]) {
                Ok(0) => {
                    ok = false;
                    break;
                }
                Ok(n) => written += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    ok = false;
                    break;
                }
            }
        }
        if written > 0 {
            self.out.drain(..written);
            let now = Instant::now();
            self.last_activity = now;
            self.last_write_progress = now;
        }
        ok
    }

    /// Lingering: shut the write side (the client sees the response end), then read and
    /// drop what arrives. [`Linger::Done`] at the client's end of file, past
    /// `LINGER_MAX_BYTES`, or when the socket failed: the connection can go.
    pub fn drain_lingering(&mut self) -> Linger {
        let Phase::Lingering { discarded, .. } = &mut self.phase else {
            return Linger::Done;
        };
        match discard_input(&mut self.stream, discarded, LINGER_MAX_BYTES) {
            Discarded::Blocked => Linger::Going,
            Discarded::PeerClosed | Discarded::GiveUp => Linger::Done,
        }
    }

    /// After the last response of a connection that closes: linger (see
    /// [`Phase::Lingering`]) unless the client is gone already. Returns whether it lingers.
    pub fn begin_lingering(&mut self) -> bool {
        if self.peer_closed || self.stream.shutdown(std::net::Shutdown::Write).is_err() {
            return false;
        }
        self.phase = Phase::Lingering {
            since: Instant::now(),
            discarded: 0,
        };
        self.drain_lingering() == Linger::Going
    }

    pub fn job(&self) -> Option<&ExecuteJob> {
        match &self.phase {
            Phase::Executing(job) => Some(job),
            _ => None,
        }
    }
}
