//! Server configuration, read once from environment variables at start.
//!
//! Every knob has a default that suits a small Cloud Run instance; `README.md` lists them all.
//! A malformed value is a start-up error naming the variable, never a silent default.

use std::path::PathBuf;
use std::time::Duration;

use crate::http::api_keys::ApiKeys;

#[derive(Debug, Clone)]
pub struct Config {
    /// `PORT` (Cloud Run sets it).
    pub port: u16,
    /// `SANDBOX_LISTEN_ADDR`: loopback by default; the container image sets 0.0.0.0.
    pub listen_addr: String,
    /// `SANDBOX_ROOTFS`: the sandbox image built by `scripts/build-rootfs.sh`.
    pub rootfs: PathBuf,
    /// `SANDBOX_AGENT_PATH`: the `sandbox-agent` binary (default: next to this executable).
    pub agent_path: PathBuf,
    /// `SANDBOX_STATE_DIR`: runsc state, bundles and logs of this server instance.
    pub state_dir: PathBuf,
    /// `SANDBOX_RUNSC`: the runsc binary.
    pub runsc: PathBuf,
    /// `SANDBOX_POOL_SIZE`: sandboxes kept started and idle, ready for the next request.
    pub pool_size: usize,
    /// `SANDBOX_POOL_MAX`: how many the pool may keep when requests find it empty (it grows by
    /// four per such request, and shrinks back by one per quiet minute).
    pub pool_max: usize,
    /// `SANDBOX_SNAPSHOT_POOL_SIZE`: sandboxes kept restored from each snapshot used since start.
    pub snapshot_pool_size: usize,
    /// `SANDBOX_SNAPSHOT_POOLS_MAX`: snapshots that have a pool at most; a create from one more
    /// drops the pool of the least recently used.
    pub snapshot_pools_max: usize,
    /// `SANDBOX_MAX_SANDBOXES`: live sandboxes (pool included) at most.
    pub max_sandboxes: usize,
    /// `SANDBOX_CREATE_TIMEOUT_SECS`: a sandbox not ready by then is a creation error (it also
    /// bounds how long an attach waits for the checkpoint store's answer).
    pub create_timeout: Duration,
    /// `SANDBOX_READY_START_FAILURES`: after this many sandbox starts failed in a row,
    /// `/readyz` answers 503 until one succeeds (0: failures never make it fail).
    pub ready_start_failures: u32,
    /// `SANDBOX_STORE_SWEEP_SECS`: how often the checkpoint store is swept for what killed
    /// instances left (0: never; attaches still remove what they find).
    pub store_sweep_interval: Duration,
    pub limits: Limits,
    pub http: HttpLimits,
    pub ws: WsLimits,
    /// `CHECKPOINT_AND_RESTORE_PATH`: unset disables checkpointing.
    pub checkpoint_path: Option<PathBuf>,
    /// `FILESYSTEM_SNAPSHOT_PATH`: unset disables snapshots.
    pub snapshot_path: Option<PathBuf>,
    /// `SANDBOX_SHUTDOWN_TIMEOUT_SECS`: how long SIGTERM handling may take at most.
    pub shutdown_timeout: Duration,
    /// `SANDBOX_LEASE_TTL_SECS`: how long a claim on a checkpointable sandbox lasts unrenewed
    /// (an instance that crashed frees its sandboxes after this).
    pub lease_ttl: Duration,
    /// `SANDBOX_LEASE_SETTLE_MS`: 0 (default) trusts the storage's exclusive create to decide
    /// between instances taking a lease; above 0, taking a lease also waits this long and reads
    /// its claim back (for storage without an exclusive create; docs/checkpoint.md).
    pub lease_settle: Duration,
    /// `SANDBOX_HANDOFF_POLL_MS`: how often an instance looks in the store for requests to hand
    /// over the sandboxes it runs with `enable_sandbox_handoff` (one small read per sandbox).
    pub handoff_poll: Duration,
    /// `SANDBOX_HANDOFF_TIMEOUT_SECS`: how long an attach waits for the instance running the
    /// sandbox to hand it over (longer than the lease TTL, so that a dead instance's lease
    /// expires within it).
    pub handoff_timeout: Duration,
    /// `SANDBOX_CPU_FEATURES`: pin the CPU features checkpointable sandboxes see (gVisor's
    /// `dev.gvisor.internal.cpufeatures` annotation), so checkpoints restore on other CPUs.
    pub cpu_features: Option<String>,
    pub egress: EgressConfig,
    /// `SANDBOX_WHEELHOUSE`: a directory of Python wheels mounted read-only in every sandbox at
    /// `/opt/wheelhouse`, for `pip install` without network.
    pub wheelhouse: Option<PathBuf>,
    /// `SANDBOX_CA_BUNDLE`: a PEM file of CA certificates mounted in every sandbox and used by
    /// pip, requests and OpenSSL there (egress through a TLS-inspecting proxy).
    pub ca_bundle: Option<PathBuf>,
    /// `SANDBOX_API_KEYS` (comma-separated) and `SANDBOX_API_KEYS_FILE` (one key per line):
    /// when either is set, every request but the health probes needs
    /// `Authorization: Bearer <key>`. `None`: no key is asked for.
    pub api_keys: Option<ApiKeys>,
    /// `SANDBOX_PLAYGROUND`: `on` (default) serves the browser playground at `/` and
    /// `/playground`; `off` answers 404 there.
    pub playground: bool,
    pub ports: PortsConfig,
    pub mcp: McpConfig,
}

