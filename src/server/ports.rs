//! Exposed ports in the event loop (issue 20): the `expose`, `unexpose` and `list_ports`
//! messages of sessions, and the HTTP connections relayed to an application inside a sandbox.
//!
//! A request whose head names a port (`crate::ports::route`) is not handled by the API: the
//! connection is relayed to one relay in the sandbox's agent (an execution without a process,
//! `runtime::Runtime::start_relay`), which dials `127.0.0.1:PORT` there, for as long as both
//! sides keep it open (HTTP/1.1 keep-alive). The first request's head is rewritten (the path
//! form's prefix taken off, `X-Forwarded-*` set).
//!
//! The path form follows every later request on the connection too
//! (`crate::ports::requests`): each head is rewritten the same way and checked against the
//! limits, each body passed on undecoded. A request for anything else than this port ends the
//! connection once the answers asked for before it are out (the client sends it again on a new
//! connection), and bad framing gets its error after them. The host form needs no rewriting
//! and is a byte pipe. Responses pass through unchanged either way: chunked and streamed
//! responses, streamed request bodies and WebSocket upgrades included.
//!
//! Back-pressure both ways: output of the relay waits in the connection's buffer up to its
//! high-water mark, then the relay's credit is held back (the agent stops reading the socket
//! and the application blocks in `send`); bytes from the client are read only while fewer than
//! [`UPSTREAM_IN_FLIGHT`] are on their way into the sandbox.

use std::collections::HashMap;
use std::io::{self, Read};
use std::time::Instant;

use serde_json::{json, Map, Value};

use super::api::Response;
use super::connection::{ConnectionId, Phase, OUT_HIGH_WATER, OUT_LOW_WATER};
use super::store_work::StoredSandbox;
use super::Server;
use crate::agent_protocol::ExecId;
use crate::http::request::Request;
use crate::http::response::json_error_body;
use crate::ports::requests::{Flow, RequestFraming};
use crate::ports::{self, Exposure, Exposures, PortRoute, PortTarget, UpstreamHead};
use crate::runtime::exec::Reason;
use crate::runtime::{RuntimeEvent, SandboxKey};
use crate::session::events::{Frame, Reply, ServerEvent, Status};
use crate::session::{Out, RequestId, Session};

/// Bytes from a client on their way into the sandbox (sent to the agent, not yet written to
/// the application's socket) at most, per connection.
pub const UPSTREAM_IN_FLIGHT: u64 = 1024 * 1024;

/// The ports this instance exposes, and the connections relayed through them.
#[derive(Default)]
pub struct Ports {
    pub exposures: Exposures,
    /// Which connection each relay belongs to.
    relays: HashMap<(SandboxKey, ExecId), ConnectionId>,
    /// Open relays per sandbox (`SANDBOX_MAX_PORT_CONNECTIONS`).
    per_sandbox: HashMap<SandboxKey, usize>,
}

impl Ports {
    fn add_relay(&mut self, sandbox: SandboxKey, exec: ExecId, connection: ConnectionId) {
        self.relays.insert((sandbox, exec), connection);
        *self.per_sandbox.entry(sandbox).or_default() += 1;
    }

    fn remove_relay(&mut self, sandbox: SandboxKey, exec: ExecId) {
        if self.relays.remove(&(sandbox, exec)).is_some() {
            if let Some(count) = self.per_sandbox.get_mut(&sandbox) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.per_sandbox.remove(&sandbox);
                }
            }
        }
    }

    /// The connection relayed by `exec` of `sandbox`, if it is a relay.
    pub fn relay(&self, sandbox: SandboxKey, exec: ExecId) -> Option<ConnectionId> {
        self.relays.get(&(sandbox, exec)).copied()
    }

    fn open_relays(&self, sandbox: SandboxKey) -> usize {
        self.per_sandbox.get(&sandbox).copied().unwrap_or(0)
    }
}

