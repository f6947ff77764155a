//! `/mcp` as a function from an HTTP request to an [`Action`], without I/O: the Streamable
//! HTTP transport of both revisions (docs/mcp.md). The event loop gathers the request's parts
//! into a [`Request`], asks [`Endpoint::handle`], and carries the action out: a reply now, or a
//! tool call whose result is answered later (`ToolResult::to_value` through [`result_body`]).
//!
//! ```text
//! POST  ── Origin foreign? ──> 403
//!       ── body ──> jsonrpc::parse ──> era: MCP-Protocol-Version header (or params._meta)
//!   handshake:        initialize -> new Mcp-Session-Id; other requests need a known session
//!                     (missing: 400, unknown or ended: 404); notifications -> 202
//!   single-exchange:  params._meta and headers checked (-32602 / -32020 / -32022), no session
//!   both:             ping, tools/list, tools/call (-> Action::Call); server/discover (2026)
//! DELETE ── Mcp-Session-Id ──> Action::EndSession (unknown: 404)
//! GET    ──> 405 (no standalone stream: every answer comes on its POST's response)
//! ```

use std::time::Instant;

use serde_json::{json, Map, Value};

use super::jsonrpc::{self, Incoming, RpcError};
use super::registry::Registry;
use super::tools::{self, Features, ToolRequest};
use super::version::{self, Era};
use crate::session::SessionId;

pub const SERVER_NAME: &str = "cloud-run-sandbox";

const INSTRUCTIONS: &str = "Tools to run commands and Python code in an isolated Linux \
sandbox (gVisor). The sandbox keeps its files and Python state between calls; every result \
carries its sandbox_id.";

/// The parts of an HTTP request the endpoint reads (header names are the lower-case ones).
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    pub method: &'a str,
    pub body: &'a [u8],
    pub session_id: Option<&'a str>,
    pub protocol_version: Option<&'a str>,
    /// `Mcp-Method` and `Mcp-Name` (2026-07-28 routing headers).
    pub mcp_method: Option<&'a str>,
    pub mcp_name: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub host: Option<&'a str>,
    /// The SHA-256 of the API key the request presented (`None` without keys).
    pub owner: Option<&'a str>,
}

/// An answer to send now.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    /// A JSON body (`None`: no body, e.g. 202).
    pub body: Option<Value>,
    /// An `Mcp-Session-Id` header to send (the initialize response).
    pub session_id: Option<String>,
    /// An `Allow` header (405).
    pub allow: Option<&'static str>,
}

impl Reply {
    fn empty(status: u16) -> Self {
        Reply {
            status,
            body: None,
            session_id: None,
            allow: None,
        }
    }

    fn json(status: u16, body: Value) -> Self {
        Reply {
            body: Some(body),
            ..Reply::empty(status)
        }
    }
}

/// A tool call to carry out.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub rpc_id: Value,
    pub era: Era,
    /// The handshake session it runs in (`None`: single-exchange).
    pub session: Option<String>,
    pub progress_token: Option<Value>,
    pub tool: ToolRequest,
    pub owner: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Reply(Reply),
    Call(Call),
    /// `DELETE`: the session ended; delete its sandbox, if it had one, and answer 200.
    EndSession(Option<SessionId>),
    /// `notifications/cancelled` in a handshake session: cancel the request with this JSON-RPC
    /// id, then answer 202.
    Cancel {
        session: String,
        request: Value,
    },
}

/// The HTTP status of a JSON-RPC error in the single-exchange revision (its transport's table;
/// the handshake revision answers errors of well-formed requests with 200).
fn modern_status(code: i64) -> u16 {
    match code {
        jsonrpc::PARSE_ERROR
        | jsonrpc::INVALID_REQUEST
        | jsonrpc::INVALID_PARAMS
        | jsonrpc::HEADER_MISMATCH
        | jsonrpc::UNSUPPORTED_PROTOCOL_VERSION => 400,
        jsonrpc::METHOD_NOT_FOUND => 404,
        _ => 200,
    }
}

fn error_reply(status: u16, id: Option<&Value>, error: &RpcError) -> Action {
    Action::Reply(Reply::json(status, jsonrpc::error_response(id, error)))
}

/// The body of a successful response; the single-exchange revision's results say
/// `resultType` and who answered.
pub fn result_body(id: &Value, era: Era, mut result: Value) -> Value {
    if era == Era::SingleExchange {
        if let Value::Object(map) = &mut result {
            map.insert("resultType".into(), json!("complete"));
            map.insert(
                "_meta".into(),
                json!({(version::SERVER_INFO_META_KEY): server_info()}),
            );
        }
    }
    jsonrpc::response(id, result)
}