/// Exposed ports (issue 20): how their URLs look and what bounds their connections.
#[derive(Debug, Clone)]
pub struct PortsConfig {
    /// `SANDBOX_PUBLIC_URL`: the server's URL as clients reach it (`https://sandbox.example`);
    /// unset: built from each request's `Host` and `X-Forwarded-Proto`.
    pub public_url: Option<String>,
    /// `SANDBOX_PORTS_DOMAIN`: a domain whose subdomains all lead to this server (wildcard
    /// DNS); set, port URLs are `<port>-<capability>.<domain>`; unset, `/ports/<capability>/`.
    pub domain: Option<String>,
    /// `SANDBOX_PORTS_REQUIRE_KEY`: `on` makes opening a port URL need an API key too
    /// (default `off`: the capability in the URL is the credential, a share link).
    pub require_key: bool,
    /// `SANDBOX_MAX_PORT_CONNECTIONS`: open connections through the ports of one sandbox.
    pub max_connections_per_sandbox: usize,
    /// `SANDBOX_MAX_EXPOSED_PORTS`: ports one sandbox may expose at once.
    pub max_exposed_per_sandbox: usize,
    /// `SANDBOX_PORT_RESPONSE_TIMEOUT_SECS`: an application that sends nothing back within
    /// this after a request was passed on gets the client a 504.
    pub response_timeout: Duration,
    /// `SANDBOX_PORT_IDLE_TIMEOUT_SECS`: a connection through a port on which nothing moved
    /// either way for this long is closed (it holds one of the sandbox's port connections).
    pub idle_timeout: Duration,
    /// `SANDBOX_PORT_PRECONNECT`: `on` (the default) has the agent open the next connection
    /// to a port's application as soon as one ends, so that the next request finds it open;
    /// the application then sees an idle connection for up to 3 s after each one.
    pub preconnect: bool,
}

/// Limits applied to sandboxes and executions.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `SANDBOX_EXEC_TIMEOUT_SECS`: wall-clock time of one execution unless it asks for another.
    pub exec_timeout: Duration,
    /// `SANDBOX_MAX_EXEC_TIMEOUT_SECS`: the most an execution may ask for.
    pub max_exec_timeout: Duration,
    /// `SANDBOX_MAX_OUTPUT_BYTES`: stdout + stderr of one execution; past it, it is killed.
    pub max_output_bytes: u64,
    /// `SANDBOX_MAX_RESULT_BYTES`: the largest result of a code cell (its MIME bundle) sent as
    /// it is; a larger one is replaced by its text/plain and a note.
    pub max_result_bytes: u64,
    /// `SANDBOX_MAX_CODE_BYTES`: size of the submitted code.
    pub max_code_bytes: usize,
    /// `SANDBOX_PROCESS_MEMORY_MB`: address space of each process (clean `MemoryError`).
    pub process_memory_mb: u64,
    /// `SANDBOX_MEMORY_MB`: memory cgroup of the whole sandbox (the backstop).
    pub sandbox_memory_mb: u64,
    /// `SANDBOX_CPUS`: CPU quota of the sandbox, in CPUs (may be fractional).
    pub cpus: f64,
    /// `SANDBOX_MAX_PROCESSES`: processes inside one sandbox (stops fork bombs).
    pub max_processes: u64,
    /// `SANDBOX_MAX_FILE_MB`: largest file a process may write.
    pub max_file_mb: u64,
}

