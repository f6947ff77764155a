//! The pipes to one sandbox's agent: frames queued for it, bytes read from it and decoded into
//! frames, within a budget per turn so that one chatty agent does not starve the others.
//!
//! Both pipes are non-blocking and registered with the event loop (edge-triggered): a read
//! that stops because of the budget says so (`more`), and the driver comes back to it on its
//! next turn. Pipes are always read: holding back output is the agent's job, per execution,
//! under the windows the core gives back (`runtime::execs`).

use std::io::{self, Read, Write};

use mio::unix::pipe::{Receiver, Sender};
use mio::{Interest, Registry};

use crate::agent_protocol::{FrameDecoder, FromAgent, ToAgent};
use crate::io_token::{token, Tag};

use super::SandboxKey;

/// Bytes read from one agent before the loop serves others (about a millisecond of work here;
/// the agent's output frames are up to 1 MiB).
pub const READ_BUDGET: usize = 1024 * 1024;

/// The size of the buffer agents are read into (one for all agents: see [`AgentLink::read`]).
pub const READ_BUFFER_BYTES: usize = 256 * 1024;

/// Written bytes are removed from the front of the queue once this many accumulate (or all
/// are written): removing them after every write would move the whole queue each time, which
/// is quadratic when megabytes of stdin wait behind a pipe that takes 64 KiB at a time.
const COMPACT_AFTER: usize = 1024 * 1024;

pub struct AgentLink {
    to_agent: Sender,
    from_agent: Receiver,
    /// Frames encoded and not yet written (the pipe was full), from `written` on.
    outgoing: Vec<u8>,
    written: usize,
    decoder: FrameDecoder,
}

/// What one turn of reading gave.
pub struct Received {
    pub frames: Vec<FromAgent>,
    /// The budget ran out with data left: read again on the next turn.
    pub more: bool,
    /// The link is dead (end of file, a read error, bytes that are no frame): why. The frames
    /// before it are still to be handled.
    pub lost: Option<String>,
}

impl AgentLink {
    /// Register both pipes with the event loop under `key`.
    pub fn new(
        registry: &Registry,
        key: SandboxKey,
        mut to_agent: Sender,
        mut from_agent: Receiver,
    ) -> io::Result<Self> {
        registry.register(
            &mut from_agent,
            token(Tag::AgentOut, key.0),
            Interest::READABLE,
        )?;
        registry.register(
            &mut to_agent,
            token(Tag::AgentIn, key.0),
            Interest::WRITABLE,
        )?;
        Ok(AgentLink {
            to_agent,
            from_agent,
            outgoing: Vec::new(),
            written: 0,
            decoder: FrameDecoder::new(),
        })
    }

    /// Close both pipes. Closing the agent's stdin makes it kill its processes and exit.
    pub fn close(mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.to_agent);
        let _ = registry.deregister(&mut self.from_agent);
    }

    pub fn queue(&mut self, frame: &ToAgent) {
        frame.encode(&mut self.outgoing);
    }

    pub fn has_outgoing(&self) -> bool {
        self.written < self.outgoing.len()
    }

    /// Write what the pipe takes now; the rest waits for the next writable event.
    pub fn flush(&mut self) -> io::Result<()> {
        let mut result = Ok(());
        while self.written < self.outgoing.len() {
            match self.to_agent.write(&self.outgoing[self.written..]) {
                Ok(0) => break,
                Ok(n) => self.written += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    result = Err(error);
                    break;
                }
            }
        }
        if self.written == self.outgoing.len() {
            self.outgoing.clear();
            self.written = 0;
        } else if self.written >= COMPACT_AFTER {
            self.outgoing.drain(..self.written);
            self.written = 0;
        }
        result
    }

    /// Read up to `budget` bytes, in reads of `buffer`'s size (the runtime's one buffer, so
    /// that no agent holds one while idle), and decode every whole frame.
    pub fn read(&mut self, budget: usize, buffer: &mut [u8]) -> Received {
        let mut received = Received {
            frames: Vec::new(),
            more: false,
            lost: None,
        };
        let mut total = 0;
        loop {
            if total >= budget {
                received.more = true;
                break;
            }
            match self.from_agent.read(buffer) {
                Ok(0) => {
                    received.lost = Some("the sandbox stopped unexpectedly".to_string());
                    break;
                }
                Ok(n) => {
                    total += n;
                    self.decoder.push(&buffer[..n]);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    received.lost = Some(format!("cannot read from the sandbox agent: {error}"));
                    break;
                }
            }
        }
        loop {
            match self.decoder.next_from_agent() {
                Ok(Some(frame)) => received.frames.push(frame),
                Ok(None) => break,
                Err(error) => {
                    received.lost = Some(error.to_string());
                    break;
                }
            }
        }
        received
    }
}
