//! The code interpreter of a session (issue 13, docs/protocol.md "Code interpreter"): code
//! contexts (long-lived Python processes in the sandbox, see the agent's `context` module),
//! `run_code` cells in them, and their results and errors.
//!
//! A cell is a process of the session (kind `cell`): it has a process id, streams its output,
//! can be interrupted with `kill_process` and re-attached like an execution. One cell runs at a
//! time per context; later ones wait in a FIFO queue of at most [`MAX_QUEUED_CELLS`]. The
//! agent owns the contexts and reports its table after every change and after a restore; the
//! session keeps what it needs to answer at once (cwd, whether it died, its cell and queue).

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use serde_json::{Map, Value};

use super::events::{CodeContextView, Reply};
use super::exec_options::{self, ExecLimits, ExecOptions, RawExecOptions, DEFAULT_CWD};
use super::options::quoted;
use super::processes::NewProcess;
use super::Status;
use super::{error_frames, Frame, Out, ProcessId, RequestId, SandboxControl, ServerEvent, Session};
use crate::agent_protocol::{ContextCommand, ContextInfo, ExecId, Language};
use crate::runtime::exec::{ExecOutcome, Reason};
use crate::runtime::CellSpec;

/// Cells waiting for a busy context, per context.
pub const MAX_QUEUED_CELLS: usize = 16;

/// The context a `run_code` without `context_id` runs in (created on first use).
pub const DEFAULT_CONTEXT: &str = "default";

/// Code contexts a session may have at once.
pub const MAX_CONTEXTS: usize = 16;

/// A code interpreter message, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeMessage {
    RunCode(RunCode),
    /// `create_code_context` with its working directory.
    Create {
        cwd: String,
    },
    ListContexts,
    Restart(String),
    Delete(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCode {
    pub code: String,
    pub context_id: String,
    pub options: ExecOptions,
}

/// A context id: 1 to 64 letters, digits, `_` or `-`.
fn context_id(value: &Value) -> Result<String, String> {
    match value.as_str() {
        Some(id)
            if (1..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-') =>
        {
            Ok(id.to_string())
        }
        _ => Err(format!(
            "context_id must be 1 to 64 letters, digits, '_' or '-', got {}",
            quoted(value)
        )),
    }
}

fn python_only(message: &Map<String, Value>) -> Result<(), String> {
    match message.get("language") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(name)) if name == "python" => Ok(()),
        Some(other) => Err(format!(
            "code contexts run python only, got language {}",
            quoted(other)
        )),
    }
}

/// `{"action":"run_code","code","context_id","timeout","output_encoding","language"}`.
pub fn run_code(message: &Map<String, Value>, limits: &ExecLimits) -> Result<CodeMessage, String> {
    python_only(message)?;
    let code = match message.get("code") {
        Some(Value::String(code)) => code.clone(),
        None | Some(Value::Null) => return Err("run_code needs a \"code\"".into()),
        Some(other) => return Err(format!("code must be a string, got {}", quoted(other))),
    };
    let context_id = match message.get("context_id") {
        None | Some(Value::Null) => DEFAULT_CONTEXT.to_string(),
        Some(value) => context_id(value)?,
    };
    let mut raw = RawExecOptions::from_json(message);
    // A cell runs in its context's directory and environment.
    raw.env = exec_options::Raw::Absent;
    raw.cwd = exec_options::Raw::Absent;
    let options = exec_options::check(code.len(), &raw, limits)?;
    Ok(CodeMessage::RunCode(RunCode {
        code,
        context_id,
        options,
    }))
}

/// `{"action":"create_code_context","cwd","language"}`.
pub fn create_context(message: &Map<String, Value>) -> Result<CodeMessage, String> {
    python_only(message)?;
    let raw = match message.get("cwd") {
        None | Some(Value::Null) => exec_options::Raw::Absent,
        Some(value) => exec_options::Raw::Json(value),
    };
    let cwd = exec_options::cwd(raw)?;
    Ok(CodeMessage::Create { cwd })
}

