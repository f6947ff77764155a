//! The agent: the first process of every sandbox container, and the protocol the server speaks
//! with it.
//!
//! - [`protocol`]: the frames on the agent's stdin and stdout, its configuration, its uid. The
//!   server depends on this module only.
//! - [`Agent`]: the agent's loop (init of the container, executions, the processes started
//!   ahead of their requests: a bash, a child of the Python forkserver, a file helper).
//! - [`identity`]: who the agent is inside its sandbox, so that user code cannot speak for it.
//!
//! Dependencies: the protocol and `ffi/` (the one place for `unsafe`), nothing of the server.
#![forbid(unsafe_code)]

mod agent_loop;
mod context;
mod execution;
mod file_helper;
pub mod files;
mod forkserver;
pub mod identity;
mod pipes;
pub mod protocol;
mod relay;
mod standby;
mod warm;

pub use agent_loop::Agent;

use protocol::AgentConfig;

/// The agent's `main`: take its identity, read its configuration (the JSON of [`AgentConfig`]
/// as the only argument; none means the defaults), serve until the server closes its stdin.
/// Returns the process's exit code; errors go to stderr, which is the sandbox log.
pub fn main(config_argument: Option<&str>) -> i32 {
    // First, while the agent is still a single thread (capabilities belong to a thread).
    if let Err(error) = identity::take_identity() {
        eprintln!("sandbox-agent: cannot take its identity: {error}");
        return 1;
    }
    let config = match config_argument {
        Some(json) => match serde_json::from_str(json) {
            Ok(config) => config,
            Err(error) => {
                eprintln!("sandbox-agent: bad configuration argument: {error}");
                return 2;
            }
        },
        None => AgentConfig::default(),
    };
    let agent = match Agent::new(config) {
        Ok(agent) => agent,
        Err(error) => {
            eprintln!("sandbox-agent: cannot start: {error}");
            return 1;
        }
    };
    match agent.run() {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("sandbox-agent: {error}");
            1
        }
    }
}
