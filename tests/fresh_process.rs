//! Executions served by processes started ahead of them (agent/src/standby.rs: a child of the
//! Python forkserver, a pre-started bash) are fresh processes: against the real server, runsc
//! and image, each is compared with the same code run by a freshly spawned `python3 -c` /
//! `bash -c` in the same sandbox (a request the standbys do not serve: a `PYTHON*` variable for
//! python, any variable for bash). Globals, modules, cwd, environment, rlimits, signal
//! dispositions, descriptors, stdio, exit codes, tracebacks, the end by a signal and stdin are
//! the same; a package or `.pth` file installed by an earlier execution is importable; nothing
//! of an earlier execution is visible. What is documented as different (docs/performance.md)
//! is left out of the comparison and checked to be what the documentation says.
//!
//!     cargo test --test fresh_process -- --test-threads=2

mod common;
mod ws;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::TestServer;
use serde_json::{json, Value};
use ws::{assert_exited, create, Created, ExecResult, Ws};

/// Makes a python request go to a freshly spawned interpreter (the forkserver's children do
/// not serve `PYTHON*` variables: the interpreter reads them at start-up). Not a variable
/// Python knows, so it changes nothing else.
const FRESH_PYTHON: (&str, &str) = ("PYTHONFRESHPROBE", "1");

/// Wait (bounded) until the forkserver has a child waiting, so that the next python request
/// is served by it; fails the test if none comes. The child's command line is the forkserver's.
fn ensure_python_child(ws: &mut Ws) {
    let result = ws.run(
        "bash",
        "for i in $(seq 200); do \
           [ \"$(ps -eo args | grep -c '[_]sandbox_forkserver')\" -ge 2 ] && exit 0; sleep 0.05; \
         done; ps -ef; exit 1",
    );
    assert_exited(&result.done, 0);
}

/// Wait (bounded) until the agent has a bash started ahead of the next request (it starts one
/// once idle for a moment), so that the next bash request is served by it. Checked from
/// python, which leaves the bash alone.
fn ensure_bash_standby(ws: &mut Ws) {
    let result = ws.run(
        "python",
        "import subprocess, sys, time\n\
         for _ in range(200):\n\
         \x20   args = subprocess.run(['ps', '-eo', 'args'], capture_output=True, text=True).stdout\n\
         \x20   if 'read -r -N ' + '10' in args: sys.exit(0)\n\
         \x20   time.sleep(0.05)\n\
         sys.exit(1)",
    );
    assert_exited(&result.done, 0);
}

/// Run bash code once in the pre-started bash and once fresh; both results.
fn bash_both_ways(ws: &mut Ws, code: &str) -> (ExecResult, ExecResult) {
    ensure_bash_standby(ws);
    let pre_started = ws.run("bash", code);
    let fresh = ws.run_with("bash", code, json!({"env": {"PROBE_FRESH": "1"}}));
    (pre_started, fresh)
}

/// Run python code once in the forkserver's child and once fresh; both results.
fn python_both_ways(ws: &mut Ws, code: &str, extra: Value) -> (ExecResult, ExecResult) {
    ensure_python_child(ws);
    let forked = ws.run_with("python", code, extra.clone());
    let mut fresh_extra = extra;
    fresh_extra["env"][FRESH_PYTHON.0] = json!(FRESH_PYTHON.1);
    let fresh = ws.run_with("python", code, fresh_extra);
    (forked, fresh)
}

/// What a client sees of an execution.
fn visible(result: &ExecResult) -> Value {
    json!({
        "stdout": result.stdout,
        "stderr": result.stderr,
        "exit_code": result.done["exit_code"],
        "signal": result.done["signal"],
        "reason": result.done["reason"],
    })
}

