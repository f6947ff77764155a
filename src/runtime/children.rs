//! The `runsc` processes the runtime spawns (`run`, `restore`, `delete`, `checkpoint`), reaping
//! every exit, and the log tails that say why one failed.
//!
//! Nothing here waits: the server is a child subreaper and reaps every exit at once with
//! `waitpid(-1)` when SIGCHLD arrives ([`Children::reap`]), which is both how the runtime learns
//! that a `runsc` command finished and what lets `runsc delete` complete in tens of
//! milliseconds (the sandbox processes runsc leaves behind are reaped the same way).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Stdio;

use mio::unix::pipe::{Receiver, Sender};
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::bundle::BundleSettings;
use super::runsc::Runsc;
use super::SandboxKey;

/// What a child was spawned for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `runsc run` or `runsc restore`.
    Run,
    Delete,
    Checkpoint,
}

/// A child of ours that exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub key: SandboxKey,
    pub purpose: Purpose,
    pub success: bool,
}

pub struct Children {
    runsc: Runsc,
    bundles: BundleSettings,
    running: HashMap<i32, (SandboxKey, Purpose)>,
}

impl Children {
    pub fn new(runsc: Runsc, bundles: BundleSettings) -> Self {
        Children {
            runsc,
            bundles,
            running: HashMap::new(),
        }
    }

    /// Write the container's bundle and spawn `runsc run --detach` (or `runsc restore
    /// --detach` from `image`) with two fresh pipes as the container's stdin and stdout, and
    /// the sandbox log as its stderr. Returns our ends of the pipes: to the agent, from it.
    pub fn start_container(
        &mut self,
        key: SandboxKey,
        container: &str,
        bundle_dir: &Path,
        image: Option<&Path>,
        netns: Option<&Path>,
    ) -> io::Result<(Sender, Receiver)> {
        self.bundles.write(container, bundle_dir, netns)?;
        let egress = netns.is_some();
        // The agent's stderr. Only its owner may open it: inside the sandbox that is the
        // agent's uid, not user code (the agent's `identity` module).
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(bundle_dir.join("sandbox.log"))?;
        let (to_agent, agent_stdin) = mio::unix::pipe::new()?;
        let (agent_stdout, from_agent) = mio::unix::pipe::new()?;
        // Both ways in megabytes: output in 1 MiB frames, stdin in a window of 4 MiB (protocol
        // 2); each pipe-full costs a turn of both loops.
        enlarge_pipe(from_agent.as_raw_fd());
        enlarge_pipe(to_agent.as_raw_fd());
        let mut command = match image {
            Some(image) => self
                .runsc
                .restore_detached(image, bundle_dir, container, egress),
            None => self.runsc.run_detached(bundle_dir, container, egress),
        };
        command
            .stdin(Stdio::from(OwnedFd::from(agent_stdin)))
            .stdout(Stdio::from(OwnedFd::from(agent_stdout)))
            .stderr(Stdio::from(log));
        let child = command.spawn()?;
        // Dropping the command closes our copies of the agent's ends of the pipes, so that the
        // agent's exit shows up here as end-of-file.
        drop(command);
        self.running.insert(child.id() as i32, (key, Purpose::Run));
        Ok((to_agent, from_agent))
    }

    /// The cgroup every container's cgroup is made under.
    pub fn cgroup_parent(&self) -> &str {
        &self.bundles.cgroup_parent
    }

    /// `runsc delete --force` of the sandbox's container; its exit is reported.
    pub fn delete(&mut self, key: SandboxKey, container: &str) -> io::Result<()> {
        let child = self.runsc.delete_force(container).spawn()?;
        self.running
            .insert(child.id() as i32, (key, Purpose::Delete));
        Ok(())
    }

    /// `runsc delete --force` of a stopped container that a restore replaces, on the side:
    /// nobody waits for it (it is reaped like any orphan).
    pub fn delete_on_the_side(&self, container: &str) {
        let _ = self.runsc.delete_force(container).spawn();
    }

