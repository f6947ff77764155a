//! Protocol 2 (docs/protocol.md, "Requests, processes and flow control") against the real
//! server, runsc and sandbox image: several processes in one session, each with its own
//! request id and output; kill, list and re-attach by process id; stdin with flow control;
//! per-process back-pressure.
//!
//! Each test starts its own server, whose `Drop` stops it and removes every sandbox it left,
//! also on failure. Run with:
//!
//!     cargo test --test processes -- --test-threads=2

mod common;
mod ws;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::{json, Value};
use ws::{attach, base64_encode, create, is_status, ById, Created};

fn exec(code: &str) -> Value {
    json!({"language": "bash", "code": code})
}

/// The answers filed under `id`.
fn answers<'a>(by_id: &'a ById, id: &str) -> &'a ws::Answers {
    by_id
        .get(id)
        .unwrap_or_else(|| panic!("nothing answered {id}: {by_id:#?}"))
}

/// The error status answering `id`, with its message.
fn error_of(by_id: &ById, id: &str) -> Option<(String, String)> {
    by_id.get(id)?.others.iter().find_map(|frame| {
        let status = frame["status"].as_str()?;
        status.ends_with("_ERROR").then(|| {
            (
                status.to_string(),
                frame["message"].as_str().unwrap_or("").to_string(),
            )
        })
    })
}

#[test]
fn ten_concurrent_runs_in_one_session_each_get_their_own_output() {
    let server = TestServer::start(&[]);
    let Created { mut ws, .. } = create(&server, json!({}));
    // Each takes a different time, so their output and ends interleave.
    for index in 0..10 {
        let code = format!(
            "echo start-{index}; sleep 0.{}; echo end-{index} >&2; exit {index}",
            9 - index
        );
        ws.request(&format!("run-{index}"), exec(&code));
    }
    let mut by_id = ById::new();
    ws.file_until(&mut by_id, |by_id| {
        (0..10).all(|index| {
            by_id
                .get(&format!("run-{index}"))
                .is_some_and(ws::Answers::is_done)
        })
    });
    let mut process_ids: Vec<u64> = Vec::new();
    for index in 0..10 {
        let run = answers(&by_id, &format!("run-{index}"));
        assert_eq!(run.stdout, format!("start-{index}\n"), "{run:?}");
        assert_eq!(run.stderr, format!("end-{index}\n"), "{run:?}");
        assert_eq!(run.exit_code(), Some(index), "{run:?}");
        assert_eq!(run.stdin_window, Some(4 * 1024 * 1024), "{run:?}");
        process_ids.push(run.process_id.expect("a process id"));
    }
    process_ids.sort_unstable();
    process_ids.dedup();
    assert_eq!(process_ids.len(), 10, "one process id each");
    ws.kill_sandbox();
}

#[test]
fn kill_one_of_several_by_its_process_id() {
    let server = TestServer::start(&[]);
    let Created { mut ws, .. } = create(&server, json!({}));
    ws.request("a", exec("sleep 2; echo a done"));
    ws.request("b", exec("sleep 60"));
    ws.request("c", exec("sleep 2; echo c done"));
    let mut by_id = ById::new();
    ws.file_until(&mut by_id, |by_id| {
        ["a", "b", "c"]
            .iter()
            .all(|id| by_id.get(*id).is_some_and(|run| run.process_id.is_some()))
    });
    let victim = answers(&by_id, "b").process_id.unwrap();
    ws.request(
        "kill",
        json!({"action": "kill_process", "process_id": victim}),
    );
    ws.file_until(&mut by_id, |by_id| {
        ["a", "b", "c"]
            .iter()
            .all(|id| by_id.get(*id).is_some_and(ws::Answers::is_done))
    });
    let killed = answers(&by_id, "kill");
    assert!(
        is_status(&killed.others[0], "SANDBOX_EXECUTION_FORCE_KILLED"),
        "{killed:?}"
    );
    assert_eq!(killed.process_id, Some(victim));
    let done = answers(&by_id, "b").done.clone().unwrap();
    assert_eq!(done["reason"], "killed", "{done}");
    assert_eq!(done["signal"], 9, "{done}");
    for id in ["a", "c"] {
        let run = answers(&by_id, id);
        assert_eq!(run.stdout, format!("{id} done\n"), "{run:?}");
        assert_eq!(run.exit_code(), Some(0), "{run:?}");
    }
    // Killing it again: it has ended.
    ws.request(
        "again",
        json!({"action": "kill_process", "process_id": victim}),
    );
    ws.file_until(&mut by_id, |by_id| by_id.contains_key("again"));
    ws.recv(); // the error event after the status
    assert_eq!(
        error_of(&by_id, "again"),
        Some((
            "SANDBOX_EXECUTION_FORCE_KILL_ERROR".into(),
            format!("process {victim} has ended")
        ))
    );
    ws.kill_sandbox();
}

