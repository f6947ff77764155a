//! The WebSocket session: any init text, any later text, with runtime notices and server
//! events interleaved, against a fake [`SandboxControl`] (as `src/session/tests.rs` does).
//!
//! The input is a script of `\n`-separated records, readable so that the corpus can be written
//! by hand from docs/protocol.md:
//!
//! ```text
//! #cs                           optional first record: server settings (below)
//! {"idle_timeout": 300}         the init message (or `!W{...}`: a session restored from a
//!                               checkpoint whose saved settings are this JSON)
//! !R                            a record starting with `!` is a notice or event (below)
//! {"language":"bash","code":"echo hi"}    any other record is a client text message
//! ```
//!
//! Settings letters: `c` checkpoints enabled, `s` snapshots enabled, `n` network egress
//! available, `f` the sandbox cannot be acquired (server at capacity).
//!
//! Notices and events (the argument follows the letter directly):
//! `R` ready, `F<text>` start failed, `L<text>` sandbox lost, `D` deleted, `S[id]` execution
//! started, `X<text>` spawn failed, `o<bytes>` / `e<bytes>` stdout / stderr output (escapes:
//! `\n` for a line feed, `\xHH` for any byte), `E<reason><code>` / `K<reason><signal>`
//! execution finished with an exit code / by a signal (`reason` is a digit 0-5, the value a
//! decimal i32), `w<count>` stdin written, `@<id>` the execution notices that follow are about
//! execution `id` (else the latest started), `k` checkpointed notice, `r<text>` checkpoint
//! refused, `C` / `c<text>`
//! checkpoint saved / failed, `P` / `p<text>` / `Q<text>` snapshot saved / failed / failed and
//! the sandbox is gone, `t<seconds>` time passes and the server ticks, `A` a client attaches,
//! `a` the client goes away, `Z` server shutdown, `f` flush output, `x` the next call to the
//! runtime fails.
//!
//! The harness plays the server's part as `src/server/sessions.rs` does: text messages only
//! arrive from an attached client, a close detaches it, and an ended session is forgotten.
//! Settings are small (4 processes per session, a 64-byte stdin window, 100 bytes held) so
//! that the limits are reached.
//!
//! Checked: no panic; every frame is a JSON object with an `event` that docs/protocol.md
//! lists, every status is one it lists, every error status carries a `message` and is
//! followed by the matching `error` event (with the same request id); an `id` is a string or
//! an integer; close codes are documented ones and close reasons fit in a close frame (123
//! bytes); the session only uses the sandbox it was given and starts nothing on it once it
//! asked for its deletion, and never runs more processes at once than its limit.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent_protocol::{ExecId, ExitStatus, Stream};
use crate::runtime::exec::{ExecOutcome, Reason};
use crate::runtime::{ExecSpec, RuntimeError, RuntimeEvent, SandboxKey};
use crate::session::exec_options::ExecLimits;
use crate::session::{
    token, CreateOptions, Out, SandboxControl, SavedState, Session, SessionId, SessionSettings,
};
use crate::store::SavedSettings;

/// Every status of docs/protocol.md ("Status strings").
const STATUSES: [&str; 36] = [
    "SANDBOX_CREATING",
    "SANDBOX_RUNNING",
    "SANDBOX_NOT_FOUND",
    "SANDBOX_IN_USE",
    "SANDBOX_CREATION_ERROR",
    "SANDBOX_ERROR",
    "SANDBOX_EXECUTION_RUNNING",
    "SANDBOX_EXECUTION_DONE",
    "SANDBOX_EXECUTION_ERROR",
    "SANDBOX_EXECUTION_UNSUPPORTED_LANGUAGE_ERROR",
    "SANDBOX_EXECUTION_IN_PROGRESS_ERROR",
    "SANDBOX_EXECUTION_FORCE_KILLED",
    "SANDBOX_EXECUTION_FORCE_KILL_ERROR",
    "SANDBOX_STDIN_ERROR",
    "SANDBOX_CHECKPOINTING",
    "SANDBOX_CHECKPOINTED",
    "SANDBOX_CHECKPOINT_ERROR",
    "SANDBOX_RESTORING",
    "SANDBOX_RESTORE_ERROR",
    "SANDBOX_FILESYSTEM_SNAPSHOT_CREATING",
    "SANDBOX_FILESYSTEM_SNAPSHOT_CREATED",
    "SANDBOX_FILESYSTEM_SNAPSHOT_ERROR",
    "SANDBOX_DELETING",
    "SANDBOX_DELETED",
    "SANDBOX_LOCK_ACQUIRING",
    "SANDBOX_LOCK_ACQUIRED",
    "SANDBOX_LOCK_RELEASE_REQUESTED",
    "SANDBOX_LOCK_RENEWAL_ERROR",
    "SANDBOX_LOCK_RELEASING",
    "SANDBOX_LOCK_RELEASED",
    "SANDBOX_KILLING",
    "SANDBOX_KILLED",
    "SANDBOX_KILL_ERROR",
    "SANDBOX_PERMISSION_DENIAL_ERROR",
    "SANDBOX_REQUEST_ERROR",
    "SANDBOX_FILE_ERROR",
];

