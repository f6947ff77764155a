//! The session's processes: the messages that start, feed, kill, list and follow them, the
//! runtime's notices about them, and where their events go (to the client that follows the
//! process, or held for one that will).
//!
//! docs/protocol.md, "Requests, processes and flow control": an execution with a request id
//! may run beside others (up to `SANDBOX_MAX_SESSION_PROCESSES`), its events echo that id and
//! carry its `process_id`, and its stdin has a window the server acknowledges. Messages
//! without an id keep the compatible rules: one foreground execution at a time, which stdin,
//! `kill_process` and `reconnect` without a process id address.

use std::time::Instant;

use super::events::{ProcessKind, Reply};
use super::messages::{ExecMessage, Received, StdinMessage};
use super::processes::{Lookup, NewProcess};
use super::stdin_window::StdinWindow;
use super::{
    error_frames, Frame, Out, ProcessId, RequestId, SandboxControl, ServerEvent, Session, Status,
};
use crate::agent_protocol::{ExecId, Stream, TerminalSize};
use crate::runtime::exec::ExecOutcome;
use crate::runtime::RuntimeError;

impl Session {
    pub(super) fn exec(
        &mut self,
        exec: ExecMessage,
        id: Option<&RequestId>,
        out: &mut Vec<Out>,
        control: &mut dyn SandboxControl,
        now: Instant,
    ) {
        if id.is_none() && self.processes.foreground().is_some() {
            // The original clients match on this text.
            out.extend(error_frames(
                Status::ExecutionError,
                "An execution is already in progress.",
                id,
            ));
            return;
        }
        let running = self.processes.running_count();
        if running >= self.settings.max_session_processes {
            let message = format!(
                "this session already runs {running} processes (SANDBOX_MAX_SESSION_PROCESSES); wait for one to end"
            );
            out.extend(error_frames(Status::ExecutionError, &message, id));
            return;
        }
        let options = match exec.options {
            Ok(options) => options,
            Err(problem) => return out.extend(error_frames(Status::ExecutionError, &problem, id)),
        };
        let Some(sandbox) = self.sandbox else { return };
        let mut spec = options.spec(exec.language, &exec.code);
        // With an id, the client keeps to a stdin window; without, the compatible bound.
        let window = self.settings.stdin_window_bytes;
        let stdin = id.map(|_| StdinWindow::new(window));
        if stdin.is_some() {
            spec.stdin_bound = StdinWindow::hard_bound(window);
        }
        match control.start_exec(sandbox, spec) {
            Ok(exec_id) => {
                self.processes.start(NewProcess {
                    exec: exec_id,
                    request: id.cloned(),
                    language: Some(exec.language),
                    kind: if options.pty.is_some() {
                        ProcessKind::Terminal
                    } else {
                        ProcessKind::Exec
                    },
                    encoding: options.output_encoding,
                    started_unix_ms: self.unix_ms(now),
                    stdin,
                    followed: self.attached,
                    started: false,
                    context: None,
                });
            }
            Err(error) => out.extend(error_frames(Status::ExecutionError, &error.to_string(), id)),
        }
    }

    /// The process a message names, if it runs; else the error to answer with.
    fn running_target(
        &self,
        process: ProcessId,
        ended: Status,
        unknown: Status,
    ) -> Result<ProcessId, (Status, String)> {
        match self.processes.lookup(process) {
            Lookup::Running => Ok(process),
            Lookup::Ended => Err((ended, format!("process {process} has ended"))),
            Lookup::Unknown => Err((unknown, format!("no process {process}"))),
        }
    }