/// Limits on HTTP connections.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// `SANDBOX_MAX_CONNECTIONS`.
    pub max_connections: usize,
    /// `SANDBOX_MAX_HEADER_BYTES`.
    pub max_header_bytes: usize,
    /// `SANDBOX_REQUEST_TIMEOUT_SECS`: a request must arrive completely within this time.
    pub request_timeout: Duration,
    /// `SANDBOX_KEEPALIVE_TIMEOUT_SECS`: an idle keep-alive connection is closed after this.
    pub keepalive_timeout: Duration,
    /// `SANDBOX_WRITE_TIMEOUT_SECS`: a client that reads nothing for this long is dropped.
    pub write_timeout: Duration,
}

/// Limits on WebSocket sessions.
#[derive(Debug, Clone)]
pub struct WsLimits {
    /// `SANDBOX_MAX_SESSIONS`: sessions (attached or not) at most.
    pub max_sessions: usize,
    /// `SANDBOX_WS_MAX_MESSAGE_BYTES`: larger frames or messages are closed with 1009.
    pub max_message_bytes: usize,
    /// `SANDBOX_WS_MESSAGES_PER_SEC`: sustained client messages per second (bursts of twice
    /// that are allowed); past it the connection is closed with 1008.
    pub messages_per_sec: u32,
    /// `SANDBOX_WS_PING_INTERVAL_SECS`: a quiet connection is pinged after this long.
    pub ping_interval: Duration,
    /// `SANDBOX_WS_PONG_TIMEOUT_SECS`: a peer silent this long is dropped (its sandbox stays).
    pub pong_timeout: Duration,
    /// `SANDBOX_WS_INIT_TIMEOUT_SECS`: a `/create` socket that sends no init message within
    /// this is refused and closed.
    pub init_timeout: Duration,
    /// `SANDBOX_IDLE_TIMEOUT_SECS`: idle timeout of sessions whose init does not set one.
    pub default_idle_timeout: Duration,
    /// `SANDBOX_MAX_IDLE_TIMEOUT_SECS`: the cap, also for `idle_timeout: 0` ("never").
    pub max_idle_timeout: Duration,
    /// `SANDBOX_DETACHED_OUTPUT_BYTES`: output kept for an absent client before the process
    /// is paused.
    pub detached_output_bytes: usize,
    /// `SANDBOX_RESEND_OUTPUT_BYTES`: the latest output sent to a client, kept so that a
    /// reconnect after a drop gets again what the drop swallowed (0: none).
    pub resend_output_bytes: usize,
    /// `SANDBOX_MAX_SESSION_PROCESSES`: processes one session runs at once (1 to 1024).
    pub max_session_processes: usize,
    /// `SANDBOX_STDIN_WINDOW_BYTES`: stdin a client may send to a process (started with a
    /// request id) before it is acknowledged (1 byte to 256 MiB).
    pub stdin_window_bytes: u64,
}

/// The most `SANDBOX_STDIN_WINDOW_BYTES` may be: up to twice this waits inside the sandbox
/// per process, in the agent's memory.
const MAX_STDIN_WINDOW_BYTES: u64 = 256 * 1024 * 1024;

/// The most `SANDBOX_MAX_SESSION_PROCESSES` may be.
const MAX_SESSION_PROCESSES: u64 = 1024;