/// One HTTP connection relayed to a port of a sandbox.
#[derive(Debug)]
pub struct PortRelay {
    pub sandbox: SandboxKey,
    pub sandbox_id: String,
    pub port: u16,
    pub exec: ExecId,
    /// The requests after the first (path form; `None`: the host form, a pipe).
    framing: Option<RequestFraming>,
    /// No more requests go on (one for something else, or bad framing): the application's
    /// side is to be half-closed after what was sent.
    requests_stopped: bool,
    /// That half-close was sent.
    upstream_closed: bool,
    /// The error for bad framing, sent once the application's answers before it are out.
    refusal: Option<Response>,
    /// Handed to the runtime and not yet written to the application's socket.
    in_flight: u64,
    /// The client closed its side: the application's side is shut for writing.
    client_done: bool,
    /// Some bytes of the application's answer reached the client.
    answered: bool,
    /// When the request was handed on (for `SANDBOX_PORT_RESPONSE_TIMEOUT_SECS`).
    since: Instant,
    /// When a later request of a kept-alive connection (path form) was handed on, while
    /// nothing came back since: it is timed as the first one is.
    later_request_since: Option<Instant>,
    /// The application ended the connection.
    ended: bool,
    /// The relay's output is held back because the client's buffer is full.
    pub paused: bool,
}

/// Bytes from the client, for the application (`out`): framed request by request (path form)
/// or as they are (`framing` is `None`: the host form).
fn frame(framing: &mut Option<RequestFraming>, input: &[u8], out: &mut Vec<u8>) -> Flow {
    match framing {
        Some(framing) => framing.push(input, out),
        None => {
            out.extend_from_slice(input);
            Flow::Open
        }
    }
}

impl PortRelay {
    /// Bytes from the client, for the application (`out`).
    fn frame(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let heads = self.later_heads();
        let flow = frame(&mut self.framing, input, out);
        if self.later_heads() > heads {
            self.later_request_since.get_or_insert_with(Instant::now);
        }
        self.follow(flow);
    }

    fn later_heads(&self) -> u64 {
        self.framing.as_ref().map_or(0, RequestFraming::later_heads)
    }

    /// The application sent nothing back within `timeout` of a request. Not while its output
    /// is held back for a client that does not read (a pipelining one): that is not silence.
    fn silent_past(&self, timeout: std::time::Duration, now: Instant) -> bool {
        let waited_since = if self.answered {
            self.later_request_since
        } else {
            Some(self.since)
        };
        !self.ended
            && !self.paused
            && waited_since.is_some_and(|since| now.saturating_duration_since(since) > timeout)
    }

    /// What the framing of the client's bytes says to do next.
    fn follow(&mut self, flow: Flow) {
        match flow {
            Flow::Open => {}
            Flow::Leave => self.stop_requests(None),
            Flow::Refuse(error) => {
                self.stop_requests(Some(error_response(error.status, &error.message)))
            }
        }
    }

    /// Nothing more from the client goes on; `refusal` follows the application's answers.
    fn stop_requests(&mut self, refusal: Option<Response>) {
        self.client_done = true;
        self.requests_stopped = true;
        self.refusal = refusal;
    }
}

/// The event a relayed connection needs from the runtime, if `event` is about one.
fn relay_exec(event: &RuntimeEvent) -> Option<ExecId> {
    match event {
        RuntimeEvent::ExecStarted(exec)
        | RuntimeEvent::ExecSpawnFailed(exec, _)
        | RuntimeEvent::Output(exec, _, _)
        | RuntimeEvent::StdinWritten(exec, _)
        | RuntimeEvent::ExecFinished(exec, _) => Some(*exec),
        _ => None,
    }
}

/// A JSON error answer that ends the connection (the parser stopped at the head).
fn error_response(status: u16, message: &str) -> Response {
    Response::new(status, "application/json", json_error_body(message))
        .header("Cache-Control", "no-store")
        .closing()
}

