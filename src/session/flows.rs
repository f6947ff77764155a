//! The shared corpus of message flows (`tests/flows/`, see its README) replayed against the
//! session machine: every flow the server reads. Runtime steps are applied, and every frame and
//! close the session produces must be the next one the flow lists. In a flow of the
//! compatible protocol (`"protocol": 1`) client frames are fed without their `id` (a server
//! without protocol 2 ignores it) and the keys protocol 2 adds to the compatible answers
//! (`protocol`, `process_id`) are not compared; a protocol-2 flow is compared key for key.
//! The store answers at once, as it would on a healthy mount.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::exec_options::ExecLimits;
use super::*;
use crate::agent_protocol::{ExitStatus, Stream};
use crate::runtime::exec::{ExecOutcome, Reason};
use crate::store::SavedSettings;

const SANDBOX: SandboxKey = SandboxKey(7);
const SANDBOX_ID: &str = "0123456789abcdef0123456789abcdef";
const TOKEN: &str = "secret-token";
/// The flows' wall clock starts here (unix milliseconds).
const FLOW_CLOCK_UNIX_MS: u64 = 1_700_000_000_000;

/// What the session asked of the runtime since the last `control` step.
#[derive(Default)]
struct Calls {
    start_exec: Vec<ExecSpec>,
    write_stdin: Vec<Vec<u8>>,
    close_stdin: usize,
    kill_exec: Vec<ExecId>,
    delete: usize,
    save: Vec<String>,
    /// (execution, paused) in the order asked.
    output_paused: Vec<(ExecId, bool)>,
    context_commands: Vec<crate::agent_protocol::ContextCommand>,
    /// (execution, cols, rows) of each `resize_terminal`.
    resize: Vec<(ExecId, u16, u16)>,
}

#[derive(Default)]
struct FakeRuntime {
    at_capacity: bool,
    /// Executions started: the runtime numbers them 1, 2, ...
    execs: u32,
    calls: Calls,
}

impl SandboxControl for FakeRuntime {
    fn acquire(
        &mut self,
        _session: SessionId,
        _options: &CreateOptions,
    ) -> Result<SandboxKey, RuntimeError> {
        if self.at_capacity {
            return Err(RuntimeError::AtCapacity(1));
        }
        Ok(SANDBOX)
    }
    fn sandbox_id(&self, _sandbox: SandboxKey) -> String {
        SANDBOX_ID.into()
    }
    fn start_exec(&mut self, _: SandboxKey, spec: ExecSpec) -> Result<ExecId, RuntimeError> {
        self.calls.start_exec.push(spec);
        self.execs += 1;
        Ok(ExecId(self.execs))
    }
    fn write_stdin(&mut self, _: SandboxKey, _: ExecId, data: &[u8]) -> Result<(), RuntimeError> {
        self.calls.write_stdin.push(data.to_vec());
        Ok(())
    }
    fn close_stdin(&mut self, _: SandboxKey, _: ExecId) -> Result<(), RuntimeError> {
        self.calls.close_stdin += 1;
        Ok(())
    }
    fn kill_exec(&mut self, _: SandboxKey, exec: ExecId) -> Result<(), RuntimeError> {
        self.calls.kill_exec.push(exec);
        Ok(())
    }
    fn delete(&mut self, _: SandboxKey) {
        self.calls.delete += 1;
    }
    fn set_exec_output_paused(&mut self, _: SandboxKey, exec: ExecId, paused: bool) {
        self.calls.output_paused.push((exec, paused));
    }
    fn resize_terminal(
        &mut self,
        _: SandboxKey,
        exec: ExecId,
        size: crate::agent_protocol::TerminalSize,
    ) -> Result<(), RuntimeError> {
        self.calls.resize.push((exec, size.cols, size.rows));
        Ok(())
    }
    fn context_command(
        &mut self,
        _: SandboxKey,
        command: crate::agent_protocol::ContextCommand,
    ) -> Result<(), RuntimeError> {
        self.calls.context_commands.push(command);
        Ok(())
    }
}

