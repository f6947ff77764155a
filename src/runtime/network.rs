//! Network egress for sandboxes that ask for it: a network namespace and a veth pair per
//! sandbox, and one nftables table per server instance that decides what may leave.
//!
//! runsc's netstack writes frames straight to the veth, so filtering inside the namespace would
//! be up to the sandbox: the rules sit on the host side instead. What they allow:
//! - new TCP connections from a sandbox to the destinations of the egress policy (by default the
//!   Python package index and its file host on port 443), resolved by the server when the
//!   sandbox starts and written into the sandbox's `/etc/hosts` (the sandbox has no DNS);
//! - replies to those connections.
//!
//! Everything else from a sandbox is dropped: the host itself (so the server's port and any
//! host service), link-local addresses (the cloud metadata server), private ranges (unless an
//! operator lists an address explicitly), other sandboxes. Nothing may connect into a sandbox.
//!
//! Every name is derived from a tag of the state directory, so a restarted server finds and
//! removes what a killed predecessor left: namespaces `crs-<tag>-<n>`, host interfaces
//! `cv<tag><n>`, the table `crs_<tag>`.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::egress_policy::Destination;

/// Addresses a hostname may never resolve to (an explicit IP in the policy may still be one).
fn is_internal(address: Ipv4Addr) -> bool {
    address.is_private()
        || address.is_loopback()
        || address.is_link_local()
        || address.is_unspecified()
        || address.is_broadcast()
        || address.is_multicast()
        || address.octets()[0] == 100 && (address.octets()[1] & 0xc0) == 64 // carrier-grade NAT
}

/// The tag in the names of an instance's namespaces (`crs-<tag>-<n>`), host veths
/// (`cv<tag><n>`) and table (`crs_<tag>`), derived from its state directory.
pub fn instance_tag(state_dir: &Path) -> String {
    let digest = Sha256::digest(state_dir.to_string_lossy().as_bytes());
    digest
        .iter()
        .take(3)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The egress of one sandbox, to remove when it goes.
#[derive(Debug, Clone)]
pub struct SandboxNetwork {
    pub netns: String,
    pub netns_path: PathBuf,
    host_interface: String,
}

pub struct Network {
    tag: String,
    table: String,
    /// First two octets of the /16 the veth pairs are numbered from.
    subnet: [u8; 2],
    policy: Vec<Destination>,
    next: u32,
    /// Sandboxes with egress now; the table exists only while there are some, so a server
    /// whose sandboxes never ask for network leaves no trace in the host's firewall.
    active: usize,
}

/// What went wrong while setting up egress, naming the command or value at fault.
#[derive(Debug)]
pub enum NetworkError {
    /// `SANDBOX_EGRESS_SUBNET` is not an `a.b.0.0/16`.
    Subnet(String),
    /// `ip` or `nft` could not be run or talked to.
    Command {
        program: String,
        source: std::io::Error,
    },
    /// `ip` or `nft` refused: the command and what it said.
    Refused {
        command: String,
        stderr: String,
    },
    Forwarding(std::io::Error),
    Resolve {
        host: String,
        source: std::io::Error,
    },
    NoPublicAddress {
        host: String,
    },
    /// Setting up one sandbox's namespace and veth failed (what is made so far is removed).
    Sandbox(Box<NetworkError>),
}

impl std::fmt::Display for NetworkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetworkError::Subnet(subnet) => write!(
                f,
                "SANDBOX_EGRESS_SUBNET must look like 10.213.0.0/16, got {subnet:?}"
            ),
            NetworkError::Command { program, source } => {
                write!(f, "cannot run {program}: {source}")
            }
            NetworkError::Refused { command, stderr } => write!(f, "{command}: {stderr}"),
            NetworkError::Forwarding(source) => {
                write!(f, "cannot enable IP forwarding: {source}")
            }
            NetworkError::Resolve { host, source } => {
                write!(f, "cannot resolve egress destination {host}: {source}")
            }
            NetworkError::NoPublicAddress { host } => {
                write!(f, "egress destination {host} has no public IPv4 address")
            }
            NetworkError::Sandbox(error) => {
                write!(f, "cannot set up the sandbox's network: {error}")
            }
        }
    }
}