/// The answer for a link whose sandbox does not run on this instance, from what the store says
/// of it (docs/protocol.md, "Which instance answers").
pub(super) fn not_here_answer(stored: &StoredSandbox) -> Response {
    let message = match stored {
        StoredSandbox::Unknown => return not_found(),
        StoredSandbox::Checkpointed => "the sandbox is not running on this instance (checkpointed, or moved to another instance); attach to it to restore it, then retry".to_string(),
        // Not the instance's name: a link is shared, and the name tells of the host.
        StoredSandbox::Elsewhere(_) => "the sandbox runs on another instance of this service, which alone can reach its ports: open the link there, or attach to the sandbox through this instance to move it here (if it allows handoffs), then retry".to_string(),
    };
    error_response(503, &message).header("Retry-After", "1")
}

/// The one answer for an unknown, revoked or wrong capability: nothing in it says whether a
/// sandbox or a port exists.
fn not_found() -> Response {
    error_response(
        404,
        "no such port (the link is wrong, or the port is not exposed)",
    )
}

impl Server {
    /// Whether the request head is for a port (`crate::ports::route`); the parser uses it to
    /// hand such requests over after their head.
    pub(super) fn port_domain(&self) -> Option<&str> {
        self.config.ports.domain.as_deref()
    }

    /// A request for a port: relay it, or answer why not.
    pub(super) fn port_request(&mut self, id: ConnectionId, request: Request, route: PortRoute) {
        let target = match route {
            PortRoute::AddSlash(location) => {
                let response = Response::new(308, "text/plain", b"moved\n".to_vec())
                    .header("Location", &location)
                    .closing();
                return self.respond(id, &response, false, false);
            }
            PortRoute::Target(target) => target,
        };
        // A link not known here, or known but of a sandbox that left: the store may say
        // where it is now.
        let exposure = self
            .ports
            .exposures
            .find(&target.capability, target.port)
            .cloned();
        let held_here = exposure.as_ref().map(|exposure| exposure.held_here);
        if held_here != Some(true) && self.look_up_port_link(id, &target) {
            return;
        }
        match self.open_relay(id, &request, &target, exposure) {
            Ok(()) => self.read_port_client(id),
            Err(response) => self.respond(id, &response, false, false),
        }
    }

    /// A link this instance does not know may lead to a sandbox another instance holds, or one
    /// checkpointed: the store says (on a worker thread), and the connection waits for its
    /// answer (`not_here_answer`). Whether it waits.
    fn look_up_port_link(&mut self, id: ConnectionId, target: &PortTarget) -> bool {
        let digest = ports::capability_digest(&target.capability);
        if self
            .persistence
            .check_port_link(id, digest, target.port)
            .is_none()
        {
            return false;
        }
        if let Some(connection) = self.connections.http.get_mut(&id) {
            connection.phase = Phase::Waiting {
                since: Instant::now(),
                keep_alive: false,
            };
        }
        true
    }