/// The server's part: the session, its runtime, its clock, what it sent and not yet checked.
struct Replay {
    name: String,
    session: Session,
    runtime: FakeRuntime,
    now: Instant,
    sent: VecDeque<Out>,
    /// Waiting for the init message (setup "none").
    initialized: bool,
    /// The flow's protocol (1: ids stripped, protocol 2's extra keys not compared).
    protocol: u64,
}

impl Replay {
    fn new(name: &str, flow: &Value) -> Self {
        let server = flow["server_settings"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let settings = settings(&server);
        let now = Instant::now();
        let runtime = FakeRuntime {
            at_capacity: server.get("at_capacity") == Some(&Value::Bool(true)),
            ..FakeRuntime::default()
        };
        let setup = flow["setup"].as_str().unwrap_or("none");
        let mut session = if setup == "restore" {
            let saved: SavedSettings = serde_json::from_value(flow["saved"].clone())
                .unwrap_or_else(|error| panic!("{name}: saved: {error}"));
            Session::restored(
                SessionId(1),
                token::hash(TOKEN),
                &SavedState::from(&saved),
                SANDBOX,
                SANDBOX_ID.into(),
                settings,
                now,
            )
        } else {
            Session::new(SessionId(1), TOKEN.into(), settings, now)
        };
        session.set_wall_clock(now, FLOW_CLOCK_UNIX_MS);
        let mut replay = Replay {
            name: name.to_string(),
            session,
            runtime,
            now,
            sent: VecDeque::new(),
            initialized: setup == "restore",
            protocol: flow["protocol"].as_u64().unwrap_or(1),
        };
        if setup == "create" || setup == "attach" {
            replay.create(&flow["create_options"]);
        }
        if setup == "attach" {
            replay.session.on_detach(replay.now);
        }
        replay
    }

    /// The standard create: the init the clients make, CREATING, ready, sandbox_id, RUNNING.
    fn create(&mut self, options: &Value) {
        let mut init = json!({"idle_timeout": null, "enable_checkpoint": false,
            "enable_idle_timeout_auto_checkpoint": false, "enable_sandbox_handoff": false,
            "filesystem_snapshot_name": null});
        for (key, value) in options.as_object().into_iter().flatten() {
            // The client's own option, not part of the init.
            if key != "auto_reconnect" {
                init[key] = value.clone();
            }
        }
        self.client(&init);
        self.expect_frame(&json!({"event": "status_update", "status": "SANDBOX_CREATING"}));
        self.runtime_step("ready", &json!({}));
        self.expect_frame(
            &json!({"event": "sandbox_id", "sandbox_id": SANDBOX_ID, "sandbox_token": TOKEN}),
        );
        let mut running = json!({"event": "status_update", "status": "SANDBOX_RUNNING"});
        if self.protocol >= 2 {
            running["protocol"] = json!(2);
        }
        self.expect_frame(&running);
    }

    /// Carry out what the session returned, as `deliver` in server/sessions.rs does.
    fn take(&mut self, outs: Vec<Out>) {
        for out in outs {
            let answer = match out {
                Out::Send(_) => {
                    self.sent.push_back(out);
                    continue;
                }
                Out::Close(..) => {
                    self.sent.push_back(out);
                    // The session lives on without this connection.
                    self.session.on_detach(self.now);
                    continue;
                }
                Out::Save(SaveRequest::Checkpoint { with_running }) => {
                    let what = if with_running {
                        "checkpoint with running"
                    } else {
                        "checkpoint"
                    };
                    self.runtime.calls.save.push(what.into());
                    continue;
                }
                Out::HandoffRefused(reason) => {
                    self.runtime
                        .calls
                        .save
                        .push(format!("refuse handoff: {reason}"));
                    continue;
                }
                Out::Save(SaveRequest::Snapshot(name)) => {
                    self.runtime.calls.save.push(format!("snapshot {name}"));
                    continue;
                }
                Out::FindSnapshot(name) => {
                    let image = PathBuf::from(format!("/snapshots/{name}/image-1"));
                    self.session.on_snapshot_found(Ok(image), &mut self.runtime)
                }
                Out::RemoveSavedState => self.session.on_saved_state_removed(),
                // The flows have no HTTP transfers.
                Out::HttpFile { .. } => continue,
            };
            self.take(answer);
        }
    }

    fn client(&mut self, frame: &Value) {
        let mut frame = frame.clone();
        if let (Some(object), 1) = (frame.as_object_mut(), self.protocol) {
            object.remove("id");
        }
        let text = frame.to_string();
        let outs = if self.initialized {
            self.session.on_message(&text, &mut self.runtime, self.now)
        } else {
            self.initialized = true;
            self.session.on_init(&text, &mut self.runtime, self.now)
        };
        self.take(outs);
    }

    fn runtime_step(&mut self, kind: &str, argument: &Value) {
        let runtime = &mut self.runtime;
        let outs = match kind {
            "ready" => self.session.on_runtime(RuntimeEvent::Ready, runtime),
            "start_failed" => self
                .session
                .on_runtime(RuntimeEvent::StartFailed(text(argument)), runtime),
            "lost" => self
                .session
                .on_runtime(RuntimeEvent::Lost(text(argument)), runtime),
            "deleted" => self.session.on_runtime(RuntimeEvent::Deleted, runtime),
            "exec_started" => self
                .session
                .on_runtime(RuntimeEvent::ExecStarted(exec_id(argument)), runtime),
            "exec_spawn_failed" => self.session.on_runtime(
                RuntimeEvent::ExecSpawnFailed(exec_id(&argument[0]), text(&argument[1])),
                runtime,
            ),
            "output" | "output_b64" => {
                let bytes = if kind == "output" {
                    text(&argument[2]).into_bytes()
                } else {
                    text::base64_decode(&text(&argument[2])).expect("output_b64 is base64")
                };
                let stream = match argument[1].as_str() {
                    Some("stderr") => Stream::Stderr,
                    _ => Stream::Stdout,
                };
                self.session.on_runtime(
                    RuntimeEvent::Output(exec_id(&argument[0]), stream, bytes),
                    runtime,
                )
            }
            "cell_event" => {
                // One whole event of a code cell, as the driver wrote it.
                let bytes = argument[1].to_string().into_bytes();
                self.session.on_runtime(
                    RuntimeEvent::CellEvent(exec_id(&argument[0]), bytes, true),
                    runtime,
                )
            }
            "code_contexts" => {
                let contexts = serde_json::from_value(argument.clone())
                    .unwrap_or_else(|error| panic!("code_contexts: {error}"));
                self.session
                    .on_runtime(RuntimeEvent::CodeContexts(contexts), runtime)
            }
            "exec_finished" => self.session.on_runtime(
                RuntimeEvent::ExecFinished(exec_id(&argument[0]), outcome(&argument[1])),
                runtime,
            ),
            "stdin_consumed" => {
                let count = argument[1]
                    .as_u64()
                    .and_then(|count| u32::try_from(count).ok())
                    .unwrap_or_default();
                self.session.on_runtime(
                    RuntimeEvent::StdinWritten(exec_id(&argument[0]), count),
                    runtime,
                )
            }
            "checkpoint_saved" => {
                let result = match argument.as_str() {
                    Some(message) => Err(message.to_string()),
                    None => Ok(()),
                };
                self.session.on_checkpoint_saved(result, runtime)
            }
            "checkpoint_refused" => self
                .session
                .on_runtime(RuntimeEvent::CheckpointRefused(text(argument)), runtime),
            "snapshot_finished" => {
                let result = match argument["error"].as_str() {
                    Some(message) => Err(message.to_string()),
                    None => Ok(()),
                };
                let alive = argument["alive"].as_bool().unwrap_or(true);
                self.session.on_snapshot_finished(result, alive, runtime)
            }
            "detach" => {
                self.session.on_detach(self.now);
                Vec::new()
            }
            "attach" => self.session.on_attach(self.now),
            "advance_secs" => {
                self.now += Duration::from_secs(argument.as_u64().unwrap_or(0));
                self.session.on_tick(self.now, runtime)
            }
            "shutdown" => self.session.on_shutdown(),
            "handoff_requested" => self.session.on_handoff_requested().unwrap_or_default(),
            other => panic!("{}: unknown runtime step {other}", self.name),
        };
        self.take(outs);
        let framed = self.session.flush_output(&mut self.runtime);
        self.take(framed);
    }

    /// The next thing the session sent must be this frame.
    fn expect_frame(&mut self, expected: &Value) {
        let sent = self.sent.pop_front();
        let Some(Out::Send(event)) = &sent else {
            panic!(
                "{}: expected the frame {expected}, the session sent {sent:?}",
                self.name
            );
        };
        let mut actual: Value = serde_json::from_str(&event.to_json()).unwrap_or_default();
        if let Some(object) = actual.as_object_mut() {
            if self.protocol == 1 {
                // Keys a protocol-2 server adds to the compatible answers.
                object.remove("protocol");
                object.remove("process_id");
                object.remove("seq");
            }
            if expected.get("duration_ms").is_none() {
                object.remove("duration_ms");
            }
        }
        assert_eq!(&actual, expected, "{}: a frame differs", self.name);
    }

    fn expect_close(&mut self, expected: &Value) {
        let sent = self.sent.pop_front();
        let Some(Out::Close(code, reason)) = &sent else {
            panic!(
                "{}: expected the close {expected}, the session sent {sent:?}",
                self.name
            );
        };
        assert_eq!(
            Some(u64::from(*code)),
            expected["code"].as_u64(),
            "{}: close code",
            self.name
        );
        if let Some(expected_reason) = expected["reason"].as_str() {
            assert_eq!(reason, expected_reason, "{}: close reason", self.name);
        }
    }

    /// What the session asked of the runtime since the last check (only the keys given).
    fn check_calls(&mut self, expected: &Value) {
        let calls = std::mem::take(&mut self.runtime.calls);
        let name = &self.name;
        for (key, wanted) in expected.as_object().into_iter().flatten() {
            match key.as_str() {
                "start_exec" => {
                    let specs = wanted.as_array().cloned().unwrap_or_default();
                    assert_eq!(calls.start_exec.len(), specs.len(), "{name}: start_exec");
                    for (spec, wanted) in calls.start_exec.iter().zip(specs) {
                        check_spec(name, spec, &wanted);
                    }
                }
                "write_stdin" => {
                    let chunks: Vec<Vec<u8>> = wanted
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|chunk| match chunk["b64"].as_str() {
                            Some(b64) => text::base64_decode(b64).unwrap_or_default(),
                            None => text(chunk).into_bytes(),
                        })
                        .collect();
                    assert_eq!(calls.write_stdin, chunks, "{name}: write_stdin");
                }
                "close_stdin" => {
                    assert_eq!(Some(calls.close_stdin as u64), wanted.as_u64(), "{name}")
                }
                "kill_exec" => {
                    let killed: Vec<u64> =
                        calls.kill_exec.iter().map(|id| u64::from(id.0)).collect();
                    let wanted: Vec<u64> = wanted
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_u64)
                        .collect();
                    assert_eq!(killed, wanted, "{name}: kill_exec");
                }
                "delete" => assert_eq!(Some(calls.delete as u64), wanted.as_u64(), "{name}"),
                "save" => assert_eq!(calls.save, [text(wanted)], "{name}: save"),
                "output_paused" => {
                    let paused: Vec<Value> = calls
                        .output_paused
                        .iter()
                        .map(|(exec, paused)| json!([exec.0, paused]))
                        .collect();
                    assert_eq!(&Value::Array(paused), wanted, "{name}: output_paused");
                }
                "resize" => {
                    let resized: Vec<Value> = calls
                        .resize
                        .iter()
                        .map(|(exec, cols, rows)| json!([exec.0, cols, rows]))
                        .collect();
                    assert_eq!(&Value::Array(resized), wanted, "{name}: resize");
                }
                "context_commands" => {
                    let commands =
                        serde_json::to_value(&calls.context_commands).unwrap_or_default();
                    assert_eq!(&commands, wanted, "{name}: context_commands");
                }
                other => panic!("{name}: unknown control key {other}"),
            }
        }
    }

    fn play(&mut self, step: &Map<String, Value>) {
        if let Some(frame) = step.get("client") {
            self.client(frame);
        }
        if let Some(frame) = step.get("server") {
            self.expect_frame(frame);
        }
        if let Some(close) = step.get("close") {
            self.expect_close(close);
        }
        if let Some(calls) = step.get("control") {
            self.check_calls(calls);
        }
        if let Some(Value::Object(runtime)) = step.get("runtime") {
            for (kind, argument) in runtime {
                self.runtime_step(kind, argument);
            }
        }
        // call (without a frame), expect, drop, connect, server_raw: the clients' part.
    }

    /// The flow is over: nothing the session sent went unchecked.
    fn finish(&self) {
        let unchecked: Vec<&Out> = self.sent.iter().collect();
        assert!(
            unchecked.is_empty(),
            "{}: sent but not in the flow: {unchecked:?}",
            self.name
        );
    }
}

