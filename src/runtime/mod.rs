//! The `runsc` driver: creates sandboxes, runs executions in them through their agent, and
//! deletes them. It reports what happens as [`Notice`]s for the owner of each sandbox (an HTTP
//! request or a session).
//!
//! Rooms, each with one job:
//! - [`core`]: every decision, without I/O: sandbox states ([`lifecycle`]), the executions of
//!   each sandbox ([`execs`], [`exec`]), the pools and slots ([`pool`]), the timers. Events
//!   in, actions out, on one queue.
//! - [`driver`]: [`Runtime`], the API the server calls; it feeds the core and performs its
//!   actions with the pieces below.
//! - [`agent_link`]: the pipes to each agent, frames in and out, read budgets.
//! - [`children`]: the `runsc` processes (`run`, `restore`, `delete`, `checkpoint`), reaping,
//!   log tails; [`runsc`] builds their command lines, [`bundle`] their OCI bundles.
//! - [`network`]: egress for the sandboxes that ask for it; [`setup`] and [`cleanup`]: the
//!   state directory at start; [`health`]: readiness; [`state_lock`]: one instance per
//!   state directory.
//!
//! It never blocks: `runsc` commands are child processes whose exit arrives via
//! [`Runtime::reap`] (the server is a child subreaper and reaps everything, including the
//! sandbox processes `runsc` leaves behind), and the agents' pipes are non-blocking and
//! registered with the event loop.

mod agent_link;
pub mod bundle;
mod children;
mod cleanup;
pub mod core;
mod driver;
mod error;
pub mod exec;
pub mod execs;
pub mod health;
pub mod lifecycle;
pub mod network;
pub mod pool;
pub mod refill;
pub mod runsc;
mod setup;
pub mod state_lock;

use std::fmt;
use std::time::Duration;

use crate::agent_protocol::{ContextInfo, ExecId, FileRequest, Language, Stream, TerminalSize};
use exec::ExecOutcome;

pub use self::core::Claimed;
pub use driver::Runtime;
pub use error::RuntimeError;
pub use execs::MAX_STDIN_IN_FLIGHT;
pub use setup::agent_config;

/// The runtime's handle of a sandbox (small, never reused); the public id is
/// [`crate::ids::SandboxId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SandboxKey(pub u64);

impl fmt::Display for SandboxKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Who a sandbox's notices go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Owner {
    Http(u64),
    Session(u64),
}

/// One execution to run.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub language: Language,
    pub code: String,
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub timeout: Duration,
    /// Bytes of stdin that may wait to be written to the process ([`MAX_STDIN_IN_FLIGHT`]
    /// unless its owner grants a larger window).
    pub stdin_bound: u64,
    /// A file operation instead of `code` (issue 14): its output is the file or a reply, so
    /// the output limit does not apply (the sandbox's own limits bound what a file can be).
    pub file: Option<FileRequest>,
    /// Run it on a pseudo-terminal of this size (a terminal process) instead of pipes.
    pub pty: Option<TerminalSize>,
    /// A code cell for a code context instead of a new process (issue 13).
    pub cell: Option<CellSpec>,
}

/// Where a code cell runs and what bounds its results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellSpec {
    pub context_id: String,
    /// The context's working directory, if the agent has to start it.
    pub cwd: String,
    /// `SANDBOX_MAX_RESULT_BYTES`.
    pub max_result_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEvent {
    Ready,
    StartFailed(String),
    /// A ready sandbox died (its executions were finished with `SandboxLost` first).
    Lost(String),
    Deleted,
    ExecStarted(ExecId),
    ExecSpawnFailed(ExecId, String),
    Output(ExecId, Stream, Vec<u8>),
    /// This many more bytes of the execution's stdin were written to its process, or
    /// discarded because the process closed its stdin.
    StdinWritten(ExecId, u32),
    ExecFinished(ExecId, ExecOutcome),
    /// Part of one event (a JSON object) of a code cell; `true` on its last part.
    CellEvent(ExecId, Vec<u8>, bool),
    /// The agent's code contexts (after each change, and after a restore).
    CodeContexts(Vec<ContextInfo>),
    /// `runsc checkpoint` finished; the container is stopped either way.
    Checkpointed(Result<(), String>),
    /// The checkpoint was refused before anything happened: the sandbox runs on.
    CheckpointRefused(String),
}

/// A runtime event for the owner of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub owner: Owner,
    pub sandbox: SandboxKey,
    pub event: RuntimeEvent,
}

/// Counters the metrics endpoint reports.
#[derive(Debug, Default, Clone)]
pub struct RuntimeStats {
    pub created: u64,
    pub start_failures: u64,
    pub lost: u64,
    /// Pooled sandboxes deleted to give their slot to real work.
    pub pool_evictions: u64,
    /// Seconds from `runsc run` to the agent's hello, one entry per ready sandbox since the
    /// last drain.
    pub start_seconds: Vec<f64>,
}
