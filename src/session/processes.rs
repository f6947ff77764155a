//! The processes of one session, by process id: which runtime execution each one is, who asked
//! for it and whose request id its events carry, how its output is framed, its stdin window,
//! and what is held for a client that does not follow it.
//!
//! A process id is the runtime's execution id (`ExecId`): the agent never reuses one in a
//! sandbox, also across checkpoint and restore, so the ids clients see are unique for the
//! sandbox's life and a restored session agrees with the agent without a counter of its own.
//!
//! Several processes run at once (protocol 2). The compatible protocol's one execution, the
//! *foreground* one, is the process started without a request id: stdin, kill_process and
//! reconnect without a process id address it, and a second one is refused while it runs.
//!
//! A process is *followed* while a client receives its events as they happen; otherwise they
//! are held, and replayed by `reconnect` (every process) or `attach_process` (one). A process
//! that ended while its events are held stays in the table until they are replayed; at most
//! `max_ended` such processes are kept (the oldest is forgotten beyond that), so a session
//! whose clients never collect them cannot grow without bound.

use std::collections::{BTreeMap, VecDeque};

use super::events::{ExecDone, Frame, OutputEncoding, ProcessEntry, ProcessKind, ServerEvent};
use super::ids::{ProcessId, RequestId};
use super::stdin_window::StdinWindow;
use super::text::{base64_encode, Utf8Stream};
use crate::agent_protocol::{ExecId, Language, Stream};
use crate::runtime::exec::ExecOutcome;

/// The process id clients see for runtime execution `exec`.
pub fn process_id(exec: ExecId) -> ProcessId {
    ProcessId(u64::from(exec.0))
}

/// What starting a process needs to know.
#[derive(Debug, Clone)]
pub struct NewProcess {
    pub exec: ExecId,
    /// The request that started it (`None`: the compatible foreground execution).
    pub request: Option<RequestId>,
    /// `None` for an execution adopted after a restore whose manifest does not say.
    pub language: Option<Language>,
    pub kind: ProcessKind,
    pub encoding: OutputEncoding,
    pub started_unix_ms: u64,
    /// Its stdin flow control (protocol 2); `None`: the compatible rules.
    pub stdin: Option<StdinWindow>,
    /// A client receives its events from the start.
    pub followed: bool,
    /// It runs already (adopted after a restore); else its `SANDBOX_EXECUTION_RUNNING` is
    /// to come.
    pub started: bool,
    /// A code cell of this code context (issue 13).
    pub context: Option<String>,
}

#[derive(Debug)]
pub struct Process {
    exec: ExecId,
    request: Option<RequestId>,
    /// The request id its events carry: the starting request's, then that of the latest
    /// `attach_process`.
    follower: Option<RequestId>,
    language: Option<Language>,
    kind: ProcessKind,
    encoding: OutputEncoding,
    started_unix_ms: u64,
    stdout: Utf8Stream,
    stderr: Utf8Stream,
    /// Output not yet framed: consecutive chunks of one stream are merged into one frame.
    pending: Option<(Stream, Vec<u8>)>,
    running: bool,
    /// Its `SANDBOX_EXECUTION_RUNNING` happened.
    started: bool,
    followed: bool,
    /// Its output is paused in the runtime because too much is held.
    pub paused: bool,
    pub stdin: Option<StdinWindow>,
    /// Events kept for a client that does not follow it, in order, with their numbers.
    held: VecDeque<(Option<u64>, ServerEvent)>,
    /// The number of its latest event (see [`Process::number`]).
    last_seq: u64,
    context: Option<String>,
    /// A code cell's event being assembled from its parts (see `code`); `None` once it grew
    /// past its bound (the rest of it is dropped, and so is the event).
    pub cell_event: Option<Vec<u8>>,
    /// A code cell whose context died under it.
    pub context_died: bool,
}

