//! The real `sandbox-server` binary, started by the bench on 127.0.0.1, and a minimal HTTP/1.1
//! client for it (keep-alive, Content-Length or chunked responses).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::direct::Env;
use crate::support;

pub struct Server {
    pub pid: u32,
    pub port: u16,
    pub state_dir: PathBuf,
    log: PathBuf,
    stopped: bool,
}

impl Server {
    /// Start the server with `SANDBOX_POOL_SIZE=pool` and extra variables; returns once
    /// `GET /status` answers and the pool (if any) is ready.
    pub fn start(env: &Env, name: &str, pool: usize, extra: &[(&str, &str)]) -> io::Result<Server> {
        // A free port: bind to port 0, read it, release it.
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        // The server names its cgroup parent after the state directory: make it unique.
        let dir_name = format!(
            "{}-{name}",
            env.base.file_name().unwrap_or_default().to_string_lossy()
        );
        let state_dir = env.base.join(&dir_name);
        support::register_runsc_root(&state_dir.join("runsc"));
        support::register_cgroup_parent(&dir_name);
        let log = env.base.join(format!("server-{name}.log"));
        let mut command = Command::new(&env.server_binary);
        command
            .env("PORT", port.to_string())
            .env("SANDBOX_LISTEN_ADDR", "127.0.0.1")
            .env("SANDBOX_STATE_DIR", &state_dir)
            .env("SANDBOX_POOL_SIZE", pool.to_string())
            .env("SANDBOX_AGENT_PATH", &env.agent_binary)
            .env("SANDBOX_RUNSC", &env.runsc_binary)
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::from(File::create(&log)?))
            .stderr(Stdio::from(File::create(&log)?));
        // If the bench dies, the server shuts down (and deletes its sandboxes). The signal is
        // sent when the spawning *thread* ends: servers are only started from the main thread.
        sandbox_ffi::set_parent_death_signal(&mut command, libc::SIGTERM);
        let child = support::spawn(&mut command)?;
        support::register_server(child.id());
        let server = Server {
            pid: child.id(),
            port,
            state_dir,
            log,
            stopped: false,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = Client::new(port).and_then(|mut client| client.get("/status")) {
                if response.status == 200 {
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "the server did not start; log:\n{}",
                    server.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        server.wait_settled(pool, Duration::from_secs(30))?;
        Ok(server)
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        text.get(start..).unwrap_or("").to_string()
    }

    /// A gauge from `GET /metrics`.
    pub fn gauge(&self, name: &str) -> io::Result<u64> {
        let response = Client::new(self.port)?.get("/metrics")?;
        let text = String::from_utf8_lossy(&response.body);
        text.lines()
            .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .find_map(|value| value.trim().parse::<f64>().ok())
            .map(|value| value as u64)
            .ok_or_else(|| io::Error::other(format!("no {name} in /metrics")))
    }

    /// Wait until exactly `pool` sandboxes exist and all are ready in the pool (so the previous
    /// request's sandbox is deleted and the pool refilled).
    pub fn wait_settled(&self, pool: usize, timeout: Duration) -> io::Result<()> {
        self.wait_settled_with(pool, pool, timeout)
    }

    /// Wait until every live sandbox is a ready pooled one, at least `pool` of them: after a
    /// burst the pool has grown with demand (up to `SANDBOX_POOL_MAX`) and shrinks only one per
    /// quiet minute.
    pub fn wait_pool_ready(&self, pool: usize, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let live = self.gauge("sandbox_live")?;
            let ready = self.gauge("sandbox_pool_ready")?;
            if live == ready && ready >= pool as u64 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "pool not ready: live={live} pool_ready={ready}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Like `wait_settled`, with `live` sandboxes in all (the fresh pool plus snapshot pools).
    pub fn wait_settled_with(
        &self,
        pool: usize,
        live_total: usize,
        timeout: Duration,
    ) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let live = self.gauge("sandbox_live")?;
            let ready = self.gauge("sandbox_pool_ready")?;
            if live == live_total as u64 && ready == pool as u64 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "server not settled: live={live} pool_ready={ready}"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stop(mut self) {
        self.stopped = true;
        support::stop_server(self.pid);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.stopped {
            support::stop_server(self.pid);
        }
    }
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// Body bytes (after de-chunking), counted even when not kept.
    pub body_bytes: u64,
    /// When the response head had arrived.
    pub head_at: Instant,
}

/// One keep-alive HTTP/1.1 connection.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    pub fn new(port: u16) -> io::Result<Client> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        Ok(Client {
            reader: BufReader::with_capacity(256 * 1024, stream.try_clone()?),
            writer: stream,
        })
    }

    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        self.writer.write_all(request.as_bytes())?;
        self.read_response(usize::MAX)
    }

    /// `POST /execute?language=...` with `code`; keeps at most `keep` body bytes.
    pub fn execute(
        &mut self,
        language: &str,
        code: &str,
        json: bool,
        keep: usize,
    ) -> io::Result<Response> {
        let accept = if json {
            "Accept: application/json\r\n"
        } else {
            ""
        };
        let request = format!(
            "POST /execute?language={language} HTTP/1.1\r\nHost: 127.0.0.1\r\n{accept}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{code}",
            code.len()
        );
        self.writer.write_all(request.as_bytes())?;
        self.read_response(keep)
    }

    /// `POST /mcp` with a JSON-RPC `body` and extra header lines (each ending in CRLF).
    pub fn mcp(&mut self, headers: &str, body: &str) -> io::Result<Response> {
        let request = format!(
            "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.writer.write_all(request.as_bytes())?;
        self.read_response(usize::MAX)
    }

    fn read_line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        Ok(line.trim_end().to_string())
    }

    fn read_response(&mut self, keep: usize) -> io::Result<Response> {
        let status_line = self.read_line()?;
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
        let mut length = None;
        let mut chunked = false;
        loop {
            let line = self.read_line()?;
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
                if name == "content-length" {
                    length = value.parse::<u64>().ok();
                } else if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                }
            }
        }
        let head_at = Instant::now();
        let mut body = Vec::new();
        let mut body_bytes = 0u64;
        if chunked {
            loop {
                let size_line = self.read_line()?;
                let size =
                    u64::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| io::Error::other(format!("bad chunk size {size_line:?}")))?;
                if size == 0 {
                    // Trailers (none expected) end with an empty line.
                    while !self.read_line()?.is_empty() {}
                    break;
                }
                self.read_body(size, keep, &mut body, &mut body_bytes)?;
                self.read_line()?;
            }
        } else if let Some(length) = length {
            self.read_body(length, keep, &mut body, &mut body_bytes)?;
        }
        Ok(Response {
            status,
            body,
            body_bytes,
            head_at,
        })
    }

    fn read_body(
        &mut self,
        mut size: u64,
        keep: usize,
        body: &mut Vec<u8>,
        total: &mut u64,
    ) -> io::Result<()> {
        while size > 0 {
            let available = self.reader.fill_buf()?;
            if available.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "body cut short",
                ));
            }
            let n = available.len().min(size as usize);
            let room = keep.saturating_sub(body.len()).min(n);
            body.extend_from_slice(&available[..room]);
            self.reader.consume(n);
            size -= n as u64;
            *total += n as u64;
        }
        Ok(())
    }
}
