//! The executions of one sandbox, without I/O: which run, their ids, their stdin in flight,
//! their output accounting and window, and the timers armed for them.
//!
//! Several executions may run at once (issue 12): each entry is independent, addressed by its
//! [`ExecId`]. The core decides what to send to the agent from what these methods return; the
//! timers themselves live in the core's heap, this table only remembers which are whose, so
//! that they are cancelled when the execution ends.
//!
//! Output window: the agent reads an execution's pipes only while that execution's window
//! (`agent_protocol::OUTPUT_WINDOW_BYTES`) is open. Bytes received here are given back (a `Credit` of the
//! protocol) once they have gone on toward the owner: at once while the owner takes output,
//! in batches ([`CREDIT_BATCH_BYTES`]) so that credit costs one small frame per 128 KiB; not while
//! the owner has paused output (its buffer is full), which stops the process once its window
//! is used up. Bytes that go nowhere (past the output limit, of an execution nobody follows)
//! are given back at once. Today the owner pauses a whole sandbox; the window is per
//! execution, so issue 12 can pause one execution's client without stopping the others.
//!
//! What issue 12 (concurrent processes, docs/design-protocol.md sections 2-4) adds here, and
//! where: the pause moves from the table into each entry (`set_output_paused` per id, with
//! the same credit rule); the stdin bound becomes the client's window (`stdin_window`, 4 MiB)
//! with the acknowledged total kept per entry, fed by the agent's `StdinWritten`; the entry
//! keeps the request id and kind the session lists. The ids (`ExecId`) are never reused in a
//! sandbox (the agent reports the lowest id never used after a restore, `next_exec_id`), so
//! the process ids clients see can map to them one to one.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::agent_protocol::{ExecId, ExitStatus, CREDIT_BATCH_BYTES};
use crate::timers::TimerId;

use super::exec::{ExecOutcome, ExecTracker, OutputVerdict, Reason};
use super::RuntimeError;

/// Stdin accepted for one execution and not yet written to its process.
pub const MAX_STDIN_IN_FLIGHT: u64 = 1024 * 1024;

/// Credit is given back once this much output is owed: fewer frames, and the agent's window
/// never closes while the owner keeps up.
const CREDIT_BATCH: u64 = CREDIT_BATCH_BYTES as u64;

struct Entry {
    tracker: ExecTracker,
    /// Bytes of stdin sent to the agent and not yet written to the process.
    stdin_in_flight: u64,
    /// Output bytes received and not yet given back to the agent's window.
    owed_credit: u64,
    /// Its timeout and, once it is being killed, the kill's grace period.
    timers: Vec<TimerId>,
}

impl Entry {
    /// What to give back now, and forget it as owed.
    fn take_due_credit(&mut self, paused: bool) -> u32 {
        if paused || self.owed_credit < CREDIT_BATCH {
            return 0;
        }
        let credit = u32::try_from(self.owed_credit).unwrap_or(u32::MAX);
        self.owed_credit -= u64::from(credit);
        credit
    }
}

/// What to do with a chunk of an execution's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputStep {
    /// Deliver this many bytes of the chunk (all of it, or the part within the output limit).
    pub deliver: usize,
    /// The output limit was reached with this chunk: kill the execution.
    pub kill: bool,
    /// Give the agent this much window back now (0: nothing to send).
    pub credit: u32,
}

/// An execution that ended, and its timers to cancel.
pub struct Ended {
    pub exec: ExecId,
    pub outcome: ExecOutcome,
    pub timers: Vec<TimerId>,
}

pub struct Execs {
    /// Ordered by id, so that a sandbox's executions end in the order they started.
    entries: BTreeMap<ExecId, Entry>,
    /// The id the next execution gets.
    next: ExecId,
    /// Output allowed per execution.
    output_limit: u64,
    /// The owner cannot take more output now: credit is held back.
    output_paused: bool,
}