impl Process {
    fn new(new: NewProcess) -> Self {
        Process {
            exec: new.exec,
            follower: new.request.clone(),
            request: new.request,
            language: new.language,
            kind: new.kind,
            encoding: new.encoding,
            started_unix_ms: new.started_unix_ms,
            stdout: Utf8Stream::default(),
            stderr: Utf8Stream::default(),
            pending: None,
            running: true,
            started: new.started,
            followed: new.followed,
            paused: false,
            stdin: new.stdin,
            held: VecDeque::new(),
            last_seq: 0,
            context: new.context,
            cell_event: Some(Vec::new()),
            context_died: false,
        }
    }

    pub fn exec(&self) -> ExecId {
        self.exec
    }

    pub fn id(&self) -> ProcessId {
        process_id(self.exec)
    }

    pub fn encoding(&self) -> OutputEncoding {
        self.encoding
    }

    pub fn request(&self) -> Option<&RequestId> {
        self.request.as_ref()
    }

    /// The request id its events carry.
    pub fn follower(&self) -> Option<&RequestId> {
        self.follower.as_ref()
    }

    pub fn language(&self) -> Option<Language> {
        self.language
    }

    pub fn kind(&self) -> ProcessKind {
        self.kind
    }

    /// The code context of a code cell.
    pub fn context(&self) -> Option<&str> {
        self.context.as_deref()
    }

