//! A blocking WebSocket client for the integration tests (tungstenite over a std `TcpStream`
//! with read and write timeouts, so no test can hang), with helpers that assert the frame
//! sequences of docs/protocol.md and keep every frame received for the failure messages.
//!
//! Each test file uses only part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Error as WsError, Message, WebSocket};

use crate::common::{is_sandbox_id, TestServer};

/// Bound on any single wait for a frame: hang detection only.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(60);

/// What the next read produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Json(Value),
    /// A close frame: its code (`None` for a close without a code) and reason.
    Close(Option<u16>, String),
    /// The connection ended without a close frame (reset or end of stream).
    Eof(String),
    /// Nothing arrived in time.
    Timeout,
}

pub struct Ws {
    ws: WebSocket<TcpStream>,
    /// Everything received so far (for the failure messages).
    pub log: Vec<String>,
    closed: bool,
}

/// Open `path` (`/create`, `/attach/...`) on the server.
pub fn connect(port: u16, path: &str) -> Ws {
    try_connect(port, path).unwrap_or_else(|error| panic!("WebSocket connect {path}: {error}"))
}

pub fn try_connect(port: u16, path: &str) -> Result<Ws, String> {
    try_connect_with_headers(port, path, &[])
}

/// [`try_connect`] with extra headers on the upgrade request (e.g. `Authorization`).
pub fn try_connect_with_headers(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, String> {
    let stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), FRAME_TIMEOUT)
        .map_err(|error| error.to_string())?;
    stream
        .set_read_timeout(Some(FRAME_TIMEOUT))
        .map_err(|error| error.to_string())?;
    stream
        .set_write_timeout(Some(FRAME_TIMEOUT))
        .map_err(|error| error.to_string())?;
    stream
        .set_nodelay(true)
        .map_err(|error| error.to_string())?;
    let url = format!("ws://127.0.0.1:{port}{path}");
    let config = WebSocketConfig {
        max_message_size: Some(64 << 20),
        max_frame_size: Some(64 << 20),
        ..WebSocketConfig::default()
    };
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|error| format!("request: {error}"))?;
    for (name, value) in headers {
        let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|error| format!("header name {name:?}: {error}"))?;
        let value = tungstenite::http::HeaderValue::from_str(value)
            .map_err(|error| format!("header value: {error}"))?;
        request.headers_mut().insert(name, value);
    }
    let (ws, response) = tungstenite::client::client_with_config(request, stream, Some(config))
        .map_err(|error| format!("handshake: {error}"))?;
    if response.status().as_u16() != 101 {
        return Err(format!("handshake answered {}", response.status()));
    }
    Ok(Ws {
        ws,
        log: Vec::new(),
        closed: false,
    })
}

/// `{"event":"status_update","status":S}` test.
pub fn is_status(frame: &Value, status: &str) -> bool {
    frame["event"] == "status_update" && frame["status"] == status
}

/// A short name of a frame for the logs: the status, or the event and data.
pub fn describe(frame: &Value) -> String {
    match frame["event"].as_str() {
        Some("status_update") => frame["status"].as_str().unwrap_or("?").to_string(),
        Some(event) => format!("{event} {}", frame["data"].as_str().unwrap_or("")),
        None => frame.to_string(),
    }
}

/// The output and the final status of one execution.
#[derive(Debug, Clone)]
pub struct ExecResult {
    pub stdout: String,
    pub stderr: String,
    /// Each output frame, in order: (event, data).
    pub frames: Vec<(String, String)>,
    pub done: Value,
}

impl Ws {
    pub fn stream(&self) -> &TcpStream {
        self.ws.get_ref()
    }

    pub fn set_read_timeout(&self, timeout: Duration) {
        self.stream()
            .set_read_timeout(Some(timeout))
            .expect("set_read_timeout");
    }

    /// A text frame; panics on failure.
    pub fn send_text(&mut self, text: &str) {
        self.try_send(Message::Text(text.to_string()))
            .unwrap_or_else(|error| panic!("send {text:?}: {error}\nreceived: {:#?}", self.log));
    }