/// The default settings of the corpus (its README), with the flow's `server_settings`.
fn settings(server: &Map<String, Value>) -> SessionSettings {
    let number =
        |key: &str, default: u64| server.get(key).and_then(Value::as_u64).unwrap_or(default);
    let flag = |key: &str| server.get(key).and_then(Value::as_bool).unwrap_or(false);
    let seconds = |key: &str, default: u64| Duration::from_secs(number(key, default));
    SessionSettings {
        checkpoint_enabled: flag("checkpoint_enabled"),
        snapshot_enabled: flag("snapshot_enabled"),
        default_idle_timeout: seconds("default_idle_timeout", 300),
        max_idle_timeout: seconds("max_idle_timeout", 3600),
        exec: ExecLimits {
            default_timeout: seconds("exec_timeout", 60),
            max_timeout: seconds("max_exec_timeout", 600),
            max_code_bytes: number("max_code_bytes", 1000) as usize,
        },
        held_output_bytes: number("held_output_bytes", 100) as usize,
        resend_output_bytes: number("resend_output_bytes", 1 << 20) as usize,
        egress_unavailable: match server.get("egress_unavailable") {
            Some(Value::Null) => None,
            Some(value) => Some(text(value)),
            None => Some("network egress is disabled on this server (SANDBOX_EGRESS=off)".into()),
        },
        store_timeout: Duration::from_secs(30),
        max_session_processes: number("max_session_processes", 16) as usize,
        stdin_window_bytes: number("stdin_window_bytes", 4 * 1024 * 1024),
        max_result_bytes: number("max_result_bytes", 16 * 1024 * 1024),
    }
}