/// Prints, as JSON, what a fresh `python3 -c` process is made of. `served_by` says whose child
/// it is (the forkserver's, or the agent's: PID 1), which is the documented difference.
const PYTHON_PROBE: &str = r#"
import sys
start_modules = sorted(sys.modules)
start_main = sorted((name, repr(value)) for name, value in globals().items() if name not in ("sys", "start_modules"))
import gc, json, os, resource, signal, stat
parent_args = open("/proc/%d/cmdline" % os.getppid(), "rb").read()
def kind(fd):
    mode = os.fstat(fd).st_mode
    return "pipe" if stat.S_ISFIFO(mode) else oct(mode)
probe = {
    "served_by": "forkserver" if b"_sandbox_forkserver" in parent_args else "ppid %d" % os.getppid(),
    "modules": start_modules,
    "main": start_main,
    "argv": sys.argv,
    "orig_argv": sys.orig_argv,
    "path": sys.path,
    "flags": repr(sys.flags),
    "cwd": os.getcwd(),
    "environ": [(name, value) for name, value in os.environ.items() if name != "PYTHONFRESHPROBE"],
    "rlimits": {name: resource.getrlimit(getattr(resource, name)) for name in dir(resource) if name.startswith("RLIMIT_")},
    "signals": {signal.Signals(number).name: repr(signal.getsignal(number)) for number in signal.valid_signals() if number < signal.SIGRTMIN},
    "blocked": sorted(int(number) for number in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
    "fds": sorted(os.listdir("/proc/self/fd")),
    "stdio": [(kind(stream.fileno()), stream.encoding, stream.errors, stream.line_buffering, stream.write_through, stream.isatty()) for stream in (sys.stdin, sys.stdout, sys.stderr)],
    "own_group": os.getpgrp() == os.getpid(),
    "ids": [os.getresuid(), os.getresgid(), os.getgroups()],
    "umask": os.umask(0o022),
    "excepthook": sys.excepthook is sys.__excepthook__,
    "recursionlimit": sys.getrecursionlimit(),
    "gc": [gc.isenabled(), gc.get_threshold()],
    "threads": __import__("threading").active_count(),
    "pid": os.getpid(),
}
print(json.dumps(probe))
"#;

fn probe(result: &ExecResult) -> Value {
    assert_exited(&result.done, 0);
    assert_eq!(result.stderr, "", "{result:?}");
    serde_json::from_str(&result.stdout).unwrap_or_else(|_| panic!("{result:?}"))
}

#[test]
fn a_forkserver_child_is_made_like_a_fresh_python_process() {
    let server = TestServer::start(&[]);
    let Created { mut ws, .. } = create(&server, json!({}));
    // A few earlier executions leave state behind in their own processes.
    let result = ws.run(
        "python",
        "import json, signal, os\nleft_over = 1\nos.environ['LEAK'] = '1'\nos.chdir('/tmp')\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)",
    );
    assert_exited(&result.done, 0);
    let mut pids = Vec::new();
    for extra in [
        json!({}),
        json!({"cwd": "/tmp", "env": {"PROBE_A": "1", "B": "é ="}}),
    ] {
        let (forked, fresh) = python_both_ways(&mut ws, PYTHON_PROBE, extra.clone());
        let (mut forked, mut fresh) = (probe(&forked), probe(&fresh));
        assert_eq!(forked["served_by"], "forkserver", "{forked:#}");
        assert_eq!(fresh["served_by"], "ppid 1", "{fresh:#}");
        pids.push(forked["pid"].clone());
        pids.push(fresh["pid"].clone());
        for probe in [&mut forked, &mut fresh] {
            let object = probe.as_object_mut().unwrap();
            object.remove("served_by");
            object.remove("pid");
        }
        assert_eq!(forked, fresh, "with {extra}");
        // And what it is, beyond being the same: nothing left over, only 0, 1, 2 (and the
        // listing's own descriptor) open, its own process group.
        let names: Vec<&str> = forked["main"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pair| pair[0].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "__annotations__",
                "__builtins__",
                "__doc__",
                "__loader__",
                "__name__",
                "__package__",
                "__spec__"
            ]
        );
        assert_eq!(forked["fds"], json!(["0", "1", "2", "3"]));
        assert_eq!(forked["own_group"], true);
        assert_eq!(forked["argv"], json!(["-c"]));
        assert_eq!(forked["signals"]["SIGTERM"], "<Handlers.SIG_DFL: 0>");
        assert!(!forked["environ"].to_string().contains("LEAK"));
    }
    assert_eq!(forked_cwd_probe(&mut ws), "/root\n");
    pids.sort_by_key(|pid| pid.as_i64());
    pids.dedup();
    assert_eq!(
        pids.len(),
        4,
        "every execution is a process of its own: {pids:?}"
    );
    ws.kill_sandbox();
}

