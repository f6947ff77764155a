//! The HTTP API as data: [`parse`] turns a request into one [`ApiRequest`] (or an
//! [`ApiError`]), and [`ApiError::response`] is the one place where errors become status codes.
//! No I/O: the event loop acts on the request, handlers answer with a [`Response`] or an
//! `ApiError`. (Firecracker's `parsed_request` -> action is the model.)

use serde_json::{json, Value};

use crate::agent_protocol::Language;
use crate::http::query::{parse_query, percent_decode_path, single_param};
use crate::http::request::{HttpError, Request};
use crate::http::response::{json_error_body, ResponseHead};
use crate::runtime::RuntimeError;
use crate::session::exec_options::{self, ExecLimits, ExecOptions, RawExecOptions};
use crate::session::text::base64_decode;
use crate::session::SessionView;

/// What a client asks of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    /// `GET|HEAD /status`: the loop answers.
    Status,
    /// `GET|HEAD /readyz`: whether sandboxes can be created.
    Ready,
    /// `GET /metrics`.
    Metrics,
    /// `GET /snapshots`.
    ListSnapshots,
    /// `GET /sandboxes`: this instance's sandboxes, or (`?checkpointed=1`) the store's.
    ListSandboxes(ListSandboxes),
    /// `DELETE /snapshots/{name}` (the name decoded, not checked yet: a server without
    /// snapshots says so first).
    DeleteSnapshot(String),
    /// `POST /execute`.
    Execute(ExecuteRequest),
    /// `GET|PUT|DELETE /sandboxes/{id}/files` (the files API over HTTP).
    Files(super::files_http::FilesRequest),
    /// A WebSocket upgrade of `/create` or `/attach/{id}`, its handshake checked.
    Upgrade {
        key: String,
        target: Upgrade,
        /// The subprotocol to select: [`SUBPROTOCOL`] when the client offered it.
        subprotocol: Option<&'static str>,
    },
    /// Any method on `/mcp`: the MCP endpoint (`crate::mcp`) decides.
    Mcp,
    /// `GET|HEAD` of the playground: `/`, `/playground` or a file under `/playground/` (served
    /// only when `SANDBOX_PLAYGROUND` is on).
    Playground(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upgrade {
    Create,
    Attach {
        sandbox_id: String,
        /// The `sandbox_token`, or why it cannot be used (given twice). Refused after the
        /// upgrade, on the socket, as the protocol says.
        token: Result<String, String>,
    },
}

/// `GET /sandboxes[?checkpointed=1[&limit=N][&after=ID]]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListSandboxes {
    /// List the checkpoints in the store instead of this instance's live sandboxes.
    pub checkpointed: bool,
    /// Checkpoints listed at most (1 to [`MAX_LIST_LIMIT`], default [`DEFAULT_LIST_LIMIT`]).
    pub limit: usize,
    /// Continue after this sandbox id (the previous page's `next_after`).
    pub after: Option<String>,
}

pub const DEFAULT_LIST_LIMIT: usize = 100;
pub const MAX_LIST_LIMIT: usize = 1000;

/// A checked `POST /execute`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecuteRequest {
    pub language: Language,
    pub code: String,
    pub options: ExecOptions,
    /// `Accept: application/json`: one JSON answer at the end instead of streamed text.
    pub json: bool,
}

/// A parsed request and how to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub request: ApiRequest,
    pub keep_alive: bool,
    /// `HEAD`: the answer's head only.
    pub head_only: bool,
}

/// Paths that exist, for telling 405 from 404.
const KNOWN_PATHS: [&str; 8] = [
    "/status",
    "/readyz",
    "/metrics",
    "/execute",
    "/snapshots",
    "/sandboxes",
    "/",
    "/playground",
];

/// The only WebSocket version there is (RFC 6455); older drafts are refused.
pub const WEBSOCKET_VERSION: &str = "13";

/// The WebSocket subprotocol the server selects when a client offers it. A browser that offers
/// subprotocols (the playground does, to carry its API key as `api-key.<base64url>`) fails the
/// connection unless the server selects one of them, and the key itself is never echoed.
pub const SUBPROTOCOL: &str = "cloud-run-sandbox";

