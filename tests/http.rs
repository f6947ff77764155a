//! The HTTP side of `POST /execute` against the real server: request validation and error
//! statuses, request framing (chunked, keep-alive, pipelining, `Expect: 100-continue`), the
//! sandbox limit (503), slow clients (408) and back-pressure on a client that does not read.
//!
//! Each test starts its own server and stops it when it ends, also on failure. Run with two
//! threads on a 2-core machine:
//!
//!     cargo test --test http -- --test-threads=2

mod common;

use std::time::{Duration, Instant};

use common::{execute_request, request, runsc_sandboxes, wait_until, TestServer};

fn assert_json_error(response: &common::Response, status: u16) -> String {
    assert_eq!(response.status, status, "{response:?} {}", response.text());
    assert!(
        response
            .header("content-type")
            .unwrap_or_default()
            .starts_with("application/json"),
        "errors are JSON: {response:?}"
    );
    response.error_message()
}

#[test]
fn bad_or_missing_language_is_400_naming_the_languages() {
    let server = TestServer::start(&[("SANDBOX_POOL_SIZE", "0")]);
    for target in [
        "/execute?language=ruby",
        "/execute",
        "/execute?language=",
        "/execute?timeout=5",
        "/execute?language=PYTHON",
    ] {
        let response = request(
            server.port,
            format!("POST {target} HTTP/1.1\r\nHost: t\r\nContent-Length: 7\r\nConnection: close\r\n\r\necho hi").as_bytes(),
        );
        let message = assert_json_error(&response, 400);
        assert!(
            message.contains("python") && message.contains("bash"),
            "{target}: {message}"
        );
    }
    // Code that is not UTF-8 is refused too.
    let mut bytes = b"POST /execute?language=bash HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nConnection: close\r\n\r\n".to_vec();
    bytes.extend_from_slice(&[b'e', 0xff, 0xfe, b'\n']);
    assert_json_error(&request(server.port, &bytes), 400);
}

#[test]
fn code_over_the_size_limit_is_413() {
    let server = TestServer::start(&[("SANDBOX_MAX_CODE_BYTES", "100")]);

    // Exactly at the limit is fine.
    let code = format!("print('at the limit')\n#{}", "x".repeat(100 - 23));
    assert_eq!(code.len(), 100);
    let result = server.execute_json("python", &code, None);
    assert_eq!(result["stdout"], "at the limit\n", "{result}");

    // One byte more, declared with Content-Length.
    let code = "#".repeat(101);
    let response = request(server.port, &execute_request("python", &code, None, true));
    let message = assert_json_error(&response, 413);
    assert!(message.contains("100"), "{message}");

    // Chunked, where the size is only known as the chunks arrive.
    let mut bytes = b"POST /execute?language=bash HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..3 {
        bytes.extend_from_slice(format!("28\r\n{}\r\n", "#".repeat(40)).as_bytes());
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    assert_json_error(&request(server.port, &bytes), 413);

    server.assert_healthy();
}

