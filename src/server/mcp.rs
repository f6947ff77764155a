//! `/mcp` in the event loop: the thin glue between HTTP connections and the MCP room
//! (`crate::mcp`). It reads a request's parts for the endpoint, carries out its action, and
//! drives each sandbox an MCP call uses through the same session machine as a WebSocket client
//! would: a virtual client that sends the session typed messages with request ids and takes
//! the events of its requests (`deliver` hands an MCP sandbox's events here instead of to a
//! socket). Answers go back as JSON, or as an event stream when the call asked for progress.
//!
//! Cancellation: `notifications/cancelled` (handshake revision), or the response stream
//! closed (single-exchange revision), kills the call's command.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::api::Response;
use super::connection::{ConnectionId, McpWaiting, Phase, OUT_HIGH_WATER};
use super::sessions::Control;
use super::Server;
use crate::agent_protocol::ExecId;
use crate::config::Config;
use crate::http::request::Request;
use crate::http::response::{encode_chunk, final_chunk, ResponseHead};
use crate::mcp::call::{CallEvent, CommandCall, ToolResult};
use crate::mcp::endpoint::{self, Action, Call, Endpoint, Reply};
use crate::mcp::files::FileCall;
use crate::mcp::registry::Registry;
use crate::mcp::tools::{Features, ToolRequest};
use crate::mcp::version::Era;
use crate::session::{Out, RequestId, Session, SessionId, Status};

/// A call still waits for its sandbox's session this long past its own timeout (the sandbox
/// start, the kill grace) before it is answered with an error: every wait has an end.
const CALL_GRACE: Duration = Duration::from_secs(60);

/// The MCP endpoint's state in the server.
pub struct McpState {
    endpoint: Endpoint,
    calls: HashMap<RequestId, PendingCall>,
    next_request: u64,
    output_bytes: usize,
}

impl McpState {
    pub fn new(config: &Config) -> Self {
        McpState {
            endpoint: Endpoint::new(
                Registry::new(config.mcp.max_sessions, config.mcp.idle_timeout),
                config.mcp.allowed_origins.clone(),
                Features::AVAILABLE,
            ),
            calls: HashMap::new(),
            next_request: 0,
            output_bytes: config.mcp.output_bytes,
        }
    }

    pub fn owns(&self, session: SessionId) -> bool {
        self.endpoint.registry.is_mcp_sandbox(session)
    }

    pub fn session_count(&self) -> usize {
        self.endpoint.registry.session_count()
    }

    pub fn sandbox_count(&self) -> usize {
        self.endpoint.registry.sandbox_count()
    }

    /// A request id of the virtual client, unique for the server's life.
    fn request_id(&mut self, prefix: &str) -> RequestId {
        self.next_request += 1;
        RequestId::Text(format!("mcp-{prefix}{}", self.next_request))
    }
}

/// What answers a call: a process (a command or a code cell), or a file operation.
enum Machine {
    Process(Box<CommandCall>),
    File(FileCall),
}

impl Machine {
    fn on_frame(&mut self, frame: &crate::session::Frame) -> Vec<CallEvent> {
        match self {
            Machine::Process(call) => call.on_frame(frame),
            Machine::File(call) => serde_json::from_str::<Value>(&frame.to_json())
                .ok()
                .and_then(|event| call.on_event(&event))
                .map(|result| vec![CallEvent::Finished(result)])
                .unwrap_or_default(),
        }
    }

    fn fail(&mut self, message: &str) -> Vec<CallEvent> {
        match self {
            Machine::Process(call) => call.fail(message),
            Machine::File(call) => vec![CallEvent::Finished(call.fail(message))],
        }
    }

    fn owns_spill(&self, request: &RequestId) -> bool {
        matches!(self, Machine::Process(call) if call.owns_spill(request))
    }

    fn on_spill_frame(&mut self, frame: &crate::session::Frame) -> Vec<CallEvent> {
        match self {
            Machine::Process(call) => call.on_spill_frame(frame),
            Machine::File(_) => Vec::new(),
        }
    }

    /// The message that stops it (a file operation has none: it ends by itself).
    fn kill_message(&self, kill_request: &RequestId) -> Option<String> {
        match self {
            Machine::Process(call) => call.kill_message(kill_request),
            Machine::File(_) => None,
        }
    }
}

