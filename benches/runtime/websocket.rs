//! The WebSocket path: one session on the real server, timed from sending the execution
//! message to its `SANDBOX_EXECUTION_DONE`, and the output throughput through that session.

use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

pub struct Session {
    socket: WebSocket<TcpStream>,
}

fn io_error(error: impl std::fmt::Display) -> io::Error {
    io::Error::other(error.to_string())
}

impl Session {
    /// `/create` with an empty init object; returns once the sandbox runs.
    pub fn create(port: u16) -> io::Result<Session> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        stream.set_nodelay(true)?;
        let url = format!("ws://127.0.0.1:{port}/create");
        let (socket, _) = tungstenite::client::client(url.as_str(), stream).map_err(io_error)?;
        let mut session = Session { socket };
        session.send(json!({}))?;
        session.until(|frame| frame["status"] == "SANDBOX_RUNNING")?;
        Ok(session)
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

    pub fn kill(mut self) {
        let _ = self.send(json!({"action": "kill_sandbox"}));
        let _ = self.until(|frame| frame["status"] == "SANDBOX_KILLED");
    }
}