/// The MCP endpoint `/mcp`.
#[derive(Debug, Clone)]
pub struct McpConfig {
    /// `SANDBOX_MCP_IDLE_TIMEOUT_SECS`: an MCP session, or a sandbox an MCP call created, is
    /// deleted after this long without a call.
    pub idle_timeout: Duration,
    /// `SANDBOX_MCP_MAX_SESSIONS`: MCP sessions (handshake revision) open at once.
    pub max_sessions: usize,
    /// `SANDBOX_MCP_OUTPUT_BYTES`: output of each stream a tool result keeps.
    pub output_bytes: usize,
    /// `SANDBOX_MCP_ALLOWED_ORIGINS`: browser origins allowed besides the server's own.
    pub allowed_origins: Vec<String>,
}

/// Network egress for sandboxes that ask for it.
#[derive(Debug, Clone)]
pub struct EgressConfig {
    /// `SANDBOX_EGRESS`: `on` (default) or `off` (no sandbox gets network).
    pub enabled: bool,
    /// `SANDBOX_EGRESS_ALLOW`: `host:port,...` a sandbox with egress may connect to.
    pub allow: Vec<crate::egress_policy::Destination>,
    /// `SANDBOX_EGRESS_SUBNET`: the /16 the sandboxes' veth pairs are numbered from.
    pub subnet: String,
}

/// Largest number of seconds any `*_SECS` variable accepts (about 31 years).
pub const MAX_CONFIG_SECS: u64 = 1_000_000_000;

