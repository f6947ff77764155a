//! One `run_command` call as a state machine without I/O: it builds the message the virtual
//! client sends to the sandbox's session, and turns the session's events for that request
//! (RUNNING, output, DONE, or an error) into progress notifications and, at the end, the tool
//! result. Output kept for the result is capped per stream; progress streams all of it.

use serde_json::{json, Value};

use super::jsonrpc::notification;
use super::spill::{Spill, SPILL_DIR};
use crate::agent_protocol::Stream;
use crate::session::{Frame, ProcessId, RequestId, ServerEvent};

/// Output of each stream kept for the result by default (`SANDBOX_MCP_OUTPUT_BYTES`).
pub const DEFAULT_OUTPUT_CAP: usize = 64 * 1024;

/// A tool's result: the text a model reads, the structured content a program reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    pub text: String,
    pub structured: Value,
    pub is_error: bool,
    /// PNG images (base64), one content block each after the text.
    pub images: Vec<String>,
}

impl ToolResult {
    /// A successful result.
    pub fn ok(text: String, structured: Value) -> Self {
        ToolResult {
            text,
            structured,
            is_error: false,
            images: Vec::new(),
        }
    }

    /// A tool error: the call could not be carried out (what to fix is in the text).
    pub fn error(sandbox_id: Option<&str>, message: &str) -> Self {
        ToolResult {
            text: message.to_string(),
            structured: json!({"sandbox_id": sandbox_id.unwrap_or(""), "error": message}),
            is_error: true,
            images: Vec::new(),
        }
    }

    /// The `result` of the `tools/call` response.
    pub fn to_value(&self) -> Value {
        let mut content = vec![json!({"type": "text", "text": self.text})];
        content.extend(
            self.images
                .iter()
                .map(|data| json!({"type": "image", "data": data, "mimeType": "image/png"})),
        );
        json!({
            "content": content,
            "structuredContent": self.structured,
            "isError": self.is_error,
        })
    }
}

/// Images a code cell's result keeps at most, and the largest one (base64 bytes).
const MAX_IMAGES: usize = 8;
const MAX_IMAGE_BYTES: usize = 4 * 1024 * 1024;

/// What runs: a bash command, or a Python cell in the sandbox's code interpreter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Command,
    Cell,
}

/// A code cell's error (`execution_error`).
#[derive(Debug, Clone, PartialEq)]
struct CellError {
    name: String,
    value: String,
    traceback: Vec<String>,
}

/// One stream's text, the first `cap` bytes kept, the rest counted.
#[derive(Debug, Clone, Default)]
struct Capped {
    kept: String,
    total: u64,
    cap: usize,
}

impl Capped {
    fn new(cap: usize) -> Self {
        Capped {
            cap,
            ..Capped::default()
        }
    }

    fn push(&mut self, text: &str) {
        self.total += text.len() as u64;
        let room = self.cap.saturating_sub(self.kept.len());
        if room == 0 {
            return;
        }
        let mut end = room.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        self.kept.push_str(&text[..end]);
    }

    fn truncated(&self) -> bool {
        self.total > self.kept.len() as u64
    }

    /// The kept text, with a note when some was cut saying where all of it is.
    fn shown(&self, name: &str, spill: Option<&Spill>) -> String {
        if !self.truncated() {
            return self.kept.clone();
        }
        let whereabouts = match spill.map(|spill| (spill.path(), spill.outcome())) {
            Some((path, Some(Ok(())))) => format!(
                "all of it is in the file {path} in the sandbox: read it in parts (head, tail, grep, sed -n)"
            ),
            Some((_, Some(Err(why)))) => format!(
                "the rest could not be saved ({why}); redirect the command's output to a file and read it in parts"
            ),
            _ => "redirect the command's output to a file and read it in parts".to_string(),
        };
        format!(
            "{}\n[{name} truncated: the first {} of {} bytes are shown; {whereabouts}]",
            self.kept,
            self.kept.len(),
            self.total
        )
    }
}

