//! The files API (issue 14, docs/protocol.md "Files") against the real server, runsc and
//! sandbox image: round trips of random binary data, listings, every error code, path
//! traversal, the agent's own descriptors, concurrent transfers, interrupted transfers.
//!
//! Each test starts its own server, whose `Drop` stops it and removes every sandbox it left,
//! also on failure. Run with:
//!
//!     cargo test --test files -- --test-threads=2

mod common;
mod store;
mod ws;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use ws::{attach, base64_decode, base64_encode, create, Created, Frame, Ws};

const CHUNK: usize = 1024 * 1024;

/// Deterministic pseudo-random bytes (xorshift), so that a failure can be reproduced.
fn random_bytes(length: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(length + 8);
    while bytes.len() < length {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(length);
    bytes
}

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// What answered one request: its data, acknowledgements, reply or error.
#[derive(Debug, Default)]
struct Answer {
    data: Vec<u8>,
    acks: Vec<Value>,
    reply: Option<Value>,
    /// The error status frame and the error event.
    error: Option<(Value, Value)>,
    status: Option<Value>,
}

impl Answer {
    fn is_done(&self) -> bool {
        self.reply.is_some() || self.error.is_some()
    }

    fn code(&self) -> Option<&str> {
        self.error
            .as_ref()
            .and_then(|(_, error)| error["code"].as_str())
    }
}

/// Reads frames until every id in `ids` has its reply or error; frames of other ids are filed
/// too. Data frames are decoded as they come (not kept as text).
fn until_done(ws: &mut Ws, answers: &mut BTreeMap<String, Answer>, ids: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !ids
        .iter()
        .all(|id| answers.get(*id).is_some_and(Answer::is_done))
    {
        assert!(Instant::now() < deadline, "no answer in time: {answers:#?}");
        let frame = match ws.next_within(Duration::from_secs(120)) {
            Frame::Json(frame) => frame,
            other => panic!("expected a frame, got {other:?}"),
        };
        // The log would keep every chunk of a 100 MB transfer.
        ws.log.clear();
        let id = frame["id"].as_str().unwrap_or("").to_string();
        let answer = answers.entry(id).or_default();
        match frame["event"].as_str() {
            Some("file_data") => answer
                .data
                .extend(base64_decode(frame["data"].as_str().unwrap_or(""))),
            Some("file_ack") => answer.acks.push(frame),
            Some("reply") => answer.reply = Some(frame),
            Some("status_update") if frame["status"] == "SANDBOX_FILE_ERROR" => {
                answer.status = Some(frame)
            }
            Some("error") => {
                let status = answer.status.take().unwrap_or(Value::Null);
                answer.error = Some((status, frame));
            }
            _ => answer.status = Some(frame),
        }
    }
}

fn request(ws: &mut Ws, id: &str, action: &str, mut fields: Value) -> Answer {
    fields["action"] = json!(action);
    fields["id"] = json!(id);
    ws.send(fields);
    let mut answers = BTreeMap::new();
    until_done(ws, &mut answers, &[id]);
    answers.remove(id).unwrap_or_default()
}

fn reply(ws: &mut Ws, id: &str, action: &str, fields: Value) -> Value {
    let answer = request(ws, id, action, fields);
    answer
        .reply
        .unwrap_or_else(|| panic!("{action} {id} failed: {:?}", answer.error))
}

/// Writes `data` in chunks under the window the first ack gives; the final reply.
fn write_file(ws: &mut Ws, id: &str, path: &str, data: &[u8], extra: Value) -> Answer {
    let mut answers = BTreeMap::new();
    let mut sent = 0usize;
    let mut window = None::<u64>;
    let mut written = 0u64;
    let mut first = true;
    loop {
        let end = (sent + CHUNK).min(data.len());
        let chunk = &data[sent..end];
        let fits = window.is_none_or(|window| (end as u64) - written <= window);
        if first || fits {
            let mut message = json!({
                "action": "write_file", "id": id,
                "data": base64_encode(chunk), "more": end < data.len(),
            });
            if first {
                message["path"] = json!(path);
                if let Value::Object(extra) = &extra {
                    for (key, value) in extra {
                        message[key] = value.clone();
                    }
                }
            }
            ws.send(message);
            first = false;
            sent = end;
            if sent == data.len() {
                break;
            }
            if window.is_some() {
                continue;
            }
        }
        // Wait for acknowledgements (or the end, on an error).
        let frame = match ws.next_within(Duration::from_secs(120)) {
            Frame::Json(frame) => frame,
            other => panic!("expected a frame, got {other:?}"),
        };
        ws.log.clear();
        if frame["event"] == "file_ack" {
            written = frame["written"].as_u64().unwrap_or(written);
            if let Some(size) = frame["window"].as_u64() {
                window = Some(size);
            }
        } else {
            let answer: &mut Answer = answers.entry(id.to_string()).or_default();
            match frame["event"].as_str() {
                Some("error") => {
                    answer.error = Some((Value::Null, frame));
                    return answers.remove(id).unwrap_or_default();
                }
                _ => answer.status = Some(frame),
            }
        }
    }
    until_done(ws, &mut answers, &[id]);
    answers.remove(id).unwrap_or_default()
}

fn read_file(ws: &mut Ws, id: &str, path: &str) -> Answer {
    request(ws, id, "read_file", json!({"path": path}))
}

fn error_code(answer: &Answer) -> String {
    let (status, error) = answer
        .error
        .as_ref()
        .unwrap_or_else(|| panic!("expected an error, got {answer:?}"));
    if !status.is_null() {
        assert_eq!(status["status"], "SANDBOX_FILE_ERROR", "{status}");
        assert_eq!(status["code"], error["code"], "both frames carry the code");
        assert_eq!(status["message"], error["message"]);
    }
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{error}"
    );
    answer.code().unwrap_or_default().to_string()
}