impl Execs {
    pub fn new(output_limit: u64) -> Self {
        Execs {
            entries: BTreeMap::new(),
            next: ExecId(1),
            output_limit,
            output_paused: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, exec: ExecId) -> bool {
        self.entries.contains_key(&exec)
    }

    /// Never hand out ids below `exec`: after a restore the agent says which are still taken
    /// (its hello can name any value: it comes from inside the sandbox).
    pub fn reserve_below(&mut self, exec: ExecId) {
        self.next = self.next.max(exec);
    }

    /// A new execution, started at `now`; its id.
    pub fn start(&mut self, now: Instant) -> Result<ExecId, RuntimeError> {
        let exec = self.next;
        self.next = exec.next().ok_or(RuntimeError::NoExecIdsLeft)?;
        self.insert(exec, now);
        Ok(exec)
    }

    /// Follow `exec`, which runs already (it was running when the sandbox was checkpointed).
    pub fn adopt(&mut self, exec: ExecId, now: Instant) {
        self.reserve_below(exec.next().unwrap_or(exec));
        self.insert(exec, now);
    }

    fn insert(&mut self, exec: ExecId, now: Instant) {
        let entry = Entry {
            tracker: ExecTracker::new(self.output_limit, now),
            stdin_in_flight: 0,
            owed_credit: 0,
            timers: Vec::new(),
        };
        self.entries.insert(exec, entry);
    }

    /// Remember `timer` as `exec`'s (cancelled when it ends).
    pub fn add_timer(&mut self, exec: ExecId, timer: TimerId) {
        if let Some(entry) = self.entries.get_mut(&exec) {
            entry.timers.push(timer);
        }
    }

    /// Account for `bytes` of stdin about to be sent; refused past [`MAX_STDIN_IN_FLIGHT`].
    pub fn send_stdin(&mut self, exec: ExecId, bytes: usize) -> Result<(), RuntimeError> {
        let entry = self
            .entries
            .get_mut(&exec)
            .ok_or(RuntimeError::NoSuchExecution)?;
        let in_flight = entry.stdin_in_flight.saturating_add(bytes as u64);
        if in_flight > MAX_STDIN_IN_FLIGHT {
            return Err(RuntimeError::StdinFull);
        }
        entry.stdin_in_flight = in_flight;
        Ok(())
    }

    /// The agent wrote `count` bytes of stdin to the process (or dropped them: it closed it).
    pub fn stdin_written(&mut self, exec: ExecId, count: u32) {
        if let Some(entry) = self.entries.get_mut(&exec) {
            entry.stdin_in_flight = entry.stdin_in_flight.saturating_sub(u64::from(count));
        }
    }

    /// `exec` is being killed, for `reason` (the first reason given wins).
    pub fn mark_killed(&mut self, exec: ExecId, reason: Reason) -> Result<(), RuntimeError> {
        let entry = self
            .entries
            .get_mut(&exec)
            .ok_or(RuntimeError::NoSuchExecution)?;
        entry.tracker.mark_killed(reason);
        Ok(())
    }

    /// `bytes` of output arrived for `exec`; `None` if nobody follows that execution (its
    /// bytes go nowhere: give them back at once).
    pub fn on_output(&mut self, exec: ExecId, bytes: usize) -> Option<OutputStep> {
        let entry = self.entries.get_mut(&exec)?;
        let (deliver, kill) = match entry.tracker.on_output(bytes) {
            OutputVerdict::Deliver(deliver) => (deliver, false),
            OutputVerdict::DeliverThenKill(deliver) => (deliver, true),
        };
        // Dropped bytes hold no memory here: they are given back whatever the owner does.
        let dropped = u32::try_from(bytes - deliver).unwrap_or(u32::MAX);
        entry.owed_credit = entry.owed_credit.saturating_add(deliver as u64);
        let credit = dropped.saturating_add(entry.take_due_credit(self.output_paused));
        Some(OutputStep {
            deliver,
            kill,
            credit,
        })
    }

    /// The owner can (again) take output or not. Resuming gives back what is owed: the
    /// executions and their credit to send.
    pub fn set_output_paused(&mut self, paused: bool) -> Vec<(ExecId, u32)> {
        self.output_paused = paused;
        self.entries
            .iter_mut()
            .filter_map(|(exec, entry)| {
                let credit = entry.take_due_credit(paused);
                (credit > 0).then_some((*exec, credit))
            })
            .collect()
    }

    /// `exec` ended with `status` (after its last output); `None` if nobody followed it.
    pub fn finish(&mut self, exec: ExecId, status: ExitStatus, now: Instant) -> Option<Ended> {
        let entry = self.entries.remove(&exec)?;
        Some(Ended {
            exec,
            outcome: entry.tracker.finish(status, now),
            timers: entry.timers,
        })
    }

    /// Forget `exec` (it never started); its timers to cancel.
    pub fn remove(&mut self, exec: ExecId) -> Option<Vec<TimerId>> {
        self.entries.remove(&exec).map(|entry| entry.timers)
    }

    /// The sandbox died: every execution ends, killed with it.
    pub fn end_all_lost(&mut self, now: Instant) -> Vec<Ended> {
        std::mem::take(&mut self.entries)
            .into_iter()
            .map(|(exec, mut entry)| {
                entry.tracker.mark_killed(Reason::SandboxLost);
                Ended {
                    exec,
                    outcome: entry.tracker.finish(ExitStatus::Signal(libc::SIGKILL), now),
                    timers: entry.timers,
                }
            })
            .collect()
    }

    /// Stop following every execution without ending them (they are checkpointed with the
    /// sandbox and go on after a restore); their timers to cancel.
    pub fn forget_all(&mut self) -> Vec<TimerId> {
        std::mem::take(&mut self.entries)
            .into_values()
            .flat_map(|entry| entry.timers)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_handed_out_in_order_and_run_out_with_an_error() {
        let now = Instant::now();
        let mut execs = Execs::new(100);
        assert_eq!(execs.start(now).ok(), Some(ExecId(1)));
        assert_eq!(execs.start(now).ok(), Some(ExecId(2)));
        // A forged hello from inside the sandbox can raise the counter to the last id.
        execs.reserve_below(ExecId(u32::MAX));
        assert!(matches!(execs.start(now), Err(RuntimeError::NoExecIdsLeft)));
        assert!(!execs.contains(ExecId(u32::MAX)));
        execs.adopt(ExecId(7), now);
        assert!(execs.contains(ExecId(7)));
    }

    #[test]
    fn stdin_in_flight_is_bounded_per_execution() {
        let now = Instant::now();
        let mut execs = Execs::new(100);
        let exec = execs.start(now).unwrap();
        let other = execs.start(now).unwrap();
        execs
            .send_stdin(exec, MAX_STDIN_IN_FLIGHT as usize)
            .unwrap();
        assert!(matches!(
            execs.send_stdin(exec, 1),
            Err(RuntimeError::StdinFull)
        ));
        execs.send_stdin(other, 10).unwrap();
        execs.stdin_written(exec, 5);
        execs.send_stdin(exec, 5).unwrap();
        assert!(matches!(
            execs.send_stdin(ExecId(9), 1),
            Err(RuntimeError::NoSuchExecution)
        ));
    }

    #[test]
    fn a_lost_sandbox_ends_every_execution_in_order() {
        let now = Instant::now();
        let mut execs = Execs::new(100);
        let first = execs.start(now).unwrap();
        let second = execs.start(now).unwrap();
        execs.mark_killed(second, Reason::Killed).unwrap();
        let ended = execs.end_all_lost(now);
        let summary: Vec<(ExecId, Reason, i32)> = ended
            .iter()
            .map(|end| (end.exec, end.outcome.reason, end.outcome.exit_code()))
            .collect();
        assert_eq!(
            summary,
            [
                (first, Reason::SandboxLost, 137),
                (second, Reason::Killed, 137)
            ]
        );
        assert!(execs.is_empty());
    }

    #[test]
    fn output_credit_is_given_back_in_batches_and_held_while_paused() {
        let now = Instant::now();
        let mut execs = Execs::new(u64::MAX);
        let exec = execs.start(now).unwrap();
        let other = execs.start(now).unwrap();
        let chunk = 64 * 1024;
        let credits: Vec<u32> = (0..4)
            .map(|_| execs.on_output(exec, chunk).unwrap().credit)
            .collect();
        assert_eq!(credits, [0, 2 * chunk as u32, 0, 2 * chunk as u32]);

        // Paused: nothing is given back, so the agent stops after one window.
        assert!(execs.set_output_paused(true).is_empty());
        let window = crate::agent_protocol::OUTPUT_WINDOW_BYTES as usize;
        let step = execs.on_output(exec, window).unwrap();
        assert_eq!((step.deliver, step.credit), (window, 0));
        assert_eq!(execs.on_output(other, 100).unwrap().credit, 0);
        // Resumed: what is owed goes back (the small debt of the other waits for its batch).
        assert_eq!(
            execs.set_output_paused(false),
            [(exec, crate::agent_protocol::OUTPUT_WINDOW_BYTES)]
        );
        assert!(execs.set_output_paused(false).is_empty());
        // A new execution started while paused gets no credit either.
        execs.set_output_paused(true);
        let third = execs.start(now).unwrap();
        assert_eq!(execs.on_output(third, window).unwrap().credit, 0);
    }

    #[test]
    fn output_past_the_limit_is_given_back_at_once_even_while_paused() {
        let now = Instant::now();
        let mut execs = Execs::new(100);
        let exec = execs.start(now).unwrap();
        execs.set_output_paused(true);
        let step = execs.on_output(exec, 150).unwrap();
        assert_eq!((step.deliver, step.kill, step.credit), (100, true, 50));
        let step = execs.on_output(exec, 70).unwrap();
        assert_eq!((step.deliver, step.kill, step.credit), (0, false, 70));
        assert_eq!(execs.on_output(ExecId(9), 10), None, "nobody follows it");
    }
}
