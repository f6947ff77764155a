//! The code interpreter (issue 13, docs/protocol.md "Code interpreter") against the real server,
//! runsc and sandbox image: persistent Python contexts, rich results, structured errors,
//! interrupts, dead contexts, isolation, limits, checkpoint and restore on another instance.
//!
//! Each test starts its own server, whose `Drop` stops it and removes every sandbox it left,
//! also on failure. Run with:
//!
//!     cargo test --test code_interpreter -- --test-threads=2

mod common;
mod store;
mod ws;

use common::TestServer;
use serde_json::{json, Value};
use store::SharedDirs;
use ws::{attach_path, base64_decode, connect, create, is_status, Answers, ById, Created, Ws};

/// A cell's events, as filed by request id, plus its results and error.
struct Cell {
    answers: Answers,
    results: Vec<Value>,
    error: Option<Value>,
}

impl Cell {
    fn done(&self) -> &Value {
        self.answers.done.as_ref().expect("a DONE")
    }

    fn main_text(&self) -> Option<&str> {
        self.results
            .iter()
            .find(|result| result["is_main_result"] == true)
            .and_then(|result| result["data"]["text/plain"].as_str())
    }
}

/// Counter for request ids within a test.
struct Session {
    ws: Ws,
    next: u64,
}

impl Session {
    fn new(ws: Ws) -> Self {
        Session { ws, next: 0 }
    }

    fn id(&mut self) -> String {
        self.next += 1;
        format!("r{}", self.next)
    }

    /// Send `run_code` and read until its DONE (or its error, if refused).
    fn run_in(&mut self, code: &str, extra: Value) -> Cell {
        let id = self.id();
        let mut message = json!({"action": "run_code", "code": code});
        if let (Value::Object(message), Value::Object(extra)) = (&mut message, extra) {
            message.extend(extra);
        }
        self.ws.request(&id, message);
        self.collect(&id)
    }

    fn run(&mut self, code: &str) -> Cell {
        self.run_in(code, json!({}))
    }

    /// Read frames until request `id` is done or refused.
    fn collect(&mut self, id: &str) -> Cell {
        let mut by_id = ById::new();
        self.ws.file_until(&mut by_id, |by_id| {
            by_id.get(id).is_some_and(|answers| {
                answers.is_done() || answers.others.iter().any(|frame| frame["event"] == "error")
            })
        });
        let answers = by_id.remove(id).unwrap_or_default();
        let results = answers
            .others
            .iter()
            .filter(|frame| frame["event"] == "result")
            .cloned()
            .collect();
        let error = answers
            .others
            .iter()
            .find(|frame| frame["event"] == "execution_error")
            .cloned();
        Cell {
            answers,
            results,
            error,
        }
    }

    /// A request/response action: its reply (or the error status frame).
    fn ask(&mut self, message: Value) -> Value {
        let id = self.id();
        self.ws.request(&id, message);
        loop {
            let frame = self.ws.recv();
            if frame["id"] == json!(id)
                && (frame["event"] == "reply" || frame["message"].is_string())
            {
                return frame;
            }
        }
    }
}

