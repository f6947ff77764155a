//! Exposed ports (issue 20, docs/protocol.md "Ports") against the real server, runsc and
//! sandbox image: web servers inside sandboxes without network, reached through the server's
//! URL; the statuses of every way a port can be unreachable; what a port cannot reach.
//!
//! Each test starts its own server, whose `Drop` stops it and removes every sandbox it left,
//! also on failure. Run with:
//!
//!     cargo test --test ports -- --test-threads=2

mod common;
mod store;
mod ws;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::TestServer;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use ws::{create, Created, Ws};

const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// A bash function that waits until something listens on port $1 inside the sandbox. It
/// reads the TCP table instead of connecting: a probe connection would sit in TIME_WAIT for a
/// minute, and runsc cannot checkpoint a sandbox with a connection in its table.
const WAIT_PORT: &str = r#"wait_port() { local hex=$(printf '%04X' $1); for i in $(seq 200); do grep -q ":$hex 00000000:0000 0A" /proc/net/tcp && return 0; sleep 0.1; done; echo "nothing listens on $1" >&2; return 1; }"#;

/// Server-sent events on port 8001: the first event at once, the second once /tmp/go exists
/// (so the test proves the first arrived before the response ended, without timing).
const SSE_APP: &str = r#"
import os, socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8001))
s.listen(8)
while True:
    c, _ = s.accept()
    if not c.recv(65536):
        c.close()  # the test's probe (wait_port): it sends nothing
        continue
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
    def chunk(data):
        c.sendall(b"%x\r\n%s\r\n" % (len(data), data))
    chunk(b"data: first\n\n")
    while not os.path.exists("/tmp/go"):
        time.sleep(0.05)
    chunk(b"data: second\n\n")
    c.sendall(b"0\r\n\r\n")
    c.close()
"#;

/// A WebSocket echo server on port 8002, with the standard library only (the image has no
/// `websockets` package): answers each text message with "echo: " and the message.
const WS_APP: &str = r#"
import base64, hashlib, socket, struct
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8002))
s.listen(8)
while True:
    c, _ = s.accept()
    data = b""
    while b"\r\n\r\n" not in data:
        part = c.recv(4096)
        if not part:
            break
        data += part
    if b"\r\n\r\n" not in data:
        c.close()  # the test's probe (wait_port): it sends nothing
        continue
    head = data.split(b"\r\n\r\n")[0].decode()
    key = [l.split(":", 1)[1].strip() for l in head.split("\r\n") if l.lower().startswith("sec-websocket-key:")][0]
    accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
    c.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept).encode())
    def exact(n):
        b = b""
        while len(b) < n:
            x = c.recv(n - len(b))
            if not x:
                raise EOFError
            b += x
        return b
    try:
        while True:
            b1, b2 = exact(2)
            op, n = b1 & 15, b2 & 127
            if n == 126:
                n = struct.unpack(">H", exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", exact(8))[0]
            mask = exact(4) if b2 & 128 else b"\0\0\0\0"
            payload = bytes(x ^ mask[i % 4] for i, x in enumerate(exact(n)))
            if op == 8:
                c.sendall(b"\x88\x00")
                break
            if op == 1:
                out = b"echo: " + payload
                c.sendall(bytes([0x81, len(out)]) + out)
    except EOFError:
        pass
    c.close()
"#;

/// Accepts on port 8003 and never answers.
const SILENT_APP: &str = r#"
import socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8003))
s.listen(8)
held = []
while True:
    c, _ = s.accept()
    held.append(c)
"#;

/// The standard library's HTTP server in HTTP/1.1 mode (keep-alive) on port 8004: files from
/// /root/www, `POST` answers with the path it saw, its `X-Forwarded-Prefix` and the body it read
/// (`Content-Length` or chunked), and `GET /ws` upgrades to a WebSocket that echoes text frames.
const KEEPALIVE_APP: &str = r#"
import base64, hashlib, http.server, os, struct
os.chdir("/root/www")
class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        if self.headers.get("Transfer-Encoding") == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers["Content-Length"]))
        out = b"%s|%s|%s" % (self.path.encode(), self.headers.get("X-Forwarded-Prefix", "").encode(), body)
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def do_GET(self):
        if self.path != "/ws":
            return super().do_GET()
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while True:
            b1, b2 = self.rfile.read(2)
            n = b2 & 127
            if n == 126:
                n = struct.unpack(">H", self.rfile.read(2))[0]
            mask = self.rfile.read(4) if b2 & 128 else b"\0\0\0\0"
            payload = bytes(x ^ mask[i % 4] for i, x in enumerate(self.rfile.read(n)))
            if b1 & 15 == 8:
                self.wfile.write(b"\x88\x00")
                return
            out = b"echo: " + payload
            self.wfile.write(bytes([0x81, len(out)]) + out)
