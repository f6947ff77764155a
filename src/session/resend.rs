//! The last events sent to the client, kept so that a `reconnect` can send again what the
//! dropped connection swallowed (docs/protocol.md, "Reconnect").
//!
//! A write to a socket succeeds once the kernel took the bytes: when the connection drops, what
//! was still on the way (in the socket buffers, or read by the client but not yet handled) is
//! lost, and the server cannot tell how much. So the events of processes started with request
//! ids carry a per-process `seq` (1, 2, ...), the client says on `reconnect` the last `seq` it
//! got of each process, and the server sends again the newer ones it still has, before what
//! it held while the client was away.
//!
//! The log is bounded in bytes (the events' JSON length), over all the session's processes,
//! and always keeps the newest event: more in flight than the bound is lost, which the client
//! can see as a gap in `seq`.

use std::collections::VecDeque;

use super::events::{Frame, ServerEvent};
use super::ids::ProcessId;
use super::Out;

#[derive(Debug)]
struct Sent {
    frame: Frame,
    bytes: usize,
}

#[derive(Debug)]
pub struct ResendLog {
    sent: VecDeque<Sent>,
    bytes: usize,
    max_bytes: usize,
}

impl ResendLog {
    pub fn new(max_bytes: usize) -> Self {
        ResendLog {
            sent: VecDeque::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// `frame` went to the client: kept if it is numbered (a process's event with a `seq`).
    pub fn record(&mut self, frame: &Frame) {
        if self.max_bytes == 0 || frame.seq.is_none() || frame.process.is_none() {
            return;
        }
        let bytes = size(&frame.event);
        self.sent.push_back(Sent {
            frame: frame.clone(),
            bytes,
        });
        self.bytes += bytes;
        while self.bytes > self.max_bytes && self.sent.len() > 1 {
            if let Some(old) = self.sent.pop_front() {
                self.bytes -= old.bytes;
            }
        }
    }

    /// `frame` goes to the client now: recorded (see [`ResendLog::record`]), then sent.
    pub fn send(&mut self, frame: Frame, out: &mut Vec<Out>) {
        self.record(&frame);
        out.push(Out::Send(frame));
    }

    /// Send again the frames of `process` numbered after `after` that are still kept.
    pub fn resend_after(&self, process: ProcessId, after: u64, out: &mut Vec<Out>) {
        out.extend(self.after(process, after).into_iter().map(Out::Send));
    }

    /// The frames of `process` numbered after `after` that are still kept, in order.
    pub fn after(&self, process: ProcessId, after: u64) -> Vec<Frame> {
        self.sent
            .iter()
            .filter(|sent| {
                sent.frame.process == Some(process) && sent.frame.seq.is_some_and(|n| n > after)
            })
            .map(|sent| sent.frame.clone())
            .collect()
    }

    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// About the bytes an event takes: output is counted by its data without serializing it (it
/// is on the path of every output frame); the other events are rare and small.
fn size(event: &ServerEvent) -> usize {
    const ENVELOPE: usize = 96;
    match event {
        ServerEvent::Output { data, .. } => data.len() + ENVELOPE,
        other => other.to_json().len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_protocol::Stream;
    use crate::session::events::OutputEncoding;

    fn output(process: u64, seq: u64, text: &str) -> Frame {
        let event = ServerEvent::Output {
            stream: Stream::Stdout,
            data: text.into(),
            encoding: OutputEncoding::Text,
        };
        Frame::new(event, None, Some(ProcessId(process))).numbered(Some(seq))
    }

    fn seqs(frames: &[Frame]) -> Vec<u64> {
        frames.iter().filter_map(|frame| frame.seq).collect()
    }

    #[test]
    fn gives_back_the_newer_frames_of_one_process_in_order() {
        let mut log = ResendLog::new(10_000);
        for frame in [
            output(1, 1, "a1"),
            output(2, 1, "b1"),
            output(1, 2, "a2"),
            output(1, 3, "a3"),
        ] {
            log.record(&frame);
        }
        assert_eq!(
            log.after(ProcessId(1), 1),
            [output(1, 2, "a2"), output(1, 3, "a3")]
        );
        assert_eq!(log.after(ProcessId(1), 3), []);
        assert_eq!(log.after(ProcessId(2), 0), [output(2, 1, "b1")]);
        assert_eq!(log.after(ProcessId(9), 0), []);
        let unnumbered = Frame::new(ServerEvent::Error("x".into()), None, Some(ProcessId(1)));
        log.record(&unnumbered);
        assert_eq!(seqs(&log.after(ProcessId(1), 0)), [1, 2, 3], "not kept");
    }

    #[test]
    fn keeps_at_most_its_bound_but_always_the_newest_frame() {
        let one = size(&output(1, 1, "x").event);
        let mut log = ResendLog::new(2 * one + one / 2);
        for seq in 1..=5 {
            log.record(&output(1, seq, "x"));
        }
        assert_eq!(log.bytes(), 2 * one);
        assert_eq!(seqs(&log.after(ProcessId(1), 0)), [4, 5]);
        let big = "y".repeat(10 * one);
        log.record(&output(1, 6, &big));
        assert_eq!(
            seqs(&log.after(ProcessId(1), 0)),
            [6],
            "alone, over the bound"
        );
        let mut off = ResendLog::new(0);
        off.record(&output(1, 1, "x"));
        assert_eq!(off.after(ProcessId(1), 0), [], "a bound of 0 keeps nothing");
    }
}