fn refusal(cell: &Cell) -> Option<(String, String)> {
    cell.answers.others.iter().find_map(|frame| {
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
fn state_persists_across_twenty_cells_and_the_last_expression_is_the_result() {
    let server = TestServer::start(&[]);
    let Created { ws, .. } = create(&server, json!({}));
    let mut session = Session::new(ws);
    let first = session.run("import math\nxs = []");
    assert_eq!(first.done()["exit_code"], 0, "{:?}", first.answers);
    assert!(first.results.is_empty(), "{:?}", first.results);
    for index in 0..19 {
        let cell = session.run(&format!("xs.append({index})\nprint(len(xs))\nsum(xs)"));
        assert_eq!(cell.answers.stdout, format!("{}\n", index + 1));
        let expected: i64 = (0..=index).sum();
        assert_eq!(cell.main_text(), Some(expected.to_string().as_str()));
        assert_eq!(cell.done()["reason"], "exited");
    }
    // 21 cells, one process: the RUNNING said kind cell and the context.
    let cell = session.run("import os\nos.getpid() == __import__('os').getpid(), math.pi");
    assert!(
        cell.main_text().unwrap().contains("3.14159"),
        "{:?}",
        cell.results
    );
    let list = session.ask(json!({"action": "list_code_contexts"}));
    assert_eq!(list["contexts"][0]["context_id"], "default", "{list}");
    assert_eq!(list["contexts"][0]["state"], "idle", "{list}");
    assert_eq!(list["contexts"][0]["cwd"], "/root", "{list}");
    let processes = session.ask(json!({"action": "list_processes"}));
    let kinds: Vec<&Value> = processes["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|process| &process["kind"])
        .collect();
    assert!(kinds.iter().all(|kind| **kind == "cell"), "{processes}");
    session.ws.kill_sandbox();
}

#[test]
fn dataframes_give_html_figures_give_png_and_display_shows_more_results() {
    let server = TestServer::start(&[]);
    let Created { ws, .. } = create(&server, json!({}));
    let mut session = Session::new(ws);
    let table = session
        .run("import pandas as pd\ndf = pd.DataFrame({'a': [1, 2, 3], 'b': [4.5, 5.5, 6.5]})\ndf");
    assert_eq!(
        table.done()["exit_code"],
        0,
        "{:?} {:?}",
        table.answers,
        table.error
    );
    let main = &table.results[0];
    assert_eq!(main["is_main_result"], true);
    assert!(
        main["data"]["text/html"]
            .as_str()
            .unwrap()
            .contains("<table"),
        "{main}"
    );
    assert!(
        main["data"]["text/plain"].as_str().unwrap().contains("5.5"),
        "{main}"
    );

    let plot = session.run(
        "import matplotlib.pyplot as plt\nfig, ax = plt.subplots(figsize=(4, 3), dpi=100)\nax.plot([1, 2, 3], [3, 1, 2])\nprint('plotted')\nplt.show()",
    );
    assert_eq!(plot.done()["exit_code"], 0, "{:?}", plot.error);
    assert_eq!(plot.answers.stdout, "plotted\n");
    assert_eq!(plot.results.len(), 1, "{:?}", plot.results);
    let figure = &plot.results[0];
    assert_eq!(figure["is_main_result"], false);
    let png = base64_decode(figure["data"]["image/png"].as_str().expect("a PNG"));
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "the PNG signature");
    assert_eq!(&png[12..16], b"IHDR");
    let width = u32::from_be_bytes([png[16], png[17], png[18], png[19]]);
    let height = u32::from_be_bytes([png[20], png[21], png[22], png[23]]);
    assert!(
        (200..=450).contains(&width) && (150..=350).contains(&height),
        "{width}x{height}"
    );

    // A figure left open is shown at the end of the cell, then closed.
    let open = session.run("plt.figure()\nplt.plot([1, 2])\nNone");
    assert_eq!(open.results.len(), 1, "{:?}", open.results);
    assert!(open.results[0]["data"]["image/png"].is_string());
    let closed = session.run("len(plt.get_fignums())");
    assert_eq!(closed.main_text(), Some("0"));

    let rich = session.run(
        "class Rich:\n    def _repr_markdown_(self):\n        return '**bold**'\n    def _repr_json_(self):\n        return {'k': [1, 2]}\n    def _repr_svg_(self):\n        return '<svg/>'\ndisplay(Rich())\nprint('between')\n'done'",
    );
    assert_eq!(rich.results.len(), 2, "{:?}", rich.results);
    let shown = &rich.results[0]["data"];
    assert_eq!(rich.results[0]["is_main_result"], false);
    assert_eq!(shown["text/markdown"], "**bold**");
    assert_eq!(shown["application/json"], json!({"k": [1, 2]}));
    assert_eq!(shown["image/svg+xml"], "<svg/>");
    assert_eq!(rich.main_text(), Some("'done'"));
    assert_eq!(rich.answers.stdout, "between\n");
    session.ws.kill_sandbox();
}

#[test]
fn errors_are_structured_with_a_traceback_naming_the_line() {
    let server = TestServer::start(&[]);
    let Created { ws, .. } = create(&server, json!({}));
    let mut session = Session::new(ws);
    let cell = session.run("a = 1\nb = 2\nprint('before')\nc = undefined_name + 1\nprint('after')");
    assert_eq!(cell.done()["exit_code"], 1);
    assert_eq!(cell.done()["reason"], "exited");
    assert_eq!(cell.answers.stdout, "before\n");
    let error = cell.error.as_ref().expect("an execution_error");
    assert_eq!(error["name"], "NameError");
    assert_eq!(error["value"], "name 'undefined_name' is not defined");
    let traceback: Vec<&str> = error["traceback"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(traceback[0], "Traceback (most recent call last):");
    assert!(
        traceback
            .iter()
            .any(|line| line.contains("<cell-1>\", line 4")),
        "{traceback:?}"
    );
    assert!(
        traceback
            .iter()
            .any(|line| line.contains("c = undefined_name + 1")),
        "the source line: {traceback:?}"
    );
    // The state before the error is kept.
    assert_eq!(session.run("a + b").main_text(), Some("3"));
    let syntax = session.run("def broken(:\n    pass");
    assert_eq!(syntax.error.as_ref().unwrap()["name"], "SyntaxError");
    session.ws.kill_sandbox();
}

#[test]
fn an_interrupt_raises_keyboard_interrupt_and_keeps_the_state() {
    let server = TestServer::start(&[]);
    let Created { ws, .. } = create(&server, json!({}));
    let mut session = Session::new(ws);
    session.run("import time\nkept = 42");
    session.ws.request(
        "sleeper",
        json!({"action": "run_code", "code": "print('sleeping', flush=True)\ntime.sleep(100)"}),
    );
    let mut by_id = ById::new();
    session.ws.file_until(&mut by_id, |by_id| {
        by_id
            .get("sleeper")
            .is_some_and(|cell| cell.stdout.contains("sleeping"))
    });
    let process = by_id["sleeper"].process_id.expect("a process id");
    session.ws.request(
        "interrupt",
        json!({"action": "kill_process", "process_id": process}),
    );
    session.ws.file_until(&mut by_id, |by_id| {
        by_id.get("sleeper").is_some_and(Answers::is_done)
    });
    assert!(is_status(
        &by_id["interrupt"].others[0],
        "SANDBOX_EXECUTION_FORCE_KILLED"
    ));
    let sleeper = &by_id["sleeper"];
    let done = sleeper.done.as_ref().unwrap();
    assert_eq!(done["reason"], "killed", "{done}");
    assert_eq!(done["exit_code"], 1, "{done}");
    let error = sleeper
        .others
        .iter()
        .find(|frame| frame["event"] == "execution_error")
        .expect("an execution_error");
    assert_eq!(error["name"], "KeyboardInterrupt");
    assert_eq!(session.run("kept").main_text(), Some("42"));

    // A cell past its timeout is interrupted the same way.
    let slow = session.run_in("time.sleep(30)", json!({"timeout": 1}));
    assert_eq!(slow.done()["reason"], "timeout");
    assert_eq!(slow.error.as_ref().unwrap()["name"], "KeyboardInterrupt");
    // One that ignores the interrupt is killed 2 s later: its context is dead.
    let stubborn = session.run_in(
        "while True:\n    try:\n        time.sleep(30)\n    except KeyboardInterrupt:\n        pass",
        json!({"timeout": 1}),
    );
    assert_eq!(stubborn.done()["reason"], "timeout");
    assert_eq!(stubborn.error.as_ref().unwrap()["name"], "ContextDied");
    let refused = session.run("kept");
    let (status, message) = refusal(&refused).expect("refused");
    assert_eq!(status, "SANDBOX_CODE_CONTEXT_ERROR");
    assert!(
        message.starts_with("context default died (signal 9)"),
        "{message}"
    );
    session.ws.kill_sandbox();
}

#[test]
fn a_dead_context_is_reported_and_can_be_restarted() {
    let server = TestServer::start(&[]);
    let Created { ws, .. } = create(&server, json!({}));
    let mut session = Session::new(ws);
    let context = session.ask(json!({"action": "create_code_context", "cwd": "/tmp"}));
    let context_id = context["context"]["context_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(context["context"]["cwd"], "/tmp", "{context}");
    let scope = json!({"context_id": context_id});
    assert_eq!(
        session
            .run_in("import os\nos.getcwd()", scope.clone())
            .main_text(),
        Some("'/tmp'")
    );
    let died = session.run_in("print('bye', flush=True)\nos._exit(3)", scope.clone());
    assert_eq!(died.done()["reason"], "context_died", "{:?}", died.answers);
    assert_eq!(died.answers.stdout, "bye\n");
    assert_eq!(died.error.as_ref().unwrap()["name"], "ContextDied");
    let list = session.ask(json!({"action": "list_code_contexts"}));
    assert_eq!(list["contexts"][0]["state"], "dead", "{list}");
    assert_eq!(list["contexts"][0]["died"], "exit code 3", "{list}");
    let refused = session.run_in("1", scope.clone());
    let (status, message) = refusal(&refused).expect("refused");
    assert_eq!(status, "SANDBOX_CODE_CONTEXT_ERROR");
    assert_eq!(
        message,
        format!("context {context_id} died (exit code 3); restart it")
    );

    let restarted =
        session.ask(json!({"action": "restart_code_context", "context_id": context_id}));
    assert_eq!(
        restarted["context"]["context_id"],
        json!(context_id),
        "{restarted}"
    );
    assert_eq!(
        session.run_in("x = 5\nx * 2", scope.clone()).main_text(),
        Some("10")
    );
    // A segfault too.
    let crashed = session.run_in("import ctypes\nctypes.string_at(0)", scope.clone());
    assert_eq!(crashed.done()["reason"], "context_died");
    let deleted = session.ask(json!({"action": "delete_code_context", "context_id": context_id}));
    assert_eq!(deleted["event"], "reply", "{deleted}");
    let unknown = session.run_in("1", scope);
    let (status, message) = refusal(&unknown).expect("refused");
    assert_eq!(status, "SANDBOX_CODE_CONTEXT_ERROR");
    assert!(message.contains("no code context"), "{message}");
    session.ws.kill_sandbox();
}

/// A context whose directory does not exist cannot start: its create is the error (naming
/// the directory), and nothing is left behind.
#[test]
fn a_context_in_a_missing_directory_is_refused_at_create() {
    let server = TestServer::start(&[]);
    let Created { ws, .. } = create(&server, json!({}));
    let mut session = Session::new(ws);
    let answer = session.ask(json!({"action": "create_code_context", "cwd": "/no/such/dir"}));
    assert_eq!(answer["status"], "SANDBOX_CODE_CONTEXT_ERROR", "{answer}");
    let message = answer["message"].as_str().unwrap_or_default();
    assert!(message.contains("/no/such/dir"), "{message}");
    let listed = session.ask(json!({"action": "list_code_contexts"}));
    assert_eq!(listed["contexts"], json!([]), "{listed}");
    // A good one still works.
    let context = session.ask(json!({"action": "create_code_context", "cwd": "/tmp"}));
    assert_eq!(context["context"]["cwd"], "/tmp", "{context}");
    session.ws.kill_sandbox();
}

#[test]
fn contexts_are_isolated_and_cells_of_one_context_wait_their_turn() {
    let server = TestServer::start(&[]);
    let Created { ws, .. } = create(&server, json!({}));
    let mut session = Session::new(ws);
    let other = session.ask(json!({"action": "create_code_context"}));
    let other_id = other["context"]["context_id"].as_str().unwrap().to_string();
    session.run("secret = 'default'");
    let there = session.run_in("secret", json!({"context_id": other_id}));
    assert_eq!(there.error.as_ref().unwrap()["name"], "NameError");
    // Two cells sent at once to one context run one after the other, in order.
    session.ws.request(
        "first",
        json!({"action": "run_code", "code": "import time\ntime.sleep(0.5)\norder = ['first']"}),
    );
    session.ws.request(
        "second",
        json!({"action": "run_code", "code": "order.append('second')\norder"}),
    );
    let mut by_id = ById::new();
    session.ws.file_until(&mut by_id, |by_id| {
        ["first", "second"]
            .iter()
            .all(|id| by_id.get(*id).is_some_and(Answers::is_done))
    });
    let second = by_id["second"]
        .others
        .iter()
        .find(|frame| frame["event"] == "result")
        .expect("a result");
    assert_eq!(second["data"]["text/plain"], "['first', 'second']");
    session.ws.kill_sandbox();
}

#[test]
fn a_fifty_megabyte_result_is_refused_cleanly_and_the_context_lives_on() {
    let server = TestServer::start(&[("SANDBOX_MAX_OUTPUT_BYTES", "200000000")]);
    let Created { ws, .. } = create(&server, json!({}));
    let mut session = Session::new(ws);
    let big = session.run(
        "class Big:\n    def _repr_png_(self):\n        return b'\\x89PNG' + bytes(50 * 1024 * 1024)\n    def __repr__(self):\n        return '<Big>'\nBig()",
    );
    assert_eq!(big.done()["exit_code"], 0, "{:?}", big.error);
    let data = &big.results[0]["data"];
    assert!(data.get("image/png").is_none(), "the PNG is not sent");
    let text = data["text/plain"].as_str().unwrap();
    assert!(text.starts_with("<Big>"), "{text}");
    assert!(text.contains("exceeds SANDBOX_MAX_RESULT_BYTES"), "{text}");
    assert_eq!(session.run("1 + 1").main_text(), Some("2"));
    session.ws.kill_sandbox();
}

#[test]
fn results_count_against_the_output_limit() {
    let server = TestServer::start(&[("SANDBOX_MAX_OUTPUT_BYTES", "100000")]);
    let Created { ws, .. } = create(&server, json!({}));
    let mut session = Session::new(ws);
    let cell = session.run("x = 'y' * 300000\nx");
    assert_eq!(cell.done()["reason"], "output_limit", "{:?}", cell.answers);
    assert!(cell.results.is_empty(), "a cut result is not sent");
    assert_eq!(session.run("len(x)").main_text(), Some("300000"));
    session.ws.kill_sandbox();
}

#[test]
fn a_checkpoint_keeps_the_contexts_and_their_state_on_another_instance() {
    let dirs = SharedDirs::new();
    let store_env = dirs.env();
    let env: Vec<(&str, &str)> = store_env
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    let a = TestServer::start(&env);
    let b = TestServer::start(&env);
    let Created {
        ws,
        sandbox_id,
        token,
    } = create(&a, json!({"enable_checkpoint": true}));
    let mut session = Session::new(ws);
    session
        .run("counter = 41\ndef bump():\n    global counter\n    counter += 1\n    return counter");
    let other = session.ask(json!({"action": "create_code_context"}));
    let other_id = other["context"]["context_id"].as_str().unwrap().to_string();
    session.run_in("mine = 'c1 state'", json!({"context_id": other_id}));
    session.ws.checkpoint_to_the_end();
    dirs.wait_lease_released(&sandbox_id);

    let mut ws = connect(b.port, &attach_path(&sandbox_id, &token));
    ws.expect_status("SANDBOX_RESTORING");
    ws.expect_status("SANDBOX_RUNNING");
    let mut session = Session::new(ws);
    assert_eq!(session.run("bump()").main_text(), Some("42"));
    let list = session.ask(json!({"action": "list_code_contexts"}));
    let ids: Vec<&str> = list["contexts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|context| context["context_id"].as_str())
        .collect();
    assert_eq!(ids, ["c1", "default"], "{list}");
    assert_eq!(
        session
            .run_in("mine", json!({"context_id": other_id}))
            .main_text(),
        Some("'c1 state'")
    );
    // A new context does not take a name the restored ones have.
    let third = session.ask(json!({"action": "create_code_context"}));
    assert_eq!(third["context"]["context_id"], "c2", "{third}");
    session.ws.kill_sandbox();
}

#[test]
fn reconnect_replays_what_a_cell_did_while_the_client_was_away() {
    let server = TestServer::start(&[]);
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&server, json!({}));
    ws.request(
        "away",
        json!({"action": "run_code", "code": "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.3)\n'end'"}),
    );
    let mut by_id = ById::new();
    ws.file_until(&mut by_id, |by_id| {
        by_id
            .get("away")
            .is_some_and(|cell| cell.stdout.contains('0'))
    });
    ws.drop_abruptly();
    let ws = ws::attach(&server, &sandbox_id, &token);
    let mut session = Session::new(ws);
    session.ws.request("back", json!({"action": "reconnect"}));
    let replayed = session.collect("away");
    assert!(
        replayed.answers.stdout.ends_with("2\n"),
        "{:?}",
        replayed.answers
    );
    assert_eq!(replayed.main_text(), Some("'end'"));
    assert_eq!(replayed.done()["reason"], "exited");
    session.ws.kill_sandbox();
}

#[test]
fn the_context_keeps_to_the_memory_limit_of_every_process() {
    let server = TestServer::start(&[("SANDBOX_PROCESS_MEMORY_MB", "300")]);
    let Created { ws, .. } = create(&server, json!({}));
    let mut session = Session::new(ws);
    session.run("kept = 'still here'");
    let big = session.run("block = bytearray(600 * 1024 * 1024)");
    assert_eq!(big.error.as_ref().expect("an error")["name"], "MemoryError");
    assert_eq!(session.run("kept").main_text(), Some("'still here'"));
    session.ws.kill_sandbox();
}

#[test]
fn a_filesystem_snapshot_keeps_files_not_contexts() {
    let dirs = SharedDirs::new();
    let store_env = dirs.env();
    let env: Vec<(&str, &str)> = store_env
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    let server = TestServer::start(&env);
    let Created { ws, .. } = create(&server, json!({}));
    let mut session = Session::new(ws);
    session.run("open('/root/kept.txt', 'w').write('file')\nstate = 'in memory'");
    let name = format!("ci-{}", std::process::id());
    session
        .ws
        .send(json!({"action": "snapshot_filesystem", "name": name}));
    session
        .ws
        .expect_status("SANDBOX_FILESYSTEM_SNAPSHOT_CREATING");
    session
        .ws
        .expect_status("SANDBOX_FILESYSTEM_SNAPSHOT_CREATED");
    // The sandbox that took it goes on with its context.
    assert_eq!(session.run("state").main_text(), Some("'in memory'"));
    session.ws.kill_sandbox();

    let Created { ws, .. } = create(&server, json!({"filesystem_snapshot_name": name}));
    let mut fresh = Session::new(ws);
    let list = fresh.ask(json!({"action": "list_code_contexts"}));
    assert_eq!(list["contexts"], json!([]), "{list}");
    let cell = fresh.run("print(open('/root/kept.txt').read())\nstate");
    assert_eq!(cell.answers.stdout, "file\n");
    assert_eq!(cell.error.as_ref().expect("an error")["name"], "NameError");
    fresh.ws.kill_sandbox();
}