    /// Relay the connection to the port `exposure` names (`None`: the link is unknown).
    fn open_relay(
        &mut self,
        id: ConnectionId,
        request: &Request,
        target: &PortTarget,
        exposure: Option<Exposure>,
    ) -> Result<(), Response> {
        let exposure = exposure.ok_or_else(not_found)?;
        let (sandbox_id, port) = (exposure.sandbox_id, exposure.port);
        if !exposure.held_here {
            return Err(not_here_answer(&StoredSandbox::Checkpointed));
        }
        let session = self
            .sessions
            .live_sandbox(&sandbox_id)
            .and_then(|live| self.sessions.get(live.session))
            .ok_or_else(not_found)?;
        let sandbox = match session.sandbox() {
            Some(sandbox) if session.is_running() => sandbox,
            _ => {
                let view = session.view(Instant::now());
                let message = format!(
                    "the sandbox is {} and cannot take connections now; retry shortly",
                    view.state
                );
                return Err(error_response(503, &message).header("Retry-After", "1"));
            }
        };
        // The path form follows every request (a first one framed ambiguously is refused
        // here); the host form is a pipe.
        let mut framing = match target.port {
            Some(_) => None,
            None => {
                let (limits, head_check) = self.connections.head_rules();
                let framing = RequestFraming::after(
                    request,
                    &target.capability,
                    limits,
                    head_check,
                    self.config.ports.require_key,
                )
                .map_err(|error| error_response(error.status, &error.message))?;
                Some(framing)
            }
        };
        let limit = self.config.ports.max_connections_per_sandbox;
        if self.ports.open_relays(sandbox) >= limit {
            let message = format!(
                "the sandbox has {limit} open port connections (SANDBOX_MAX_PORT_CONNECTIONS); retry when one closes"
            );
            return Err(error_response(503, &message).header("Retry-After", "1"));
        }
        let Some(connection) = self.connections.http.get_mut(&id) else {
            return Ok(());
        };
        // The rewritten head and what came with it go with the connect (one write to the
        // agent, which holds them until the connection is made: no round trip waited for).
        let mut first = ports::upstream_head(
            request,
            &UpstreamHead {
                target,
                proto: ports::forwarded_proto(request),
                close: false,
                drop_authorization: self.config.ports.require_key,
            },
        );
        let flow = frame(&mut framing, &connection.parser.take_raw(), &mut first);
        let exec = self
            .runtime
            .start_relay(sandbox, port, 2 * UPSTREAM_IN_FLIGHT, &first)
            .map_err(|error| {
                error_response(
                    502,
                    &format!("cannot open a connection to port {port}: {error}"),
                )
            })?;
        self.ports.add_relay(sandbox, exec, id);
        let Some(connection) = self.connections.http.get_mut(&id) else {
            return Ok(());
        };
        let mut relay = Box::new(PortRelay {
            sandbox,
            sandbox_id,
            port,
            exec,
            framing,
            requests_stopped: false,
            upstream_closed: false,
            refusal: None,
            in_flight: first.len() as u64,
            client_done: false,
            answered: false,
            since: Instant::now(),
            later_request_since: None,
            ended: false,
            paused: false,
        });
        relay.follow(flow);
        connection.phase = Phase::Port(relay);
        Ok(())
    }

    /// Read what the client sent while the relay has room for it, and hand it on.
    pub(super) fn read_port_client(&mut self, id: ConnectionId) {
        let Some(connection) = self.connections.http.get_mut(&id) else {
            return;
        };
        let Phase::Port(relay) = &mut connection.phase else {
            return;
        };
        // Bytes go out before the agent said it connected: they travel behind the connect
        // in the same pipe and the agent holds them until the connection is made (one round
        // trip less per request; dropped with the relay if nothing accepts it).
        if relay.ended {
            return;
        }
        let mut chunk = Vec::new();
        let mut client_gone = false;
        while !relay.client_done && (relay.in_flight + chunk.len() as u64) < UPSTREAM_IN_FLIGHT {
            let mut buffer = [0u8; 64 * 1024];
            let room = (UPSTREAM_IN_FLIGHT - relay.in_flight) as usize - chunk.len();
            let take = room.min(buffer.len());
            match connection.stream.read(&mut buffer[..take]) {
                Ok(0) => {
                    relay.client_done = true;
                    client_gone = true;
                }
                Ok(n) => {
                    connection.last_activity = Instant::now();
                    relay.frame(&buffer[..n], &mut chunk);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    relay.client_done = true;
                    client_gone = true;
                }
            }
        }
        let (sandbox, exec, answered) = (relay.sandbox, relay.exec, relay.answered);
        if !chunk.is_empty() {
            relay.in_flight += chunk.len() as u64;
            if self.runtime.write_stdin(sandbox, exec, &chunk).is_err() {
                return self.end_port_connection(id);
            }
        }
        if client_gone && answered {
            // Once the answer has begun, the end of the client's side is the client leaving
            // (HTTP clients do not half-close mid-response): a quiet stream (server-sent
            // events, a WebSocket) must not keep the relay and its slot.
            return self.end_port_connection(id);
        }
        if (client_gone || relay.requests_stopped) && !relay.upstream_closed {
            // Before it, a half-close ends the requests; the application's answers may come.
            // (Requests stopped: the application sees the end after those it got, answers
            // them and closes.)
            relay.upstream_closed = true;
            let _ = self.runtime.close_stdin(sandbox, exec);
        }
    }