/// A tool call waiting for its sandbox.
struct PendingCall {
    connection: ConnectionId,
    sandbox: SessionId,
    rpc_id: Value,
    era: Era,
    mcp_session: Option<String>,
    call: Machine,
    /// The message that starts it, until the sandbox runs.
    start: Option<String>,
    /// The event-stream head was sent (the call asked for progress).
    streaming: bool,
    keep_alive: bool,
    deadline: Instant,
}

/// `Bearer <key>` of a request, as the digest a sandbox records as its owner (only with API
/// keys configured: the head check has accepted the key already).
fn owner_of(request: &Request, keys_configured: bool) -> Option<String> {
    if !keys_configured {
        return None;
    }
    let value = request.header("authorization")?;
    let (scheme, key) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| crate::ids::sha256_hex(key.trim().as_bytes()))
}

fn new_session_id() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    crate::ids::random_bytes(&mut bytes)
        .map_err(|error| format!("cannot make a session id: {error}"))?;
    Ok(crate::ids::hex(&bytes))
}

fn sse_event(body: &Value, out: &mut Vec<u8>) {
    encode_chunk(
        format!("event: message\r\ndata: {body}\r\n\r\n").as_bytes(),
        out,
    );
}

impl Server {
    pub(super) fn mcp_request(&mut self, id: ConnectionId, request: &Request, keep_alive: bool) {
        let owner = owner_of(request, self.config.api_keys.is_some());
        let input = endpoint::Request {
            method: &request.method,
            body: &request.body,
            session_id: request.header("mcp-session-id"),
            protocol_version: request.header("mcp-protocol-version"),
            mcp_method: request.header("mcp-method"),
            mcp_name: request.header("mcp-name"),
            origin: request.header("origin"),
            host: request.header("host"),
            owner: owner.as_deref(),
        };
        let action = self
            .mcp
            .endpoint
            .handle(&input, new_session_id, Instant::now());
        match action {
            Action::Reply(reply) => self.mcp_reply(id, reply, keep_alive),
            Action::EndSession(sandbox) => {
                if let Some(sandbox) = sandbox {
                    self.mcp_delete_sandbox(sandbox);
                }
                self.mcp_reply(
                    id,
                    Reply {
                        status: 200,
                        body: None,
                        session_id: None,
                        allow: None,
                    },
                    keep_alive,
                );
            }
            Action::Cancel { session, request } => {
                let found = self.mcp.calls.iter().find(|(_, pending)| {
                    pending.mcp_session.as_deref() == Some(session.as_str())
                        && pending.rpc_id == request
                });
                if let Some((call, _)) = found {
                    let call = call.clone();
                    self.mcp_cancel(&call, "cancelled by the client");
                }
                self.mcp_reply(
                    id,
                    Reply {
                        status: 202,
                        body: None,
                        session_id: None,
                        allow: None,
                    },
                    keep_alive,
                );
            }
            Action::Call(call) => self.mcp_call(id, call, keep_alive),
        }
    }

    fn mcp_reply(&mut self, id: ConnectionId, reply: Reply, keep_alive: bool) {
        let body = reply
            .body
            .map(|body| body.to_string().into_bytes())
            .unwrap_or_default();
        let mut response = Response::new(reply.status, "application/json", body);
        if let Some(session) = &reply.session_id {
            response = response.header("Mcp-Session-Id", session);
        }
        if let Some(allow) = reply.allow {
            response = response.header("Allow", allow);
        }
        self.respond(id, &response, keep_alive, false);
    }

    fn mcp_tool_result(
        &mut self,
        id: ConnectionId,
        call: &Call,
        result: ToolResult,
        keep_alive: bool,
    ) {
        let body = endpoint::result_body(&call.rpc_id, call.era, result.to_value());
        self.mcp_reply(
            id,
            Reply {
                status: 200,
                body: Some(body),
                session_id: None,
                allow: None,
            },
            keep_alive,
        );
    }

