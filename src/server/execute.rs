//! `POST /execute`: one execution in a fresh sandbox, as a small state machine per request.
//! The sandbox is known once it is ready: a request that found none ready in the pool waits in
//! line for the first one to become ready (`Runtime::claim_fresh`).
//!
//! ```text
//! WaitingForSandbox --Ready--> Running --ExecFinished--> Done
//!        |                        |
//!        +--StartFailed--> Done   +--Lost/SpawnFailed--> Done
//! ```
//! It turns runtime notices into response bytes; the connection writes them.

use std::time::Instant;

use serde_json::json;

use super::api::{ApiError, ExecuteRequest};
use crate::agent_protocol::{ExecId, Stream};
use crate::http::response::{encode_chunk, final_chunk, ResponseHead};
use crate::runtime::exec::ExecOutcome;
use crate::runtime::{ExecSpec, RuntimeEvent, SandboxKey};

/// How many bytes of each execution's output go to the server log.
const LOGGED_OUTPUT_BYTES: usize = 512;

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    WaitingForSandbox,
    Running(ExecId),
    Done,
}

/// What the connection should do after a notice.
#[derive(Debug, Default)]
pub struct Step {
    /// Bytes to send to the client.
    pub bytes: Vec<u8>,
    /// Start this execution in the sandbox (the sandbox just became ready).
    pub start: Option<ExecSpec>,
    /// The response is complete: delete the sandbox and record the outcome.
    pub finished: Option<Finished>,
}

#[derive(Debug)]
pub struct Finished {
    /// `exited`, `timeout`, ... or `error` when no execution ran.
    pub result: &'static str,
    pub status: u16,
}

#[derive(Debug)]
pub struct ExecuteJob {
    /// None while the request waits in line for a sandbox.
    pub sandbox: Option<SandboxKey>,
    sandbox_id: String,
    request: ExecuteRequest,
    phase: Phase,
    keep_alive: bool,
    headers_sent: bool,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    logged: Vec<u8>,
    pub started: Instant,
}

impl ExecuteJob {
    pub fn new(request: ExecuteRequest, keep_alive: bool) -> Self {
        ExecuteJob {
            sandbox: None,
            sandbox_id: String::new(),
            request,
            phase: Phase::WaitingForSandbox,
            keep_alive,
            headers_sent: false,
            stdout: Vec::new(),
            stderr: Vec::new(),
            logged: Vec::new(),
            started: Instant::now(),
        }
    }

    /// The sandbox this request runs in (`sandbox_id` is its public id).
    pub fn bind(&mut self, sandbox: SandboxKey, sandbox_id: String) {
        self.sandbox = Some(sandbox);
        self.sandbox_id = sandbox_id;
    }

    pub fn set_running(&mut self, exec: ExecId) {
        self.phase = Phase::Running(exec);
    }

    /// Whether the status line went out already (a streamed response): an error can then
    /// only cut the body short.
    pub fn response_started(&self) -> bool {
        self.headers_sent
    }

    /// Whether the response can keep the connection open afterwards.
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    /// The server is shutting down: the connection closes after this response, and a head
    /// not sent yet says so (`Connection: close`).
    pub fn end_keep_alive(&mut self) {
        self.keep_alive = false;
    }

    /// The sandbox could not run the execution (start or spawn failure): 500.
    pub fn fail(&mut self, message: &str) -> Step {
        self.phase = Phase::Done;
        let bytes = if self.headers_sent {
            // The status line is gone; end the body so the client is not left waiting.
            let mut bytes = Vec::new();
            encode_chunk(
                format!("\n[sandbox error: {message}]\n").as_bytes(),
                &mut bytes,
            );
            bytes.extend_from_slice(final_chunk());
            bytes
        } else {
            ApiError::Internal(message.to_string())
                .response()
                .encode(self.keep_alive, false)
        };
        match self.sandbox {
            Some(_) => eprintln!("execute: sandbox {} failed: {message}", self.sandbox_id),
            None => eprintln!("execute: no sandbox for the request: {message}"),
        }
        Step {
            bytes,
            start: None,
            finished: Some(Finished {
                result: "error",
                status: 500,
            }),
        }
    }

    pub fn on_event(&mut self, event: RuntimeEvent) -> Step {
        match (&self.phase, event) {
            (Phase::WaitingForSandbox, RuntimeEvent::Ready) => Step {
                start: Some(self.spec()),
                ..Step::default()
            },
            (Phase::WaitingForSandbox, RuntimeEvent::StartFailed(message)) => {
                self.fail(&format!("cannot start a sandbox: {message}"))
            }
            (_, RuntimeEvent::Lost(message)) if self.phase != Phase::Done => {
                self.fail(&format!("the sandbox died: {message}"))
            }
            (Phase::Running(exec), RuntimeEvent::ExecSpawnFailed(id, message)) if *exec == id => {
                self.fail(&format!("cannot start the process: {message}"))
            }
            (Phase::Running(exec), RuntimeEvent::ExecStarted(id)) if *exec == id => {
                let mut step = Step::default();
                if !self.request.json {
                    step.bytes = self.stream_head();
                }
                step
            }
            (Phase::Running(exec), RuntimeEvent::Output(id, stream, data)) if *exec == id => {
                let room = LOGGED_OUTPUT_BYTES.saturating_sub(self.logged.len());
                self.logged.extend_from_slice(&data[..room.min(data.len())]);
                let mut step = Step::default();
                if self.request.json {
                    // Bounded: the runtime stops delivering at the output limit.
                    match stream {
                        Stream::Stdout => self.stdout.extend_from_slice(&data),
                        Stream::Stderr => self.stderr.extend_from_slice(&data),
                    }
                } else {
                    encode_chunk(&data, &mut step.bytes);
                }
                step
            }
            (Phase::Running(exec), RuntimeEvent::ExecFinished(id, outcome)) if *exec == id => {
                self.finish(outcome)
            }
            _ => Step::default(),
        }
    }

