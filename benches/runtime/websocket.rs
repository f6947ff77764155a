//! The WebSocket path: one session on the real server, timed from sending the execution
//! message to its `SANDBOX_EXECUTION_DONE`, and the output throughput through that session; and
//! the checkpoint, restore (attach) and snapshot flows, for the `persist` section.

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