/// What a call produced from one event.
#[derive(Debug, Clone, PartialEq)]
pub enum CallEvent {
    /// A `notifications/progress` message for the client.
    Progress(Value),
    /// A message for the sandbox's session (a spill's start, its stdin).
    Send(String),
    /// Hold back (`true`) or give back the output of the call's process: a spill is behind.
    PauseOutput(ProcessId, bool),
    Finished(ToolResult),
}

/// A spill further behind than this pauses the command's output; below the low mark it goes on.
const SPILL_HIGH_WATER: u64 = 4 * 1024 * 1024;
const SPILL_LOW_WATER: u64 = 1024 * 1024;

#[derive(Debug)]
pub struct CommandCall {
    request: RequestId,
    sandbox_id: String,
    progress_token: Option<Value>,
    stdout: Capped,
    stderr: Capped,
    /// Bytes of output streamed as progress so far (the progress value: it only grows).
    streamed: u64,
    process: Option<ProcessId>,
    finished: bool,
    timeout_s: Option<f64>,
    /// Where each stream past its cap goes (stdout, stderr).
    spills: [Option<Spill>; 2],
    /// The command's output is paused because a spill is behind.
    paused: bool,
    /// How the command ended, while its spills finish writing.
    ended: Option<(i32, &'static str)>,
    kind: Kind,
    /// A cell's trailing expression (`text/plain`), its other text results, its images.
    main_result: Option<String>,
    displayed: Vec<String>,
    images: Vec<String>,
    images_dropped: usize,
    cell_error: Option<CellError>,
}

impl CommandCall {
    pub fn new(
        request: RequestId,
        sandbox_id: String,
        progress_token: Option<Value>,
        cap: usize,
    ) -> Self {
        CommandCall {
            request,
            sandbox_id,
            progress_token,
            stdout: Capped::new(cap),
            stderr: Capped::new(cap),
            streamed: 0,
            process: None,
            finished: false,
            timeout_s: None,
            spills: [None, None],
            paused: false,
            ended: None,
            kind: Kind::Command,
            main_result: None,
            displayed: Vec::new(),
            images: Vec::new(),
            images_dropped: 0,
            cell_error: None,
        }
    }

    /// The session message that runs `code` as a cell in the sandbox's default Python
    /// context (the code interpreter: its state persists between cells).
    pub fn cell_message(&mut self, code: &str, timeout_s: Option<f64>) -> String {
        self.kind = Kind::Cell;
        self.timeout_s = timeout_s;
        let mut message = json!({"action": "run_code", "id": self.request, "code": code});
        if let Some(timeout) = timeout_s {
            message["timeout"] = json!(timeout);
        }
        message.to_string()
    }

    /// Whether `request` is one of this call's spills.
    pub fn owns_spill(&self, request: &RequestId) -> bool {
        self.spills
            .iter()
            .flatten()
            .any(|spill| spill.request() == request)
    }

    /// The session message that starts the command (an execution with a request id).
    pub fn exec_message(
        &mut self,
        command: &str,
        timeout_s: Option<f64>,
        cwd: Option<&str>,
    ) -> String {
        self.timeout_s = timeout_s;
        let mut message = json!({
            "id": self.request,
            "language": "bash",
            "code": command,
        });
        if let Some(timeout) = timeout_s {
            message["timeout"] = json!(timeout);
        }
        if let Some(cwd) = cwd {
            message["cwd"] = json!(cwd);
        }
        message.to_string()
    }