    /// A runtime event about a relay: handled here, not by the sandbox's session. Returns
    /// the event if it is not about a relay.
    pub(super) fn port_notice(
        &mut self,
        sandbox: SandboxKey,
        event: RuntimeEvent,
    ) -> Option<RuntimeEvent> {
        let Some(exec) = relay_exec(&event) else {
            return Some(event);
        };
        let Some(id) = self.ports.relay(sandbox, exec) else {
            return Some(event);
        };
        if matches!(
            event,
            RuntimeEvent::ExecFinished(..) | RuntimeEvent::ExecSpawnFailed(..)
        ) {
            self.ports.remove_relay(sandbox, exec);
        }
        let Some(connection) = self.connections.http.get_mut(&id) else {
            let _ = self.runtime.kill_exec(sandbox, exec, Reason::Killed);
            return None;
        };
        let Phase::Port(relay) = &mut connection.phase else {
            return None;
        };
        match event {
            RuntimeEvent::ExecStarted(_) => {
                relay.since = Instant::now();
            }
            RuntimeEvent::ExecSpawnFailed(_, message) => {
                relay.ended = true;
                // The agent's message names the port and why (refused: nothing listens).
                let response = error_response(502, &message);
                self.respond(id, &response, false, false);
            }
            RuntimeEvent::Output(_, _, data) => {
                relay.answered = true;
                relay.later_request_since = None;
                connection.out.extend_from_slice(&data);
                if connection.out.len() > OUT_HIGH_WATER && !relay.paused {
                    relay.paused = true;
                    self.runtime.set_exec_output_paused(sandbox, exec, true);
                }
            }
            RuntimeEvent::StdinWritten(_, count) => {
                relay.in_flight = relay.in_flight.saturating_sub(u64::from(count));
                self.read_port_client(id);
            }
            RuntimeEvent::ExecFinished(_, outcome) => {
                relay.ended = true;
                if let Some(refusal) = relay.refusal.take().filter(|_| relay.answered) {
                    // Bad framing after requests the application answered: its error last.
                    self.respond(id, &refusal, false, false);
                } else if relay.answered {
                    connection.phase = Phase::Closing;
                } else {
                    let message = if outcome.reason == Reason::SandboxLost {
                        "the sandbox ended before the application answered".to_string()
                    } else {
                        format!(
                            "the application on port {} closed the connection without answering",
                            relay.port
                        )
                    };
                    self.respond(id, &error_response(502, &message), false, false);
                }
            }
            _ => {}
        }
        self.flush(id);
        None
    }

    /// After a flush: give the relay its credit back once the client caught up.
    pub(super) fn resume_port_output(&mut self, id: ConnectionId) {
        let Some(connection) = self.connections.http.get_mut(&id) else {
            return;
        };
        let Phase::Port(relay) = &mut connection.phase else {
            return;
        };
        if relay.paused && connection.out.len() < OUT_LOW_WATER {
            relay.paused = false;
            // A later request's wait starts again: what was held back comes first.
            if relay.later_request_since.is_some() {
                relay.later_request_since = Some(Instant::now());
            }
            self.runtime
                .set_exec_output_paused(relay.sandbox, relay.exec, false);
        }
    }

    /// The connection goes (client gone, stalled, or closed here): its relay is closed.
    pub(super) fn end_port_connection(&mut self, id: ConnectionId) {
        if let Some(connection) = self.connections.http.get_mut(&id) {
            if let Phase::Port(relay) = &connection.phase {
                let (sandbox, exec, ended) = (relay.sandbox, relay.exec, relay.ended);
                self.ports.remove_relay(sandbox, exec);
                if !ended {
                    let _ = self.runtime.kill_exec(sandbox, exec, Reason::Killed);
                }
                connection.phase = Phase::Closing;
            }
        }
    }