/// A configuration problem, naming the variable and the value.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Read the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Read configuration through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env { lookup: &lookup };
        let default_agent = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("sandbox-agent")))
            .unwrap_or_else(|| PathBuf::from("/usr/local/bin/sandbox-agent"));
        let limits = Limits {
            exec_timeout: env.seconds("SANDBOX_EXEC_TIMEOUT_SECS", 60)?,
            max_exec_timeout: env.seconds("SANDBOX_MAX_EXEC_TIMEOUT_SECS", 3600)?,
            max_output_bytes: env.number("SANDBOX_MAX_OUTPUT_BYTES", 16 * 1024 * 1024)?,
            max_code_bytes: env.number("SANDBOX_MAX_CODE_BYTES", 1024 * 1024)? as usize,
            max_result_bytes: env.number("SANDBOX_MAX_RESULT_BYTES", 16 * 1024 * 1024)?,
            process_memory_mb: env.number("SANDBOX_PROCESS_MEMORY_MB", 1024)?,
            sandbox_memory_mb: env.number("SANDBOX_MEMORY_MB", 2048)?,
            cpus: env.float("SANDBOX_CPUS", 1.0)?,
            max_processes: env.number("SANDBOX_MAX_PROCESSES", 256)?,
            max_file_mb: env.number("SANDBOX_MAX_FILE_MB", 1024)?,
        };
        if limits.exec_timeout > limits.max_exec_timeout {
            return Err(ConfigError(format!(
                "SANDBOX_EXEC_TIMEOUT_SECS ({}) is larger than SANDBOX_MAX_EXEC_TIMEOUT_SECS ({})",
                limits.exec_timeout.as_secs(),
                limits.max_exec_timeout.as_secs()
            )));
        }
        let http = HttpLimits {
            max_connections: env.number("SANDBOX_MAX_CONNECTIONS", 1024)? as usize,
            max_header_bytes: env.number("SANDBOX_MAX_HEADER_BYTES", 16 * 1024)? as usize,
            request_timeout: env.seconds("SANDBOX_REQUEST_TIMEOUT_SECS", 30)?,
            keepalive_timeout: env.seconds("SANDBOX_KEEPALIVE_TIMEOUT_SECS", 60)?,
            write_timeout: env.seconds("SANDBOX_WRITE_TIMEOUT_SECS", 60)?,
        };
        let ws = WsLimits {
            max_sessions: env.number("SANDBOX_MAX_SESSIONS", 64)? as usize,
            max_message_bytes: env.number("SANDBOX_WS_MAX_MESSAGE_BYTES", 4 * 1024 * 1024)?
                as usize,
            messages_per_sec: env.number("SANDBOX_WS_MESSAGES_PER_SEC", 100)? as u32,
            ping_interval: env.seconds("SANDBOX_WS_PING_INTERVAL_SECS", 20)?,
            pong_timeout: env.seconds("SANDBOX_WS_PONG_TIMEOUT_SECS", 60)?,
            init_timeout: env.seconds("SANDBOX_WS_INIT_TIMEOUT_SECS", 10)?,
            default_idle_timeout: env.seconds("SANDBOX_IDLE_TIMEOUT_SECS", 300)?,
            max_idle_timeout: env.seconds("SANDBOX_MAX_IDLE_TIMEOUT_SECS", 3600)?,
            detached_output_bytes: env.number("SANDBOX_DETACHED_OUTPUT_BYTES", 1024 * 1024)?
                as usize,
            resend_output_bytes: env.number("SANDBOX_RESEND_OUTPUT_BYTES", 1024 * 1024)? as usize,
            max_session_processes: env.bounded(
                "SANDBOX_MAX_SESSION_PROCESSES",
                16,
                1..=MAX_SESSION_PROCESSES,
            )? as usize,
            stdin_window_bytes: env.bounded(
                "SANDBOX_STDIN_WINDOW_BYTES",
                4 * 1024 * 1024,
                1..=MAX_STDIN_WINDOW_BYTES,
            )?,
        };
        Ok(Config {
            port: env
                .number("PORT", 8080)?
                .try_into()
                .map_err(|_| ConfigError("PORT must be at most 65535".into()))?,
            listen_addr: env.string("SANDBOX_LISTEN_ADDR", "127.0.0.1"),
            rootfs: env.path("SANDBOX_ROOTFS", "/var/lib/cloud-run-sandbox/rootfs"),
            agent_path: env
                .optional_path("SANDBOX_AGENT_PATH")
                .unwrap_or(default_agent),
            state_dir: env.path("SANDBOX_STATE_DIR", "/run/cloud-run-sandbox"),
            runsc: env.path("SANDBOX_RUNSC", "runsc"),
            pool_size: env.number("SANDBOX_POOL_SIZE", 2)? as usize,
            pool_max: env.number("SANDBOX_POOL_MAX", 10)? as usize,
            max_sandboxes: env.number("SANDBOX_MAX_SANDBOXES", 32)? as usize,
            snapshot_pool_size: env.number("SANDBOX_SNAPSHOT_POOL_SIZE", 1)? as usize,
            snapshot_pools_max: env.number("SANDBOX_SNAPSHOT_POOLS_MAX", 4)? as usize,
            create_timeout: env.seconds("SANDBOX_CREATE_TIMEOUT_SECS", 30)?,
            ready_start_failures: env
                .number("SANDBOX_READY_START_FAILURES", 3)?
                .try_into()
                .map_err(|_| {
                    ConfigError("SANDBOX_READY_START_FAILURES must be at most 4294967295".into())
                })?,
            store_sweep_interval: env.seconds("SANDBOX_STORE_SWEEP_SECS", 600)?,
            limits,
            http,
            ws,
            checkpoint_path: env.optional_path("CHECKPOINT_AND_RESTORE_PATH"),
            snapshot_path: env.optional_path("FILESYSTEM_SNAPSHOT_PATH"),
            shutdown_timeout: env.seconds("SANDBOX_SHUTDOWN_TIMEOUT_SECS", 10)?,
            lease_ttl: env.seconds("SANDBOX_LEASE_TTL_SECS", 30)?,
            lease_settle: Duration::from_millis(env.number("SANDBOX_LEASE_SETTLE_MS", 0)?),
            handoff_poll: Duration::from_millis(
                env.number("SANDBOX_HANDOFF_POLL_MS", 500)?.max(10),
            ),
            handoff_timeout: env.seconds("SANDBOX_HANDOFF_TIMEOUT_SECS", 45)?,
            cpu_features: env.raw("SANDBOX_CPU_FEATURES"),
            wheelhouse: env.optional_path("SANDBOX_WHEELHOUSE"),
            ca_bundle: env.optional_path("SANDBOX_CA_BUNDLE"),
            api_keys: api_keys(&env)?,
            playground: env.on_off("SANDBOX_PLAYGROUND", true)?,
            ports: PortsConfig {
                public_url: env
                    .raw("SANDBOX_PUBLIC_URL")
                    .map(|url| url.trim().trim_end_matches('/').to_string())
                    .filter(|url| !url.is_empty()),
                domain: env
                    .raw("SANDBOX_PORTS_DOMAIN")
                    .map(|domain| domain.trim().trim_matches('.').to_ascii_lowercase())
                    .filter(|domain| !domain.is_empty()),
                require_key: env.on_off("SANDBOX_PORTS_REQUIRE_KEY", false)?,
                max_connections_per_sandbox: env.bounded(
                    "SANDBOX_MAX_PORT_CONNECTIONS",
                    64,
                    1..=65536,
                )? as usize,
                max_exposed_per_sandbox: env.bounded("SANDBOX_MAX_EXPOSED_PORTS", 16, 1..=1024)?
                    as usize,
                response_timeout: env.seconds("SANDBOX_PORT_RESPONSE_TIMEOUT_SECS", 60)?,
                idle_timeout: env.seconds("SANDBOX_PORT_IDLE_TIMEOUT_SECS", 300)?,
                preconnect: env.on_off("SANDBOX_PORT_PRECONNECT", true)?,
            },
            mcp: McpConfig {
                idle_timeout: env.seconds("SANDBOX_MCP_IDLE_TIMEOUT_SECS", 600)?,
                max_sessions: env.bounded("SANDBOX_MCP_MAX_SESSIONS", 1024, 1..=1_000_000)?
                    as usize,
                output_bytes: env.bounded(
                    "SANDBOX_MCP_OUTPUT_BYTES",
                    64 * 1024,
                    1..=16 * 1024 * 1024,
                )? as usize,
                allowed_origins: env
                    .string("SANDBOX_MCP_ALLOWED_ORIGINS", "")
                    .split(',')
                    .map(str::trim)
                    .filter(|origin| !origin.is_empty())
                    .map(str::to_string)
                    .collect(),
            },
            egress: EgressConfig {
                enabled: env.on_off("SANDBOX_EGRESS", true)?,
                allow: crate::egress_policy::parse_policy(&env.string(
                    "SANDBOX_EGRESS_ALLOW",
                    "pypi.org:443,files.pythonhosted.org:443",
                ))
                .map_err(|error| ConfigError(format!("SANDBOX_EGRESS_ALLOW: {error}")))?,
                subnet: env.string("SANDBOX_EGRESS_SUBNET", "10.213.0.0/16"),
            },
        })
    }
}

