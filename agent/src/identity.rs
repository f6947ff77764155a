//! Who the agent is inside its sandbox: the one thing that keeps user code from speaking for it.
//!
//! The agent's stdin and stdout are the pipes to the server. Under gVisor (measured with runsc
//! 20221219, ptrace platform) any process may list `/proc/1/fd`, and opening `/proc/1/fd/N`
//! checks only the permissions of the file behind it. Those pipes are host files that gVisor
//! shows with mode 0600, owned by the uid the container was started as (the bundle's
//! `process.user`). Making the agent non-dumpable or taking `CAP_SYS_PTRACE` from user code
//! changes nothing there: gVisor makes no ptrace check on `/proc/PID/fd`.
//!
//! So the bundle starts the agent as [`AGENT_UID`], which owns the pipes, and the agent then:
//! - empties its capability bounding set, so nothing started from it can ever gain one;
//! - takes effective uid 0 (and gid 0, no supplementary groups), so the files it writes, the
//!   pipes it creates and the processes it signals are root's, as user code expects;
//! - keeps [`AGENT_UID`] as its real and saved uid: a signal needs the sender's uid to match
//!   the target's real or saved uid, so user code cannot kill or stop the agent;
//! - clears its capabilities.
//!
//! Its children become plain uid 0 before they execute (`setresuid(0, 0, 0)`, allowed because 0
//! is the agent's effective uid) and run with no capabilities, exactly as user code always did:
//! `pip install`, `HOME=/root` and files of earlier executions behave as before. As uid 0 without
//! `CAP_DAC_OVERRIDE` or `CAP_FOWNER`, user code can neither open, nor chmod, nor chown the
//! agent's pipes, nor ptrace it.

use std::io;

use nix::unistd::{getuid, setgroups, setresgid, setresuid, Gid, Uid};

pub use crate::protocol::{AGENT_CAPABILITIES, AGENT_UID};

/// Become what the module documentation describes. Call it first thing, before any thread
/// exists: capabilities belong to a thread.
pub fn take_identity() -> io::Result<()> {
    let uid = getuid();
    if uid.as_raw() != AGENT_UID {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "started as uid {uid}, not {AGENT_UID}: user code could reach the agent's pipes \
                 (the bundle's process.user must be {AGENT_UID})"
            ),
        ));
    }
    let root = (Uid::from_raw(0), Gid::from_raw(0));
    let agent = Uid::from_raw(AGENT_UID);
    sandbox_ffi::drop_capability_bounding_set()
        .map_err(|error| context("cannot empty the capability bounding set", error))?;
    setgroups(&[]).map_err(|error| context("setgroups", error.into()))?;
    setresgid(root.1, root.1, root.1).map_err(|error| context("setresgid", error.into()))?;
    setresuid(agent, root.0, agent).map_err(|error| context("setresuid", error.into()))?;
    sandbox_ffi::clear_capabilities()
        .map_err(|error| context("cannot clear the capabilities", error))?;
    Ok(())
}

fn context(what: &str, error: io::Error) -> io::Error {
    io::Error::new(error.kind(), format!("{what}: {error}"))
}

#[cfg(test)]
mod tests {
    /// Outside a sandbox (the tests run as root) the agent refuses before changing anything.
    #[test]
    fn refuses_any_uid_but_its_own() {
        let error = super::take_identity().expect_err("must refuse");
        assert_eq!(error.kind(), std::io::ErrorKind::PermissionDenied);
        let message = error.to_string();
        assert!(message.contains("not 65533"), "{message}");
        assert!(message.contains("process.user"), "{message}");
    }
}
