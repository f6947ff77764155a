//! The executions of one session, by process id: which runtime execution each one is, who asked
//! for it, how its output is framed, and what is held for a client that is away.
//!
//! Today a session runs one execution at a time, the *foreground* one (the compatible
//! protocol's rule); the table is keyed by process id so that several can run side by side
//! (issue 12) without another restructuring. A process that ended while its events are held
//! stays in the table until they are replayed.

use std::collections::{BTreeMap, VecDeque};

use super::events::{ExecDone, OutputEncoding, ServerEvent};
use super::ids::{ProcessId, RequestId};
use super::text::{base64_encode, Utf8Stream};
use crate::agent_protocol::{ExecId, Language, Stream};
use crate::runtime::exec::ExecOutcome;

#[derive(Debug)]
pub struct Process {
    /// The runtime's name of the execution.
    exec: ExecId,
    /// The request that started it (`None`: an id-less message, or adopted after a restore).
    request: Option<RequestId>,
    /// `None` for an execution adopted after a restore (the manifest does not say).
    language: Option<Language>,
    encoding: OutputEncoding,
    stdout: Utf8Stream,
    stderr: Utf8Stream,
    /// Output not yet framed: consecutive chunks of one stream are merged into one frame.
    pending: Option<(Stream, Vec<u8>)>,
    running: bool,
    /// Events kept for a client that is away, in order.
    held: VecDeque<ServerEvent>,
}

impl Process {
    fn new(
        exec: ExecId,
        request: Option<RequestId>,
        language: Option<Language>,
        encoding: OutputEncoding,
    ) -> Self {
        Process {
            exec,
            request,
            language,
            encoding,
            stdout: Utf8Stream::default(),
            stderr: Utf8Stream::default(),
            pending: None,
            running: true,
            held: VecDeque::new(),
        }
    }

    pub fn exec(&self) -> ExecId {
        self.exec
    }

    pub fn encoding(&self) -> OutputEncoding {
        self.encoding
    }

    /// Output arrived: merged with what is pending if it is the same stream; otherwise what
    /// was pending is returned framed, and this waits.
    pub fn push_output(&mut self, stream: Stream, data: Vec<u8>) -> Option<ServerEvent> {
        match self.pending.as_mut() {
            Some((pending_stream, bytes)) if *pending_stream == stream => {
                bytes.extend_from_slice(&data);
                None
            }
            _ => {
                let framed = self.frame_pending();
                self.pending = Some((stream, data));
                framed
            }
        }
    }

    /// The pending output as one event (none if it is only part of a character so far).
    pub fn frame_pending(&mut self) -> Option<ServerEvent> {
        let (stream, bytes) = self.pending.take()?;
        let data = match self.encoding {
            OutputEncoding::Base64 => base64_encode(&bytes),
            OutputEncoding::Text => {
                let decoder = match stream {
                    Stream::Stdout => &mut self.stdout,
                    Stream::Stderr => &mut self.stderr,
                };
                let text = decoder.push(&bytes);
                if text.is_empty() {
                    return None;
                }
                text
            }
        };
        Some(ServerEvent::Output {
            stream,
            data,
            encoding: self.encoding,
        })
    }

    /// It ended: the rest of its output, then its `SANDBOX_EXECUTION_DONE`.
    pub fn finish(&mut self, outcome: &ExecOutcome) -> Vec<ServerEvent> {
        self.running = false;
        let mut events: Vec<ServerEvent> = self.frame_pending().into_iter().collect();
        // Bytes of a character cut off by the end become U+FFFD rather than vanish.
        for (stream, leftover) in [
            (Stream::Stdout, self.stdout.finish()),
            (Stream::Stderr, self.stderr.finish()),
        ] {
            if !leftover.is_empty() {
                events.push(ServerEvent::Output {
                    stream,
                    data: leftover,
                    encoding: OutputEncoding::Text,
                });
            }
        }
        events.push(ServerEvent::Done(ExecDone::from(outcome)));
        events
    }
}

/// What a listing shows of a process (`list_processes`, issue 12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessView {
    pub process_id: ProcessId,
    pub request: Option<RequestId>,
    pub language: Option<Language>,
    pub running: bool,
}

#[derive(Debug, Default)]
pub struct Processes {
    table: BTreeMap<ProcessId, Process>,
    /// The last process id given out (ids start at 1).
    last_id: u64,
    /// The compatible protocol's one execution: stdin, kill_process and reconnect without a
    /// process id address it, and a second one is refused while it runs.
    foreground: Option<ProcessId>,
    /// Bytes of the held events (their frames' length), over all processes.
    held_bytes: usize,
}

impl Processes {
    /// A new running process; with `foreground`, the one id-less messages address.
    pub fn start(
        &mut self,
        exec: ExecId,
        request: Option<RequestId>,
        language: Option<Language>,
        encoding: OutputEncoding,
        foreground: bool,
    ) -> ProcessId {
        self.last_id += 1;
        let id = ProcessId(self.last_id);
        self.table
            .insert(id, Process::new(exec, request, language, encoding));
        if foreground {
            self.foreground = Some(id);
        }
        id
    }

    /// The running foreground process.
    pub fn foreground(&self) -> Option<(ProcessId, &Process)> {
        let id = self.foreground?;
        self.table
            .get(&id)
            .filter(|process| process.running)
            .map(|process| (id, process))
    }

    /// Whether any process runs.
    pub fn any_running(&self) -> bool {
        self.table.values().any(|process| process.running)
    }

    /// The running process of runtime execution `exec`.
    pub fn of_exec(&self, exec: ExecId) -> Option<ProcessId> {
        self.table
            .iter()
            .find(|(_, process)| process.running && process.exec == exec)
            .map(|(id, _)| *id)
    }