http.server.ThreadingHTTPServer(("127.0.0.1", 8004), Handler).serve_forever()
"#;

/// Run bash `code` in the session and assert it exits 0; its stdout.
fn run_ok(ws: &mut Ws, code: &str) -> String {
    let result = ws.run("bash", code);
    assert_eq!(
        result.done["exit_code"], 0,
        "{code}\nstdout: {}\nstderr: {}",
        result.stdout, result.stderr
    );
    result.stdout
}

/// Start `python3 -m http.server` on 8000 in /root/www (which holds `files`), and the apps.
fn start_http_server(ws: &mut Ws, prepare: &str) {
    run_ok(
        ws,
        &format!(
            "{WAIT_PORT}\nmkdir -p /root/www && cd /root/www && {prepare}\n\
             nohup python3 -m http.server 8000 --bind 127.0.0.1 >/tmp/http.log 2>&1 &\n\
             wait_port 8000"
        ),
    );
}

/// Start a Python app given as source, then wait for `port`.
fn start_app(ws: &mut Ws, name: &str, source: &str, port: u16) {
    run_ok(
        ws,
        &format!(
            "{WAIT_PORT}\ncat > /root/{name}.py <<'PYEOF'\n{source}\nPYEOF\n\
             nohup python3 /root/{name}.py >/tmp/{name}.log 2>&1 &\nwait_port {port}"
        ),
    );
}

/// Send a message with an id and return the reply (or the error status) answering it.
fn ask(ws: &mut Ws, id: &str, mut message: Value) -> Value {
    message["id"] = json!(id);
    ws.send(message);
    loop {
        let frame = ws.recv();
        if frame["id"] == id {
            return frame;
        }
    }
}

/// Expose `port` and return its URL.
fn expose(ws: &mut Ws, port: u16) -> String {
    let reply = ask(ws, "expose", json!({"action": "expose", "port": port}));
    assert_eq!(reply["event"], "reply", "{reply}");
    assert_eq!(reply["port"], port, "{reply}");
    reply["url"].as_str().expect("a url").to_string()
}

/// The path of a path-form URL (`http://host/ports/<cap>/` -> `/ports/<cap>/`).
fn path_of(url: &str) -> String {
    let rest = url.split_once("://").expect("a scheme").1;
    format!("/{}", rest.split_once('/').expect("a path").1)
}

/// One HTTP exchange on a fresh connection, read to the end (the path form closes after the
/// response): status, head and body.
/// A connection to the server, reads bounded by `IO_TIMEOUT`.
fn connect_to(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// The keep-alive app on port 8004, exposed, serving `a.txt` ("hello\n"); the link's path.
fn serve_hello_with_keep_alive(ws: &mut Ws) -> String {
    run_ok(ws, "mkdir -p /root/www && echo hello > /root/www/a.txt");
    start_app(ws, "keepalive", KEEPALIVE_APP, 8004);
    path_of(&expose(ws, 8004))
}

fn http(port: u16, request: &str) -> (u16, String, Vec<u8>) {
    let mut stream = connect_to(port);
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("read the response");
    split_response(&response)
}

fn split_response(response: &[u8]) -> (u16, String, Vec<u8>) {
    let end = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(response)));
    let head = String::from_utf8_lossy(&response[..end]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    (status, head, response[end + 4..].to_vec())
}

fn get(port: u16, path: &str) -> (u16, String, Vec<u8>) {
    http(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"),
    )
}