pub fn parse(request: &Request, limits: &ExecLimits) -> Result<Parsed, ApiError> {
    let method = request.method.as_str();
    let path = request.path.as_str();
    let api_request = match (method, path) {
        ("GET" | "HEAD", "/status") => ApiRequest::Status,
        ("GET" | "HEAD", "/readyz") => ApiRequest::Ready,
        ("GET", "/snapshots") => ApiRequest::ListSnapshots,
        ("GET", "/sandboxes") => ApiRequest::ListSandboxes(list_sandboxes(request)?),
        ("DELETE", path) if path.starts_with("/snapshots/") => ApiRequest::DeleteSnapshot(
            percent_decode_path(&path["/snapshots/".len()..]).unwrap_or_default(),
        ),
        ("GET", "/metrics") => ApiRequest::Metrics,
        ("GET" | "HEAD", path) if is_playground_path(path) => {
            ApiRequest::Playground(path.to_string())
        }
        ("POST", "/execute") => ApiRequest::Execute(execute(request, limits)?),
        (_, "/mcp") => ApiRequest::Mcp,
        (_, path) if super::files_http::sandbox_of(path).is_some() => {
            let sandbox_id = super::files_http::sandbox_of(path).unwrap_or_default();
            let mut files = super::files_http::parse(request, sandbox_id)?;
            if let super::files_http::Operation::Upload { body, .. } = &mut files.operation {
                // A body that was not streamed (it came whole with the head, or was empty).
                *body = Some(request.body.clone());
            }
            ApiRequest::Files(files)
        }
        (_, path) if KNOWN_PATHS.contains(&path) => {
            return Err(ApiError::MethodNotAllowed(format!(
                "method {method} is not allowed on {path}"
            )))
        }
        ("GET", path) if path == "/create" || path.starts_with("/attach/") => {
            if !request.is_websocket_upgrade() {
                return Err(ApiError::NotWebSocket(format!(
                    "{path} is a WebSocket endpoint: connect with a WebSocket client (ws:// or wss://)"
                )));
            }
            let key = handshake_key(request)?;
            let subprotocol = request
                .list("sec-websocket-protocol")
                .any(|offered| offered == SUBPROTOCOL)
                .then_some(SUBPROTOCOL);
            ApiRequest::Upgrade {
                key,
                target: upgrade_target(request),
                subprotocol,
            }
        }
        (_, path) => {
            return Err(ApiError::NotFound(format!(
                "no such endpoint {path:?}; try POST /execute?language=python"
            )))
        }
    };
    Ok(Parsed {
        request: api_request,
        keep_alive: request.keep_alive(),
        head_only: method == "HEAD",
    })
}

/// `/`, `/playground`, and files under `/playground/`.
pub fn is_playground_path(path: &str) -> bool {
    path == "/" || path == "/playground" || path.starts_with("/playground/")
}

fn execute(request: &Request, limits: &ExecLimits) -> Result<ExecuteRequest, ApiError> {
    let query = parse_query(&request.query);
    let language = match single_param(&query, "language").map_err(ApiError::BadRequest)? {
        Some(name) => exec_options::language(name).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unsupported language {name:?}; supported languages: python, bash"
            ))
        })?,
        None => {
            return Err(ApiError::BadRequest(
                "missing query parameter \"language\"; supported languages: python, bash".into(),
            ))
        }
    };
    let raw = RawExecOptions::from_query(&query).map_err(ApiError::BadRequest)?;
    let options =
        exec_options::check(request.body.len(), &raw, limits).map_err(ApiError::BadRequest)?;
    let code = String::from_utf8(request.body.clone()).map_err(|error| {
        ApiError::BadRequest(format!(
            "the code must be UTF-8 text (invalid byte at offset {})",
            error.utf8_error().valid_up_to()
        ))
    })?;
    Ok(ExecuteRequest {
        language,
        code,
        options,
        json: request
            .header("accept")
            .is_some_and(|accept| accept.contains("application/json")),
    })
}

