//! Processes started ahead of their request, so that an execution pays neither `fork`, nor
//! `exec`, nor the interpreter's start-up once it is asked for (each costs milliseconds under
//! gVisor's ptrace platform, where every syscall and page fault traps):
//!
//! - a **bash** started as `bash -c STUB` in the sandbox's usual environment and directory; the
//!   stub reads the code from its request pipe and `eval`s it (see [`BASH_STUB`]);
//! - a **python** child forked by the forkserver (`forkserver.py`), which waits for the code,
//!   directory and environment on its request pipe and then behaves like `python3 -c`.
//!
//! Each is a fresh process used once, so an execution never sees another's state. A request is
//! served by one only when the result is the same as a fresh `bash -c` / `python3 -c` would
//! give (see [`Standby::can_serve`]); anything else is spawned fresh.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::process::Command;

use nix::unistd::Pid;

use crate::execution::{prepare_command, Execution, SpawnError, MAX_INLINE_CODE_BYTES};
use crate::forkserver::Pending;
use crate::pipes;
use crate::protocol::{AgentConfig, ExecId, Language, ProcessLimits, SpawnRequest};

/// What the pre-started bash runs: wait for the request on fd 3 (10 digits giving the code's
/// length in characters, then the code), close fd 3, then run the code as `bash -c` would.
///
/// `read -N` reads from a pipe in blocks (not byte by byte as `read` without it does). Before
/// the `eval`, what the stub did is undone where a script could see it: its variable is unset,
/// `SECONDS` starts at 0, and `$_` is the shell's path again. What stays different from
/// `bash -c CODE` (docs/performance.md): a syntax error is reported as `bash: eval: line N`
/// instead of `bash: -c: line N`, `PIPESTATUS` is already set before the first command, and the
/// process's command line and start time are the stub's.
pub const BASH_STUB: &str = r#"read -r -N 10 _n <&3 || exit 0; IFS= read -r -N "$((10#$_n))" BASH_EXECUTION_STRING <&3; exec 3<&-; unset _n; SECONDS=0; : "$0"; eval "$BASH_EXECUTION_STRING""#;

/// Request variables that the interpreter or the shell reads while starting: a process already
/// started cannot apply them, so a request that sets one is spawned fresh.
fn affects_python_startup(name: &str) -> bool {
    name.starts_with("PYTHON")
        || name.starts_with("LC_")
        || matches!(name, "LANG" | "LANGUAGE" | "HOME" | "TZ")
}

pub struct Standby {
    language: Language,
    execution: Execution,
    /// Where the request is written (the process reads the other end).
    request: File,
    limits: ProcessLimits,
    /// bash only: the directory it started in (its start-up reads the directory).
    cwd: Option<String>,
}

impl Standby {
    /// Start `bash -c STUB` in `cwd`, as a fresh `bash -c` would be started there.
    pub fn start_bash(config: &AgentConfig, cwd: &str) -> Result<Self, SpawnError> {
        let (request_read, request_write) = pipes::pipe().map_err(SpawnError::Pipe)?;
        let mut command = Command::new("/bin/bash");
        command.arg("-c").arg(BASH_STUB).current_dir(cwd);
        prepare_command(&mut command, config, &config.limits);
        sandbox_ffi::pass_fd_to_child(&mut command, request_read.as_raw_fd(), 3);
        let execution = Execution::from_command(ExecId(0), command)?;
        drop(request_read);
        let request = File::from(request_write);
        pipes::set_nonblocking(request.as_fd()).map_err(SpawnError::Pipe)?;
        Ok(Standby {
            language: Language::Bash,
            execution,
            request,
            limits: config.limits.clone(),
            cwd: Some(cwd.to_string()),
        })
    }

    /// A child the forkserver forked (with the forkserver's limits).
    pub fn forked(pid: Pid, child: Pending, config: &AgentConfig) -> Self {
        Standby {
            language: Language::Python,
            execution: Execution::from_parts(ExecId(0), pid, child.ends),
            request: child.request,
            limits: config.limits.clone(),
            cwd: None,
        }
    }

    pub fn pid(&self) -> Pid {
        self.execution.pid()
    }

    /// Whether it started in `cwd` (bash: it serves only requests for that directory).
    pub fn started_in(&self, cwd: &str) -> bool {
        self.cwd.as_deref().is_none_or(|started| started == cwd)
    }

