//! The OCI bundle (config.json) of one sandbox.
//!
//! What the sandbox sees: the image built by `scripts/build-rootfs.sh` as its root (writable
//! through runsc's in-memory overlay, so nothing reaches the host), the agent binary read-only at
//! `/.sandbox`, fresh /proc, /dev/shm and /tmp, and nothing else of the host. Its network is
//! whatever runsc's `--network` flag gives (none by default).

use std::io;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::agent_protocol::{AgentConfig, AGENT_CAPABILITIES, AGENT_UID};
use crate::config::Limits;

/// Where the agent's directory is mounted inside the sandbox.
pub const AGENT_MOUNT: &str = "/.sandbox";
/// The agent's file name inside that directory.
pub const AGENT_FILE: &str = "sandbox-agent";

/// The base environment of every execution. Without network, pip looks only at the
/// wheelhouse (if any) instead of retrying an index it cannot reach. With an operator's CA
/// bundle (for example behind a TLS-inspecting proxy), pip, requests and OpenSSL use it.
pub fn base_env(wheelhouse: bool, network: bool, ca_bundle: bool) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
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
    .collect();
    if wheelhouse {
        env.push(("PIP_FIND_LINKS".into(), WHEELHOUSE_MOUNT.into()));
    }
    if !network {
        env.push(("PIP_NO_INDEX".into(), "1".into()));
    }
    if ca_bundle {
        for variable in ["PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"] {
            env.push((variable.into(), CA_BUNDLE_MOUNT.into()));
        }
    }
    env
}

/// Where an operator's wheelhouse is mounted inside sandboxes (read-only).
pub const WHEELHOUSE_MOUNT: &str = "/opt/wheelhouse";
/// Where an operator's CA bundle is mounted inside sandboxes (read-only).
pub const CA_BUNDLE_MOUNT: &str = "/opt/sandbox-ca-bundle.pem";

/// What varies between sandboxes' bundles.
pub struct BundleSpec<'a> {
    pub rootfs: &'a Path,
    pub agent_dir: &'a Path,
    pub agent: &'a AgentConfig,
    pub limits: &'a Limits,
    pub cgroup: &'a str,
    pub cpu_features: Option<&'a str>,
    /// A directory of wheels for offline `pip install`.
    pub wheelhouse: Option<&'a Path>,
    /// A PEM bundle of CA certificates that TLS inside the sandbox trusts instead of the image's.
    pub ca_bundle: Option<&'a Path>,
    /// The network namespace of a sandbox with egress (`None`: no network).
    pub netns: Option<&'a Path>,
    /// The sandbox's own `/etc/hosts` (egress sandboxes resolve their destinations through it).
    pub hosts: Option<&'a Path>,
}

/// What every sandbox's bundle shares: the configuration, read once.
#[derive(Debug, Clone)]
pub struct BundleSettings {
    pub rootfs: PathBuf,
    /// The directory holding only the agent's copy (mounted at [`AGENT_MOUNT`]).
    pub agent_dir: PathBuf,
    pub agent: AgentConfig,
    pub limits: Limits,
    /// The cgroup every container's cgroup is made under.
    pub cgroup_parent: String,
    pub cpu_features: Option<String>,
    pub wheelhouse: Option<PathBuf>,
    pub ca_bundle: Option<PathBuf>,
}

impl BundleSettings {
    /// Write config.json for the next container in `bundle_dir`. The cgroup is named after the
    /// container, not the sandbox: a restored container must not share a cgroup with the
    /// checkpointed one that is being deleted beside it. With `netns` (egress), the sandbox
    /// uses that network namespace and the `hosts` file the runtime wrote in the bundle.
    pub fn write(
        &self,
        container: &str,
        bundle_dir: &Path,
        netns: Option<&Path>,
    ) -> io::Result<()> {
        std::fs::create_dir_all(bundle_dir)?;
        let cgroup = format!("{}/{}", self.cgroup_parent, container);
        let hosts = bundle_dir.join("hosts");
        let hosts = (netns.is_some() && hosts.exists()).then_some(hosts.as_path());
        let wheelhouse = self.wheelhouse.as_deref();
        let agent = AgentConfig {
            base_env: base_env(
                wheelhouse.is_some(),
                netns.is_some(),
                self.ca_bundle.is_some(),
            ),
            ..self.agent.clone()
        };
        let spec = spec(&BundleSpec {
            rootfs: &self.rootfs,
            agent_dir: &self.agent_dir,
            agent: &agent,
            limits: &self.limits,
            cgroup: &cgroup,
            cpu_features: self.cpu_features.as_deref(),
            wheelhouse,
            ca_bundle: self.ca_bundle.as_deref(),
            netns,
            hosts,
        });
        std::fs::write(
            bundle_dir.join("config.json"),
            serde_json::to_vec_pretty(&spec)?,
        )
    }
}

/// Build config.json for a sandbox.
pub fn spec(bundle: &BundleSpec<'_>) -> Value {
    let agent_arg = serde_json::to_string(bundle.agent).unwrap_or_default();
    let limits = bundle.limits;
    let memory_bytes = limits.sandbox_memory_mb.saturating_mul(1024 * 1024);
    let period: u64 = 100_000;
    let quota = (limits.cpus * period as f64).round() as u64;
    let mut annotations = serde_json::Map::new();
    if let Some(features) = bundle.cpu_features {
        // Checkpoints hold CPU state: pinning the feature set lets them restore on other hosts.
        annotations.insert("dev.gvisor.internal.cpufeatures".into(), features.into());
    }
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "nodev", "mode=1777", "size=256m"]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "nodev", "mode=1777"]}),
        json!({"destination": AGENT_MOUNT, "type": "bind", "source": bundle.agent_dir,
               "options": ["rbind", "ro"]}),
    ];
    if let Some(hosts) = bundle.hosts {
        mounts.push(
            json!({"destination": "/etc/hosts", "type": "bind", "source": hosts,
                           "options": ["bind", "ro"]}),
        );
    }
    if let Some(ca_bundle) = bundle.ca_bundle {
        mounts.push(
            json!({"destination": CA_BUNDLE_MOUNT, "type": "bind", "source": ca_bundle,
                           "options": ["bind", "ro"]}),
        );
    }
    if let Some(wheelhouse) = bundle.wheelhouse {
        mounts.push(
            json!({"destination": WHEELHOUSE_MOUNT, "type": "bind", "source": wheelhouse,
                           "options": ["rbind", "ro"]}),
        );
    }
    let network = match bundle.netns {
        Some(path) => json!({"type": "network", "path": path}),
        None => json!({"type": "network"}),
    };
    json!({
        "ociVersion": "1.0.2",
        "annotations": annotations,
        "process": {
            "terminal": false,
            // The agent's own uid owns its pipes to the server; it becomes root for everything
            // else and drops these capabilities at once (the agent's `identity` module).
            "user": {"uid": AGENT_UID, "gid": AGENT_UID},
            "capabilities": {
                "bounding": AGENT_CAPABILITIES,
                "effective": AGENT_CAPABILITIES,
                "permitted": AGENT_CAPABILITIES
            },
            "args": [format!("{AGENT_MOUNT}/{AGENT_FILE}"), agent_arg],
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "noNewPrivileges": true,
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096}]
        },
        "root": {"path": bundle.rootfs, "readonly": false},
        "hostname": "sandbox",
        "mounts": mounts,
        "linux": {
            "cgroupsPath": bundle.cgroup,
            "resources": {
                "memory": {"limit": memory_bytes},
                "cpu": {"quota": quota, "period": period}
            },
            "namespaces": [
                {"type": "pid"}, network, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}
            ]
        }
    })
}