#[test]
fn a_web_server_without_network_serves_20_mb_byte_for_byte_and_50_requests_at_once() {
    let server = TestServer::start(&[]);
    let Created { mut ws, .. } = create(&server, json!({}));
    start_http_server(
        &mut ws,
        "head -c 20971520 /dev/urandom > big.bin && echo hello > small.txt",
    );
    let inside = run_ok(&mut ws, "sha256sum /root/www/big.bin | cut -d' ' -f1");
    let url = expose(&mut ws, 8000);
    assert!(
        url.starts_with(&format!("http://127.0.0.1:{}/ports/", server.port)),
        "{url}"
    );
    let prefix = path_of(&url);

    let (status, head, body) = get(server.port, &format!("{prefix}big.bin"));
    assert_eq!(status, 200, "{head}");
    assert_eq!(body.len(), 20 * 1024 * 1024, "{head}");
    let digest: String = Sha256::digest(&body)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    assert_eq!(digest, inside.trim());

    let port = server.port;
    let threads: Vec<_> = (0..50)
        .map(|_| {
            let path = format!("{prefix}small.txt");
            std::thread::spawn(move || get(port, &path))
        })
        .collect();
    for thread in threads {
        let (status, head, body) = thread.join().expect("a request thread");
        assert_eq!(status, 200, "{head}\n{}", String::from_utf8_lossy(&body));
        assert_eq!(body, b"hello\n");
    }
    // The application saw the prefix taken off and the forwarding headers.
    let log = run_ok(&mut ws, "cat /tmp/http.log");
    assert!(log.contains("\"GET /small.txt HTTP/1.1\" 200"), "{log}");
    // Listed in GET /sandboxes.
    let listing = server.get("/sandboxes").json();
    assert_eq!(
        listing["sandboxes"][0]["ports"][0]["port"], 8000,
        "{listing}"
    );
    // (Its URL is built from that request's Host, as every URL handed out is.)
    let listed = listing["sandboxes"][0]["ports"][0]["url"].as_str().unwrap();
    assert_eq!(path_of(listed), prefix);
    ws.kill_sandbox();
}

#[test]
fn server_sent_events_arrive_as_produced_and_a_websocket_is_relayed_both_ways() {
    let server = TestServer::start(&[]);
    let Created { mut ws, .. } = create(&server, json!({}));
    start_app(&mut ws, "sse", SSE_APP, 8001);
    start_app(&mut ws, "wsecho", WS_APP, 8002);
    let sse = path_of(&expose(&mut ws, 8001));
    let echo = path_of(&expose(&mut ws, 8002));

    let mut stream = connect_to(server.port);
    write!(
        stream,
        "GET {sse}events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&received).contains("data: first") {
        let n = stream.read(&mut buffer).expect("the first event");
        assert!(n > 0, "closed before the first event: {received:?}");
        received.extend_from_slice(&buffer[..n]);
    }
    assert!(!String::from_utf8_lossy(&received).contains("second"));
    // Only now does the application send the rest.
    run_ok(&mut ws, "touch /tmp/go");
    stream.read_to_end(&mut received).unwrap();
    let text = String::from_utf8_lossy(&received);
    assert!(text.contains("data: second"), "{text}");
    assert!(text.ends_with("0\r\n\r\n"), "{text}");

    let socket = connect_to(server.port);
    let url = format!("ws://127.0.0.1:{}{echo}socket", server.port);
    let (mut client, response) =
        tungstenite::client::client(url.as_str(), socket).expect("the upgrade through the port");
    assert_eq!(response.status().as_u16(), 101);
    for word in ["hello", "again"] {
        client
            .send(tungstenite::Message::Text(word.into()))
            .unwrap();
        let answer = client.read().expect("the echo");
        assert_eq!(answer.into_text().unwrap(), format!("echo: {word}"));
    }
    let _ = client.close(None);
    ws.kill_sandbox();
}