    pub(super) fn stdin(
        &mut self,
        process: Option<ProcessId>,
        stdin: Result<StdinMessage, String>,
        id: Option<&RequestId>,
        out: &mut Vec<Out>,
        control: &mut dyn SandboxControl,
    ) {
        // Closing the stdin of a process that has ended is already done (its end closed it):
        // `run()` closes stdin at once, and a short process may be gone by then.
        let only_eof = matches!(&stdin, Ok(message) if message.data.is_none() && message.eof);
        let target = match process {
            None => self
                .processes
                .foreground()
                .map(|process| process.id())
                .ok_or((
                    Status::ExecutionError,
                    "no execution is running to receive stdin".to_string(),
                )),
            Some(process) if only_eof && self.processes.lookup(process) == Lookup::Ended => return,
            Some(process) => {
                self.running_target(process, Status::StdinError, Status::ExecutionError)
            }
        };
        let (target, stdin) = match (target, stdin) {
            (Err((status, message)), _) => return out.extend(error_frames(status, &message, id)),
            (Ok(_), Err(problem)) => {
                return out.extend(error_frames(Status::StdinError, &problem, id))
            }
            (Ok(target), Ok(stdin)) => (target, stdin),
        };
        let (Some(sandbox), Some(entry)) = (self.sandbox, self.processes.get_mut(target)) else {
            return;
        };
        let exec = entry.exec();
        // The runtime may have seen the process end before this session heard of it (its
        // DONE is on the way): for a message that names the process, say so.
        let ended = |error: RuntimeError| match (error, process) {
            (RuntimeError::NoSuchExecution, Some(process)) => {
                format!("process {process} has ended")
            }
            (error, _) => error.to_string(),
        };
        if let Some(bytes) = stdin.data {
            let mut window = entry.stdin.clone();
            if let Some(window) = window.as_mut() {
                if let Err(problem) = window.accept(target, bytes.len()) {
                    return out.extend(error_frames(Status::StdinError, &problem, id));
                }
            }
            if let Err(error) = control.write_stdin(sandbox, exec, &bytes) {
                return out.extend(error_frames(Status::StdinError, &ended(error), id));
            }
            // Counted once the runtime took the bytes.
            if let Some(entry) = self.processes.get_mut(target) {
                entry.stdin = window;
            }
        }
        if stdin.eof {
            match control.close_stdin(sandbox, exec) {
                Ok(()) => {}
                Err(RuntimeError::NoSuchExecution) if process.is_some() => {}
                Err(error) => out.extend(error_frames(Status::StdinError, &ended(error), id)),
            }
        }
    }

    pub(super) fn kill_process(
        &mut self,
        process: Option<ProcessId>,
        id: Option<&RequestId>,
        out: &mut Vec<Out>,
        control: &mut dyn SandboxControl,
    ) {
        let target_named = process.is_some();
        let target = match process {
            None => self
                .processes
                .foreground()
                .map(|process| process.id())
                .ok_or((
                    Status::ExecutionForceKillError,
                    "no execution is running".to_string(),
                )),
            Some(process) => self.running_target(
                process,
                Status::ExecutionForceKillError,
                Status::ExecutionForceKillError,
            ),
        };
        let target = match target {
            Ok(target) => target,
            Err((status, message)) => return out.extend(error_frames(status, &message, id)),
        };
        let (Some(sandbox), Some(process)) = (self.sandbox, self.processes.get(target)) else {
            return;
        };
        match control.kill_exec(sandbox, process.exec()) {
            Ok(()) => out.push(Out::Send(Frame::new(
                ServerEvent::Status(Status::ExecutionForceKilled),
                id.cloned(),
                Some(target),
            ))),
            Err(error) => {
                let message = match (error, target_named) {
                    // It ended in the runtime; its DONE is on the way.
                    (RuntimeError::NoSuchExecution, true) => {
                        format!("process {target} has ended")
                    }
                    (error, _) => error.to_string(),
                };
                out.extend(error_frames(Status::ExecutionForceKillError, &message, id))
            }
        }
    }

    /// `resize`: a terminal process gets a new window size.
    pub(super) fn resize(
        &mut self,
        process: ProcessId,
        size: TerminalSize,
        id: Option<&RequestId>,
        out: &mut Vec<Out>,
        control: &mut dyn SandboxControl,
    ) {
        let target =
            match self.running_target(process, Status::ExecutionError, Status::ExecutionError) {
                Ok(target) => target,
                Err((status, message)) => return out.extend(error_frames(status, &message, id)),
            };
        let (Some(sandbox), Some(entry)) = (self.sandbox, self.processes.get(target)) else {
            return;
        };
        if entry.kind() != ProcessKind::Terminal {
            let message = format!("process {process} is not a terminal (it has no window size)");
            return out.extend(error_frames(Status::RequestError, &message, id));
        }
        match control.resize_terminal(sandbox, entry.exec(), size) {
            Ok(()) => out.push(Out::Send(Frame::new(
                ServerEvent::Reply(Reply::Resized {
                    cols: size.cols,
                    rows: size.rows,
                }),
                id.cloned(),
                Some(target),
            ))),
            Err(RuntimeError::NoSuchExecution) => {
                let message = format!("process {process} has ended");
                out.extend(error_frames(Status::ExecutionError, &message, id))
            }
            Err(error) => out.extend(error_frames(Status::ExecutionError, &error.to_string(), id)),
        }
    }