    /// Relays whose application said nothing within `SANDBOX_PORT_RESPONSE_TIMEOUT_SECS` of the
    /// request: the client gets a 504.
    pub(super) fn sweep_port_timeouts(&mut self, now: Instant) {
        let timeout = self.config.ports.response_timeout;
        let late: Vec<(ConnectionId, u16)> = self
            .connections
            .http
            .iter()
            .filter_map(|(id, connection)| match &connection.phase {
                Phase::Port(relay) if relay.silent_past(timeout, now) => Some((*id, relay.port)),
                _ => None,
            })
            .collect();
        for (id, port) in late {
            self.end_port_connection(id);
            let message = format!(
                "the application on port {port} did not answer within {} s (SANDBOX_PORT_RESPONSE_TIMEOUT_SECS)",
                timeout.as_secs()
            );
            self.respond(id, &error_response(504, &message), false, false);
            self.flush(id);
        }
    }

    /// Close the relays through `port` of `sandbox_id` (unexposed), or through every port
    /// (`None`: the sandbox is being saved; runsc cannot checkpoint open connections).
    pub(super) fn close_port_connections(&mut self, sandbox_id: &str, port: Option<u16>) {
        let ids: Vec<ConnectionId> = self
            .connections
            .http
            .iter()
            .filter_map(|(id, connection)| match &connection.phase {
                Phase::Port(relay)
                    if relay.sandbox_id == sandbox_id
                        && port.is_none_or(|port| port == relay.port) =>
                {
                    Some(*id)
                }
                _ => None,
            })
            .collect();
        for id in ids {
            self.end_port_connection(id);
            self.flush(id);
        }
    }