/// Output of a bash command run in the session (exits 0).
fn shell(ws: &mut Ws, code: &str) -> String {
    let result = ws.run("bash", code);
    assert_eq!(result.done["exit_code"], 0, "{code}: {result:?}");
    result.stdout
}

#[test]
fn random_binary_data_round_trips_over_the_websocket() {
    let server = TestServer::start(&[]);
    let Created { mut ws, .. } = create(&server, json!({}));
    for (index, size) in [0usize, 1, 64 * 1024 + 1, 100_000_000]
        .into_iter()
        .enumerate()
    {
        let data = random_bytes(size, index as u64 + 7);
        let path = format!("/root/data-{size}.bin");
        let id = format!("w{index}");
        let written = write_file(&mut ws, &id, &path, &data, json!({}));
        let reply = written
            .reply
            .unwrap_or_else(|| panic!("write of {size} bytes: {:?}", written.error));
        assert_eq!(reply["size"], size as u64, "{reply}");
        // The file in the sandbox has the same hash, as the sandbox itself computes it.
        let hash = shell(&mut ws, &format!("sha256sum {path} | cut -d' ' -f1"));
        assert_eq!(hash.trim(), sha256(&data), "size {size}");
        let read = read_file(&mut ws, &format!("r{index}"), &path);
        assert_eq!(
            read.reply.as_ref().map(|r| r["size"].clone()),
            Some(json!(size))
        );
        assert_eq!(read.data.len(), size);
        assert_eq!(sha256(&read.data), sha256(&data), "size {size}");
    }
    ws.kill_sandbox();
}

#[test]
fn files_operations_list_stat_exists_make_dir_rename_remove() {
    let server = TestServer::start(&[]);
    let Created { mut ws, .. } = create(&server, json!({}));
    reply(&mut ws, "1", "make_dir", json!({"path": "tree/a/b"}));
    for (index, path) in ["tree/top.txt", "tree/a/mid.txt", "tree/a/b/deep.txt"]
        .iter()
        .enumerate()
    {
        let answer = write_file(
            &mut ws,
            &format!("w{index}"),
            path,
            path.as_bytes(),
            json!({"mode": 0o600}),
        );
        assert!(answer.reply.is_some(), "{answer:?}");
    }
    let listing = reply(&mut ws, "2", "list_files", json!({"path": "/root/tree"}));
    let names: Vec<&str> = listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "top.txt"], "{listing}");
    let top = &listing["entries"][1];
    assert_eq!(top["type"], "file");
    assert_eq!(top["size"], 12);
    assert_eq!(top["mode"], 0o600);
    assert_eq!(top["path"], "/root/tree/top.txt");
    assert!(top["mtime_unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(listing["entries"][0]["type"], "dir");

    let deep = reply(
        &mut ws,
        "3",
        "list_files",
        json!({"path": "tree", "depth": 3}),
    );
    let mut paths: Vec<&str> = deep["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["path"].as_str().unwrap())
        .collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "/root/tree/a",
            "/root/tree/a/b",
            "/root/tree/a/b/deep.txt",
            "/root/tree/a/mid.txt",
            "/root/tree/top.txt"
        ]
    );

    let stat = reply(&mut ws, "4", "stat_file", json!({"path": "tree/a"}));
    assert_eq!(stat["entry"]["type"], "dir", "{stat}");
    assert_eq!(
        reply(&mut ws, "5", "exists", json!({"path": "tree/top.txt"}))["exists"],
        true
    );
    assert_eq!(
        reply(&mut ws, "6", "exists", json!({"path": "tree/nope"}))["exists"],
        false
    );

    reply(
        &mut ws,
        "7",
        "rename_file",
        json!({"from": "tree/top.txt", "to": "tree/a/moved.txt"}),
    );
    assert_eq!(
        read_file(&mut ws, "8", "tree/a/moved.txt").data,
        b"tree/top.txt"
    );
    // Append goes on in place.
    let appended = write_file(
        &mut ws,
        "9",
        "tree/a/moved.txt",
        b"+more",
        json!({"append": true}),
    );
    assert_eq!(appended.reply.unwrap()["size"], 17);
    assert_eq!(
        read_file(&mut ws, "10", "tree/a/moved.txt").data,
        b"tree/top.txt+more"
    );

    reply(
        &mut ws,
        "11",
        "remove_file",
        json!({"path": "tree/a/mid.txt"}),
    );
    reply(
        &mut ws,
        "12",
        "remove_file",
        json!({"path": "tree", "recursive": true}),
    );
    assert_eq!(
        shell(&mut ws, "ls /root/tree 2>&1 || echo gone")
            .trim_end()
            .lines()
            .last(),
        Some("gone")
    );
    ws.kill_sandbox();
}

