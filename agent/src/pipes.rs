//! The pipes between the agent and a process it follows: the process's stdin, stdout and stderr,
//! and the request pipe of a process started ahead of its request (see `standby`).
//!
//! Output pipes are enlarged to [`OUTPUT_PIPE_BYTES`]: under gVisor's ptrace platform every
//! syscall costs tens of microseconds, so a writer that finds room in the pipe keeps writing
//! while the agent is busy elsewhere, and the agent then takes up to a frame's worth in one
//! read instead of a pipe's worth (64 KiB by default) per wake-up.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};

/// What an output pipe is enlarged to: the most an unprivileged process may ask for
/// (`/proc/sys/fs/pipe-max-size`, 1 MiB by default, also under gVisor).
pub const OUTPUT_PIPE_BYTES: i32 = 1024 * 1024;

/// The agent's ends of one process's stdio: where it writes the process's stdin and reads its
/// stdout and stderr. All three are non-blocking and close-on-exec.
pub struct AgentEnds {
    pub stdin: File,
    pub stdout: File,
    pub stderr: File,
}

/// The process's ends, to become its descriptors 0, 1 and 2.
pub struct ProcessEnds {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Three fresh pipes for a process the agent does not spawn itself (the forkserver forks it).
pub fn stdio() -> io::Result<(AgentEnds, ProcessEnds)> {
    let (stdin_read, stdin_write) = pipe()?;
    let (stdout_read, stdout_write) = pipe()?;
    let (stderr_read, stderr_write) = pipe()?;
    let agent = AgentEnds {
        stdin: File::from(stdin_write),
        stdout: File::from(stdout_read),
        stderr: File::from(stderr_read),
    };
    agent.configure()?;
    Ok((
        agent,
        ProcessEnds {
            stdin: stdin_read,
            stdout: stdout_write,
            stderr: stderr_write,
        },
    ))
}

impl AgentEnds {
    /// Non-blocking (the agent's loop never waits on one process) and enlarged output pipes.
    pub fn configure(&self) -> io::Result<()> {
        for fd in [self.stdin.as_fd(), self.stdout.as_fd(), self.stderr.as_fd()] {
            set_nonblocking(fd)?;
        }
        enlarge(self.stdout.as_fd());
        enlarge(self.stderr.as_fd());
        Ok(())
    }
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
}

pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Ask for [`OUTPUT_PIPE_BYTES`] of buffer. Best effort: a kernel that refuses leaves the pipe
/// as it was, which only costs speed.
pub fn enlarge(fd: BorrowedFd<'_>) {
    let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(OUTPUT_PIPE_BYTES));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn agent_ends_are_non_blocking_and_outputs_enlarged() {
        let (mut agent, process) = stdio().unwrap();
        let mut buffer = [0u8; 8];
        let error = agent.stdout.read(&mut buffer).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
        let size = fcntl(agent.stdout.as_raw_fd(), FcntlArg::F_GETPIPE_SZ).unwrap();
        assert_eq!(size, OUTPUT_PIPE_BYTES);
        // The process's ends are plain blocking pipes.
        File::from(process.stdout).write_all(b"out").unwrap();
        assert_eq!(agent.stdout.read(&mut buffer).unwrap(), 3);
        agent.stdin.write_all(b"in").unwrap();
        assert_eq!(File::from(process.stdin).read(&mut buffer).unwrap(), 2);
    }
}
