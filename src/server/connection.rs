//! One client TCP connection: its parser, its output buffer and its deadlines.

use std::io::{self, Read, Write};
use std::time::Instant;

use mio::net::TcpStream;

use super::execute::ExecuteJob;
use crate::http::request::RequestParser;

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
    /// Send what is buffered, then close.
    Closing,
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
        }
    }

    /// Read what is available into the parser. A parser error is returned for the caller to
    /// answer; the bytes stay bounded by the parser's limits.
    pub fn read_available(&mut self) -> Result<ReadOutcome, crate::http::request::HttpError> {
        let mut buffer = [0u8; 16 * 1024];
        loop {
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

    pub fn job(&self) -> Option<&ExecuteJob> {
        match &self.phase {
            Phase::Executing(job) => Some(job),
            _ => None,
        }
    }
}