    fn mcp_call(&mut self, id: ConnectionId, call: Call, keep_alive: bool) {
        let now = Instant::now();
        *self
            .metrics
            .mcp_tool_calls
            .entry(call.tool.name())
            .or_default() += 1;
        let owner = call.owner.as_deref();
        let registry = &mut self.mcp.endpoint.registry;
        // The sandbox: the one named, else the session's, else (run_command) a new one.
        let named = call.tool.sandbox_id();
        let sandbox = match named {
            Some(sandbox_id) => match registry.find_sandbox(sandbox_id, owner) {
                Some(sandbox) => Some(sandbox),
                None => {
                    let message = format!(
                        "no sandbox {sandbox_id}: it was closed, deleted after {} s without calls, or created with another API key; omit sandbox_id to get a new one",
                        registry.idle_timeout().as_secs()
                    );
                    return self.mcp_tool_result(
                        id,
                        &call,
                        ToolResult::error(Some(sandbox_id), &message),
                        keep_alive,
                    );
                }
            },
            None => call
                .session
                .as_deref()
                .and_then(|session| registry.session(session, owner, now))
                .and_then(|session| session.sandbox),
        };
        match &call.tool {
            ToolRequest::CloseSandbox { .. } => {
                let Some(sandbox) = sandbox else {
                    let message = if call.session.is_some() {
                        "this session has no sandbox (none was created yet, or it was closed)"
                    } else {
                        "close_sandbox needs a sandbox_id outside a session"
                    };
                    return self.mcp_tool_result(
                        id,
                        &call,
                        ToolResult::error(None, message),
                        keep_alive,
                    );
                };
                let sandbox_id = registry
                    .sandbox(sandbox)
                    .map(|entry| entry.sandbox_id.clone())
                    .unwrap_or_default();
                self.mcp_delete_sandbox(sandbox);
                let result = ToolResult::ok(
                    format!("sandbox {sandbox_id} is closed"),
                    serde_json::json!({"sandbox_id": sandbox_id, "closed": true}),
                );
                self.mcp_tool_result(id, &call, result, keep_alive)
            }
            tool => {
                let sandbox = match sandbox {
                    Some(sandbox) => sandbox,
                    None => {
                        match self.mcp_new_sandbox(call.session.clone(), call.owner.clone(), now) {
                            Ok(sandbox) => sandbox,
                            Err(message) => {
                                return self.mcp_tool_result(
                                    id,
                                    &call,
                                    ToolResult::error(None, &message),
                                    keep_alive,
                                )
                            }
                        }
                    }
                };
                let (Some(entry), Some(key)) = (
                    self.mcp.endpoint.registry.sandbox(sandbox),
                    self.sessions.get(sandbox).and_then(Session::sandbox),
                ) else {
                    let result =
                        ToolResult::error(None, "the sandbox went away before the call started");
                    return self.mcp_tool_result(id, &call, result, keep_alive);
                };
                let sandbox_id = entry.sandbox_id.clone();
                let request = self.mcp.request_id("");
                let Some((machine, start, timeout_s)) = self.mcp_machine(
                    tool.clone(),
                    &request,
                    &sandbox_id,
                    call.progress_token.clone(),
                ) else {
                    let result = ToolResult::error(
                        Some(&sandbox_id),
                        "this tool runs nothing in the sandbox",
                    );
                    return self.mcp_tool_result(id, &call, result, keep_alive);
                };
                let timeout = timeout_s
                    .map(Duration::from_secs_f64)
                    .unwrap_or(self.config.limits.exec_timeout)
                    .min(self.config.limits.max_exec_timeout);
                let streaming =
                    call.progress_token.is_some() && matches!(machine, Machine::Process(_));
                if let Some(connection) = self.connections.http.get_mut(&id) {
                    connection.phase = Phase::Mcp(McpWaiting {
                        call: request.clone(),
                        sandbox: key,
                    });
                    if streaming {
                        let head = ResponseHead::new(200)
                            .header("Content-Type", "text/event-stream")
                            .header("Cache-Control", "no-cache, no-transform")
                            .encode(None, keep_alive);
                        connection.out.extend_from_slice(&head);
                    }
                }
                self.mcp.endpoint.registry.call_started(sandbox, now);
                self.mcp.calls.insert(
                    request.clone(),
                    PendingCall {
                        connection: id,
                        sandbox,
                        rpc_id: call.rpc_id.clone(),
                        era: call.era,
                        mcp_session: call.session.clone(),
                        call: machine,
                        start: Some(start),
                        streaming,
                        keep_alive,
                        deadline: now + self.config.create_timeout + timeout + CALL_GRACE,
                    },
                );
                if self.sessions.get(sandbox).is_some_and(Session::is_running) {
                    self.mcp_start(&request);
                }
                self.flush(id);
            }
        }
    }

