//! What the flow corpus (`tests/flows/`, replayed by `flows.rs`) cannot express: the token
//! hash, the options handed to the runtime, tables of bad values, the store's time-outs, what
//! a checkpoint saves and a restore adopts, and the session's own bookkeeping.

use super::*;
use crate::agent_protocol::ExitStatus;
use crate::runtime::exec::{ExecOutcome, Reason};
use crate::store::SavedSettings;
use serde_json::Value;

#[derive(Default)]
struct FakeControl {
    at_capacity: bool,
    options: Vec<CreateOptions>,
    started: Vec<ExecSpec>,
    resized: Vec<(ExecId, TerminalSize)>,
    stdin: Vec<Vec<u8>>,
    stdin_closed: bool,
    killed: Vec<ExecId>,
    deleted: Vec<SandboxKey>,
    /// The runtime no longer knows the executions (they ended; the session has not heard).
    execs_gone: bool,
}

impl SandboxControl for FakeControl {
    fn acquire(
        &mut self,
        _session: SessionId,
        options: &CreateOptions,
    ) -> Result<SandboxKey, RuntimeError> {
        self.options.push(options.clone());
        if self.at_capacity {
            Err(RuntimeError::AtCapacity(1))
        } else {
            Ok(SandboxKey(7))
        }
    }
    fn sandbox_id(&self, _sandbox: SandboxKey) -> String {
        "0123456789abcdef0123456789abcdef".into()
    }
    fn start_exec(&mut self, _sandbox: SandboxKey, spec: ExecSpec) -> Result<ExecId, RuntimeError> {
        self.started.push(spec);
        Ok(ExecId(self.started.len() as u32))
    }
    fn write_stdin(&mut self, _: SandboxKey, _: ExecId, data: &[u8]) -> Result<(), RuntimeError> {
        if self.execs_gone {
            return Err(RuntimeError::NoSuchExecution);
        }
        self.stdin.push(data.to_vec());
        Ok(())
    }
    fn close_stdin(&mut self, _: SandboxKey, _: ExecId) -> Result<(), RuntimeError> {
        if self.execs_gone {
            return Err(RuntimeError::NoSuchExecution);
        }
        self.stdin_closed = true;
        Ok(())
    }
    fn kill_exec(&mut self, _: SandboxKey, exec: ExecId) -> Result<(), RuntimeError> {
        if self.execs_gone {
            return Err(RuntimeError::NoSuchExecution);
        }
        self.killed.push(exec);
        Ok(())
    }
    fn delete(&mut self, sandbox: SandboxKey) {
        self.deleted.push(sandbox);
    }
    fn set_exec_output_paused(&mut self, _: SandboxKey, _: ExecId, _: bool) {}
    fn resize_terminal(
        &mut self,
        _: SandboxKey,
        exec: ExecId,
        size: TerminalSize,
    ) -> Result<(), RuntimeError> {
        if self.execs_gone {
            return Err(RuntimeError::NoSuchExecution);
        }
        self.resized.push((exec, size));
        Ok(())
    }
    fn context_command(
        &mut self,
        _: SandboxKey,
        _: crate::agent_protocol::ContextCommand,
    ) -> Result<(), RuntimeError> {
        Ok(())
    }
}

fn settings(checkpoint: bool) -> SessionSettings {
    SessionSettings {
        checkpoint_enabled: checkpoint,
        snapshot_enabled: false,
        default_idle_timeout: Duration::from_secs(300),
        max_idle_timeout: Duration::from_secs(3600),
        exec: ExecLimits {
            default_timeout: Duration::from_secs(60),
            max_timeout: Duration::from_secs(600),
            max_code_bytes: 1000,
        },
        held_output_bytes: 100,
        resend_output_bytes: 1 << 20,
        egress_unavailable: Some(
            "network egress is disabled on this server (SANDBOX_EGRESS=off)".into(),
        ),
        store_timeout: Duration::from_secs(30),
        max_session_processes: 16,
        stdin_window_bytes: 8,
        max_result_bytes: 1024,
    }
}

/// Frames as (status or event, full JSON) for compact assertions.
fn names(out: &[Out]) -> Vec<String> {
    out.iter()
        .map(|item| match item {
            Out::Send(event) => {
                let value: Value = serde_json::from_str(&event.to_json()).unwrap();
                match value["event"].as_str().unwrap() {
                    "status_update" => value["status"].as_str().unwrap().to_string(),
                    other => other.to_string(),
                }
            }
            Out::Close(code, _) => format!("close {code}"),
            Out::Save(request) => format!("save {request:?}"),
            Out::FindSnapshot(name) => format!("find snapshot {name}"),
            Out::HttpFile { connection, .. } => format!("http file {connection}"),
            Out::RemoveSavedState => "remove saved state".into(),
            Out::HandoffRefused(reason) => format!("handoff refused: {reason}"),
        })
        .collect()
}

