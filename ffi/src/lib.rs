//! The one place for `unsafe` code in Cloud Run Sandbox.
//!
//! Everything here is a thin, safe wrapper over a syscall (or a libc call) that `nix` and the
//! standard library do not expose safely. Each `unsafe` block carries a `// SAFETY:` comment.
//! The rest of the project uses `#![forbid(unsafe_code)]`.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// A resource limit to apply to a child between `fork` and `exec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    /// One of the `libc::RLIMIT_*` constants.
    pub resource: i32,
    /// Soft and hard limit (the same value: the child may not raise it).
    pub limit: u64,
}

/// Apply `limits` to the child of `command` right before it executes.
///
/// `std::process::Command` has no safe way to set rlimits for the child only, and setting them
/// on the parent (then restoring) would race with other spawns.
pub fn set_child_rlimits(command: &mut Command, limits: Vec<Rlimit>) {
    // SAFETY: the closure runs in the forked child before exec. It only calls `setrlimit`, which
    // is async-signal-safe, and touches no locks or allocations (the Vec was allocated before the
    // fork and is only read).
    unsafe {
        command.pre_exec(move || {
            for limit in &limits {
                let value = libc::rlimit {
                    rlim_cur: limit.limit as libc::rlim_t,
                    rlim_max: limit.limit as libc::rlim_t,
                };
                if libc::setrlimit(limit.resource as _, &value) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Make `source` available as file descriptor `target` in the child of `command`.
///
/// Used to give a pre-started interpreter a private channel next to stdin/stdout/stderr.
/// `source` must stay open in the parent until the command has been spawned.
pub fn pass_fd_to_child(command: &mut Command, source: RawFd, target: RawFd) {
    // SAFETY: the closure runs in the forked child before exec and only calls `dup2` and
    // `fcntl`, both async-signal-safe. `dup2` clears FD_CLOEXEC on the new descriptor, so it
    // survives the exec; when source == target we clear the flag explicitly.
    unsafe {
        command.pre_exec(move || {
            if source == target {
                let flags = libc::fcntl(target, libc::F_GETFD);
                if flags < 0 || libc::fcntl(target, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(source, target) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Ask the kernel to send `signal` to this process when its parent dies.
///
/// The `runsc` helper processes the server spawns use this so that a server killed with
/// SIGKILL does not leave them waiting forever.
pub fn set_parent_death_signal(command: &mut Command, signal: i32) {
    // SAFETY: runs in the forked child before exec; `prctl(PR_SET_PDEATHSIG)` is
    // async-signal-safe and takes plain integer arguments.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_rlimits_apply_to_the_child_only() {
        let mut command = Command::new("/bin/sh");
        command.args(["-c", "ulimit -n"]);
        set_child_rlimits(
            &mut command,
            vec![Rlimit {
                resource: libc::RLIMIT_NOFILE as i32,
                limit: 77,
            }],
        );
        let output = command.output().expect("sh runs");
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "77");
    }

    #[test]
    fn passed_fd_is_readable_in_the_child() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let (reader, writer) = std::io::pipe().expect("pipe");
        let mut writer = writer;
        writer.write_all(b"through fd 3").expect("write");
        drop(writer);
        let mut command = Command::new("/bin/sh");
        command.args(["-c", "cat <&3"]);
        pass_fd_to_child(&mut command, reader.as_raw_fd(), 3);
        let output = command.output().expect("sh runs");
        assert_eq!(output.stdout, b"through fd 3");
    }
}