    pub fn send(&mut self, value: Value) {
        self.send_text(&value.to_string());
    }

    pub fn try_send(&mut self, message: Message) -> Result<(), String> {
        self.ws.send(message).map_err(|error| error.to_string())
    }

    /// The next frame, waiting at most `timeout` (pings are answered and skipped).
    pub fn next_within(&mut self, timeout: Duration) -> Frame {
        if self.closed {
            return Frame::Eof("already closed".into());
        }
        self.set_read_timeout(timeout);
        let deadline = Instant::now() + timeout;
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    self.log.push(text.clone());
                    let value: Value = serde_json::from_str(&text)
                        .unwrap_or_else(|error| panic!("server sent non-JSON {text:?}: {error}"));
                    assert!(value.is_object(), "server sent a non-object: {text}");
                    return Frame::Json(value);
                }
                Ok(Message::Close(frame)) => {
                    let (code, reason) = match frame {
                        Some(frame) => (Some(u16::from(frame.code)), frame.reason.to_string()),
                        None => (None, String::new()),
                    };
                    self.log.push(format!("<close {code:?} {reason:?}>"));
                    // Complete the closing handshake (tungstenite queued the reply).
                    let _ = self.ws.flush();
                    self.closed = true;
                    return Frame::Close(code, reason);
                }
                Ok(Message::Binary(data)) => {
                    panic!("server sent a binary frame ({} bytes)", data.len())
                }
                Ok(_) => {
                    if Instant::now() >= deadline {
                        return Frame::Timeout;
                    }
                }
                Err(WsError::Io(error))
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Frame::Timeout
                }
                Err(WsError::Io(error)) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    self.log.push(format!("<eof {error}>"));
                    self.closed = true;
                    return Frame::Eof(error.to_string());
                }
            }
        }
    }

    /// The next frame, which must be a JSON object.
    pub fn recv(&mut self) -> Value {
        match self.next_within(FRAME_TIMEOUT) {
            Frame::Json(value) => value,
            other => panic!(
                "expected a frame, got {other:?}\nreceived so far: {:#?}",
                self.log
            ),
        }
    }

    /// The next frame must be this status.
    pub fn expect_status(&mut self, status: &str) -> Value {
        let frame = self.recv();
        assert!(
            is_status(&frame, status),
            "expected status {status}, got {frame}\nreceived so far: {:#?}",
            self.log
        );
        frame
    }

    /// The next frames must be this error status (with `message`) and the `error` event with
    /// the same text. Returns the message.
    pub fn expect_error(&mut self, status: &str) -> String {
        let frame = self.expect_status(status);
        let message = frame["message"]
            .as_str()
            .unwrap_or_else(|| panic!("error status without message: {frame}"))
            .to_string();
        assert!(!message.is_empty(), "{frame}");
        let error = self.recv();
        assert_eq!(error["event"], "error", "{error}\n{:#?}", self.log);
        assert_eq!(
            error["message"], message,
            "the error event must repeat the status message"
        );
        message
    }

    /// The next thing must be a close frame with `code`.
    pub fn expect_close(&mut self, code: u16) {
        match self.next_within(FRAME_TIMEOUT) {
            Frame::Close(Some(got), _) if got == code => {}
            other => panic!(
                "expected close {code}, got {other:?}\nreceived so far: {:#?}",
                self.log
            ),
        }
    }

    /// Nothing at all may arrive within `timeout`.
    pub fn expect_silence(&mut self, timeout: Duration) {
        match self.next_within(timeout) {
            Frame::Timeout => {}
            other => panic!(
                "expected nothing for {timeout:?}, got {other:?}\nreceived so far: {:#?}",
                self.log
            ),
        }
    }

    /// The kill_sandbox / idle-timeout ending: KILLING, DELETING, DELETED, KILLED, close 1000.
    pub fn expect_killed(&mut self) {
        for status in [
            "SANDBOX_KILLING",
            "SANDBOX_DELETING",
            "SANDBOX_DELETED",
            "SANDBOX_KILLED",
        ] {
            self.expect_status(status);
        }
        self.expect_close(1000);
    }

    /// Send an execution request.
    pub fn start(&mut self, language: &str, code: &str) {
        self.send(json!({"language": language, "code": code}));
    }

    /// Send an execution request with extra keys (`env`, `cwd`, `timeout`, `output_encoding`).
    pub fn start_with(&mut self, language: &str, code: &str, extra: Value) {
        let mut message = json!({"language": language, "code": code});
        if let Value::Object(extra) = extra {
            for (key, value) in extra {
                message[key] = value;
            }
        }
        self.send(message);
    }

    /// Output frames up to and including `SANDBOX_EXECUTION_DONE` (nothing else may come).
    pub fn collect_until_done(&mut self) -> ExecResult {
        let mut result = ExecResult {
            stdout: String::new(),
            stderr: String::new(),
            frames: Vec::new(),
            done: Value::Null,
        };
        loop {
            let frame = self.recv();
            match frame["event"].as_str() {
                Some(name @ ("stdout" | "stderr")) => {
                    let data = frame["data"]
                        .as_str()
                        .unwrap_or_else(|| panic!("output frame without data: {frame}"))
                        .to_string();
                    if name == "stdout" {
                        result.stdout.push_str(&data);
                    } else {
                        result.stderr.push_str(&data);
                    }
                    result.frames.push((name.to_string(), data));
                }
                Some("status_update") if frame["status"] == "SANDBOX_EXECUTION_DONE" => {
                    assert_done_shape(&frame);
                    result.done = frame;
                    return result;
                }
                _ => panic!(
                    "unexpected frame during an execution: {frame}\nreceived so far: {:#?}",
                    self.log
                ),
            }
        }
    }

    /// Stdout frames until their concatenation contains `needle` (only output may come).
    pub fn read_stdout_until(&mut self, needle: &str) -> String {
        let mut stdout = String::new();
        while !stdout.contains(needle) {
            let frame = self.recv();
            assert_eq!(
                frame["event"], "stdout",
                "expected stdout, got {frame}\nreceived so far: {:#?}",
                self.log
            );
            stdout.push_str(frame["data"].as_str().unwrap_or_default());
        }
        stdout
    }

    /// Run code to completion: RUNNING, output, DONE.
    pub fn run(&mut self, language: &str, code: &str) -> ExecResult {
        self.start(language, code);
        self.expect_status("SANDBOX_EXECUTION_RUNNING");
        self.collect_until_done()
    }

    pub fn run_with(&mut self, language: &str, code: &str, extra: Value) -> ExecResult {
        self.start_with(language, code, extra);
        self.expect_status("SANDBOX_EXECUTION_RUNNING");
        self.collect_until_done()
    }

    /// kill_sandbox and its whole ending.
    /// Ask for a checkpoint and follow it to its end: the four statuses in order, then the
    /// close (1000) that ends the session once the sandbox is saved.
    pub fn checkpoint_to_the_end(&mut self) {
        self.send(json!({"action": "checkpoint"}));
        for status in [
            "SANDBOX_CHECKPOINTING",
            "SANDBOX_DELETING",
            "SANDBOX_DELETED",
            "SANDBOX_CHECKPOINTED",
        ] {
            self.expect_status(status);
        }
        self.expect_close(1000);
    }

    pub fn kill_sandbox(&mut self) {
        self.send(json!({"action": "kill_sandbox"}));
        self.expect_killed();
    }

    /// Send kill_sandbox without waiting or asserting (cleanup on paths that may have failed).
    pub fn try_kill_sandbox(&mut self) {
        let _ = self.try_send(Message::Text(json!({"action": "kill_sandbox"}).to_string()));
    }

    /// Start a clean close and wait (briefly) for the server's reply.
    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self.next_within(Duration::from_secs(5)) {
                Frame::Json(_) => continue,
                _ => break,
            }
        }
    }

    /// Write `count` masked text frames holding `text` straight to the socket, in one write:
    /// a flood far faster than sending them one by one.
    pub fn write_raw_text_frames(&mut self, text: &str, count: usize) -> io::Result<()> {
        use std::io::Write;
        let payload = text.as_bytes();
        assert!(payload.len() < 126, "short frames only");
        let mask = [0x1b, 0x2c, 0x3d, 0x4e];
        let mut bytes = Vec::with_capacity(count * (payload.len() + 6));
        for _ in 0..count {
            bytes.push(0x81); // FIN, text
            bytes.push(0x80 | payload.len() as u8); // masked, length
            bytes.extend_from_slice(&mask);
            bytes.extend(
                payload
                    .iter()
                    .enumerate()
                    .map(|(i, byte)| byte ^ mask[i % 4]),
            );
        }
        let mut stream = self.ws.get_ref();
        stream.write_all(&bytes)
    }

    /// Drop the TCP connection abruptly (no close frame).
    pub fn drop_abruptly(self) {
        let _ = self.stream().shutdown(std::net::Shutdown::Both);
    }
}