    pub fn get_mut(&mut self, id: ProcessId) -> Option<&mut Process> {
        self.table.get_mut(&id)
    }

    /// Every process's pending output, framed (after a batch of notices).
    pub fn frame_all_pending(&mut self) -> Vec<(ProcessId, ServerEvent)> {
        self.table
            .iter_mut()
            .filter_map(|(id, process)| process.frame_pending().map(|event| (*id, event)))
            .collect()
    }

    /// Forget a process that never started (its spawn failed).
    pub fn remove(&mut self, id: ProcessId) {
        if let Some(process) = self.table.remove(&id) {
            self.held_bytes -= held_size(&process.held).min(self.held_bytes);
        }
        if self.foreground == Some(id) {
            self.foreground = None;
        }
    }

    /// Forget an ended process unless events of it are held.
    pub fn forget_if_done(&mut self, id: ProcessId) {
        let done = self
            .table
            .get(&id)
            .is_some_and(|process| !process.running && process.held.is_empty());
        if done {
            self.remove(id);
        }
    }

    /// Keep `event` of process `id` for later; returns the bytes held now, in all.
    pub fn hold(&mut self, id: ProcessId, event: ServerEvent) -> usize {
        if let Some(process) = self.table.get_mut(&id) {
            self.held_bytes += event.to_json().len();
            process.held.push_back(event);
        }
        self.held_bytes
    }

    pub fn has_held(&self) -> bool {
        self.table.values().any(|process| !process.held.is_empty())
    }

    /// Everything held, process by process in the order they started; ended processes are
    /// forgotten.
    pub fn take_held(&mut self) -> Vec<ServerEvent> {
        let mut events = Vec::new();
        for process in self.table.values_mut() {
            events.extend(process.held.drain(..));
        }
        self.table.retain(|_, process| process.running);
        if self
            .foreground
            .is_some_and(|id| !self.table.contains_key(&id))
        {
            self.foreground = None;
        }
        self.held_bytes = 0;
        events
    }

    /// The processes, in the order they started.
    pub fn views(&self) -> Vec<ProcessView> {
        self.table
            .iter()
            .map(|(id, process)| ProcessView {
                process_id: *id,
                request: process.request.clone(),
                language: process.language,
                running: process.running,
            })
            .collect()
    }
}

fn held_size(events: &VecDeque<ServerEvent>) -> usize {
    events.iter().map(|event| event.to_json().len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_protocol::ExitStatus;
    use crate::runtime::exec::Reason;
    use crate::session::events::Status;

    fn outcome() -> ExecOutcome {
        ExecOutcome {
            status: ExitStatus::Code(0),
            reason: Reason::Exited,
            duration_ms: 1,
            truncated: false,
        }
    }

    fn output(data: &str) -> ServerEvent {
        ServerEvent::Output {
            stream: Stream::Stdout,
            data: data.into(),
            encoding: OutputEncoding::Text,
        }
    }

    #[test]
    fn process_ids_are_never_reused_and_each_maps_its_execution() {
        let mut processes = Processes::default();
        let first = processes.start(
            ExecId(1),
            None,
            Some(Language::Bash),
            OutputEncoding::Text,
            true,
        );
        assert_eq!(first, ProcessId(1));
        assert_eq!(processes.of_exec(ExecId(1)), Some(first));
        assert_eq!(processes.foreground().map(|(id, _)| id), Some(first));
        let events = processes.get_mut(first).unwrap().finish(&outcome());
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].status(), Some(Status::ExecutionDone));
        assert!(processes.foreground().is_none() && !processes.any_running());
        assert_eq!(
            processes.of_exec(ExecId(1)),
            None,
            "an ended process takes no more output"
        );
        processes.forget_if_done(first);
        let second = processes.start(
            ExecId(1),
            Some(RequestId::Number(3)),
            None,
            OutputEncoding::Base64,
            true,
        );
        assert_eq!(second, ProcessId(2));
        assert_eq!(
            processes.views(),
            [ProcessView {
                process_id: second,
                request: Some(RequestId::Number(3)),
                language: None,
                running: true
            }]
        );
    }

    #[test]
    fn output_is_merged_per_stream_and_split_characters_wait() {
        let mut processes = Processes::default();
        let id = processes.start(ExecId(4), None, None, OutputEncoding::Text, true);
        let process = processes.get_mut(id).unwrap();
        assert_eq!(process.push_output(Stream::Stdout, b"a".to_vec()), None);
        assert_eq!(process.push_output(Stream::Stdout, b"b".to_vec()), None);
        assert_eq!(
            process.push_output(Stream::Stderr, b"\xe2\x82".to_vec()),
            Some(output("ab"))
        );
        assert_eq!(process.frame_pending(), None, "half a euro sign waits");
        let events = process.finish(&outcome());
        assert_eq!(
            events[0],
            ServerEvent::Output {
                stream: Stream::Stderr,
                data: "\u{fffd}".into(),
                encoding: OutputEncoding::Text
            }
        );
        assert_eq!(events[1].status(), Some(Status::ExecutionDone));
    }

    #[test]
    fn held_events_keep_ended_processes_until_taken() {
        let mut processes = Processes::default();
        let id = processes.start(ExecId(1), None, None, OutputEncoding::Text, true);
        let size = output("x").to_json().len();
        assert_eq!(processes.hold(id, output("x")), size);
        processes.get_mut(id).unwrap().finish(&outcome());
        processes.forget_if_done(id);
        assert!(processes.has_held());
        assert_eq!(processes.views().len(), 1, "kept while its events are held");
        assert_eq!(processes.take_held(), [output("x")]);
        assert!(!processes.has_held());
        assert!(processes.views().is_empty());
        assert_eq!(
            processes.hold(id, output("y")),
            0,
            "gone: nothing to hold for"
        );
    }
}