/// The `context_id` an action about one context needs.
pub fn named_context(message: &Map<String, Value>, action: &str) -> Result<String, String> {
    match message.get("context_id") {
        None | Some(Value::Null) => Err(format!("{action} needs a \"context_id\"")),
        Some(value) => context_id(value),
    }
}

#[derive(Debug)]
struct QueuedCell {
    id: Option<RequestId>,
    run: RunCode,
}

#[derive(Debug)]
struct CodeContext {
    cwd: String,
    /// Why its process is gone (the agent said so): cells are refused until a restart.
    died: Option<String>,
    /// The cell it runs.
    running: Option<ProcessId>,
    queue: VecDeque<QueuedCell>,
}

impl CodeContext {
    fn new(cwd: String) -> Self {
        CodeContext {
            cwd,
            died: None,
            running: None,
            queue: VecDeque::new(),
        }
    }

    fn view(&self, context_id: &str) -> CodeContextView {
        let state = match (&self.died, self.running) {
            (Some(_), _) => "dead",
            (None, Some(_)) => "busy",
            (None, None) => "idle",
        };
        CodeContextView {
            context_id: context_id.to_string(),
            cwd: self.cwd.clone(),
            state,
            died: self.died.clone(),
        }
    }

    fn dead_message(&self, context_id: &str) -> Option<String> {
        self.died
            .as_ref()
            .map(|why| format!("context {context_id} died ({why}); restart it"))
    }
}

/// The session's code contexts.
#[derive(Debug, Default)]
pub struct CodeContexts {
    table: BTreeMap<String, CodeContext>,
    /// The number of the next context created on request (`c1`, `c2`, ...).
    next_number: u64,
    /// The sandbox (re)started: the agent's next report is the whole truth (a restore keeps
    /// the contexts of the checkpoint, a snapshot's reset ends them).
    resync: bool,
    /// Contexts created on request whose start the agent has not reported yet, with the
    /// request to answer: the reply waits for the report, so that a context that could not
    /// start (a missing `cwd`) is an error of its request, not a dead context found later.
    pending_creates: Vec<(String, Option<RequestId>)>,
}

impl CodeContexts {
    pub fn expect_resync(&mut self) {
        self.resync = true;
    }

    fn new_context_id(&mut self) -> String {
        loop {
            self.next_number += 1;
            let id = format!("c{}", self.next_number);
            if !self.table.contains_key(&id) {
                return id;
            }
        }
    }
}

/// A cell's event from the agent (JSON written by the driver inside the sandbox): checked
/// before it goes to a client; anything else is dropped.
fn parse_cell_event(bytes: &[u8]) -> Option<ServerEvent> {
    let Ok(Value::Object(mut event)) = serde_json::from_slice::<Value>(bytes) else {
        return None;
    };
    match event.get("type").and_then(Value::as_str)? {
        "result" => {
            let is_main_result = event.get("is_main_result")?.as_bool()?;
            let Some(Value::Object(data)) = event.remove("data") else {
                return None;
            };
            Some(ServerEvent::CellResult {
                is_main_result,
                data,
            })
        }
        "error" => {
            let name = event.get("name")?.as_str()?.to_string();
            let value = event.get("value")?.as_str()?.to_string();
            let traceback = event
                .get("traceback")?
                .as_array()?
                .iter()
                .map(|line| line.as_str().map(str::to_string))
                .collect::<Option<Vec<String>>>()?;
            Some(ServerEvent::CellError {
                name,
                value,
                traceback,
            })
        }
        _ => None,
    }
}