impl std::error::Error for NetworkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NetworkError::Command { source, .. }
            | NetworkError::Forwarding(source)
            | NetworkError::Resolve { source, .. } => Some(source),
            NetworkError::Sandbox(error) => Some(error.as_ref()),
            _ => None,
        }
    }
}

fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<(), NetworkError> {
    let failed = |source| NetworkError::Command {
        program: program.to_string(),
        source,
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = command.spawn().map_err(failed)?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write;
        stdin.write_all(text.as_bytes()).map_err(failed)?;
    }
    let output = child.wait_with_output().map_err(failed)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(NetworkError::Refused {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

impl Network {
    /// `state_dir` names this instance's resources; `subnet` is a /16 given as `a.b.0.0/16`.
    pub fn new(
        state_dir: &Path,
        subnet: &str,
        policy: Vec<Destination>,
    ) -> Result<Self, NetworkError> {
        let digest = Sha256::digest(state_dir.to_string_lossy().as_bytes());
        let tag: String = digest
            .iter()
            .take(3)
            .map(|byte| format!("{byte:02x}"))
            .collect();
        let prefix = subnet
            .strip_suffix(".0.0/16")
            .ok_or_else(|| NetworkError::Subnet(subnet.to_string()))?;
        let octets: Vec<u8> = prefix
            .split('.')
            .filter_map(|part| part.parse().ok())
            .collect();
        let [first, second] = octets[..] else {
            return Err(NetworkError::Subnet(subnet.to_string()));
        };
        Ok(Network {
            table: format!("crs_{tag}"),
            tag,
            subnet: [first, second],
            policy,
            next: 0,
            active: 0,
        })
    }

    /// Whether this host can do it at all (`ip` and `nft` present).
    pub fn available() -> bool {
        ["ip", "nft"].iter().all(|program| {
            Command::new(program)
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        })
    }

    /// Remove what a previous instance left.
    pub fn start(&mut self) -> Result<(), NetworkError> {
        self.remove_leftovers();
        Ok(())
    }

    /// Install this instance's table (before its first sandbox with egress).
    fn install_table(&self) -> Result<(), NetworkError> {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(NetworkError::Forwarding)?;
        let (a, b) = (self.subnet[0], self.subnet[1]);
        let (table, tag) = (&self.table, &self.tag);
        let rules = format!(
            "table inet {table} {{
  set allowed {{ type ipv4_addr . inet_service; }}
  chain forward {{
    type filter hook forward priority -10; policy accept;
    oifname \"cv{tag}*\" ct state established,related accept
    oifname \"cv{tag}*\" drop
    iifname \"cv{tag}*\" ct state established,related accept
    iifname \"cv{tag}*\" ip daddr . tcp dport @allowed accept
    iifname \"cv{tag}*\" drop
  }}
  chain input {{
    type filter hook input priority -10; policy accept;
    iifname \"cv{tag}*\" drop
  }}
  chain postrouting {{
    type nat hook postrouting priority 100; policy accept;
    ip saddr {a}.{b}.0.0/16 oifname != \"cv{tag}*\" masquerade
  }}
}}
"
        );
        run("nft", &["-f", "-"], Some(&rules))
    }

    /// Delete our namespaces (their veth pairs go with them) and our table.
    pub fn remove_leftovers(&self) {
        let prefix = format!("crs-{}-", self.tag);
        if let Ok(entries) = std::fs::read_dir("/var/run/netns") {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) {
                    let _ = run("ip", &["netns", "delete", &name], None);
                }
            }
        }
        let _ = run("nft", &["delete", "table", "inet", &self.table], None);
    }

    /// Resolve the policy: addresses to allow, and `/etc/hosts` lines for the sandbox.
    pub fn resolve(&self) -> Result<(Vec<(Ipv4Addr, u16)>, String), NetworkError> {
        let mut allowed = Vec::new();
        let mut hosts = String::from("127.0.0.1 localhost sandbox\n::1 localhost\n");
        for destination in &self.policy {
            if let Ok(address) = destination.host.parse::<Ipv4Addr>() {
                allowed.push((address, destination.port));
                continue;
            }
            let addresses: Vec<Ipv4Addr> = (destination.host.as_str(), destination.port)
                .to_socket_addrs()
                .map_err(|source| NetworkError::Resolve {
                    host: destination.host.clone(),
                    source,
                })?
                .filter_map(|address| match address {
                    SocketAddr::V4(v4) => Some(*v4.ip()),
                    SocketAddr::V6(_) => None,
                })
                .filter(|address| !is_internal(*address))
                .collect();
            if addresses.is_empty() {
                return Err(NetworkError::NoPublicAddress {
                    host: destination.host.clone(),
                });
            }
            for address in &addresses {
                allowed.push((*address, destination.port));
            }
            hosts.push_str(&format!("{} {}\n", addresses[0], destination.host));
        }
        Ok((allowed, hosts))
    }

    /// A namespace with a veth pair for one sandbox, allowed to reach `allowed`.
    pub fn create(&mut self, allowed: &[(Ipv4Addr, u16)]) -> Result<SandboxNetwork, NetworkError> {
        let index = self.next;
        self.next = (self.next + 1) % 16_384;
        let (a, b) = (self.subnet[0], self.subnet[1]);
        let (third, fourth) = ((index / 64) as u8, ((index % 64) * 4) as u8);
        let host_ip = format!("{a}.{b}.{third}.{}", fourth + 1);
        let sandbox_ip = format!("{a}.{b}.{third}.{}", fourth + 2);
        let netns = format!("crs-{}-{index}", self.tag);
        let host_interface = format!("cv{}{index:04x}", self.tag);
        let peer = format!("cp{}{index:04x}", self.tag);
        let network = SandboxNetwork {
            netns_path: PathBuf::from(format!("/var/run/netns/{netns}")),
            netns: netns.clone(),
            host_interface: host_interface.clone(),
        };
        let host_side = format!(
            "netns add {netns}
link add {host_interface} type veth peer name {peer}
link set {peer} netns {netns}
address add {host_ip}/30 dev {host_interface}
link set {host_interface} up
"
        );
        let sandbox_side = format!(
            "link set lo up
link set {peer} name eth0
address add {sandbox_ip}/30 dev eth0
link set eth0 up
route add default via {host_ip}
"
        );
        if self.active == 0 {
            self.install_table()?;
        }
        self.active += 1;
        let result = run("ip", &["-batch", "-"], Some(&host_side))
            .and_then(|()| run("ip", &["-n", &netns, "-batch", "-"], Some(&sandbox_side)))
            .and_then(|()| {
                if allowed.is_empty() {
                    return Ok(());
                }
                let elements: Vec<String> = allowed
                    .iter()
                    .map(|(address, port)| format!("{address} . {port}"))
                    .collect();
                let command = format!(
                    "add element inet {} allowed {{ {} }}\n",
                    self.table,
                    elements.join(", ")
                );
                run("nft", &["-f", "-"], Some(&command))
            });
        match result {
            Ok(()) => Ok(network),
            Err(error) => {
                self.destroy(&network);
                Err(NetworkError::Sandbox(Box::new(error)))
            }
        }
    }

    pub fn destroy(&mut self, network: &SandboxNetwork) {
        let _ = run("ip", &["netns", "delete", &network.netns], None);
        // The veth pair goes with the namespace; this only matters if the namespace was never
        // created.
        let _ = run("ip", &["link", "delete", &network.host_interface], None);
        self.active = self.active.saturating_sub(1);
        if self.active == 0 {
            let _ = run("nft", &["delete", "table", "inet", &self.table], None);
        }
    }

    /// Shutdown: remove the table and any namespace left.
    pub fn stop(&self) {
        self.remove_leftovers();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised() {
        for internal in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.169.254",
            "100.64.0.1",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        assert!(!is_internal("151.101.0.223".parse().unwrap()));
    }

    #[test]
    fn names_fit_interface_limits() {
        let mut network = Network::new(Path::new("/run/x"), "10.213.0.0/16", vec![]).unwrap();
        network.next = 16_383;
        let name = format!("cv{}{:04x}", network.tag, network.next);
        assert!(name.len() <= 15, "{name}");
        assert!(Network::new(Path::new("/x"), "10.213.0.0/24", vec![]).is_err());
    }
}