fn forked_cwd_probe(ws: &mut Ws) -> String {
    ensure_python_child(ws);
    let result = ws.run("python", "import os; print(os.getcwd())");
    assert_exited(&result.done, 0);
    result.stdout
}

#[test]
fn python_exit_codes_tracebacks_signals_and_stdin_are_those_of_a_fresh_process() {
    let server = TestServer::start(&[]);
    let Created { mut ws, .. } = create(&server, json!({}));
    let cases: [(&str, i64, Option<i64>); 10] = [
        ("print('out'); import sys; print('err', file=sys.stderr)", 0, None),
        ("import sys; sys.exit(3)", 3, None),
        ("raise SystemExit('bye')", 1, None),
        ("import os; os._exit(4)", 4, None),
        ("def f():\n    1/0\nf()", 1, None),
        ("x = (", 1, None),
        ("raise KeyboardInterrupt", 130, Some(2)),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 137, Some(9)),
        ("import sys\ndef hook(*a): print('hooked', a[0].__name__)\nsys.excepthook = hook\nraise ValueError(1)", 1, None),
        ("try:\n    1/0\nexcept Exception as e:\n    raise RuntimeError('again') from e", 1, None),
    ];
    for (code, exit_code, signal) in cases {
        let (forked, fresh) = python_both_ways(&mut ws, code, json!({}));
        assert_eq!(visible(&forked), visible(&fresh), "{code:?}");
        assert_eq!(forked.done["exit_code"], exit_code, "{code:?}: {forked:?}");
        assert_eq!(forked.done["signal"], json!(signal), "{code:?}: {forked:?}");
    }
    // The traceback shows the user's frames only, as `python3 -c` does.
    let (forked, _) = python_both_ways(&mut ws, "def f():\n    1/0\nf()", json!({}));
    assert_eq!(
        forked.stderr,
        "Traceback (most recent call last):\n  File \"<string>\", line 3, in <module>\n  \
         File \"<string>\", line 2, in f\nZeroDivisionError: division by zero\n"
    );
    // Stdin reaches the child like a fresh process's.
    ensure_python_child(&mut ws);
    ws.start("python", "name = input()\nprint('Hello, ' + name)");
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    ws.send(json!({"event": "stdin", "data": "World\n"}));
    let result = ws.collect_until_done();
    assert_exited(&result.done, 0);
    assert_eq!(result.stdout, "Hello, World\n");
    ws.kill_sandbox();
}

