//! HTTP connections in the event loop: accepting, reading requests, dispatching each parsed
//! [`ApiRequest`] to what carries it out, writing answers, and the connection deadlines.

use std::io::{self, Write};
use std::time::Instant;

use mio::Interest;

use super::api::{self, ApiError, ApiRequest, ExecuteRequest, Parsed, Response};
use super::connection::{
    Connection, ConnectionId, Phase, ReadOutcome, LINGER_TIMEOUT, OUT_HIGH_WATER, OUT_LOW_WATER,
};
use super::execute::ExecuteJob;
use super::playground;
use super::recovery::Peer;
use super::store_work::CheckpointQuery;
use super::websocket::Linger;
use super::Server;
use crate::http::request::{HttpError, Progress, Request};
use crate::io_token::{token, Tag};
use crate::metrics::Gauges;
use crate::runtime::{Claimed, Owner, RuntimeEvent, SandboxKey};

/// What an HTTP connection's request is bound to, when a runtime notice for `/execute` comes.
#[derive(Debug, Clone, Copy)]
enum ExecuteBinding {
    /// Its `/execute` runs in this sandbox.
    Sandbox(SandboxKey),
    /// Its `/execute` waits in line for a sandbox.
    WaitingInLine,
    /// The connection is doing something else (its `/execute` ended).
    NoExecute,
    /// The connection is closed.
    ConnectionGone,
}