    /// The session message that kills the command, once it runs (`None` before).
    pub fn kill_message(&self, kill_request: &RequestId) -> Option<String> {
        let process = self.process?;
        Some(
            json!({"action": "kill_process", "process_id": process, "id": kill_request})
                .to_string(),
        )
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// An event of the session for this call's request id.
    pub fn on_frame(&mut self, frame: &Frame) -> Vec<CallEvent> {
        if self.finished {
            return Vec::new();
        }
        match &frame.event {
            ServerEvent::ExecRunning { .. } => {
                self.process = frame.process;
                Vec::new()
            }
            ServerEvent::Output { stream, data, .. } => {
                let mut out = self.spill_output(*stream, data);
                self.streamed += data.len() as u64;
                if let Some(token) = &self.progress_token {
                    out.push(CallEvent::Progress(notification(
                        "notifications/progress",
                        json!({"progressToken": token, "progress": self.streamed, "message": data}),
                    )));
                }
                out
            }
            ServerEvent::Done(done) => {
                self.ended = Some((done.exit_code, done.reason.as_str()));
                let mut out: Vec<CallEvent> = self
                    .spills
                    .iter_mut()
                    .flatten()
                    .flat_map(Spill::finish_input)
                    .map(CallEvent::Send)
                    .collect();
                out.extend(self.pace());
                out.extend(self.finish_if_written());
                out
            }
            ServerEvent::StatusWithMessage(status, message) if status.is_error() => {
                self.fail(message)
            }
            ServerEvent::Error(message) => self.fail(message),
            _ => self.on_cell_event(frame),
        }
    }

    /// The events of a code cell (its RUNNING, results and error), read from their JSON so
    /// that this machine depends only on the protocol (docs/protocol.md, code interpreter).
    fn on_cell_event(&mut self, frame: &Frame) -> Vec<CallEvent> {
        let Ok(value) = serde_json::from_str::<Value>(&frame.to_json()) else {
            return Vec::new();
        };
        match value["event"].as_str() {
            Some("status_update") if value["status"] == "SANDBOX_EXECUTION_RUNNING" => {
                self.process = frame.process;
            }
            Some("result") => {
                let data = &value["data"];
                if let Some(png) = data["image/png"].as_str() {
                    if self.images.len() < MAX_IMAGES && png.len() <= MAX_IMAGE_BYTES {
                        self.images.push(png.to_string());
                    } else {
                        self.images_dropped += 1;
                    }
                } else if let Some(text) = data["text/plain"].as_str() {
                    if value["is_main_result"] == true {
                        self.main_result = Some(text.to_string());
                    } else if self.displayed.len() < MAX_IMAGES {
                        self.displayed.push(text.chars().take(16 * 1024).collect());
                    }
                }
            }
            Some("execution_error") => {
                let text = |key: &str| value[key].as_str().unwrap_or_default().to_string();
                let traceback = value["traceback"]
                    .as_array()
                    .map(|lines| {
                        lines
                            .iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                self.cell_error = Some(CellError {
                    name: text("name"),
                    value: text("value"),
                    traceback,
                });
            }
            _ => {}
        }
        Vec::new()
    }

    /// An event of the session for one of this call's spills.
    pub fn on_spill_frame(&mut self, frame: &Frame) -> Vec<CallEvent> {
        let Some(request) = &frame.id else {
            return Vec::new();
        };
        let mut out: Vec<CallEvent> = self
            .spills
            .iter_mut()
            .flatten()
            .filter(|spill| spill.request() == request)
            .flat_map(|spill| spill.on_frame(frame))
            .map(CallEvent::Send)
            .collect();
        out.extend(self.pace());
        if !self.finished {
            out.extend(self.finish_if_written());
        }
        out
    }

    /// Keep a stream's text, and once past the cap, spill all of it to a file.
    fn spill_output(&mut self, stream: Stream, data: &str) -> Vec<CallEvent> {
        let index = usize::from(stream == Stream::Stderr);
        let capped = if index == 0 {
            &mut self.stdout
        } else {
            &mut self.stderr
        };
        let kept_before = capped.kept.len();
        capped.push(data);
        let mut out = Vec::new();
        if capped.truncated() && self.spills[index].is_none() {
            let name = if index == 0 { "stdout" } else { "stderr" };
            let request = match &self.request {
                RequestId::Text(text) => RequestId::Text(format!("{text}-{name}")),
                RequestId::Number(number) => RequestId::Text(format!("{number}-{name}")),
            };
            let path = format!(
                "{SPILL_DIR}/{}.{name}",
                match &self.request {
                    RequestId::Text(text) => text.clone(),
                    RequestId::Number(number) => number.to_string(),
                }
            );
            let (mut spill, start) = Spill::start(request, path, self.timeout_s);
            out.push(CallEvent::Send(start));
            // The file holds the whole stream: what came before this chunk too (all of it was
            // kept, since the stream passes its cap only now).
            spill.push(&capped.kept[..kept_before]);
            self.spills[index] = Some(spill);
        }
        if let Some(spill) = &mut self.spills[index] {
            out.extend(spill.push(data).into_iter().map(CallEvent::Send));
        }
        out.extend(self.pace());
        out
    }

    /// Pause the command's output while a spill is far behind; resume when it caught up.
    fn pace(&mut self) -> Vec<CallEvent> {
        let backlog: u64 = self.spills.iter().flatten().map(Spill::backlog).sum();
        let Some(process) = self.process else {
            return Vec::new();
        };
        if !self.paused && backlog > SPILL_HIGH_WATER && self.ended.is_none() {
            self.paused = true;
            return vec![CallEvent::PauseOutput(process, true)];
        }
        if self.paused && (backlog < SPILL_LOW_WATER || self.ended.is_some()) {
            self.paused = false;
            return vec![CallEvent::PauseOutput(process, false)];
        }
        Vec::new()
    }

    /// The result, once the command ended and its spills are written (or failed).
    fn finish_if_written(&mut self) -> Vec<CallEvent> {
        let Some((exit_code, reason)) = self.ended else {
            return Vec::new();
        };
        if self
            .spills
            .iter()
            .flatten()
            .any(|spill| spill.outcome().is_none())
        {
            return Vec::new();
        }
        self.finished = true;
        vec![CallEvent::Finished(self.result(exit_code, reason))]
    }

    /// The call ends without a result from the sandbox (it went away, or never came). Its
    /// spills are told their input ended.
    pub fn fail(&mut self, message: &str) -> Vec<CallEvent> {
        if self.finished {
            return Vec::new();
        }
        self.finished = true;
        let mut out: Vec<CallEvent> = self
            .spills
            .iter_mut()
            .flatten()
            .flat_map(Spill::finish_input)
            .map(CallEvent::Send)
            .collect();
        out.push(CallEvent::Finished(ToolResult::error(
            Some(&self.sandbox_id),
            message,
        )));
        out
    }

    fn result(&self, exit_code: i32, reason: &str) -> ToolResult {
        let (stdout, stderr) = (
            self.stdout.shown("stdout", self.spills[0].as_ref()),
            self.stderr.shown("stderr", self.spills[1].as_ref()),
        );
        if self.kind == Kind::Cell {
            return self.cell_result(stdout, stderr, reason);
        }
        let mut text = match reason {
            "exited" => format!("exit code {exit_code}"),
            "timeout" => format!("killed after its timeout (exit code {exit_code})"),
            "killed" => format!("killed (exit code {exit_code})"),
            "output_limit" => format!("killed: too much output (exit code {exit_code})"),
            other => format!("ended: {other} (exit code {exit_code})"),
        };
        for (name, shown) in [("stdout", &stdout), ("stderr", &stderr)] {
            if !shown.is_empty() {
                text.push_str(&format!("\n--- {name} ---\n{shown}"));
            }
        }
        if stdout.is_empty() && stderr.is_empty() {
            text.push_str(" (no output)");
        }
        ToolResult::ok(
            text,
            json!({
                "sandbox_id": self.sandbox_id,
                "stdout": stdout,
                "stderr": stderr,
                "exit_code": exit_code,
                "reason": reason,
                "truncated": self.stdout.truncated() || self.stderr.truncated(),
            }),
        )
    }

    /// A cell's result: its output, its value, its figures; an exception makes it an error
    /// whose text holds the exception's name and traceback.
    fn cell_result(&self, stdout: String, stderr: String, reason: &str) -> ToolResult {
        let mut parts: Vec<String> = Vec::new();
        for shown in [&stdout, &stderr] {
            if !shown.is_empty() {
                parts.push(shown.trim_end_matches('\n').to_string());
            }
        }
        parts.extend(self.displayed.iter().cloned());
        if let Some(value) = &self.main_result {
            parts.push(format!("Out: {value}"));
        }
        if let Some(error) = &self.cell_error {
            let mut text = format!("{}: {}", error.name, error.value);
            if !error.traceback.is_empty() {
                text = error.traceback.join("\n");
                if !text.contains(&error.name) {
                    text.push_str(&format!("\n{}: {}", error.name, error.value));
                }
            }
            parts.push(text);
        }
        if self.images_dropped > 0 {
            parts.push(format!(
                "[{} more figure(s) not returned: at most {MAX_IMAGES} of at most {} KiB each]",
                self.images_dropped,
                MAX_IMAGE_BYTES / 1024
            ));
        }
        if reason != "exited" && self.cell_error.is_none() {
            parts.push(format!("[the cell ended: {reason}]"));
        }
        let text = if parts.is_empty() {
            "(no output)".to_string()
        } else {
            parts.join("\n")
        };
        let error = self.cell_error.as_ref().map(
            |error| json!({"name": error.name, "value": error.value, "traceback": error.traceback}),
        );
        ToolResult {
            text,
            structured: json!({
                "sandbox_id": self.sandbox_id,
                "stdout": stdout,
                "stderr": stderr,
                "result": self.main_result,
                "images": self.images.len(),
                "error": error,
                "reason": reason,
                "truncated": self.stdout.truncated() || self.stderr.truncated(),
            }),
            is_error: self.cell_error.is_some(),
            images: self.images.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::exec::Reason;
    use crate::session::events::{ExecDone, OutputEncoding};
    use crate::session::Status;

    fn frame(event: ServerEvent) -> Frame {
        Frame::new(
            event,
            Some(RequestId::Text("m1".into())),
            Some(ProcessId(3)),
        )
    }

    fn output(stream: Stream, data: &str) -> Frame {
        frame(ServerEvent::Output {
            stream,
            data: data.into(),
            encoding: OutputEncoding::Text,
        })
    }

    fn done(exit_code: i32, reason: Reason) -> Frame {
        frame(ServerEvent::Done(ExecDone {
            exit_code,
            signal: None,
            reason,
            duration_ms: 5,
        }))
    }

    impl CommandCall {
        fn on_output_is_quiet(&mut self, stream: Stream, data: &str) -> bool {
            self.on_frame(&output(stream, data)).is_empty()
        }
    }

    fn finished(events: Vec<CallEvent>) -> ToolResult {
        match events.as_slice() {
            [CallEvent::Finished(result)] => result.clone(),
            other => panic!("not finished: {other:?}"),
        }
    }

    #[test]
    fn the_message_is_an_execution_with_the_calls_request_id() {
        let mut call = CommandCall::new(RequestId::Text("m7".into()), "s".into(), None, 10);
        let message: Value =
            serde_json::from_str(&call.exec_message("ls", Some(2.5), Some("/tmp"))).unwrap();
        assert_eq!(
            message,
            json!({"id": "m7", "language": "bash", "code": "ls", "timeout": 2.5, "cwd": "/tmp"})
        );
        assert_eq!(
            call.kill_message(&RequestId::Text("k".into())),
            None,
            "nothing to kill yet"
        );
    }

    #[test]
    fn output_streams_as_progress_and_ends_in_a_result() {
        let mut call = CommandCall::new(
            RequestId::Text("m1".into()),
            "sid".into(),
            Some(json!("tok")),
            100,
        );
        assert!(call
            .on_frame(&frame(ServerEvent::ExecRunning {
                stdin_window: Some(4)
            }))
            .is_empty());
        let kill: Value =
            serde_json::from_str(&call.kill_message(&RequestId::Text("k1".into())).unwrap())
                .unwrap();
        assert_eq!(
            kill,
            json!({"action": "kill_process", "process_id": 3, "id": "k1"})
        );
        assert_eq!(
            call.on_frame(&output(Stream::Stdout, "hello\n")),
            vec![CallEvent::Progress(json!({
                "jsonrpc": "2.0",
                "method": "notifications/progress",
                "params": {"progressToken": "tok", "progress": 6, "message": "hello\n"}
            }))]
        );
        let CallEvent::Progress(second) = &call.on_frame(&output(Stream::Stderr, "oops"))[0] else {
            panic!()
        };
        assert_eq!(second["params"]["progress"], 10, "progress only grows");
        let result = finished(call.on_frame(&done(2, Reason::Exited)));
        assert!(
            !result.is_error,
            "a command that fails is data, not a tool error"
        );
        assert_eq!(
            result.structured,
            json!({"sandbox_id": "sid", "stdout": "hello\n", "stderr": "oops", "exit_code": 2, "reason": "exited", "truncated": false})
        );
        assert_eq!(
            result.text,
            "exit code 2\n--- stdout ---\nhello\n\n--- stderr ---\noops"
        );
        assert!(
            call.on_frame(&done(0, Reason::Exited)).is_empty(),
            "one result only"
        );
        assert!(call.is_finished());
    }

    #[test]
    fn without_a_progress_token_nothing_streams() {
        let mut call = CommandCall::new(RequestId::Text("m1".into()), "sid".into(), None, 100);
        assert!(call.on_frame(&output(Stream::Stdout, "x")).is_empty());
        let result = finished(call.on_frame(&done(137, Reason::Timeout)));
        assert!(
            result
                .text
                .starts_with("killed after its timeout (exit code 137)"),
            "{}",
            result.text
        );
    }

    #[test]
    fn output_past_the_cap_is_cut_with_a_note_and_all_of_it_goes_to_a_file() {
        let mut call = CommandCall::new(RequestId::Text("m1".into()), "sid".into(), None, 5);
        call.exec_message("yes", Some(9.0), None);
        call.on_frame(&frame(ServerEvent::ExecRunning { stdin_window: None }));
        assert!(call.on_output_is_quiet(Stream::Stdout, "abcé"));
        let started = call.on_frame(&output(Stream::Stdout, "more"));
        let [CallEvent::Send(start)] = started.as_slice() else {
            panic!("no spill started: {started:?}")
        };
        let start: Value = serde_json::from_str(start).unwrap();
        assert_eq!(start["id"], "m1-stdout");
        assert_eq!(start["timeout"], 9.0);
        assert_eq!(
            start["code"],
            "mkdir -p /tmp/mcp-output && exec cat > /tmp/mcp-output/m1.stdout"
        );
        assert!(call.owns_spill(&RequestId::Text("m1-stdout".into())));
        assert!(
            call.on_frame(&done(0, Reason::Exited)).is_empty(),
            "the result waits for the file"
        );
        let spill_frame = |event| {
            Frame::new(
                event,
                Some(RequestId::Text("m1-stdout".into())),
                Some(ProcessId(4)),
            )
        };
        let sent = call.on_spill_frame(&spill_frame(ServerEvent::ExecRunning {
            stdin_window: Some(100),
        }));
        let texts: Vec<Value> = sent
            .iter()
            .map(|event| match event {
                CallEvent::Send(text) => serde_json::from_str(text).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            texts[0]["data"], "abcémore",
            "the whole stream, from its start"
        );
        assert_eq!(texts[1]["eof"], true);
        call.on_spill_frame(&spill_frame(ServerEvent::StdinAck { written: 9 }));
        let result = finished(
            call.on_spill_frame(&spill_frame(ServerEvent::Done(ExecDone {
                exit_code: 0,
                signal: None,
                reason: Reason::Exited,
                duration_ms: 1,
            }))),
        );
        let stdout = result.structured["stdout"].as_str().unwrap();
        assert!(
            stdout.starts_with("abcé\n[stdout truncated: the first 5 of 9 bytes are shown; all of it is in the file /tmp/mcp-output/m1.stdout in the sandbox"),
            "{stdout}"
        );
        assert_eq!(result.structured["truncated"], true);
        assert_eq!(result.structured["stderr"], "");
    }

    #[test]
    fn a_spill_far_behind_pauses_the_commands_output() {
        let mut call = CommandCall::new(RequestId::Text("m1".into()), "sid".into(), None, 1);
        call.on_frame(&frame(ServerEvent::ExecRunning { stdin_window: None }));
        let big = "x".repeat(5 * 1024 * 1024);
        let events = call.on_frame(&output(Stream::Stderr, &big));
        assert!(
            events.contains(&CallEvent::PauseOutput(ProcessId(3), true)),
            "{:?}",
            events.len()
        );
        let spill_frame = |event| {
            Frame::new(
                event,
                Some(RequestId::Text("m1-stderr".into())),
                Some(ProcessId(4)),
            )
        };
        call.on_spill_frame(&spill_frame(ServerEvent::ExecRunning {
            stdin_window: Some(8 * 1024 * 1024),
        }));
        let resumed = call.on_spill_frame(&spill_frame(ServerEvent::StdinAck {
            written: 5 * 1024 * 1024,
        }));
        assert!(resumed.contains(&CallEvent::PauseOutput(ProcessId(3), false)));
    }

    #[test]
    fn a_cell_returns_its_value_its_figures_and_its_exception() {
        let mut call = CommandCall::new(RequestId::Text("m1".into()), "sid".into(), None, 100);
        let message: Value = serde_json::from_str(&call.cell_message("x", Some(4.0))).unwrap();
        assert_eq!(
            message,
            json!({"action": "run_code", "id": "m1", "code": "x", "timeout": 4.0})
        );
        call.on_frame(&frame(ServerEvent::CellRunning {
            context_id: "default".into(),
        }));
        assert_eq!(
            call.kill_message(&RequestId::Text("k".into())).as_deref(),
            Some(r#"{"action":"kill_process","id":"k","process_id":3}"#)
        );
        call.on_frame(&output(Stream::Stdout, "hi\n"));
        let result = |main: bool, data: Value| {
            frame(ServerEvent::CellResult {
                is_main_result: main,
                data: data.as_object().cloned().unwrap(),
            })
        };
        call.on_frame(&result(
            false,
            json!({"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}),
        ));
        call.on_frame(&result(true, json!({"text/plain": "42"})));
        let answer = finished(call.on_frame(&done(0, Reason::Exited)));
        assert!(!answer.is_error);
        assert_eq!(answer.text, "hi\nOut: 42");
        assert_eq!(answer.images, ["iVBORw0KGgo="]);
        assert_eq!(answer.structured["result"], "42");
        assert_eq!(answer.structured["images"], 1);
        let content = answer.to_value()["content"].clone();
        assert_eq!(
            content[1],
            json!({"type": "image", "data": "iVBORw0KGgo=", "mimeType": "image/png"})
        );

        let mut failing = CommandCall::new(RequestId::Text("m1".into()), "sid".into(), None, 100);
        failing.cell_message("1/0", None);
        failing.on_frame(&frame(ServerEvent::CellError {
            name: "ZeroDivisionError".into(),
            value: "division by zero".into(),
            traceback: vec![
                "Traceback (most recent call last):".into(),
                "ZeroDivisionError: division by zero".into(),
            ],
        }));
        let error = finished(failing.on_frame(&done(1, Reason::Exited)));
        assert!(error.is_error);
        assert_eq!(
            error.text,
            "Traceback (most recent call last):\nZeroDivisionError: division by zero"
        );
        assert_eq!(error.structured["error"]["name"], "ZeroDivisionError");
    }

    #[test]
    fn an_error_of_the_request_is_a_tool_error() {
        let mut call = CommandCall::new(RequestId::Text("m1".into()), "sid".into(), None, 5);
        let refused = frame(ServerEvent::StatusWithMessage(
            Status::ExecutionError,
            "too many processes".into(),
        ));
        let result = finished(call.on_frame(&refused));
        assert!(result.is_error);
        assert_eq!(result.text, "too many processes");
        assert_eq!(result.structured["sandbox_id"], "sid");
        assert!(call
            .on_frame(&frame(ServerEvent::Error("too many processes".into())))
            .is_empty());
    }
}