#[test]
fn every_error_has_its_code() {
    let server = TestServer::start(&[("SANDBOX_MAX_FILE_MB", "1")]);
    let Created { mut ws, .. } = create(&server, json!({}));
    shell(
        &mut ws,
        "mkdir -p /root/dir && echo x > /root/dir/file && chmod 000 /root/dir/file",
    );
    let cases: Vec<(&str, Value, &str)> = vec![
        ("read_file", json!({"path": "/root/missing"}), "not_found"),
        ("read_file", json!({"path": "/root/dir"}), "is_a_directory"),
        (
            "list_files",
            json!({"path": "/root/dir/file"}),
            "not_a_directory",
        ),
        (
            "read_file",
            json!({"path": "/root/dir/file/x"}),
            "not_a_directory",
        ),
        (
            "make_dir",
            json!({"path": "/root/dir", "parents": false}),
            "already_exists",
        ),
        (
            "read_file",
            json!({"path": format!("/root/{}", "a".repeat(300))}),
            "path_too_long",
        ),
        (
            "read_file",
            json!({"path": format!("/{}", "a/".repeat(2100))}),
            "path_too_long",
        ),
        // Read-only: the agent's directory is mounted read-only.
        (
            "make_dir",
            json!({"path": "/.sandbox/x"}),
            "permission_denied",
        ),
        (
            "remove_file",
            json!({"path": "/root/dir", "recursive": false}),
            "io",
        ),
        ("read_file", json!({"path": "/dev/null"}), "invalid_path"),
        (
            "read_file",
            json!({"path": "/root/dir/file"}),
            "permission_denied",
        ),
        ("remove_file", json!({"path": "/"}), "invalid_path"),
        (
            "rename_file",
            json!({"from": "/root/missing", "to": "/root/x"}),
            "not_found",
        ),
    ];
    for (index, (action, fields, code)) in cases.into_iter().enumerate() {
        let answer = request(&mut ws, &format!("e{index}"), action, fields.clone());
        assert_eq!(error_code(&answer), code, "{action} {fields}: {answer:?}");
    }
    // Writes: into a directory, past the file size limit (1 MiB here), into a missing dir.
    let answer = write_file(&mut ws, "w1", "/root/dir", b"x", json!({}));
    assert_eq!(error_code(&answer), "is_a_directory", "{answer:?}");
    let big = random_bytes(2 * 1024 * 1024, 3);
    let answer = write_file(&mut ws, "w2", "/root/big.bin", &big, json!({}));
    assert_eq!(error_code(&answer), "file_too_large", "{answer:?}");
    let answer = write_file(&mut ws, "w3", "/root/no/such/dir/f", b"x", json!({}));
    assert_eq!(error_code(&answer), "not_found", "{answer:?}");
    // Nothing was left behind by the failed writes.
    assert_eq!(
        shell(&mut ws, "ls -A /root | grep -c upload || true").trim(),
        "0"
    );
    // Malformed messages are request errors naming the field.
    ws.send(json!({"action": "read_file", "id": "m1"}));
    let message = ws.expect_error("SANDBOX_REQUEST_ERROR");
    assert!(message.contains("\"path\""), "{message}");
    // The session goes on.
    assert_eq!(shell(&mut ws, "echo alive"), "alive\n");
    ws.kill_sandbox();
}