    /// `runsc checkpoint` of the container into `image`, its stderr in the bundle's
    /// `checkpoint.log` (see [`checkpoint_error`]); its exit is reported.
    pub fn checkpoint(
        &mut self,
        key: SandboxKey,
        container: &str,
        image: &Path,
        bundle_dir: &Path,
    ) -> io::Result<()> {
        let mut command = self.runsc.checkpoint(image, container);
        if let Ok(log) = File::create(bundle_dir.join("checkpoint.log")) {
            command.stderr(Stdio::from(log));
        }
        let child = command.spawn()?;
        self.running
            .insert(child.id() as i32, (key, Purpose::Checkpoint));
        Ok(())
    }

    /// Collect every exited child. Ours are returned; others (the sandbox processes runsc
    /// leaves to us as subreaper) are just reaped, which `runsc delete` waits for.
    pub fn reap(&mut self) -> Vec<Exit> {
        let mut exits = Vec::new();
        loop {
            let (pid, success) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code == 0),
                Ok(WaitStatus::Signaled(pid, _, _)) => (pid, false),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return exits,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(error) => {
                    eprintln!("runtime: waitpid: {error}");
                    return exits;
                }
            };
            if let Some((key, purpose)) = self.running.remove(&pid.as_raw()) {
                exits.push(Exit {
                    key,
                    purpose,
                    success,
                });
            }
        }
    }
}

/// Why `runsc run` (or `restore`) failed: the last lines of the sandbox log.
pub fn start_error(bundle_dir: &Path) -> String {
    let text = read_tail(&bundle_dir.join("sandbox.log"), 2048);
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    if tail.is_empty() {
        "runsc failed to start the sandbox".to_string()
    } else {
        format!("runsc failed to start the sandbox: {tail}")
    }
}

/// Why `runsc checkpoint` failed: the last line of its log.
pub fn checkpoint_error(bundle_dir: &Path) -> String {
    let text = read_tail(&bundle_dir.join("checkpoint.log"), 2048);
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    match lines.last() {
        Some(line) => format!("runsc checkpoint failed: {}", line.trim()),
        None => "runsc checkpoint failed".to_string(),
    }
}

/// The last `max` bytes of a file, as text (nothing if it cannot be read).
/// What the pipes to and from each agent are enlarged to (the kernel's default
/// `pipe-max-size`): the agent writes output frames of up to 1 MiB, each in one syscall if the
/// pipe has room (a syscall costs tens of microseconds inside gVisor; the server's side is
/// native), and reads stdin in the same sizes.
const AGENT_PIPE_BYTES: i32 = 1024 * 1024;

/// Best effort: a pipe left at its default size only costs speed.
fn enlarge_pipe(fd: RawFd) {
    let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(AGENT_PIPE_BYTES));
}

fn read_tail(path: &Path, max: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let length = file.metadata().map(|meta| meta.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(length.saturating_sub(max)));
    let mut bytes = Vec::new();
    let _ = file.take(max).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tails_say_why_runsc_failed() {
        let dir = std::env::temp_dir().join(format!("crs-children-{}", crate::ids::random_hex(4)));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(start_error(&dir), "runsc failed to start the sandbox");
        assert_eq!(checkpoint_error(&dir), "runsc checkpoint failed");
        std::fs::write(dir.join("sandbox.log"), "noise\n\none\ntwo\n  \nthree\n").unwrap();
        assert_eq!(
            start_error(&dir),
            "runsc failed to start the sandbox: one | two | three"
        );
        std::fs::write(dir.join("checkpoint.log"), "a\nthe reason  \n\n").unwrap();
        assert_eq!(
            checkpoint_error(&dir),
            "runsc checkpoint failed: the reason"
        );
        // Only the end of a long log is read.
        let long = format!("{}\nlast\n", "x".repeat(10_000));
        std::fs::write(dir.join("sandbox.log"), long).unwrap();
        assert_eq!(
            start_error(&dir),
            format!(
                "runsc failed to start the sandbox: {} | last",
                "x".repeat(2042)
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
