//! User code cannot speak for the agent (docs/security.md, "The agent's channel"): against the
//! real server, runsc and sandbox image, code in a sandbox tries every way we know to reach the
//! agent (PID 1) and its pipes to the server: forge output and exit frames on `/proc/1/fd/1`,
//! read the server's frames from `/proc/1/fd/0`, write the sandbox log on `/proc/1/fd/2`, take
//! the pipes over with chmod/chown, ptrace, `/proc/1/mem`, and signals. Each attempt must fail,
//! the execution's output and exit code must be the true ones, and the sandbox must keep working,
//! also after a checkpoint is restored and in a sandbox started from a snapshot.
//!
//!     cargo test --test agent_isolation -- --test-threads=2

mod common;
mod ws;

use std::path::PathBuf;

use common::TestServer;
use serde_json::{json, Value};
use ws::{assert_exited, attach_path, connect, create, Created, ExecResult, Ws};

/// Every attempt, one line each: `<what>: blocked (<errno name>)` when refused for lack of
/// permission (EACCES, EPERM), otherwise `SUCCEEDED` or `FAILED OTHERWISE (<errno name>)`.
/// Frames are well formed (`agent_protocol`): stdout "FORGED" then exit code 42, for every
/// execution id a sandbox of a test could be at. Exits 7 after the attempts.
const PYTHON_ATTEMPTS: &str = r#"
import ctypes, errno, os, signal, struct

def frame(kind, exec_id, payload):
    return struct.pack('<I', 5 + len(payload)) + bytes([kind]) + struct.pack('<I', exec_id) + payload

forged = b''.join(frame(67, i, b'FORGED\n') + frame(70, i, struct.pack('<i', 42)) for i in range(64))
libc = ctypes.CDLL(None, use_errno=True)

def attempt(what, action):
    try:
        action()
    except OSError as error:
        name = errno.errorcode.get(error.errno, str(error.errno))
        # Refused for lack of permission; any other failure means the way was open.
        verdict = 'blocked' if error.errno in (errno.EACCES, errno.EPERM) else 'FAILED OTHERWISE'
        print(f'{what}: {verdict} ({name})', flush=True)
    else:
        print(f'{what}: SUCCEEDED', flush=True)

def syscall(number, *args):
    def call():
        if libc.syscall(number, *args) == -1:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
    return call

def write_to(path, data):
    def call():
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, data)
    return call

def read_from(path):
    def call():
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        os.read(fd, 65536)
    return call

# The agent's pipes to the server, and the sandbox log: 0, 1, 2 and their duplicates.
server_fds = sorted(int(fd) for fd in os.listdir('/proc/1/fd')
                    if os.readlink(f'/proc/1/fd/{fd}').startswith('host:'))
assert {0, 1, 2} <= set(server_fds), server_fds
for fd in server_fds:
    attempt(f'write /proc/1/fd/{fd}', write_to(f'/proc/1/fd/{fd}', forged))
    attempt(f'read /proc/1/fd/{fd}', read_from(f'/proc/1/fd/{fd}'))
for fd in (0, 1, 2):
    attempt(f'chmod /proc/1/fd/{fd}', lambda: os.chmod(f'/proc/1/fd/{fd}', 0o666))
    attempt(f'chown /proc/1/fd/{fd}', lambda: os.chown(f'/proc/1/fd/{fd}', 0, 0))
attempt('write /proc/1/mem', write_to('/proc/1/mem', b'\0'))
attempt('ptrace attach 1', syscall(101, 16, 1, 0, 0))
attempt('ptrace seize 1', syscall(101, 0x4206, 1, 0, 0))
for sig in (signal.SIGSTOP, signal.SIGTERM, signal.SIGKILL):
    attempt(f'kill 1 {sig.name}', lambda: os.kill(1, sig))
print('done', flush=True)
raise SystemExit(7)
"#;

/// The same from bash (its own redirections and `kill`); exits 3.
const BASH_ATTEMPTS: &str = r#"
forged='\x0c\x00\x00\x00\x43\x01\x00\x00\x00FORGED\n'
for fd in 0 1 2; do
  if printf "$forged" 2>/dev/null >/proc/1/fd/$fd; then echo "write /proc/1/fd/$fd: SUCCEEDED"; else echo "write /proc/1/fd/$fd: blocked"; fi
  # Only a refused open counts (exit 1); an open that hangs (124) got through.
  timeout 5 bash -c 'exec 9<"$0"' /proc/1/fd/$fd 2>/dev/null
  if [ $? = 1 ]; then echo "read /proc/1/fd/$fd: blocked"; else echo "read /proc/1/fd/$fd: SUCCEEDED"; fi
done
for sig in STOP TERM KILL; do
  if kill -$sig 1 2>/dev/null; then echo "kill 1 $sig: SUCCEEDED"; else echo "kill 1 $sig: blocked"; fi
done
echo done
exit 3
"#;

/// Run the attempts in `language` and assert they all failed and the execution ended as it
/// really did. `extra` goes into the execution request.
fn assert_attempts_fail(ws: &mut Ws, language: &str, extra: Value) {
    let (code, exit_code) = match language {
        "python" => (PYTHON_ATTEMPTS, 7),
        _ => (BASH_ATTEMPTS, 3),
    };
    let result = ws.run_with(language, code, extra);
    assert_all_blocked(&result);
    assert_exited(&result.done, exit_code);
}