fn check_spec(name: &str, spec: &ExecSpec, wanted: &Value) {
    for (key, value) in wanted.as_object().into_iter().flatten() {
        let actual = match key.as_str() {
            "language" => json!(spec.language),
            "code" => json!(spec.code),
            "env" => json!(spec.env),
            "cwd" => json!(spec.cwd),
            "timeout" => json!(spec.timeout.as_secs_f64()),
            // A file operation's request to the agent's helper.
            "file" => json!(spec.file),
            "pty" => match spec.pty {
                Some(size) => json!({"cols": size.cols, "rows": size.rows}),
                None => Value::Null,
            },
            // A code cell: the context it runs in.
            "context_id" => json!(spec.cell.as_ref().map(|cell| &cell.context_id)),
            other => panic!("{name}: unknown start_exec key {other}"),
        };
        let matches = match (actual.as_f64(), value.as_f64()) {
            (Some(actual), Some(value)) => actual == value,
            _ => &actual == value,
        };
        assert!(matches, "{name}: start_exec {key}: {actual} is not {value}");
    }
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

fn exec_id(value: &Value) -> ExecId {
    ExecId(
        value
            .as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .unwrap_or_default(),
    )
}

fn outcome(end: &Value) -> ExecOutcome {
    let status = match end["signal"].as_i64() {
        Some(signal) => ExitStatus::Signal(signal as i32),
        None => ExitStatus::Code(end["exit_code"].as_i64().unwrap_or(0) as i32),
    };
    let reason = match end["reason"].as_str() {
        Some("signaled") => Reason::Signaled,
        Some("killed") => Reason::Killed,
        Some("timeout") => Reason::Timeout,
        Some("output_limit") => Reason::OutputLimit,
        Some("sandbox_lost") => Reason::SandboxLost,
        _ => Reason::Exited,
    };
    ExecOutcome {
        status,
        reason,
        duration_ms: end["duration_ms"].as_u64().unwrap_or(0),
        truncated: false,
    }
}

/// The flows of `dir` the server reads.
fn server_flows(dir: &Path) -> Vec<(String, Value)> {
    let mut flows = Vec::new();
    let entries = std::fs::read_dir(dir).expect("tests/flows is readable");
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|extension| extension.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("a flow is readable");
        let flow: Value = serde_json::from_str(&text)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        let readers = flow["readers"]
            .as_array()
            .map(|readers| readers.iter().any(|reader| reader == "server"))
            .unwrap_or(true);
        if readers {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            flows.push((name, flow));
        }
    }
    flows.sort_by(|a, b| a.0.cmp(&b.0));
    flows
}