fn frame(out: &[Out], index: usize) -> Value {
    match &out[index] {
        Out::Send(event) => serde_json::from_str(&event.to_json()).unwrap(),
        other => panic!("not a frame: {other:?}"),
    }
}

fn running_session(control: &mut FakeControl) -> Session {
    let now = Instant::now();
    let mut session = Session::new(SessionId(1), "secret-token".into(), settings(false), now);
    let out = session.on_init("{}", control, now);
    assert_eq!(names(&out), ["SANDBOX_CREATING"]);
    let out = session.on_runtime(RuntimeEvent::Ready, control);
    assert_eq!(names(&out), ["sandbox_id", "SANDBOX_RUNNING"]);
    assert_eq!(frame(&out, 0)["sandbox_token"], "secret-token");
    session
}

fn outcome(code: i32) -> ExecOutcome {
    ExecOutcome {
        status: ExitStatus::Code(code),
        reason: Reason::Exited,
        duration_ms: 5,
        truncated: false,
    }
}

fn checkpointable_session(control: &mut FakeControl) -> Session {
    let now = Instant::now();
    let mut all = settings(true);
    all.snapshot_enabled = true;
    let mut session = Session::new(SessionId(1), "secret-token".into(), all, now);
    session.on_init(r#"{"enable_checkpoint": true}"#, control, now);
    session.on_runtime(RuntimeEvent::Ready, control);
    assert!(session.is_checkpointable());
    session
}

fn message_of(out: &[Out], index: usize) -> String {
    frame(out, index)["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn restored_sessions_check_the_token_hash_and_report_running() {
    let mut control = FakeControl::default();
    let saved = SavedState {
        idle_timeout_secs: Some(60.0),
        auto_checkpoint: false,
        network: false,
        running: Vec::new(),
        handoff: false,
        labels: Default::default(),
    };
    let hash = token::hash("the-token");
    let mut session = Session::restored(
        SessionId(2),
        hash.clone(),
        &saved,
        SandboxKey(7),
        "id".into(),
        settings(true),
        Instant::now(),
    );
    assert!(token::matches(session.token_sha256(), "the-token"));
    assert!(!token::matches(session.token_sha256(), "the-tokeN"));
    assert!(!token::matches(session.token_sha256(), ""));
    let out = session.on_runtime(RuntimeEvent::Ready, &mut control);
    assert_eq!(names(&out), ["SANDBOX_RUNNING"]);
    let mut session = Session::restored(
        SessionId(3),
        hash,
        &saved,
        SandboxKey(7),
        "id".into(),
        settings(true),
        Instant::now(),
    );
    let out = session.on_runtime(RuntimeEvent::StartFailed("bad image".into()), &mut control);
    assert_eq!(
        names(&out),
        ["SANDBOX_RESTORE_ERROR", "error", "close 4000"]
    );
}

#[test]
fn network_egress_is_asked_for_in_the_init_and_refused_when_unavailable() {
    let now = Instant::now();
    let mut control = FakeControl::default();
    let mut session = Session::new(SessionId(1), "t".into(), settings(false), now);
    let out = session.on_init(r#"{"enable_network": true}"#, &mut control, now);
    assert_eq!(
        names(&out),
        ["SANDBOX_CREATION_ERROR", "error", "close 4000"]
    );
    assert!(frame(&out, 1)["message"]
        .as_str()
        .unwrap()
        .contains("SANDBOX_EGRESS=off"));

    let mut enabled = settings(false);
    enabled.egress_unavailable = None;
    let mut session = Session::new(SessionId(1), "t".into(), enabled, now);
    session.on_init(r#"{"enable_network": true}"#, &mut control, now);
    assert_eq!(
        control.options,
        vec![CreateOptions {
            snapshot_image: None,
            egress: true
        }]
    );
}

/// `{"idle_timeout": 1e20}` used to panic in `Duration::from_secs_f64` and take the whole server
/// down; now every bad option is a creation error naming it, and nothing is created.
#[test]
fn bad_init_options_are_creation_errors_naming_the_key() {
    let now = Instant::now();
    let mut snapshots = settings(true);
    snapshots.snapshot_enabled = true;
    snapshots.egress_unavailable = None;
    for (init, key) in [
        (r#"{"idle_timeout": 1e20}"#, "idle_timeout"),
        (r#"{"idle_timeout": -5}"#, "idle_timeout"),
        (r#"{"idle_timeout": "300"}"#, "idle_timeout"),
        // Checked whatever else the init asks for (it used to be skipped with a snapshot).
        (
            r#"{"idle_timeout": 1e20, "filesystem_snapshot_name": "s"}"#,
            "idle_timeout",
        ),
        (r#"{"enable_network": "yes"}"#, "enable_network"),
        (r#"{"enable_checkpoint": 1}"#, "enable_checkpoint"),
        (
            r#"{"enable_idle_timeout_auto_checkpoint": "true"}"#,
            "enable_idle_timeout_auto_checkpoint",
        ),
        (
            r#"{"enable_sandbox_handoff": []}"#,
            "enable_sandbox_handoff",
        ),
        (
            r#"{"filesystem_snapshot_name": 5}"#,
            "filesystem_snapshot_name",
        ),
    ] {
        let mut control = FakeControl::default();
        let mut session = Session::new(SessionId(1), "t".into(), snapshots.clone(), now);
        let out = session.on_init(init, &mut control, now);
        assert_eq!(
            names(&out),
            ["SANDBOX_CREATION_ERROR", "error", "close 4000"],
            "{init}"
        );
        assert!(message_of(&out, 1).starts_with(key), "{init}: {out:?}");
        assert_eq!(message_of(&out, 0), message_of(&out, 1));
        assert!(control.options.is_empty(), "{init}: nothing acquired");
        assert!(session.is_ended());
    }
    // Sane values keep working: huge but sane ones are capped, not refused.
    let mut control = FakeControl::default();
    let mut session = Session::new(SessionId(1), "t".into(), snapshots, now);
    let out = session.on_init(
        r#"{"idle_timeout": 999999999, "enable_network": null, "filesystem_snapshot_name": null}"#,
        &mut control,
        now,
    );
    assert_eq!(names(&out), ["SANDBOX_CREATING"]);
    assert_eq!(session.idle_limit(), Duration::from_secs(3600));
}

/// The manifest of a checkpoint is shared storage: a corrupted idle timeout means the default.
#[test]
fn restored_sessions_survive_absurd_saved_idle_timeouts() {
    for seconds in [1e20, -1.0, f64::MAX, 1e10] {
        let saved = SavedState {
            idle_timeout_secs: Some(seconds),
            ..Default::default()
        };
        let session = Session::restored(
            SessionId(2),
            "hash".into(),
            &saved,
            SandboxKey(7),
            "id".into(),
            settings(true),
            Instant::now(),
        );
        assert_eq!(session.idle_limit(), Duration::from_secs(300), "{seconds}");
    }
}

#[test]
fn bad_execution_and_stdin_options_are_errors_naming_the_key() {
    let mut control = FakeControl::default();
    let mut session = running_session(&mut control);
    let now = Instant::now();
    for (message, key) in [
        (
            r#"{"language":"bash","code":"true","output_encoding":"hex"}"#,
            r#"output_encoding must be "text" or "base64", got "hex""#,
        ),
        (
            r#"{"language":"bash","code":"true","output_encoding":true}"#,
            "output_encoding must be",
        ),
        (
            r#"{"language":"bash","code":"true","timeout":1e20}"#,
            "timeout must be a number of seconds above 0 and at most 600, got 1e+20",
        ),
        (
            r#"{"language":"bash","code":"true","timeout":"5"}"#,
            "timeout must be",
        ),
    ] {
        let out = session.on_message(message, &mut control, now);
        assert_eq!(
            names(&out),
            ["SANDBOX_EXECUTION_ERROR", "error"],
            "{message}"
        );
        assert!(message_of(&out, 1).starts_with(key), "{message}: {out:?}");
    }
    assert!(control.started.is_empty());
    for encoding in ["text", "base64"] {
        let message =
            format!(r#"{{"language":"bash","code":"true","output_encoding":"{encoding}"}}"#);
        assert!(session.on_message(&message, &mut control, now).is_empty());
        session.on_runtime(
            RuntimeEvent::ExecFinished(ExecId(control.started.len() as u32), outcome(0)),
            &mut control,
        );
    }

    session.on_message(r#"{"language":"bash","code":"cat"}"#, &mut control, now);
    for (message, key) in [
        (
            r#"{"event":"stdin","data":"x","encoding":"hex"}"#,
            r#"encoding must be "text" or "base64", got "hex""#,
        ),
        (
            r#"{"event":"stdin","data":"x","eof":"yes"}"#,
            r#"eof must be true or false, got "yes""#,
        ),
    ] {
        let out = session.on_message(message, &mut control, now);
        assert_eq!(names(&out), ["SANDBOX_STDIN_ERROR", "error"], "{message}");
        assert_eq!(message_of(&out, 1), key);
    }
    assert!(control.stdin.is_empty() && !control.stdin_closed);
}

#[test]
fn snapshot_names_must_be_strings() {
    let mut control = FakeControl::default();
    let mut session = running_session(&mut control);
    let out = session.on_message(
        r#"{"action":"snapshot_filesystem","name":42}"#,
        &mut control,
        Instant::now(),
    );
    assert_eq!(
        names(&out),
        [
            "SANDBOX_FILESYSTEM_SNAPSHOT_CREATING",
            "SANDBOX_FILESYSTEM_SNAPSHOT_ERROR",
            "error"
        ]
    );
    assert_eq!(message_of(&out, 2), "name must be a string, got 42");
}

/// Found by the session fuzz target: a creation error quoting the client's non-ASCII value was
/// cut at 100 characters, up to 400 bytes, in a close frame that holds 123.
#[test]
fn close_reasons_fit_in_a_close_frame() {
    let now = Instant::now();
    let mut control = FakeControl::default();
    let name = "\u{e9}".repeat(80);
    let mut session = Session::new(SessionId(1), "t".into(), settings(false), now);
    let init = serde_json::json!({ "filesystem_snapshot_name": name }).to_string();
    let out = session.on_init(&init, &mut control, now);
    assert_eq!(
        names(&out),
        ["SANDBOX_CREATION_ERROR", "error", "close 4000"]
    );
    let Out::Close(_, reason) = &out[2] else {
        panic!("not a close: {out:?}");
    };
    assert!(reason.len() <= 123, "{} bytes: {reason:?}", reason.len());
    assert!(reason.starts_with("cannot create from filesystem snapshot"));
    // The full message still reaches the client in the error event.
    assert!(frame(&out, 1)["message"].as_str().unwrap().contains(&name));

    assert_eq!(close_reason("short"), "short");
    assert_eq!(close_reason(&"a".repeat(200)).len(), 123);
    // Two-byte characters: byte 123 falls inside the 62nd one, which goes.
    assert_eq!(close_reason(&"\u{e9}".repeat(62)), "\u{e9}".repeat(61));
    assert_eq!(close_reason(&"\u{1f600}".repeat(40)).len(), 120);
}

/// A snapshot is looked up in the store off the loop: the session waits for the answer
/// between CREATING and the sandbox's creation.
#[test]
fn creating_from_a_snapshot_waits_for_the_store() {
    let now = Instant::now();
    let mut snapshots = settings(false);
    snapshots.snapshot_enabled = true;
    let mut control = FakeControl::default();
    let mut session = Session::new(SessionId(1), "t".into(), snapshots.clone(), now);
    let out = session.on_init(r#"{"filesystem_snapshot_name": "snap"}"#, &mut control, now);
    assert_eq!(names(&out), ["SANDBOX_CREATING", "find snapshot snap"]);
    assert!(
        control.options.is_empty(),
        "nothing acquired before the answer"
    );
    assert!(session.sandbox().is_none());
    let busy = session.on_message(r#"{"language":"bash","code":"true"}"#, &mut control, now);
    assert_eq!(message_of(&busy, 1), "the sandbox is still being created");
    assert!(session
        .on_snapshot_found(Ok("/snapshots/snap/image-1".into()), &mut control)
        .is_empty());
    assert_eq!(
        control.options,
        [CreateOptions {
            snapshot_image: Some("/snapshots/snap/image-1".into()),
            egress: false
        }]
    );
    assert_eq!(session.sandbox(), Some(SandboxKey(7)));
    let out = session.on_runtime(RuntimeEvent::Ready, &mut control);
    assert_eq!(names(&out), ["sandbox_id", "SANDBOX_RUNNING"]);
    assert!(
        session
            .on_snapshot_found(Ok("/late".into()), &mut control)
            .is_empty(),
        "a second answer changes nothing"
    );

    // The original clients look for "not found" in this error.
    let mut session = Session::new(SessionId(2), "t".into(), snapshots, now);
    session.on_init(r#"{"filesystem_snapshot_name": "gone"}"#, &mut control, now);
    let out = session.on_snapshot_found(
        Err("filesystem snapshot \"gone\" not found".into()),
        &mut control,
    );
    assert_eq!(
        names(&out),
        ["SANDBOX_CREATION_ERROR", "error", "close 4000"]
    );
    assert!(message_of(&out, 1).contains("not found"));
    assert!(session.is_ended());

    // A store that does not answer is not waited for forever.
    let mut snapshots = settings(false);
    snapshots.snapshot_enabled = true;
    let mut session = Session::new(SessionId(3), "t".into(), snapshots, now);
    session.on_init(r#"{"filesystem_snapshot_name": "slow"}"#, &mut control, now);
    assert!(session
        .on_tick(now + Duration::from_secs(30), &mut control)
        .is_empty());
    let out = session.on_tick(now + Duration::from_secs(31), &mut control);
    assert_eq!(
        names(&out),
        ["SANDBOX_CREATION_ERROR", "error", "close 4000"]
    );
    assert_eq!(
        message_of(&out, 1),
        "the snapshot store did not answer within 30 s; retry later"
    );
    assert!(session.is_ended());
}

/// A killed checkpointable sandbox's saved state goes before the client hears KILLED, so an
/// attach after it finds nothing to restore; a store that does not answer is not waited for
/// forever.
#[test]
fn killing_a_checkpointable_sandbox_removes_its_saved_state_first() {
    let mut control = FakeControl::default();
    let mut session = checkpointable_session(&mut control);
    let start = Instant::now();
    let out = session.on_message(r#"{"action":"kill_sandbox"}"#, &mut control, start);
    assert_eq!(names(&out), ["SANDBOX_KILLING", "SANDBOX_DELETING"]);
    let out = session.on_runtime(RuntimeEvent::Deleted, &mut control);
    assert_eq!(names(&out), ["remove saved state"]);
    assert!(!session.is_ended());
    let busy = session.on_message(r#"{"action":"reconnect"}"#, &mut control, start);
    assert_eq!(message_of(&busy, 1), "the sandbox is being deleted");
    let out = session.on_saved_state_removed();
    assert_eq!(
        names(&out),
        ["SANDBOX_DELETED", "SANDBOX_KILLED", "close 1000"]
    );
    assert!(session.is_ended() && session.was_killed());
    assert!(session.on_saved_state_removed().is_empty(), "once");

    let mut session = checkpointable_session(&mut control);
    session.on_message(r#"{"action":"kill_sandbox"}"#, &mut control, start);
    session.on_runtime(RuntimeEvent::Deleted, &mut control);
    let later = Instant::now() + Duration::from_secs(29);
    assert!(session.on_tick(later, &mut control).is_empty());
    let out = session.on_tick(later + Duration::from_secs(2), &mut control);
    assert_eq!(
        names(&out),
        ["SANDBOX_DELETED", "SANDBOX_KILLED", "close 1000"]
    );
    assert!(session.is_ended());
}

/// A shutdown checkpoint saves every running process (the compatible one and those with
/// request ids, with their stdin counters) in the manifest; the restored session follows them
/// all and hands them to the runtime, and their acknowledgements go on where they were.
#[test]
fn a_checkpoint_saves_every_running_process_and_the_restore_adopts_them() {
    let mut control = FakeControl::default();
    let mut session = running_session(&mut control);
    let now = Instant::now();
    session.on_message(r#"{"language":"bash","code":"sleep 9"}"#, &mut control, now);
    session.on_message(
        r#"{"id":"a","language":"python","code":"input()","output_encoding":"base64"}"#,
        &mut control,
        now,
    );
    session.on_message(
        r#"{"id":"b","event":"stdin","process_id":2,"data":"abcdef"}"#,
        &mut control,
        now,
    );
    session.on_runtime(RuntimeEvent::StdinWritten(ExecId(2), 4), &mut control);
    let saved = session.saved_state();
    assert_eq!(saved.running.len(), 2);
    // Through the manifest's format, as another instance reads it.
    let manifest = serde_json::to_string(&SavedSettings::from(&saved)).unwrap();
    let read: SavedSettings = serde_json::from_str(&manifest).unwrap();
    let restored_state = SavedState::from(&read);
    assert_eq!(restored_state, saved);

    let mut restored = Session::restored(
        SessionId(2),
        "hash".into(),
        &restored_state,
        SandboxKey(7),
        "id".into(),
        settings(true),
        now,
    );
    assert_eq!(
        restored.adopted_execs(),
        [
            (
                ExecId(1),
                Duration::from_secs(60),
                crate::runtime::MAX_STDIN_IN_FLIGHT
            ),
            (ExecId(2), Duration::from_secs(60), 16),
        ],
        "the window's hard bound for the one with flow control"
    );
    restored.on_runtime(RuntimeEvent::Ready, &mut control);
    assert!(
        restored.adopted_execs().is_empty(),
        "adopted once, at the restore"
    );
    restored.on_runtime(RuntimeEvent::StdinWritten(ExecId(2), 2), &mut control);
    let out = restored.on_message(r#"{"action":"reconnect"}"#, &mut control, now);
    assert_eq!(
        names(&out),
        ["SANDBOX_EXECUTION_RUNNING", "stdin_ack"],
        "the compatible one's RUNNING, then the acknowledgement that moved"
    );
    assert_eq!(frame(&out, 1)["written"], 6);
    assert_eq!(frame(&out, 1)["id"], "a");
    let listed = restored.processes();
    assert_eq!(listed[1].request, Some(RequestId::Text("a".into())));
    assert_eq!(
        listed[1].language,
        Some(crate::agent_protocol::Language::Python)
    );
}

/// The manifest is shared storage: ids and languages that do not parse are dropped, and a
/// process without a request id among the others would be a second compatible one: it goes.
#[test]
fn a_corrupted_manifest_restores_no_bogus_process() {
    let read: SavedSettings = serde_json::from_value(serde_json::json!({
        "idle_timeout_secs": null, "auto_checkpoint": false,
        "running_exec": {"id": 3, "base64": false, "request": "x"},
        "processes": [
            {"id": 4, "base64": true, "request": {"no": 1}, "language": "ruby"},
            {"id": 5, "base64": true, "request": 7, "language": "cobol"}
        ]
    }))
    .unwrap();
    let state = SavedState::from(&read);
    let summary: Vec<(
        u32,
        Option<RequestId>,
        Option<crate::agent_protocol::Language>,
    )> = state
        .running
        .iter()
        .map(|process| (process.exec.0, process.request.clone(), process.language))
        .collect();
    assert_eq!(
        summary,
        [(3, None, None), (5, Some(RequestId::Number(7)), None)]
    );
}

/// The idle timeout runs only while no client is attached (and nothing runs); a sandbox it
/// deleted says so, for the server to remember.
#[test]
fn the_idle_timeout_waits_for_the_client_and_says_it_fired() {
    let mut control = FakeControl::default();
    let start = Instant::now();
    let mut session = Session::new(SessionId(1), "t".into(), settings(false), start);
    session.on_init(r#"{"idle_timeout": 10}"#, &mut control, start);
    session.on_runtime(RuntimeEvent::Ready, &mut control);
    assert!(session
        .on_tick(start + Duration::from_secs(100), &mut control)
        .is_empty());
    session.on_detach(start + Duration::from_secs(100));
    assert!(session
        .on_tick(start + Duration::from_secs(109), &mut control)
        .is_empty());
    assert_eq!(session.idle_expired(), None);
    assert!(session
        .on_tick(start + Duration::from_secs(111), &mut control)
        .is_empty());
    assert_eq!(control.deleted, [SandboxKey(7)]);
    assert_eq!(session.idle_expired(), Some(Duration::from_secs(10)));
    assert!(session.was_killed());
}

/// A client whose request ids are duplicates or numbers gets them back as it sent them.
#[test]
fn request_ids_are_echoed_with_their_json_type() {
    let mut control = FakeControl::default();
    let mut session = running_session(&mut control);
    let now = Instant::now();
    let out = session.on_message(r#"{"id":7,"action":"list_processes"}"#, &mut control, now);
    assert_eq!(frame(&out, 0)["id"], 7);
    let out = session.on_message(
        r#"{"id":"x y","language":"ruby","code":"1"}"#,
        &mut control,
        now,
    );
    assert_eq!(frame(&out, 0)["id"], "x y");
    assert_eq!(frame(&out, 1)["id"], "x y");
}

/// The runtime saw a process end before the session heard of it (its DONE is on the way): a
/// stdin EOF for it is no error (`run()` closes stdin at once), data and kills are told it
/// ended.
#[test]
fn a_process_that_ended_in_the_runtime_first_is_said_to_have_ended() {
    let mut control = FakeControl::default();
    let mut session = running_session(&mut control);
    let now = Instant::now();
    session.on_message(
        r#"{"id":"1","language":"bash","code":"true"}"#,
        &mut control,
        now,
    );
    control.execs_gone = true;
    let out = session.on_message(
        r#"{"id":"2","event":"stdin","process_id":1,"eof":true}"#,
        &mut control,
        now,
    );
    assert!(out.is_empty(), "{out:?}");
    let out = session.on_message(
        r#"{"id":"3","event":"stdin","process_id":1,"data":"x"}"#,
        &mut control,
        now,
    );
    assert_eq!(names(&out), ["SANDBOX_STDIN_ERROR", "error"]);
    assert_eq!(message_of(&out, 1), "process 1 has ended");
    let out = session.on_message(
        r#"{"id":"4","action":"kill_process","process_id":1}"#,
        &mut control,
        now,
    );
    assert_eq!(names(&out), ["SANDBOX_EXECUTION_FORCE_KILL_ERROR", "error"]);
    assert_eq!(message_of(&out, 1), "process 1 has ended");
    // The compatible messages keep their answers.
    session.on_message(r#"{"language":"bash","code":"true"}"#, &mut control, now);
    let out = session.on_message(r#"{"event":"stdin","eof":true}"#, &mut control, now);
    assert_eq!(message_of(&out, 1), "no execution is running");
}

fn handoff_session(control: &mut FakeControl) -> Session {
    let now = Instant::now();
    let mut session = Session::new(SessionId(1), "secret-token".into(), settings(true), now);
    session.on_init(
        r#"{"enable_sandbox_handoff": true, "labels": {"team": "search"}}"#,
        control,
        now,
    );
    session.on_runtime(RuntimeEvent::Ready, control);
    assert!(session.is_checkpointable() && session.allows_handoff());
    session
}

#[test]
fn a_handoff_checkpoints_with_running_executions_and_says_the_sandbox_moved() {
    let mut control = FakeControl::default();
    let mut session = handoff_session(&mut control);
    session.on_message(
        r#"{"language": "bash", "code": "sleep 100"}"#,
        &mut control,
        Instant::now(),
    );
    session.on_runtime(RuntimeEvent::ExecStarted(ExecId(1)), &mut control);
    let mut out = session.on_handoff_requested().expect("it begins");
    assert_eq!(
        names(&out),
        [
            "SANDBOX_LOCK_RELEASE_REQUESTED",
            "SANDBOX_CHECKPOINTING",
            "save Checkpoint { with_running: true }"
        ]
    );
    assert!(message_of(&out, 0).contains("continues there"));
    assert!(session.is_moving());
    assert_eq!(session.view(Instant::now()).state, "moving");
    assert!(
        session.on_handoff_requested().is_none(),
        "seen again while it moves: nothing more"
    );
    // The running execution is saved with it (it goes on after the restore elsewhere).
    assert_eq!(session.saved_state().running.len(), 1);
    assert!(session.saved_state().handoff);
    out = session.on_checkpoint_saved(Ok(()), &mut control);
    out.extend(session.on_runtime(RuntimeEvent::Deleted, &mut control));
    assert_eq!(
        names(&out),
        [
            "SANDBOX_DELETING",
            "SANDBOX_DELETED",
            "SANDBOX_CHECKPOINTED",
            "SANDBOX_LOCK_RELEASED",
            "close 4001"
        ]
    );
    assert!(message_of(&out, 3).contains("moved to another server instance"));
    assert!(session.is_ended());
}

#[test]
fn a_handoff_that_cannot_checkpoint_is_refused_and_the_session_goes_on() {
    let mut control = FakeControl::default();
    let mut session = handoff_session(&mut control);
    session.on_handoff_requested().expect("it begins");
    let out = session.on_runtime(
        RuntimeEvent::CheckpointRefused("the sandbox has open TCP connections".into()),
        &mut control,
    );
    assert_eq!(
        names(&out),
        [
            "SANDBOX_CHECKPOINT_ERROR",
            "error",
            "handoff refused: the sandbox has open TCP connections"
        ]
    );
    assert!(session.is_running() && !session.is_moving());
    // Without the flag (or while it is not running) nobody can ask for it.
    let mut plain = checkpointable_session(&mut control);
    assert!(plain.on_handoff_requested().is_none());
    assert!(plain.is_running());
}

#[test]
fn a_lost_lease_stops_the_sandbox_here() {
    let mut control = FakeControl::default();
    let mut session = handoff_session(&mut control);
    let out = session.on_lease_lost("instance-b", &mut control);
    assert_eq!(
        names(&out),
        ["SANDBOX_LOCK_RENEWAL_ERROR", "error", "close 4000"]
    );
    assert!(message_of(&out, 0).contains("lost its lease to another server instance (instance-b)"));
    assert_eq!(control.deleted, vec![SandboxKey(7)]);
    assert!(
        session.on_lease_lost("instance-b", &mut control).is_empty(),
        "once"
    );
    let out = session.on_runtime(RuntimeEvent::Deleted, &mut control);
    assert!(out.is_empty() && session.is_ended());
}

#[test]
fn handoff_needs_a_checkpoint_store_and_labels_are_listed() {
    let mut control = FakeControl::default();
    let now = Instant::now();
    let mut session = Session::new(SessionId(1), "t".into(), settings(false), now);
    let out = session.on_init(r#"{"enable_sandbox_handoff": true}"#, &mut control, now);
    assert_eq!(
        names(&out),
        ["SANDBOX_CREATION_ERROR", "error", "close 4000"]
    );
    assert!(message_of(&out, 0).starts_with("enable_sandbox_handoff needs checkpointing"));

    let session = handoff_session(&mut control);
    let view = session.view(Instant::now() + Duration::from_secs(5));
    assert_eq!(view.state, "running");
    assert_eq!(view.labels["team"], "search");
    assert!(view.age >= Duration::from_secs(5) && view.attached && view.handoff);
    assert!(!view.checkpointed, "not from a checkpoint");
    assert_eq!(session.saved_state().labels["team"], "search");
}

/// A terminal (issue 19) is a process of kind `terminal`: its spec carries the size, `resize`
/// reaches the runtime and is answered, a pipe process cannot be resized, and a checkpoint's
/// manifest keeps its kind.
#[test]
fn terminals_are_resized_listed_and_saved_as_terminals() {
    let mut control = FakeControl::default();
    let mut session = running_session(&mut control);
    let now = Instant::now();
    session.on_message(
        r#"{"id":"t","language":"bash","code":"","pty":{"cols":80,"rows":24}}"#,
        &mut control,
        now,
    );
    session.on_message(
        r#"{"id":"p","language":"bash","code":"sleep 9"}"#,
        &mut control,
        now,
    );
    let size = |cols, rows| TerminalSize { cols, rows };
    assert_eq!(control.started[0].pty, Some(size(80, 24)));
    assert_eq!(control.started[1].pty, None);
    assert_eq!(
        control.started[0].timeout,
        Duration::from_secs(600),
        "a terminal without a timeout gets the longest allowed"
    );
    let out = session.on_message(
        r#"{"id":"r","action":"resize","process_id":1,"cols":120,"rows":40}"#,
        &mut control,
        now,
    );
    assert_eq!(
        frame(&out, 0),
        serde_json::json!({"event":"reply","id":"r","process_id":1,"cols":120,"rows":40})
    );
    assert_eq!(control.resized, [(ExecId(1), size(120, 40))]);
    let out = session.on_message(
        r#"{"id":"r2","action":"resize","process_id":2,"cols":120,"rows":40}"#,
        &mut control,
        now,
    );
    assert_eq!(names(&out), ["SANDBOX_REQUEST_ERROR", "error"]);
    assert_eq!(
        message_of(&out, 0),
        "process 2 is not a terminal (it has no window size)"
    );
    let kinds: Vec<&str> = session
        .processes()
        .iter()
        .map(|entry| entry.kind.as_str())
        .collect();
    assert_eq!(kinds, ["terminal", "exec"]);

    let saved = session.saved_state();
    let manifest = serde_json::to_string(&SavedSettings::from(&saved)).unwrap();
    assert!(manifest.contains(r#""kind":"terminal""#), "{manifest}");
    let read: SavedSettings = serde_json::from_str(&manifest).unwrap();
    assert_eq!(SavedState::from(&read), saved);

    session.on_runtime(
        RuntimeEvent::ExecFinished(ExecId(1), outcome(0)),
        &mut control,
    );
    let out = session.on_message(
        r#"{"id":"r3","action":"resize","process_id":1,"cols":10,"rows":10}"#,
        &mut control,
        now,
    );
    assert_eq!(message_of(&out, 0), "process 1 has ended");
    assert_eq!(control.resized.len(), 1, "an ended terminal is not resized");
}