    /// Close every relayed connection (shutdown: sandboxes are checkpointed or deleted next).
    pub(super) fn close_all_port_connections(&mut self) {
        let ids: Vec<ConnectionId> = self
            .connections
            .http
            .iter()
            .filter(|(_, connection)| matches!(connection.phase, Phase::Port(_)))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.end_port_connection(id);
            self.flush(id);
        }
    }

    /// The URL of `port` exposed under `capability`, as seen from `origin`.
    fn port_url(&self, origin: &str, port: u16, capability: &str) -> String {
        ports::url(origin, self.port_domain(), port, capability)
    }

    /// `[{"port": P, "url": U}, ...]` for the ports `sandbox_id` exposes.
    pub(super) fn port_list(&self, sandbox_id: &str, origin: &str) -> Value {
        let list: Vec<Value> = self
            .ports
            .exposures
            .of_sandbox(sandbox_id)
            .into_iter()
            .map(|(port, capability)| {
                json!({"port": port, "url": self.port_url(origin, port, &capability)})
            })
            .collect();
        Value::Array(list)
    }

    /// Expose `port` of `sandbox_id`; its URL. The link of a checkpointable sandbox (which
    /// can move between instances) is recorded in the store too, so that the other instances
    /// can say where it leads.
    pub(super) fn expose_port(
        &mut self,
        sandbox_id: &str,
        port: u16,
        origin: &str,
        checkpointable: bool,
    ) -> Result<String, String> {
        let mut bytes = [0u8; ports::CAPABILITY_HEX / 2];
        crate::ids::random_bytes(&mut bytes)
            .map_err(|error| format!("cannot make a capability: {error}"))?;
        let capability = crate::ids::hex(&bytes);
        let limit = self.config.ports.max_exposed_per_sandbox;
        let new = !self.ports.exposures.is_exposed(sandbox_id, port);
        let capability = self
            .ports
            .exposures
            .expose(sandbox_id, port, capability, limit)
            .map_err(|error| error.to_string())?;
        if checkpointable && new {
            let digest = ports::capability_digest(&capability);
            self.persistence.record_port_link(digest, sandbox_id, port);
        }
        Ok(self.port_url(origin, port, &capability))
    }

    /// `expose`, `unexpose` and `list_ports` from a session's client; `false` if `text` is
    /// another message (for the session).
    pub(super) fn port_message(&mut self, id: ConnectionId, text: &str) -> bool {
        // Cheap test first: most messages are executions and stdin.
        if !(text.contains("expose") || text.contains("list_ports")) {
            return false;
        }
        let Ok(Value::Object(message)) = serde_json::from_str::<Value>(text) else {
            return false;
        };
        let action = match message.get("action").and_then(Value::as_str) {
            Some(action @ ("expose" | "unexpose" | "list_ports")) => action,
            _ => return false,
        };
        let request = message.get("id").and_then(RequestId::parse);
        let Some(socket) = self.connections.websockets.get(&id) else {
            return true;
        };
        let origin = socket.origin.clone();
        let session = socket
            .session
            .and_then(|session| self.sessions.get(session));
        let outs = match session.filter(|session| session.is_running()) {
            None => request_error(
                "ports can be exposed only while the sandbox is running",
                request.as_ref(),
            ),
            Some(session) => {
                let sandbox = (
                    session.sandbox_id().to_string(),
                    session.is_checkpointable(),
                );
                self.port_action(action, &message, &sandbox, &origin, request.as_ref())
            }
        };
        if let Some(socket) = self.connections.websockets.get_mut(&id) {
            if !socket.apply(outs) {
                self.drop_websocket(id);
            }
        }
        true
    }

    /// `sandbox`: its id, and whether it is checkpointable.
    fn port_action(
        &mut self,
        action: &str,
        message: &Map<String, Value>,
        sandbox: &(String, bool),
        origin: &str,
        request: Option<&RequestId>,
    ) -> Vec<Out> {
        let (sandbox_id, checkpointable) = (sandbox.0.as_str(), sandbox.1);
        let reply = |fields: Map<String, Value>| {
            vec![Out::Send(Frame::answering(
                ServerEvent::Reply(Reply::Fields(fields)),
                request,
            ))]
        };
        if action == "list_ports" {
            let mut fields = Map::new();
            fields.insert("ports".into(), self.port_list(sandbox_id, origin));
            return reply(fields);
        }
        let port = match parse_port(message.get("port")) {
            Ok(port) => port,
            Err(error) => return request_error(&error, request),
        };
        let mut fields = Map::new();
        fields.insert("port".into(), json!(port));
        if action == "expose" {
            match self.expose_port(sandbox_id, port, origin, checkpointable) {
                Ok(url) => {
                    fields.insert("url".into(), json!(url));
                }
                Err(error) => return request_error(&error, request),
            }
        } else {
            let was = self.ports.exposures.unexpose(sandbox_id, port);
            self.close_port_connections(sandbox_id, Some(port));
            fields.insert("unexposed".into(), json!(was.is_some()));
            if checkpointable {
                self.persistence
                    .forget_port_links(was.into_iter().collect());
            }
        }
        reply(fields)
    }

    /// A session ended: its ports go with its sandbox, or wait for it if it was saved.
    pub(super) fn forget_session_ports(&mut self, session: &Session) {
        let sandbox_id = session.sandbox_id();
        if sandbox_id.is_empty() {
            return;
        }
        self.close_port_connections(sandbox_id, None);
        if session.was_killed() || !session.is_checkpointable() {
            self.drop_sandbox_ports(session);
        } else {
            self.ports.exposures.set_held_here(sandbox_id, false);
        }
    }

    /// The sandbox of `session` is gone for good: its links too, here and in the store.
    pub(super) fn drop_sandbox_ports(&mut self, session: &Session) {
        let digests = self.ports.exposures.remove_sandbox(session.sandbox_id());
        if session.is_checkpointable() {
            self.persistence.forget_port_links(digests);
        }
    }

    /// A sandbox restored here from a checkpoint: its saved exposures hold again.
    pub(super) fn restore_ports(&mut self, sandbox_id: &str, saved: &[crate::store::SavedPort]) {
        let _ = self.ports.exposures.remove_sandbox(sandbox_id);
        for saved in saved {
            // A manifest is shared storage: only well-formed capabilities come back.
            if ports::is_capability(&saved.capability) {
                let _ = self.ports.exposures.expose(
                    sandbox_id,
                    saved.port,
                    saved.capability.clone(),
                    usize::MAX,
                );
                // Again: the record may be missing (removed by an instance that died before
                // its next checkpoint, or made before links were recorded).
                let digest = ports::capability_digest(&saved.capability);
                self.persistence
                    .record_port_link(digest, sandbox_id, saved.port);
            }
        }
    }

    /// What a checkpoint's manifest keeps of the sandbox's ports.
    pub(super) fn saved_ports(&self, sandbox_id: &str) -> Vec<crate::store::SavedPort> {
        self.ports
            .exposures
            .of_sandbox(sandbox_id)
            .into_iter()
            .map(|(port, capability)| crate::store::SavedPort { port, capability })
            .collect()
    }

    /// Register the ports named by `expose_ports` in a session's init.
    pub(super) fn expose_at_create(&mut self, session: &Session, ports: &[u16], origin: &str) {
        let sandbox_id = session.sandbox_id().to_string();
        for port in ports {
            let checkpointable = session.is_checkpointable();
            if let Err(error) = self.expose_port(&sandbox_id, *port, origin, checkpointable) {
                eprintln!("server: cannot expose port {port} of {sandbox_id}: {error}");
            }
        }
    }
}