/// Deterministic bytes that are not text (every byte value occurs).
fn bytes(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// SHA-256 of `data` by the host's `sha256sum`.
fn sha256_hex(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The client's side of stdin flow control: never more than the window sent and not
/// acknowledged; chunks of at most 1 MiB, base64. Returns the seconds it took to send.
fn send_stdin(ws: &mut ws::Ws, by_id: &mut ById, exec_id: &str, data: &[u8]) -> f64 {
    let started = Instant::now();
    let run = answers(by_id, exec_id).clone();
    let process = run.process_id.unwrap();
    let window = run.stdin_window.unwrap() as usize;
    let mut sent = 0usize;
    for (index, chunk) in data.chunks(1024 * 1024).enumerate() {
        while sent + chunk.len() - answers(by_id, exec_id).stdin_written as usize > window {
            ws.file_next(by_id);
            let id = format!("in-{}", index.saturating_sub(1));
            assert!(error_of(by_id, &id).is_none(), "stdin refused: {by_id:#?}");
        }
        ws.request(
            &format!("in-{index}"),
            json!({"event": "stdin", "process_id": process, "data": base64_encode(chunk),
                   "encoding": "base64"}),
        );
        sent += chunk.len();
    }
    ws.request(
        "eof",
        json!({"event": "stdin", "process_id": process, "eof": true}),
    );
    started.elapsed().as_secs_f64()
}

#[test]
fn sixteen_mib_through_stdin_arrive_byte_for_byte() {
    let server = TestServer::start(&[]);
    let Created { mut ws, .. } = create(&server, json!({}));
    let data = bytes(16 * 1024 * 1024);
    ws.request("hash", exec("sha256sum"));
    let mut by_id = ById::new();
    ws.file_until(&mut by_id, |by_id| {
        by_id
            .get("hash")
            .is_some_and(|run| run.process_id.is_some())
    });
    let seconds = send_stdin(&mut ws, &mut by_id, "hash", &data);
    ws.file_until(&mut by_id, |by_id| answers(by_id, "hash").is_done());
    let run = answers(&by_id, "hash");
    assert_eq!(run.exit_code(), Some(0), "{run:?}");
    assert_eq!(run.stdout, format!("{}  -\n", sha256_hex(&data)));
    assert_eq!(
        run.stdin_written,
        data.len() as u64,
        "every byte acknowledged"
    );
    for (id, answers) in &by_id {
        assert!(error_of(&by_id, id).is_none(), "{id}: {answers:?}");
    }
    eprintln!(
        "16 MiB through stdin in {seconds:.2} s ({:.0} MB/s, sent and acknowledged)",
        16.0 * 1.048576 / seconds
    );
    ws.kill_sandbox();
}

#[test]
fn stdin_beyond_the_window_is_refused_with_the_id_and_nothing_is_written() {
    let server = TestServer::start(&[("SANDBOX_STDIN_WINDOW_BYTES", "1024")]);
    let Created { mut ws, .. } = create(&server, json!({}));
    // Reads nothing for a while, then counts what it got.
    ws.request("count", exec("sleep 2; wc -c"));
    let mut by_id = ById::new();
    ws.file_until(&mut by_id, |by_id| {
        by_id
            .get("count")
            .is_some_and(|run| run.process_id.is_some())
    });
    let process = answers(&by_id, "count").process_id.unwrap();
    assert_eq!(answers(&by_id, "count").stdin_window, Some(1024));
    let stdin = |data: &str| json!({"event": "stdin", "process_id": process, "data": data});
    // One message larger than the window: refused whatever was acknowledged before.
    ws.request("beyond", stdin(&"y".repeat(1025)));
    ws.request("fits", stdin(&"x".repeat(1024)));
    ws.file_until(&mut by_id, |by_id| by_id.contains_key("beyond"));
    let error = ws.recv();
    assert_eq!(error["event"], "error");
    assert_eq!(error["id"], "beyond");
    assert_eq!(
        error_of(&by_id, "beyond"),
        Some((
            "SANDBOX_STDIN_ERROR".into(),
            format!(
                "stdin of process {process} exceeds its window: 1025 bytes not acknowledged, the window is 1024"
            )
        ))
    );
    assert!(error_of(&by_id, "fits").is_none());
    ws.request(
        "eof",
        json!({"event": "stdin", "process_id": process, "eof": true}),
    );
    ws.file_until(&mut by_id, |by_id| answers(by_id, "count").is_done());
    assert_eq!(
        answers(&by_id, "count").stdout.trim(),
        "1024",
        "the refused byte was not written"
    );
    ws.kill_sandbox();
}

/// A process whose output nobody reads (its client went away, and the new one does not follow
/// it) is paused alone: a process the new client follows writes far more than its output
/// window and finishes.
#[test]
fn an_unread_process_does_not_stall_a_followed_one() {
    let server = TestServer::start(&[]);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&server, json!({}));
    ws.request("flood", exec("yes flood"));
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    ws.drop_abruptly();
    let mut ws = attach(&server, &sandbox_id, &token);
    // Far more than the held bound (1 MiB) and a process's output window (256 KiB).
    let bytes = 8 * 1024 * 1024;
    ws.request(
        "big",
        exec(&format!("head -c {bytes} /dev/zero | tr '\\0' z; echo")),
    );
    let mut by_id = ById::new();
    ws.file_until(&mut by_id, |by_id| {
        by_id.get("big").is_some_and(ws::Answers::is_done)
    });
    let big = answers(&by_id, "big");
    assert_eq!(big.stdout.len(), bytes + 1);
    assert_eq!(big.exit_code(), Some(0));
    assert!(
        !by_id.contains_key("flood"),
        "nothing of the unfollowed process reached this client: {:?}",
        by_id.keys()
    );
    ws.request("list", json!({"action": "list_processes"}));
    ws.file_until(&mut by_id, |by_id| by_id.contains_key("list"));
    let processes = answers(&by_id, "list").others[0]["processes"].clone();
    let flood = processes
        .as_array()
        .unwrap()
        .iter()
        .find(|process| process["id"] == "flood")
        .unwrap_or_else(|| panic!("the flood is listed: {processes}"))
        .clone();
    assert_eq!(flood["running"], true, "paused, not ended: {flood}");
    ws.request(
        "stop",
        json!({"action": "kill_process", "process_id": flood["process_id"]}),
    );
    ws.file_until(&mut by_id, |by_id| by_id.contains_key("stop"));
    assert!(is_status(
        &answers(&by_id, "stop").others[0],
        "SANDBOX_EXECUTION_FORCE_KILLED"
    ));
    ws.kill_sandbox();
}

#[test]
fn reconnect_replays_two_background_processes_with_their_ids() {
    let server = TestServer::start(&[]);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&server, json!({}));
    ws.request(
        "one",
        exec("for i in 1 2 3; do echo one-$i; sleep 1; done; exit 3"),
    );
    ws.request("two", exec("sleep 1.5; echo two >&2; exit 4"));
    let mut by_id = ById::new();
    ws.file_until(&mut by_id, |by_id| {
        by_id.get("two").is_some_and(|run| run.process_id.is_some())
            && by_id.get("one").is_some_and(|run| run.stdout == "one-1\n")
    });
    let before = by_id.clone();
    ws.drop_abruptly();
    // Both end while nobody is there.
    std::thread::sleep(Duration::from_secs(4));
    let mut ws = attach(&server, &sandbox_id, &token);
    ws.request("back", json!({"action": "reconnect"}));
    let mut by_id = before;
    ws.file_until(&mut by_id, |by_id| {
        ["one", "two"].iter().all(|id| answers(by_id, id).is_done())
    });
    let one = answers(&by_id, "one");
    assert_eq!(one.stdout, "one-1\none-2\none-3\n", "{one:?}");
    assert_eq!(one.exit_code(), Some(3));
    let two = answers(&by_id, "two");
    assert_eq!(two.stderr, "two\n", "{two:?}");
    assert_eq!(two.exit_code(), Some(4));
    assert!(
        !by_id.contains_key("back"),
        "reconnect itself has no answer"
    );
    ws.kill_sandbox();
}