#[test]
fn paths_stay_inside_the_sandbox() {
    let server = TestServer::start(&[]);
    let Created { mut ws, .. } = create(&server, json!({}));
    // `..` beyond the root stays at the sandbox's root: this is the sandbox's /etc/hostname.
    let inside = shell(&mut ws, "cat /etc/os-release");
    let read = read_file(&mut ws, "1", "../../../../../etc/os-release");
    assert_eq!(String::from_utf8_lossy(&read.data), inside);
    let marker = format!("/tmp/files-traversal-{}", std::process::id());
    let answer = write_file(
        &mut ws,
        "2",
        &format!("../../../..{marker}"),
        b"inside",
        json!({}),
    );
    assert!(answer.reply.is_some(), "{answer:?}");
    assert_eq!(shell(&mut ws, &format!("cat {marker}")), "inside");
    assert!(
        !std::path::Path::new(&marker).exists(),
        "the host's /tmp was written"
    );
    ws.kill_sandbox();
}

#[test]
fn the_agents_own_descriptors_are_out_of_reach() {
    let server = TestServer::start(&[]);
    let Created { mut ws, .. } = create(&server, json!({}));
    // A symbolic link to the agent's stdout, made by user code.
    shell(
        &mut ws,
        "ln -s /proc/1/fd/1 /root/agent-out; ln -s /proc/self/fd /root/fds",
    );
    // A forged agent frame: a length, the kind of an exit frame, an exec id, a code.
    let forged = [9u8, 0, 0, 0, 70, 1, 0, 0, 0, 0, 0, 0, 0];
    let paths = [
        "/proc/self/fd/0",
        "/proc/self/fd/1",
        "/proc/thread-self/fd/1",
        "/dev/fd/0",
        "/dev/fd/1",
        "/dev/stdin",
        "/dev/stdout",
        "/proc/1/fd/0",
        "/proc/1/fd/1",
        "/proc/1/environ",
        "/proc/1/mem",
        "agent-out",
        "fds/1",
        "/proc/../proc/1/fd/1",
    ];
    for (index, path) in paths.iter().enumerate() {
        let read = read_file(&mut ws, &format!("r{index}"), path);
        assert_eq!(error_code(&read), "invalid_path", "read {path}: {read:?}");
        assert!(read.data.is_empty(), "read {path} gave data");
        let write = write_file(&mut ws, &format!("w{index}"), path, &forged, json!({}));
        assert_eq!(
            error_code(&write),
            "invalid_path",
            "write {path}: {write:?}"
        );
        let append = write_file(
            &mut ws,
            &format!("a{index}"),
            path,
            &forged,
            json!({"append": true}),
        );
        assert_eq!(
            error_code(&append),
            "invalid_path",
            "append {path}: {append:?}"
        );
    }
    // The agent and the session are unharmed: an execution runs and ends normally.
    assert_eq!(shell(&mut ws, "echo still-here"), "still-here\n");
    ws.kill_sandbox();
    assert!(
        !server.log().contains("agent protocol error"),
        "{}",
        server.log()
    );
}

#[test]
fn concurrent_transfers_in_one_session() {
    let server = TestServer::start(&[]);
    let Created { mut ws, .. } = create(&server, json!({}));
    let files: Vec<Vec<u8>> = (0..4)
        .map(|index| random_bytes(3 * CHUNK + index * 1000, index as u64))
        .collect();
    // Four writes started together, their chunks interleaved (each fits the default window).
    for (index, data) in files.iter().enumerate() {
        ws.send(json!({"action": "write_file", "id": format!("w{index}"), "path": format!("c{index}.bin"),
            "data": base64_encode(&data[..CHUNK]), "more": true}));
    }
    for start in [CHUNK, 2 * CHUNK, 3 * CHUNK] {
        for (index, data) in files.iter().enumerate() {
            let end = (start + CHUNK).min(data.len());
            ws.send(json!({"action": "write_file", "id": format!("w{index}"),
                "data": base64_encode(&data[start..end]), "more": end < data.len()}));
        }
    }
    let mut answers = BTreeMap::new();
    until_done(&mut ws, &mut answers, &["w0", "w1", "w2", "w3"]);
    for (index, data) in files.iter().enumerate() {
        let answer = &answers[&format!("w{index}")];
        assert_eq!(
            answer.reply.as_ref().unwrap()["size"],
            data.len(),
            "{answer:?}"
        );
        let acks: Vec<u64> = answer
            .acks
            .iter()
            .filter_map(|ack| ack["written"].as_u64())
            .collect();
        assert_eq!(
            acks.last(),
            Some(&(data.len() as u64)),
            "every byte acknowledged"
        );
    }
    // Four reads and an execution at once.
    for index in 0..4 {
        ws.send(json!({"action": "read_file", "id": format!("r{index}"), "path": format!("c{index}.bin")}));
    }
    ws.send(json!({"id": "x", "language": "bash", "code": "echo beside"}));
    let mut answers = BTreeMap::new();
    until_done(&mut ws, &mut answers, &["r0", "r1", "r2", "r3"]);
    for (index, data) in files.iter().enumerate() {
        assert_eq!(sha256(&answers[&format!("r{index}")].data), sha256(data));
    }
    ws.kill_sandbox();
}