    /// `reconnect`: the client (back after a drop) follows every process again, and gets
    /// what was held of each, in process order. The compatible foreground execution comes
    /// first with its `SANDBOX_EXECUTION_RUNNING`, as the original protocol replays it.
    /// Before what was held of a process named in `received`, what was sent of it after the
    /// `seq` the client got last goes again (the drop may have swallowed it; see `resend`).
    pub(super) fn reconnect(
        &mut self,
        received: &Received,
        out: &mut Vec<Out>,
        control: &mut dyn SandboxControl,
    ) {
        // Processes that ended and were forgotten while the client was away: their end was
        // sent, and may have been lost (taken before following replays and forgets others).
        let forgotten: Vec<(ProcessId, u64)> = received
            .iter()
            .filter(|(process, _)| self.processes.get(**process).is_none())
            .map(|(process, after)| (*process, *after))
            .collect();
        if let Some(foreground) = self.processes.foreground_to_replay() {
            if let Some(process) = self.processes.get(foreground) {
                if process.is_started() {
                    out.push(Out::Send(
                        process.frame(ServerEvent::ExecRunning { stdin_window: None }),
                    ));
                }
            }
            self.follow(
                foreground,
                Following::AfterADrop(received.get(&foreground).copied()),
                out,
                control,
            );
        }
        for process in self.processes.ids() {
            if self
                .processes
                .get(process)
                .is_some_and(|process| !process.is_followed())
            {
                let resend_after = received.get(&process).copied();
                self.follow(process, Following::AfterADrop(resend_after), out, control);
            }
        }
        for (process, after) in forgotten {
            self.resend.resend_after(process, after, out);
        }
    }

    /// `attach_process`: this client follows `process` from now on, under request `id`.
    pub(super) fn attach_process(
        &mut self,
        process: ProcessId,
        id: Option<&RequestId>,
        out: &mut Vec<Out>,
        control: &mut dyn SandboxControl,
    ) {
        let Some(entry) = self.processes.get_mut(process) else {
            let message = match self.processes.lookup(process) {
                Lookup::Unknown => format!("no process {process}"),
                _ => format!("process {process} has ended"),
            };
            return out.extend(error_frames(Status::ExecutionError, &message, id));
        };
        let (stdin_window, stdin_written) = match entry.stdin.as_mut() {
            Some(stdin) => (Some(stdin.window()), Some(stdin.attach())),
            None => (None, None),
        };
        let reply = Reply::ProcessAttached {
            stdin_window,
            stdin_written,
        };
        out.push(Out::Send(Frame::new(
            ServerEvent::Reply(reply),
            id.cloned(),
            Some(process),
        )));
        self.follow(process, Following::TakenOver(id.cloned()), out, control);
    }

    pub(super) fn list_processes(&self, id: Option<&RequestId>, out: &mut Vec<Out>) {
        let reply = Reply::Processes(self.processes.entries());
        out.push(Out::Send(Frame::answering(ServerEvent::Reply(reply), id)));
    }