/// A wheel of one module (`tinypkg/__init__.py` with `VALUE`), written with the host's
/// python3 and its standard library only, into `dir`.
fn build_tiny_wheel(dir: &Path) -> PathBuf {
    const SCRIPT: &str = r#"
import base64, hashlib, sys, zipfile
out = sys.argv[1]
files = {
    "tinypkg/__init__.py": "VALUE = 'installed'\n",
    "tinypkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n",
    "tinypkg-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
with zipfile.ZipFile(out, "w") as whl:
    for name, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append("%s,sha256=%s,%d" % (name, digest, len(data)))
        whl.writestr(name, data)
    record.append("tinypkg-1.0.dist-info/RECORD,,")
    whl.writestr("tinypkg-1.0.dist-info/RECORD", "\n".join(record) + "\n")
"#;
    let wheel = dir.join("tinypkg-1.0-py3-none-any.whl");
    let status = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(&wheel)
        .status()
        .expect("run the host's python3 to build a wheel");
    assert!(status.success(), "building the test wheel failed: {status}");
    wheel
}

/// A directory removed on drop (after the server, declared after it).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn what_an_earlier_execution_installed_is_importable_by_the_next_forked_child() {
    let wheelhouse = TempDir(PathBuf::from(format!(
        "/tmp/crs-fresh-wheelhouse-{}",
        std::process::id()
    )));
    std::fs::create_dir_all(&wheelhouse.0).expect("create the wheelhouse");
    build_tiny_wheel(&wheelhouse.0);
    let server = TestServer::start(&[
        ("SANDBOX_EGRESS", "off"),
        ("SANDBOX_WHEELHOUSE", wheelhouse.0.to_str().unwrap()),
    ]);
    let Created { mut ws, .. } = create(&server, json!({}));
    let site = "/usr/local/lib/python3.11/dist-packages";
    // The waiting child was forked before any of this existed.
    ensure_python_child(&mut ws);
    let result = ws.run("bash", "pip install --quiet tinypkg");
    assert_exited(&result.done, 0);
    let check = "import os, tinypkg\nprint(tinypkg.VALUE, b'_sandbox_forkserver' in open('/proc/%d/cmdline' % os.getppid(), 'rb').read())";
    let result = ws.run("python", check);
    assert_exited(&result.done, 0);
    assert_eq!(result.stdout, "installed True\n", "{result:?}");

    // A plain module dropped into the site directory, and one in a directory a new .pth file
    // names (read only at an interpreter's start-up): both importable, as in a fresh process.
    ensure_python_child(&mut ws);
    let result = ws.run(
        "bash",
        &format!(
            "echo 'VALUE = 7' > {site}/p15_plain.py && mkdir -p /opt/p15extra && \
             echo 'VALUE = 8' > /opt/p15extra/p15_pth.py && echo /opt/p15extra > {site}/p15.pth"
        ),
    );
    assert_exited(&result.done, 0);
    let code = "import sys, p15_plain, p15_pth\nprint(p15_plain.VALUE, p15_pth.VALUE, '/opt/p15extra' in sys.path)";
    let (forked, fresh) = python_both_ways(&mut ws, code, json!({}));
    assert_eq!(visible(&forked), visible(&fresh));
    assert_eq!(forked.stdout, "7 8 True\n", "{forked:?}");
    // After the .pth file, the forkserver started again: later children see it from start-up.
    let (forked, fresh) = python_both_ways(&mut ws, PYTHON_PROBE, json!({}));
    let (mut forked, mut fresh) = (probe(&forked), probe(&fresh));
    assert_eq!(forked["served_by"], "forkserver");
    for probe in [&mut forked, &mut fresh] {
        let object = probe.as_object_mut().unwrap();
        object.remove("served_by");
        object.remove("pid");
    }
    assert_eq!(forked, fresh);
    ws.kill_sandbox();
}