/// The pid of the file helper the agent started ahead of the next operation, once there is
/// one (bounded wait; fails the test if none comes). Call it while no operation is under way:
/// a pre-started helper keeps its command line while it serves one.
fn waiting_file_helper(ws: &mut Ws) -> u32 {
    // The bracket keeps the probe's own command line from matching.
    let pid = shell(
        ws,
        "for i in $(seq 200); do \
           p=$(ps -eo pid=,args= | grep -e '--files --[s]tandby' | awk '{print $1}'); \
           [ \"$(echo \"$p\" | grep -c .)\" = 1 ] && { echo \"$p\"; exit 0; }; sleep 0.05; \
         done; ps -ef; exit 1",
    );
    pid.trim()
        .parse()
        .unwrap_or_else(|_| panic!("no pid: {pid:?}"))
}

fn process_exists(ws: &mut Ws, pid: u32) -> bool {
    shell(ws, &format!("[ -d /proc/{pid} ] && echo yes || echo no")) == "yes\n"
}

/// The pids in the names of the temporary files of writes under way in /root
/// (`.NAME.upload-PID`: the helper that writes it), by target name.
fn writers(ws: &mut Ws) -> BTreeMap<String, u32> {
    shell(ws, "ls -A /root")
        .lines()
        .filter_map(|name| {
            let (target, pid) = name.strip_prefix('.')?.rsplit_once(".upload-")?;
            Some((target.to_string(), pid.parse().ok()?))
        })
        .collect()
}

#[test]
fn operations_are_served_by_the_helper_started_ahead_or_by_fresh_ones_at_once() {
    let server = TestServer::start(&[]);
    let Created { mut ws, .. } = create(&server, json!({}));
    // One operation alone: the helper that was waiting does it, and exits.
    let waiting = waiting_file_helper(&mut ws);
    let written = write_file(&mut ws, "1", "alone.txt", b"served", json!({}));
    assert!(written.reply.is_some(), "{written:?}");
    assert!(
        common::wait_until(Duration::from_secs(10), || !process_exists(
            &mut ws, waiting
        )),
        "the waiting helper {waiting} did not serve the write"
    );
    assert_eq!(read_file(&mut ws, "2", "alone.txt").data, b"served");

    // Three writes at once: the waiting helper takes the first, fresh helpers the others.
    // While their data is not complete, each one's temporary file names its helper.
    let waiting = waiting_file_helper(&mut ws);
    let names = ["a.bin", "b.bin", "c.bin"];
    for (index, name) in names.iter().enumerate() {
        ws.send(
            json!({"action": "write_file", "id": format!("w{index}"), "path": name,
            "data": base64_encode(name.as_bytes()), "more": true}),
        );
    }
    let mut acked = 0;
    while acked < names.len() {
        match ws.next_within(Duration::from_secs(60)) {
            Frame::Json(frame) if frame["event"] == "file_ack" && frame["written"] == 5 => {
                acked += 1
            }
            Frame::Json(_) => {}
            other => panic!("no acknowledgement: {other:?}"),
        }
    }
    let pids = writers(&mut ws);
    assert_eq!(pids.len(), names.len(), "{pids:?}");
    let served_by_waiting: Vec<&String> = pids
        .iter()
        .filter(|(_, pid)| **pid == waiting)
        .map(|(name, _)| name)
        .collect();
    assert_eq!(served_by_waiting.len(), 1, "{pids:?}, waiting {waiting}");
    let distinct: std::collections::BTreeSet<&u32> = pids.values().collect();
    assert_eq!(distinct.len(), names.len(), "{pids:?}");
    for index in 0..names.len() {
        ws.send(
            json!({"action": "write_file", "id": format!("w{index}"), "data": "", "more": false}),
        );
    }
    let mut answers = BTreeMap::new();
    until_done(&mut ws, &mut answers, &["w0", "w1", "w2"]);
    for (index, name) in names.iter().enumerate() {
        let answer = &answers[&format!("w{index}")];
        assert_eq!(answer.reply.as_ref().unwrap()["size"], 5, "{answer:?}");
        assert_eq!(
            read_file(&mut ws, &format!("r{index}"), name).data,
            name.as_bytes()
        );
    }
    // The next helper is made ready again once the agent is idle.
    let next = waiting_file_helper(&mut ws);
    assert!(!pids.values().any(|pid| *pid == next), "{pids:?} {next}");
    ws.kill_sandbox();
}

