//! Why the runtime refused a request, worded for the client (the message of the status it
//! gets), with the value at fault and the cause kept.

use std::fmt;
use std::io;

use super::network::NetworkError;

#[derive(Debug)]
pub enum RuntimeError {
    /// Every sandbox slot is held by real work: the limit.
    AtCapacity(usize),
    NoSuchSandbox,
    /// The request does not fit the sandbox's state (named).
    WrongState(&'static str),
    NoSuchExecution,
    /// The execution's stdin has as much in flight as allowed (its bound, in bytes).
    StdinFull(u64),
    /// The sandbox's agent raised its execution counter to the last id.
    NoExecIdsLeft,
    /// The kernel gave no random bytes for an id.
    NoRandomness(io::Error),
    /// This server gives no sandbox network egress (why).
    EgressUnavailable(String),
    Network(NetworkError),
    /// The sandbox's bundle directory could not be prepared.
    Prepare(io::Error),
    /// `runsc` could not be started for a new sandbox (bundle, pipes, spawn).
    Start(io::Error),
    /// A message from the layer above (the server's snapshot checks before a create).
    Io(String),
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuntimeError::AtCapacity(limit) => {
                write!(
                    f,
                    "the server is at its limit of {limit} sandboxes; retry shortly"
                )
            }
            RuntimeError::NoSuchSandbox => write!(f, "the sandbox does not exist"),
            RuntimeError::WrongState(state) => write!(f, "the sandbox is {state}"),
            RuntimeError::NoSuchExecution => write!(f, "no execution is running"),
            RuntimeError::StdinFull(bound) => write!(
                f,
                "the process is not reading its stdin: more than {bound} bytes are waiting"
            ),
            RuntimeError::NoExecIdsLeft => write!(f, "the sandbox has no execution ids left"),
            RuntimeError::NoRandomness(source) => write!(f, "no randomness: {source}"),
            RuntimeError::EgressUnavailable(reason) => f.write_str(reason),
            RuntimeError::Network(error) => write!(f, "{error}"),
            RuntimeError::Prepare(source) => write!(f, "cannot prepare the sandbox: {source}"),
            RuntimeError::Start(source) => write!(f, "cannot start a sandbox: {source}"),
            RuntimeError::Io(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for RuntimeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RuntimeError::NoRandomness(source)
            | RuntimeError::Prepare(source)
            | RuntimeError::Start(source) => Some(source),
            RuntimeError::Network(error) => Some(error),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    #[test]
    fn messages_name_the_value_and_keep_the_cause() {
        assert_eq!(
            RuntimeError::AtCapacity(6).to_string(),
            "the server is at its limit of 6 sandboxes; retry shortly"
        );
        assert_eq!(
            RuntimeError::WrongState("checkpointing").to_string(),
            "the sandbox is checkpointing"
        );
        let start = RuntimeError::Start(io::Error::from(io::ErrorKind::NotFound));
        assert!(
            start.to_string().starts_with("cannot start a sandbox: "),
            "{start}"
        );
        assert!(start.source().is_some());
        let network = RuntimeError::Network(NetworkError::NoPublicAddress {
            host: "example.test".into(),
        });
        assert_eq!(
            network.to_string(),
            "egress destination example.test has no public IPv4 address"
        );
        assert!(RuntimeError::NoSuchSandbox.source().is_none());
    }
}
