//! Every flow of docs/protocol.md against the session machine, with a fake runtime.

use super::*;
use crate::agent_protocol::{ExitStatus, Stream};
use crate::runtime::exec::{ExecOutcome, Reason};
use events::OutputEncoding;
use serde_json::Value;

#[derive(Default)]
struct FakeControl {
    at_capacity: bool,
    options: Vec<CreateOptions>,
    started: Vec<ExecSpec>,
    stdin: Vec<Vec<u8>>,
    stdin_closed: bool,
    killed: Vec<ExecId>,
    deleted: Vec<SandboxKey>,
    paused: Option<bool>,
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
        self.stdin.push(data.to_vec());
        Ok(())
    }
    fn close_stdin(&mut self, _: SandboxKey, _: ExecId) -> Result<(), RuntimeError> {
        self.stdin_closed = true;
        Ok(())
    }
    fn kill_exec(&mut self, _: SandboxKey, exec: ExecId) -> Result<(), RuntimeError> {
        self.killed.push(exec);
        Ok(())
    }
    fn delete(&mut self, sandbox: SandboxKey) {
        self.deleted.push(sandbox);
    }
    fn set_output_paused(&mut self, _: SandboxKey, paused: bool) {
        self.paused = Some(paused);
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
        egress_unavailable: Some(
            "network egress is disabled on this server (SANDBOX_EGRESS=off)".into(),
        ),
        store_timeout: Duration::from_secs(30),
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

#[test]
fn create_then_exec_streams_output_and_done_with_exit_code() {
    let mut control = FakeControl::default();
    let mut session = running_session(&mut control);
    let now = Instant::now();
    assert!(session
        .on_message(
            r#"{"language":"python","code":"print(1)"}"#,
            &mut control,
            now
        )
        .is_empty());
    assert_eq!(control.started[0].cwd, "/root");
    let mut out = session.on_runtime(RuntimeEvent::ExecStarted(ExecId(1)), &mut control);
    out.extend(session.on_runtime(
        RuntimeEvent::Output(ExecId(1), Stream::Stdout, b"Hello,".to_vec()),
        &mut control,
    ));
    out.extend(session.on_runtime(
        RuntimeEvent::Output(ExecId(1), Stream::Stdout, b" World\n".to_vec()),
        &mut control,
    ));
    out.extend(session.on_runtime(
        RuntimeEvent::Output(ExecId(1), Stream::Stderr, b"warn\n".to_vec()),
        &mut control,
    ));
    out.extend(session.on_runtime(
        RuntimeEvent::ExecFinished(ExecId(1), outcome(3)),
        &mut control,
    ));
    assert_eq!(
        names(&out),
        [
            "SANDBOX_EXECUTION_RUNNING",
            "stdout",
            "stderr",
            "SANDBOX_EXECUTION_DONE"
        ]
    );
    assert_eq!(
        frame(&out, 1)["data"],
        "Hello, World\n",
        "consecutive chunks are merged"
    );
    assert_eq!(frame(&out, 3)["exit_code"], 3);
    assert_eq!(frame(&out, 3)["reason"], "exited");
}

#[test]
fn second_exec_unknown_language_and_unknown_shapes_keep_the_session() {
    let mut control = FakeControl::default();
    let mut session = running_session(&mut control);
    let now = Instant::now();
    session.on_message(r#"{"language":"bash","code":"sleep 5"}"#, &mut control, now);
    let out = session.on_message(r#"{"language":"bash","code":"true"}"#, &mut control, now);
    assert_eq!(names(&out), ["SANDBOX_EXECUTION_ERROR", "error"]);
    assert_eq!(
        frame(&out, 1)["message"],
        "An execution is already in progress."
    );
    assert_eq!(
        frame(&out, 0)["message"],
        "An execution is already in progress."
    );
    for bad in [
        r#"{"language":"ruby","code":"1"}"#,
        r#"{"code":"1"}"#,
        r#"{"hello":1}"#,
        "not json",
        "[1]",
    ] {
        let out = session.on_message(bad, &mut control, now);
        assert_eq!(
            names(&out),
            ["SANDBOX_EXECUTION_UNSUPPORTED_LANGUAGE_ERROR", "error"],
            "{bad}"
        );
        assert!(frame(&out, 1)["message"]
            .as_str()
            .unwrap()
            .contains("python, bash"));
    }
    assert_eq!(control.started.len(), 1);
}

#[test]
fn stdin_flows() {
    let mut control = FakeControl::default();
    let mut session = running_session(&mut control);
    let now = Instant::now();
    let out = session.on_message(r#"{"event":"stdin","data":"x"}"#, &mut control, now);
    assert_eq!(
        names(&out),
        ["SANDBOX_EXECUTION_ERROR", "error"],
        "nothing running"
    );
    session.on_message(
        r#"{"language":"python","code":"input()"}"#,
        &mut control,
        now,
    );
    assert!(session
        .on_message(r#"{"event":"stdin","data":"World\n"}"#, &mut control, now)
        .is_empty());
    assert_eq!(control.stdin, vec![b"World\n".to_vec()]);
    let out = session.on_message(r#"{"event":"stdin"}"#, &mut control, now);
    assert_eq!(names(&out), ["SANDBOX_STDIN_ERROR", "error"]);
    assert!(session
        .on_message(
            r#"{"event":"stdin","data":"AP8=","encoding":"base64","eof":true}"#,
            &mut control,
            now
        )
        .is_empty());
    assert_eq!(control.stdin[1], vec![0, 255]);
    assert!(control.stdin_closed);
}

#[test]
fn kill_process_sends_force_killed_before_done() {
    let mut control = FakeControl::default();
    let mut session = running_session(&mut control);
    let now = Instant::now();
    let out = session.on_message(r#"{"action":"kill_process"}"#, &mut control, now);
    assert_eq!(names(&out), ["SANDBOX_EXECUTION_FORCE_KILL_ERROR", "error"]);
    session.on_message(
        r#"{"language":"bash","code":"sleep 100"}"#,
        &mut control,
        now,
    );
    let mut out = session.on_message(r#"{"action":"kill_process"}"#, &mut control, now);
    assert_eq!(control.killed, vec![ExecId(1)]);
    let killed = ExecOutcome {
        status: ExitStatus::Signal(9),
        reason: Reason::Killed,
        duration_ms: 1,
        truncated: false,
    };
    out.extend(session.on_runtime(RuntimeEvent::ExecFinished(ExecId(1), killed), &mut control));
    assert_eq!(
        names(&out),
        ["SANDBOX_EXECUTION_FORCE_KILLED", "SANDBOX_EXECUTION_DONE"]
    );
    assert_eq!(frame(&out, 1)["exit_code"], 137);
    assert_eq!(frame(&out, 1)["signal"], 9);
    assert_eq!(frame(&out, 1)["reason"], "killed");
}

#[test]
fn kill_sandbox_sequence_and_close_1000() {
    let mut control = FakeControl::default();
    let mut session = running_session(&mut control);
    let mut out = session.on_message(r#"{"action":"kill_sandbox"}"#, &mut control, Instant::now());
    assert_eq!(control.deleted, vec![SandboxKey(7)]);
    out.extend(session.on_runtime(RuntimeEvent::Deleted, &mut control));
    assert_eq!(
        names(&out),
        [
            "SANDBOX_KILLING",
            "SANDBOX_DELETING",
            "SANDBOX_DELETED",
            "SANDBOX_KILLED",
            "close 1000"
        ]
    );
    assert!(session.is_ended());
}

#[test]
fn checkpoint_and_snapshot_without_server_support() {
    let mut control = FakeControl::default();
    let mut session = running_session(&mut control);
    let now = Instant::now();
    let out = session.on_message(
        r#"{"action":"snapshot_filesystem","name":"s"}"#,
        &mut control,
        now,
    );
    assert_eq!(
        names(&out),
        [
            "SANDBOX_FILESYSTEM_SNAPSHOT_CREATING",
            "SANDBOX_FILESYSTEM_SNAPSHOT_ERROR",
            "error"
        ]
    );
    session.on_message(r#"{"language":"bash","code":"sleep 1"}"#, &mut control, now);
    let out = session.on_message(r#"{"action":"checkpoint"}"#, &mut control, now);
    assert_eq!(
        names(&out),
        [
            "SANDBOX_CHECKPOINTING",
            "SANDBOX_EXECUTION_IN_PROGRESS_ERROR",
            "error"
        ]
    );
    session.on_runtime(
        RuntimeEvent::ExecFinished(ExecId(1), outcome(0)),
        &mut control,
    );
    let out = session.on_message(r#"{"action":"checkpoint"}"#, &mut control, now);
    assert_eq!(
        names(&out),
        ["SANDBOX_CHECKPOINT_ERROR", "error", "close 4000"]
    );
    assert!(control.deleted.is_empty(), "the sandbox survives");
}

#[test]
fn creation_errors_close_with_a_message() {
    let now = Instant::now();
    let mut control = FakeControl::default();
    let mut session = Session::new(SessionId(1), "t".into(), settings(false), now);
    let out = session.on_init(r#"{"enable_checkpoint":true}"#, &mut control, now);
    assert_eq!(
        names(&out),
        ["SANDBOX_CREATION_ERROR", "error", "close 4000"]
    );
    assert!(frame(&out, 1)["message"]
        .as_str()
        .unwrap()
        .contains("CHECKPOINT_AND_RESTORE_PATH"));

    let mut session = Session::new(SessionId(1), "t".into(), settings(false), now);
    let out = session.on_init(
        r#"{"filesystem_snapshot_name":"my-snap"}"#,
        &mut control,
        now,
    );
    assert!(frame(&out, 1)["message"]
        .as_str()
        .unwrap()
        .contains("my-snap"));

    let mut session = Session::new(SessionId(1), "t".into(), settings(false), now);
    control.at_capacity = true;
    let out = session.on_init("{}", &mut control, now);
    assert_eq!(
        names(&out),
        [
            "SANDBOX_CREATING",
            "SANDBOX_CREATION_ERROR",
            "error",
            "close 1013"
        ]
    );

    let mut control = FakeControl::default();
    let mut session = Session::new(SessionId(1), "t".into(), settings(false), now);
    session.on_init("{}", &mut control, now);
    let out = session.on_runtime(
        RuntimeEvent::StartFailed("runsc said no".into()),
        &mut control,
    );
    assert_eq!(
        names(&out),
        ["SANDBOX_CREATION_ERROR", "error", "close 4000"]
    );
}

#[test]
fn output_is_held_while_detached_and_replayed_after_reconnect() {
    let mut control = FakeControl::default();
    let mut session = running_session(&mut control);
    let now = Instant::now();
    session.on_message(r#"{"language":"bash","code":"x"}"#, &mut control, now);
    session.on_runtime(RuntimeEvent::ExecStarted(ExecId(1)), &mut control);
    session.on_detach(now);
    assert!(session
        .on_runtime(
            RuntimeEvent::Output(ExecId(1), Stream::Stdout, vec![b'a'; 150]),
            &mut control
        )
        .is_empty());
    assert!(session.flush_output(&mut control).is_empty());
    assert_eq!(
        control.paused,
        Some(true),
        "past the bound, the process is paused"
    );
    assert!(session
        .on_runtime(
            RuntimeEvent::ExecFinished(ExecId(1), outcome(0)),
            &mut control
        )
        .is_empty());
    assert_eq!(names(&session.on_attach(now)), ["SANDBOX_RUNNING"]);
    let out = session.on_message(r#"{"action":"reconnect"}"#, &mut control, now);
    assert_eq!(
        names(&out),
        [
            "SANDBOX_EXECUTION_RUNNING",
            "stdout",
            "SANDBOX_EXECUTION_DONE"
        ]
    );
    assert_eq!(control.paused, Some(false));
    assert!(
        session
            .on_message(r#"{"action":"reconnect"}"#, &mut control, now)
            .is_empty(),
        "no-op"
    );
}

#[test]
fn idle_timeout_counts_activity_and_not_running_executions() {
    let mut control = FakeControl::default();
    let start = Instant::now();
    let mut session = Session::new(SessionId(1), "t".into(), settings(false), start);
    session.on_init(r#"{"idle_timeout": 10}"#, &mut control, start);
    session.on_runtime(RuntimeEvent::Ready, &mut control);
    session.on_message(
        r#"{"language":"bash","code":"sleep 100"}"#,
        &mut control,
        start,
    );
    assert!(session
        .on_tick(start + Duration::from_secs(60), &mut control)
        .is_empty());
    session.on_runtime(
        RuntimeEvent::ExecFinished(ExecId(1), outcome(0)),
        &mut control,
    );
    assert!(session
        .on_tick(start + Duration::from_secs(65), &mut control)
        .is_empty());
    let out = session.on_tick(start + Duration::from_secs(71), &mut control);
    assert_eq!(names(&out), ["SANDBOX_KILLING", "SANDBOX_DELETING"]);
    assert_eq!(control.deleted, vec![SandboxKey(7)]);
}

#[test]
fn text_output_split_inside_a_character_is_not_broken() {
    let mut control = FakeControl::default();
    let mut session = running_session(&mut control);
    session.on_message(
        r#"{"language":"bash","code":"x"}"#,
        &mut control,
        Instant::now(),
    );
    let euro = "€".as_bytes();
    let mut out = session.on_runtime(
        RuntimeEvent::Output(ExecId(1), Stream::Stdout, euro[..1].to_vec()),
        &mut control,
    );
    out.extend(session.flush_output(&mut control));
    assert!(out.is_empty(), "an incomplete character waits");
    session.on_runtime(
        RuntimeEvent::Output(ExecId(1), Stream::Stdout, euro[1..].to_vec()),
        &mut control,
    );
    let out = session.flush_output(&mut control);
    assert_eq!(frame(&out, 0)["data"], "€");
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

#[test]
fn checkpoint_flow_saves_then_deletes_and_closes_1000() {
    let mut control = FakeControl::default();
    let mut session = checkpointable_session(&mut control);
    let mut out = session.on_message(r#"{"action":"checkpoint"}"#, &mut control, Instant::now());
    assert_eq!(names(&out[..1]), ["SANDBOX_CHECKPOINTING"]);
    assert_eq!(
        out[1],
        Out::Save(SaveRequest::Checkpoint {
            with_running: false
        })
    );
    out = session.on_checkpoint_saved(Ok(()), &mut control);
    assert_eq!(control.deleted, vec![SandboxKey(7)]);
    out.extend(session.on_runtime(RuntimeEvent::Deleted, &mut control));
    assert_eq!(
        names(&out),
        [
            "SANDBOX_DELETING",
            "SANDBOX_DELETED",
            "SANDBOX_CHECKPOINTED",
            "close 1000"
        ]
    );
    assert!(session.is_ended() && !session.was_killed());
}

#[test]
fn a_failed_checkpoint_is_reported_with_its_reason() {
    let mut control = FakeControl::default();
    let mut session = checkpointable_session(&mut control);
    session.on_message(r#"{"action":"checkpoint"}"#, &mut control, Instant::now());
    let out = session.on_checkpoint_saved(Err("open TCP connection".into()), &mut control);
    assert_eq!(
        names(&out),
        ["SANDBOX_CHECKPOINT_ERROR", "error", "close 4000"]
    );
    assert_eq!(frame(&out, 1)["message"], "open TCP connection");
}

#[test]
fn snapshot_flow_continues_the_session() {
    let mut control = FakeControl::default();
    let mut session = checkpointable_session(&mut control);
    let now = Instant::now();
    let out = session.on_message(
        r#"{"action":"snapshot_filesystem","name":"../etc"}"#,
        &mut control,
        now,
    );
    assert_eq!(
        names(&out),
        [
            "SANDBOX_FILESYSTEM_SNAPSHOT_CREATING",
            "SANDBOX_FILESYSTEM_SNAPSHOT_ERROR",
            "error"
        ]
    );
    let out = session.on_message(
        r#"{"action":"snapshot_filesystem","name":"snap"}"#,
        &mut control,
        now,
    );
    assert_eq!(out[1], Out::Save(SaveRequest::Snapshot("snap".into())));
    let busy = session.on_message(r#"{"language":"bash","code":"true"}"#, &mut control, now);
    assert_eq!(names(&busy), ["SANDBOX_EXECUTION_ERROR", "error"]);
    let out = session.on_snapshot_finished(Ok(()), true, &mut control);
    assert_eq!(names(&out), ["SANDBOX_FILESYSTEM_SNAPSHOT_CREATED"]);
    assert!(session.is_running());
}

#[test]
fn idle_auto_checkpoint_saves_instead_of_deleting() {
    let mut control = FakeControl::default();
    let start = Instant::now();
    let mut session = Session::new(SessionId(1), "t".into(), settings(true), start);
    session.on_init(
        r#"{"idle_timeout": 5, "enable_idle_timeout_auto_checkpoint": true}"#,
        &mut control,
        start,
    );
    session.on_runtime(RuntimeEvent::Ready, &mut control);
    let out = session.on_tick(start + Duration::from_secs(6), &mut control);
    assert_eq!(
        out.last(),
        Some(&Out::Save(SaveRequest::Checkpoint {
            with_running: false
        }))
    );
    assert!(control.deleted.is_empty());
}

#[test]
fn restored_sessions_check_the_token_hash_and_report_running() {
    let mut control = FakeControl::default();
    let saved = SavedState {
        idle_timeout_secs: Some(60.0),
        auto_checkpoint: false,
        network: false,
        running_exec: None,
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

#[test]
fn an_execution_saved_at_shutdown_is_followed_after_the_restore() {
    let mut control = FakeControl::default();
    let saved = SavedState {
        running_exec: Some(SavedExec {
            exec: ExecId(4),
            output_encoding: OutputEncoding::Text,
        }),
        ..Default::default()
    };
    let mut session = Session::restored(
        SessionId(2),
        "hash".into(),
        &saved,
        SandboxKey(7),
        "id".into(),
        settings(true),
        Instant::now(),
    );
    session.on_runtime(RuntimeEvent::Ready, &mut control);
    let out = session.on_message(
        r#"{"language":"bash","code":"true"}"#,
        &mut control,
        Instant::now(),
    );
    assert_eq!(
        frame(&out, 1)["message"],
        "An execution is already in progress."
    );
    assert!(session
        .on_runtime(
            RuntimeEvent::Output(ExecId(4), Stream::Stdout, b"tick\n".to_vec()),
            &mut control
        )
        .is_empty());
    assert!(
        session.flush_output(&mut control).is_empty(),
        "held until reconnect"
    );
    let out = session.on_message(r#"{"action":"reconnect"}"#, &mut control, Instant::now());
    assert_eq!(names(&out), ["SANDBOX_EXECUTION_RUNNING", "stdout"]);
    assert_eq!(frame(&out, 1)["data"], "tick\n");
}

fn message_of(out: &[Out], index: usize) -> String {
    frame(out, index)["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
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

/// The original clients match on these texts.
#[test]
fn error_texts_the_original_clients_match_on() {
    let mut control = FakeControl::default();
    let mut session = checkpointable_session(&mut control);
    let now = Instant::now();
    session.on_message(r#"{"language":"bash","code":"sleep 9"}"#, &mut control, now);
    let out = session.on_message(r#"{"action":"checkpoint"}"#, &mut control, now);
    assert_eq!(
        names(&out),
        [
            "SANDBOX_CHECKPOINTING",
            "SANDBOX_EXECUTION_IN_PROGRESS_ERROR",
            "error"
        ]
    );
    assert!(message_of(&out, 2).contains("Cannot checkpoint while an execution is in progress"));
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

/// The execution state is a table of processes by process id, each with the request id
/// that started it (issue 12 adds concurrency on top of it).
#[test]
fn executions_are_processes_with_the_request_that_started_them() {
    let mut control = FakeControl::default();
    let mut session = running_session(&mut control);
    let now = Instant::now();
    session.on_message(
        r#"{"id":"7","language":"bash","code":"sleep 1"}"#,
        &mut control,
        now,
    );
    let listed = session.processes();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].process_id, ProcessId(1));
    assert_eq!(listed[0].request, Some(RequestId::Text("7".into())));
    assert_eq!(
        listed[0].language,
        Some(crate::agent_protocol::Language::Bash)
    );
    assert!(listed[0].running);
    // Protocol 1: the id is not echoed.
    let out = session.on_runtime(RuntimeEvent::ExecStarted(ExecId(1)), &mut control);
    assert_eq!(
        out,
        [Out::Send(ServerEvent::Status(Status::ExecutionRunning))]
    );
    session.on_runtime(
        RuntimeEvent::ExecFinished(ExecId(1), outcome(0)),
        &mut control,
    );
    assert!(session.processes().is_empty(), "ended and delivered");
    session.on_message(r#"{"language":"bash","code":"true"}"#, &mut control, now);
    let listed = session.processes();
    assert_eq!(
        listed[0].process_id,
        ProcessId(2),
        "process ids are not reused"
    );
    assert_eq!(listed[0].request, None);
}

#[test]
fn a_restored_session_hands_its_running_execution_to_the_runtime() {
    let saved = SavedState {
        running_exec: Some(SavedExec {
            exec: ExecId(4),
            output_encoding: OutputEncoding::Base64,
        }),
        ..Default::default()
    };
    let mut control = FakeControl::default();
    let mut session = Session::restored(
        SessionId(2),
        "hash".into(),
        &saved,
        SandboxKey(7),
        "id".into(),
        settings(true),
        Instant::now(),
    );
    assert_eq!(
        session.adopted_exec(),
        Some((ExecId(4), Duration::from_secs(60)))
    );
    assert_eq!(session.saved_state(), saved, "saved again as it was");
    session.on_runtime(RuntimeEvent::Ready, &mut control);
    assert_eq!(session.adopted_exec(), None, "adopted once, at the restore");
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
    assert!(session.saved_state().running_exec.is_some());
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