/// Every `event` of docs/protocol.md.
const EVENTS: [&str; 9] = [
    "status_update",
    "file_data",
    "file_ack",
    "sandbox_id",
    "stdout",
    "stderr",
    "error",
    "reply",
    "stdin_ack",
];

/// The settings' process limit.
const MAX_SESSION_PROCESSES: usize = 4;

/// Close codes of docs/protocol.md.
const CLOSE_CODES: [u16; 9] = [1000, 1001, 1003, 1008, 1009, 1011, 1013, 4000, 4001];

/// RFC 6455 §5.5: a control frame carries at most 125 bytes, 2 of them the code.
const MAX_CLOSE_REASON_BYTES: usize = 123;

/// The only sandbox the fake hands out.
const SANDBOX: SandboxKey = SandboxKey(7);

pub fn run(data: &[u8]) {
    let mut records = data.split(|&byte| byte == b'\n');
    let mut first = records.next().unwrap_or_default();
    let mut flags: &[u8] = &[];
    if let Some(letters) = first.strip_prefix(b"#") {
        flags = letters;
        first = records.next().unwrap_or_default();
    }
    let mut server = Server::new(flags);
    let Some(mut session) = server.start(first) else {
        return;
    };
    for record in records {
        if !server.step(&mut session, record) {
            return;
        }
    }
}

/// The fake runtime: hands out one sandbox, counts executions, can be told to fail.
#[derive(Default)]
struct FakeControl {
    at_capacity: bool,
    fail_next: bool,
    acquired: bool,
    deleted: bool,
    execs_started: u32,
    /// Executions started and not yet reported finished.
    running: Vec<ExecId>,
    /// Those of them that are file operations (bounded apart from processes).
    file_operations: Vec<ExecId>,
}

impl FakeControl {
    /// Checks a call is about the sandbox it was given; `Err` if told to fail.
    fn call(&mut self, sandbox: SandboxKey) -> Result<(), RuntimeError> {
        assert!(
            self.acquired,
            "the session used a sandbox it never acquired"
        );
        assert_eq!(sandbox, SANDBOX, "the session used another sandbox");
        if std::mem::take(&mut self.fail_next) {
            return Err(RuntimeError::Io("injected failure".into()));
        }
        Ok(())
    }

    fn exec_call(&mut self, sandbox: SandboxKey, exec: ExecId) -> Result<(), RuntimeError> {
        self.call(sandbox)?;
        if exec.0 == 0 || exec.0 > self.execs_started {
            return Err(RuntimeError::NoSuchExecution);
        }
        Ok(())
    }
}

impl SandboxControl for FakeControl {
    fn acquire(
        &mut self,
        _session: SessionId,
        _options: &CreateOptions,
    ) -> Result<SandboxKey, RuntimeError> {
        assert!(!self.acquired, "the session acquired a second sandbox");
        if self.at_capacity || std::mem::take(&mut self.fail_next) {
            return Err(RuntimeError::AtCapacity(1));
        }
        self.acquired = true;
        Ok(SANDBOX)
    }

    fn sandbox_id(&self, sandbox: SandboxKey) -> String {
        assert_eq!(sandbox, SANDBOX);
        "0123456789abcdef0123456789abcdef".into()
    }