impl Session {
    pub(super) fn code_message(
        &mut self,
        message: CodeMessage,
        id: Option<&RequestId>,
        out: &mut Vec<Out>,
        control: &mut dyn SandboxControl,
        now: Instant,
    ) {
        match message {
            CodeMessage::RunCode(run) => self.run_code(run, id, out, control, now),
            CodeMessage::Create { cwd } => self.create_code_context(cwd, id, out, control),
            CodeMessage::ListContexts => {
                let views = self
                    .code
                    .table
                    .iter()
                    .map(|(context_id, context)| context.view(context_id))
                    .collect();
                reply(out, id, Reply::CodeContexts(views));
            }
            CodeMessage::Restart(context_id) => {
                self.restart_code_context(context_id, id, out, control)
            }
            CodeMessage::Delete(context_id) => {
                self.delete_code_context(context_id, id, out, control)
            }
        }
    }

    fn run_code(
        &mut self,
        run: RunCode,
        id: Option<&RequestId>,
        out: &mut Vec<Out>,
        control: &mut dyn SandboxControl,
        now: Instant,
    ) {
        if !self.code.table.contains_key(&run.context_id) {
            if run.context_id != DEFAULT_CONTEXT {
                let message = format!(
                    "no code context {}; create one with create_code_context",
                    run.context_id
                );
                return out.extend(error_frames(Status::CodeContextError, &message, id));
            }
            // The default context: the agent starts it with its first cell.
            self.code.table.insert(
                DEFAULT_CONTEXT.to_string(),
                CodeContext::new(DEFAULT_CWD.to_string()),
            );
        }
        let Some(context) = self.code.table.get_mut(&run.context_id) else {
            return;
        };
        if let Some(message) = context.dead_message(&run.context_id) {
            return out.extend(error_frames(Status::CodeContextError, &message, id));
        }
        if context.running.is_some() {
            if context.queue.len() >= MAX_QUEUED_CELLS {
                let message = format!(
                    "context {} already has {MAX_QUEUED_CELLS} cells waiting; wait for them",
                    run.context_id
                );
                return out.extend(error_frames(Status::CodeContextError, &message, id));
            }
            context.queue.push_back(QueuedCell {
                id: id.cloned(),
                run,
            });
            return;
        }
        self.start_cell(run, id, out, control, now);
    }

    fn start_cell(
        &mut self,
        run: RunCode,
        id: Option<&RequestId>,
        out: &mut Vec<Out>,
        control: &mut dyn SandboxControl,
        now: Instant,
    ) {
        let running = self.processes.running_count();
        if running >= self.settings.max_session_processes {
            let message = format!(
                "this session already runs {running} processes (SANDBOX_MAX_SESSION_PROCESSES); wait for one to end"
            );
            return out.extend(error_frames(Status::ExecutionError, &message, id));
        }
        let (Some(sandbox), Some(context)) = (self.sandbox, self.code.table.get(&run.context_id))
        else {
            return;
        };
        let mut spec = run.options.spec(Language::Python, &run.code);
        spec.cell = Some(CellSpec {
            context_id: run.context_id.clone(),
            cwd: context.cwd.clone(),
            max_result_bytes: self.settings.max_result_bytes,
        });
        match control.start_exec(sandbox, spec) {
            Ok(exec) => {
                self.processes.start(NewProcess {
                    exec,
                    request: id.cloned(),
                    language: Some(Language::Python),
                    kind: super::events::ProcessKind::Exec,
                    encoding: run.options.output_encoding,
                    started_unix_ms: self.unix_ms(now),
                    stdin: None,
                    followed: self.attached,
                    started: false,
                    context: Some(run.context_id.clone()),
                });
                if let Some(context) = self.code.table.get_mut(&run.context_id) {
                    context.running = Some(super::processes::process_id(exec));
                }
            }
            Err(error) => out.extend(error_frames(Status::ExecutionError, &error.to_string(), id)),
        }
    }