    pub fn started_unix_ms(&self) -> u64 {
        self.started_unix_ms
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    pub fn is_followed(&self) -> bool {
        self.followed
    }

    pub fn is_started(&self) -> bool {
        self.started
    }

    pub fn mark_started(&mut self) {
        self.started = true;
    }

    /// `event` as a frame of this process: with the follower's request id and its id.
    pub fn frame(&self, event: ServerEvent) -> Frame {
        Frame::new(event, self.follower.clone(), Some(self.id()))
    }

    /// The number of its next event (1, 2, ...): only a process started with a request id
    /// numbers its events (`seq`, see `resend`); the compatible foreground one does not.
    pub fn number(&mut self) -> Option<u64> {
        self.request.as_ref()?;
        self.last_seq += 1;
        Some(self.last_seq)
    }

    /// A client follows it from now on; with `request`, its events carry that id.
    pub fn follow(&mut self, request: Option<RequestId>) {
        self.followed = true;
        if request.is_some() {
            self.follower = request;
        }
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

    /// It could not be started: it ends without output or DONE (its refusal is its answer).
    pub fn end_unstarted(&mut self) {
        self.running = false;
        self.paused = false;
    }

    /// It ended: the rest of its output, then its `SANDBOX_EXECUTION_DONE`.
    pub fn finish(&mut self, outcome: &ExecOutcome) -> Vec<ServerEvent> {
        self.running = false;
        self.paused = false;
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

    fn entry(&self) -> ProcessEntry {
        ProcessEntry {
            process_id: self.id(),
            kind: self.kind,
            request: self.request.clone(),
            language: self.language,
            running: self.running,
            started_unix_ms: self.started_unix_ms,
            context: self.context.clone(),
        }
    }
}

/// What a process id names, for the errors of the messages that address one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Running,
    /// It ended (its events may still be held).
    Ended,
    /// No process of this session has this id.
    Unknown,
}

#[derive(Debug, Default)]
pub struct Processes {
    table: BTreeMap<ProcessId, Process>,
    /// The highest process id seen: lower ids that are not in the table have ended.
    highest: Option<ProcessId>,
    /// The compatible protocol's one execution: the latest started without a request id.
    foreground: Option<ProcessId>,
    /// Bytes of the held events (their frames' length), over all processes.
    held_bytes: usize,
    /// Ended processes kept for their held events, at most (0: no bound).
    max_ended: usize,
}

impl Processes {
    pub fn new(max_ended: usize) -> Self {
        Processes {
            max_ended,
            ..Processes::default()
        }
    }

    /// A new running process.
    pub fn start(&mut self, new: NewProcess) -> ProcessId {
        let id = process_id(new.exec);
        if new.request.is_none() {
            self.foreground = Some(id);
        }
        self.highest = self.highest.max(Some(id));
        if let Some(old) = self.table.insert(id, Process::new(new)) {
            // Ids are never reused; should the runtime say otherwise, forget the old one.
            self.held_bytes = self.held_bytes.saturating_sub(held_size(&old.held));
        }
        id
    }

    /// The running foreground process.
    pub fn foreground(&self) -> Option<&Process> {
        self.table
            .get(&self.foreground?)
            .filter(|process| process.running)
    }

    /// The foreground process if it ended or is not followed: what a compatible `reconnect`
    /// replays (its `SANDBOX_EXECUTION_RUNNING`, then what is held).
    pub fn foreground_to_replay(&self) -> Option<ProcessId> {
        let id = self.foreground?;
        self.table
            .get(&id)
            .filter(|process| !process.followed)
            .map(|_| id)
    }

    pub fn running(&self) -> impl Iterator<Item = &Process> {
        self.table.values().filter(|process| process.running)
    }

    /// Whether any process runs.
    pub fn any_running(&self) -> bool {
        self.running().next().is_some()
    }

    pub fn running_count(&self) -> usize {
        self.running().count()
    }

    /// The running process of runtime execution `exec`.
    pub fn of_exec(&self, exec: ExecId) -> Option<ProcessId> {
        let id = process_id(exec);
        self.table
            .get(&id)
            .filter(|process| process.running)
            .map(|_| id)
    }

    pub fn lookup(&self, id: ProcessId) -> Lookup {
        match self.table.get(&id) {
            Some(process) if process.running => Lookup::Running,
            Some(_) => Lookup::Ended,
            None if self.highest.is_some_and(|highest| id <= highest) => Lookup::Ended,
            None => Lookup::Unknown,
        }
    }

    pub fn get(&self, id: ProcessId) -> Option<&Process> {
        self.table.get(&id)
    }

    pub fn get_mut(&mut self, id: ProcessId) -> Option<&mut Process> {
        self.table.get_mut(&id)
    }

    pub fn ids(&self) -> Vec<ProcessId> {
        self.table.keys().copied().collect()
    }

    /// Every process's pending output, framed (after a batch of notices).
    pub fn frame_all_pending(&mut self) -> Vec<(ProcessId, ServerEvent)> {
        self.table
            .iter_mut()
            .filter_map(|(id, process)| process.frame_pending().map(|event| (*id, event)))
            .collect()
    }

    /// Forget a process (its spawn failed, or its held events are no use any more).
    pub fn remove(&mut self, id: ProcessId) {
        if let Some(process) = self.table.remove(&id) {
            self.held_bytes = self.held_bytes.saturating_sub(held_size(&process.held));
        }
    }

    /// Forget an ended process unless events of it are held; keep at most `max_ended`
    /// ended ones.
    pub fn forget_if_done(&mut self, id: ProcessId) {
        let done = self
            .table
            .get(&id)
            .is_some_and(|process| !process.running && process.held.is_empty());
        if done {
            self.remove(id);
        }
        let ended: Vec<ProcessId> = self
            .table
            .iter()
            .filter(|(_, process)| !process.running)
            .map(|(id, _)| *id)
            .collect();
        if self.max_ended > 0 && ended.len() > self.max_ended {
            for id in &ended[..ended.len() - self.max_ended] {
                eprintln!(
                    "session: forgetting the held events of process {id}: more than {} ended processes were never collected",
                    self.max_ended
                );
                self.remove(*id);
            }
        }
    }

    /// Keep `event` (number `seq`) of process `id` for later; returns the bytes held now,
    /// in all.
    pub fn hold(&mut self, id: ProcessId, seq: Option<u64>, event: ServerEvent) -> usize {
        if let Some(process) = self.table.get_mut(&id) {
            self.held_bytes += event.to_json().len();
            process.held.push_back((seq, event));
        }
        self.held_bytes
    }

    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// What is held of process `id`, in order, with the events' numbers, taken.
    pub fn take_held(&mut self, id: ProcessId) -> Vec<(Option<u64>, ServerEvent)> {
        let Some(process) = self.table.get_mut(&id) else {
            return Vec::new();
        };
        let events: Vec<(Option<u64>, ServerEvent)> = process.held.drain(..).collect();
        self.held_bytes = self
            .held_bytes
            .saturating_sub(events.iter().map(|(_, event)| event.to_json().len()).sum());
        events
    }

    /// No client follows any process any more (it went away).
    pub fn unfollow_all(&mut self) {
        for process in self.table.values_mut() {
            process.followed = false;
        }
    }

    /// The processes, in the order they started.
    pub fn entries(&self) -> Vec<ProcessEntry> {
        self.table.values().map(Process::entry).collect()
    }
}

fn held_size(events: &VecDeque<(Option<u64>, ServerEvent)>) -> usize {
    events.iter().map(|(_, event)| event.to_json().len()).sum()
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

    fn new(exec: u32, request: Option<RequestId>) -> NewProcess {
        NewProcess {
            exec: ExecId(exec),
            request,
            language: Some(Language::Bash),
            kind: ProcessKind::Exec,
            encoding: OutputEncoding::Text,
            started_unix_ms: 5,
            stdin: None,
            followed: true,
            started: false,
            context: None,
        }
    }

    #[test]
    fn process_ids_are_the_execution_ids_and_ended_ones_are_told_apart() {
        let mut processes = Processes::new(16);
        let first = processes.start(new(1, None));
        assert_eq!(first, ProcessId(1));
        assert_eq!(processes.of_exec(ExecId(1)), Some(first));
        assert_eq!(processes.foreground().map(Process::id), Some(first));
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
        let second = processes.start(new(4, Some(RequestId::Number(3))));
        assert_eq!(second, ProcessId(4));
        assert!(processes.foreground().is_none(), "started with an id");
        assert_eq!(processes.lookup(ProcessId(1)), Lookup::Ended);
        assert_eq!(processes.lookup(ProcessId(4)), Lookup::Running);
        assert_eq!(processes.lookup(ProcessId(5)), Lookup::Unknown);
        assert_eq!(
            processes.entries(),
            [ProcessEntry {
                process_id: second,
                kind: ProcessKind::Exec,
                request: Some(RequestId::Number(3)),
                language: Some(Language::Bash),
                running: true,
                started_unix_ms: 5,
                context: None,
            }]
        );
        let frame = processes.get(second).unwrap().frame(output("x"));
        assert_eq!(
            (frame.id, frame.process),
            (Some(RequestId::Number(3)), Some(second))
        );
        processes
            .get_mut(second)
            .unwrap()
            .follow(Some(RequestId::Text("9".into())));
        let frame = processes.get(second).unwrap().frame(output("x"));
        assert_eq!(
            frame.id,
            Some(RequestId::Text("9".into())),
            "attached: the new id"
        );
    }

    #[test]
    fn output_is_merged_per_stream_and_split_characters_wait() {
        let mut processes = Processes::new(16);
        let id = processes.start(new(4, None));
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
        let mut processes = Processes::new(16);
        let id = processes.start(new(1, None));
        let size = output("x").to_json().len();
        assert_eq!(processes.hold(id, None, output("x")), size);
        processes.get_mut(id).unwrap().finish(&outcome());
        processes.forget_if_done(id);
        assert_eq!(processes.held_bytes(), size);
        assert_eq!(
            processes.entries().len(),
            1,
            "kept while its events are held"
        );
        assert_eq!(processes.take_held(id), [(None, output("x"))]);
        assert_eq!(processes.held_bytes(), 0);
        processes.forget_if_done(id);
        assert!(processes.entries().is_empty());
        assert_eq!(
            processes.hold(id, None, output("y")),
            0,
            "gone: nothing to hold for"
        );
    }

    #[test]
    fn at_most_max_ended_uncollected_processes_are_kept() {
        let mut processes = Processes::new(2);
        for exec in 1..=4 {
            let id = processes.start(new(exec, Some(RequestId::Number(exec.into()))));
            processes.hold(id, None, output("x"));
            processes.get_mut(id).unwrap().finish(&outcome());
            processes.forget_if_done(id);
        }
        assert_eq!(processes.ids(), [ProcessId(3), ProcessId(4)]);
        assert_eq!(processes.held_bytes(), 2 * output("x").to_json().len());
    }
}
