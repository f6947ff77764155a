//! One `run_command` call as a state machine without I/O: it builds the message the virtual
//! client sends to the sandbox's session, and turns the session's events for that request
//! (RUNNING, output, DONE, or an error) into progress notifications and, at the end, the tool
//! result. Output kept for the result is capped per stream; progress streams all of it.

use serde_json::{json, Value};

use super::jsonrpc::notification;
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
}

impl ToolResult {
    /// A tool error: the call could not be carried out (what to fix is in the text).
    pub fn error(sandbox_id: Option<&str>, message: &str) -> Self {
        ToolResult {
            text: message.to_string(),
            structured: json!({"sandbox_id": sandbox_id.unwrap_or(""), "error": message}),
            is_error: true,
        }
    }

    /// The `result` of the `tools/call` response.
    pub fn to_value(&self) -> Value {
        json!({
            "content": [{"type": "text", "text": self.text}],
            "structuredContent": self.structured,
            "isError": self.is_error,
        })
    }
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

    /// The kept text, with a note when some was cut.
    fn shown(&self, name: &str) -> String {
        if !self.truncated() {
            return self.kept.clone();
        }
        format!(
            "{}\n[{name} truncated: the first {} of {} bytes are shown; redirect the command's output to a file (e.g. `> /tmp/out.txt`) and read it in parts with head, tail or grep]",
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
    Finished(ToolResult),
}

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
        }
    }

    /// The session message that starts the command (an execution with a request id).
    pub fn exec_message(&self, command: &str, timeout_s: Option<f64>, cwd: Option<&str>) -> String {
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
                match stream {
                    Stream::Stdout => self.stdout.push(data),
                    Stream::Stderr => self.stderr.push(data),
                }
                self.streamed += data.len() as u64;
                match &self.progress_token {
                    Some(token) => vec![CallEvent::Progress(notification(
                        "notifications/progress",
                        json!({"progressToken": token, "progress": self.streamed, "message": data}),
                    ))],
                    None => Vec::new(),
                }
            }
            ServerEvent::Done(done) => {
                self.finished = true;
                vec![CallEvent::Finished(
                    self.result(done.exit_code, done.reason.as_str()),
                )]
            }
            ServerEvent::StatusWithMessage(status, message) if status.is_error() => {
                self.fail(message)
            }
            ServerEvent::Error(message) => self.fail(message),
            _ => Vec::new(),
        }
    }

    /// The call ends without a result from the sandbox (it went away, or never came).
    pub fn fail(&mut self, message: &str) -> Vec<CallEvent> {
        if self.finished {
            return Vec::new();
        }
        self.finished = true;
        vec![CallEvent::Finished(ToolResult::error(
            Some(&self.sandbox_id),
            message,
        ))]
    }

    fn result(&self, exit_code: i32, reason: &str) -> ToolResult {
        let (stdout, stderr) = (self.stdout.shown("stdout"), self.stderr.shown("stderr"));
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
        ToolResult {
            text,
            structured: json!({
                "sandbox_id": self.sandbox_id,
                "stdout": stdout,
                "stderr": stderr,
                "exit_code": exit_code,
                "reason": reason,
                "truncated": self.stdout.truncated() || self.stderr.truncated(),
            }),
            is_error: false,
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

    fn finished(events: Vec<CallEvent>) -> ToolResult {
        match events.as_slice() {
            [CallEvent::Finished(result)] => result.clone(),
            other => panic!("not finished: {other:?}"),
        }
    }

    #[test]
    fn the_message_is_an_execution_with_the_calls_request_id() {
        let call = CommandCall::new(RequestId::Text("m7".into()), "s".into(), None, 10);
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
    fn output_past_the_cap_is_cut_on_a_character_boundary_with_a_note() {
        let mut call = CommandCall::new(RequestId::Text("m1".into()), "sid".into(), None, 5);
        call.on_frame(&output(Stream::Stdout, "abcé"));
        call.on_frame(&output(Stream::Stdout, "more"));
        let result = finished(call.on_frame(&done(0, Reason::Exited)));
        let stdout = result.structured["stdout"].as_str().unwrap();
        assert!(
            stdout.starts_with("abcé\n[stdout truncated: the first 5 of 9 bytes are shown;"),
            "{stdout}"
        );
        assert_eq!(result.structured["truncated"], true);
        assert_eq!(result.structured["stderr"], "");
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