/// `port` as a message or an init gives it: an integer from 1 to 65535.
pub fn parse_port(value: Option<&Value>) -> Result<u16, String> {
    match value {
        Some(value) => value
            .as_u64()
            .and_then(|port| u16::try_from(port).ok())
            .filter(|port| *port > 0)
            .ok_or_else(|| {
                let shown: String = value.to_string().chars().take(32).collect();
                format!("port must be an integer from 1 to 65535, got {shown}")
            }),
        None => Err("port is missing: give an integer from 1 to 65535".into()),
    }
}

/// `expose_ports` of an init (absent: none).
pub fn parse_expose_ports(init: &str) -> Result<Vec<u16>, String> {
    let Ok(Value::Object(init)) = serde_json::from_str::<Value>(init) else {
        return Ok(Vec::new());
    };
    match init.get("expose_ports") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(list)) => list
            .iter()
            .map(|port| parse_port(Some(port)).map_err(|error| format!("expose_ports: {error}")))
            .collect(),
        Some(_) => Err("expose_ports must be a list of ports, e.g. [8000]".into()),
    }
}

fn request_error(message: &str, request: Option<&RequestId>) -> Vec<Out> {
    vec![
        Out::Send(Frame::answering(
            ServerEvent::StatusWithMessage(Status::RequestError, message.to_string()),
            request,
        )),
        Out::Send(Frame::answering(
            ServerEvent::Error(message.to_string()),
            request,
        )),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_checked_and_named_in_errors() {
        assert_eq!(parse_port(Some(&json!(8000))), Ok(8000));
        for bad in [json!(0), json!(65536), json!(-1), json!("80"), json!(1.5)] {
            let error = parse_port(Some(&bad)).unwrap_err();
            assert!(error.contains(&bad.to_string()), "{error}");
        }
        assert!(parse_port(None).unwrap_err().contains("missing"));
        assert_eq!(
            parse_expose_ports(r#"{"expose_ports":[8000,3000]}"#),
            Ok(vec![8000, 3000])
        );
        assert_eq!(parse_expose_ports(r#"{"idle_timeout":3}"#), Ok(vec![]));
        assert!(parse_expose_ports(r#"{"expose_ports":8000}"#).is_err());
        assert!(parse_expose_ports(r#"{"expose_ports":[0]}"#)
            .unwrap_err()
            .contains("expose_ports"));
    }
}
