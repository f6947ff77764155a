//! Command lines for the `runsc` binary.
//!
//! Only builds `Command`s; spawning and waiting is the runtime's job (the server reaps every
//! child itself, as a subreaper, so nothing here may call `wait`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What the installed runsc supports, detected once at start (the Debian build here and the
/// recent release in the container image differ).
#[derive(Debug, Clone)]
pub struct Features {
    /// `--overlay2=root:memory` exists (older builds only know `--overlay`).
    pub overlay2: bool,
    /// The version line, for the logs.
    pub version: String,
}

impl Features {
    pub fn detect(runsc: &Path) -> std::io::Result<Features> {
        let version = Command::new(runsc)
            .arg("--version")
            .stdin(Stdio::null())
            .output()?;
        let flags = Command::new(runsc)
            .arg("flags")
            .stdin(Stdio::null())
            .output()?;
        let flags_text = String::from_utf8_lossy(&flags.stdout).into_owned()
            + &String::from_utf8_lossy(&flags.stderr);
        Ok(Features {
            overlay2: flags_text.contains("overlay2"),
            version: String::from_utf8_lossy(&version.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
        })
    }
}

#[derive(Debug, Clone)]
pub struct Runsc {
    binary: PathBuf,
    /// runsc's `--root`: where this server instance keeps container state.
    state_root: PathBuf,
    features: Features,
}

impl Runsc {
    pub fn new(binary: PathBuf, state_root: PathBuf, features: Features) -> Self {
        Runsc {
            binary,
            state_root,
            features,
        }
    }

    pub fn state_root(&self) -> &Path {
        &self.state_root
    }

    fn base(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command.arg(format!("--root={}", self.state_root.display()));
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // If the server dies, its helpers must not linger waiting on it.
        sandbox_ffi::set_parent_death_signal(&mut command, libc::SIGKILL);
        command
    }

    /// `runsc run --detach`: starts the container and returns once it runs. The container
    /// inherits this command's stdio: the caller sets stdin/stdout (the agent's pipes) and
    /// stderr (the sandbox's log file, which then holds runsc's errors and the agent's).
    /// With `egress`, the container uses the network namespace named in its bundle.
    pub fn run_detached(&self, bundle: &Path, container_id: &str, egress: bool) -> Command {
        let mut command = self.container_command(egress);
        command
            .args(["run", "--detach", "--bundle"])
            .arg(bundle)
            .arg(container_id);
        command
    }

    /// `runsc restore --detach`: like `run_detached`, from a checkpoint image.
    pub fn restore_detached(
        &self,
        image: &Path,
        bundle: &Path,
        container_id: &str,
        egress: bool,
    ) -> Command {
        let mut command = self.container_command(egress);
        command.args(["restore", "--detach"]);
        command.arg(format!("--image-path={}", image.display()));
        command.arg("--bundle").arg(bundle).arg(container_id);
        command
    }

    /// runsc with the flags every container of ours starts with (run or restore).
    ///
    /// runsc refuses `--network=sandbox` in the host's network namespace on this kernel unless it
    /// runs in a private mount namespace with a tmpfs over `/proc/sys/net`: `unshare` makes one
    /// for this command alone, then execs runsc.
    fn container_command(&self, egress: bool) -> Command {
        let mut command = if egress {
            let mut wrapper = Command::new("unshare");
            wrapper.args(["--mount", "--propagation", "private", "sh", "-c"]);
            wrapper.arg(r#"mount -t tmpfs -o size=64k tmpfs /proc/sys/net && exec "$0" "$@""#);
            wrapper.arg(&self.binary);
            wrapper
        } else {
            Command::new(&self.binary)
        };
        command.arg(format!("--root={}", self.state_root.display()));
        command.arg(if egress {
            "--network=sandbox"
        } else {
            "--network=none"
        });
        if self.features.overlay2 {
            command.arg("--overlay2=root:memory");
        } else {
            command.arg("--overlay");
        }
        command
    }

    /// `runsc checkpoint`: saves the container into `image` and stops it. The caller sends
    /// stderr to a log, which holds the reason if it fails.
    pub fn checkpoint(&self, image: &Path, container_id: &str) -> Command {
        let mut command = self.base();
        command
            .arg("checkpoint")
            .arg(format!("--image-path={}", image.display()))
            .arg(container_id);
        command
    }

    /// `runsc delete --force`: kills what still runs and removes the container's state.
    pub fn delete_force(&self, container_id: &str) -> Command {
        let mut command = self.base();
        command.args(["delete", "--force", container_id]);
        command
    }

    /// `runsc list --quiet`: the ids of the containers under our state root.
    pub fn list_quiet(&self) -> Command {
        let mut command = self.base();
        command.args(["list", "--quiet"]).stdout(Stdio::piped());
        command
    }
}