    fn spec(&self) -> ExecSpec {
        self.request
            .options
            .spec(self.request.language, &self.request.code)
    }

    /// The head of a streamed (text/plain, chunked) response.
    fn stream_head(&mut self) -> Vec<u8> {
        self.headers_sent = true;
        ResponseHead::new(200)
            .header("Content-Type", "text/plain; charset=utf-8")
            .header("X-Sandbox-Id", self.sandbox_id.clone())
            .header("Cache-Control", "no-store")
            .encode(None, self.keep_alive)
    }

    fn finish(&mut self, outcome: ExecOutcome) -> Step {
        self.phase = Phase::Done;
        let log_text = String::from_utf8_lossy(&self.logged);
        eprintln!(
            "execute: sandbox {} language={} exit_code={} reason={} duration_ms={} output={:?}{}",
            self.sandbox_id,
            self.request.language,
            outcome.exit_code(),
            outcome.reason.as_str(),
            outcome.duration_ms,
            log_text,
            if self.logged.len() >= LOGGED_OUTPUT_BYTES {
                " (log truncated)"
            } else {
                ""
            }
        );
        let bytes = if self.request.json {
            let body = json!({
                "stdout": String::from_utf8_lossy(&self.stdout),
                "stderr": String::from_utf8_lossy(&self.stderr),
                "exit_code": outcome.exit_code(),
                "signal": outcome.signal(),
                "reason": outcome.reason.as_str(),
                "timed_out": outcome.reason == crate::runtime::exec::Reason::Timeout,
                "truncated": outcome.truncated,
                "duration_ms": outcome.duration_ms,
                "sandbox_id": self.sandbox_id,
            });
            let body = serde_json::to_vec(&body).unwrap_or_default();
            ResponseHead::new(200)
                .header("Content-Type", "application/json")
                .header("X-Sandbox-Id", self.sandbox_id.clone())
                .encode_with_body(&body, self.keep_alive)
        } else if self.headers_sent {
            final_chunk().to_vec()
        } else {
            // It ended before it was reported started (for example the sandbox died at once):
            // the status line has not been sent yet.
            let mut bytes = self.stream_head();
            bytes.extend_from_slice(final_chunk());
            bytes
        };
        Step {
            bytes,
            start: None,
            finished: Some(Finished {
                result: outcome.reason.as_str(),
                status: 200,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_protocol::ExitStatus;
    use crate::runtime::exec::Reason;

    fn job(json: bool) -> ExecuteJob {
        let request = ExecuteRequest {
            language: crate::agent_protocol::Language::Bash,
            code: "true".into(),
            options: crate::session::exec_options::ExecOptions {
                env: Vec::new(),
                cwd: "/root".into(),
                timeout: std::time::Duration::from_secs(5),
                output_encoding: Default::default(),
                pty: None,
            },
            json,
        };
        let mut job = ExecuteJob::new(request, true);
        job.bind(SandboxKey(1), "a".repeat(32));
        job
    }

    fn finished() -> RuntimeEvent {
        RuntimeEvent::ExecFinished(
            ExecId(7),
            ExecOutcome {
                status: ExitStatus::Code(0),
                reason: Reason::Exited,
                duration_ms: 3,
                truncated: false,
            },
        )
    }

    fn run_to_the_end(job: &mut ExecuteJob, shutdown_at_start: bool) -> Vec<u8> {
        if shutdown_at_start {
            job.end_keep_alive();
        }
        let spec = job
            .on_event(RuntimeEvent::Ready)
            .start
            .expect("started once ready");
        assert_eq!(
            (spec.language.as_str(), spec.cwd.as_str(), spec.timeout),
            ("bash", "/root", std::time::Duration::from_secs(5)),
            "the checked options of the request"
        );
        job.set_running(ExecId(7));
        let mut bytes = job.on_event(RuntimeEvent::ExecStarted(ExecId(7))).bytes;
        if !shutdown_at_start {
            job.end_keep_alive();
        }
        let step = job.on_event(finished());
        assert!(step.finished.is_some());
        bytes.extend_from_slice(&step.bytes);
        bytes
    }

    #[test]
    fn a_response_finished_during_shutdown_says_connection_close() {
        let mut json = job(true);
        let text = String::from_utf8(run_to_the_end(&mut json, false)).unwrap();
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(!json.keep_alive());

        // A streamed response whose head went out before the shutdown cannot say it; the
        // connection is closed after its last chunk (the caller checks keep_alive()).
        let mut streamed = job(false);
        let text = String::from_utf8(run_to_the_end(&mut streamed, false)).unwrap();
        assert!(!text.contains("Connection: close"), "{text}");
        assert!(!streamed.keep_alive());

        let mut streamed = job(false);
        let text = String::from_utf8(run_to_the_end(&mut streamed, true)).unwrap();
        assert!(text.contains("Connection: close\r\n"), "{text}");
    }

    #[test]
    fn without_shutdown_the_connection_is_kept() {
        let mut json = job(true);
        assert!(json.on_event(RuntimeEvent::Ready).start.is_some());
        json.set_running(ExecId(7));
        let text = String::from_utf8(json.on_event(finished()).bytes).unwrap();
        assert!(!text.contains("Connection: close"), "{text}");
        assert!(json.keep_alive());
    }
}