/// A refusal that comes before the client sent its whole body (a 20 MB upload over the code
/// limit, sent without `Expect: 100-continue`, as `curl --data-binary -H 'Expect:'` does): the
/// server lingers, reading and dropping the rest, so that the client gets the 413 instead of a
/// connection reset.
#[test]
fn a_refused_large_body_still_gets_its_response() {
    use std::io::{Read, Write};
    let server = TestServer::start(&[("SANDBOX_POOL_SIZE", "0")]);
    const BODY: usize = 20 * 1024 * 1024;
    for attempt in 0..5 {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut writer = stream.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            let head = format!(
                "POST /execute?language=bash HTTP/1.1\r\nHost: t\r\nContent-Length: {BODY}\r\n\r\n"
            );
            let _ = writer.write_all(head.as_bytes());
            let chunk = vec![b'#'; 64 * 1024];
            for _ in 0..BODY / chunk.len() {
                // Once the server has answered it may stop reading: a failed write is fine.
                if writer.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        let mut response = Vec::new();
        let read = stream.read_to_end(&mut response);
        let _ = sender.join();
        let text = String::from_utf8_lossy(&response);
        assert!(
            read.is_ok() && text.starts_with("HTTP/1.1 413"),
            "attempt {attempt}: {read:?}, got {:?}",
            text.chars().take(80).collect::<String>()
        );
    }
    server.assert_healthy();
}

#[test]
fn unknown_path_wrong_method_and_missing_length() {
    let server = TestServer::start(&[("SANDBOX_POOL_SIZE", "0")]);
    let cases: &[(&str, u16)] = &[
        ("GET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", 404),
        ("POST /nope?language=bash HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 404),
        ("GET /execute?language=bash HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", 405),
        ("PUT /execute?language=bash HTTP/1.1\r\nHost: t\r\nContent-Length: 7\r\nConnection: close\r\n\r\necho hi", 405),
        ("POST /status HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 405),
        ("POST /execute?language=bash HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", 411),
    ];
    for (raw, status) in cases {
        let response = request(server.port, raw.as_bytes());
        let message = assert_json_error(&response, *status);
        assert!(!message.is_empty(), "{raw:?}");
    }
    let status = server.get("/status");
    assert_eq!(status.status, 200);
    assert_eq!(status.json()["status"], "ok");
}

#[test]
fn malformed_requests_get_400_and_the_server_keeps_serving() {
    let server = TestServer::start(&[("SANDBOX_MAX_HEADER_BYTES", "2048")]);
    let garbage: &[&[u8]] = &[
        b"GARBAGE\r\n\r\n",
        b"\x00\x01\x02\x03 nonsense \xff\xfe\r\n\r\n",
        b"POST /execute?language=bash HTTP/1.1\r\nContent-Length: twelve\r\n\r\n",
        b"POST /execute?language=bash HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /status HTTP/1.1\r\nBad Header Without Colon\r\n\r\n",
        // Both framings at once (request smuggling) and conflicting lengths.
        b"POST /execute?language=bash HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /execute?language=bash HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    ];
    for raw in garbage {
        let response = request(server.port, raw);
        assert_json_error(&response, 400);
        assert_eq!(server.get("/status").status, 200, "after {raw:?}");
    }

    // Headers over SANDBOX_MAX_HEADER_BYTES: 431 (sent in one write, so the server reads it all
    // before it answers and closes).
    let raw = format!(
        "GET /status HTTP/1.1\r\nHost: t\r\nX-Filler: {}\r\n\r\n",
        "f".repeat(4000)
    );
    assert_json_error(&request(server.port, raw.as_bytes()), 431);
    server.assert_healthy();
}

#[test]
fn chunked_request_body() {
    let server = TestServer::start(&[]);
    let pieces = ["print('chun", "ked')\nprint(", "1 + 2)\n"];
    let mut bytes = b"POST /execute?language=python HTTP/1.1\r\nHost: t\r\nAccept: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for (index, piece) in pieces.iter().enumerate() {
        // A chunk extension on one of them, which must be ignored.
        let extension = if index == 1 { ";name=value" } else { "" };
        bytes.extend_from_slice(format!("{:x}{extension}\r\n{piece}\r\n", piece.len()).as_bytes());
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    let response = request(server.port, &bytes);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.json()["stdout"], "chunked\n3\n");

    // The same, trickled byte by byte.
    let mut client = server.connect();
    for byte in &bytes {
        client.send(std::slice::from_ref(byte));
    }
    let response = client.read_response().unwrap();
    assert_eq!(response.json()["stdout"], "chunked\n3\n");
}

#[test]
fn keep_alive_and_pipelining() {
    let server = TestServer::start(&[]);
    let keep_alive = |code: &str, json: bool| {
        let accept = if json {
            "application/json"
        } else {
            "text/plain"
        };
        format!(
            "POST /execute?language=bash HTTP/1.1\r\nHost: t\r\nAccept: {accept}\r\nContent-Length: {}\r\n\r\n{code}",
            code.len()
        )
        .into_bytes()
    };

    let mut client = server.connect();
    client.send(&keep_alive("echo first", true));
    let first = client.read_response().unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.json()["stdout"], "first\n");
    // A streamed (chunked) response, then another request on the same connection.
    client.send(&keep_alive("echo second", false));
    let second = client.read_response().unwrap();
    assert_eq!((second.status, second.text().as_str()), (200, "second\n"));
    client.send(b"GET /status HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.read_response().unwrap().status, 200);
    assert_ne!(first.header("x-sandbox-id"), second.header("x-sandbox-id"));

    // Two requests in one write: answered in order.
    let mut both = keep_alive("echo one", true);
    both.extend_from_slice(&keep_alive("echo two", true));
    client.send(&both);
    for expected in ["one\n", "two\n"] {
        let response = client.read_response().unwrap();
        assert_eq!(response.status, 200, "{response:?} {}", response.text());
        let result = response.json();
        assert_eq!(result["stdout"], expected, "{result}");
    }

    // `Connection: close` is honoured.
    client.send(b"GET /status HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(client.read_response().unwrap().status, 200);
    assert!(
        client.wait_closed(Duration::from_secs(10)),
        "the server kept a Connection: close connection open"
    );
}

#[test]
fn expect_100_continue() {
    let server = TestServer::start(&[]);
    let code = "print('after continue')";
    let mut client = server.connect();
    client.send(
        format!(
            "POST /execute?language=python HTTP/1.1\r\nHost: t\r\nAccept: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            code.len()
        )
        .as_bytes(),
    );
    let interim = client.read_head().expect("an interim response");
    assert_eq!(interim.status, 100, "{interim:?}");
    client.send(code.as_bytes());
    let response = client.read_response().unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["stdout"], "after continue\n");

    // A body that is too large is refused at once, without a 100.
    let server_small =
        TestServer::start(&[("SANDBOX_MAX_CODE_BYTES", "10"), ("SANDBOX_POOL_SIZE", "0")]);
    let mut client = server_small.connect();
    client.send(b"POST /execute?language=python HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n");
    let response = client.read_response().unwrap();
    assert_eq!(response.status, 413);
}

#[test]
fn at_the_sandbox_limit_503_with_retry_after() {
    let server = TestServer::start(&[("SANDBOX_MAX_SANDBOXES", "1"), ("SANDBOX_POOL_SIZE", "0")]);
    let mut holder = server.connect();
    holder.send(&execute_request(
        "bash",
        "echo holding; sleep 60",
        Some(60.0),
        false,
    ));
    let head = holder.read_head().expect("the long execution starts");
    assert_eq!(head.status, 200);

    for _ in 0..3 {
        let response = server.post_execute("bash", "echo never", None, true);
        let message = assert_json_error(&response, 503);
        assert!(message.contains('1'), "{message}");
        let retry_after = response.header("retry-after").expect("Retry-After on 503");
        assert!(
            retry_after.parse::<u64>().is_ok(),
            "Retry-After {retry_after:?}"
        );
    }
    // Other endpoints still work.
    assert_eq!(server.get("/status").status, 200);

    // Once the holder goes, its sandbox is deleted and the slot is free again.
    drop(holder);
    server.assert_healthy();
}

#[test]
fn slow_client_gets_408_while_others_are_served() {
    let server = TestServer::start(&[("SANDBOX_REQUEST_TIMEOUT_SECS", "2")]);
    let mut slow = server.connect();
    slow.send(
        b"POST /execute?language=python HTTP/1.1\r\nHost: t\r\nContent-Length: 50\r\n\r\nprint(",
    );
    let stalled_at = Instant::now();

    // Served meanwhile.
    assert_eq!(server.get("/status").status, 200);
    let result = server.execute_json("python", "print('not blocked')", Some(30.0));
    assert_eq!(result["stdout"], "not blocked\n");

    // A head that never completes times out the same way.
    let mut slow_head = server.connect();
    slow_head.send(b"GET /status HTTP/1.1\r\nHost: t\r\n");

    slow.set_read_timeout(Duration::from_secs(30));
    let response = slow.read_response().expect("a 408 for the stalled request");
    assert_json_error(&response, 408);
    assert!(
        stalled_at.elapsed() >= Duration::from_millis(1500),
        "408 came too early: {:?}",
        stalled_at.elapsed()
    );
    assert!(
        slow.wait_closed(Duration::from_secs(10)),
        "the connection stays open after 408"
    );
    slow_head.set_read_timeout(Duration::from_secs(30));
    assert_json_error(
        &slow_head
            .read_response()
            .expect("a 408 for the stalled head"),
        408,
    );

    // An idle connection that never started a request is not a 408.
    server.assert_healthy();
}

#[test]
fn a_client_that_does_not_read_pauses_the_sandbox() {
    const TOTAL: u64 = 128 * 1024 * 1024;
    const RSS_LIMIT_KIB: u64 = 100 * 1024;
    let server = TestServer::start(&[("SANDBOX_MAX_OUTPUT_BYTES", "200000000")]);
    let code = "import sys\nblock = b'x' * 65536\nfor _ in range(2048):\n    sys.stdout.buffer.write(block)\nsys.stdout.buffer.flush()\nprint('done', file=sys.stderr)";
    assert_eq!(2048 * 65536, TOTAL);

    let mut client = server.connect();
    client.send(&execute_request("python", code, Some(600.0), false));
    // Read nothing for a while; the server's memory must stay bounded meanwhile.
    let mut peak = 0;
    let stall_until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < stall_until {
        peak = peak.max(server.rss_kib().expect("the server's VmRSS"));
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("peak RSS while stalled: {peak} KiB");
    assert!(
        peak < RSS_LIMIT_KIB,
        "server RSS reached {peak} KiB while the client was not reading"
    );
    // The execution is paused, not finished: nothing was dropped to make room.
    let metrics = server.get("/metrics").text();
    assert!(
        !metrics.contains("sandbox_executions_total{"),
        "the execution ended while its client was not reading:\n{metrics}"
    );

    // Now read everything: every byte arrives.
    let head = client.read_head().unwrap();
    assert_eq!(head.status, 200);
    let mut received = 0u64;
    let mut wrong = 0u64;
    let mut tail = Vec::new();
    client
        .read_body_with(&head, |piece| {
            received += piece.len() as u64;
            wrong += piece.iter().filter(|byte| **byte != b'x').count() as u64;
            if tail.len() < 64 {
                tail.extend(piece.iter().filter(|byte| **byte != b'x').take(64));
            }
            peak = peak.max(common::vm_rss_kib(server.pid).unwrap_or(0));
        })
        .unwrap();
    // stderr's "done\n" is part of the streamed body.
    assert_eq!(String::from_utf8_lossy(&tail), "done\n");
    assert_eq!(wrong, 5);
    assert_eq!(received, TOTAL + 5, "bytes lost or added");
    eprintln!("peak RSS overall: {peak} KiB");
    assert!(
        peak < RSS_LIMIT_KIB,
        "server RSS reached {peak} KiB while streaming"
    );
    assert!(
        wait_until(Duration::from_secs(10), || server
            .get("/metrics")
            .text()
            .contains("sandbox_executions_total{reason=\"exited\"} 1")),
        "the execution did not end normally"
    );
}

#[test]
fn head_status_has_no_body() {
    let server = TestServer::start(&[("SANDBOX_POOL_SIZE", "0")]);
    let mut client = server.connect();
    // HEAD, then GET on the same connection: the HEAD response must not carry content
    // (RFC 9110 section 9.3.2), or the next response is read from the wrong place.
    client.send(b"HEAD /status HTTP/1.1\r\nHost: t\r\n\r\nGET /status HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let head = client.read_head().expect("the HEAD response");
    assert_eq!(head.status, 200);
    let next = client
        .read_response()
        .expect("the GET response right after the HEAD response's headers");
    assert_eq!(next.status, 200);
    assert_eq!(next.json()["status"], "ok");
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let server = TestServer::start(&[
        ("SANDBOX_KEEPALIVE_TIMEOUT_SECS", "1"),
        ("SANDBOX_POOL_SIZE", "0"),
    ]);
    let mut client = server.connect();
    client.send(b"GET /status HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.read_response().unwrap().status, 200);
    assert!(
        client.wait_closed(Duration::from_secs(15)),
        "an idle keep-alive connection was kept open"
    );
    // A connection that never sends anything goes the same way.
    let mut silent = server.connect();
    assert!(
        silent.wait_closed(Duration::from_secs(15)),
        "a silent connection was kept open"
    );
    assert_eq!(server.get("/status").status, 200);
}

#[test]
fn a_client_that_stops_reading_is_dropped_and_its_sandbox_deleted() {
    let server = TestServer::start(&[
        ("SANDBOX_WRITE_TIMEOUT_SECS", "2"),
        ("SANDBOX_MAX_OUTPUT_BYTES", "1000000000"),
    ]);
    let root = server.runsc_root();
    let mut client = server.connect();
    client.send(&execute_request("bash", "yes", Some(600.0), false));
    let head = client.read_head().expect("headers");
    assert_eq!(head.status, 200);
    let id = head.header("x-sandbox-id").unwrap().to_string();
    // Read nothing more: after the write timeout the server gives up on us and the sandbox goes.
    let deleted = wait_until(Duration::from_secs(30), || {
        !runsc_sandboxes(&root).contains(&id)
    });
    assert!(
        deleted,
        "the sandbox of a client that stopped reading is still there"
    );
    // The stream ends without the final chunk: reading it fails or stops short.
    client.set_read_timeout(Duration::from_secs(30));
    assert!(
        client.read_body_with(&head, |_| {}).is_err(),
        "a dropped response must not look complete"
    );
    server.assert_healthy();
}

#[test]
fn connections_over_the_limit_get_503() {
    let server = TestServer::start(&[("SANDBOX_MAX_CONNECTIONS", "2"), ("SANDBOX_POOL_SIZE", "0")]);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut client = server.connect();
        client.send(b"GET /status HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(client.read_response().unwrap().status, 200);
        held.push(client);
    }
    let mut extra = server.connect();
    let _ = extra.try_send(b"GET /status HTTP/1.1\r\nHost: t\r\n\r\n");
    let response = extra
        .read_response()
        .expect("an answer over the connection limit");
    assert_eq!(response.status, 503, "{response:?}");
    drop(held);
    assert!(
        wait_until(Duration::from_secs(15), || common::try_request(
            server.port,
            b"GET /status HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5)
        )
        .is_ok_and(|response| response.status == 200)),
        "the server did not accept again after connections closed"
    );
}