/// What the server wrote before it saw a connection drop is lost with the connection (here:
/// sent, never read). Reconnect with `received` gets it again; without, only what was held.
#[test]
fn reconnect_sends_again_what_a_drop_swallowed_when_the_client_says_what_it_got() {
    let server = TestServer::start(&[]);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&server, json!({}));
    ws.request("told", exec("echo told-1; sleep 4; echo told-2"));
    ws.request("untold", exec("echo untold-1; sleep 4; echo untold-2"));
    let mut by_id = ById::new();
    ws.file_until(&mut by_id, |by_id| {
        ["told", "untold"]
            .iter()
            .all(|id| by_id.get(*id).is_some_and(|run| run.process_id.is_some()))
    });
    let told = answers(&by_id, "told").process_id.unwrap_or_default();
    // Their first lines reach our socket, unread; then the connection goes.
    std::thread::sleep(Duration::from_secs(2));
    ws.drop_abruptly();
    let mut ws = attach(&server, &sandbox_id, &token);
    // RUNNING was the first event (seq 1) of each; "told" says so, "untold" says nothing.
    ws.request(
        "back",
        json!({"action": "reconnect", "received": {told.to_string(): 1}}),
    );
    let mut by_id = ById::new();
    let mut told_seqs = Vec::new();
    while !["told", "untold"]
        .iter()
        .all(|id| by_id.get(*id).is_some_and(ws::Answers::is_done))
    {
        let frame = ws.file_next(&mut by_id);
        if frame["id"] == "told" {
            told_seqs.push(frame["seq"].as_u64().unwrap_or(0));
        }
    }
    assert_eq!(answers(&by_id, "told").stdout, "told-1\ntold-2\n");
    assert_eq!(told_seqs, [2, 3, 4], "stdout, stdout, DONE: numbered on");
    assert_eq!(
        answers(&by_id, "untold").stdout,
        "untold-2\n",
        "without received, what was on the way is not sent again"
    );
    ws.kill_sandbox();
}