/// DONE carries exit_code, signal, reason, timed_out and duration_ms.
pub fn assert_done_shape(done: &Value) {
    assert!(done["exit_code"].is_i64(), "exit_code: {done}");
    assert!(
        done["signal"].is_null() || done["signal"].is_i64(),
        "signal: {done}"
    );
    let reason = done["reason"].as_str().unwrap_or_else(|| panic!("{done}"));
    assert!(
        [
            "exited",
            "signaled",
            "killed",
            "timeout",
            "output_limit",
            "sandbox_lost"
        ]
        .contains(&reason),
        "reason: {done}"
    );
    assert_eq!(done["timed_out"], reason == "timeout", "{done}");
    assert!(done["duration_ms"].is_u64(), "duration_ms: {done}");
    if let Some(signal) = done["signal"].as_i64() {
        assert_eq!(done["exit_code"], 128 + signal, "{done}");
    }
}

/// DONE of a process that exited by itself with `code`.
pub fn assert_exited(done: &Value, code: i64) {
    assert_eq!(done["exit_code"], code, "{done}");
    assert_eq!(done["signal"], Value::Null, "{done}");
    assert_eq!(done["reason"], "exited", "{done}");
    assert_eq!(done["timed_out"], false, "{done}");
}

/// A session on `/create`: the init, CREATING, sandbox_id, RUNNING.
pub struct Created {
    pub ws: Ws,
    pub sandbox_id: String,
    pub token: String,
}

