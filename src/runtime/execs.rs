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
//! the owner has paused output, which stops the process once its window is used up. The owner
//! pauses one execution (a session holding its output for a client that does not follow it)
//! or all of them (the connection's buffer is full: the last resort), so an execution nobody
//! reads stops without stopping the others. Bytes that go nowhere (past the output limit, of
//! an execution nobody follows) are given back at once.
//!
//! Stdin: each execution has its own bound on bytes sent to the agent and not yet written to
//! the process (the agent's `StdinWritten` acknowledges them). Sessions of protocol 2 give
//! their clients a window below that bound (docs/protocol.md, "Stdin with flow control").
//! The ids (`ExecId`) are never reused in a sandbox (the agent reports the lowest id never
//! used after a restore, `next_exec_id`), so sessions use them as the process ids clients see.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::agent_protocol::{ExecId, ExitStatus, CREDIT_BATCH_BYTES};
use crate::timers::TimerId;

use super::exec::{ExecOutcome, ExecTracker, OutputVerdict, Reason};
use super::RuntimeError;

/// Stdin accepted for one execution and not yet written to its process, unless the execution
/// was started with another bound (the compatible protocol's rule, and `/execute`'s).
pub const MAX_STDIN_IN_FLIGHT: u64 = 1024 * 1024;

/// Credit is given back once this much output is owed: fewer frames, and the agent's window
/// never closes while the owner keeps up.
const CREDIT_BATCH: u64 = CREDIT_BATCH_BYTES as u64;

struct Entry {
    tracker: ExecTracker,
    /// Bytes of stdin sent to the agent and not yet written to the process.
    stdin_in_flight: u64,
    /// The most `stdin_in_flight` may be.
    stdin_bound: u64,
    /// Output bytes received and not yet given back to the agent's window.
    owed_credit: u64,
    /// The owner cannot take more output of this execution now: its credit is held back.
    output_paused: bool,
    /// Its timeout and, once it is being killed, the kill's grace period.
    timers: Vec<TimerId>,
    /// A code cell: a kill interrupts it (SIGINT) instead of killing a process group.
    cell: bool,
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
    /// The owner cannot take more output of any execution now: credit is held back.
    all_paused: bool,
}

