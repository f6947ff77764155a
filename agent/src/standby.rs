//! The pre-started Python interpreter (see `python_launcher.py`).

use std::io::{self, PipeWriter, Write};
use std::os::fd::AsRawFd;
use std::process::Command;

use nix::unistd::Pid;

use crate::execution::{prepare_command, Execution, SpawnError};
use crate::protocol::{AgentConfig, ExecId, ProcessLimits, SpawnRequest};

const LAUNCHER: &str = include_str!("python_launcher.py");

pub struct Standby {
    execution: Execution,
    request_pipe: PipeWriter,
    limits: ProcessLimits,
}

impl Standby {
    pub fn start(config: &AgentConfig) -> Result<Self, SpawnError> {
        let (reader, writer) = io::pipe().map_err(SpawnError::Pipe)?;
        let mut command = Command::new("/usr/bin/python3");
        command.arg("-c").arg(LAUNCHER).current_dir("/");
        prepare_command(&mut command, config, &config.limits);
        sandbox_ffi::pass_fd_to_child(&mut command, reader.as_raw_fd(), 3);
        // The id is assigned when the interpreter is put to use.
        let execution = Execution::from_command(ExecId(0), command, true)?;
        drop(reader);
        Ok(Standby {
            execution,
            request_pipe: writer,
            limits: config.limits.clone(),
        })
    }

    pub fn pid(&self) -> Pid {
        self.execution.pid()
    }

    /// The interpreter already started with fixed limits and interpreter settings; anything
    /// that would differ goes to a fresh process instead.
    pub fn can_serve(&self, request: &SpawnRequest, limits: &ProcessLimits) -> bool {
        let cwd_is_dir = std::fs::metadata(&request.cwd)
            .map(|meta| meta.is_dir())
            .unwrap_or(false);
        request.limits == self.limits
            && *limits == self.limits
            && cwd_is_dir
            && !request.env.iter().any(|(key, _)| key.starts_with("PYTHON"))
    }

    pub fn activate(self, id: ExecId, request: &SpawnRequest) -> Execution {
        let env: serde_json::Map<String, serde_json::Value> = request
            .env
            .iter()
            .map(|(key, value)| (key.clone(), serde_json::Value::String(value.clone())))
            .collect();
        let payload = serde_json::json!({"code": request.code, "cwd": request.cwd, "env": env});
        // A JSON value of strings always serializes.
        let bytes = payload.to_string().into_bytes();
        let mut pipe = self.request_pipe;
        // The interpreter may still be starting and the code may exceed the pipe's buffer: a
        // short-lived thread writes it so the agent's loop never blocks on a slow interpreter.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        });
        let mut execution = self.execution;
        execution.set_id(id);
        execution
    }
}
