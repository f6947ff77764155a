//! Terminals (issue 19): keystroke echo, and output through a pseudo-terminal next to the
//! ceiling inside the same sandbox (`cargo bench --bench runtime -- terminal`).
//!
//! The ceiling is what a program in the sandbox gets from a pseudo-terminal by itself: Python
//! opens one, runs the same writer as ours on its slave side, and reads the master into one
//! preallocated 1 MiB buffer until every byte came. Nothing of ours is on that path, so our
//! number over it is what the agent, the server and the WebSocket cost on top of runsc's
//! pseudo-terminal. The two alternate in one sandbox, so that both see the same machine.

use std::io;

use serde_json::Value;

use crate::check;
use crate::direct::Env;
use crate::report::{Report, Row, Unit};
use crate::server::Server;
use crate::websocket::Session;

/// Bytes the writer writes, for ours and the ceiling: enough for seconds of output at the
/// 10-20 MB/s a terminal gives under runsc, little enough that the section's six runs stay
/// within a full bench's watchdog on a loaded machine.
const TERMINAL_WRITER_BYTES: u64 = 100_000_000;

/// The writer on the terminal, ours and the ceiling's: `yes`'s lines of 37 bytes through
/// `head` (the terminal turns each "\n" into "\r\n").
fn writer() -> String {
    format!("yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c {TERMINAL_WRITER_BYTES}")
}

/// The bytes that come out of the terminal: one more per line ("\r\n").
fn terminal_bytes() -> u64 {
    TERMINAL_WRITER_BYTES + TERMINAL_WRITER_BYTES / 37
}

/// The ceiling's program (Python, as a pipe process): prints one JSON line with the seconds,
/// the bytes and the number of reads the master took.
fn ceiling_program() -> String {
    format!(
        r#"
import json, os, signal, subprocess, time
expected = {expected}
master, slave = os.openpty()
buffer = bytearray(1 << 20)
# runsc's master never reports the slave's end: a bound instead of waiting for EOF (the
# reads block, one system call each, the least a reader can do).
signal.alarm(240)
started = time.monotonic()
writer = subprocess.Popen(["bash", "-c", {writer:?}], stdin=slave, stdout=slave, stderr=slave)
os.close(slave)
total = reads = largest = 0
while total < expected:
    n = os.readv(master, [buffer])
    total += n
    reads += 1
    largest = max(largest, n)
seconds = time.monotonic() - started
signal.alarm(0)
writer.wait()
print(json.dumps({{"seconds": seconds, "bytes": total, "reads": reads, "largest": largest}}))
"#,
        expected = terminal_bytes(),
        writer = writer(),
    )
}

pub fn bench_terminal(env: &Env, report: &mut Report) -> io::Result<()> {
    let server = Server::start(
        env,
        "terminal",
        1,
        &[("SANDBOX_MAX_OUTPUT_BYTES", "1000000000")],
    )?;
    let mut session = Session::create(server.port)?;

    session.terminal_echo(20)?; // warm-up
    let echo = session.terminal_echo(200)?;
    // The table shows median and p90; the goal names p99 (issue 19: p50 <= 2 ms, p99 <= 5 ms).
    let mut sorted = echo.clone();
    sorted.sort_by(f64::total_cmp);
    let p99 = sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)];
    report.rows.push(Row::latency(
        &format!(
            "terminal: keystroke echo, one byte of stdin to its echo (`cat` on a pty), 200 keystrokes (p99 {:.2} ms)",
            p99 * 1000.0
        ),
        &echo,
        "",
        None,
    ));

    let program = ceiling_program();
    let mut ours = Vec::new();
    let mut ceiling = Vec::new();
    let mut ceiling_reads = Vec::new();
    let mut frames = Vec::new();
    for _ in 0..3 {
        let (stdout, ok) = session.run_stdout("python", &program)?;
        let result: Value = serde_json::from_str(stdout.trim())
            .map_err(|error| io::Error::other(format!("ceiling: {error}: {stdout:?}")))?;
        let bytes = result["bytes"].as_u64().unwrap_or(0);
        check(ok && bytes == terminal_bytes(), || {
            format!("the ceiling program read {bytes} bytes: {stdout}")
        })?;
        let seconds = result["seconds"].as_f64().unwrap_or(f64::NAN);
        ceiling.push(bytes as f64 / seconds / 1e6);
        let reads = result["reads"].as_u64().unwrap_or(1).max(1);
        ceiling_reads.push((bytes / reads, result["largest"].as_u64().unwrap_or(0)));

        let (elapsed, bytes, messages) = session.terminal_run(&writer())?;
        check(bytes as u64 == terminal_bytes(), || {
            format!("{bytes} bytes of terminal output, not {}", terminal_bytes())
        })?;
        ours.push(bytes as f64 / elapsed / 1e6);
        frames.push(bytes / messages.max(1));
    }
    report.rows.push(Row::rate(
        &format!(
            "terminal output throughput, 100 MB of text through a pty in one WebSocket session (stdout events of {} KiB on average)",
            frames.iter().sum::<usize>() / frames.len() / 1024
        ),
        &ours,
        Unit::MegabytesPerSecond,
        &format!(
            "the ceiling: the same writer on a pty in the same sandbox, read by Python into a 1 MiB buffer (reads of {} bytes on average, {} at most)",
            ceiling_reads.iter().map(|(average, _)| average).sum::<u64>() / 3,
            ceiling_reads.iter().map(|(_, largest)| *largest).max().unwrap_or(0),
        ),
        Some(crate::support::Stat::rate(&ceiling)),
    ));
    session.kill();
    server.stop();
    Ok(())
}