    /// The next waiting cell of `context_id`, if it is idle now.
    fn start_next_cell(
        &mut self,
        context_id: &str,
        out: &mut Vec<Out>,
        control: &mut dyn SandboxControl,
    ) {
        let now = Instant::now();
        loop {
            let Some(context) = self.code.table.get_mut(context_id) else {
                return;
            };
            if context.running.is_some() {
                return;
            }
            let Some(next) = context.queue.pop_front() else {
                return;
            };
            if let Some(message) = context.dead_message(context_id) {
                self.send_refusal(out, Status::CodeContextError, &message, next.id.as_ref());
                continue;
            }
            self.start_cell(next.run, next.id.as_ref(), out, control, now);
        }
    }

    /// An error for a request that may have been made by a client no longer attached.
    fn send_refusal(
        &self,
        out: &mut Vec<Out>,
        status: Status,
        message: &str,
        id: Option<&RequestId>,
    ) {
        if self.attached {
            out.extend(error_frames(status, message, id));
        }
    }

    fn create_code_context(
        &mut self,
        cwd: String,
        id: Option<&RequestId>,
        out: &mut Vec<Out>,
        control: &mut dyn SandboxControl,
    ) {
        if self.code.table.len() >= MAX_CONTEXTS {
            let message =
                format!("this sandbox has {MAX_CONTEXTS} code contexts already; delete one first");
            return out.extend(error_frames(Status::CodeContextError, &message, id));
        }
        let Some(sandbox) = self.sandbox else { return };
        let context_id = self.code.new_context_id();
        let command = ContextCommand::Create {
            context_id: context_id.clone(),
            cwd: cwd.clone(),
        };
        if let Err(error) = control.context_command(sandbox, command) {
            return out.extend(error_frames(
                Status::CodeContextError,
                &error.to_string(),
                id,
            ));
        }
        self.code
            .table
            .insert(context_id.clone(), CodeContext::new(cwd));
        // Answered when the agent reports the context (see `on_code_contexts`).
        self.code.pending_creates.push((context_id, id.cloned()));
    }

    fn restart_code_context(
        &mut self,
        context_id: String,
        id: Option<&RequestId>,
        out: &mut Vec<Out>,
        control: &mut dyn SandboxControl,
    ) {
        let Some(sandbox) = self.sandbox else { return };
        let Some(context) = self.code.table.get_mut(&context_id) else {
            let message = unknown_context(&context_id);
            return out.extend(error_frames(Status::CodeContextError, &message, id));
        };
        // Its running cell ends with ContextDied; the waiting ones run in the new process.
        let commands = [
            ContextCommand::Delete {
                context_id: context_id.clone(),
            },
            ContextCommand::Create {
                context_id: context_id.clone(),
                cwd: context.cwd.clone(),
            },
        ];
        for command in commands {
            if let Err(error) = control.context_command(sandbox, command) {
                return out.extend(error_frames(
                    Status::CodeContextError,
                    &error.to_string(),
                    id,
                ));
            }
        }
        context.died = None;
        let view = context.view(&context_id);
        reply(out, id, Reply::CodeContext(view));
    }

    fn delete_code_context(
        &mut self,
        context_id: String,
        id: Option<&RequestId>,
        out: &mut Vec<Out>,
        control: &mut dyn SandboxControl,
    ) {
        let Some(sandbox) = self.sandbox else { return };
        if !self.code.table.contains_key(&context_id) {
            let message = unknown_context(&context_id);
            return out.extend(error_frames(Status::CodeContextError, &message, id));
        }
        let command = ContextCommand::Delete {
            context_id: context_id.clone(),
        };
        if let Err(error) = control.context_command(sandbox, command) {
            return out.extend(error_frames(
                Status::CodeContextError,
                &error.to_string(),
                id,
            ));
        }
        if let Some(context) = self.code.table.remove(&context_id) {
            let message = format!("context {context_id} was deleted");
            for waiting in context.queue {
                self.send_refusal(out, Status::CodeContextError, &message, waiting.id.as_ref());
            }
        }
        reply(out, id, Reply::Done);
    }