impl Server {
    pub(super) fn accept(&mut self) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            let (mut stream, _) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) => {
                    // EMFILE and friends: keep serving the connections we have.
                    eprintln!("server: accept failed: {error}");
                    return;
                }
            };
            if self.connections.len() >= self.config.http.max_connections {
                let refusal = ApiError::Unavailable("too many connections; retry shortly".into());
                let _ = stream.write(&refusal.response().encode(false, false));
                continue;
            }
            let _ = stream.set_nodelay(true);
            let id = self.connections.new_id();
            let interest = Interest::READABLE | Interest::WRITABLE;
            if self
                .poll
                .registry()
                .register(&mut stream, token(Tag::Connection, id.0), interest)
                .is_err()
            {
                continue;
            }
            self.connections.add(id, stream);
            // A client sends its request right after connecting, so it is often here already:
            // read it now rather than on the next turn of the loop (guarded as there: a panic
            // ends this connection only).
            self.guarded(Peer::Connection(id), |server| {
                server.connection_ready(id, true, false)
            });
        }
    }

    pub(super) fn connection_ready(&mut self, id: ConnectionId, readable: bool, writable: bool) {
        if self.connections.websockets.contains_key(&id) {
            return self.websocket_ready(id, readable, writable);
        }
        if self
            .connections
            .http
            .get(&id)
            .is_some_and(|connection| matches!(connection.phase, Phase::Port(_)))
        {
            if readable {
                self.read_port_client(id);
            }
            return self.flush(id);
        }
        if readable {
            let Some(connection) = self.connections.http.get_mut(&id) else {
                return;
            };
            if matches!(connection.phase, Phase::Lingering { .. }) {
                if connection.drain_lingering() == Linger::Done {
                    self.close(id);
                }
                return;
            }
            match connection.read_available() {
                Ok(ReadOutcome::Open) => {}
                Ok(ReadOutcome::Closed) if matches!(connection.phase, Phase::File(_)) => {
                    // The client of a transfer is gone: an upload leaves no file.
                    self.abandon_file_job(id);
                    self.close(id);
                    return;
                }
                Ok(ReadOutcome::Closed) => {
                    // A client gone mid-execution: its sandbox is killed and deleted.
                    if let Some(sandbox) = connection.job().and_then(|job| job.sandbox) {
                        eprintln!(
                            "server: client of sandbox key {sandbox} disconnected; deleting it"
                        );
                    }
                    self.abandon_execute(id);
                    self.close(id);
                    return;
                }
                Err(error) => {
                    self.abandon_file_job(id);
                    return self.refuse_request(id, ApiError::Http(error));
                }
            }
            self.feed_upload(id);
            self.process_requests(id);
        }
        if writable {
            self.flush(id);
        }
    }

    /// Answer a request that cannot be served and close: after a parse error the stream is
    /// out of sync, and a running execution's sandbox goes.
    fn refuse_request(&mut self, id: ConnectionId, error: ApiError) {
        self.abandon_execute(id);
        self.respond(id, &error.response(), false, false);
        self.flush(id);
    }

    /// Handle complete requests while the connection is free to take one.
    pub(super) fn process_requests(&mut self, id: ConnectionId) {
        loop {
            let Some(connection) = self.connections.http.get_mut(&id) else {
                return;
            };
            if !matches!(connection.phase, Phase::Reading) || self.shutdown_deadline.is_some() {
                return;
            }
            match connection.parser.poll() {
                Ok(Progress::NeedMore) => {
                    if connection.parser.is_idle() {
                        connection.request_started = None;
                    }
                    return;
                }
                Ok(Progress::SendContinue) => connection
                    .out
                    .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n"),
                Ok(Progress::Done(request)) => {
                    connection.request_started = None;
                    self.route(id, request, false);
                }
                Ok(Progress::Head(request)) => {
                    connection.request_started = None;
                    self.route(id, request, true);
                }
                // Pieces of a streamed body go to its transfer (`feed_upload`); one that was
                // refused closes the connection before they are polled.
                Ok(Progress::Body(_) | Progress::BodyEnd) => {}
                Err(error) => return self.refuse_request(id, ApiError::Http(error)),
            }
            self.flush(id);
        }
    }

    /// Queue `response`; the connection closes after it unless it stays alive.
    pub(super) fn respond(
        &mut self,
        id: ConnectionId,
        response: &Response,
        keep_alive: bool,
        head_only: bool,
    ) {
        *self
            .metrics
            .http_responses
            .entry(response.status())
            .or_default() += 1;
        let Some(connection) = self.connections.http.get_mut(&id) else {
            return;
        };
        connection
            .out
            .extend_from_slice(&response.encode(keep_alive, head_only));
        if !keep_alive || response.closes() {
            connection.phase = Phase::Closing;
        }
    }

    /// `streamed`: the request's body follows (an upload; only files routes stream).
    fn route(&mut self, id: ConnectionId, http_request: Request, streamed: bool) {
        crate::guard::test_panic_point(http_request.target.as_bytes());
        if let Some(port_route) = crate::ports::route(&http_request, self.port_domain()) {
            return self.port_request(id, http_request, port_route);
        }
        let origin =
            crate::ports::public_origin(self.config.ports.public_url.as_deref(), &http_request);
        let parsed = match api::parse(&http_request, &self.exec_limits()) {
            Ok(parsed) => parsed,
            Err(error) => {
                let keep_alive = http_request.keep_alive();
                return self.respond(id, &error.response(), keep_alive, false);
            }
        };
        let Parsed {
            request,
            keep_alive,
            head_only,
        } = parsed;
        let answer = match request {
            ApiRequest::Status => Ok(api::status_response()),
            ApiRequest::Ready => Ok(api::ready_response(self.runtime.cannot_create())),
            ApiRequest::Metrics => Ok(Response::new(
                200,
                "text/plain; version=0.0.4",
                self.metrics_text().into_bytes(),
            )),
            ApiRequest::ListSnapshots => {
                return self
                    .wait_for_store(id, keep_alive, |persistence| persistence.list_snapshots(id))
            }
            ApiRequest::ListSandboxes(list) if list.checkpointed => {
                let query = CheckpointQuery {
                    after: list.after,
                    limit: list.limit,
                    ttl: self.config.lease_ttl,
                };
                return self.wait_for_store(id, keep_alive, |persistence| {
                    persistence.list_checkpoints(id, query)
                });
            }
            ApiRequest::ListSandboxes(_) => Ok(api::sandboxes_response(
                &self.sessions.views(Instant::now()),
                |sandbox_id| self.port_list(sandbox_id, &origin),
            )),
            ApiRequest::DeleteSnapshot(name) => {
                return self.wait_for_store(id, keep_alive, |persistence| {
                    persistence.delete_snapshot(id, &name)
                })
            }
            ApiRequest::Execute(execute) => return self.start_execute(id, execute, keep_alive),
            ApiRequest::Files(mut files) => {
                if streamed {
                    if let super::files_http::Operation::Upload { body, .. } = &mut files.operation
                    {
                        *body = None;
                    }
                }
                return self.start_files(id, files, keep_alive && !head_only, streamed);
            }
            ApiRequest::Upgrade {
                key,
                target,
                subprotocol,
            } => return self.upgrade(id, &key, target, subprotocol, origin),
            ApiRequest::Playground(path) => playground::response(&path, self.config.playground),
            ApiRequest::Mcp => return self.mcp_request(id, &http_request, keep_alive),
        };
        let response = answer.unwrap_or_else(|error: ApiError| error.response());
        self.respond(id, &response, keep_alive, head_only);
    }

    /// Start work on the store whose answer completes the request (see `answer_waiting`).
    fn wait_for_store(
        &mut self,
        id: ConnectionId,
        keep_alive: bool,
        start: impl FnOnce(&mut super::persistence::Persistence) -> Result<(), ApiError>,
    ) {
        match start(&mut self.persistence) {
            Ok(()) => {
                if let Some(connection) = self.connections.http.get_mut(&id) {
                    connection.phase = Phase::Waiting {
                        since: Instant::now(),
                        keep_alive,
                    };
                }
            }
            Err(error) => self.respond(id, &error.response(), keep_alive, false),
        }
    }

    /// Run `/execute` in a fresh sandbox: a ready pooled one, or the first to become ready
    /// once the requests that came before are served (see `Runtime::claim_fresh`).
    fn start_execute(&mut self, id: ConnectionId, request: ExecuteRequest, keep_alive: bool) {
        match self.runtime.claim_fresh(Owner::Http(id.0)) {
            Ok(claimed) => {
                let mut job = ExecuteJob::new(request, keep_alive);
                if let Claimed::Sandbox(sandbox) = claimed {
                    job.bind(sandbox, self.sandbox_name(sandbox));
                }
                if let Some(connection) = self.connections.http.get_mut(&id) {
                    connection.phase = Phase::Executing(Box::new(job));
                }
            }
            Err(error) => self.respond(id, &ApiError::from(error).response(), keep_alive, false),
        }
    }

    fn sandbox_name(&self, sandbox: SandboxKey) -> String {
        self.runtime
            .sandbox_id(sandbox)
            .map(|id| id.to_string())
            .unwrap_or_default()
    }

    /// The `/execute` of a connection ends without a response (the client went away or the
    /// connection failed): its sandbox is deleted (its code may be running), or its place in
    /// line for one is given up.
    pub(super) fn abandon_execute(&mut self, id: ConnectionId) {
        let Some(job) = self.connections.http.get(&id).and_then(Connection::job) else {
            return;
        };
        match job.sandbox {
            Some(sandbox) => self.runtime.delete(sandbox),
            None => self.runtime.withdraw_claims(Owner::Http(id.0)),
        }
    }

    /// A runtime notice for the sandbox of a `/execute` request.
    pub(super) fn execute_event(
        &mut self,
        id: ConnectionId,
        sandbox: SandboxKey,
        event: RuntimeEvent,
    ) {
        let bound = match self.connections.http.get(&id).map(|c| &c.phase) {
            None => ExecuteBinding::ConnectionGone,
            Some(Phase::Executing(job)) => match job.sandbox {
                Some(bound) => ExecuteBinding::Sandbox(bound),
                None => ExecuteBinding::WaitingInLine,
            },
            Some(_) => ExecuteBinding::NoExecute,
        };
        match bound {
            ExecuteBinding::Sandbox(bound) if bound == sandbox => {}
            // The sandbox it waited in line for, or the end of its wait (the key names the claim).
            ExecuteBinding::WaitingInLine
                if matches!(event, RuntimeEvent::Ready | RuntimeEvent::StartFailed(_)) => {}
            // Given to a request that is gone: never used, it serves the next one.
            _ if event == RuntimeEvent::Ready => return self.runtime.give_back(sandbox),
            // The client is gone; make sure its sandbox goes too.
            ExecuteBinding::ConnectionGone => return self.runtime.delete(sandbox),
            _ => return,
        }
        let sandbox_name = self.sandbox_name(sandbox);
        let Some(connection) = self.connections.http.get_mut(&id) else {
            return;
        };
        let Phase::Executing(job) = &mut connection.phase else {
            return;
        };
        if job.sandbox.is_none() && event == RuntimeEvent::Ready {
            job.bind(sandbox, sandbox_name);
        }
        let has_sandbox = job.sandbox.is_some();
        let mut step = job.on_event(event);
        if let Some(spec) = step.start.take() {
            match self.runtime.start_exec(sandbox, spec) {
                Ok(exec) => {
                    job.set_running(exec);
                    // /execute has no stdin: the code gets EOF at once.
                    let _ = self.runtime.close_stdin(sandbox, exec);
                }
                Err(error) => step = job.fail(&format!("cannot run the code: {error}")),
            }
        }
        connection.out.extend_from_slice(&step.bytes);
        if let Some(finished) = step.finished {
            let elapsed = job.started.elapsed().as_secs_f64();
            let keep_alive = job.keep_alive() && !connection.peer_closed;
            connection.phase = if keep_alive {
                Phase::Reading
            } else {
                Phase::Closing
            };
            connection.output_paused = false;
            if has_sandbox {
                self.runtime.delete(sandbox);
            }
            *self.metrics.executions.entry(finished.result).or_default() += 1;
            *self
                .metrics
                .http_responses
                .entry(finished.status)
                .or_default() += 1;
            self.metrics.execute_seconds.observe(elapsed);
            self.flush(id);
            self.process_requests(id);
            return;
        }
        if connection.out.len() > OUT_HIGH_WATER && !connection.output_paused {
            connection.output_paused = true;
            self.runtime.set_output_paused(sandbox, true);
        }
        self.flush(id);
    }

    pub(super) fn flush(&mut self, id: ConnectionId) {
        let Some(connection) = self.connections.http.get_mut(&id) else {
            return;
        };
        if !connection.flush() {
            self.abandon_execute(id);
            self.close(id);
            return;
        }
        if matches!(connection.phase, Phase::Port(_)) {
            return self.resume_port_output(id);
        }
        if connection.output_paused && connection.out.len() < OUT_LOW_WATER {
            connection.output_paused = false;
            if let Some(sandbox) = connection.job().and_then(|job| job.sandbox) {
                self.runtime.set_output_paused(sandbox, false);
            }
            if let Phase::Mcp(waiting) = &connection.phase {
                self.runtime.set_output_paused(waiting.sandbox, false);
            }
        }
        let finished = match connection.phase {
            Phase::Closing => true,
            Phase::Lingering { .. } => return,
            // Shutting down: a connection without a running request takes no new one, so it
            // closes once its last response is out (it must not hold the shutdown up).
            Phase::Reading => self.shutdown_deadline.is_some(),
            Phase::Executing(_)
            | Phase::Waiting { .. }
            | Phase::File(_)
            | Phase::Port(_)
            | Phase::Mcp(_) => false,
        };
        if finished && connection.out.is_empty() {
            // A refusal may come before the client sent all of its body: closing with that
            // unread would reset the connection, and the client could lose the response.
            let linger = matches!(connection.phase, Phase::Closing)
                && self.shutdown_deadline.is_none()
                && connection.begin_lingering();
            if !linger {
                self.close(id);
            }
            return;
        }
        self.resume_file_output(id);
    }

    pub(super) fn close(&mut self, id: ConnectionId) {
        self.abandon_file_job(id);
        self.end_port_connection(id);
        if let Some(mut connection) = self.connections.http.remove(&id) {
            let _ = self.poll.registry().deregister(&mut connection.stream);
            if let Phase::Mcp(waiting) = connection.phase {
                // The response stream of a tool call closed before its answer.
                self.mcp_stream_closed(&waiting.call);
            }
        }
    }

    /// Enforce the connection deadlines: slow requests, idle keep-alives, stalled readers,
    /// a store that does not answer.
    pub(super) fn sweep_connections(&mut self, now: Instant) {
        let http = &self.config.http;
        let store_timeout = self.config.create_timeout;
        let port_idle_timeout = self.config.ports.idle_timeout;
        let mut expired = Vec::new();
        for (id, connection) in &self.connections.http {
            let reading = matches!(connection.phase, Phase::Reading);
            let slow_request = reading
                && connection
                    .request_started
                    .is_some_and(|start| now.duration_since(start) > http.request_timeout);
            let idle = reading
                && connection.request_started.is_none()
                && connection.out.is_empty()
                && now.duration_since(connection.last_activity) > http.keepalive_timeout;
            let stalled = !connection.out.is_empty()
                && now.duration_since(connection.last_write_progress) > http.write_timeout;
            let store_late = matches!(connection.phase, Phase::Waiting { since, .. }
                if now.duration_since(since) > store_timeout);
            // The session bounds each file operation; this is the backstop.
            let file_late = matches!(&connection.phase, Phase::File(job)
                if now.duration_since(job.since) > crate::session::files::FILE_OPERATION_TIMEOUT * 2);
            let linger_over = matches!(connection.phase, Phase::Lingering { since, .. }
                if now.duration_since(since) > LINGER_TIMEOUT);
            // A kept-alive connection through a port holds one of the sandbox's port
            // connections: one that nothing crossed for long goes.
            let port_idle = matches!(connection.phase, Phase::Port(_))
                && connection.out.is_empty()
                && now.duration_since(connection.last_activity) > port_idle_timeout;
            if slow_request {
                let error = HttpError::new(408, "the request did not arrive in time");
                expired.push((*id, Some(ApiError::Http(error))));
            } else if store_late {
                let message = format!(
                    "the shared store did not answer within {} s; retry later",
                    store_timeout.as_secs()
                );
                expired.push((*id, Some(ApiError::Unavailable(message))));
            } else if idle || stalled || file_late || linger_over || port_idle {
                expired.push((*id, None));
            }
        }
        for (id, error) in expired {
            match error {
                Some(error) => self.refuse_request(id, error),
                None => {
                    self.abandon_execute(id);
                    self.close(id);
                }
            }
        }
    }

    fn metrics_text(&mut self) -> String {
        for seconds in self.runtime.take_start_seconds() {
            self.metrics.sandbox_start_seconds.observe(seconds);
        }
        let pool_target = self.runtime.pool_target();
        let stats = self.runtime.stats();
        self.metrics.render(&Gauges {
            live_sandboxes: self.runtime.live_sandboxes(),
            pool_ready: self.runtime.pool_ready(),
            pool_target,
            snapshot_pool_ready: self.runtime.snapshot_pool_ready(),
            snapshot_pools: self.runtime.snapshot_pools(),
            waiting_for_slot: self.runtime.waiting_for_slot(),
            waiting_for_sandbox: self.runtime.waiting_for_sandbox(),
            pool_evictions: stats.pool_evictions,
            connections: self.connections.http.len(),
            sessions: self.sessions.len(),
            mcp_sessions: self.mcp.session_count(),
            mcp_sandboxes: self.mcp.sandbox_count(),
            websockets: self.connections.websockets.len(),
            sandboxes_created: stats.created,
            sandbox_start_failures: stats.start_failures,
            sandboxes_lost: stats.lost,
        })
    }
}