fn list_sandboxes(request: &Request) -> Result<ListSandboxes, ApiError> {
    let query = parse_query(&request.query);
    let param = |name| single_param(&query, name).map_err(ApiError::BadRequest);
    let checkpointed = match param("checkpointed")? {
        None | Some("0" | "false") => false,
        Some("1" | "true") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "checkpointed must be 1 or 0 (true or false), got {:?}",
                shorten(other)
            )))
        }
    };
    let limit = match param("limit")? {
        None => DEFAULT_LIST_LIMIT,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=MAX_LIST_LIMIT).contains(limit))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "limit must be a number from 1 to {MAX_LIST_LIMIT}, got {:?}",
                    shorten(text)
                ))
            })?,
    };
    let after = match param("after")? {
        None => None,
        Some(id) if crate::ids::SandboxId::parse(id).is_some() => Some(id.to_string()),
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "after must be a sandbox id (32 hexadecimal digits), got {:?}",
                shorten(other)
            )))
        }
    };
    Ok(ListSandboxes {
        checkpointed,
        limit,
        after,
    })
}

/// `GET /sandboxes`: this instance's sandboxes (never a token).
pub fn sandboxes_response(views: &[SessionView], ports: impl Fn(&str) -> Value) -> Response {
    let seconds = |duration: std::time::Duration| (duration.as_millis() as f64) / 1000.0;
    let sandboxes: Vec<Value> = views
        .iter()
        .map(|view| {
            json!({
                "sandbox_id": view.sandbox_id,
                "state": view.state,
                "age_secs": seconds(view.age),
                "idle_secs": seconds(view.idle),
                "labels": view.labels,
                "attached": view.attached,
                "checkpointable": view.checkpointable,
                "checkpointed": view.checkpointed,
                "handoff": view.handoff,
                "ports": ports(&view.sandbox_id),
            })
        })
        .collect();
    Response::json(200, &json!({ "sandboxes": sandboxes }))
}

/// A client's value in an error message, bounded.
fn shorten(text: &str) -> String {
    text.chars().take(64).collect()
}

fn upgrade_target(request: &Request) -> Upgrade {
    if request.path == "/create" {
        return Upgrade::Create;
    }
    let sandbox_id = request
        .path
        .trim_start_matches("/attach/")
        .trim_end_matches('/')
        .to_string();
    let query = parse_query(&request.query);
    let token =
        single_param(&query, "sandbox_token").map(|token| token.unwrap_or_default().to_string());
    Upgrade::Attach { sandbox_id, token }
}

/// Checks the client's half of the opening handshake (RFC 6455 §4.2.1) and returns its key:
/// another version is refused with the version we speak (§4.4), a key that is not the base64
/// of 16 bytes with 400.
fn handshake_key(request: &Request) -> Result<String, ApiError> {
    let values = |name: &'static str| -> Vec<&str> {
        request
            .headers
            .iter()
            .filter(|(header, _)| header == name)
            .map(|(_, value)| value.as_str())
            .collect()
    };
    let versions = values("sec-websocket-version");
    if versions != [WEBSOCKET_VERSION] {
        let shown: Vec<String> = versions
            .iter()
            .map(|version| version.chars().take(32).collect::<String>())
            .collect();
        return Err(ApiError::WebSocketVersion(format!(
            "unsupported Sec-WebSocket-Version {shown:?}: this server speaks version {WEBSOCKET_VERSION} (RFC 6455)"
        )));
    }
    let bad_key = |message: String| Err(ApiError::BadHandshake(message));
    match values("sec-websocket-key").as_slice() {
        [] => bad_key("missing Sec-WebSocket-Key header".into()),
        [key] if key.len() == 24 && base64_decode(key).is_some_and(|nonce| nonce.len() == 16) => {
            Ok(key.to_string())
        }
        [key] => {
            let shown: String = key.chars().take(32).collect();
            bad_key(format!(
                "invalid Sec-WebSocket-Key {shown:?}: it must be the base64 of 16 bytes"
            ))
        }
        _ => bad_key("Sec-WebSocket-Key is given more than once".into()),
    }
}

