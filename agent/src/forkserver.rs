//! The agent's side of the Python forkserver (`forkserver.py`): a warmed interpreter that forks
//! a child per `python` execution, ahead of its request, so that an execution pays neither the
//! interpreter's start-up (~40 ms under gVisor) nor a fork (~5-10 ms) once its request comes.
//!
//! Over a `SOCK_SEQPACKET` socket pair (fd 3 in the forkserver), one message each way per event:
//! - agent -> forkserver: `F` with four descriptors (the child's stdin, stdout, stderr, and the
//!   pipe its request comes on): fork one child;
//! - forkserver -> agent: `R` + pid (u32 LE): that child is forked and waits for its request,
//!   in the order of the `F`s; `X` + pid + (0, exit code | 1, signal) (i32 LE): a child exited.
//!
//! The forkserver is the parent of the children it forks, so it reports their ends; should it
//! die, they are the agent's (it is init) and the agent reaps them itself, by the same pid.
//! What the forkserver says comes from a process user code can reach (same uid, like any user
//! process of the sandbox): it is checked, never trusted to name the agent or anything but
//! the children it was asked for.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::process::{Command, Stdio};

use nix::sys::socket::{
    recv, sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
};
use nix::unistd::Pid;

use crate::execution::{prepare_command, SpawnError};
use crate::pipes::{self, AgentEnds};
use crate::protocol::{AgentConfig, ExitStatus};

const SCRIPT: &str = include_str!("forkserver.py");

/// The forkserver's exit code when what the interpreter's start-up read has changed (a `.pth`
/// file or a site directory appeared or went): not a failure, a new one is started.
pub const STALE_EXIT: i32 = 75;

/// Bytes of its stderr kept for the sandbox log when the forkserver ends.
const STDERR_LOG_BYTES: usize = 16 * 1024;

/// A child asked for and not yet announced: the agent's ends of its pipes.
pub struct Pending {
    pub ends: AgentEnds,
    pub request: File,
}

/// What the forkserver said.
pub enum Event {
    /// The oldest pending child is forked: here it is, with its pid.
    Forked(Pid, Pending),
    /// One of its children exited.
    Exited(Pid, ExitStatus),
}

pub struct Forkserver {
    pid: Pid,
    control: OwnedFd,
    /// Its stderr (a pipe, so that its children's `sys.stderr` is made for a pipe, as for a
    /// fresh interpreter); read into the log when it ends.
    stderr: File,
    /// Its stdin and stdout, kept open only so that they are pipes like an execution's.
    _stdio: (File, File),
    pending: VecDeque<Pending>,
}

impl Forkserver {
    /// Start the interpreter (with the limits, environment and identity of every process the
    /// agent starts). It is ready for requests at once: they wait in the socket meanwhile.
    pub fn start(config: &AgentConfig) -> Result<Self, SpawnError> {
        let (agent_end, server_end) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|errno| SpawnError::Pipe(errno.into()))?;
        pipes::set_nonblocking(agent_end.as_fd()).map_err(SpawnError::Pipe)?;
        let mut command = Command::new("/usr/bin/python3");
        command
            .arg("-c")
            .arg(script())
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        prepare_command(&mut command, config, &config.limits);
        sandbox_ffi::pass_fd_to_child(&mut command, server_end.as_raw_fd(), 3);
        let mut child = command.spawn().map_err(SpawnError::Start)?;
        drop(server_end);
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            unreachable!("spawned with three piped streams");
        };
        let stderr = File::from(OwnedFd::from(stderr));
        pipes::set_nonblocking(stderr.as_fd()).map_err(SpawnError::ConfigurePipes)?;
        Ok(Forkserver {
            pid: Pid::from_raw(child.id() as i32),
            control: agent_end,
            stderr,
            _stdio: (
                File::from(OwnedFd::from(stdin)),
                File::from(OwnedFd::from(stdout)),
            ),
            pending: VecDeque::new(),
        })
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    pub fn control_fd(&self) -> BorrowedFd<'_> {
        self.control.as_fd()
    }

    /// Children asked for and not yet forked.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Ask for one more child, with fresh pipes.
    pub fn request_child(&mut self) -> io::Result<()> {
        let (ends, process) = pipes::stdio()?;
        let (request_read, request_write) = pipes::pipe()?;
        let request = File::from(request_write);
        pipes::set_nonblocking(request.as_fd())?;
        let fds = [
            process.stdin.as_raw_fd(),
            process.stdout.as_raw_fd(),
            process.stderr.as_raw_fd(),
            request_read.as_raw_fd(),
        ];
        sendmsg::<()>(
            self.control.as_raw_fd(),
            &[IoSlice::new(b"F")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_DONTWAIT,
            None,
        )?;
        // The forkserver holds its own copies now; ours close here.
        self.pending.push_back(Pending { ends, request });
        Ok(())
    }

    /// Read what the forkserver said. `Ok(None)`: nothing more now. An error means the
    /// forkserver cannot be used any more (it closed the socket or spoke nonsense).
    pub fn next_event(&mut self) -> io::Result<Option<Event>> {
        let mut message = [0u8; 16];
        let length = match recv(self.control.as_raw_fd(), &mut message, MsgFlags::empty()) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(length) => length,
            Err(nix::errno::Errno::EAGAIN) => return Ok(None),
            Err(nix::errno::Errno::EINTR) => return Ok(None),
            Err(errno) => return Err(errno.into()),
        };
        parse(&message[..length], &mut self.pending).map(Some)
    }

    /// Its last words for the sandbox log (the forkserver exited).
    pub fn stderr_tail(&mut self) -> String {
        let mut buffer = vec![0u8; STDERR_LOG_BYTES];
        let mut filled = 0;
        while filled < buffer.len() {
            match self.stderr.read(&mut buffer[filled..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => filled += n,
            }
        }
        String::from_utf8_lossy(&buffer[..filled]).into_owned()
    }
}