/// Reads one response with a `Content-Length` body from a kept-alive connection, byte by byte
/// (nothing of the next response is consumed): status, head and body.
fn read_response(stream: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("a response head");
        assert_eq!(n, 1, "closed in a head: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let (status, head, _) = split_response(&head);
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("a response body");
    (status, head, body)
}

#[test]
fn the_path_form_keeps_the_connection_for_every_request_and_a_later_upgrade() {
    let server = TestServer::start(&[]);
    let Created { mut ws, .. } = create(&server, json!({}));
    let prefix = serve_hello_with_keep_alive(&mut ws);

    let mut stream = connect_to(server.port);
    // Two requests one after the other on the same connection.
    for _ in 0..2 {
        write!(stream, "GET {prefix}a.txt HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        let (status, head, body) = read_response(&mut stream);
        assert_eq!(
            (status, body.as_slice()),
            (200, b"hello\n".as_slice()),
            "{head}"
        );
    }
    // Then pipelined: a body by length, a chunked body (sent in pieces), a GET.
    let chunked = format!(
        "POST {prefix}chunked?x=1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4;e=1\r\ndefg\r\n0\r\n\r\n"
    );
    let pipelined = format!(
        "POST {prefix}length HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello{chunked}GET {prefix}a.txt HTTP/1.1\r\nHost: h\r\n\r\n"
    );
    for piece in pipelined.as_bytes().chunks(40) {
        stream.write_all(piece).unwrap();
    }
    let prefix_seen = prefix.trim_end_matches('/');
    let (status, _, body) = read_response(&mut stream);
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("/length|{prefix_seen}|hello")
    );
    let (status, _, body) = read_response(&mut stream);
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("/chunked?x=1|{prefix_seen}|abcdefg")
    );
    let (status, _, body) = read_response(&mut stream);
    assert_eq!((status, body.as_slice()), (200, b"hello\n".as_slice()));

    // A WebSocket upgrade on the same, reused connection.
    let url = format!("ws://127.0.0.1:{}{prefix}ws", server.port);
    let (mut client, response) = tungstenite::client::client(url.as_str(), stream)
        .expect("the upgrade on a reused connection");
    assert_eq!(response.status().as_u16(), 101);
    for word in ["one", "two"] {
        client
            .send(tungstenite::Message::Text(word.into()))
            .unwrap();
        let answer = client.read().expect("the echo");
        assert_eq!(answer.into_text().unwrap(), format!("echo: {word}"));
    }
    let _ = client.close(None);

    // Bad framing after a good request: the good one is answered, then the error, then the
    // connection closes.
    let mut stream = connect_to(server.port);
    write!(
        stream,
        "GET {prefix}a.txt HTTP/1.1\r\nHost: h\r\n\r\nPOST {prefix}x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    )
    .unwrap();
    let (status, _, body) = read_response(&mut stream);
    assert_eq!((status, body.as_slice()), (200, b"hello\n".as_slice()));
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .expect("the error, then the end");
    let (status, _, body) = split_response(&rest);
    assert_eq!(status, 400);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("invalid chunk size line"), "{body}");

    // A request for something else (the API) on the connection: the answers before it come,
    // then the connection ends (the client sends it again on a new one).
    let mut stream = connect_to(server.port);
    write!(
        stream,
        "GET {prefix}a.txt HTTP/1.1\r\nHost: h\r\n\r\nGET /status HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    .unwrap();
    let (status, _, body) = read_response(&mut stream);
    assert_eq!((status, body.as_slice()), (200, b"hello\n".as_slice()));
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("the end");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    // The application saw every path without the prefix.
    let log = run_ok(&mut ws, "cat /tmp/keepalive.log");
    assert!(log.contains("\"GET /a.txt HTTP/1.1\" 200"), "{log}");
    assert!(!log.contains("/ports/"), "{log}");
    ws.kill_sandbox();
}

/// A server on port 8005 that serves one connection at a time and writes a line per
/// connection to /tmp/conns.log: how long after its accept the request came (-1: none came,
/// the connection ended; -2: none came, the connection was reset).
const ONE_AT_A_TIME_APP: &str = r#"
import socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8005))
s.listen(8)
while True:
    c, _ = s.accept()
    accepted = time.monotonic()
    data = b""
    reset = False
    try:
        while b"\r\n\r\n" not in data:
            part = c.recv(65536)
            if not part:
                break
            data += part
    except OSError:
        reset = True
    waited = time.monotonic() - accepted if data else -2 if reset else -1
    with open("/tmp/conns.log", "a") as log:
        log.write("%.3f\n" % waited)
    if data:
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    c.close()
"#;

/// What the app of `ONE_AT_A_TIME_APP` logged: per connection, seconds from its accept to its
/// request (negative: it ended without one).
fn connections_logged(ws: &mut Ws) -> Vec<f64> {
    run_ok(ws, "cat /tmp/conns.log 2>/dev/null; true")
        .lines()
        .map(|line| line.trim().parse().expect("a number"))
        .collect()
}

/// After a connection through a port ends, the agent opens the next one to the application
/// at once (docs/protocol.md "Ports"): the next request finds it accepted, even by a server
/// that serves one connection at a time; unused for 3 s, it is closed. Off, nothing is opened
/// ahead.
#[test]
fn the_next_connection_to_a_port_is_opened_ahead_unless_turned_off() {
    for preconnect in ["on", "off"] {
        let server = TestServer::start(&[("SANDBOX_PORT_PRECONNECT", preconnect)]);
        let Created { mut ws, .. } = create(&server, json!({}));
        start_app(&mut ws, "one", ONE_AT_A_TIME_APP, 8005);
        let prefix = path_of(&expose(&mut ws, 8005));
        let get_ok = || {
            let (status, head, body) = get(server.port, &format!("{prefix}x"));
            assert_eq!((status, body.as_slice()), (200, b"ok".as_slice()), "{head}");
        };
        get_ok();
        std::thread::sleep(Duration::from_millis(1500));
        get_ok();
        // The connection opened after the second request ends unused.
        std::thread::sleep(Duration::from_millis(4500));
        let logged = connections_logged(&mut ws);
        if preconnect == "on" {
            assert_eq!(logged.len(), 3, "{logged:?}");
            assert!(logged[0] >= 0.0 && logged[0] < 1.0, "{logged:?}");
            // Opened as the first ended, used by the second request 1.5 s later (0.5 s of
            // margin either way, for a loaded machine).
            assert!(logged[1] >= 1.0, "{logged:?}");
            // Closed unused: the application read an end of file, not a reset.
            assert_eq!(logged[2], -1.0, "{logged:?}");
        } else {
            assert_eq!(logged.len(), 2, "{logged:?}");
            assert!(
                logged.iter().all(|waited| (0.0..1.0).contains(waited)),
                "{logged:?}"
            );
        }
        // Whatever was opened ahead is gone: a request still gets its answer.
        get_ok();
        ws.kill_sandbox();
    }
}