    /// A part of a cell's event: assembled, checked, then sent after the output before it.
    pub(super) fn on_cell_event(
        &mut self,
        exec: ExecId,
        data: Vec<u8>,
        last: bool,
        out: &mut Vec<Out>,
        control: &mut dyn SandboxControl,
    ) {
        let Some(process) = self.processes.of_exec(exec) else {
            return;
        };
        // The driver bounds a result's data; the JSON around it is small.
        let bound = usize::try_from(self.settings.max_result_bytes)
            .unwrap_or(usize::MAX)
            .saturating_add(1024 * 1024);
        let Some(entry) = self.processes.get_mut(process) else {
            return;
        };
        if let Some(event) = entry.cell_event.as_mut() {
            if event.len().saturating_add(data.len()) > bound {
                // Over the bound: dropped (a forged stream, since the driver keeps to it).
                entry.cell_event = None;
            } else {
                event.extend_from_slice(&data);
            }
        }
        if !last {
            return;
        }
        let assembled = entry.cell_event.replace(Vec::new());
        let Some(event) = assembled.as_deref().and_then(parse_cell_event) else {
            return;
        };
        if matches!(&event, ServerEvent::CellError { name, .. } if name == "ContextDied") {
            entry.context_died = true;
        }
        // The output written before the event goes first.
        let pending = entry.frame_pending();
        if let Some(output) = pending {
            self.emit_event(out, process, output, control);
        }
        self.emit_event(out, process, event, control);
    }

    /// The agent's table of contexts: which died (and, after a restore, which there are).
    /// Contexts created on request are answered now: with the context, or with why it could
    /// not start (it is then deleted).
    pub(super) fn on_code_contexts(
        &mut self,
        contexts: Vec<ContextInfo>,
        out: &mut Vec<Out>,
        control: &mut dyn SandboxControl,
    ) {
        let mut failed = Vec::new();
        for (context_id, id) in std::mem::take(&mut self.code.pending_creates) {
            let Some(info) = contexts.iter().find(|info| info.context_id == context_id) else {
                // Not in this report (it came from before the create): wait for the next.
                self.code.pending_creates.push((context_id, id));
                continue;
            };
            match &info.died {
                None => {
                    let view = self
                        .code
                        .table
                        .get(&context_id)
                        .map(|c| c.view(&context_id));
                    if let Some(view) = view {
                        reply(out, id.as_ref(), Reply::CodeContext(view));
                    }
                }
                Some(why) => {
                    self.code.table.remove(&context_id);
                    if let Some(sandbox) = self.sandbox {
                        let command = ContextCommand::Delete {
                            context_id: context_id.clone(),
                        };
                        let _ = control.context_command(sandbox, command);
                    }
                    let message = format!("cannot create a code context: {why}");
                    out.extend(error_frames(
                        Status::CodeContextError,
                        &message,
                        id.as_ref(),
                    ));
                    failed.push(context_id);
                }
            }
        }
        // The ones that could not start are gone (the agent deletes them too).
        let contexts: Vec<ContextInfo> = contexts
            .into_iter()
            .filter(|info| !failed.contains(&info.context_id))
            .collect();
        if std::mem::take(&mut self.code.resync) {
            let known: Vec<String> = contexts.iter().map(|c| c.context_id.clone()).collect();
            self.code.table.retain(|context_id, context| {
                known.contains(context_id) || context.running.is_some()
            });
        }
        for info in contexts {
            let context = self
                .code
                .table
                .entry(info.context_id.clone())
                .or_insert_with(|| CodeContext::new(info.cwd.clone()));
            context.died = info.died;
            if let Some(number) = info
                .context_id
                .strip_prefix('c')
                .and_then(|digits| digits.parse::<u64>().ok())
            {
                self.code.next_number = self.code.next_number.max(number);
            }
        }
    }