    /// The machine of a call, the session message that starts it, and its timeout.
    fn mcp_machine(
        &self,
        tool: ToolRequest,
        request: &RequestId,
        sandbox_id: &str,
        progress_token: Option<Value>,
    ) -> Option<(Machine, String, Option<f64>)> {
        let cap = self.mcp.output_bytes;
        let sandbox_id = sandbox_id.to_string();
        let process = |token| CommandCall::new(request.clone(), sandbox_id.clone(), token, cap);
        match tool {
            ToolRequest::RunCode {
                code, timeout_s, ..
            } => {
                let mut call = process(progress_token);
                let start = call.cell_message(&code, timeout_s);
                Some((Machine::Process(Box::new(call)), start, timeout_s))
            }
            ToolRequest::WriteFile { path, content, .. } => {
                let (call, start) = FileCall::write(request.clone(), sandbox_id, path, &content);
                Some((Machine::File(call), start, None))
            }
            ToolRequest::ReadFile { path, encoding, .. } => {
                let (call, start) =
                    FileCall::read(request.clone(), sandbox_id, path, encoding, cap);
                Some((Machine::File(call), start, None))
            }
            ToolRequest::ListFiles { path, depth, .. } => {
                let (call, start) = FileCall::list(request.clone(), sandbox_id, path, depth);
                Some((Machine::File(call), start, None))
            }
            ToolRequest::RunCommand {
                command,
                timeout_s,
                cwd,
                ..
            } => {
                let mut call = process(progress_token);
                let start = call.exec_message(&command, timeout_s, cwd.as_deref());
                Some((Machine::Process(Box::new(call)), start, timeout_s))
            }
            // Answered before any machine (`mcp_call`).
            ToolRequest::CloseSandbox { .. } => None,
        }
    }

    /// A sandbox for MCP calls: a session machine with no socket, created like `/create`
    /// with an empty init (the warm pool serves it).
    fn mcp_new_sandbox(
        &mut self,
        mcp_session: Option<String>,
        owner: Option<String>,
        now: Instant,
    ) -> Result<SessionId, String> {
        if let Some(refused) = self.session_limit_refusal() {
            return Err(refused
                .iter()
                .find_map(|out| match out {
                    Out::Send(frame) => frame.message().map(str::to_string),
                    _ => None,
                })
                .unwrap_or_else(|| "the server is at its limit of sessions".into()));
        }
        let mut token = [0u8; 16];
        crate::ids::random_bytes(&mut token)
            .map_err(|error| format!("cannot make a token: {error}"))?;
        let session_id = self.sessions.new_id();
        let mut session = Session::new(
            session_id,
            crate::ids::hex(&token),
            self.session_settings(),
            now,
        );
        let outs = session.on_init("{}", &mut Control(&mut self.runtime), now);
        let failed = outs.iter().find_map(|out| match out {
            Out::Send(frame) if frame.status() == Some(Status::CreationError) => {
                frame.message().map(str::to_string)
            }
            _ => None,
        });
        if let Some(message) = failed {
            return Err(message);
        }
        let sandbox_id = session.sandbox_id().to_string();
        self.sessions.insert(session);
        self.mcp
            .endpoint
            .registry
            .add_sandbox(session_id, sandbox_id, owner, mcp_session, now);
        self.deliver(session_id, outs);
        Ok(session_id)
    }

    /// Send a waiting call's command to its (running) sandbox.
    fn mcp_start(&mut self, request: &RequestId) {
        let Some(pending) = self.mcp.calls.get_mut(request) else {
            return;
        };
        let (Some(start), sandbox) = (pending.start.take(), pending.sandbox) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(sandbox) else {
            return;
        };
        let outs = session.on_message(&start, &mut Control(&mut self.runtime), Instant::now());
        self.deliver(sandbox, outs);
    }