#[test]
fn an_interrupted_write_leaves_no_partial_file() {
    let server = TestServer::start(&[]);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&server, json!({}));
    let old = write_file(&mut ws, "1", "target.bin", b"the old content", json!({}));
    assert!(old.reply.is_some(), "{old:?}");
    // Half a transfer to the same name and to a new one, then the client disappears.
    let half = random_bytes(CHUNK, 9);
    for (id, path) in [("2", "target.bin"), ("3", "fresh.bin")] {
        ws.send(json!({"action": "write_file", "id": id, "path": path,
            "data": base64_encode(&half), "more": true}));
    }
    // Wait until the data landed (acknowledged), so that the helper did write a temporary.
    let mut acked = 0;
    while acked < 2 {
        if let Frame::Json(frame) = ws.next_within(Duration::from_secs(60)) {
            if frame["event"] == "file_ack" && frame["written"] == CHUNK as u64 {
                acked += 1;
            }
        } else {
            panic!("no acknowledgement");
        }
    }
    ws.drop_abruptly();
    let mut ws = attach(&server, &sandbox_id, &token);
    let mut listing = String::new();
    let gone = common::wait_until(Duration::from_secs(20), || {
        listing = shell(&mut ws, "ls -A /root");
        !listing.contains("upload")
    });
    assert!(gone, "a temporary file stayed: {listing}");
    assert!(!listing.contains("fresh.bin"), "{listing}");
    assert_eq!(
        read_file(&mut ws, "4", "target.bin").data,
        b"the old content"
    );
    ws.kill_sandbox();
}

// ---- Over HTTP ------------------------------------------------------------------------------

fn files_target(sandbox_id: &str, query: &str) -> String {
    format!("/sandboxes/{sandbox_id}/files?{query}")
}

/// A request with `body` sent in 1 MiB writes (`chunked`: with chunked framing), and the
/// answer. The server may answer early and close: the rest of the body is then not sent.
fn http_request(
    port: u16,
    method: &str,
    target: &str,
    token: &str,
    body: &[u8],
    chunked: bool,
) -> common::Response {
    let mut client = common::Client::connect(port);
    client.set_read_timeout(Duration::from_secs(120));
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {}", body.len())
    };
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: t\r\nX-Sandbox-Token: {token}\r\n{framing}\r\n\r\n"
    );
    let mut sent = client.try_send(head.as_bytes());
    for piece in body.chunks(CHUNK) {
        if sent.is_err() {
            break;
        }
        sent = if chunked {
            let mut framed = format!("{:x}\r\n", piece.len()).into_bytes();
            framed.extend_from_slice(piece);
            framed.extend_from_slice(b"\r\n");
            client.try_send(&framed)
        } else {
            client.try_send(piece)
        };
    }
    if chunked && sent.is_ok() {
        let _ = client.try_send(b"0\r\n\r\n");
    }
    client.read_response().expect("a response")
}

/// `GET` a file, its bytes hashed as they come.
fn http_download(port: u16, target: &str, token: &str) -> (u16, String, usize, Vec<u8>) {
    let mut client = common::Client::connect(port);
    client.set_read_timeout(Duration::from_secs(120));
    let head = format!("GET {target} HTTP/1.1\r\nHost: t\r\nX-Sandbox-Token: {token}\r\n\r\n");
    client.send(head.as_bytes());
    let head = client.read_head().expect("a head");
    let mut hasher = Sha256::new();
    let mut length = 0;
    let mut start = Vec::new();
    client
        .read_body_with(&head, |piece| {
            hasher.update(piece);
            length += piece.len();
            if start.len() < 4096 {
                start.extend_from_slice(&piece[..piece.len().min(4096)]);
            }
        })
        .expect("the body");
    (
        head.status,
        format!("{:x}", hasher.finalize()),
        length,
        start,
    )
}

#[test]
fn random_binary_data_round_trips_over_http() {
    let server = TestServer::start(&[]);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&server, json!({}));
    for (index, size) in [0usize, 1, 64 * 1024 + 1, 100_000_000]
        .into_iter()
        .enumerate()
    {
        let data = random_bytes(size, index as u64 + 100);
        let target = files_target(&sandbox_id, &format!("path=/root/http-{size}.bin"));
        // Content-Length for some, chunked for the others.
        let response = http_request(server.port, "PUT", &target, &token, &data, index % 2 == 1);
        assert_eq!(response.status, 200, "PUT {size}: {}", response.text());
        assert_eq!(response.json()["size"], size as u64);
        let hash = shell(
            &mut ws,
            &format!("sha256sum /root/http-{size}.bin | cut -d' ' -f1"),
        );
        assert_eq!(hash.trim(), sha256(&data), "size {size}");
        let (status, hash, length, _) = http_download(server.port, &target, &token);
        assert_eq!((status, length), (200, size));
        assert_eq!(hash, sha256(&data), "size {size}");
    }
    ws.kill_sandbox();
}