/// A kept-alive connection through a port holds one of the sandbox's port connections: one
/// that nothing crossed for `SANDBOX_PORT_IDLE_TIMEOUT_SECS` is closed, and its slot is free.
#[test]
fn an_idle_port_connection_is_closed_and_gives_its_slot_back() {
    let server = TestServer::start(&[
        ("SANDBOX_PORT_IDLE_TIMEOUT_SECS", "2"),
        ("SANDBOX_MAX_PORT_CONNECTIONS", "1"),
    ]);
    let Created { mut ws, .. } = create(&server, json!({}));
    let prefix = serve_hello_with_keep_alive(&mut ws);
    let mut stream = connect_to(server.port);
    write!(stream, "GET {prefix}a.txt HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    let (status, _, body) = read_response(&mut stream);
    assert_eq!((status, body.as_slice()), (200, b"hello\n".as_slice()));
    // Kept, then silent: the server ends it (the end of file, with nothing more).
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("closed by the server");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    // The one port connection the sandbox may have is free again.
    let (status, _, body) = get(server.port, &format!("{prefix}a.txt"));
    assert_eq!((status, body.as_slice()), (200, b"hello\n".as_slice()));
    ws.kill_sandbox();
}

/// Port 8006, HTTP/1.1 with keep-alive: `/ok` answers, `/hang` never does.
const HANG_APP: &str = r#"
import http.server, time
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/hang":
            time.sleep(3600)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
http.server.ThreadingHTTPServer(("127.0.0.1", 8006), Handler).serve_forever()
"#;

/// A later request on a kept-alive connection is timed like the first: silent past
/// `SANDBOX_PORT_RESPONSE_TIMEOUT_SECS`, it gets its 504 on that connection.
#[test]
fn a_later_request_on_a_kept_alive_connection_gets_its_504() {
    let server = TestServer::start(&[("SANDBOX_PORT_RESPONSE_TIMEOUT_SECS", "2")]);
    let Created { mut ws, .. } = create(&server, json!({}));
    start_app(&mut ws, "hang", HANG_APP, 8006);
    let prefix = path_of(&expose(&mut ws, 8006));
    let mut stream = connect_to(server.port);
    for _ in 0..2 {
        write!(stream, "GET {prefix}ok HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        let (status, _, body) = read_response(&mut stream);
        assert_eq!((status, body.as_slice()), (200, b"ok".as_slice()));
    }
    let asked = std::time::Instant::now();
    write!(stream, "GET {prefix}hang HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    let (status, _, body) = read_response(&mut stream);
    let body = String::from_utf8_lossy(&body).to_string();
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("did not answer within 2 s"), "{body}");
    assert!(
        asked.elapsed() >= Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("closed after the 504");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    ws.kill_sandbox();
}

#[test]
fn every_way_a_port_is_unreachable_has_its_status() {
    let server = TestServer::start(&[("SANDBOX_PORT_RESPONSE_TIMEOUT_SECS", "2")]);
    let Created { mut ws, .. } = create(&server, json!({}));
    start_http_server(&mut ws, "echo hi > index.txt");
    start_app(&mut ws, "silent", SILENT_APP, 8003);
    let url = path_of(&expose(&mut ws, 8000));
    let (status, _, body) = get(server.port, &format!("{url}index.txt"));
    assert_eq!((status, body.as_slice()), (200, b"hi\n".as_slice()));

    // A wrong capability and one never issued: the same 404, without a hint.
    let wrong = format!("/ports/{}/index.txt", "0".repeat(32));
    let (status, _, unknown_body) = get(server.port, &wrong);
    assert_eq!(status, 404);
    let mut tampered = url.clone();
    tampered.replace_range(7..8, if &url[7..8] == "a" { "b" } else { "a" });
    let (status, _, tampered_body) = get(server.port, &format!("{tampered}index.txt"));
    assert_eq!(status, 404);
    assert_eq!(unknown_body, tampered_body);

    // A head past SANDBOX_MAX_HEADER_BYTES is refused as for the API.
    let (status, _, _) = http(
        server.port,
        &format!(
            "GET {url}index.txt HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
            "a".repeat(20 * 1024)
        ),
    );
    assert_eq!(status, 431);

    // The bare prefix redirects to the prefix with its slash.
    let bare = url.trim_end_matches('/');
    let (status, head, _) = get(server.port, bare);
    assert_eq!(status, 308, "{head}");
    assert!(head.contains(&format!("Location: {url}")), "{head}");

    // Nobody listening: 502 saying so.
    let nobody = path_of(&expose(&mut ws, 9999));
    let (status, _, body) = get(server.port, &nobody);
    assert_eq!(status, 502);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("port 9999"), "{body}");

    // Silent past SANDBOX_PORT_RESPONSE_TIMEOUT_SECS: 504.
    let silent = path_of(&expose(&mut ws, 8003));
    let (status, _, body) = get(server.port, &silent);
    assert_eq!(status, 504, "{}", String::from_utf8_lossy(&body));
    // Unexposing closes the connections open through the port (here one waiting for its
    // answer, which would otherwise get the 504 above after 2 s).
    let mut waiting = connect_to(server.port);
    write!(waiting, "GET {silent} HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    ws.run("bash", "sleep 0.3");
    let reply = ask(
        &mut ws,
        "un-silent",
        json!({"action": "unexpose", "port": 8003}),
    );
    assert_eq!(reply["unexposed"], true, "{reply}");
    let mut rest = Vec::new();
    waiting
        .read_to_end(&mut rest)
        .expect("the connection closes");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));

    // Revoked: the same 404 as an unknown one; exposing again gives a new link.
    let reply = ask(&mut ws, "un", json!({"action": "unexpose", "port": 8000}));
    assert_eq!(reply["unexposed"], true, "{reply}");
    let (status, _, body) = get(server.port, &format!("{url}index.txt"));
    assert_eq!((status, &body), (404, &unknown_body));
    let again = path_of(&expose(&mut ws, 8000));
    assert_ne!(again, url);

    // Bad requests name the field.
    let error = ask(&mut ws, "bad", json!({"action": "expose", "port": 70000}));
    assert_eq!(error["status"], "SANDBOX_REQUEST_ERROR", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("70000"),
        "{error}"
    );
    let listed = ask(&mut ws, "list", json!({"action": "list_ports"}));
    let ports: Vec<u64> = listed["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [8000, 9999], "{listed}");

    // The sandbox killed: its links are gone, with the same 404.
    ws.kill_sandbox();
    let (status, _, body) = get(server.port, &format!("{again}index.txt"));
    assert_eq!((status, &body), (404, &unknown_body));
}

#[test]
fn the_host_form_needs_the_domain_and_an_api_key_only_when_asked() {
    let server = TestServer::start(&[
        ("SANDBOX_PORTS_DOMAIN", "ports.test"),
        ("SANDBOX_API_KEYS", "the-key"),
    ]);
    let mut ws = ws::try_connect_with_headers(
        server.port,
        "/create",
        &[("Authorization", "Bearer the-key")],
    )
    .unwrap();
    ws.send(json!({"expose_ports": [8000]}));
    ws.expect_status("SANDBOX_CREATING");
    ws.recv();
    ws.expect_status("SANDBOX_RUNNING");
    // HTTP/1.1 with keep-alive (http.server speaks HTTP/1.0 unless told otherwise).
    run_ok(
        &mut ws,
        &format!(
            "{WAIT_PORT}\nmkdir -p /root/www && cd /root/www && echo hi > index.txt\n\
             nohup python3 -c \"import http.server as h; h.SimpleHTTPRequestHandler.protocol_version = 'HTTP/1.1'; h.ThreadingHTTPServer(('127.0.0.1', 8000), h.SimpleHTTPRequestHandler).serve_forever()\" >/tmp/http.log 2>&1 &\n\
             wait_port 8000"
        ),
    );
    let listed = ask(&mut ws, "list", json!({"action": "list_ports"}));
    let url = listed["ports"][0]["url"].as_str().unwrap().to_string();
    let host = url
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix('/'))
        .unwrap_or_else(|| panic!("{url}"))
        .to_string();
    assert!(
        host.starts_with("8000-") && host.ends_with(".ports.test"),
        "{url}"
    );
    // No key needed for the link itself.
    let (status, _, body) = http(
        server.port,
        &format!("GET /index.txt HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!((status, body.as_slice()), (200, b"hi\n".as_slice()));
    // The host form stays a pipe: two requests on one connection (keep-alive).
    let mut stream = connect_to(server.port);
    for _ in 0..2 {
        write!(stream, "GET /index.txt HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
        let mut response = Vec::new();
        let mut byte = [0u8; 1];
        // The head, then the 3 bytes its Content-Length announces.
        while !response.ends_with(b"\r\n\r\n") {
            stream
                .read_exact(&mut byte)
                .expect("a response on the same connection");
            response.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&response).to_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("content-length: 3"), "{head}");
        let mut body = [0u8; 3];
        stream.read_exact(&mut body).unwrap();
        assert_eq!(&body, b"hi\n");
    }
    // Another port under the same capability is not the link.
    let other = host.replacen("8000-", "8001-", 1);
    let (status, _, _) = http(
        server.port,
        &format!("GET /index.txt HTTP/1.1\r\nHost: {other}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status, 404);
    // The API itself still needs the key.
    let (status, _, _) = get(server.port, "/sandboxes");
    assert_eq!(status, 401);
    ws.kill_sandbox();
}

#[test]
fn with_require_key_a_link_needs_the_key_too_and_the_key_never_reaches_the_app() {
    let server = TestServer::start(&[
        ("SANDBOX_API_KEYS", "the-key"),
        ("SANDBOX_PORTS_REQUIRE_KEY", "1"),
    ]);
    let mut ws = ws::try_connect_with_headers(
        server.port,
        "/create",
        &[("Authorization", "Bearer the-key")],
    )
    .unwrap();
    ws.send(json!({}));
    ws.expect_status("SANDBOX_CREATING");
    ws.recv();
    ws.expect_status("SANDBOX_RUNNING");
    start_app(&mut ws, "headers", HEADERS_APP, 8004);
    let url = path_of(&expose(&mut ws, 8004));
    let (status, _, _) = get(server.port, &url);
    assert_eq!(status, 401);
    let (status, _, body) = http(
        server.port,
        &format!("GET {url}x HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer the-key\r\n\r\n"),
    );
    let body = String::from_utf8_lossy(&body).to_lowercase();
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("get /x http/1.1"), "{body}");
    assert!(!body.contains("the-key"), "{body}");
    assert!(
        body.contains(&format!(
            "x-forwarded-prefix: {}",
            url.trim_end_matches('/')
        )),
        "{body}"
    );
    ws.kill_sandbox();
}

/// Answers every request with its own head as the body (port 8004).
const HEADERS_APP: &str = r#"
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8004))
s.listen(8)
while True:
    c, _ = s.accept()
    data = b""
    while b"\r\n\r\n" not in data:
        part = c.recv(4096)
        if not part:
            break
        data += part
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(data), data))
    c.close()