/// A complete answer: status, headers, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    status: u16,
    head: ResponseHead,
    body: Vec<u8>,
    /// The connection closes after it, whatever the request asked.
    closes: bool,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: Vec<u8>) -> Self {
        Response {
            status,
            head: ResponseHead::new(status).header("Content-Type", content_type),
            body,
            closes: false,
        }
    }

    pub fn json(status: u16, body: &Value) -> Self {
        Response::new(status, "application/json", body.to_string().into_bytes())
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.head = self.head.header(name, value);
        self
    }

    pub fn closing(mut self) -> Self {
        self.closes = true;
        self
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// Whether the connection must close after it.
    pub fn closes(&self) -> bool {
        self.closes
    }

    /// The bytes to send: `Connection` says whether the connection stays open.
    pub fn encode(&self, keep_alive: bool, head_only: bool) -> Vec<u8> {
        let keep_alive = keep_alive && !self.closes;
        if head_only {
            self.head.encode(Some(self.body.len()), keep_alive)
        } else {
            self.head.encode_with_body(&self.body, keep_alive)
        }
    }
}

/// Why a request is refused. The status each one gets is decided here and nowhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// The request could not be read (the parser's status: 400, 408, 411, 413, 431, 501, 505;
    /// 401 for a missing API key). The stream is out of sync: the connection closes.
    Http(HttpError),
    BadRequest(String),
    /// The WebSocket handshake is malformed (400); the connection closes.
    BadHandshake(String),
    NotFound(String),
    MethodNotAllowed(String),
    /// A WebSocket endpoint asked for without an upgrade (426).
    NotWebSocket(String),
    /// A WebSocket version other than 13 (426 with the version we speak); the connection closes.
    WebSocketVersion(String),
    /// A feature the server is not configured for (501).
    NotEnabled(String),
    /// Every sandbox slot is taken (503, retry in a second).
    AtCapacity(usize),
    /// Too many connections, or a store that did not answer in time (503).
    Unavailable(String),
    /// Something failed on our side (500).
    Internal(String),
    /// A file operation failed: its code (docs/protocol.md "Files") and message.
    File(String, String),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Http(error) => error.status,
            ApiError::BadRequest(_) | ApiError::BadHandshake(_) => 400,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::NotWebSocket(_) | ApiError::WebSocketVersion(_) => 426,
            ApiError::NotEnabled(_) => 501,
            ApiError::AtCapacity(_) | ApiError::Unavailable(_) => 503,
            ApiError::Internal(_) => 500,
            ApiError::File(code, _) => super::files_http::status_of(code),
        }
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::Http(error) => error.message.clone(),
            ApiError::AtCapacity(limit) => {
                format!("the server is at its limit of {limit} sandboxes; retry shortly")
            }
            ApiError::BadRequest(message)
            | ApiError::BadHandshake(message)
            | ApiError::NotFound(message)
            | ApiError::MethodNotAllowed(message)
            | ApiError::NotWebSocket(message)
            | ApiError::WebSocketVersion(message)
            | ApiError::NotEnabled(message)
            | ApiError::Unavailable(message)
            | ApiError::Internal(message)
            | ApiError::File(_, message) => message.clone(),
        }
    }

    /// The answer: `{"error": message}` with the status and the headers it calls for.
    pub fn response(&self) -> Response {
        if let ApiError::File(code, message) = self {
            let body = serde_json::json!({ "error": message, "code": code });
            return Response::json(self.status(), &body);
        }
        let response = Response::new(
            self.status(),
            "application/json",
            json_error_body(&self.message()),
        );
        match self {
            ApiError::Http(error) if error.status == 401 => {
                response.header("WWW-Authenticate", "Bearer").closing()
            }
            ApiError::Http(_) | ApiError::BadHandshake(_) => response.closing(),
            ApiError::WebSocketVersion(_) => response
                .header("Sec-WebSocket-Version", WEBSOCKET_VERSION)
                .closing(),
            ApiError::AtCapacity(_) => response.header("Retry-After", "1"),
            _ => response,
        }
    }
}