#[test]
fn http_listing_deletion_errors_and_authorisation() {
    let server = TestServer::start(&[]);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&server, json!({}));
    shell(
        &mut ws,
        "mkdir -p /root/t/sub && echo hi > /root/t/a.txt && echo x > /root/t/sub/b",
    );
    let list = http_download(
        server.port,
        &files_target(&sandbox_id, "path=t&list=1&depth=2"),
        &token,
    );
    assert_eq!(list.0, 200);
    let listing: Value = serde_json::from_slice(&list.3).unwrap();
    let mut paths: Vec<&str> = listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["path"].as_str().unwrap())
        .collect();
    paths.sort_unstable();
    assert_eq!(paths, ["/root/t/a.txt", "/root/t/sub", "/root/t/sub/b"]);
    // The token as a query parameter works too.
    let target = files_target(&sandbox_id, &format!("path=t/a.txt&sandbox_token={token}"));
    let (status, _, _, body) = http_download(server.port, &target, "");
    assert_eq!((status, body.as_slice()), (200, b"hi\n".as_slice()));

    // Errors and their statuses.
    for (method, query, status, code) in [
        ("GET", "path=/root/missing", 404, "not_found"),
        ("GET", "path=/root/t", 409, "is_a_directory"),
        ("GET", "path=/root/t/a.txt&list=1", 409, "not_a_directory"),
        ("GET", "path=/proc/1/fd/1", 400, "invalid_path"),
        ("DELETE", "path=/root/t", 500, "io"),
        ("PUT", "path=/.sandbox/x", 403, "permission_denied"),
        ("PUT", "path=/root/t", 409, "is_a_directory"),
    ] {
        let target = files_target(&sandbox_id, query);
        let response = http_request(server.port, method, &target, &token, b"data", false);
        assert_eq!(
            response.status,
            status,
            "{method} {query}: {}",
            response.text()
        );
        assert_eq!(response.json()["code"], code, "{method} {query}");
        assert!(!response.error_message().is_empty());
    }
    let long = format!("path=/{}", "a".repeat(300));
    let response = http_request(
        server.port,
        "GET",
        &files_target(&sandbox_id, &long),
        &token,
        b"",
        false,
    );
    assert_eq!(
        (response.status, response.json()["code"].clone()),
        (414, json!("path_too_long"))
    );

    // An unknown sandbox and a wrong token get the same answer.
    let target = files_target(&sandbox_id, "path=t/a.txt");
    let wrong = http_request(
        server.port,
        "GET",
        &target,
        "0123456789abcdef0123456789abcdef",
        b"",
        false,
    );
    let none = http_request(server.port, "GET", &target, "", b"", false);
    let other = "fedcba9876543210fedcba9876543210";
    let unknown = http_request(
        server.port,
        "GET",
        &files_target(other, "path=t/a.txt"),
        &token,
        b"",
        false,
    );
    assert_eq!((wrong.status, none.status, unknown.status), (404, 404, 404));
    assert_eq!(wrong.body, none.body);
    assert_eq!(
        wrong.text().replace(&sandbox_id, "ID"),
        unknown.text().replace(other, "ID")
    );
    // A refused upload does not write anything.
    let refused = http_request(
        server.port,
        "PUT",
        &files_target(&sandbox_id, "path=sneaky"),
        "bad",
        b"x",
        false,
    );
    assert_eq!(refused.status, 404);

    let deleted = http_request(
        server.port,
        "DELETE",
        &files_target(&sandbox_id, "path=t&recursive=true"),
        &token,
        b"",
        false,
    );
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    assert_eq!(shell(&mut ws, "ls /root"), "");
    ws.kill_sandbox();
}