    /// What the session of an MCP sandbox returned (instead of frames to a socket).
    pub(super) fn mcp_frames(&mut self, sandbox: SessionId, frames: Vec<Out>) {
        for out in frames {
            let Out::Send(frame) = out else {
                continue;
            };
            let Some(request) = frame.id.clone() else {
                // The session's own events: the sandbox runs now, or it failed.
                if frame.status() == Some(Status::Running) {
                    let waiting: Vec<RequestId> = self
                        .mcp
                        .calls
                        .iter()
                        .filter(|(_, pending)| {
                            pending.sandbox == sandbox && pending.start.is_some()
                        })
                        .map(|(request, _)| request.clone())
                        .collect();
                    for request in waiting {
                        self.mcp_start(&request);
                    }
                } else if let (Some(status), Some(message)) = (frame.status(), frame.message()) {
                    if status.is_error() {
                        let message = format!("the sandbox failed: {message}");
                        self.mcp_fail_all(sandbox, &message);
                    }
                }
                continue;
            };
            if let Some(pending) = self.mcp.calls.get_mut(&request) {
                let events = pending.call.on_frame(&frame);
                self.mcp_events(&request, events);
                continue;
            }
            // An event of a call's spill (its output past the cap, going to a file).
            let owner = self
                .mcp
                .calls
                .iter()
                .find(|(_, pending)| pending.call.owns_spill(&request))
                .map(|(call, _)| call.clone());
            if let Some(call) = owner {
                if let Some(pending) = self.mcp.calls.get_mut(&call) {
                    let events = pending.call.on_spill_frame(&frame);
                    self.mcp_events(&call, events);
                }
            }
        }
    }

    fn mcp_events(&mut self, request: &RequestId, events: Vec<CallEvent>) {
        for event in events {
            let Some(pending) = self.mcp.calls.get(request) else {
                return;
            };
            let connection = pending.connection;
            match event {
                CallEvent::Progress(notification) => {
                    if !pending.streaming {
                        continue;
                    }
                    let Some(http) = self.connections.http.get_mut(&connection) else {
                        continue;
                    };
                    sse_event(&notification, &mut http.out);
                    if http.out.len() > OUT_HIGH_WATER && !http.output_paused {
                        http.output_paused = true;
                        if let Phase::Mcp(waiting) = &http.phase {
                            self.runtime.set_output_paused(waiting.sandbox, true);
                        }
                    }
                    self.flush(connection);
                }
                CallEvent::Send(message) => {
                    let sandbox = pending.sandbox;
                    if let Some(session) = self.sessions.get_mut(sandbox) {
                        let outs = session.on_message(
                            &message,
                            &mut Control(&mut self.runtime),
                            Instant::now(),
                        );
                        self.deliver(sandbox, outs);
                    }
                }
                CallEvent::PauseOutput(process, paused) => {
                    let key = self
                        .sessions
                        .get(pending.sandbox)
                        .and_then(Session::sandbox);
                    if let (Some(key), Ok(exec)) = (key, u32::try_from(process.0)) {
                        self.runtime
                            .set_exec_output_paused(key, ExecId(exec), paused);
                    }
                }
                CallEvent::Finished(result) => self.mcp_finish(request, result),
            }
        }
    }

    /// Answer a call with its result and free its connection for the next request.
    fn mcp_finish(&mut self, request: &RequestId, result: ToolResult) {
        let Some(pending) = self.mcp.calls.remove(request) else {
            return;
        };
        self.mcp
            .endpoint
            .registry
            .call_ended(pending.sandbox, Instant::now());
        let body = endpoint::result_body(&pending.rpc_id, pending.era, result.to_value());
        let id = pending.connection;
        let Some(connection) = self.connections.http.get_mut(&id) else {
            return;
        };
        if !matches!(&connection.phase, Phase::Mcp(waiting) if &waiting.call == request) {
            return;
        }
        if connection.output_paused {
            connection.output_paused = false;
            if let Phase::Mcp(waiting) = &connection.phase {
                self.runtime.set_output_paused(waiting.sandbox, false);
            }
        }
        let keep_alive = pending.keep_alive && !connection.peer_closed;
        connection.phase = if keep_alive {
            Phase::Reading
        } else {
            Phase::Closing
        };
        if pending.streaming {
            sse_event(&body, &mut connection.out);
            connection.out.extend_from_slice(final_chunk());
            *self.metrics.http_responses.entry(200).or_default() += 1;
        } else {
            let response = Response::new(200, "application/json", body.to_string().into_bytes());
            connection
                .out
                .extend_from_slice(&response.encode(keep_alive, false));
            *self.metrics.http_responses.entry(200).or_default() += 1;
        }
        self.flush(id);
        self.process_requests(id);
    }