fn assert_all_blocked(result: &ExecResult) {
    let lines: Vec<&str> = result.stdout.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"done"),
        "the attempts did not run to the end: {result:#?}"
    );
    assert!(lines.len() > 5, "too few attempts ran: {result:#?}");
    for line in &lines[..lines.len() - 1] {
        assert!(line.contains(": blocked"), "{line} (all: {result:#?})");
    }
    assert!(!result.stdout.contains("FORGED"), "{result:#?}");
    assert_eq!(result.stderr, "", "{result:#?}");
}

/// The sandbox still runs code, with true output and exit codes.
fn assert_still_works(ws: &mut Ws) {
    let result = ws.run("bash", "echo still here; exit 5");
    assert_eq!(result.stdout, "still here\n");
    assert_exited(&result.done, 5);
}

#[test]
fn user_code_cannot_forge_frames_read_the_server_or_kill_and_trace_the_agent() {
    let server = TestServer::start(&[]);
    let Created { mut ws, .. } = create(&server, json!({}));
    // The standby interpreter, a fresh interpreter (a PYTHON* variable keeps the standby out)
    // and bash: the agent starts each differently.
    assert_attempts_fail(&mut ws, "python", json!({}));
    assert_attempts_fail(&mut ws, "python", json!({"env": {"PYTHONNOUSERSITE": "1"}}));
    assert_attempts_fail(&mut ws, "bash", json!({}));
    assert_still_works(&mut ws);
    ws.kill_sandbox();
    server.assert_healthy();
    // The forged frames reached neither the server nor its log.
    assert!(!server.log().contains("FORGED"), "{}", server.log());
}

#[test]
fn user_processes_are_plain_root_without_capabilities_or_agent_descriptors() {
    let server = TestServer::start(&[]);
    let Created { mut ws, .. } = create(&server, json!({}));
    let identity = "grep -E '^(Uid|Gid|CapInh|CapPrm|CapEff|CapBnd|CapAmb):' /proc/self/status";
    let expected = "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nCapInh:\t0000000000000000\n\
                    CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n\
                    CapBnd:\t0000000000000000\n";
    let result = ws.run("bash", identity);
    assert_exited(&result.done, 0);
    assert!(
        result.stdout.starts_with(expected),
        "{:?}\nexpected {expected:?}",
        result.stdout
    );
    // Only stdin, stdout, stderr, and the descriptor the listing itself opens.
    let result = ws.run("bash", "ls /proc/self/fd | tr '\\n' ' '");
    assert_exited(&result.done, 0);
    assert_eq!(result.stdout, "0 1 2 3 ");
    for extra in [json!({}), json!({"env": {"PYTHONNOUSERSITE": "1"}})] {
        let result = ws.run_with(
            "python",
            "import os; print(sorted(map(int, os.listdir('/proc/self/fd'))), os.getresuid())",
            extra,
        );
        assert_exited(&result.done, 0);
        assert_eq!(result.stdout, "[0, 1, 2, 3] (0, 0, 0)\n");
    }
    // What root needs still works: writing where only root may, in its home.
    let result = ws.run(
        "bash",
        "echo x > /usr/local/lib/probe && echo y > /root/probe && cat /usr/local/lib/probe /root/probe",
    );
    assert_exited(&result.done, 0);
    assert_eq!(result.stdout, "x\ny\n");
    ws.kill_sandbox();
}

/// A temporary directory for the checkpoint and snapshot stores; removed on drop (after the
/// server, which is declared after it).
struct Store(PathBuf);

impl Drop for Store {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn restored_and_snapshot_sandboxes_keep_their_agent_out_of_reach() {
    let store = Store(PathBuf::from(format!(
        "/tmp/crs-agentiso-test-{}",
        std::process::id()
    )));
    let checkpoints = store.0.join("checkpoints");
    let snapshots = store.0.join("snapshots");
    for dir in [&checkpoints, &snapshots] {
        std::fs::create_dir_all(dir).expect("create the store");
    }
    let server = TestServer::start(&[
        ("CHECKPOINT_AND_RESTORE_PATH", checkpoints.to_str().unwrap()),
        ("FILESYSTEM_SNAPSHOT_PATH", snapshots.to_str().unwrap()),
    ]);

    // Checkpoint, then restore: the agent comes back from the image with new pipes.
    let Created {
        mut ws,
        sandbox_id,
        token,
    } = create(&server, json!({"enable_checkpoint": true}));
    assert_attempts_fail(&mut ws, "bash", json!({}));
    ws.checkpoint_to_the_end();
    let mut ws = connect(server.port, &attach_path(&sandbox_id, &token));
    ws.expect_status("SANDBOX_RESTORING");
    ws.expect_status("SANDBOX_RUNNING");
    assert_attempts_fail(&mut ws, "python", json!({}));
    assert_attempts_fail(&mut ws, "bash", json!({}));
    assert_still_works(&mut ws);

    // A snapshot restores the sandbox in place; a new sandbox starts from it.
    ws.send(json!({"action": "snapshot_filesystem", "name": "agentiso"}));
    ws.expect_status("SANDBOX_FILESYSTEM_SNAPSHOT_CREATING");
    ws.expect_status("SANDBOX_FILESYSTEM_SNAPSHOT_CREATED");
    assert_attempts_fail(&mut ws, "python", json!({}));
    ws.kill_sandbox();
    let Created { mut ws, .. } = create(&server, json!({"filesystem_snapshot_name": "agentiso"}));
    assert_attempts_fail(&mut ws, "python", json!({}));
    assert_attempts_fail(&mut ws, "bash", json!({}));
    assert_still_works(&mut ws);
    ws.kill_sandbox();
    server.assert_healthy();
}
