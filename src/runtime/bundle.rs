//! The OCI bundle (config.json) of one sandbox.
//!
//! What the sandbox sees: the image built by `scripts/build-rootfs.sh` as its root (writable
//! through runsc's in-memory overlay, so nothing reaches the host), the agent binary read-only at
//! `/.sandbox`, fresh /proc, /dev/shm and /tmp, and nothing else of the host. Its network is
//! whatever runsc's `--network` flag gives (none by default).

use std::path::Path;

use serde_json::{json, Value};

use crate::agent::AgentConfig;
use crate::config::Limits;

/// Where the agent's directory is mounted inside the sandbox.
pub const AGENT_MOUNT: &str = "/.sandbox";
/// The agent's file name inside that directory.
pub const AGENT_FILE: &str = "sandbox-agent";

/// The base environment of every execution.
pub fn base_env() -> Vec<(String, String)> {
    [
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("HOME", "/root"),
        ("LANG", "C.UTF-8"),
        ("PYTHONUNBUFFERED", "1"),
        ("PYTHONDONTWRITEBYTECODE", "1"),
        ("MPLBACKEND", "Agg"),
        ("TERM", "dumb"),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_string(), value.to_string()))
    .collect()
}

/// Build config.json for a sandbox.
pub fn spec(
    rootfs: &Path,
    agent_dir: &Path,
    agent: &AgentConfig,
    limits: &Limits,
    cgroup: &str,
    cpu_features: Option<&str>,
) -> Value {
    let agent_arg = serde_json::to_string(agent).unwrap_or_default();
    let memory_bytes = limits.sandbox_memory_mb.saturating_mul(1024 * 1024);
    let period: u64 = 100_000;
    let quota = (limits.cpus * period as f64).round() as u64;
    let mut annotations = serde_json::Map::new();
    if let Some(features) = cpu_features {
        // Checkpoints hold CPU state: pinning the feature set lets them restore on other hosts.
        annotations.insert("dev.gvisor.internal.cpufeatures".into(), features.into());
    }
    json!({
        "ociVersion": "1.0.2",
        "annotations": annotations,
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": [format!("{AGENT_MOUNT}/{AGENT_FILE}"), agent_arg],
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "noNewPrivileges": true,
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096}]
        },
        "root": {"path": rootfs, "readonly": false},
        "hostname": "sandbox",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "nodev", "mode=1777", "size=256m"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=1777"]},
            {"destination": AGENT_MOUNT, "type": "bind", "source": agent_dir,
             "options": ["rbind", "ro"]}
        ],
        "linux": {
            "cgroupsPath": cgroup,
            "resources": {
                "memory": {"limit": memory_bytes},
                "cpu": {"quota": quota, "period": period}
            },
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}
            ]
        }
    })
}