/// The keys of `SANDBOX_API_KEYS` and of the file `SANDBOX_API_KEYS_FILE` (both may be set; a
/// request may then present any of them). A variable that is set but empty is an error rather
/// than "no keys": a server that silently runs open because a secret did not arrive is the
/// failure this catches. Errors name a key by its position, never by its text.
fn api_keys(env: &Env) -> Result<Option<ApiKeys>, ConfigError> {
    let set_but_empty = |name: &str| {
        ConfigError(format!(
            "{name} is set but empty: give at least one key, or unset it to run without keys"
        ))
    };
    let list = match (env.lookup)("SANDBOX_API_KEYS") {
        None => None,
        Some(text) if text.trim().is_empty() => return Err(set_but_empty("SANDBOX_API_KEYS")),
        Some(text) => {
            Some(ApiKeys::from_comma_list(&text, "SANDBOX_API_KEYS").map_err(ConfigError)?)
        }
    };
    let file = match (env.lookup)("SANDBOX_API_KEYS_FILE") {
        None => None,
        Some(path) if path.trim().is_empty() => return Err(set_but_empty("SANDBOX_API_KEYS_FILE")),
        Some(path) => {
            let path = path.trim();
            let text = std::fs::read_to_string(path).map_err(|error| {
                ConfigError(format!(
                    "SANDBOX_API_KEYS_FILE: cannot read {path}: {error}"
                ))
            })?;
            let source = format!("SANDBOX_API_KEYS_FILE {path}");
            Some(ApiKeys::from_lines(&text, &source).map_err(ConfigError)?)
        }
    };
    Ok(match (list, file) {
        (Some(list), Some(file)) => Some(list.merge(file)),
        (list, file) => list.or(file),
    })
}

struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Env<'_> {
    fn raw(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
            .map(|value| value.trim().to_string())
            .filter(|value| !value.is_empty())
    }

    fn string(&self, name: &str, default: &str) -> String {
        self.raw(name).unwrap_or_else(|| default.to_string())
    }

    /// A switch: `on` or `off`, nothing else.
    fn on_off(&self, name: &str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(name).as_deref() {
            None => Ok(default),
            Some("on" | "1") => Ok(true),
            Some("off" | "0") => Ok(false),
            Some(other) => Err(ConfigError(format!(
                "{name} must be on or off, got {other:?}"
            ))),
        }
    }

    fn path(&self, name: &str, default: &str) -> PathBuf {
        PathBuf::from(self.string(name, default))
    }

    fn optional_path(&self, name: &str) -> Option<PathBuf> {
        self.raw(name).map(PathBuf::from)
    }

    fn number(&self, name: &str, default: u64) -> Result<u64, ConfigError> {
        match self.raw(name) {
            None => Ok(default),
            Some(value) => value.parse().map_err(|_| {
                ConfigError(format!(
                    "{name} must be a non-negative integer, got {value:?}"
                ))
            }),
        }
    }

    /// [`Env::number`] within `range`.
    fn bounded(
        &self,
        name: &str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<u64, ConfigError> {
        let value = self.number(name, default)?;
        if !range.contains(&value) {
            return Err(ConfigError(format!(
                "{name} must be from {} to {}, got {value}",
                range.start(),
                range.end()
            )));
        }
        Ok(value)
    }

    fn float(&self, name: &str, default: f64) -> Result<f64, ConfigError> {
        match self.raw(name) {
            None => Ok(default),
            Some(value) => match value.parse::<f64>() {
                Ok(number) if number.is_finite() && number > 0.0 => Ok(number),
                _ => Err(ConfigError(format!(
                    "{name} must be a positive number, got {value:?}"
                ))),
            },
        }
    }

    /// Seconds, at most [`MAX_CONFIG_SECS`]: deadlines are `now + value`, which must not
    /// overflow, and a larger number is a typo rather than a wish.
    fn seconds(&self, name: &str, default: u64) -> Result<Duration, ConfigError> {
        let seconds = self.number(name, default)?;
        if seconds > MAX_CONFIG_SECS {
            return Err(ConfigError(format!(
                "{name} must be at most {MAX_CONFIG_SECS} seconds, got {seconds}"
            )));
        }
        Ok(Duration::from_secs(seconds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_and_port_from_env() {
        let defaults = config(&[]).unwrap();
        assert_eq!(defaults.port, 8080);
        assert_eq!(defaults.listen_addr, "127.0.0.1");
        assert!(defaults.checkpoint_path.is_none());
        assert_eq!(config(&[("PORT", "9000")]).unwrap().port, 9000);
        assert_eq!(defaults.ws.init_timeout, Duration::from_secs(10));
        assert_eq!(defaults.ready_start_failures, 3);
        assert_eq!(defaults.store_sweep_interval, Duration::from_secs(600));
        assert_eq!(defaults.ws.max_session_processes, 16);
        assert_eq!(defaults.ws.stdin_window_bytes, 4 * 1024 * 1024);
        assert_eq!(
            defaults.lease_settle,
            Duration::ZERO,
            "no settle by default"
        );
        assert_eq!(defaults.handoff_poll, Duration::from_millis(500));
        assert!(defaults.handoff_timeout > defaults.lease_ttl);
        assert!(defaults.playground);
        assert!(!config(&[("SANDBOX_PLAYGROUND", "off")]).unwrap().playground);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let error = config(&[("SANDBOX_POOL_SIZE", "many")]).unwrap_err();
        assert!(
            error.0.contains("SANDBOX_POOL_SIZE") && error.0.contains("many"),
            "{}",
            error.0
        );
        assert!(config(&[("PORT", "70000")]).is_err());
        for name in [
            "SANDBOX_WS_INIT_TIMEOUT_SECS",
            "SANDBOX_READY_START_FAILURES",
            "SANDBOX_STORE_SWEEP_SECS",
            "SANDBOX_HANDOFF_POLL_MS",
            "SANDBOX_HANDOFF_TIMEOUT_SECS",
        ] {
            let error = config(&[(name, "soon")]).unwrap_err();
            assert!(error.0.contains(name), "{}", error.0);
        }
        assert!(config(&[("SANDBOX_READY_START_FAILURES", "4294967296")]).is_err());
        for name in ["SANDBOX_PLAYGROUND", "SANDBOX_EGRESS"] {
            let error = config(&[(name, "false")]).unwrap_err();
            assert_eq!(error.0, format!("{name} must be on or off, got \"false\""));
        }
        assert!(config(&[("SANDBOX_CPUS", "-1")]).is_err());
        let error = config(&[
            ("SANDBOX_EXEC_TIMEOUT_SECS", "100"),
            ("SANDBOX_MAX_EXEC_TIMEOUT_SECS", "10"),
        ]);
        assert!(error.is_err());
        // Deadlines are `now + seconds`: absurd values are refused at start, not at the first
        // request that uses them.
        let error =
            config(&[("SANDBOX_MAX_EXEC_TIMEOUT_SECS", "18446744073709551615")]).unwrap_err();
        assert!(
            error.0.contains("SANDBOX_MAX_EXEC_TIMEOUT_SECS") && error.0.contains("at most"),
            "{}",
            error.0
        );
        assert!(config(&[("SANDBOX_MAX_IDLE_TIMEOUT_SECS", "1000000000")]).is_ok());
        for (name, value) in [
            ("SANDBOX_MAX_SESSION_PROCESSES", "0"),
            ("SANDBOX_MAX_SESSION_PROCESSES", "1025"),
            ("SANDBOX_STDIN_WINDOW_BYTES", "0"),
            ("SANDBOX_STDIN_WINDOW_BYTES", "268435457"),
        ] {
            let error = config(&[(name, value)]).unwrap_err();
            assert!(
                error.0.contains(name) && error.0.contains(value),
                "{}",
                error.0
            );
        }
    }

    #[test]
    fn api_keys_from_the_list_and_the_file() {
        assert!(config(&[]).unwrap().api_keys.is_none());
        let keys = config(&[("SANDBOX_API_KEYS", "key-one,key-two")])
            .unwrap()
            .api_keys
            .unwrap();
        assert!(keys.accepts(b"key-one") && keys.accepts(b"key-two"));

        let dir = std::env::temp_dir().join(format!("crs-config-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keys");
        std::fs::write(&file, "file-key\n").unwrap();
        let path = file.to_str().unwrap();
        let keys = config(&[("SANDBOX_API_KEYS_FILE", path)])
            .unwrap()
            .api_keys
            .unwrap();
        assert!(keys.accepts(b"file-key") && !keys.accepts(b"key-one"));
        let both = config(&[
            ("SANDBOX_API_KEYS_FILE", path),
            ("SANDBOX_API_KEYS", "key-one"),
        ])
        .unwrap()
        .api_keys
        .unwrap();
        assert!(both.accepts(b"file-key") && both.accepts(b"key-one"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_api_key_settings_are_start_up_errors_without_the_keys() {
        for (pairs, expected) in [
            (
                vec![("SANDBOX_API_KEYS", "")],
                "SANDBOX_API_KEYS is set but empty",
            ),
            (
                vec![("SANDBOX_API_KEYS", "  ")],
                "SANDBOX_API_KEYS is set but empty",
            ),
            (
                vec![("SANDBOX_API_KEYS", "visible-key,,other")],
                "key 2 of 3 is empty",
            ),
            (
                vec![("SANDBOX_API_KEYS_FILE", "/nonexistent/crs-keys")],
                "cannot read /nonexistent/crs-keys",
            ),
            (
                vec![("SANDBOX_API_KEYS_FILE", "")],
                "SANDBOX_API_KEYS_FILE is set but empty",
            ),
        ] {
            let error = config(&pairs).unwrap_err();
            assert!(error.0.contains(expected), "{pairs:?}: {}", error.0);
            assert!(!error.0.contains("visible-key"), "{}", error.0);
        }
    }
}
