//! Stdin flow control of one process (protocol 2, docs/protocol.md "Stdin with flow control"):
//! how many bytes its client may send before they are consumed, and which acknowledgements
//! are due.
//!
//! The client counts what it sent and what the server acknowledged (`stdin_ack`'s `written`,
//! a running total) and sends a chunk only if `sent + len - written <= window`. The server
//! checks the same sum here with its own counts, so a client that keeps the rule is never
//! refused, and one that does not is refused before anything is written.
//!
//! A client that takes over the process with `attach_process` cannot know what an earlier
//! client sent: it starts counting from what the server received until then (the reply's
//! `stdin_written`), and bytes sent before it do not count against its window. So that
//! repeated take-overs of a process that does not read its stdin cannot pile bytes up, the
//! runtime bounds what waits in flight for any process at twice the window
//! ([`StdinWindow::hard_bound`]).

/// Counters of one process's stdin, in bytes since it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StdinWindow {
    window: u64,
    /// Accepted from clients.
    received: u64,
    /// Written to the process, or discarded because it closed its stdin.
    consumed: u64,
    /// `consumed` as last told to a client.
    acknowledged: u64,
    /// What the client following it counts from: `received` when it attached.
    base: u64,
}

impl StdinWindow {
    pub fn new(window: u64) -> Self {
        StdinWindow {
            window,
            received: 0,
            consumed: 0,
            acknowledged: 0,
            base: 0,
        }
    }

    /// The counters a process restored from a checkpoint had (bytes the agent had not
    /// written yet were checkpointed with it and are written after the restore).
    pub fn restored(window: u64, received: u64, consumed: u64) -> Self {
        StdinWindow {
            window,
            received: received.max(consumed),
            consumed,
            acknowledged: consumed,
            base: 0,
        }
    }

    pub fn window(&self) -> u64 {
        self.window
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The runtime's bound on bytes in flight for this process (see the module doc).
    pub fn hard_bound(window: u64) -> u64 {
        window.saturating_mul(2)
    }

    /// `len` more bytes from the client, if its window has room; else why not.
    pub fn accept(&mut self, process: impl std::fmt::Display, len: usize) -> Result<(), String> {
        let len = len as u64;
        let counted_from = self.consumed.max(self.base);
        let unacknowledged = self.received.saturating_add(len) - counted_from.min(self.received);
        if unacknowledged > self.window {
            return Err(format!(
                "stdin of process {process} exceeds its window: {unacknowledged} bytes not acknowledged, the window is {}",
                self.window
            ));
        }
        self.received = self.received.saturating_add(len);
        Ok(())
    }

    /// The process consumed `count` more bytes.
    pub fn on_consumed(&mut self, count: u32) {
        self.consumed = self.consumed.saturating_add(u64::from(count));
        // After a restore the agent may write bytes received by the server before it.
        self.received = self.received.max(self.consumed);
    }

    /// The total to acknowledge now, if it moved since the last acknowledgement.
    pub fn take_ack(&mut self) -> Option<u64> {
        (self.consumed > self.acknowledged).then(|| {
            self.acknowledged = self.consumed;
            self.consumed
        })
    }

    /// The total to acknowledge to a client back after a drop: the last acknowledgement may
    /// have been lost with the connection, and each one carries the whole total, so one more
    /// is harmless. None while nothing was consumed.
    pub fn ack_again(&mut self) -> Option<u64> {
        self.acknowledged = 0;
        self.take_ack()
    }

    /// A new client follows the process: it counts from what was received so far, which the
    /// reply tells it.
    pub fn attach(&mut self) -> u64 {
        self.base = self.received;
        self.acknowledged = self.acknowledged.max(self.consumed);
        self.received
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_within_its_window_is_never_refused_and_one_beyond_it_always() {
        let mut stdin = StdinWindow::new(8);
        stdin.accept(1, 8).unwrap();
        assert_eq!(
            stdin.accept(1, 1).unwrap_err(),
            "stdin of process 1 exceeds its window: 9 bytes not acknowledged, the window is 8"
        );
        assert_eq!(stdin.take_ack(), None, "nothing consumed yet");
        stdin.on_consumed(5);
        stdin.on_consumed(1);
        assert_eq!(stdin.take_ack(), Some(6), "coalesced: one ack for both");
        assert_eq!(stdin.take_ack(), None);
        stdin.accept(1, 6).unwrap();
        assert!(stdin.accept(1, 1).is_err());
        assert_eq!(stdin.received(), 14);
    }

    #[test]
    fn a_client_that_attached_counts_from_what_was_received_before_it() {
        let mut stdin = StdinWindow::new(8);
        stdin.accept(3, 8).unwrap();
        stdin.on_consumed(2);
        // 6 bytes of the earlier client wait; the new one has its whole window.
        assert_eq!(stdin.attach(), 8);
        stdin.accept(3, 8).unwrap();
        assert!(stdin.accept(3, 1).is_err());
        // Consuming the earlier client's bytes gives it no room; its own do.
        stdin.on_consumed(6);
        assert!(stdin.accept(3, 1).is_err());
        stdin.on_consumed(1);
        stdin.accept(3, 1).unwrap();
        assert_eq!(stdin.take_ack(), Some(9));
    }

    #[test]
    fn restored_counters_go_on_where_they_were() {
        let mut stdin = StdinWindow::restored(8, 10, 4);
        assert_eq!(stdin.take_ack(), None, "4 was acknowledged before");
        stdin.on_consumed(6);
        assert_eq!(stdin.take_ack(), Some(10));
        stdin.accept(1, 8).unwrap();
        // An agent that reports more than was received cannot make the counters wrap.
        stdin.on_consumed(u32::MAX);
        assert_eq!(stdin.received(), stdin.consumed());
        stdin.accept(1, 8).unwrap();
        assert_eq!(StdinWindow::hard_bound(u64::MAX), u64::MAX);
    }
}
