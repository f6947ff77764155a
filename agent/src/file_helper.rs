//! Starting the files API's helper (see [`crate::files`]): the agent's own binary, as a process
//! of the sandbox like any execution, used for one operation.
//!
//! Starting it costs a fork and an exec of the agent's binary (its loader, its libraries),
//! about 10 ms under gVisor's ptrace platform, where every syscall and page fault traps: more
//! than the rest of a small operation. So, as for bash and python (`crate::standby`), the agent
//! keeps one helper started ahead of the next operation ([`FileStandby`]): it has done its
//! start-up and waits for the request on its descriptor 3. It is started exactly as a fresh
//! helper (same binary, environment, limits, directory, process group, uid), so an operation
//! gets the same process either way; one that finds none ready (operations at once) starts a
//! fresh one ([`spawn`]).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::process::Command;

use nix::unistd::Pid;

use crate::execution::{prepare_command, Execution, SpawnError};
use crate::files::{HELPER_FLAG, HOME, REQUEST_FD, STANDBY_ARGUMENT};
use crate::pipes;
use crate::protocol::{AgentConfig, ExecId, FileRequest};

/// The helper's command with `argument` after [`HELPER_FLAG`], started as every helper is.
fn helper_command(config: &AgentConfig, argument: &str) -> Result<Command, SpawnError> {
    let program = std::env::current_exe().map_err(SpawnError::Start)?;
    let mut command = Command::new(program);
    command.arg(HELPER_FLAG).arg(argument);
    prepare_command(&mut command, config, &config.limits);
    command.current_dir(HOME);
    Ok(command)
}

fn request_json(request: &FileRequest) -> String {
    // Serializing a plain enum of strings and integers cannot fail.
    serde_json::to_string(request).unwrap_or_default()
}

/// Start a helper for `request` now (none was waiting).
pub fn spawn(
    id: ExecId,
    request: &FileRequest,
    config: &AgentConfig,
) -> Result<Execution, SpawnError> {
    let command = helper_command(config, &request_json(request))?;
    Execution::from_command(id, command)
}

/// A helper started ahead of its operation, waiting for the request on its descriptor 3.
pub struct FileStandby {
    execution: Execution,
    /// Where the request is written (the helper reads the other end to its end of file).
    request: File,
}

impl FileStandby {
    pub fn start(config: &AgentConfig) -> Result<Self, SpawnError> {
        let (request_read, request_write) = pipes::pipe().map_err(SpawnError::Pipe)?;
        let mut command = helper_command(config, STANDBY_ARGUMENT)?;
        sandbox_ffi::pass_fd_to_child(&mut command, request_read.as_raw_fd(), REQUEST_FD);
        let execution = Execution::from_command(ExecId(0), command)?;
        drop(request_read);
        let request = File::from(request_write);
        pipes::set_nonblocking(request.as_fd()).map_err(SpawnError::Pipe)?;
        Ok(FileStandby { execution, request })
    }

    pub fn pid(&self) -> Pid {
        self.execution.pid()
    }

    /// Hand the helper its request; it is execution `id` from now on.
    pub fn activate(self, id: ExecId, request: &FileRequest) -> Execution {
        let mut execution = self.execution;
        execution.set_id(id);
        execution.send_request(self.request, request_json(request).into_bytes());
        execution
    }

    /// End a helper that will not be used (its process group, as for an execution).
    pub fn dismiss(self) {
        self.execution.signal_group(libc::SIGKILL);
    }
}
