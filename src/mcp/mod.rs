//! The Model Context Protocol endpoint `/mcp`, without I/O (docs/mcp.md).
//!
//! - [`jsonrpc`]: one JSON-RPC message per body, its errors and answers;
//! - [`version`]: the two revisions (handshake 2025-11-25 and older, single-exchange
//!   2026-07-28) and how a version is chosen;
//! - [`endpoint`]: an HTTP request to an action (a reply now, a tool call, a session ended);
//! - [`registry`]: MCP sessions and the sandboxes MCP calls created, their owners and idle time;
//! - [`tools`]: the tools' schemas and checked arguments;
//! - [`call`]: one tool call as a machine fed the sandbox session's events;
//! - [`spill`]: output past a result's cap, written to a file in the sandbox;
//! - [`files`]: one file tool call (read, write, list) as a machine fed its session's events.
//!
//! A tool call drives the sandbox through the same session machine as a WebSocket client
//! (`crate::session`): the event loop (`server/mcp.rs`) sends it the messages a client would
//! and hands each call the events of its request id, so every limit and rule applies unchanged.

pub mod call;
pub mod endpoint;
pub mod files;
pub mod jsonrpc;
pub mod registry;
pub mod spill;
pub mod tools;
pub mod version;
