//! Exposed ports (issue 20), without I/O: which ports of which sandbox are exposed and under
//! which capability, how a request names one (path or host form), the URL handed out, and the
//! request head passed on to the application inside the sandbox.
//!
//! A capability is 128 random bits (32 lowercase hex digits), bound to one sandbox and one
//! port. It is kept and looked up by its SHA-256, like session tokens: the time a lookup takes
//! depends on the digest of what was presented, never on how much of a real capability it
//! matched; the entry found is then compared in constant time as well. Unknown, revoked and
//! wrong capabilities get the same answer (`not_found`), so nothing tells whether a sandbox or a
//! port exists.

pub mod requests;

use std::collections::{BTreeMap, HashMap};

use crate::http::request::Request;
use crate::ids::sha256_hex;
use crate::session::token::same;

/// Hex digits of a capability (128 bits).
pub const CAPABILITY_HEX: usize = 32;

/// What a capability is kept and looked up by, here and in the store (`store::port_links`).
pub fn capability_digest(capability: &str) -> String {
    sha256_hex(capability.as_bytes())
}

/// Where the path form of a port URL starts.
pub const PATH_PREFIX: &str = "/ports/";

/// One exposed port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposure {
    pub sandbox_id: String,
    pub port: u16,
    capability: String,
    /// The sandbox runs on this instance (false: it was checkpointed or moved; a request
    /// gets 503 until it is attached again).
    pub held_here: bool,
}

/// Every exposed port this instance knows of.
#[derive(Debug, Default)]
pub struct Exposures {
    /// By the SHA-256 of the capability.
    by_digest: HashMap<String, Exposure>,
    /// Sandbox id -> port -> capability digest.
    by_sandbox: HashMap<String, BTreeMap<u16, String>>,
}

/// Why a port cannot be exposed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExposeError {
    TooMany(usize),
}

impl std::fmt::Display for ExposeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExposeError::TooMany(limit) => write!(
                f,
                "the sandbox already exposes {limit} ports (SANDBOX_MAX_EXPOSED_PORTS); unexpose one first"
            ),
        }
    }
}

impl Exposures {
    /// Expose `port` of `sandbox_id` under `capability` (fresh random hex), or keep the
    /// capability it has already; the capability in effect.
    pub fn expose(
        &mut self,
        sandbox_id: &str,
        port: u16,
        capability: String,
        limit: usize,
    ) -> Result<String, ExposeError> {
        if let Some(existing) = self.capability_of(sandbox_id, port) {
            return Ok(existing);
        }
        let ports = self.by_sandbox.entry(sandbox_id.to_string()).or_default();
        if ports.len() >= limit {
            return Err(ExposeError::TooMany(limit));
        }
        let digest = capability_digest(&capability);
        ports.insert(port, digest.clone());
        self.by_digest.insert(
            digest,
            Exposure {
                sandbox_id: sandbox_id.to_string(),
                port,
                capability: capability.clone(),
                held_here: true,
            },
        );
        Ok(capability)
    }

    /// Revoke `port` of `sandbox_id`; the digest of its capability if it was exposed.
    pub fn unexpose(&mut self, sandbox_id: &str, port: u16) -> Option<String> {
        let ports = self.by_sandbox.get_mut(sandbox_id)?;
        let digest = ports.remove(&port)?;
        if ports.is_empty() {
            self.by_sandbox.remove(sandbox_id);
        }
        self.by_digest.remove(&digest);
        Some(digest)
    }

    /// Whether `port` of `sandbox_id` is exposed.
    pub fn is_exposed(&self, sandbox_id: &str, port: u16) -> bool {
        self.capability_of(sandbox_id, port).is_some()
    }

    fn capability_of(&self, sandbox_id: &str, port: u16) -> Option<String> {
        let digest = self.by_sandbox.get(sandbox_id)?.get(&port)?;
        self.by_digest
            .get(digest)
            .map(|exposure| exposure.capability.clone())
    }