#[test]
fn the_flows_of_the_shared_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flows");
    let flows = server_flows(&dir);
    // The corpus holds 32 protocol-1 and 25 protocol-2 such flows; fewer means the filter or
    // the corpus broke.
    let protocol_2 = flows
        .iter()
        .filter(|(_, flow)| flow["protocol"] == 2)
        .count();
    assert!(flows.len() >= 57, "only {} flows", flows.len());
    assert!(protocol_2 >= 25, "only {protocol_2} protocol-2 flows");
    // Every flow is replayed, and every one that fails is named, not only the first.
    let failed: Vec<String> = flows
        .into_iter()
        .filter_map(|(name, flow)| {
            let replayed = std::panic::catch_unwind(|| {
                let mut replay = Replay::new(&name, &flow);
                for step in flow["steps"].as_array().into_iter().flatten() {
                    let Some(step) = step.as_object() else {
                        panic!("{name}: a step is not an object");
                    };
                    replay.play(step);
                }
                replay.finish();
            });
            replayed.is_err().then_some(name)
        })
        .collect();
    assert!(failed.is_empty(), "flows that failed: {failed:?}");
}

/// The replayer itself: a flow that says something else than the session does fails.
fn replay_inline(flow: Value) {
    let mut replay = Replay::new("inline", &flow);
    for step in flow["steps"].as_array().into_iter().flatten() {
        replay.play(step.as_object().expect("an object"));
    }
    replay.finish();
}