    /// Whether this process gives `request` what a freshly spawned one would (`limits`: what
    /// the agent applies to every process now).
    pub fn can_serve(&self, request: &SpawnRequest, limits: &ProcessLimits) -> bool {
        let same_start = request.language == self.language
            // A file operation has its own helper (`file_helper`), never a bash or python.
            && request.file.is_none()
            && request.limits == self.limits
            && *limits == self.limits
            // Larger code goes through a file (another command line); NUL cannot be an argument.
            && request.code.len() <= MAX_INLINE_CODE_BYTES
            && !request.code.contains('\0');
        if !same_start {
            return false;
        }
        match self.language {
            Language::Bash => {
                self.cwd.as_deref() == Some(request.cwd.as_str()) && request.env.is_empty()
            }
            Language::Python => {
                let cwd_is_dir = std::fs::metadata(&request.cwd)
                    .map(|meta| meta.is_dir())
                    .unwrap_or(false);
                cwd_is_dir
                    && !request.cwd.contains('\0')
                    && request.env.iter().all(|(name, value)| {
                        !affects_python_startup(name)
                            && !name.is_empty()
                            && !name.contains(['=', '\0'])
                            && !value.contains('\0')
                    })
            }
        }
    }

    /// Hand the process its request; it is execution `id` from now on.
    pub fn activate(self, id: ExecId, request: &SpawnRequest) -> Execution {
        let bytes = match self.language {
            Language::Bash => bash_request(&request.code),
            Language::Python => python_request(request),
        };
        let mut execution = self.execution;
        execution.set_id(id);
        execution.send_request(self.request, bytes);
        execution
    }

    /// End a process that will not be used (its process group, as for an execution).
    pub fn dismiss(self) {
        self.execution.signal_group(libc::SIGKILL);
    }
}

/// What [`BASH_STUB`] reads: the length in characters (what `read -N` counts in the sandbox's
/// UTF-8 locale), then the code.
fn bash_request(code: &str) -> Vec<u8> {
    let mut bytes = format!("{:010}", code.chars().count()).into_bytes();
    bytes.extend_from_slice(code.as_bytes());
    bytes
}

/// What `forkserver.py` reads: cwd, code, then names and values, separated by NUL bytes.
fn python_request(request: &SpawnRequest) -> Vec<u8> {
    let mut fields: Vec<&str> = vec![&request.cwd, &request.code];
    for (name, value) in &request.env {
        fields.push(name);
        fields.push(value);
    }
    fields.join("\0").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(language: Language, code: &str, env: &[(&str, &str)]) -> SpawnRequest {
        SpawnRequest {
            language,
            code: code.into(),
            env: env
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
            cwd: "/".into(),
            limits: ProcessLimits::default(),
            file: None,
            pty: None,
        }
    }

    #[test]
    fn requests_are_encoded_for_their_readers() {
        assert_eq!(bash_request("echo é"), b"0000000006echo \xc3\xa9");
        assert_eq!(bash_request(""), b"0000000000");
        let python = python_request(&request(Language::Python, "print(1)", &[("A", "b")]));
        assert_eq!(python, b"/\0print(1)\0A\0b");
    }

    #[test]
    fn only_requests_a_started_process_serves_exactly_are_served() {
        let (_read, write) = pipes::pipe().unwrap();
        let (ends, _process) = pipes::stdio().unwrap();
        let standby = Standby::forked(
            Pid::from_raw(12345),
            Pending {
                ends,
                request: File::from(write),
            },
            &AgentConfig::default(),
        );
        let limits = ProcessLimits::default();
        assert!(standby.can_serve(
            &request(Language::Python, "print(1)", &[("A", "b")]),
            &limits
        ));
        for env in [
            [("PYTHONPATH", "/x")],
            [("LANG", "C")],
            [("LC_ALL", "C")],
            [("HOME", "/tmp")],
            [("A=B", "c")],
            [("A", "nul\0")],
        ] {
            assert!(
                !standby.can_serve(&request(Language::Python, "1", &env), &limits),
                "{env:?}"
            );
        }
        assert!(!standby.can_serve(&request(Language::Bash, "true", &[]), &limits));
        assert!(!standby.can_serve(&request(Language::Python, "a\0b", &[]), &limits));
        let big = "#".repeat(MAX_INLINE_CODE_BYTES + 1);
        assert!(!standby.can_serve(&request(Language::Python, &big, &[]), &limits));
        let mut elsewhere = request(Language::Python, "1", &[]);
        elsewhere.cwd = "/no/such/dir".into();
        assert!(!standby.can_serve(&elsewhere, &limits));
        let other_limits = ProcessLimits {
            processes: Some(3),
            ..ProcessLimits::default()
        };
        assert!(!standby.can_serve(&request(Language::Python, "1", &[]), &other_limits));
    }
}