"#;

#[test]
fn nothing_behind_a_port_reaches_the_host_or_the_server() {
    let server = TestServer::start(&[]);
    let Created { mut ws, .. } = create(&server, json!({}));
    start_http_server(&mut ws, "echo hi > index.txt");
    let url = path_of(&expose(&mut ws, 8000));
    // A path under the prefix is the application's, never the server's API.
    let (status, _, body) = get(server.port, &format!("{url}status"));
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    assert!(!String::from_utf8_lossy(&body).contains("\"ok\""));
    let (status, _, _) = get(server.port, &format!("{url}../../status"));
    assert_eq!(status, 404);
    // From inside, the server's port (on the host's loopback) is not reachable.
    let code = format!(
        "(exec 3<>/dev/tcp/127.0.0.1/{}) 2>/dev/null && echo reached || echo unreachable",
        server.port
    );
    let result = ws.run("bash", &code);
    assert_eq!(result.stdout.trim(), "unreachable");
    ws.kill_sandbox();
}

/// Two instances share a store: a link that lands on the instance that does not hold its
/// sandbox says where the sandbox is (docs/protocol.md, "Which instance answers"), and works
/// there once the sandbox is attached (restored) through it.
#[test]
fn a_link_on_another_instance_says_where_its_sandbox_is() {
    let dirs = store::SharedDirs::new();
    let env = dirs.env();
    let env: Vec<(&str, &str)> = env
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    let (a, b) = (TestServer::start(&env), TestServer::start(&env));
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&a, json!({"enable_checkpoint": true}));
    start_http_server(&mut ws, "echo here > index.txt");
    let url = path_of(&expose(&mut ws, 8000));
    let (status, _, body) = get(a.port, &format!("{url}index.txt"));
    assert_eq!((status, body.as_slice()), (200, b"here\n".as_slice()));

    // The link's record reaches the store on a worker thread.
    let mut answer = (0, String::new(), Vec::new());
    for _ in 0..100 {
        answer = get(b.port, &format!("{url}index.txt"));
        if answer.0 == 503 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, head, body) = answer;
    let body = String::from_utf8_lossy(&body).to_string();
    assert_eq!(status, 503, "{head}\n{body}");
    assert!(body.contains("runs on another instance"), "{body}");
    assert_eq!(dirs.port_links().len(), 1, "{:?}", dirs.port_links());
    // A link nobody issued is unknown, on every instance.
    let (status, _, _) = get(b.port, &format!("/ports/{}/", "0".repeat(32)));
    assert_eq!(status, 404);

    ws.checkpoint_to_the_end();
    let (status, _, body) = get(b.port, &format!("{url}index.txt"));
    let body = String::from_utf8_lossy(&body).to_string();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("checkpointed"), "{body}");

    // Attached through B: restored there, and the same link works on B.
    let mut ws = ws::connect(b.port, &ws::attach_path(&sandbox_id, &token));
    ws.expect_status("SANDBOX_RESTORING");
    ws.expect_status("SANDBOX_RUNNING");
    let (status, _, body) = get(b.port, &format!("{url}index.txt"));
    assert_eq!((status, body.as_slice()), (200, b"here\n".as_slice()));
    // A, which held it before, now says where it is too.
    let (status, _, body) = get(a.port, &format!("{url}index.txt"));
    let body = String::from_utf8_lossy(&body).to_string();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("runs on another instance"), "{body}");

    // Unexposed: its record goes (one per exposed port).
    let links_after = |count: usize| {
        (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            dirs.port_links().len() == count
        })
    };
    expose(&mut ws, 8009);
    assert!(links_after(2), "{:?}", dirs.port_links());
    let reply = ask(&mut ws, "u", json!({"action": "unexpose", "port": 8009}));
    assert_eq!(reply["unexposed"], true, "{reply}");
    assert!(links_after(1), "{:?}", dirs.port_links());

    // Deleted: its links lead nowhere, on either instance, and the store forgets them.
    ws.kill_sandbox();
    assert!(links_after(0), "left in the store: {:?}", dirs.port_links());
    for server in [&b, &a] {
        let (status, _, _) = get(server.port, &format!("{url}index.txt"));
        assert_eq!(status, 404);
    }
    drop((a, b));
}