    fn start_exec(&mut self, sandbox: SandboxKey, spec: ExecSpec) -> Result<ExecId, RuntimeError> {
        self.call(sandbox)?;
        assert!(
            !self.deleted,
            "an execution was started on a deleted sandbox"
        );
        assert!(spec.cwd.starts_with('/'));
        assert!(!spec.timeout.is_zero());
        let operations = self.file_operations.len();
        if spec.file.is_some() {
            assert!(
                operations < crate::session::files::MAX_FILE_TRANSFERS,
                "the session started more file operations than its limit"
            );
        } else {
            assert!(
                self.running.len() - operations < MAX_SESSION_PROCESSES,
                "the session started more processes than its limit"
            );
        }
        self.execs_started += 1;
        let exec = ExecId(self.execs_started);
        self.running.push(exec);
        if spec.file.is_some() {
            self.file_operations.push(exec);
        }
        Ok(exec)
    }

    fn write_stdin(
        &mut self,
        sandbox: SandboxKey,
        exec: ExecId,
        _data: &[u8],
    ) -> Result<(), RuntimeError> {
        self.exec_call(sandbox, exec)
    }

    fn close_stdin(&mut self, sandbox: SandboxKey, exec: ExecId) -> Result<(), RuntimeError> {
        self.exec_call(sandbox, exec)
    }

    fn kill_exec(&mut self, sandbox: SandboxKey, exec: ExecId) -> Result<(), RuntimeError> {
        self.exec_call(sandbox, exec)
    }

    fn delete(&mut self, sandbox: SandboxKey) {
        assert_eq!(sandbox, SANDBOX);
        self.deleted = true;
    }

    fn resize_terminal(
        &mut self,
        _sandbox: SandboxKey,
        _exec: ExecId,
        _size: crate::agent_protocol::TerminalSize,
    ) -> Result<(), RuntimeError> {
        Ok(())
    }
    fn set_exec_output_paused(&mut self, sandbox: SandboxKey, _exec: ExecId, _paused: bool) {
        // Executions of a restored session were started before it: any id may be paused.
        assert_eq!(sandbox, SANDBOX);
    }
    fn context_command(
        &mut self,
        sandbox: SandboxKey,
        _command: crate::agent_protocol::ContextCommand,
    ) -> Result<(), RuntimeError> {
        self.call(sandbox)
    }
}

/// The server's side of one session: its connection and its clock.
struct Server {
    settings: SessionSettings,
    control: FakeControl,
    attached: bool,
    now: Instant,
    /// The execution the next execution notices are about (`None`: the latest started).
    selected: Option<ExecId>,
}

impl Server {
    fn new(flags: &[u8]) -> Self {
        let has = |letter: u8| flags.contains(&letter);
        Server {
            settings: SessionSettings {
                checkpoint_enabled: has(b'c'),
                snapshot_enabled: has(b's'),
                default_idle_timeout: Duration::from_secs(300),
                max_idle_timeout: Duration::from_secs(3600),
                exec: ExecLimits {
                    default_timeout: Duration::from_secs(60),
                    max_timeout: Duration::from_secs(600),
                    max_code_bytes: 1000,
                },
                held_output_bytes: 100,
                resend_output_bytes: 1000,
                egress_unavailable: (!has(b'n'))
                    .then(|| "network egress is disabled on this server".to_string()),
                store_timeout: Duration::from_secs(30),
                max_session_processes: MAX_SESSION_PROCESSES,
                stdin_window_bytes: 64,
                max_result_bytes: 1024,
            },
            control: FakeControl {
                at_capacity: has(b'f'),
                ..FakeControl::default()
            },
            attached: true,
            now: Instant::now(),
            selected: None,
        }
    }

    /// A session from the init message, or restored from saved settings (`!W{...}`).
    fn start(&mut self, first: &[u8]) -> Option<Session> {
        let settings = self.settings.clone();
        let session = if let Some(saved) = first.strip_prefix(b"!W") {
            let saved: SavedSettings = serde_json::from_slice(saved).ok()?;
            self.control.acquired = true;
            Session::restored(
                SessionId(1),
                token::hash("token"),
                &SavedState::from(&saved),
                SANDBOX,
                "0123456789abcdef0123456789abcdef".into(),
                settings,
                self.now,
            )
        } else {
            let mut session = Session::new(SessionId(1), "token".into(), settings, self.now);
            let text = String::from_utf8_lossy(first);
            let outs = session.on_init(&text, &mut self.control, self.now);
            self.deliver(&mut session, outs);
            session
        };
        // The server forgets a session that never got a sandbox, and an ended one.
        (session.sandbox().is_some() && !session.is_ended()).then_some(session)
    }