    /// Every call on `sandbox` ends with `message` (the sandbox failed or went away).
    fn mcp_fail_all(&mut self, sandbox: SessionId, message: &str) {
        let requests: Vec<RequestId> = self
            .mcp
            .calls
            .iter()
            .filter(|(_, pending)| pending.sandbox == sandbox)
            .map(|(request, _)| request.clone())
            .collect();
        for request in requests {
            if let Some(pending) = self.mcp.calls.get_mut(&request) {
                let events = pending.call.fail(message);
                self.mcp_events(&request, events);
            }
        }
    }

    /// Kill a call's command (its DONE then answers it), or end a call that has not started.
    fn mcp_cancel(&mut self, request: &RequestId, why: &str) {
        let kill_request = self.mcp.request_id("kill-");
        let Some(pending) = self.mcp.calls.get_mut(request) else {
            return;
        };
        if pending.start.is_some() {
            let events = pending.call.fail(why);
            return self.mcp_events(request, events);
        }
        let (Some(kill), sandbox) = (pending.call.kill_message(&kill_request), pending.sandbox)
        else {
            return;
        };
        if let Some(session) = self.sessions.get_mut(sandbox) {
            let outs = session.on_message(&kill, &mut Control(&mut self.runtime), Instant::now());
            self.deliver(sandbox, outs);
        }
    }

    /// The connection of a call closed. In the single-exchange revision that is the call's
    /// cancellation; in the handshake revision the command goes on (its result has nowhere to
    /// go: `notifications/cancelled` is how that revision cancels).
    pub(super) fn mcp_stream_closed(&mut self, request: &RequestId) {
        let Some(pending) = self.mcp.calls.get(request) else {
            return;
        };
        if pending.era == Era::SingleExchange {
            self.mcp_cancel(request, "the client closed the response stream");
        }
        let Some(mut pending) = self.mcp.calls.remove(request) else {
            return;
        };
        self.mcp
            .endpoint
            .registry
            .call_ended(pending.sandbox, Instant::now());
        // Nobody reads its result any more; its spills (if any) are told their input ended.
        for event in pending.call.fail("the client went away") {
            if let CallEvent::Send(message) = event {
                if let Some(session) = self.sessions.get_mut(pending.sandbox) {
                    let outs = session.on_message(
                        &message,
                        &mut Control(&mut self.runtime),
                        Instant::now(),
                    );
                    self.deliver(pending.sandbox, outs);
                }
            }
        }
    }

    /// Delete an MCP sandbox through its session (as `kill_sandbox` would), or at once if it
    /// is not running yet.
    fn mcp_delete_sandbox(&mut self, sandbox: SessionId) {
        self.mcp.endpoint.registry.close_sandbox(sandbox);
        let running = self.sessions.get(sandbox).is_some_and(Session::is_running);
        if running {
            if let Some(session) = self.sessions.get_mut(sandbox) {
                let outs = session.on_message(
                    r#"{"action":"kill_sandbox"}"#,
                    &mut Control(&mut self.runtime),
                    Instant::now(),
                );
                self.deliver(sandbox, outs);
            }
        } else {
            self.forget_session(sandbox);
        }
    }

    /// An MCP sandbox's session is gone: its calls end, the registry forgets it.
    pub(super) fn mcp_sandbox_gone(&mut self, sandbox: SessionId) {
        self.mcp_fail_all(sandbox, "the sandbox was deleted");
        self.mcp.endpoint.registry.forget_sandbox(sandbox);
    }

    /// Idle sessions and sandboxes go; calls past their deadline are answered.
    pub(super) fn mcp_sweep(&mut self, now: Instant) {
        let expired = self.mcp.endpoint.registry.expire(now);
        for sandbox in expired.sandboxes {
            self.mcp_delete_sandbox(sandbox);
        }
        let late: Vec<RequestId> = self
            .mcp
            .calls
            .iter()
            .filter(|(_, pending)| now >= pending.deadline)
            .map(|(request, _)| request.clone())
            .collect();
        for request in late {
            if let Some(pending) = self.mcp.calls.get_mut(&request) {
                let events = pending.call.fail("the sandbox did not answer in time");
                self.mcp_events(&request, events);
            }
        }
    }
}