#[test]
fn an_exposed_port_survives_a_checkpoint_and_answers_503_meanwhile() {
    let dirs = store::SharedDirs::new();
    let env = dirs.env();
    let env: Vec<(&str, &str)> = env
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    let server = TestServer::start(&env);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&server, json!({"enable_checkpoint": true}));
    start_http_server(&mut ws, "echo kept > index.txt");
    start_app(&mut ws, "sse", SSE_APP, 8001);
    let url = path_of(&expose(&mut ws, 8000));
    let (status, _, body) = get(server.port, &format!("{url}index.txt"));
    assert_eq!((status, body.as_slice()), (200, b"kept\n".as_slice()));
    // A stream open through a port does not stop the checkpoint: it is closed first.
    let events = path_of(&expose(&mut ws, 8001));
    let mut stream = connect_to(server.port);
    write!(stream, "GET {events} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&received).contains("data: first") {
        let n = stream.read(&mut buffer).expect("the first event");
        assert!(n > 0, "closed before the first event");
        received.extend_from_slice(&buffer[..n]);
    }

    ws.checkpoint_to_the_end();
    stream.read_to_end(&mut received).expect("the stream ends");
    assert!(!String::from_utf8_lossy(&received).contains("second"));
    assert_eq!(
        dirs.manifest(&sandbox_id)["settings"]["ports"][0]["port"],
        8000
    );

    let (status, head, body) = get(server.port, &format!("{url}index.txt"));
    assert_eq!(status, 503, "{head}");
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("checkpointed"), "{body}");

    // Restored: the same link works again, the application kept running in the image.
    let mut ws = ws::connect(server.port, &ws::attach_path(&sandbox_id, &token));
    ws.expect_status("SANDBOX_RESTORING");
    ws.expect_status("SANDBOX_RUNNING");
    let (status, _, body) = get(server.port, &format!("{url}index.txt"));
    assert_eq!((status, body.as_slice()), (200, b"kept\n".as_slice()));
    ws.kill_sandbox();
    drop(server);
}