#[test]
fn an_interrupted_http_upload_leaves_no_partial_file_and_memory_stays_bounded() {
    let server = TestServer::start(&[]);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&server, json!({}));
    // 300 MB streamed through the server: its memory grows by far less than that.
    let before = server.rss_kib().expect("the server's RSS");
    let size: usize = 300 * 1024 * 1024;
    let mut client = common::Client::connect(server.port);
    client.set_read_timeout(Duration::from_secs(120));
    let target = files_target(&sandbox_id, "path=big.bin");
    let head = format!(
        "PUT {target} HTTP/1.1\r\nHost: t\r\nX-Sandbox-Token: {token}\r\nContent-Length: {size}\r\n\r\n"
    );
    client.send(head.as_bytes());
    let piece = random_bytes(CHUNK, 5);
    let mut peak = before;
    for index in 0..size / CHUNK {
        client.send(&piece);
        if index % 16 == 0 {
            peak = peak.max(server.rss_kib().unwrap_or(0));
        }
    }
    let response = client.read_response().expect("a response");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["size"], size as u64);
    let grown_mib = peak.saturating_sub(before) / 1024;
    eprintln!("server RSS: {before} KiB before, {peak} KiB at most during a 300 MiB upload");
    assert!(
        grown_mib < 64,
        "the server grew by {grown_mib} MiB during the upload"
    );
    shell(&mut ws, "rm /root/big.bin");

    // Half an upload, then the client goes: no file, no temporary.
    let mut client = common::Client::connect(server.port);
    let target = files_target(&sandbox_id, "path=half.bin");
    let head = format!(
        "PUT {target} HTTP/1.1\r\nHost: t\r\nX-Sandbox-Token: {token}\r\nContent-Length: {}\r\n\r\n",
        8 * CHUNK
    );
    client.send(head.as_bytes());
    for _ in 0..4 {
        client.send(&piece);
    }
    // The helper is writing its temporary file when the client goes.
    let writing = common::wait_until(Duration::from_secs(20), || {
        shell(&mut ws, "ls -A /root").contains(".half.bin.upload-")
    });
    assert!(writing, "no temporary file while uploading");
    drop(client);
    let mut listing = String::new();
    let clean = common::wait_until(Duration::from_secs(20), || {
        listing = shell(&mut ws, "ls -A /root");
        !listing.contains("half") && !listing.contains("upload")
    });
    assert!(clean, "left behind: {listing}");
    ws.kill_sandbox();
}

// ---- Persistence ----------------------------------------------------------------------------

#[test]
fn written_files_survive_a_checkpoint_and_go_into_snapshots() {
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
    let data = random_bytes(3 * CHUNK + 5, 77);
    let written = write_file(&mut ws, "1", "/root/kept.bin", &data, json!({}));
    assert!(written.reply.is_some(), "{written:?}");

    // A snapshot has the file: a new sandbox made from it reads it back. (Taken with a file
    // helper waiting for its request, as a checkpoint below.)
    waiting_file_helper(&mut ws);
    let name = format!("files-{}", std::process::id());
    ws.send(json!({"action": "snapshot_filesystem", "name": name}));
    ws.expect_status("SANDBOX_FILESYSTEM_SNAPSHOT_CREATING");
    ws.expect_status("SANDBOX_FILESYSTEM_SNAPSHOT_CREATED");
    let Created { ws: mut copy, .. } = create(&server, json!({"filesystem_snapshot_name": name}));
    assert_eq!(
        sha256(&read_file(&mut copy, "2", "/root/kept.bin").data),
        sha256(&data)
    );
    copy.kill_sandbox();

    // A checkpoint keeps it: after the restore it reads back over both transports. The file
    // helper that waits for its request is checkpointed with the rest, and serves after.
    let waiting = waiting_file_helper(&mut ws);
    ws.checkpoint_to_the_end();
    // Checkpointed, held by no session: over HTTP, attach first (409); a wrong token learns
    // nothing (404, as for an unknown sandbox).
    let target = files_target(&sandbox_id, "path=/root/kept.bin");
    let refused = http_request(server.port, "GET", &target, &token, b"", false);
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert_eq!(refused.json()["code"], "attach_first", "{}", refused.text());
    assert!(
        refused.json()["error"]
            .as_str()
            .is_some_and(|message| message.contains("checkpointed") && message.contains("attach")),
        "{}",
        refused.text()
    );
    let upload = http_request(server.port, "PUT", &target, &token, b"new", false);
    assert_eq!(upload.status, 409, "{}", upload.text());
    let wrong = http_request(server.port, "GET", &target, "wrong-token", b"", false);
    assert_eq!(wrong.status, 404, "{}", wrong.text());
    assert!(wrong
        .json()
        .get("code")
        .is_none_or(|code| *code != "attach_first"));

    let mut ws = ws::connect(server.port, &ws::attach_path(&sandbox_id, &token));
    ws.expect_status("SANDBOX_RESTORING");
    ws.expect_status("SANDBOX_RUNNING");
    assert!(
        process_exists(&mut ws, waiting),
        "the waiting helper is restored"
    );
    assert_eq!(
        sha256(&read_file(&mut ws, "3", "/root/kept.bin").data),
        sha256(&data)
    );
    assert!(
        common::wait_until(Duration::from_secs(10), || !process_exists(
            &mut ws, waiting
        )),
        "the restored helper {waiting} did not serve the read"
    );
    let (status, hash, length, _) = http_download(server.port, &target, &token);
    assert_eq!((status, length, hash), (200, data.len(), sha256(&data)));
    ws.kill_sandbox();
    drop(server);
    drop(dirs);
}