    /// The client follows `process`: what was sent of it after the `seq` it named (back after
    /// a drop) goes again, then what was held of it, its output is no longer paused, and its
    /// stdin acknowledgement catches up: in full after a drop, which may have swallowed the
    /// last one (a writer waiting for it would wait for ever).
    fn follow(
        &mut self,
        process: ProcessId,
        following: Following,
        out: &mut Vec<Out>,
        control: &mut dyn SandboxControl,
    ) {
        let (request, after_a_drop) = match following {
            Following::AfterADrop(resend_after) => {
                if let Some(after) = resend_after {
                    self.resend.resend_after(process, after, out);
                }
                (None, true)
            }
            Following::TakenOver(request) => (request, false),
        };
        let held = self.processes.take_held(process);
        let Some(entry) = self.processes.get_mut(process) else {
            return;
        };
        entry.follow(request);
        // Before what was held, which may end with the process's DONE: nothing comes after it.
        if after_a_drop {
            if let Some(written) = entry.stdin.as_mut().and_then(StdinWindow::ack_again) {
                out.push(Out::Send(entry.frame(ServerEvent::StdinAck { written })));
            }
        }
        for (seq, event) in held {
            self.resend.send(entry.frame(event).numbered(seq), out);
        }
        if let Some(written) = entry.stdin.as_mut().and_then(StdinWindow::take_ack) {
            out.push(Out::Send(entry.frame(ServerEvent::StdinAck { written })));
        }
        if std::mem::take(&mut entry.paused) {
            if let Some(sandbox) = self.sandbox {
                control.set_exec_output_paused(sandbox, entry.exec(), false);
            }
        }
        self.processes.forget_if_done(process);
        self.resume_held_if_room(control);
    }

    /// An event of `process`: sent to the client that follows it, or held.
    pub(super) fn emit_event(
        &mut self,
        out: &mut Vec<Out>,
        process: ProcessId,
        event: ServerEvent,
        control: &mut dyn SandboxControl,
    ) {
        self.emit(out, process, event, control)
    }

    fn emit(
        &mut self,
        out: &mut Vec<Out>,
        process: ProcessId,
        event: ServerEvent,
        control: &mut dyn SandboxControl,
    ) {
        let Some(entry) = self.processes.get_mut(process) else {
            return;
        };
        // Acknowledgements are not numbered: each one says all that was consumed so far.
        let seq = match event {
            ServerEvent::StdinAck { .. } => None,
            _ => entry.number(),
        };
        if self.attached && entry.is_followed() {
            self.resend.send(entry.frame(event).numbered(seq), out);
            return;
        }
        let is_foreground = self.processes.foreground_to_replay() == Some(process);
        if is_foreground && matches!(event, ServerEvent::ExecRunning { .. }) {
            // A compatible reconnect replays the foreground with a RUNNING of its own.
            return;
        }
        if self.processes.hold(process, seq, event) > self.settings.held_output_bytes {
            self.pause_held_processes(control);
        }
    }

    /// Too much is held: every running process nobody follows stops once its output window
    /// is used up (nothing is dropped); the followed ones go on.
    fn pause_held_processes(&mut self, control: &mut dyn SandboxControl) {
        let Some(sandbox) = self.sandbox else { return };
        for process in self.processes.ids() {
            let Some(entry) = self.processes.get_mut(process) else {
                continue;
            };
            if entry.is_running() && !entry.is_followed() && !entry.paused {
                entry.paused = true;
                control.set_exec_output_paused(sandbox, entry.exec(), true);
            }
        }
    }

    /// Held events were taken: if what remains is within the bound, the paused processes go
    /// on.
    fn resume_held_if_room(&mut self, control: &mut dyn SandboxControl) {
        if self.processes.held_bytes() > self.settings.held_output_bytes {
            return;
        }
        let Some(sandbox) = self.sandbox else { return };
        for process in self.processes.ids() {
            if let Some(entry) = self.processes.get_mut(process) {
                if std::mem::take(&mut entry.paused) {
                    control.set_exec_output_paused(sandbox, entry.exec(), false);
                }
            }
        }
    }

    pub(super) fn on_exec_started(
        &mut self,
        exec: ExecId,
        out: &mut Vec<Out>,
        control: &mut dyn SandboxControl,
    ) {
        let Some(process) = self.processes.of_exec(exec) else {
            return;
        };
        let Some(entry) = self.processes.get_mut(process) else {
            return;
        };
        entry.mark_started();
        let stdin_window = entry.stdin.as_ref().map(StdinWindow::window);
        let event = match entry.context() {
            Some(context_id) => ServerEvent::CellRunning {
                context_id: context_id.to_string(),
            },
            None => ServerEvent::ExecRunning { stdin_window },
        };
        self.emit(out, process, event, control);
    }

