//! Exposed ports (issue 20): a download through a port's URL, and the latency the server adds
//! to a small GET compared with the same GET made inside the sandbox.
//!
//! The application is a small Python server on 127.0.0.1:8000 inside a sandbox without network:
//! `GET /big` answers `PORT_BYTES` bytes from a 1 MiB buffer (`sendall`), `GET /small` 2 bytes
//! and closes (so each of these requests opens a new connection), `GET /keep` 2 bytes and keeps
//! the connection for the next request (HTTP/1.1 keep-alive, through the path form too).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::direct::Env;
use crate::report::{Report, Row, Unit};
use crate::server::Server;
use crate::support::{seconds, Stat};
use crate::websocket::Session;
use crate::{check, pause};

/// Bytes of one download.
const PORT_BYTES: u64 = 200 * 1024 * 1024;

const APP: &str = r#"
import socket, threading
BLOCK = b"x" * (1 << 20)
def serve(c):
    try:
        data = b""
        while True:
            while b"\r\n\r\n" not in data:
                part = c.recv(65536)
                if not part:
                    return
                data += part
            head, data = data.split(b"\r\n\r\n", 1)
            path = head.split(b" ", 2)[1]
            if path == b"/keep":
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                continue
            if path == b"/big":
                size = int(open("/root/size").read())
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size)
                while size > 0:
                    n = min(size, len(BLOCK))
                    c.sendall(BLOCK[:n])
                    size -= n
            else:
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            return
    finally:
        c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8000))
s.listen(64)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// The same small GET, made inside the sandbox: seconds per request, as JSON.
const INSIDE: &str = r#"
import json, socket, time
samples = []
for i in range(40):
    started = time.perf_counter()
    c = socket.create_connection(("127.0.0.1", 8000))
    c.sendall(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while True:
        part = c.recv(65536)
        if not part:
            break
        data += part
    c.close()
    assert data.endswith(b"ok"), data
    samples.append(time.perf_counter() - started)
kept = []
c = socket.create_connection(("127.0.0.1", 8000))
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for i in range(45):
    started = time.perf_counter()
    c.sendall(b"GET /keep HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while not data.endswith(b"\r\n\r\nok"):
        part = c.recv(65536)
        assert part, data
        data += part
    kept.append(time.perf_counter() - started)
c.close()
print(json.dumps([samples[5:], kept[5:]]))
"#;

/// GETs of `/keep` on one kept-alive connection: seconds per request, after 5 warm-ups.
fn kept_alive_gets(port: u16, path: &str) -> io::Result<Vec<f64>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut samples = Vec::new();
    let mut buffer = [0u8; 4096];
    for round in 0..45 {
        pause(20);
        let started = Instant::now();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
        )?;
        let mut response = Vec::new();
        while !response.ends_with(b"\r\n\r\nok") {
            let n = stream.read(&mut buffer)?;
            check(n > 0, || {
                format!("closed after {:?}", String::from_utf8_lossy(&response))
            })?;
            response.extend_from_slice(&buffer[..n]);
        }
        check(response.starts_with(b"HTTP/1.1 200"), || {
            String::from_utf8_lossy(&response).to_string()
        })?;
        if round >= 5 {
            samples.push(seconds(started.elapsed()));
        }
    }
    Ok(samples)
}

/// One GET on a new connection, read to the end; (seconds, body bytes).
fn get(port: u16, path: &str) -> io::Result<(f64, u64)> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut head: Vec<u8> = Vec::new();
    let mut body = 0u64;
    let mut in_body = false;
    loop {
        let n = stream.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        if in_body {
            body += n as u64;
            continue;
        }
        head.extend_from_slice(&buffer[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            check(head.starts_with(b"HTTP/1.1 200"), || {
                format!("{}", String::from_utf8_lossy(&head[..end]))
            })?;
            body = (head.len() - end - 4) as u64;
            in_body = true;
        }
    }
    Ok((seconds(started.elapsed()), body))
}