fn server_info() -> Value {
    json!({"name": SERVER_NAME, "version": env!("CARGO_PKG_VERSION")})
}

fn capabilities() -> Value {
    json!({"tools": {"listChanged": false}})
}

/// Whether a browser page from `origin` may call: the server's own origin (the page it served,
/// e.g. the playground) and the configured ones pass; requests without `Origin` (not from a
/// browser) pass too. Anything else is refused: a DNS-rebinding page must not reach sandboxes.
pub fn origin_allowed(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let origin = origin.trim_end_matches('/');
    if allowed
        .iter()
        .any(|allowed| allowed.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let Some(host) = host else {
        return false;
    };
    ["http://", "https://"].iter().any(|scheme| {
        origin
            .strip_prefix(scheme)
            .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
    })
}

pub struct Endpoint {
    pub registry: Registry,
    allowed_origins: Vec<String>,
    features: Features,
}

impl Endpoint {
    pub fn new(registry: Registry, allowed_origins: Vec<String>, features: Features) -> Self {
        Endpoint {
            registry,
            allowed_origins,
            features,
        }
    }

    /// Decide what answers `request`. `new_session_id` makes an unguessable id (called only for
    /// `initialize`).
    pub fn handle(
        &mut self,
        request: &Request,
        new_session_id: impl FnOnce() -> Result<String, String>,
        now: Instant,
    ) -> Action {
        if !origin_allowed(request.origin, request.host, &self.allowed_origins) {
            let error = RpcError::new(
                jsonrpc::INVALID_REQUEST,
                format!(
                    "origin {:?} is not allowed to use /mcp (the server's own origin and SANDBOX_MCP_ALLOWED_ORIGINS are)",
                    request.origin.unwrap_or_default().chars().take(100).collect::<String>()
                ),
            );
            return error_reply(403, None, &error);
        }
        match request.method {
            "POST" => self.post(request, new_session_id, now),
            "DELETE" => self.delete(request, now),
            _ => Action::Reply(Reply {
                allow: Some("POST, DELETE"),
                ..Reply::json(
                    405,
                    jsonrpc::error_response(
                        None,
                        &RpcError::new(
                            jsonrpc::INVALID_REQUEST,
                            format!(
                                "method {} is not allowed on /mcp: POST JSON-RPC messages (DELETE ends a session); this server opens no standalone event stream",
                                request.method
                            ),
                        ),
                    ),
                )
            }),
        }
    }

    fn delete(&mut self, request: &Request, now: Instant) -> Action {
        let Some(id) = request.session_id else {
            return error_reply(
                400,
                None,
                &RpcError::new(
                    jsonrpc::INVALID_REQUEST,
                    "DELETE /mcp needs an Mcp-Session-Id header",
                ),
            );
        };
        let owner = request.owner;
        if self.registry.session(id, owner, now).is_none() {
            return unknown_session(None);
        }
        Action::EndSession(self.registry.close_session(id))
    }

    fn post(
        &mut self,
        request: &Request,
        new_session_id: impl FnOnce() -> Result<String, String>,
        now: Instant,
    ) -> Action {
        let message = match jsonrpc::parse(request.body) {
            Ok(message) => message,
            Err(rejected) => return error_reply(400, rejected.id.as_ref(), &rejected.error),
        };
        if era_of(request, &message) == Era::SingleExchange {
            return self.single_exchange(request, message);
        }
        match message {
            Incoming::Request { id, method, params } if method == "initialize" => {
                self.initialize(request, &id, &params, new_session_id, now)
            }
            Incoming::Request { id, method, params } => {
                let Some(session) = request.session_id else {
                    let error = RpcError::new(
                        jsonrpc::INVALID_REQUEST,
                        "missing Mcp-Session-Id header: send initialize first (or use protocol version 2026-07-28, which needs no session)",
                    );
                    return error_reply(400, Some(&id), &error);
                };
                if self.registry.session(session, request.owner, now).is_none() {
                    return unknown_session(Some(&id));
                }
                let context = Context {
                    era: Era::Handshake,
                    session: Some(session.to_string()),
                    owner: request.owner.map(str::to_string),
                };
                self.method(&id, &method, &params, context)
            }
            Incoming::Notification { method, params } => {
                let Some(session) = request.session_id else {
                    return Action::Reply(Reply::empty(202));
                };
                if self.registry.session(session, request.owner, now).is_none() {
                    return unknown_session(None);
                }
                match (method.as_str(), params.get("requestId")) {
                    ("notifications/cancelled", Some(id)) => Action::Cancel {
                        session: session.to_string(),
                        request: id.clone(),
                    },
                    _ => Action::Reply(Reply::empty(202)),
                }
            }
            Incoming::Response => Action::Reply(Reply::empty(202)),
        }
    }

    fn initialize(
        &mut self,
        request: &Request,
        id: &Value,
        params: &Map<String, Value>,
        new_session_id: impl FnOnce() -> Result<String, String>,
        now: Instant,
    ) -> Action {
        let requested = params.get("protocolVersion").and_then(Value::as_str);
        let version = version::negotiate(requested);
        let session = match new_session_id().and_then(|session| {
            let owner = request.owner.map(str::to_string);
            self.registry
                .open_session(session.clone(), version, owner, now)?;
            Ok(session)
        }) {
            Ok(session) => session,
            Err(message) => {
                return error_reply(
                    503,
                    Some(id),
                    &RpcError::new(jsonrpc::INTERNAL_ERROR, message),
                )
            }
        };
        let result = json!({
            "protocolVersion": version,
            "capabilities": capabilities(),
            "serverInfo": server_info(),
            "instructions": INSTRUCTIONS,
        });
        Action::Reply(Reply {
            session_id: Some(session),
            ..Reply::json(200, jsonrpc::response(id, result))
        })
    }

    fn single_exchange(&mut self, request: &Request, message: Incoming) -> Action {
        let (id, method, params) = match message {
            Incoming::Request { id, method, params } => (id, method, params),
            Incoming::Notification { .. } | Incoming::Response => {
                // No client-to-server notification means anything here (a client cancels by
                // closing its response stream); a version we do not speak is still told so.
                let requested = request.protocol_version.unwrap_or_default();
                if !version::is_modern(requested) {
                    return modern_error(None, unsupported_version(requested));
                }
                return Action::Reply(Reply::empty(202));
            }
        };
        if let Err(error) = check_envelope(request, &method, &params) {
            return modern_error(Some(&id), error);
        }
        let context = Context {
            era: Era::SingleExchange,
            session: None,
            owner: request.owner.map(str::to_string),
        };
        if method == "server/discover" {
            let result = json!({
                "supportedVersions": version::MODERN_VERSIONS,
                "capabilities": capabilities(),
                "serverInfo": server_info(),
                "instructions": INSTRUCTIONS,
                "ttlMs": 0,
                "cacheScope": "public",
            });
            return Action::Reply(Reply::json(
                200,
                result_body(&id, Era::SingleExchange, result),
            ));
        }
        self.method(&id, &method, &params, context)
    }

    /// The methods both revisions share.
    fn method(
        &mut self,
        id: &Value,
        method: &str,
        params: &Map<String, Value>,
        context: Context,
    ) -> Action {
        let era = context.era;
        let reply = |result: Value| Action::Reply(Reply::json(200, result_body(id, era, result)));
        match method {
            "ping" => reply(json!({})),
            "tools/list" => {
                let mut result = json!({"tools": tools::list(self.features)});
                if era == Era::SingleExchange {
                    result["ttlMs"] = json!(0);
                    result["cacheScope"] = json!("public");
                }
                reply(result)
            }
            "tools/call" => match tools::parse_call(params, self.features) {
                Ok(tool) => Action::Call(Call {
                    rpc_id: id.clone(),
                    era,
                    session: context.session,
                    progress_token: params
                        .get("_meta")
                        .and_then(|meta| meta.get("progressToken"))
                        .filter(|token| token.is_string() || token.is_i64() || token.is_u64())
                        .cloned(),
                    tool,
                    owner: context.owner,
                }),
                Err(Ok(message)) => {
                    reply(super::call::ToolResult::error(None, &message).to_value())
                }
                Err(Err(error)) => self.error(id, era, error),
            },
            other => {
                let hint = if other == "server/discover" {
                    " (server/discover belongs to protocol version 2026-07-28: send it without a session)"
                } else if other == "initialize" {
                    " (initialize belongs to the handshake revisions: send it without MCP-Protocol-Version 2026-07-28)"
                } else {
                    ""
                };
                let error = RpcError::new(
                    jsonrpc::METHOD_NOT_FOUND,
                    format!("method {} not found{hint}; this server has ping, tools/list and tools/call", jsonrpc::shown(&Value::from(other))),
                );
                self.error(id, era, error)
            }
        }
    }

    fn error(&self, id: &Value, era: Era, error: RpcError) -> Action {
        match era {
            Era::Handshake => error_reply(200, Some(id), &error),
            Era::SingleExchange => modern_error(Some(id), error),
        }
    }
}

struct Context {
    era: Era,
    session: Option<String>,
    owner: Option<String>,
}

fn modern_error(id: Option<&Value>, error: RpcError) -> Action {
    error_reply(modern_status(error.code), id, &error)
}

fn unknown_session(id: Option<&Value>) -> Action {
    let error = RpcError::new(
        jsonrpc::INVALID_REQUEST,
        "unknown or ended MCP session (Mcp-Session-Id): initialize a new one",
    );
    error_reply(404, id, &error)
}

fn unsupported_version(requested: &str) -> RpcError {
    RpcError::new(
        jsonrpc::UNSUPPORTED_PROTOCOL_VERSION,
        format!(
            "Unsupported protocol version {:?}; this server speaks {} (single exchange) and {} (initialize handshake)",
            requested.chars().take(40).collect::<String>(),
            version::MODERN_VERSIONS.join(", "),
            version::HANDSHAKE_VERSIONS.join(", ")
        ),
    )
    .with_data(json!({"supported": version::MODERN_VERSIONS, "requested": requested}))
}

/// Which revision a POST speaks: a `MCP-Protocol-Version` header that names no handshake
/// revision means the single-exchange one (an unknown value is then refused with the versions
/// we speak); without the header, a request outside a session whose `params._meta` carries a
/// protocol version is single-exchange too (and is told its header is missing).
fn era_of(request: &Request, message: &Incoming) -> Era {
    match request.protocol_version {
        Some(header) if !version::is_handshake(header) => Era::SingleExchange,
        Some(_) => Era::Handshake,
        None => {
            let meta_version = match message {
                Incoming::Request { params, .. } => params
                    .get("_meta")
                    .and_then(|meta| meta.get(version::PROTOCOL_VERSION_META_KEY))
                    .is_some(),
                _ => false,
            };
            if meta_version && request.session_id.is_none() {
                Era::SingleExchange
            } else {
                Era::Handshake
            }
        }
    }
}

/// The single-exchange revision's checks of a request, in its order: the envelope in
/// `params._meta`, the headers against the body, the version.
fn check_envelope(
    request: &Request,
    method: &str,
    params: &Map<String, Value>,
) -> Result<(), RpcError> {
    let Some(Value::Object(meta)) = params.get("_meta") else {
        return Err(RpcError::invalid_params(format!(
            "params._meta must be an object carrying the required {:?} and {:?} envelope keys",
            version::PROTOCOL_VERSION_META_KEY,
            version::CLIENT_CAPABILITIES_META_KEY
        )));
    };
    let missing: Vec<&str> = [
        version::PROTOCOL_VERSION_META_KEY,
        version::CLIENT_CAPABILITIES_META_KEY,
    ]
    .into_iter()
    .filter(|key| !meta.contains_key(*key))
    .collect();
    if !missing.is_empty() {
        return Err(RpcError::invalid_params(format!(
            "params._meta is missing the required envelope key(s): {}",
            missing.join(", ")
        )));
    }
    let body_version = &meta[version::PROTOCOL_VERSION_META_KEY];
    if request.protocol_version.map(Value::from).as_ref() != Some(body_version) {
        return Err(RpcError::new(
            jsonrpc::HEADER_MISMATCH,
            "the MCP-Protocol-Version header does not match the request's params._meta protocol version",
        ));
    }
    if let Some(header) = request.mcp_method {
        if header != method {
            return Err(RpcError::new(
                jsonrpc::HEADER_MISMATCH,
                "the Mcp-Method header does not match the request body's method",
            ));
        }
    }
    if method == "tools/call" {
        if let (Some(header), Some(name)) =
            (request.mcp_name, params.get("name").and_then(Value::as_str))
        {
            if header != name {
                return Err(RpcError::new(
                    jsonrpc::HEADER_MISMATCH,
                    "the Mcp-Name header does not match the request body's name",
                ));
            }
        }
    }
    let requested = body_version.as_str().unwrap_or_default();
    if !version::is_modern(requested) {
        return Err(unsupported_version(requested));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