impl Execs {
    pub fn new(output_limit: u64) -> Self {
        Execs {
            entries: BTreeMap::new(),
            next: ExecId(1),
            output_limit,
            all_paused: false,
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

    /// A new execution, started at `now`, with at most `stdin_bound` bytes of stdin in
    /// flight; its id.
    pub fn start(&mut self, now: Instant, stdin_bound: u64) -> Result<ExecId, RuntimeError> {
        let exec = self.next;
        self.next = exec.next().ok_or(RuntimeError::NoExecIdsLeft)?;
        self.insert(exec, now, stdin_bound);
        Ok(exec)
    }

    /// Follow `exec`, which runs already (it was running when the sandbox was checkpointed).
    pub fn adopt(&mut self, exec: ExecId, now: Instant, stdin_bound: u64) {
        self.reserve_below(exec.next().unwrap_or(exec));
        self.insert(exec, now, stdin_bound);
    }

    fn insert(&mut self, exec: ExecId, now: Instant, stdin_bound: u64) {
        let entry = Entry {
            tracker: ExecTracker::new(self.output_limit, now),
            stdin_in_flight: 0,
            stdin_bound,
            owed_credit: 0,
            output_paused: false,
            timers: Vec::new(),
            cell: false,
        };
        self.entries.insert(exec, entry);
    }

    /// `exec` is a code cell.
    pub fn mark_cell(&mut self, exec: ExecId) {
        if let Some(entry) = self.entries.get_mut(&exec) {
            entry.cell = true;
        }
    }

    pub fn is_cell(&self, exec: ExecId) -> bool {
        self.entries.get(&exec).is_some_and(|entry| entry.cell)
    }

    /// Remember `timer` as `exec`'s (cancelled when it ends).
    pub fn add_timer(&mut self, exec: ExecId, timer: TimerId) {
        if let Some(entry) = self.entries.get_mut(&exec) {
            entry.timers.push(timer);
        }
    }

    /// Account for `bytes` of stdin about to be sent; refused past the execution's bound.
    pub fn send_stdin(&mut self, exec: ExecId, bytes: usize) -> Result<(), RuntimeError> {
        let entry = self
            .entries
            .get_mut(&exec)
            .ok_or(RuntimeError::NoSuchExecution)?;
        let in_flight = entry.stdin_in_flight.saturating_add(bytes as u64);
        if in_flight > entry.stdin_bound {
            return Err(RuntimeError::StdinFull(entry.stdin_bound));
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
        let paused = self.all_paused || entry.output_paused;
        let credit = dropped.saturating_add(entry.take_due_credit(paused));
        Some(OutputStep {
            deliver,
            kill,
            credit,
        })
    }

    /// The owner can (again) take output of every execution or not. Resuming gives back what
    /// is owed (to the executions not paused one by one): the executions and their credit.
    pub fn set_output_paused(&mut self, paused: bool) -> Vec<(ExecId, u32)> {
        self.all_paused = paused;
        self.entries
            .iter_mut()
            .filter_map(|(exec, entry)| {
                let credit = entry.take_due_credit(paused || entry.output_paused);
                (credit > 0).then_some((*exec, credit))
            })
            .collect()
    }

    /// The owner can (again) take output of `exec` or not. Resuming gives back what it is
    /// owed (unless every execution is paused): the credit to send.
    pub fn set_exec_output_paused(&mut self, exec: ExecId, paused: bool) -> u32 {
        let all_paused = self.all_paused;
        let Some(entry) = self.entries.get_mut(&exec) else {
            return 0;
        };
        entry.output_paused = paused;
        entry.take_due_credit(paused || all_paused)
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
    use crate::agent_protocol::OUTPUT_WINDOW_BYTES;

    #[test]
    fn ids_are_handed_out_in_order_and_run_out_with_an_error() {
        let now = Instant::now();
        let mut execs = Execs::new(100);
        assert_eq!(execs.start(now, BOUND).ok(), Some(ExecId(1)));
        assert_eq!(execs.start(now, BOUND).ok(), Some(ExecId(2)));
        // A forged hello from inside the sandbox can raise the counter to the last id.
        execs.reserve_below(ExecId(u32::MAX));
        assert!(matches!(
            execs.start(now, BOUND),
            Err(RuntimeError::NoExecIdsLeft)
        ));
        assert!(!execs.contains(ExecId(u32::MAX)));
        execs.adopt(ExecId(7), now, BOUND);
        assert!(execs.contains(ExecId(7)));
    }

    const BOUND: u64 = MAX_STDIN_IN_FLIGHT;

    #[test]
    fn stdin_in_flight_is_bounded_per_execution() {
        let now = Instant::now();
        let mut execs = Execs::new(100);
        let exec = execs.start(now, BOUND).unwrap();
        let other = execs.start(now, 10).unwrap();
        execs
            .send_stdin(exec, MAX_STDIN_IN_FLIGHT as usize)
            .unwrap();
        assert!(matches!(
            execs.send_stdin(exec, 1),
            Err(RuntimeError::StdinFull(BOUND))
        ));
        execs.send_stdin(other, 10).unwrap();
        assert!(matches!(
            execs.send_stdin(other, 1),
            Err(RuntimeError::StdinFull(10))
        ));
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
        let first = execs.start(now, BOUND).unwrap();
        let second = execs.start(now, BOUND).unwrap();
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
        let exec = execs.start(now, BOUND).unwrap();
        let other = execs.start(now, BOUND).unwrap();
        let chunk = 64 * 1024;
        let credits: Vec<u32> = (0..4)
            .map(|_| execs.on_output(exec, chunk).unwrap().credit)
            .collect();
        assert_eq!(credits, [0, 2 * chunk as u32, 0, 2 * chunk as u32]);

        // Paused: nothing is given back, so the agent stops after one window.
        assert!(execs.set_output_paused(true).is_empty());
        let window = OUTPUT_WINDOW_BYTES as usize;
        let step = execs.on_output(exec, window).unwrap();
        assert_eq!((step.deliver, step.credit), (window, 0));
        assert_eq!(execs.on_output(other, 100).unwrap().credit, 0);
        // Resumed: what is owed goes back (the small debt of the other waits for its batch).
        assert_eq!(
            execs.set_output_paused(false),
            [(exec, OUTPUT_WINDOW_BYTES)]
        );
        assert!(execs.set_output_paused(false).is_empty());
        // A new execution started while paused gets no credit either.
        execs.set_output_paused(true);
        let third = execs.start(now, BOUND).unwrap();
        assert_eq!(execs.on_output(third, window).unwrap().credit, 0);
    }

    #[test]
    fn one_execution_paused_does_not_hold_back_the_others() {
        let now = Instant::now();
        let mut execs = Execs::new(u64::MAX);
        let held = execs.start(now, BOUND).unwrap();
        let followed = execs.start(now, BOUND).unwrap();
        let window = OUTPUT_WINDOW_BYTES as usize;
        assert_eq!(execs.set_exec_output_paused(held, true), 0);
        assert_eq!(execs.on_output(held, window).unwrap().credit, 0);
        assert_eq!(
            execs.on_output(followed, window).unwrap().credit,
            OUTPUT_WINDOW_BYTES,
            "the other execution's window is given back as usual"
        );
        // The connection's pause holds back everyone; lifting it leaves the held one paused.
        assert!(execs.set_output_paused(true).is_empty());
        assert_eq!(execs.on_output(followed, window).unwrap().credit, 0);
        assert_eq!(
            execs.set_output_paused(false),
            [(followed, OUTPUT_WINDOW_BYTES)]
        );
        assert_eq!(
            execs.set_exec_output_paused(held, false),
            OUTPUT_WINDOW_BYTES
        );
        assert_eq!(execs.set_exec_output_paused(ExecId(9), false), 0);
    }

    #[test]
    fn output_past_the_limit_is_given_back_at_once_even_while_paused() {
        let now = Instant::now();
        let mut execs = Execs::new(100);
        let exec = execs.start(now, BOUND).unwrap();
        execs.set_output_paused(true);
        let step = execs.on_output(exec, 150).unwrap();
        assert_eq!((step.deliver, step.kill, step.credit), (100, true, 50));
        let step = execs.on_output(exec, 70).unwrap();
        assert_eq!((step.deliver, step.kill, step.credit), (0, false, 70));
        assert_eq!(execs.on_output(ExecId(9), 10), None, "nobody follows it");
    }
}