impl From<RuntimeError> for ApiError {
    fn from(error: RuntimeError) -> Self {
        match error {
            RuntimeError::AtCapacity(limit) => ApiError::AtCapacity(limit),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// `GET /status`.
pub fn status_response() -> Response {
    Response::new(200, "application/json", br#"{"status":"ok"}"#.to_vec())
}

/// `GET /readyz`: 200, or 503 with why sandboxes cannot be created.
pub fn ready_response(cannot_create: Option<String>) -> Response {
    let (status, body) = match cannot_create {
        None => (200, json!({"status": "ready"})),
        Some(reason) => (503, json!({"status": "unavailable", "reason": reason})),
    };
    Response::json(status, &body).header("Cache-Control", "no-store")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const LIMITS: ExecLimits = ExecLimits {
        default_timeout: Duration::from_secs(60),
        max_timeout: Duration::from_secs(600),
        max_code_bytes: 100,
    };

    fn request(method: &str, target: &str, headers: &[(&str, &str)], body: &str) -> Request {
        Request::for_test(method, target, headers, body.as_bytes())
    }

    fn parsed(method: &str, target: &str) -> Result<ApiRequest, ApiError> {
        parse(&request(method, target, &[], ""), &LIMITS).map(|parsed| parsed.request)
    }

    fn text(response: &Response, keep_alive: bool) -> String {
        String::from_utf8(response.encode(keep_alive, false)).unwrap()
    }

    const UPGRADE: [(&str, &str); 4] = [
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ];

    #[test]
    fn routes() {
        assert_eq!(parsed("GET", "/status"), Ok(ApiRequest::Status));
        assert!(
            parse(&request("HEAD", "/readyz", &[], ""), &LIMITS)
                .unwrap()
                .head_only
        );
        assert_eq!(parsed("GET", "/metrics"), Ok(ApiRequest::Metrics));
        assert_eq!(parsed("GET", "/snapshots"), Ok(ApiRequest::ListSnapshots));
        assert_eq!(
            parsed("DELETE", "/snapshots/my%2Dsnap"),
            Ok(ApiRequest::DeleteSnapshot("my-snap".into()))
        );
        assert_eq!(
            parsed("DELETE", "/snapshots/..%2Fetc"),
            Ok(ApiRequest::DeleteSnapshot("../etc".into()))
        );
        assert_eq!(
            parsed("POST", "/status"),
            Err(ApiError::MethodNotAllowed(
                "method POST is not allowed on /status".into()
            ))
        );
        assert_eq!(
            parsed("GET", "/snapshots/x").unwrap_err().status(),
            404,
            "only DELETE has a /snapshots/{{name}}"
        );
        assert_eq!(
            parsed("GET", "/nowhere"),
            Err(ApiError::NotFound(
                "no such endpoint \"/nowhere\"; try POST /execute?language=python".into()
            ))
        );
        assert_eq!(parsed("GET", "/create").unwrap_err().status(), 426);
        let attach = parse(
            &request("GET", "/attach/abc/?sandbox_token=t", &UPGRADE, ""),
            &LIMITS,
        );
        assert_eq!(
            attach.unwrap().request,
            ApiRequest::Upgrade {
                key: "dGhlIHNhbXBsZSBub25jZQ==".into(),
                target: Upgrade::Attach {
                    sandbox_id: "abc".into(),
                    token: Ok("t".into())
                },
                subprotocol: None,
            }
        );
        let mut offering = UPGRADE.to_vec();
        offering.push(("sec-websocket-protocol", "api-key.a2V5, cloud-run-sandbox"));
        let Ok(ApiRequest::Upgrade { subprotocol, .. }) =
            parse(&request("GET", "/create", &offering, ""), &LIMITS).map(|parsed| parsed.request)
        else {
            panic!("not an upgrade")
        };
        assert_eq!(subprotocol, Some(SUBPROTOCOL));
        for path in ["/", "/playground", "/playground/app.js"] {
            assert_eq!(parsed("GET", path), Ok(ApiRequest::Playground(path.into())));
        }
        assert_eq!(parsed("POST", "/").unwrap_err().status(), 405);
        assert_eq!(parsed("GET", "/playgroundx").unwrap_err().status(), 404);
        let twice = parse(
            &request(
                "GET",
                "/attach/abc?sandbox_token=t&sandbox_token=u",
                &UPGRADE,
                "",
            ),
            &LIMITS,
        );
        assert!(matches!(
            twice.unwrap().request,
            ApiRequest::Upgrade {
                target: Upgrade::Attach { token: Err(_), .. },
                ..
            }
        ));
    }

    #[test]
    fn execute_requests_are_checked_by_the_shared_rules() {
        let execute = |target: &str, body: &str| {
            parse(&request("POST", target, &[], body), &LIMITS).map(|parsed| parsed.request)
        };
        let Ok(ApiRequest::Execute(checked)) = execute("/execute?language=bash&timeout=5", "echo")
        else {
            panic!("not an execution")
        };
        assert_eq!(checked.language, Language::Bash);
        assert_eq!(checked.options.timeout, Duration::from_secs(5));
        assert_eq!(checked.options.cwd, "/root");
        for (target, body, message) in [
            (
                "/execute",
                "x",
                "missing query parameter \"language\"; supported languages: python, bash",
            ),
            (
                "/execute?language=ruby",
                "x",
                "unsupported language \"ruby\"; supported languages: python, bash",
            ),
            (
                "/execute?language=bash&language=python",
                "x",
                "query parameter \"language\" is given more than once",
            ),
            (
                "/execute?language=bash&timeout=0",
                "x",
                "timeout must be a number of seconds above 0 and at most 600, got \"0\"",
            ),
        ] {
            assert_eq!(
                execute(target, body),
                Err(ApiError::BadRequest(message.into())),
                "{target}"
            );
        }
        let bad_utf8 = Request {
            body: vec![b'a', 0xff],
            ..request("POST", "/execute?language=bash", &[], "")
        };
        assert_eq!(
            parse(&bad_utf8, &LIMITS).unwrap_err().message(),
            "the code must be UTF-8 text (invalid byte at offset 1)"
        );
    }

    /// What Python's `websockets` and Node's `ws` send: 16 random bytes in base64, version 13.
    #[test]
    fn the_clients_handshake_is_accepted() {
        assert_eq!(
            handshake_key(&request("GET", "/create", &UPGRADE, "")),
            Ok("dGhlIHNhbXBsZSBub25jZQ==".into())
        );
    }

    #[test]
    fn other_versions_get_426_with_the_version_we_speak() {
        let key = ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        for versions in [
            vec![],
            vec!["8"],
            vec!["12"],
            vec!["13, 8"],
            vec!["13", "13"],
        ] {
            let mut headers = vec![key];
            headers.extend(versions.iter().map(|v| ("sec-websocket-version", *v)));
            let error = handshake_key(&request("GET", "/create", &headers, "")).unwrap_err();
            let text = text(&error.response(), true);
            assert!(
                text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
                "{text}"
            );
            assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{text}");
            assert!(text.contains("Connection: close"), "{text}");
        }
    }

    #[test]
    fn malformed_keys_get_400() {
        for (keys, needle) in [
            (vec![], "missing Sec-WebSocket-Key"),
            (vec!["x"], "invalid Sec-WebSocket-Key \\\"x\\\""),
            (vec!["dGhlIHNhbXBsZSBub25jZQ"], "base64 of 16 bytes"),
            (vec!["dGhlIHNhbXBsZSBub25jZQ=="; 2], "more than once"),
            // 24 characters, but not base64 / not 16 bytes.
            (vec!["dGhlIHNhbXBsZSBub25jZ!=="], "base64 of 16 bytes"),
            (vec!["dGhlIHNhbXBsZSBub25jZQAA"], "base64 of 16 bytes"),
            (vec!["dGhlIHNhbXBsZSBub25j ZQ="], "base64 of 16 bytes"),
        ] {
            let mut headers = vec![("sec-websocket-version", "13")];
            headers.extend(keys.iter().map(|k| ("sec-websocket-key", *k)));
            let error = handshake_key(&request("GET", "/create", &headers, "")).unwrap_err();
            assert_eq!(error.status(), 400, "{keys:?}");
            let text = text(&error.response(), true);
            assert!(text.contains(needle), "{keys:?}: {text}");
            assert!(text.contains("Connection: close"), "{text}");
        }
    }

    #[test]
    fn one_place_maps_errors_to_answers() {
        let unauthorized = ApiError::Http(HttpError::new(401, "missing api key"));
        let answer = text(&unauthorized.response(), true);
        assert!(
            answer.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
            "{answer}"
        );
        assert!(answer.contains("WWW-Authenticate: Bearer\r\n"), "{answer}");
        assert!(answer.contains("Connection: close\r\n"), "{answer}");
        assert!(
            answer.ends_with(r#"{"error":"missing api key"}"#),
            "{answer}"
        );

        let full = ApiError::from(RuntimeError::AtCapacity(4)).response();
        let answer = text(&full, true);
        assert!(
            answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{answer}"
        );
        assert!(answer.contains("Retry-After: 1\r\n"), "{answer}");
        assert!(answer.contains("Connection: keep-alive\r\n"), "{answer}");
        assert!(answer
            .ends_with(r#"{"error":"the server is at its limit of 4 sandboxes; retry shortly"}"#));

        assert_eq!(ApiError::from(RuntimeError::NoSuchSandbox).status(), 500);
        assert_eq!(ApiError::NotEnabled("x".into()).status(), 501);
        assert_eq!(ApiError::MethodNotAllowed("x".into()).status(), 405);
        assert!(!ApiError::NotFound("x".into()).response().closes());
        assert!(ApiError::Http(HttpError::new(413, "big"))
            .response()
            .closes());
    }

    #[test]
    fn sandbox_listings_check_their_query() {
        let list = |checkpointed, limit, after: Option<&str>| {
            Ok(ApiRequest::ListSandboxes(ListSandboxes {
                checkpointed,
                limit,
                after: after.map(str::to_string),
            }))
        };
        assert_eq!(parsed("GET", "/sandboxes"), list(false, 100, None));
        assert_eq!(
            parsed("GET", "/sandboxes?checkpointed=0"),
            list(false, 100, None)
        );
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            parsed(
                "GET",
                &format!("/sandboxes?checkpointed=1&limit=5&after={id}")
            ),
            list(true, 5, Some(id))
        );
        for (target, message) in [
            (
                "/sandboxes?checkpointed=yes",
                "checkpointed must be 1 or 0 (true or false), got \"yes\"",
            ),
            (
                "/sandboxes?limit=0",
                "limit must be a number from 1 to 1000, got \"0\"",
            ),
            (
                "/sandboxes?limit=1001",
                "limit must be a number from 1 to 1000",
            ),
            (
                "/sandboxes?after=../x",
                "after must be a sandbox id (32 hexadecimal digits), got \"../x\"",
            ),
            (
                "/sandboxes?limit=1&limit=2",
                "query parameter \"limit\" is given more than once",
            ),
        ] {
            let error = parsed("GET", target).unwrap_err();
            assert_eq!(error.status(), 400, "{target}");
            assert!(
                error.message().starts_with(message),
                "{target}: {}",
                error.message()
            );
        }
        assert_eq!(parsed("POST", "/sandboxes").unwrap_err().status(), 405);
    }

    #[test]
    fn head_answers_have_the_head_of_get() {
        let get = String::from_utf8(status_response().encode(true, false)).unwrap();
        let head = String::from_utf8(status_response().encode(true, true)).unwrap();
        assert_eq!(get, format!("{head}{{\"status\":\"ok\"}}"));
        assert!(head.contains("Content-Length: 15\r\n"));
        let ready = text(&ready_response(Some("no image".into())), false);
        assert!(ready.starts_with("HTTP/1.1 503 "), "{ready}");
        assert!(ready.contains("Cache-Control: no-store\r\n"), "{ready}");
        assert!(ready.ends_with(r#"{"reason":"no image","status":"unavailable"}"#));
    }
}