/// What a fresh `bash -c` is made of, minus what is documented to differ: the variables the
/// stub had to set (`PIPESTATUS` is set by any command, `SECONDS` by being reset, `_` by the
/// last command) and those that change by themselves.
const BASH_PROBE: &str = r#"echo "underscore=$_ zero=$0 argc=$# flags=$-"
declare -p | grep -v -E '^declare -[-a-zA-Z]* (BASHPID|BASH_COMMAND|EPOCHREALTIME|EPOCHSECONDS|PPID|RANDOM|SRANDOM|SECONDS|PIPESTATUS|_|PROBE_FRESH)(=|$)'
shopt -p; set -o; ulimit -a; trap -p; umask; id
for fd in /proc/$$/fd/*; do if [ -p "$fd" ]; then echo "${fd##*/} pipe"; else echo "${fd##*/} other"; fi; done
echo "group=$(( $(ps -o pgid= -p $$) == $$ ))"
"#;

#[test]
fn a_pre_started_bash_is_made_like_a_fresh_bash() {
    let server = TestServer::start(&[]);
    let Created { mut ws, .. } = create(&server, json!({}));
    let result = ws.run(
        "bash",
        "X=1; export LEAK=1; cd /tmp; trap 'echo bye' EXIT; f() { :; }",
    );
    assert_exited(&result.done, 0);
    assert_eq!(result.stdout, "bye\n");
    // The first is served by the standby (its command line is the stub's), the second, with a
    // variable, is spawned fresh. (The pattern is built so that the probe's own command line
    // does not contain it.)
    let code = format!(
        "{BASH_PROBE}n=1$((0)); tr '\\0' ' ' < /proc/$$/cmdline | grep -c \"read -r -N $n\""
    );
    let (pre_started, fresh) = bash_both_ways(&mut ws, &code);
    assert_exited(&pre_started.done, 0);
    let (probe, served) = pre_started.stdout.trim_end().rsplit_once('\n').unwrap();
    let (fresh_probe, fresh_served) = fresh.stdout.trim_end().rsplit_once('\n').unwrap();
    assert_eq!(
        (served, fresh_served),
        ("1", "0"),
        "{pre_started:?}\n{fresh:?}"
    );
    assert_eq!(probe, fresh_probe);
    assert!(
        probe.starts_with("underscore=/bin/bash zero=/bin/bash argc=0 flags=hBc\n"),
        "{probe}"
    );
    assert!(
        !probe.contains("LEAK") && !probe.contains("declare -- X="),
        "{probe}"
    );
    // 0, 1, 2 are the execution's pipes; 3 is the directory the glob reads (the stub's request
    // pipe, which was 3, is closed).
    assert!(
        probe.ends_with("0 pipe\n1 pipe\n2 pipe\n3 other\ngroup=1"),
        "{probe}"
    );
    // SECONDS counts from the request, not from when the shell was started ahead of it.
    ensure_bash_standby(&mut ws);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let result = ws.run("bash", "echo $SECONDS");
    assert!(
        ["0\n", "1\n"].contains(&result.stdout.as_str()),
        "{result:?}"
    );

    // Exit codes, signals, stdin, and the script as `bash -c` sees it.
    for (code, exit_code, signal) in [
        ("exit 3", 3, None),
        ("false", 1, None),
        ("kill -9 $$", 137, Some(9)),
        (
            "echo \"$BASH_EXECUTION_STRING\"; printf '%s|' \"$@\"",
            0,
            None,
        ),
        ("", 0, None),
        (
            "echo é€😀 ${#BASH_EXECUTION_STRING}\n\necho $LINENO",
            0,
            None,
        ),
        ("return 3", 2, None),
        ("nosuchcommand", 127, None),
    ] {
        let (pre_started, fresh) = bash_both_ways(&mut ws, code);
        assert_eq!(visible(&pre_started), visible(&fresh), "{code:?}");
        assert_eq!(pre_started.done["exit_code"], exit_code, "{code:?}");
        assert_eq!(pre_started.done["signal"], json!(signal), "{code:?}");
    }
    ensure_bash_standby(&mut ws);
    ws.start("bash", "read name; echo \"Hello, $name\"");
    ws.expect_status("SANDBOX_EXECUTION_RUNNING");
    ws.send(json!({"event": "stdin", "data": "World\n"}));
    let result = ws.collect_until_done();
    assert_eq!(result.stdout, "Hello, World\n");
    // The documented difference: a syntax error names `eval`, not `-c`.
    let (pre_started, fresh) = bash_both_ways(&mut ws, "echo a; foo(");
    assert_eq!(pre_started.done["exit_code"], 2);
    assert_eq!(fresh.done["exit_code"], 2);
    assert_eq!(
        pre_started.stderr,
        fresh.stderr.replace("/bin/bash: -c: ", "/bin/bash: eval: ")
    );
    ws.kill_sandbox();
}