#[test]
fn list_processes_and_attach_process_from_another_client() {
    let server = TestServer::start(&[]);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&server, json!({}));
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    ws.request("quick", exec("true"));
    ws.request(
        "ticks",
        json!({"language": "python", "code":
            "import time\nfor i in range(4):\n    print(i, flush=True)\n    time.sleep(1)"}),
    );
    let mut by_id = ById::new();
    ws.file_until(&mut by_id, |by_id| {
        by_id.get("quick").is_some_and(ws::Answers::is_done)
            && by_id.get("ticks").is_some_and(|run| !run.stdout.is_empty())
    });
    ws.request("list", json!({"action": "list_processes"}));
    ws.file_until(&mut by_id, |by_id| by_id.contains_key("list"));
    let reply = answers(&by_id, "list").others[0].clone();
    assert_eq!(reply["event"], "reply");
    let processes = reply["processes"].as_array().unwrap();
    assert_eq!(
        processes.len(),
        1,
        "an ended, delivered process is gone: {reply}"
    );
    let ticks = &processes[0];
    assert_eq!(ticks["id"], "ticks");
    assert_eq!(ticks["kind"], "exec");
    assert_eq!(ticks["language"], "python");
    assert_eq!(ticks["running"], true);
    // The session counts wall time from its own start on the monotonic clock, with both parts
    // truncated to milliseconds: allow a little slack below `before`.
    assert!(
        ticks["started_unix_ms"].as_u64().unwrap() + 50 >= before,
        "{ticks}"
    );
    let process = ticks["process_id"].as_u64().unwrap();
    assert_eq!(answers(&by_id, "ticks").process_id, Some(process));
    ws.close();

    // Another client, which knows nothing: lists, then follows the process by its id.
    let mut other = attach(&server, &sandbox_id, &token);
    let mut seen = ById::new();
    other.request("l", json!({"action": "list_processes"}));
    other.file_until(&mut seen, |seen| seen.contains_key("l"));
    other.request(
        "follow",
        json!({"action": "attach_process", "process_id": process}),
    );
    other.file_until(&mut seen, |seen| {
        seen.get("follow").is_some_and(ws::Answers::is_done)
    });
    let followed = answers(&seen, "follow");
    assert_eq!(followed.others[0]["event"], "reply", "{followed:?}");
    assert_eq!(followed.others[0]["process_id"], process);
    assert_eq!(followed.exit_code(), Some(0));
    // What the first client did not read, and nothing it did.
    let everything = format!("{}{}", answers(&by_id, "ticks").stdout, followed.stdout);
    assert_eq!(everything, "0\n1\n2\n3\n", "{followed:?}");
    assert!(!seen.contains_key("ticks"), "events carry the new id");
    other.kill_sandbox();
}
