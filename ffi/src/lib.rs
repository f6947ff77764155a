//! The one place for `unsafe` code in Cloud Run Sandbox.
//!
//! Everything here is a thin, safe wrapper over a syscall (or a libc call) that `nix` and the
//! standard library do not expose safely. Each `unsafe` block carries a `// SAFETY:` comment.
//! The rest of the project uses `#![forbid(unsafe_code)]`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
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

/// Remove every capability from this process's bounding set, so that no program it (or any
/// descendant) executes can gain one, even as uid 0.
///
/// Stops at the first capability number the kernel does not know (gVisor's list ends earlier
/// than Linux's, and it has no `/proc/sys/kernel/cap_last_cap` to ask). Needs `CAP_SETPCAP`.
pub fn drop_capability_bounding_set() -> io::Result<()> {
    for capability in 0..64 {
        // SAFETY: `prctl(PR_CAPBSET_DROP, n)` takes plain integers and touches no memory.
        let result = unsafe {
            libc::prctl(
                libc::PR_CAPBSET_DROP,
                capability as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if result != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EINVAL) && capability > 0 {
                return Ok(());
            }
            return Err(error);
        }
    }
    Ok(())
}

/// Empty this process's effective, permitted and inheritable capability sets (`capset(2)`,
/// which neither `nix` nor the standard library wraps).
pub fn clear_capabilities() -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    // _LINUX_CAPABILITY_VERSION_3: two `Data` words cover capabilities 0..64.
    let mut header = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: `header` and `data` are live, correctly laid out (`repr(C)`, the version-3 layout
    // with two data words) and outlive the call; capset only reads `data`.
    let result =
        unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Make the child of `command` take `uid` as its real, effective and saved user id right before
/// it executes.
///
/// `Command::uid` calls `setuid`, which an unprivileged process may only use to return to its
/// real or saved id; `setresuid` also accepts the current effective id. The sandbox agent runs
/// with effective uid 0 but a real and saved uid of its own, without capabilities, and its
/// children become plain uid 0 this way.
pub fn set_child_uid(command: &mut Command, uid: u32) {
    // SAFETY: runs in the forked child before exec; `setresuid` is async-signal-safe and takes
    // plain integers.
    unsafe {
        command.pre_exec(move || {
            if libc::setresuid(uid, uid, uid) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Make the child of `command` the leader of a new session whose controlling terminal is its
/// stdin, which must be the slave side of a pseudo-terminal: then the terminal's line
/// discipline sends it (and the jobs of an interactive shell) SIGINT on ctrl-C, SIGWINCH on a
/// resize, SIGHUP when the terminal goes away.
///
/// `std::process::Command` has no safe way to do either step. The command must not also ask
/// for a process group (`process_group`): `setsid` refuses a process that already leads one.
/// The new session's process group is the child's pid, as with `process_group(0)`.
pub fn set_controlling_terminal(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls `setsid` and
    // `ioctl(TIOCSCTTY)` with an integer argument, both async-signal-safe, touching no memory
    // of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Set the window size of the terminal `fd` belongs to (either side of a pseudo-terminal);
/// the kernel sends SIGWINCH to the terminal's foreground process group.
pub fn set_window_size(fd: BorrowedFd<'_>, cols: u16, rows: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `fd` is a live descriptor for the borrow's duration; TIOCSWINSZ only reads the
    // `winsize` struct, which lives on this stack frame until the call returns.
    let result = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ as _, &size) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The window size of the terminal `fd` belongs to, as (cols, rows).
pub fn window_size(fd: BorrowedFd<'_>) -> io::Result<(u16, u16)> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `fd` is a live descriptor for the borrow's duration; TIOCGWINSZ writes one
    // `winsize` struct, which lives on this stack frame until the call returns.
    let result = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ as _, &mut size) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((size.ws_col, size.ws_row))
}

/// Read inherited descriptor `fd` to its end (at most `limit` bytes), then close it.
///
/// A process started ahead of its request (the files API's pre-started helper) gets its
/// request on a pipe at a fixed descriptor next to stdio; `std` has no safe way to adopt a
/// descriptor by number. The caller must have inherited `fd` and wrapped it nowhere else: it
/// is closed here. More than `limit` bytes is an `InvalidData` error (the rest is not read).
pub fn read_inherited_to_end(fd: RawFd, limit: usize) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let outcome = loop {
        // SAFETY: `chunk` is a live stack buffer of `chunk.len()` bytes that `read` may fill;
        // `read` on a descriptor that is not open fails with EBADF and touches no memory.
        let n = unsafe { libc::read(fd, chunk.as_mut_ptr().cast(), chunk.len()) };
        if n < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break Err(error);
        }
        if n == 0 {
            break Ok(());
        }
        // `n` is positive and at most `chunk.len()` here.
        bytes.extend_from_slice(&chunk[..n as usize]);
        if bytes.len() > limit {
            break Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than {limit} bytes on descriptor {fd}"),
            ));
        }
    };
    // SAFETY: `close` takes a plain integer; the caller guarantees nothing else owns `fd`,
    // so no other handle is left pointing at a closed (or reused) descriptor.
    unsafe { libc::close(fd) };
    outcome.map(|()| bytes)
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

    #[test]
    fn child_uid_is_set_for_real_effective_and_saved() {
        let mut command = Command::new("/bin/sh");
        command.args(["-c", "grep '^Uid:' /proc/self/status"]);
        set_child_uid(&mut command, 65534);
        let output = command.output().expect("sh runs");
        let line = String::from_utf8_lossy(&output.stdout);
        let ids: Vec<&str> = line.split_whitespace().skip(1).collect();
        // real, effective, saved, filesystem
        assert_eq!(ids, ["65534"; 4], "{line:?}");
    }

    /// Capability sets belong to a thread: a thread of its own drops them and reports what
    /// remains, leaving the test process as it was.
    #[test]
    fn a_thread_can_drop_every_capability() {
        let status = std::thread::spawn(|| {
            drop_capability_bounding_set().expect("drop the bounding set");
            clear_capabilities().expect("capset");
            std::fs::read_to_string("/proc/thread-self/status").expect("status")
        })
        .join()
        .expect("the thread ran");
        for set in ["CapBnd", "CapEff", "CapPrm", "CapInh"] {
            let line = status
                .lines()
                .find(|line| line.starts_with(set))
                .unwrap_or_else(|| panic!("no {set} in {status}"));
            assert!(line.ends_with("0000000000000000"), "{line}");
        }
    }

    /// A child on a pseudo-terminal's slave, made its session's controlling terminal, sees a
    /// terminal of the size set on the master side.
    #[test]
    fn a_child_gets_a_controlling_terminal_of_the_size_set() {
        use std::io::Read;
        use std::os::fd::{AsFd, FromRawFd, OwnedFd};
        use std::process::Stdio;
        let (mut master, mut slave) = (0, 0);
        // SAFETY: both out-pointers are live integers; the name, termios and winsize pointers
        // may be null.
        let result = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(result, 0, "openpty: {}", io::Error::last_os_error());
        // SAFETY: openpty returned two descriptors nobody else owns.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        set_window_size(master.as_fd(), 123, 45).expect("TIOCSWINSZ");
        let mut command = Command::new("/bin/sh");
        command
            .args(["-c", "stty size; test -t 0 && echo tty; ps -o sid= -p $$"])
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        set_controlling_terminal(&mut command);
        let mut child = command.spawn().expect("spawn on the terminal");
        // The command holds copies of the slave side until dropped.
        drop(command);
        let pid = child.id();
        child.wait().expect("wait");
        let mut output = Vec::new();
        let mut master = std::fs::File::from(master);
        let mut buffer = [0u8; 4096];
        // The slave side is closed once the child is gone: the master reads what is left,
        // then EIO (on Linux).
        while let Ok(n @ 1..) = master.read(&mut buffer) {
            output.extend_from_slice(&buffer[..n]);
        }
        let text = String::from_utf8_lossy(&output);
        assert!(text.contains("45 123"), "{text:?}");
        assert!(text.contains("tty"), "{text:?}");
        // It leads its own session.
        assert!(text.contains(&format!("{pid}")), "{text:?}");
    }

    #[test]
    fn an_inherited_descriptor_is_read_to_its_end_within_a_limit() {
        use std::io::Write;
        use std::os::fd::IntoRawFd;
        let read_all = |bytes: &[u8], limit: usize| {
            let (reader, mut writer) = std::io::pipe().unwrap();
            writer.write_all(bytes).unwrap();
            drop(writer);
            read_inherited_to_end(reader.into_raw_fd(), limit)
        };
        let request = vec![b'x'; 10_000];
        assert_eq!(read_all(&request, 10_000).unwrap(), request);
        assert_eq!(read_all(b"", 10).unwrap(), b"");
        let error = read_all(&request, 4096).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        assert_eq!(
            read_inherited_to_end(-1, 10).unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
    }
}