#[test]
fn a_flow_that_matches_passes() {
    replay_inline(json!({"protocol": 1, "setup": "create", "steps": [
        {"client": {"id": "1", "language": "bash", "code": "echo"}},
        {"control": {"start_exec": [{"language": "bash", "code": "echo", "cwd": "/root", "timeout": 60}]}},
        {"runtime": {"exec_started": 1}},
        {"server": {"event": "status_update", "status": "SANDBOX_EXECUTION_RUNNING"}},
    ]}));
}

#[test]
#[should_panic(expected = "a frame differs")]
fn a_flow_with_another_frame_fails() {
    replay_inline(json!({"protocol": 1, "setup": "create", "steps": [
        {"client": {"id": "1", "language": "bash", "code": "echo"}},
        {"runtime": {"exec_started": 1}},
        {"server": {"event": "status_update", "status": "SANDBOX_EXECUTION_DONE"}},
    ]}));
}

#[test]
#[should_panic(expected = "sent but not in the flow")]
fn a_flow_that_misses_a_frame_fails() {
    replay_inline(json!({"protocol": 1, "setup": "create", "steps": [
        {"client": {"id": "1", "language": "bash", "code": "echo"}},
        {"runtime": {"exec_started": 1}},
    ]}));
}

#[test]
#[should_panic(expected = "start_exec cwd")]
fn a_flow_with_other_runtime_calls_fails() {
    replay_inline(json!({"protocol": 1, "setup": "create", "steps": [
        {"client": {"id": "1", "language": "bash", "code": "echo"}},
        {"control": {"start_exec": [{"cwd": "/tmp"}]}},
    ]}));
}
