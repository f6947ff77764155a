//! Cloud Run Sandbox: runs untrusted Python and Bash in gVisor sandboxes.
//!
//! The rooms, from the bottom up (each only uses the ones above it in this list):
//! - [`agent_protocol`]: frames between the server and the agent inside a sandbox (the
//!   `sandbox-agent` crate, `agent/`, which also holds the agent itself: PID 1 of every
//!   sandbox, its own binary);
//! - `runtime`: the `runsc` driver and the sandbox lifecycle state machine;
//! - `http` and the event loop in `server`.
#![forbid(unsafe_code)]

/// The agent protocol, from the `sandbox-agent` crate: the server uses nothing else of it.
pub use sandbox_agent::protocol as agent_protocol;
pub mod config;
pub mod egress_policy;
/// Fuzz harnesses for the libFuzzer targets in `fuzz/`; not an API.
#[doc(hidden)]
pub mod fuzzing;
pub mod guard;
pub mod http;
pub mod ids;
pub mod io_token;
pub mod mcp;
pub mod metrics;
pub mod ports;
pub mod runtime;
pub mod server;
pub mod session;
pub mod store;
pub mod timers;
