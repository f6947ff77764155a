//! Start-up cleanup: remove what a previous instance with the same state directory left behind
//! when it was killed (containers, their processes, bundles, cgroups).
//!
//! Runs before the event loop exists, so it may block and wait for its own children.

use std::path::Path;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::runsc::Runsc;

pub fn remove_leftovers(runsc: &Runsc, state_dir: &Path, cgroup_parent: &str) {
    if runsc.state_root().exists() {
        let ids = runsc
            .list_quiet()
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_default();
        for id in ids.lines().map(str::trim).filter(|id| !id.is_empty()) {
            eprintln!("cleanup: deleting container {id} left by a previous instance");
            let _ = runsc.delete_force(id).status();
        }
    }
    kill_orphan_runsc_processes(runsc.state_root());
    for leftover in ["bundles", "runsc"] {
        let path = state_dir.join(leftover);
        if path.exists() {
            if let Err(error) = std::fs::remove_dir_all(&path) {
                eprintln!("cleanup: cannot remove {}: {error}", path.display());
            }
        }
    }
    remove_cgroups(cgroup_parent);
}

/// A sandbox whose state file is gone (or whose `delete` failed) may still have runsc
/// processes; they name our state root on their command line.
fn kill_orphan_runsc_processes(state_root: &Path) {
    let needle = format!("--root={}", state_root.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let own_pid = std::process::id();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        if pid as u32 == own_pid {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|byte| *byte == 0).collect();
        let is_runsc = args.first().is_some_and(|arg0| {
            arg0.ends_with(b"runsc")
                || arg0.ends_with(b"runsc-sandbox")
                || arg0.ends_with(b"runsc-gofer")
        });
        if is_runsc && args.contains(&needle.as_bytes()) {
            eprintln!("cleanup: killing leftover runsc process {pid}");
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

pub fn remove_cgroups(parent: &str) {
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for controller in controllers.flatten() {
        let dir = controller.path().join(parent.trim_start_matches('/'));
        let Ok(children) = std::fs::read_dir(&dir) else {
            continue;
        };
        for child in children.flatten() {
            if child.path().is_dir() {
                let _ = std::fs::remove_dir(child.path());
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
}
