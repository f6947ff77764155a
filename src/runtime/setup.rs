//! Getting the state directory ready before the first sandbox: what must exist, what a killed
//! predecessor left, the agent's copy, and what every sandbox is started with.
//!
//! Runs before the event loop exists, so it may block.

use std::io;
use std::path::{Path, PathBuf};

use crate::agent_protocol::{AgentConfig, ProcessLimits};
use crate::config::Config;

use super::bundle::{self, BundleSettings};
use super::network::Network;
use super::runsc::{Features, Runsc};
use super::{cleanup, state_lock};

/// What the runtime keeps from its start.
pub struct Prepared {
    pub state_lock: state_lock::StateLock,
    pub runsc: Runsc,
    pub bundles: BundleSettings,
    pub bundles_dir: PathBuf,
    /// Network egress for the sandboxes that ask for it (`None`: disabled or impossible here),
    /// and if not, why.
    pub network: Option<Network>,
    pub network_unavailable: String,
}

pub fn prepare(config: &Config) -> io::Result<Prepared> {
    // First of all: the cleanup below would destroy another live instance's sandboxes.
    let state_lock = state_lock::StateLock::acquire(&config.state_dir)?;
    let features = Features::detect(&config.runsc).map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("cannot run {}: {error}", config.runsc.display()),
        )
    })?;
    eprintln!(
        "runtime: {} (overlay2: {})",
        features.version, features.overlay2
    );
    check_paths(config)?;
    let (network, network_unavailable) = egress_network(config);
    let state_dir = &config.state_dir;
    let runsc = Runsc::new(config.runsc.clone(), state_dir.join("runsc"), features);
    let bundles_dir = state_dir.join("bundles");
    let agent_dir = state_dir.join("agent");
    let cgroup_parent = format!(
        "/{}",
        state_dir
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "cloud-run-sandbox".into())
    );
    cleanup::remove_leftovers(&runsc, state_dir, &cgroup_parent);
    for dir in [state_dir, runsc.state_root(), &bundles_dir, &agent_dir] {
        std::fs::create_dir_all(dir)?;
    }
    copy_agent(&config.agent_path, &agent_dir)?;
    let bundles = BundleSettings {
        rootfs: config.rootfs.clone(),
        agent_dir,
        agent: agent_config(config),
        limits: config.limits.clone(),
        cgroup_parent,
        cpu_features: config.cpu_features.clone(),
        wheelhouse: config.wheelhouse.clone(),
        ca_bundle: config.ca_bundle.clone(),
    };
    Ok(Prepared {
        state_lock,
        runsc,
        bundles,
        bundles_dir,
        network,
        network_unavailable,
    })
}

/// The image and the operator's files must exist before anything starts.
fn check_paths(config: &Config) -> io::Result<()> {
    if !config.rootfs.join("usr/bin/python3").exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "the sandbox image {} is missing or incomplete: run scripts/setup.sh",
                config.rootfs.display()
            ),
        ));
    }
    if let Some(bundle) = &config.ca_bundle {
        if !bundle.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("SANDBOX_CA_BUNDLE {} is not a file", bundle.display()),
            ));
        }
    }
    if let Some(wheelhouse) = &config.wheelhouse {
        if !wheelhouse.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "SANDBOX_WHEELHOUSE {} is not a directory",
                    wheelhouse.display()
                ),
            ));
        }
    }
    Ok(())
}

/// The sandbox sees a directory holding only the agent, never the host's build tree.
fn copy_agent(agent_path: &Path, agent_dir: &Path) -> io::Result<()> {
    let agent_copy = agent_dir.join(bundle::AGENT_FILE);
    // Readable and executable by all: the sandbox starts it as its own uid, not root.
    std::fs::copy(agent_path, &agent_copy)
        .and_then(|_| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&agent_copy, std::fs::Permissions::from_mode(0o755))
        })
        .map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("cannot copy the agent {}: {error}", agent_path.display()),
            )
        })
}

/// What every agent is started with (the environment is completed per bundle).
pub fn agent_config(config: &Config) -> AgentConfig {
    let limits = &config.limits;
    AgentConfig {
        limits: ProcessLimits {
            address_space_bytes: Some(limits.process_memory_mb * 1024 * 1024),
            processes: Some(limits.max_processes),
            cpu_seconds: None,
            file_size_bytes: Some(limits.max_file_mb * 1024 * 1024),
            open_files: Some(1024),
        },
        base_env: bundle::base_env(
            config.wheelhouse.is_some(),
            false,
            config.ca_bundle.is_some(),
        ),
        python_standby: true,
        bash_standby: true,
        file_standby: true,
        warm_port_connections: config.ports.preconnect,
    }
}

/// Set up network egress as configured, or say why sandboxes cannot have it.
fn egress_network(config: &Config) -> (Option<Network>, String) {
    if !config.egress.enabled {
        return (
            None,
            "network egress is disabled on this server (SANDBOX_EGRESS=off)".into(),
        );
    }
    if !Network::available() {
        return (
            None,
            "network egress is not available: this host lacks the ip or nft command".into(),
        );
    }
    let created = Network::new(
        &config.state_dir,
        &config.egress.subnet,
        config.egress.allow.clone(),
    )
    .and_then(|mut network| network.start().map(|()| network));
    match created {
        Ok(network) => (Some(network), String::new()),
        Err(error) => {
            eprintln!("runtime: network egress disabled: {error}");
            (
                None,
                format!("network egress is not available on this server: {error}"),
            )
        }
    }
}