    /// A cell's end, as clients see it: `context_died` if its context died under it.
    pub(super) fn cell_outcome(&self, exec: ExecId, outcome: &ExecOutcome) -> ExecOutcome {
        let mut outcome = *outcome;
        let died = self
            .processes
            .of_exec(exec)
            .and_then(|process| self.processes.get(process))
            .is_some_and(|entry| entry.context_died);
        if died && matches!(outcome.reason, Reason::Exited | Reason::Signaled) {
            outcome.reason = Reason::ContextDied;
        }
        outcome
    }

    /// A cell ended: its context takes the next one.
    pub(super) fn on_cell_finished(
        &mut self,
        context_id: &str,
        process: ProcessId,
        out: &mut Vec<Out>,
        control: &mut dyn SandboxControl,
    ) {
        if let Some(context) = self.code.table.get_mut(context_id) {
            if context.running == Some(process) {
                context.running = None;
            }
        }
        self.start_next_cell(context_id, out, control);
    }
}

fn unknown_context(context_id: &str) -> String {
    format!("no code context {context_id}")
}

fn reply(out: &mut Vec<Out>, id: Option<&RequestId>, reply: Reply) {
    out.push(Out::Send(Frame::answering(ServerEvent::Reply(reply), id)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const LIMITS: ExecLimits = ExecLimits {
        default_timeout: Duration::from_secs(60),
        max_timeout: Duration::from_secs(600),
        max_code_bytes: 1000,
    };

    fn object(text: &str) -> Map<String, Value> {
        match serde_json::from_str(text) {
            Ok(Value::Object(map)) => map,
            _ => panic!("not an object: {text}"),
        }
    }

    #[test]
    fn run_code_fields_are_checked_and_named() {
        let Ok(CodeMessage::RunCode(run)) = run_code(&object(r#"{"code":"x"}"#), &LIMITS) else {
            panic!("refused");
        };
        assert_eq!(run.context_id, "default");
        assert_eq!(run.options.timeout, Duration::from_secs(60));
        for (text, problem) in [
            (r#"{}"#, r#"run_code needs a "code""#),
            (r#"{"code":1}"#, "code must be a string, got 1"),
            (
                r#"{"code":"x","language":"bash"}"#,
                r#"code contexts run python only, got language "bash""#,
            ),
            (
                r#"{"code":"x","context_id":"a b"}"#,
                r#"context_id must be 1 to 64 letters, digits, '_' or '-', got "a b""#,
            ),
        ] {
            assert_eq!(run_code(&object(text), &LIMITS), Err(problem.to_string()));
        }
        assert!(run_code(&object(r#"{"code":"x","timeout":-1}"#), &LIMITS)
            .unwrap_err()
            .contains("timeout"));
        assert_eq!(
            named_context(&object("{}"), "delete_code_context"),
            Err(r#"delete_code_context needs a "context_id""#.to_string())
        );
        assert_eq!(
            create_context(&object(r#"{"cwd":"/tmp"}"#)),
            Ok(CodeMessage::Create { cwd: "/tmp".into() })
        );
    }

    #[test]
    fn cell_events_from_the_sandbox_are_checked() {
        let result = parse_cell_event(
            br#"{"type":"result","is_main_result":true,"data":{"text/plain":"1"}}"#,
        );
        assert!(matches!(
            result,
            Some(ServerEvent::CellResult {
                is_main_result: true,
                ..
            })
        ));
        let error = parse_cell_event(
            br#"{"type":"error","name":"NameError","value":"x","traceback":["a","b"]}"#,
        );
        assert_eq!(
            error,
            Some(ServerEvent::CellError {
                name: "NameError".into(),
                value: "x".into(),
                traceback: vec!["a".into(), "b".into()],
            })
        );
        for forged in [
            &b"{"[..],
            br#"{"type":"result","data":{}}"#,
            br#"{"type":"error","name":"E","value":"x","traceback":[1]}"#,
            br#"{"type":"shell"}"#,
            b"",
        ] {
            assert_eq!(parse_cell_event(forged), None);
        }
    }
}
