//! Output past a result's cap goes to a file in the sandbox, so that the result can say where
//! the rest is. A spill is a `cat > FILE` process in the same sandbox, started by the call when
//! a stream first passes the cap and fed the whole stream through its stdin (protocol 2: an
//! execution with a request id, its stdin window and `stdin_ack`). Without I/O: it returns the
//! session messages to send. Its backlog (bytes not yet acknowledged) is what the call's
//! back-pressure watches.

use serde_json::json;

use crate::session::{Frame, ProcessId, RequestId, ServerEvent};

/// Where spilled output goes in the sandbox.
pub const SPILL_DIR: &str = "/tmp/mcp-output";
/// The most one stdin message carries.
const CHUNK_BYTES: usize = 512 * 1024;

#[derive(Debug)]
pub struct Spill {
    request: RequestId,
    path: String,
    process: Option<ProcessId>,
    window: u64,
    sent: u64,
    acked: u64,
    pending: String,
    eof_wanted: bool,
    eof_sent: bool,
    /// `Some` once its process ended: `Ok` if it wrote everything.
    outcome: Option<Result<(), String>>,
    next_message: u64,
}

impl Spill {
    /// A spill into `path`, and the session message that starts its process.
    pub fn start(request: RequestId, path: String, timeout_s: Option<f64>) -> (Spill, String) {
        let mut message = json!({
            "id": request,
            "language": "bash",
            "code": format!("mkdir -p {SPILL_DIR} && exec cat > {path}"),
        });
        if let Some(timeout) = timeout_s {
            message["timeout"] = json!(timeout);
        }
        let spill = Spill {
            request,
            path,
            process: None,
            window: 0,
            sent: 0,
            acked: 0,
            pending: String::new(),
            eof_wanted: false,
            eof_sent: false,
            outcome: None,
            next_message: 0,
        };
        (spill, message.to_string())
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn request(&self) -> &RequestId {
        &self.request
    }

    /// Bytes given to it and not yet written to the file.
    pub fn backlog(&self) -> u64 {
        self.pending.len() as u64 + self.sent.saturating_sub(self.acked)
    }

    pub fn outcome(&self) -> Option<&Result<(), String>> {
        self.outcome.as_ref()
    }

    /// More of the stream.
    pub fn push(&mut self, data: &str) -> Vec<String> {
        if self.outcome.is_none() {
            self.pending.push_str(data);
        }
        self.flush()
    }

    /// The stream ended: close the file once everything is written.
    pub fn finish_input(&mut self) -> Vec<String> {
        self.eof_wanted = true;
        self.flush()
    }

    /// An event of the session for this spill's request id.
    pub fn on_frame(&mut self, frame: &Frame) -> Vec<String> {
        match &frame.event {
            ServerEvent::ExecRunning { stdin_window } => {
                self.process = frame.process;
                self.window = stdin_window.unwrap_or(0);
                self.flush()
            }
            ServerEvent::StdinAck { written } => {
                self.acked = self.acked.max(*written);
                self.flush()
            }
            ServerEvent::Done(done) => {
                let complete = done.exit_code == 0 && self.pending.is_empty() && self.eof_sent;
                self.outcome = Some(if complete {
                    Ok(())
                } else {
                    Err(format!(
                        "the process writing {} ended early ({})",
                        self.path,
                        done.reason.as_str()
                    ))
                });
                self.pending.clear();
                Vec::new()
            }
            ServerEvent::StatusWithMessage(status, message) if status.is_error() => {
                if self.outcome.is_none() {
                    self.outcome = Some(Err(message.clone()));
                    self.pending.clear();
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// Stdin messages for what the window allows, then the end of input when asked for.
    fn flush(&mut self) -> Vec<String> {
        let Some(process) = self.process else {
            return Vec::new();
        };
        if self.outcome.is_some() {
            return Vec::new();
        }
        let mut out = Vec::new();
        while !self.pending.is_empty() {
            let room = self
                .window
                .saturating_sub(self.sent - self.acked.min(self.sent));
            let mut take = (room as usize).min(CHUNK_BYTES).min(self.pending.len());
            while take > 0 && !self.pending.is_char_boundary(take) {
                take -= 1;
            }
            if take == 0 {
                break;
            }
            let chunk: String = self.pending.drain(..take).collect();
            self.sent += chunk.len() as u64;
            out.push(self.stdin_message(process, json!({"data": chunk})));
        }
        if self.eof_wanted && !self.eof_sent && self.pending.is_empty() {
            self.eof_sent = true;
            out.push(self.stdin_message(process, json!({"eof": true})));
        }
        out
    }

    fn stdin_message(&mut self, process: ProcessId, fields: serde_json::Value) -> String {
        self.next_message += 1;
        let mut message = json!({
            "event": "stdin",
            "process_id": process,
            "id": format!("{}-in{}", request_text(&self.request), self.next_message),
        });
        if let (Some(map), serde_json::Value::Object(fields)) = (message.as_object_mut(), fields) {
            map.extend(fields);
        }
        message.to_string()
    }
}

fn request_text(request: &RequestId) -> String {
    match request {
        RequestId::Text(text) => text.clone(),
        RequestId::Number(number) => number.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::exec::Reason;
    use crate::session::events::ExecDone;
    use serde_json::Value;

    fn frame(event: ServerEvent) -> Frame {
        Frame::new(event, Some(RequestId::Text("s".into())), Some(ProcessId(9)))
    }

    fn parsed(messages: &[String]) -> Vec<Value> {
        messages
            .iter()
            .map(|text| serde_json::from_str(text).unwrap())
            .collect()
    }

    #[test]
    fn the_stream_goes_to_the_file_within_the_window_then_the_input_ends() {
        let (mut spill, start) = Spill::start(
            RequestId::Text("s".into()),
            "/tmp/mcp-output/x".into(),
            Some(5.0),
        );
        let start: Value = serde_json::from_str(&start).unwrap();
        assert_eq!(
            start["code"],
            "mkdir -p /tmp/mcp-output && exec cat > /tmp/mcp-output/x"
        );
        assert_eq!(
            (start["id"].clone(), start["timeout"].clone()),
            (json!("s"), json!(5.0))
        );
        assert!(spill.push("abcdef").is_empty(), "nothing before RUNNING");
        assert_eq!(spill.backlog(), 6);
        let sent = parsed(&spill.on_frame(&frame(ServerEvent::ExecRunning {
            stdin_window: Some(4),
        })));
        assert_eq!(
            sent,
            [json!({"event": "stdin", "process_id": 9, "id": "s-in1", "data": "abcd"})]
        );
        assert!(spill.finish_input().is_empty(), "eof waits for the rest");
        let sent = parsed(&spill.on_frame(&frame(ServerEvent::StdinAck { written: 4 })));
        assert_eq!(sent[0]["data"], "ef");
        assert_eq!(
            sent[1],
            json!({"event": "stdin", "process_id": 9, "id": "s-in3", "eof": true})
        );
        assert_eq!(spill.backlog(), 2);
        spill.on_frame(&frame(ServerEvent::StdinAck { written: 6 }));
        assert_eq!(spill.backlog(), 0);
        spill.on_frame(&frame(ServerEvent::Done(ExecDone {
            exit_code: 0,
            signal: None,
            reason: Reason::Exited,
            duration_ms: 1,
        })));
        assert_eq!(spill.outcome(), Some(&Ok(())));
    }

    #[test]
    fn a_refused_or_cut_spill_says_why() {
        let (mut spill, _) = Spill::start(RequestId::Text("s".into()), "/p".into(), None);
        spill.on_frame(&frame(ServerEvent::StatusWithMessage(
            crate::session::Status::ExecutionError,
            "too many processes".into(),
        )));
        assert_eq!(spill.outcome(), Some(&Err("too many processes".into())));
        assert!(spill.push("x").is_empty());
        assert_eq!(spill.backlog(), 0);
        let (mut cut, _) = Spill::start(RequestId::Text("s".into()), "/p".into(), None);
        cut.on_frame(&frame(ServerEvent::ExecRunning {
            stdin_window: Some(10),
        }));
        cut.on_frame(&frame(ServerEvent::Done(ExecDone {
            exit_code: 137,
            signal: Some(9),
            reason: Reason::Killed,
            duration_ms: 1,
        })));
        assert_eq!(
            cut.outcome(),
            Some(&Err("the process writing /p ended early (killed)".into()))
        );
    }

    #[test]
    fn chunks_split_on_character_boundaries() {
        let (mut spill, _) = Spill::start(RequestId::Text("s".into()), "/p".into(), None);
        spill.push("éé");
        let sent = parsed(&spill.on_frame(&frame(ServerEvent::ExecRunning {
            stdin_window: Some(3),
        })));
        assert_eq!(sent[0]["data"], "é");
    }
}