    /// The exposed ports of `sandbox_id` and their capabilities, by port.
    pub fn of_sandbox(&self, sandbox_id: &str) -> Vec<(u16, String)> {
        self.by_sandbox
            .get(sandbox_id)
            .map(|ports| {
                ports
                    .values()
                    .filter_map(|digest| self.by_digest.get(digest))
                    .map(|exposure| (exposure.port, exposure.capability.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The sandbox is gone for good: its ports go with it. The digests of their capabilities.
    pub fn remove_sandbox(&mut self, sandbox_id: &str) -> Vec<String> {
        let digests: Vec<String> = self
            .by_sandbox
            .remove(sandbox_id)
            .unwrap_or_default()
            .into_values()
            .collect();
        for digest in &digests {
            self.by_digest.remove(digest);
        }
        digests
    }

    /// The sandbox left this instance (checkpointed, moved) or came back (restored here).
    pub fn set_held_here(&mut self, sandbox_id: &str, held: bool) {
        for digest in self
            .by_sandbox
            .get(sandbox_id)
            .into_iter()
            .flat_map(|p| p.values())
        {
            if let Some(exposure) = self.by_digest.get_mut(digest) {
                exposure.held_here = held;
            }
        }
    }

    /// The exposure `capability` names, if any (`port`: the port a host-form URL names,
    /// which must be the exposure's).
    pub fn find(&self, capability: &str, port: Option<u16>) -> Option<&Exposure> {
        let exposure = self.by_digest.get(&capability_digest(capability))?;
        let matches =
            same(&exposure.capability, capability) && port.is_none_or(|port| port == exposure.port);
        matches.then_some(exposure)
    }
}

/// Whether `text` has the shape of a capability (what clients may send back).
pub fn is_capability(text: &str) -> bool {
    text.len() == CAPABILITY_HEX
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What a request to a port URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortTarget {
    pub capability: String,
    /// The port a host-form URL names (`<port>-<capability>.<domain>`).
    pub port: Option<u16>,
    /// The request target to pass on (path and query, without the path form's prefix).
    pub upstream_target: String,
    /// The path form's prefix (`/ports/<capability>`), for `X-Forwarded-Prefix`; empty for
    /// the host form.
    pub prefix: String,
}

/// How a request names a port, if it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRoute {
    Target(PortTarget),
    /// `/ports/<capability>` without the slash: redirect there with it, so that relative links
    /// of the application resolve under the prefix.
    AddSlash(String),
}

/// The host of a `Host` header, without its port, lowercased.
fn host_name(host: &str) -> String {
    let host = host.trim();
    let without_port = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(']') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    };
    without_port.to_ascii_lowercase()
}

/// Whether `request` is for a port (path form, or host form under `domain`); such requests are
/// relayed instead of served by the API.
pub fn route(request: &Request, domain: Option<&str>) -> Option<PortRoute> {
    if let (Some(domain), Some(host)) = (domain, request.header("host")) {
        let host = host_name(host);
        let domain = host_name(domain);
        if let Some(label) = host
            .strip_suffix(&domain)
            .and_then(|rest| rest.strip_suffix('.'))
        {
            let (port, capability) = label.split_once('-')?;
            let port = port.parse::<u16>().ok()?;
            let target = if request.target.starts_with('/') {
                request.target.clone()
            } else {
                // An absolute-form target names the host again: pass on its path only.
                format!(
                    "{}{}",
                    request.path,
                    if request.query.is_empty() {
                        String::new()
                    } else {
                        format!("?{}", request.query)
                    }
                )
            };
            return Some(PortRoute::Target(PortTarget {
                capability: capability.to_string(),
                port: Some(port),
                upstream_target: target,
                prefix: String::new(),
            }));
        }
    }
    let rest = request.path.strip_prefix(PATH_PREFIX)?;
    let (capability, path) = match rest.split_once('/') {
        Some((capability, path)) => (capability, format!("/{path}")),
        None => {
            let query = if request.query.is_empty() {
                String::new()
            } else {
                format!("?{}", request.query)
            };
            return Some(PortRoute::AddSlash(format!("{PATH_PREFIX}{rest}/{query}")));
        }
    };
    let upstream_target = if request.query.is_empty() {
        path
    } else {
        format!("{path}?{}", request.query)
    };
    Some(PortRoute::Target(PortTarget {
        capability: capability.to_string(),
        port: None,
        upstream_target,
        prefix: format!("{PATH_PREFIX}{capability}")
            .trim_end_matches('/')
            .to_string(),
    }))
}

/// The server's public origin as a client sees it (`https://host[:port]`).
pub fn public_origin(configured: Option<&str>, request: &Request) -> String {
    if let Some(url) = configured {
        return url.to_string();
    }
    format!(
        "{}://{}",
        forwarded_proto(request),
        request.header("host").unwrap_or("localhost")
    )
}

/// `https` when a proxy in front says so (Cloud Run does), else `http`.
pub fn forwarded_proto(request: &Request) -> &'static str {
    match request.header("x-forwarded-proto") {
        Some(proto) if proto.trim().eq_ignore_ascii_case("https") => "https",
        _ => "http",
    }
}

/// The URL of `port` exposed under `capability`: host form under `domain`, else path form.
pub fn url(origin: &str, domain: Option<&str>, port: u16, capability: &str) -> String {
    match domain {
        Some(domain) => {
            let scheme = origin
                .split_once("://")
                .map_or("http", |(scheme, _)| scheme);
            format!("{scheme}://{port}-{capability}.{domain}/")
        }
        None => format!("{origin}{PATH_PREFIX}{capability}/"),
    }
}

/// Headers not passed on: hop-by-hop ones this relay decides itself, and the forwarding
/// headers it sets (a client must not spoof them).
const DROPPED_HEADERS: [&str; 6] = [
    "connection",
    "keep-alive",
    "x-forwarded-prefix",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-for",
];

/// How the head passed on is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamHead<'a> {
    pub target: &'a PortTarget,
    /// `X-Forwarded-Proto`.
    pub proto: &'a str,
    /// `Connection: close`: the application closes after its response, and so does the
    /// relay (the path form: later requests on the connection would need their prefix taken
    /// off too).
    pub close: bool,
    /// Drop `Authorization`: it carried this server's API key (`SANDBOX_PORTS_REQUIRE_KEY`),
    /// which the code in the sandbox must not see.
    pub drop_authorization: bool,
}

/// Whether `request` asks to switch protocols (`Upgrade` with `Connection: upgrade`).
fn is_upgrade(request: &Request) -> bool {
    request.header("upgrade").is_some()
        && request
            .list("connection")
            .any(|token| token.eq_ignore_ascii_case("upgrade"))
}

/// Whether the connection belongs to the application after `request` (an upgrade, which a
/// WebSocket is, or a `CONNECT`): what follows is no longer HTTP requests.
pub fn is_tunnel(request: &Request) -> bool {
    is_upgrade(request) || request.method.eq_ignore_ascii_case("CONNECT")
}

/// The request head for the application: the request line with the prefix taken off, the
/// client's headers, and `X-Forwarded-Host/Proto/Prefix`.
pub fn upstream_head(request: &Request, how: &UpstreamHead<'_>) -> Vec<u8> {
    let mut head = format!(
        "{} {} HTTP/1.{}\r\n",
        request.method, how.target.upstream_target, request.version_minor
    );
    for (name, value) in &request.headers {
        if DROPPED_HEADERS.contains(&name.as_str())
            || (how.drop_authorization && name == "authorization")
        {
            continue;
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    // An upgrade keeps its `Connection: upgrade`; everything else is told how it ends.
    if is_upgrade(request) {
        head.push_str("connection: upgrade\r\n");
    } else if how.close || !request.keep_alive() {
        head.push_str("connection: close\r\n");
    }
    if let Some(host) = request.header("host") {
        head.push_str(&format!("x-forwarded-host: {host}\r\n"));
    }
    head.push_str(&format!("x-forwarded-proto: {}\r\n", how.proto));
    if !how.target.prefix.is_empty() {
        head.push_str(&format!("x-forwarded-prefix: {}\r\n", how.target.prefix));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::{Limits, Progress, RequestParser};

    fn request(head: &str) -> Request {
        let mut parser = RequestParser::new(Limits::default());
        parser.push(head.as_bytes()).unwrap();
        match parser.poll().unwrap() {
            Progress::Done(request) => request,
            other => panic!("{other:?}"),
        }
    }

    const CAP: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn capabilities_are_found_only_whole_and_for_their_port() {
        let mut exposures = Exposures::default();
        assert_eq!(exposures.expose("sb1", 8000, CAP.into(), 4), Ok(CAP.into()));
        // Exposing again keeps the capability.
        let again = exposures.expose("sb1", 8000, "f".repeat(32), 4).unwrap();
        assert_eq!(again, CAP);
        assert_eq!(exposures.find(CAP, None).unwrap().port, 8000);
        assert_eq!(exposures.find(CAP, Some(8000)).unwrap().sandbox_id, "sb1");
        assert!(exposures.find(CAP, Some(8001)).is_none());
        assert!(exposures.find(&CAP[..31], None).is_none());
        assert!(exposures.find(&CAP.to_uppercase(), None).is_none());
        assert_eq!(exposures.of_sandbox("sb1"), [(8000, CAP.to_string())]);
        exposures.set_held_here("sb1", false);
        assert!(!exposures.find(CAP, None).unwrap().held_here);
        assert!(exposures.unexpose("sb1", 8000).is_some());
        assert!(exposures.unexpose("sb1", 8000).is_none());
        assert!(exposures.find(CAP, None).is_none());
        assert!(exposures.of_sandbox("sb1").is_empty());
    }

    #[test]
    fn a_sandbox_exposes_a_bounded_number_of_ports_and_takes_them_along() {
        let mut exposures = Exposures::default();
        exposures.expose("sb1", 1, "a".repeat(32), 2).unwrap();
        exposures.expose("sb1", 2, "b".repeat(32), 2).unwrap();
        assert_eq!(
            exposures.expose("sb1", 3, "c".repeat(32), 2),
            Err(ExposeError::TooMany(2))
        );
        exposures.expose("sb2", 3, "c".repeat(32), 2).unwrap();
        exposures.remove_sandbox("sb1");
        assert!(exposures.find(&"a".repeat(32), None).is_none());
        assert!(exposures.find(&"c".repeat(32), None).is_some());
    }

    #[test]
    fn the_path_form_strips_its_prefix_and_keeps_the_query() {
        let get = request(&format!(
            "GET /ports/{CAP}/a/b?x=1 HTTP/1.1\r\nHost: h\r\n\r\n"
        ));
        let Some(PortRoute::Target(target)) = route(&get, None) else {
            panic!()
        };
        assert_eq!(target.capability, CAP);
        assert_eq!(target.upstream_target, "/a/b?x=1");
        assert_eq!(target.prefix, format!("/ports/{CAP}"));
        assert_eq!(target.port, None);
        let bare = request(&format!("GET /ports/{CAP}?q HTTP/1.1\r\n\r\n"));
        assert_eq!(
            route(&bare, None),
            Some(PortRoute::AddSlash(format!("/ports/{CAP}/?q")))
        );
        assert_eq!(route(&request("GET /status HTTP/1.1\r\n\r\n"), None), None);
        assert_eq!(route(&request("GET /portsx HTTP/1.1\r\n\r\n"), None), None);
    }

    #[test]
    fn the_host_form_needs_the_domain_and_names_the_port() {
        let get = request(&format!(
            "GET /x HTTP/1.1\r\nHost: 8000-{CAP}.Ports.Example:8080\r\n\r\n"
        ));
        let Some(PortRoute::Target(target)) = route(&get, Some("ports.example")) else {
            panic!()
        };
        assert_eq!(target.port, Some(8000));
        assert_eq!(target.upstream_target, "/x");
        assert!(target.prefix.is_empty());
        assert_eq!(route(&get, None), None);
        let other = request("GET /x HTTP/1.1\r\nHost: api.example\r\n\r\n");
        assert_eq!(route(&other, Some("ports.example")), None);
        let junk = request("GET /x HTTP/1.1\r\nHost: nope.ports.example\r\n\r\n");
        assert_eq!(route(&junk, Some("ports.example")), None);
    }

    #[test]
    fn urls_follow_the_configuration() {
        assert_eq!(
            url("https://sb.example", None, 8000, CAP),
            format!("https://sb.example/ports/{CAP}/")
        );
        assert_eq!(
            url("https://sb.example", Some("p.example"), 8000, CAP),
            format!("https://8000-{CAP}.p.example/")
        );
        let behind_proxy =
            request("GET /create HTTP/1.1\r\nHost: sb.run.app\r\nX-Forwarded-Proto: https\r\n\r\n");
        assert_eq!(public_origin(None, &behind_proxy), "https://sb.run.app");
        assert_eq!(public_origin(Some("http://x"), &behind_proxy), "http://x");
    }

    #[test]
    fn the_upstream_head_is_rewritten_and_not_spoofable() {
        let get = request(&format!(
            "GET /ports/{CAP}/api?x HTTP/1.1\r\nHost: sb\r\nX-Forwarded-Host: evil\r\nAuthorization: Bearer k\r\nConnection: keep-alive\r\n\r\n"
        ));
        let Some(PortRoute::Target(target)) = route(&get, None) else {
            panic!()
        };
        let head = upstream_head(
            &get,
            &UpstreamHead {
                target: &target,
                proto: "https",
                close: true,
                drop_authorization: true,
            },
        );
        let head = String::from_utf8(head).unwrap();
        assert_eq!(
            head,
            format!("GET /api?x HTTP/1.1\r\nhost: sb\r\nconnection: close\r\nx-forwarded-host: sb\r\nx-forwarded-proto: https\r\nx-forwarded-prefix: /ports/{CAP}\r\n\r\n")
        );
        let upgrade = request(&format!(
            "GET /ports/{CAP}/ws HTTP/1.1\r\nHost: sb\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        ));
        let Some(PortRoute::Target(target)) = route(&upgrade, None) else {
            panic!()
        };
        let head = upstream_head(
            &upgrade,
            &UpstreamHead {
                target: &target,
                proto: "http",
                close: true,
                drop_authorization: false,
            },
        );
        let head = String::from_utf8(head).unwrap();
        assert!(head.contains("connection: upgrade\r\n"), "{head}");
        assert!(head.contains("upgrade: websocket\r\n"), "{head}");
    }
}