/// The script without its comment lines: it is the forkserver's command line, which `ps`
/// shows for every python execution too.
fn script() -> String {
    SCRIPT
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn pid_at(message: &[u8], at: usize) -> io::Result<Pid> {
    let bytes: [u8; 4] = message
        .get(at..at + 4)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| bad(format!("short forkserver message {message:?}")))?;
    let pid = i32::from_le_bytes(bytes);
    // Never the agent (1) nor a process group or "every process" (<= 0) when signalled.
    if pid <= 1 {
        return Err(bad(format!("forkserver named pid {pid}")));
    }
    Ok(Pid::from_raw(pid))
}

fn parse(message: &[u8], pending: &mut VecDeque<Pending>) -> io::Result<Event> {
    match message.first() {
        Some(b'R') if message.len() == 5 => {
            let pid = pid_at(message, 1)?;
            let child = pending
                .pop_front()
                .ok_or_else(|| bad(format!("forkserver announced pid {pid} unasked")))?;
            Ok(Event::Forked(pid, child))
        }
        Some(b'X') if message.len() == 10 => {
            let pid = pid_at(message, 1)?;
            let value = i32::from_le_bytes([message[6], message[7], message[8], message[9]]);
            let status = match message[5] {
                0 => ExitStatus::Code(value),
                1 => ExitStatus::Signal(value),
                other => return Err(bad(format!("forkserver exit kind {other}"))),
            };
            Ok(Event::Exited(pid, status))
        }
        _ => Err(bad(format!("unknown forkserver message {message:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> Pending {
        let (ends, _process) = pipes::stdio().unwrap();
        let (_read, write) = pipes::pipe().unwrap();
        Pending {
            ends,
            request: File::from(write),
        }
    }

    #[test]
    fn messages_are_checked_before_they_are_believed() {
        let mut queue = VecDeque::new();
        queue.push_back(pending());
        let Event::Forked(pid, _) = parse(b"R\x2a\0\0\0", &mut queue).unwrap() else {
            panic!("not a fork");
        };
        assert_eq!(pid, Pid::from_raw(42));
        // A second announcement with nothing asked for is nonsense, not a panic.
        assert!(parse(b"R\x2b\0\0\0", &mut queue).is_err());
        let Event::Exited(pid, status) = parse(b"X\x2a\0\0\0\x01\x09\0\0\0", &mut queue).unwrap()
        else {
            panic!("not an exit");
        };
        assert_eq!((pid, status), (Pid::from_raw(42), ExitStatus::Signal(9)));
        assert!(matches!(
            parse(b"X\x2a\0\0\0\0\x03\0\0\0", &mut queue).unwrap(),
            Event::Exited(_, ExitStatus::Code(3))
        ));
        // The agent, "every process" and process groups are never named.
        for pid in [1i32, 0, -1, -42] {
            let mut message = b"X".to_vec();
            message.extend_from_slice(&pid.to_le_bytes());
            message.extend_from_slice(&[0, 0, 0, 0, 0]);
            assert!(parse(&message, &mut queue).is_err(), "pid {pid}");
        }
        for nonsense in [
            &b""[..],
            b"R",
            b"R\x2a\0\0",
            b"X\x2a\0\0\0\x07\0\0\0\0",
            b"Q",
        ] {
            assert!(parse(nonsense, &mut queue).is_err(), "{nonsense:?}");
        }
    }
}
