//! The WebSocket path: one session on the real server, timed from sending the execution
//! message to its `SANDBOX_EXECUTION_DONE`, and the output throughput through that session;
//! protocol 2's concurrent executions and stdin with flow control; and the checkpoint, restore
//! (attach) and snapshot flows, for the `persist` section.

use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

pub struct Session {
    socket: WebSocket<TcpStream>,
}

/// A session just created, with what the server said about its sandbox.
pub struct Created {
    pub session: Session,
    /// Seconds from connecting to `SANDBOX_RUNNING`.
    pub elapsed: f64,
    pub sandbox_id: String,
    pub token: String,
}

fn io_error(error: impl std::fmt::Display) -> io::Error {
    io::Error::other(error.to_string())
}

impl Session {
    /// `/create` with an empty init object; returns once the sandbox runs.
    pub fn create(port: u16) -> io::Result<Session> {
        Ok(Self::create_with(port, json!({}))?.session)
    }

    fn connect(port: u16, path: &str) -> io::Result<Session> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        stream.set_nodelay(true)?;
        let url = format!("ws://127.0.0.1:{port}{path}");
        let (socket, _) = tungstenite::client::client(url.as_str(), stream).map_err(io_error)?;
        Ok(Session { socket })
    }

    /// `/create` with `init`; returns once the sandbox runs, with the time from connecting to
    /// `SANDBOX_RUNNING` and the sandbox's id and token.
    pub fn create_with(port: u16, init: Value) -> io::Result<Created> {
        let started = Instant::now();
        let mut session = Self::connect(port, "/create")?;
        session.send(init)?;
        let (mut sandbox_id, mut token) = (String::new(), String::new());
        loop {
            let frame = session.next()?;
            if frame["event"] == "error" || frame["status"] == "SANDBOX_CREATION_ERROR" {
                return Err(io_error(format!("creation failed: {frame}")));
            }
            if frame["event"] == "sandbox_id" {
                sandbox_id = frame["sandbox_id"].as_str().unwrap_or("").to_string();
                token = frame["sandbox_token"].as_str().unwrap_or("").to_string();
            }
            if frame["status"] == "SANDBOX_RUNNING" {
                break;
            }
        }
        Ok(Created {
            elapsed: started.elapsed().as_secs_f64(),
            session,
            sandbox_id,
            token,
        })
    }

    /// `/attach/{id}?sandbox_token=T`; returns once `SANDBOX_RUNNING` arrives, with the time
    /// from connecting (a checkpointed sandbox is restored on the way).
    pub fn attach(port: u16, sandbox_id: &str, token: &str) -> io::Result<(Session, f64)> {
        let started = Instant::now();
        let mut session =
            Self::connect(port, &format!("/attach/{sandbox_id}?sandbox_token={token}"))?;
        session.until(|frame| frame["status"] == "SANDBOX_RUNNING")?;
        Ok((session, started.elapsed().as_secs_f64()))
    }

    /// `{"action":"checkpoint"}`: seconds from sending it to the close that follows
    /// `SANDBOX_CHECKPOINTED`.
    pub fn checkpoint(mut self) -> io::Result<f64> {
        let started = Instant::now();
        self.send(json!({"action": "checkpoint"}))?;
        let mut checkpointed = false;
        loop {
            match self.socket.read().map_err(io_error)? {
                Message::Text(text) => {
                    let frame: Value = serde_json::from_str(&text).map_err(io_error)?;
                    if frame["event"] == "error" {
                        return Err(io_error(format!("checkpoint failed: {frame}")));
                    }
                    checkpointed |= frame["status"] == "SANDBOX_CHECKPOINTED";
                }
                Message::Close(frame) => {
                    let elapsed = started.elapsed().as_secs_f64();
                    if !checkpointed {
                        return Err(io_error(format!(
                            "closed before SANDBOX_CHECKPOINTED: {frame:?}"
                        )));
                    }
                    // Finish the closing handshake (not timed).
                    while self.socket.read().is_ok() {}
                    return Ok(elapsed);
                }
                _ => {}
            }
        }
    }

    /// `{"action":"snapshot_filesystem","name":N}`: seconds from sending it to
    /// `SANDBOX_FILESYSTEM_SNAPSHOT_CREATED` (the session then goes on).
    pub fn snapshot(&mut self, name: &str) -> io::Result<f64> {
        let started = Instant::now();
        self.send(json!({"action": "snapshot_filesystem", "name": name}))?;
        self.until(|frame| {
            frame["status"] == "SANDBOX_FILESYSTEM_SNAPSHOT_CREATED"
                || frame["status"] == "SANDBOX_FILESYSTEM_SNAPSHOT_ERROR"
        })
        .and_then(|(frame, _)| {
            if frame["status"] == "SANDBOX_FILESYSTEM_SNAPSHOT_CREATED" {
                Ok(started.elapsed().as_secs_f64())
            } else {
                Err(io_error(format!("snapshot failed: {frame}")))
            }
        })
    }

    fn send(&mut self, value: Value) -> io::Result<()> {
        self.socket
            .send(Message::Text(value.to_string()))
            .map_err(io_error)
    }

    fn next(&mut self) -> io::Result<Value> {
        loop {
            match self.socket.read().map_err(io_error)? {
                Message::Text(text) => return serde_json::from_str(&text).map_err(io_error),
                Message::Close(frame) => return Err(io_error(format!("closed: {frame:?}"))),
                _ => {}
            }
        }
    }

    /// Read frames until `done` says so; returns the bytes of `data` seen on the way.
    fn until(&mut self, done: impl Fn(&Value) -> bool) -> io::Result<(Value, usize)> {
        let mut data = 0;
        loop {
            let frame = self.next()?;
            if let Some(text) = frame["data"].as_str() {
                data += text.len();
            }
            if frame["event"] == "error" {
                return Err(io_error(format!("server error: {frame}")));
            }
            if done(&frame) {
                return Ok((frame, data));
            }
        }
    }

    /// One execution; returns (seconds from sending to DONE, output bytes, DONE frame).
    pub fn run(&mut self, language: &str, code: &str) -> io::Result<(f64, usize, Value)> {
        let started = Instant::now();
        self.send(json!({"language": language, "code": code, "timeout": 300}))?;
        let (done, bytes) = self.until(|frame| frame["status"] == "SANDBOX_EXECUTION_DONE")?;
        Ok((started.elapsed().as_secs_f64(), bytes, done))
    }

    /// One code cell in the default context (issue 13); returns (seconds from sending to
    /// DONE, the main result's text or "").
    pub fn run_code(&mut self, code: &str) -> io::Result<(f64, String)> {
        let started = Instant::now();
        self.send(json!({"id": "cell", "action": "run_code", "code": code}))?;
        let mut text = String::new();
        loop {
            let frame = self.next()?;
            if frame["event"] == "error" || frame["event"] == "execution_error" {
                return Err(io_error(format!("the cell failed: {frame}")));
            }
            if frame["event"] == "result" && frame["is_main_result"] == true {
                text = frame["data"]["text/plain"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
            }
            if frame["status"] == "SANDBOX_EXECUTION_DONE" {
                return Ok((started.elapsed().as_secs_f64(), text));
            }
        }
    }

    /// Protocol 2: `count` executions of `code` at once, each with its request id; seconds
    /// from the first message to the last `SANDBOX_EXECUTION_DONE`.
    pub fn run_concurrent(&mut self, count: usize, code: &str) -> io::Result<f64> {
        let started = Instant::now();
        for index in 0..count {
            self.send(json!({"id": format!("c{index}"), "language": "bash", "code": code}))?;
        }
        let mut done = 0;
        while done < count {
            let frame = self.next()?;
            if frame["event"] == "error" {
                return Err(io_error(format!("server error: {frame}")));
            }
            if frame["status"] == "SANDBOX_EXECUTION_DONE" {
                if frame["exit_code"] != 0 {
                    return Err(io_error(format!("an execution failed: {frame}")));
                }
                done += 1;
            }
        }
        Ok(started.elapsed().as_secs_f64())
    }

    /// Protocol 2: `data` through the stdin of `wc -c`, in chunks of 1 MiB (base64) within
    /// the window the server gives, as our clients send it; seconds from the first stdin
    /// message to the process's `SANDBOX_EXECUTION_DONE`. The messages are encoded before
    /// the clock starts: this measures the server and the sandbox, not the client.
    pub fn stdin_throughput(&mut self, data: &[u8]) -> io::Result<f64> {
        self.send(json!({"id": "count", "language": "bash", "code": "wc -c"}))?;
        let (running, _) = self.until(|frame| frame["status"] == "SANDBOX_EXECUTION_RUNNING")?;
        let process = running["process_id"].clone();
        let window = running["stdin_window"]
            .as_u64()
            .ok_or_else(|| io_error(format!("no stdin window: {running}")))?;
        let chunks: Vec<(u64, String)> = data
            .chunks(1024 * 1024)
            .enumerate()
            .map(|(index, chunk)| {
                let message = json!({"id": format!("in{index}"), "event": "stdin",
                    "process_id": process, "data": base64(chunk), "encoding": "base64"});
                (chunk.len() as u64, message.to_string())
            })
            .collect();
        let started = Instant::now();
        let (mut sent, mut written) = (0u64, 0u64);
        for (len, message) in chunks {
            while sent + len - written > window {
                let frame = self.next()?;
                if frame["event"] == "error" {
                    return Err(io_error(format!("stdin refused: {frame}")));
                }
                if frame["event"] == "stdin_ack" {
                    written = written.max(frame["written"].as_u64().unwrap_or(0));
                }
            }
            self.socket.send(Message::Text(message)).map_err(io_error)?;
            sent += len;
        }
        self.send(json!({"id": "eof", "event": "stdin", "process_id": process, "eof": true}))?;
        let (_, output) = self.until(|frame| frame["status"] == "SANDBOX_EXECUTION_DONE")?;
        let elapsed = started.elapsed().as_secs_f64();
        // `wc -c` prints the count and a newline.
        if output != data.len().to_string().len() + 1 {
            return Err(io_error("wc -c did not count every byte"));
        }
        Ok(elapsed)
    }

    /// One execution's stdout as text, and whether it exited 0.
    pub fn run_stdout(&mut self, language: &str, code: &str) -> io::Result<(String, bool)> {
        self.send(json!({"language": language, "code": code, "timeout": 300}))?;
        let mut stdout = String::new();
        loop {
            let frame = self.next()?;
            if frame["event"] == "stdout" {
                stdout.push_str(frame["data"].as_str().unwrap_or(""));
            }
            if frame["event"] == "error" {
                return Err(io_error(format!("server error: {frame}")));
            }
            if frame["status"] == "SANDBOX_EXECUTION_DONE" {
                return Ok((stdout, frame["exit_code"] == 0));
            }
        }
    }

    /// A message with request id `id`; the `reply` answering it.
    pub fn request(&mut self, id: &str, mut message: Value) -> io::Result<Value> {
        message["id"] = json!(id);
        self.send(message)?;
        loop {
            let frame = self.next()?;
            if frame["id"] == id {
                if frame["event"] == "reply" {
                    return Ok(frame);
                }
                return Err(io_error(format!("request {id} refused: {frame}")));
            }
        }
    }

    /// Terminals: `keystrokes` single-byte keystrokes typed into `cat` on a terminal, each
    /// timed from its stdin message to the `stdout` event with its echo (the terminal's line
    /// discipline echoes it; `cat` reads whole lines, so the echo is all that comes back).
    /// Seconds per keystroke.
    pub fn terminal_echo(&mut self, keystrokes: usize) -> io::Result<Vec<f64>> {
        self.send(
            json!({"id": "echo", "language": "bash", "code": "exec cat >/dev/null",
            "pty": {"cols": 80, "rows": 24}}),
        )?;
        let (running, _) = self.until(|frame| frame["status"] == "SANDBOX_EXECUTION_RUNNING")?;
        let process = running["process_id"].clone();
        let mut samples = Vec::with_capacity(keystrokes);
        for index in 0..keystrokes {
            // Typed like a fast typist (50 keys a second), within the session's message rate
            // (SANDBOX_WS_MESSAGES_PER_SEC); the pause is not part of the measurement.
            std::thread::sleep(Duration::from_millis(20));
            let key = char::from(b'a' + (index % 26) as u8).to_string();
            let started = Instant::now();
            self.send(json!({"id": format!("k{index}"), "event": "stdin",
                "process_id": process, "data": key}))?;
            self.until(|frame| {
                frame["event"] == "stdout" && frame["data"].as_str() == Some(key.as_str())
            })?;
            samples.push(started.elapsed().as_secs_f64());
        }
        self.send(json!({"id": "stop", "action": "kill_process", "process_id": process}))?;
        self.until(|frame| frame["status"] == "SANDBOX_EXECUTION_DONE")?;
        Ok(samples)
    }

    /// Terminals: `code`'s output through a terminal; (seconds from the message to DONE,
    /// output bytes, `stdout` events).
    pub fn terminal_run(&mut self, code: &str) -> io::Result<(f64, usize, usize)> {
        let started = Instant::now();
        self.send(json!({"id": "out", "language": "bash", "code": code,
            "pty": {"cols": 80, "rows": 24}, "timeout": 300}))?;
        let (mut bytes, mut events) = (0, 0);
        loop {
            let frame = self.next()?;
            if frame["event"] == "error" {
                return Err(io_error(format!("server error: {frame}")));
            }
            if let Some(text) = frame["data"].as_str() {
                bytes += text.len();
                events += 1;
            }
            if frame["status"] == "SANDBOX_EXECUTION_DONE" {
                return Ok((started.elapsed().as_secs_f64(), bytes, events));
            }
        }
    }

    pub fn kill(mut self) {
        let _ = self.send(json!({"action": "kill_sandbox"}));
        let _ = self.until(|frame| frame["status"] == "SANDBOX_KILLED");
    }

    /// [`Session::kill`], reporting whether `SANDBOX_KILLED` arrived.
    pub fn kill_checked(mut self) -> io::Result<()> {
        self.send(json!({"action": "kill_sandbox"}))?;
        self.until(|frame| frame["status"] == "SANDBOX_KILLED")?;
        Ok(())
    }
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let mut n = 0u32;
        for (index, byte) in chunk.iter().enumerate() {
            n |= u32::from(*byte) << (16 - 8 * index);
        }
        for index in 0..4 {
            out.push(if index <= chunk.len() {
                char::from(ALPHABET[(n >> (18 - 6 * index)) as usize & 63])
            } else {
                '='
            });
        }
    }
    out
}