    pub(super) fn on_exec_spawn_failed(
        &mut self,
        exec: ExecId,
        message: &str,
        out: &mut Vec<Out>,
        control: &mut dyn SandboxControl,
    ) {
        let Some(process) = self.processes.of_exec(exec) else {
            return;
        };
        let text = format!("cannot start the process: {message}");
        let Some(entry) = self.processes.get_mut(process) else {
            return;
        };
        if let Some(context_id) = entry.context().map(str::to_string) {
            // A cell the agent refused (its context died meanwhile): said as the context's
            // error, and the context goes on with its queue.
            let follower = entry.follower().cloned();
            if self.attached && entry.is_followed() {
                out.extend(error_frames(
                    Status::CodeContextError,
                    message,
                    follower.as_ref(),
                ));
            }
            self.processes.remove(process);
            self.on_cell_finished(&context_id, process, out, control);
            return;
        }
        if self.attached && entry.is_followed() {
            out.extend(error_frames(
                Status::ExecutionError,
                &text,
                entry.follower(),
            ));
            self.processes.remove(process);
            return;
        }
        // Nobody follows it now: the refusal waits with its other events for the client that
        // will (its exec is still waiting for an answer).
        entry.end_unstarted();
        let events = [
            ServerEvent::StatusWithMessage(Status::ExecutionError, text.clone()),
            ServerEvent::Error(text),
        ];
        for event in events {
            self.processes.hold(process, None, event);
        }
    }

    pub(super) fn on_output(
        &mut self,
        exec: ExecId,
        stream: Stream,
        data: Vec<u8>,
        out: &mut Vec<Out>,
        control: &mut dyn SandboxControl,
    ) {
        let Some(process) = self.processes.of_exec(exec) else {
            return;
        };
        let framed = self
            .processes
            .get_mut(process)
            .and_then(|entry| entry.push_output(stream, data));
        if let Some(event) = framed {
            self.emit(out, process, event, control);
        }
    }

    pub(super) fn on_stdin_written(&mut self, exec: ExecId, count: u32) {
        let Some(process) = self.processes.of_exec(exec) else {
            return;
        };
        if let Some(stdin) = self
            .processes
            .get_mut(process)
            .and_then(|entry| entry.stdin.as_mut())
        {
            stdin.on_consumed(count);
        }
    }

    pub(super) fn on_exec_finished(
        &mut self,
        exec: ExecId,
        outcome: &ExecOutcome,
        out: &mut Vec<Out>,
        control: &mut dyn SandboxControl,
    ) {
        let Some(process) = self.processes.of_exec(exec) else {
            return;
        };
        let outcome = &self.cell_outcome(exec, outcome);
        let context = self
            .processes
            .get(process)
            .and_then(|entry| entry.context().map(str::to_string));
        let mut events = Vec::new();
        if let Some(entry) = self.processes.get_mut(process) {
            events = entry.finish(outcome);
            // The last acknowledgement goes before the end, so that every byte consumed is
            // acknowledged.
            if let Some(written) = entry.stdin.as_mut().and_then(StdinWindow::take_ack) {
                let done = events.len().saturating_sub(1);
                events.insert(done, ServerEvent::StdinAck { written });
            }
        }
        for event in events {
            self.emit(out, process, event, control);
        }
        self.processes.forget_if_done(process);
        if let Some(context_id) = context {
            self.on_cell_finished(&context_id, process, out, control);
        }
    }

    /// Frame the merged output and acknowledge the stdin consumed; called after each batch of
    /// notices, so that frames are neither one per read nor delayed, and acknowledgements are
    /// one per batch at most.
    pub fn flush_output(&mut self, control: &mut dyn SandboxControl) -> Vec<Out> {
        let mut out = Vec::new();
        for (process, event) in self.processes.frame_all_pending() {
            self.emit(&mut out, process, event, control);
        }
        self.flush_file_acks(&mut out);
        if !self.attached {
            return out;
        }
        for process in self.processes.ids() {
            let Some(entry) = self.processes.get_mut(process) else {
                continue;
            };
            if !entry.is_followed() {
                continue;
            }
            if let Some(written) = entry.stdin.as_mut().and_then(StdinWindow::take_ack) {
                out.push(Out::Send(entry.frame(ServerEvent::StdinAck { written })));
            }
        }
        out
    }
}

/// How a client comes to follow a process.
enum Following {
    /// `reconnect`: the same client, back after a drop, with the `seq` it got last (if it
    /// said).
    AfterADrop(Option<u64>),
    /// `attach_process`: a client takes the process over, under its own request id if given.
    TakenOver(Option<RequestId>),
}
