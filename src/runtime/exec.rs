//! Bookkeeping of one execution on the server side, without I/O: why it ended and how much
//! output it may still write.

use std::time::Instant;

use serde::Serialize;

use crate::agent_protocol::ExitStatus;

/// Why an execution ended; sent to clients as `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// It ended by itself (any exit code).
    Exited,
    /// A signal we did not send ended it.
    Signaled,
    /// The client asked to kill it.
    Killed,
    /// Its wall-clock limit passed.
    Timeout,
    /// It wrote more than the output limit.
    OutputLimit,
    /// The sandbox died under it.
    SandboxLost,
    /// A code cell whose code context died under it.
    ContextDied,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Exited => "exited",
            Reason::Signaled => "signaled",
            Reason::Killed => "killed",
            Reason::Timeout => "timeout",
            Reason::OutputLimit => "output_limit",
            Reason::SandboxLost => "sandbox_lost",
            Reason::ContextDied => "context_died",
        }
    }
}

/// The end of an execution, as reported to its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecOutcome {
    pub status: ExitStatus,
    pub reason: Reason,
    pub duration_ms: u64,
    /// Output past the limit was not delivered.
    pub truncated: bool,
}

impl ExecOutcome {
    pub fn exit_code(&self) -> i32 {
        self.status.shell_code()
    }

    pub fn signal(&self) -> Option<i32> {
        match self.status {
            ExitStatus::Signal(signal) => Some(signal),
            ExitStatus::Code(_) => None,
        }
    }
}

/// What to do with a chunk of output.
#[derive(Debug, PartialEq, Eq)]
pub enum OutputVerdict {
    /// Deliver this many bytes of the chunk (all of it, or the part that fits the limit).
    Deliver(usize),
    /// Deliver this many bytes, then kill the execution: the limit is reached.
    DeliverThenKill(usize),
}

#[derive(Debug)]
pub struct ExecTracker {
    started: Instant,
    kill_reason: Option<Reason>,
    output_limit: u64,
    output_bytes: u64,
    truncated: bool,
}

impl ExecTracker {
    pub fn new(output_limit: u64, now: Instant) -> Self {
        ExecTracker {
            started: now,
            kill_reason: None,
            output_limit,
            output_bytes: 0,
            truncated: false,
        }
    }

    /// Record that we are killing it and why; the first reason wins (a timeout that fires
    /// after a kill request does not rename it).
    pub fn mark_killed(&mut self, reason: Reason) {
        self.kill_reason.get_or_insert(reason);
    }

    pub fn on_output(&mut self, length: usize) -> OutputVerdict {
        let room = self.output_limit.saturating_sub(self.output_bytes);
        if (length as u64) <= room {
            self.output_bytes += length as u64;
            return OutputVerdict::Deliver(length);
        }
        self.truncated = true;
        self.output_bytes = self.output_limit;
        if self.kill_reason.is_some() {
            OutputVerdict::Deliver(room as usize)
        } else {
            self.kill_reason = Some(Reason::OutputLimit);
            OutputVerdict::DeliverThenKill(room as usize)
        }
    }

    pub fn finish(&self, status: ExitStatus, now: Instant) -> ExecOutcome {
        let reason = self.kill_reason.unwrap_or(match status {
            ExitStatus::Code(_) => Reason::Exited,
            ExitStatus::Signal(_) => Reason::Signaled,
        });
        ExecOutcome {
            status,
            reason,
            duration_ms: now.saturating_duration_since(self.started).as_millis() as u64,
            truncated: self.truncated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_past_the_limit_is_cut_and_kills_once() {
        let now = Instant::now();
        let mut exec = ExecTracker::new(10, now);
        assert_eq!(exec.on_output(6), OutputVerdict::Deliver(6));
        assert_eq!(exec.on_output(6), OutputVerdict::DeliverThenKill(4));
        assert_eq!(exec.on_output(6), OutputVerdict::Deliver(0));
        let outcome = exec.finish(ExitStatus::Signal(9), now);
        assert_eq!(outcome.reason, Reason::OutputLimit);
        assert!(outcome.truncated);
        assert_eq!(outcome.exit_code(), 137);
        assert_eq!(outcome.signal(), Some(9));
    }

    #[test]
    fn first_kill_reason_wins_and_natural_ends_are_told_apart() {
        let now = Instant::now();
        let mut exec = ExecTracker::new(100, now);
        exec.mark_killed(Reason::Killed);
        exec.mark_killed(Reason::Timeout);
        assert_eq!(
            exec.finish(ExitStatus::Signal(9), now).reason,
            Reason::Killed
        );

        let exec = ExecTracker::new(100, now);
        assert_eq!(exec.finish(ExitStatus::Code(3), now).reason, Reason::Exited);
        assert_eq!(
            exec.finish(ExitStatus::Signal(11), now).reason,
            Reason::Signaled
        );
    }
}
