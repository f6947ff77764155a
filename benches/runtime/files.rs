//! The files API (issue 14): a 1 KiB read's round trip, and 100 MB up and down through the
//! WebSocket session and through HTTP, on one sandbox of the real server.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// Bytes moved by the throughput rows.
pub const TRANSFER_BYTES: usize = 100_000_000;

const CHUNK: usize = 1024 * 1024;

fn io_error(error: impl std::fmt::Display) -> io::Error {
    io::Error::other(error.to_string())
}

/// A session with its sandbox's id and token (for the HTTP routes).
pub struct FilesSession {
    socket: WebSocket<TcpStream>,
    port: u16,
    sandbox_id: String,
    token: String,
    next_id: u64,
}

impl FilesSession {
    pub fn create(port: u16) -> io::Result<FilesSession> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        stream.set_nodelay(true)?;
        let url = format!("ws://127.0.0.1:{port}/create");
        let (socket, _) = tungstenite::client::client(url.as_str(), stream).map_err(io_error)?;
        let mut session = FilesSession {
            socket,
            port,
            sandbox_id: String::new(),
            token: String::new(),
            next_id: 0,
        };
        session.send(json!({}))?;
        loop {
            let frame = session.next()?;
            if frame["event"] == "sandbox_id" {
                session.sandbox_id = frame["sandbox_id"].as_str().unwrap_or("").into();
                session.token = frame["sandbox_token"].as_str().unwrap_or("").into();
            }
            if frame["status"] == "SANDBOX_RUNNING" {
                return Ok(session);
            }
            if frame["event"] == "error" {
                return Err(io_error(format!("creation failed: {frame}")));
            }
        }
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

    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("f{}", self.next_id)
    }

    /// A `bash` execution of `code` in the same session, for scale: seconds from sending to
    /// `SANDBOX_EXECUTION_DONE`.
    pub fn run_bash(&mut self, code: &str) -> io::Result<f64> {
        let id = self.id();
        let started = Instant::now();
        self.send(json!({"id": id, "language": "bash", "code": code}))?;
        loop {
            let frame = self.next()?;
            if frame["status"] == "SANDBOX_EXECUTION_DONE" {
                if frame["exit_code"] != 0 {
                    return Err(io_error(format!("bash {code:?} failed: {frame}")));
                }
                return Ok(started.elapsed().as_secs_f64());
            }
            if frame["event"] == "error" {
                return Err(io_error(format!("bash {code:?} failed: {frame}")));
            }
        }
    }

    /// Two `read_file`s of `path` sent together: the agent's waiting helper serves the first,
    /// a helper started for it the second. Seconds from sending to each reply (first, second).
    pub fn read_pair(&mut self, path: &str) -> io::Result<(f64, f64)> {
        let (first, second) = (self.id(), self.id());
        let messages = [
            json!({"action": "read_file", "id": first, "path": path}).to_string(),
            json!({"action": "read_file", "id": second, "path": path}).to_string(),
        ];
        let started = Instant::now();
        for message in messages {
            self.socket.send(Message::Text(message)).map_err(io_error)?;
        }
        let (mut first_done, mut second_done) = (None, None);
        while first_done.is_none() || second_done.is_none() {
            let frame = self.next()?;
            match frame["event"].as_str() {
                Some("reply") if frame["id"] == first.as_str() => {
                    first_done = Some(started.elapsed().as_secs_f64())
                }
                Some("reply") if frame["id"] == second.as_str() => {
                    second_done = Some(started.elapsed().as_secs_f64())
                }
                Some("error") => return Err(io_error(format!("read failed: {frame}"))),
                _ => {}
            }
        }
        Ok((first_done.unwrap_or(0.0), second_done.unwrap_or(0.0)))
    }

    /// `read_file`: (seconds from sending to the reply, bytes received).
    pub fn read(&mut self, path: &str) -> io::Result<(f64, usize)> {
        let id = self.id();
        let started = Instant::now();
        self.send(json!({"action": "read_file", "id": id, "path": path}))?;
        let mut bytes = 0;
        loop {
            let frame = self.next()?;
            match frame["event"].as_str() {
                // Base64: 4 characters per 3 bytes, padding aside (counted exactly below).
                Some("file_data") => bytes += base64_len(frame["data"].as_str().unwrap_or("")),
                Some("reply") => return Ok((started.elapsed().as_secs_f64(), bytes)),
                Some("error") => return Err(io_error(format!("read failed: {frame}"))),
                _ => {}
            }
        }
    }

    /// `write_file` of `data` in 1 MiB chunks within the window, as the clients send it; the
    /// messages are encoded before the clock starts. Seconds to the reply.
    pub fn write(&mut self, path: &str, data: &[u8]) -> io::Result<f64> {
        let id = self.id();
        let pieces: Vec<&[u8]> = data.chunks(CHUNK).collect();
        let messages: Vec<(u64, String)> = pieces
            .iter()
            .enumerate()
            .map(|(index, piece)| {
                let mut message = json!({"action": "write_file", "id": id,
                    "data": base64(piece), "more": index + 1 < pieces.len()});
                if index == 0 {
                    message["path"] = json!(path);
                }
                (piece.len() as u64, message.to_string())
            })
            .collect();
        let started = Instant::now();
        let (mut sent, mut written, mut window) = (0u64, 0u64, CHUNK as u64);
        for (len, message) in messages {
            while sent > 0 && sent + len - written > window {
                let frame = self.next()?;
                if frame["event"] == "file_ack" {
                    written = written.max(frame["written"].as_u64().unwrap_or(0));
                    window = frame["window"].as_u64().unwrap_or(window);
                } else if frame["event"] == "error" {
                    return Err(io_error(format!("write failed: {frame}")));
                }
            }
            self.socket.send(Message::Text(message)).map_err(io_error)?;
            sent += len;
        }
        loop {
            let frame = self.next()?;
            match frame["event"].as_str() {
                Some("reply") if frame["size"] == data.len() => {
                    return Ok(started.elapsed().as_secs_f64())
                }
                Some("reply") | Some("error") => {
                    return Err(io_error(format!("write failed: {frame}")))
                }
                _ => {}
            }
        }
    }

    /// `PUT /sandboxes/{id}/files?path=P` with a Content-Length body: seconds to the answer.
    pub fn http_put(&self, path: &str, data: &[u8]) -> io::Result<f64> {
        let started = Instant::now();
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        let head = format!(
            "PUT /sandboxes/{}/files?path={path} HTTP/1.1\r\nHost: b\r\nX-Sandbox-Token: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.sandbox_id,
            self.token,
            data.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(data)?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        if !answer.starts_with("HTTP/1.1 200") {
            return Err(io_error(format!("PUT failed: {answer}")));
        }
        Ok(started.elapsed().as_secs_f64())
    }

    /// `GET /sandboxes/{id}/files?path=P`, the chunked body read to its end: (seconds, bytes).
    pub fn http_get(&self, path: &str) -> io::Result<(f64, usize)> {
        let started = Instant::now();
        let stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        let head = format!(
            "GET /sandboxes/{}/files?path={path} HTTP/1.1\r\nHost: b\r\nX-Sandbox-Token: {}\r\nConnection: close\r\n\r\n",
            self.sandbox_id, self.token
        );
        (&stream).write_all(head.as_bytes())?;
        let mut reader = BufReader::with_capacity(1024 * 1024, stream);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if !line.starts_with("HTTP/1.1 200") {
            return Err(io_error(format!("GET failed: {line}")));
        }
        while {
            line.clear();
            reader.read_line(&mut line)?;
            line != "\r\n"
        } {}
        let mut bytes = 0;
        let mut buffer = vec![0u8; 1024 * 1024];
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim(), 16).map_err(io_error)?;
            if size == 0 {
                break;
            }
            let mut left = size;
            while left > 0 {
                let take = left.min(buffer.len());
                let n = reader.read(&mut buffer[..take])?;
                if n == 0 {
                    return Err(io_error("the body ended early"));
                }
                left -= n;
            }
            bytes += size;
            line.clear();
            reader.read_line(&mut line)?;
        }
        Ok((started.elapsed().as_secs_f64(), bytes))
    }

    pub fn kill(mut self) {
        let _ = self.send(json!({"action": "kill_sandbox"}));
        while let Ok(frame) = self.next() {
            if frame["status"] == "SANDBOX_KILLED" {
                break;
            }
        }
    }
}

fn base64_len(text: &str) -> usize {
    let padding = text.bytes().rev().take_while(|byte| *byte == b'=').count();
    text.len() / 4 * 3 - padding
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
