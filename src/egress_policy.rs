//! The egress policy an operator writes (`SANDBOX_EGRESS_ALLOW`): which destinations a sandbox
//! with network may connect to. Parsed with the configuration; enforced by `runtime::network`.

use std::fmt;

/// One allowed destination of the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub host: String,
    pub port: u16,
}

/// An item of the policy that is not a destination, quoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyError {
    NotHostPort(String),
    BadPort(String),
    BadHost(String),
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::NotHostPort(item) => {
                write!(f, "egress destination {item:?} must be host:port")
            }
            PolicyError::BadPort(item) => {
                write!(f, "egress destination {item:?} has an invalid port")
            }
            PolicyError::BadHost(item) => {
                write!(f, "egress destination {item:?} has an invalid host")
            }
        }
    }
}

impl std::error::Error for PolicyError {}

/// Parse `host:port,host:port` (an IPv4 address is a host too).
pub fn parse_policy(text: &str) -> Result<Vec<Destination>, PolicyError> {
    let mut destinations = Vec::new();
    for item in text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let (host, port) = item
            .rsplit_once(':')
            .ok_or_else(|| PolicyError::NotHostPort(item.to_string()))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| PolicyError::BadPort(item.to_string()))?;
        let valid_host = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
        if !valid_host {
            return Err(PolicyError::BadHost(item.to_string()));
        }
        destinations.push(Destination {
            host: host.to_string(),
            port,
        });
    }
    Ok(destinations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_reject_nonsense() {
        let policy =
            parse_policy("pypi.org:443, files.pythonhosted.org:443,10.0.0.5:8080").unwrap();
        assert_eq!(policy.len(), 3);
        assert_eq!(
            policy[2],
            Destination {
                host: "10.0.0.5".into(),
                port: 8080
            }
        );
        assert_eq!(
            parse_policy("pypi.org"),
            Err(PolicyError::NotHostPort("pypi.org".into()))
        );
        assert_eq!(
            parse_policy("pypi.org:0").unwrap_err().to_string(),
            "egress destination \"pypi.org:0\" has an invalid port"
        );
        assert_eq!(
            parse_policy("a b:1"),
            Err(PolicyError::BadHost("a b:1".into()))
        );
        assert!(parse_policy("").unwrap().is_empty());
    }
}