impl Created {
    pub fn attach_path(&self) -> String {
        attach_path(&self.sandbox_id, &self.token)
    }
}

pub fn attach_path(sandbox_id: &str, token: &str) -> String {
    format!("/attach/{sandbox_id}?sandbox_token={token}")
}

/// `/create` with `init`, asserting the whole creation flow.
pub fn create(server: &TestServer, init: Value) -> Created {
    let mut ws = connect(server.port, "/create");
    ws.send(init);
    ws.expect_status("SANDBOX_CREATING");
    let frame = ws.recv();
    assert_eq!(frame["event"], "sandbox_id", "{frame}");
    let sandbox_id = frame["sandbox_id"].as_str().unwrap_or_default().to_string();
    let token = frame["sandbox_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(is_sandbox_id(&sandbox_id), "sandbox id: {frame}");
    assert!(
        is_sandbox_id(&token),
        "token must be 32 hex digits: {frame}"
    );
    ws.expect_status("SANDBOX_RUNNING");
    Created {
        ws,
        sandbox_id,
        token,
    }
}

/// Attach and expect `SANDBOX_RUNNING`. An abruptly dropped connection may not be noticed by
/// the server yet, so `SANDBOX_IN_USE` is retried for a few seconds.
pub fn attach(server: &TestServer, sandbox_id: &str, token: &str) -> Ws {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut ws = connect(server.port, &attach_path(sandbox_id, token));
        let frame = ws.recv();
        if is_status(&frame, "SANDBOX_RUNNING") {
            return ws;
        }
        assert!(
            is_status(&frame, "SANDBOX_IN_USE") && Instant::now() < deadline,
            "attach answered {frame}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Standard base64 decoding (with padding), for `output_encoding: "base64"`.
pub fn base64_decode(text: &str) -> Vec<u8> {
    fn value(byte: u8) -> u32 {
        match byte {
            b'A'..=b'Z' => u32::from(byte - b'A'),
            b'a'..=b'z' => u32::from(byte - b'a') + 26,
            b'0'..=b'9' => u32::from(byte - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {byte:?}"),
        }
    }
    let bytes = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut accumulator = 0u32;
        for (index, byte) in chunk.iter().enumerate() {
            accumulator |= value(*byte) << (18 - 6 * index);
        }
        let produced = (chunk.len() * 6) / 8;
        for index in 0..produced {
            out.push((accumulator >> (16 - 8 * index)) as u8);
        }
    }
    out
}

/// Standard base64 encoding (with padding), for binary stdin.
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let mut accumulator = 0u32;
        for (index, byte) in chunk.iter().enumerate() {
            accumulator |= u32::from(*byte) << (16 - 8 * index);
        }
        for index in 0..4 {
            if index <= chunk.len() {
                out.push(char::from(
                    ALPHABET[(accumulator >> (18 - 6 * index)) as usize & 63],
                ));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What a protocol-2 server sent answering one request id (docs/protocol.md, "Requests,
/// processes and flow control").
#[derive(Debug, Default, Clone)]
pub struct Answers {
    pub process_id: Option<u64>,
    pub stdin_window: Option<u64>,
    /// The latest `stdin_ack` total.
    pub stdin_written: u64,
    pub stdout: String,
    pub stderr: String,
    /// `SANDBOX_EXECUTION_DONE`.
    pub done: Option<Value>,
    /// Every other frame with this id (errors, replies, statuses), in order.
    pub others: Vec<Value>,
}

impl Answers {
    pub fn is_done(&self) -> bool {
        self.done.is_some()
    }

    pub fn exit_code(&self) -> Option<i64> {
        self.done
            .as_ref()
            .and_then(|done| done["exit_code"].as_i64())
    }
}

/// The answers of a protocol-2 session, by request id.
pub type ById = BTreeMap<String, Answers>;

impl Ws {
    /// Send `message` with request id `id`.
    pub fn request(&mut self, id: &str, mut message: Value) {
        message["id"] = json!(id);
        self.send(message);
    }

    /// Read one frame and file it under its request id; returns it.
    pub fn file_next(&mut self, answers: &mut ById) -> Value {
        let frame = self.recv();
        let id = match &frame["id"] {
            Value::String(id) => id.clone(),
            Value::Number(id) => id.to_string(),
            _ => String::new(),
        };
        let entry = answers.entry(id).or_default();
        if let Some(process) = frame["process_id"].as_u64() {
            entry.process_id = Some(process);
        }
        match frame["event"].as_str() {
            Some("stdout") => entry.stdout.push_str(frame["data"].as_str().unwrap_or("")),
            Some("stderr") => entry.stderr.push_str(frame["data"].as_str().unwrap_or("")),
            Some("stdin_ack") => {
                entry.stdin_written = entry
                    .stdin_written
                    .max(frame["written"].as_u64().unwrap_or(0))
            }
            _ if is_status(&frame, "SANDBOX_EXECUTION_RUNNING") => {
                entry.stdin_window = frame["stdin_window"].as_u64();
            }
            _ if is_status(&frame, "SANDBOX_EXECUTION_DONE") => entry.done = Some(frame.clone()),
            _ => entry.others.push(frame.clone()),
        }
        frame
    }

    /// Read frames, filed by request id, until `until` holds.
    pub fn file_until(&mut self, answers: &mut ById, until: impl Fn(&ById) -> bool) {
        while !until(answers) {
            self.file_next(answers);
        }
    }
}