pub fn bench_ports(env: &Env, report: &mut Report) -> io::Result<()> {
    let server = Server::start(
        env,
        "ports",
        1,
        &[("SANDBOX_MAX_OUTPUT_BYTES", "1000000000")],
    )?;
    let mut session = Session::create(server.port)?;
    // What a port's download is compared with: stdout streamed through this session.
    let code = format!("yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c {PORT_BYTES}");
    session.run("bash", &code)?; // warm-up
    let mut streamed = Vec::new();
    for _ in 0..3 {
        let (elapsed, bytes, _) = session.run("bash", &code)?;
        check(bytes as u64 == PORT_BYTES, || {
            format!("{bytes} bytes of stdout")
        })?;
        streamed.push(PORT_BYTES as f64 / elapsed / 1e6);
    }
    let prefix = start_and_expose_app(&mut session)?;

    get(server.port, &format!("{prefix}big"))?; // warm-up
    let mut throughput = Vec::new();
    for _ in 0..3 {
        pause(200);
        let (elapsed, bytes) = get(server.port, &format!("{prefix}big"))?;
        check(bytes == PORT_BYTES, || format!("{bytes} bytes downloaded"))?;
        throughput.push(PORT_BYTES as f64 / elapsed / 1e6);
    }
    report.rows.push(Row::rate(
        "download through an exposed port, 200 MiB from a Python server in the sandbox, new connection",
        &throughput,
        Unit::MegabytesPerSecond,
        "200 MiB of text as stdout through a WebSocket session (`yes` piped to `head -c`)",
        Some(Stat::rate(&streamed)),
    ));

    let through = small_gets(server.port, &prefix)?;
    let kept = kept_alive_gets(server.port, &format!("{prefix}keep"))?;
    let (inside, ok) = session.run_stdout("python", INSIDE)?;
    check(ok, || {
        format!("the GET inside the sandbox failed: {inside}")
    })?;
    let inside: Value = serde_json::from_str(inside.trim()).unwrap_or_default();
    let samples = |index: usize| -> Vec<f64> {
        inside[index]
            .as_array()
            .map(|list| list.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    let (inside, inside_kept) = (samples(0), samples(1));
    check(!inside.is_empty() && !inside_kept.is_empty(), || {
        "no samples from inside".to_string()
    })?;
    report.rows.push(Row::latency(
        "GET of 2 bytes through an exposed port (new connection each), client to last byte",
        &through,
        "the same GET made inside the sandbox (Python, new connection each)",
        Some(Stat::latency(&inside)),
    ));
    report.rows.push(Row::latency(
        "GET of 2 bytes through an exposed port, one kept-alive connection (path form)",
        &kept,
        "the same GETs made inside the sandbox (Python, one kept-alive connection)",
        Some(Stat::latency(&inside_kept)),
    ));
    session.kill();
    server.stop();

    // The same GETs through a server that opens nothing ahead (see the agent's `warm`).
    let server = Server::start(env, "ports-cold", 1, &[("SANDBOX_PORT_PRECONNECT", "off")])?;
    let mut session = Session::create(server.port)?;
    let prefix = start_and_expose_app(&mut session)?;
    let cold = small_gets(server.port, &prefix)?;
    report.rows.push(Row::latency(
        "the same GET through a server with SANDBOX_PORT_PRECONNECT=off",
        &cold,
        "the same GET made inside the sandbox (Python, new connection each)",
        Some(Stat::latency(&inside)),
    ));
    session.kill();
    server.stop();
    Ok(())
}

/// Start `APP` in the session's sandbox and expose its port; the path of its URL.
fn start_and_expose_app(session: &mut Session) -> io::Result<String> {
    let start = format!(
        "echo {PORT_BYTES} > /root/size\ncat > /root/app.py <<'PYEOF'\n{APP}\nPYEOF\n\
         nohup python3 /root/app.py >/tmp/app.log 2>&1 &\n\
         for i in $(seq 200); do grep -q ':1F40 00000000:0000 0A' /proc/net/tcp && exit 0; sleep 0.1; done; exit 1"
    );
    let (_, started) = session.run_stdout("bash", &start)?;
    check(started, || "the application did not start".to_string())?;
    let reply = session.request("expose", json!({"action": "expose", "port": 8000}))?;
    let url = reply["url"].as_str().unwrap_or("");
    url.split_once("://")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(_, path)| format!("/{path}"))
        .ok_or_else(|| io::Error::other(format!("no path in {url:?}")))
}

/// 40 GETs of `/small`, each on a new connection, 20 ms apart, after 5 warm-ups: seconds each.
fn small_gets(port: u16, prefix: &str) -> io::Result<Vec<f64>> {
    for _ in 0..5 {
        get(port, &format!("{prefix}small"))?;
    }
    let mut samples = Vec::new();
    for _ in 0..40 {
        pause(20);
        samples.push(get(port, &format!("{prefix}small"))?.0);
    }
    Ok(samples)
}