    /// Plays one record. Returns false once the server would have forgotten the session.
    fn step(&mut self, session: &mut Session, record: &[u8]) -> bool {
        let outs = match record.strip_prefix(b"!") {
            Some(event) => self.event(session, event),
            None if self.attached => {
                let text = String::from_utf8_lossy(record);
                session.on_message(&text, &mut self.control, self.now)
            }
            // Nobody is connected to send it.
            None => Vec::new(),
        };
        self.deliver(session, outs);
        !session.is_ended()
    }

    fn event(&mut self, session: &mut Session, event: &[u8]) -> Vec<Out> {
        let Some((&letter, argument)) = event.split_first() else {
            return Vec::new();
        };
        if let Some(notice) = self.notice(letter, argument) {
            if let RuntimeEvent::ExecFinished(exec, _) | RuntimeEvent::ExecSpawnFailed(exec, _) =
                &notice
            {
                self.control.running.retain(|running| running != exec);
                self.control
                    .file_operations
                    .retain(|running| running != exec);
            }
            if matches!(notice, RuntimeEvent::Lost(_) | RuntimeEvent::Deleted) {
                self.control.running.clear();
                self.control.file_operations.clear();
            }
            return session.on_runtime(notice, &mut self.control);
        }
        let text = || String::from_utf8_lossy(argument).into_owned();
        let control = &mut self.control;
        match letter {
            b'C' => session.on_checkpoint_saved(Ok(()), control),
            b'c' => session.on_checkpoint_saved(Err(text()), control),
            b'P' => session.on_snapshot_finished(Ok(()), true, control),
            b'p' => session.on_snapshot_finished(Err(text()), true, control),
            b'Q' => session.on_snapshot_finished(Err(text()), false, control),
            b't' => {
                let seconds = decimal(argument).unwrap_or(1).clamp(0, i64::from(u32::MAX));
                self.now += Duration::from_secs(seconds.unsigned_abs());
                session.on_tick(self.now, control)
            }
            b'A' if !self.attached && session.is_running() => {
                self.attached = true;
                session.on_attach(self.now)
            }
            b'a' => {
                self.detach(session);
                Vec::new()
            }
            b'Z' => session.on_shutdown(),
            b'f' => session.flush_output(control),
            b'x' => {
                control.fail_next = true;
                Vec::new()
            }
            b'@' => {
                self.selected = decimal(argument).map(|id| ExecId(id as u32));
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// The runtime notice a record letter stands for; execution notices are about the latest
    /// execution started.
    fn notice(&self, letter: u8, argument: &[u8]) -> Option<RuntimeEvent> {
        let text = || String::from_utf8_lossy(argument).into_owned();
        let current = self.selected.unwrap_or(ExecId(self.control.execs_started));
        Some(match letter {
            b'R' => RuntimeEvent::Ready,
            b'F' => RuntimeEvent::StartFailed(text()),
            b'L' => RuntimeEvent::Lost(text()),
            b'D' => RuntimeEvent::Deleted,
            b'S' => {
                RuntimeEvent::ExecStarted(decimal(argument).map_or(current, |id| ExecId(id as u32)))
            }
            b'X' => RuntimeEvent::ExecSpawnFailed(current, text()),
            b'o' => RuntimeEvent::Output(current, Stream::Stdout, unescape(argument)),
            b'e' => RuntimeEvent::Output(current, Stream::Stderr, unescape(argument)),
            b'E' | b'K' => {
                let (reason, value) = argument.split_first().unwrap_or((&b'0', &[]));
                let value = decimal(value).unwrap_or(0) as i32;
                let status = if letter == b'E' {
                    ExitStatus::Code(value)
                } else {
                    ExitStatus::Signal(value)
                };
                let outcome = ExecOutcome {
                    status,
                    reason: reason_of(*reason),
                    duration_ms: 5,
                    truncated: false,
                };
                RuntimeEvent::ExecFinished(current, outcome)
            }
            b'w' => RuntimeEvent::StdinWritten(current, decimal(argument).unwrap_or(1) as u32),
            b'k' => RuntimeEvent::Checkpointed(Ok(())),
            b'r' => RuntimeEvent::CheckpointRefused(text()),
            _ => return None,
        })
    }

    fn detach(&mut self, session: &mut Session) {
        if self.attached {
            self.attached = false;
            session.on_detach(self.now);
        }
    }

    /// What `deliver` in src/server/sessions.rs does, with the frames checked. The store
    /// answers at once: a snapshot is found (unless the next runtime call is to fail), saved
    /// state is removed.
    fn deliver(&mut self, session: &mut Session, outs: Vec<Out>) {
        check_outs(&outs);
        if outs.iter().any(|out| matches!(out, Out::Close(..))) {
            self.detach(session);
        }
        for out in outs {
            let answer = match out {
                Out::FindSnapshot(name) => {
                    let found = if std::mem::take(&mut self.control.fail_next) {
                        Err(format!("filesystem snapshot {name:?} not found"))
                    } else {
                        Ok(format!("/snapshots/{name}/image-1").into())
                    };
                    session.on_snapshot_found(found, &mut self.control)
                }
                Out::RemoveSavedState => session.on_saved_state_removed(),
                _ => continue,
            };
            self.deliver(session, answer);
        }
    }
}

/// Output bytes: `\n` is a line feed (a raw one would end the record), `\xHH` any byte.
fn unescape(argument: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(argument.len());
    let mut rest = argument;
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        match (byte, tail) {
            (b'\\', [b'n', after @ ..]) => {
                out.push(b'\n');
                rest = after;
            }
            (b'\\', [b'x', high, low, after @ ..]) => {
                let hex = [*high, *low];
                match std::str::from_utf8(&hex)
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                {
                    Some(value) => {
                        out.push(value);
                        rest = after;
                    }
                    None => out.push(byte),
                }
            }
            _ => out.push(byte),
        }
    }
    out
}

/// A decimal integer, negative ones too (cast down by the caller: any bit pattern is fine).
fn decimal(digits: &[u8]) -> Option<i64> {
    std::str::from_utf8(digits).ok()?.trim().parse().ok()
}

fn reason_of(digit: u8) -> Reason {
    match digit {
        b'1' => Reason::Signaled,
        b'2' => Reason::Killed,
        b'3' => Reason::Timeout,
        b'4' => Reason::OutputLimit,
        b'5' => Reason::SandboxLost,
        _ => Reason::Exited,
    }
}

fn check_outs(outs: &[Out]) {
    for (index, out) in outs.iter().enumerate() {
        match out {
            Out::Send(event) => {
                let frame: Value =
                    serde_json::from_str(&event.to_json()).expect("a frame is not JSON");
                let event = frame["event"].as_str().expect("a frame has no event");
                assert!(EVENTS.contains(&event), "undocumented event {event}");
                if let Some(id) = frame.get("id") {
                    assert!(id.is_string() || id.is_u64(), "an id that is no id: {id}");
                }
                if event != "status_update" {
                    continue;
                }
                let status = frame["status"]
                    .as_str()
                    .expect("a status_update has no status");
                assert!(STATUSES.contains(&status), "undocumented status {status}");
                let is_error = status.ends_with("_ERROR")
                    || status == "SANDBOX_NOT_FOUND"
                    || status == "SANDBOX_IN_USE";
                if is_error {
                    let message = frame["message"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{status} has no message"));
                    let next = match outs.get(index + 1) {
                        Some(Out::Send(next)) => {
                            serde_json::from_str::<Value>(&next.to_json()).ok()
                        }
                        _ => None,
                    };
                    let next = next.unwrap_or_else(|| panic!("{status} without an error event"));
                    assert_eq!(next["event"], "error", "{status} without an error event");
                    assert_eq!(next["message"], message);
                    assert_eq!(next.get("id"), frame.get("id"), "the error's id differs");
                }
            }
            // Only HTTP transfers produce these; the harness has none.
            Out::HttpFile { .. } => panic!("an HTTP file event without an HTTP transfer"),
            Out::Close(code, reason) => {
                assert!(CLOSE_CODES.contains(code), "undocumented close code {code}");
                assert!(
                    reason.len() <= MAX_CLOSE_REASON_BYTES,
                    "a {}-byte close reason does not fit in a close frame: {reason:?}",
                    reason.len()
                );
            }
            Out::Save(_)
            | Out::FindSnapshot(_)
            | Out::RemoveSavedState
            | Out::HandoffRefused(_) => {}
        }
    }
}
