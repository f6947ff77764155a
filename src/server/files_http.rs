//! The files API over HTTP (issue 14, docs/protocol.md "Files over HTTP"):
//! `GET|PUT|DELETE /sandboxes/{id}/files?path=...` and `GET ...&list=1`, for big transfers
//! and curl users.
//!
//! A request is authorised by the sandbox's token (`X-Sandbox-Token` or `sandbox_token=`), on
//! top of the API key check every request head goes through. It runs as a file transfer of the
//! sandbox's session (`session::files`), whose events come back as `Out::HttpFile` for this
//! connection. Both directions are streamed with bounded buffers:
//! - a download's bytes come under the helper's output window; when the connection's buffer
//!   passes its high-water mark, the transfer's output is paused in the runtime until the
//!   client has read it;
//! - an upload's body is streamed by the parser (never collected): pieces go to the helper's
//!   stdin while its window has room; otherwise the connection stops reading its socket (the
//!   client blocks in TCP) until the helper has written what it got.

use std::time::Instant;

use serde_json::{Map, Value};

use super::api::{ApiError, Response};
use super::connection::{ConnectionId, Phase, OUT_HIGH_WATER, OUT_LOW_WATER};
use super::sessions::Control;
use super::Server;
use crate::agent_protocol::{ExecId, FileFailure};
use crate::http::query::{parse_query, single_param};
use crate::http::request::{Request, StreamCheck};
use crate::http::response::{encode_chunk, final_chunk, ResponseHead};
use crate::runtime::SandboxKey;
use crate::server::store_work::StoredSandbox;
use crate::session::file_messages::{FileMessage, DEFAULT_FILE_MODE};
use crate::session::files::HttpFileOut;
use crate::session::{token, SessionId};

/// Streamed upload bytes a connection holds (read from its socket, not yet passed on) before
/// it stops reading.
pub const MAX_UPLOAD_BUFFER: usize = 1024 * 1024;

/// A checked files request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesRequest {
    pub sandbox_id: String,
    /// The sandbox token given (header or query); empty when none was.
    pub token: String,
    pub operation: Operation,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Download {
        path: String,
    },
    List {
        path: String,
        depth: u32,
    },
    /// The body (streamed, or whole when it came with the head) is the file.
    Upload {
        path: String,
        mode: u32,
        body: Option<Vec<u8>>,
    },
    Delete {
        path: String,
        recursive: bool,
    },
}

/// The sandbox id of a files path (`/sandboxes/{id}/files`).
pub fn sandbox_of(path: &str) -> Option<&str> {
    let id = path.strip_prefix("/sandboxes/")?.strip_suffix("/files")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// The requests whose body the parser streams: uploads.
pub fn stream_check() -> StreamCheck {
    StreamCheck::new(|request| request.method == "PUT" && sandbox_of(&request.path).is_some())
}

/// Checks a files request (`body`: the whole body when it was not streamed).
pub fn parse(request: &Request, sandbox_id: &str) -> Result<FilesRequest, ApiError> {
    let pairs = parse_query(&request.query);
    let param = |name: &str| single_param(&pairs, name).map_err(ApiError::BadRequest);
    let path = match param("path")? {
        Some(path) if !path.is_empty() => path.to_string(),
        _ => {
            return Err(ApiError::File(
                "invalid_path".into(),
                "the query needs a non-empty \"path\"".into(),
            ))
        }
    };
    let flag = |name: &str| -> Result<bool, ApiError> {
        match param(name)? {
            None | Some("0" | "false") => Ok(false),
            Some("1" | "true") => Ok(true),
            Some(other) => Err(ApiError::BadRequest(format!(
                "{name} must be true or false, got {other:?}"
            ))),
        }
    };
    let operation = match request.method.as_str() {
        "GET" if flag("list")? => {
            let depth = match param("depth")? {
                None => 1,
                Some(text) => text
                    .parse::<u32>()
                    .ok()
                    .filter(|depth| (1..=10).contains(depth))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "depth must be an integer from 1 to 10, got {text:?}"
                        ))
                    })?,
            };
            Operation::List { path, depth }
        }
        "GET" => Operation::Download { path },
        "PUT" => {
            let mode = match param("mode")? {
                None => DEFAULT_FILE_MODE,
                Some(text) => text
                    .parse::<u32>()
                    .ok()
                    .filter(|mode| *mode <= 0o7777)
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "mode must be an integer from 0 to 4095 (decimal, 420 = 0644), got {text:?}"
                        ))
                    })?,
            };
            Operation::Upload {
                path,
                mode,
                body: None,
            }
        }
        "DELETE" => Operation::Delete {
            path,
            recursive: flag("recursive")?,
        },
        method => {
            return Err(ApiError::MethodNotAllowed(format!(
                "method {method} is not allowed on /sandboxes/{{id}}/files (GET, PUT, DELETE)"
            )))
        }
    };
    let token = match request
        .header("x-sandbox-token")
        .filter(|token| !token.is_empty())
    {
        Some(token) => token.to_string(),
        None => param("sandbox_token")?.unwrap_or_default().to_string(),
    };
    Ok(FilesRequest {
        sandbox_id: sandbox_id.to_string(),
        token,
        operation,
    })
}

/// The HTTP status of a file error's code (docs/protocol.md).
pub fn status_of(code: &str) -> u16 {
    match code {
        "not_found" => 404,
        "is_a_directory" | "not_a_directory" | "already_exists" | "busy" | "attach_first" => 409,
        "permission_denied" => 403,
        "no_space" => 507,
        "path_too_long" => 414,
        "file_too_large" => 413,
        "invalid_path" => 400,
        _ => 500,
    }
}

/// A files request under way on a connection.
#[derive(Debug)]
pub struct FileJob {
    pub session: SessionId,
    pub sandbox: SandboxKey,
    pub exec: ExecId,
    /// What answers it: file bytes (a download), or the reply as JSON.
    download: bool,
    /// The request's body is still being streamed in.
    pub receiving: bool,
    keep_alive: bool,
    /// A download's head (chunked) was sent.
    head_sent: bool,
    /// The transfer's output is paused until the connection's buffer drains.
    pub output_paused: bool,
    pub since: Instant,
}

/// The same answer for an unknown sandbox and a wrong token: never a hint that it exists.
fn unknown_sandbox(sandbox_id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "no sandbox {sandbox_id} on this server instance (or a wrong sandbox token)"
    ))
}

/// Why a sandbox that is not live here (and named with its right token) takes no files
/// request: its files are in a checkpoint image, which only a restore (an attach) opens.
pub fn not_live_answer(sandbox_id: &str, stored: &StoredSandbox) -> ApiError {
    let why = match stored {
        StoredSandbox::Unknown => return unknown_sandbox(sandbox_id),
        StoredSandbox::Checkpointed => format!("sandbox {sandbox_id} is checkpointed"),
        StoredSandbox::Elsewhere(owner) => {
            format!("sandbox {sandbox_id} runs on another server instance ({owner})")
        }
    };
    ApiError::File(
        "attach_first".into(),
        format!("{why}: attach to it first (/attach/{sandbox_id}), then retry"),
    )
}

impl Server {
    /// Start a files request; `streamed`: its body follows (an upload).
    pub(super) fn start_files(
        &mut self,
        id: ConnectionId,
        request: FilesRequest,
        keep_alive: bool,
        streamed: bool,
    ) {
        // A refused upload's body is not read: the connection cannot go on after the answer.
        let keep_alive_if_refused = keep_alive && !streamed;
        let live = self
            .sessions
            .live_sandbox(&request.sandbox_id)
            .filter(|live| token::matches(live.token_sha256, &request.token))
            .map(|live| live.session);
        let Some(session_id) = live else {
            if self.sessions.live_sandbox(&request.sandbox_id).is_none() {
                // Not here: a checkpointed sandbox gets told to attach first (the store says,
                // on a worker thread; the connection waits as for the store's other answers).
                let asked = self.persistence.check_files_sandbox(
                    id,
                    &request.sandbox_id,
                    request.token.clone(),
                );
                if asked.is_some() {
                    if let Some(connection) = self.connections.http.get_mut(&id) {
                        connection.phase = Phase::Waiting {
                            since: Instant::now(),
                            keep_alive: keep_alive_if_refused,
                        };
                    }
                    return;
                }
            }
            let error = unknown_sandbox(&request.sandbox_id);
            return self.respond(id, &error.response(), keep_alive_if_refused, false);
        };
        let (message, download) = match request.operation {
            Operation::Download { path } => (FileMessage::Read { path }, true),
            Operation::List { path, depth } => (FileMessage::List { path, depth }, false),
            Operation::Upload { path, mode, body } => (
                FileMessage::Write {
                    path: Some(path),
                    mode,
                    append: false,
                    more: body.is_none(),
                    data: body.unwrap_or_default(),
                },
                false,
            ),
            Operation::Delete { path, recursive } => {
                (FileMessage::Remove { path, recursive }, false)
            }
        };
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        let Some(sandbox) = session.sandbox() else {
            let error = unknown_sandbox(&request.sandbox_id);
            return self.respond(id, &error.response(), keep_alive_if_refused, false);
        };
        let started = session.start_http_file(id.0, message, &mut Control(&mut self.runtime));
        match started {
            Ok(exec) => {
                if let Some(connection) = self.connections.http.get_mut(&id) {
                    connection.phase = Phase::File(Box::new(FileJob {
                        session: session_id,
                        sandbox,
                        exec,
                        download,
                        receiving: streamed,
                        keep_alive,
                        head_sent: false,
                        output_paused: false,
                        since: Instant::now(),
                    }));
                }
                if streamed {
                    self.feed_upload(id);
                }
            }
            Err(failure) => {
                let error = ApiError::File(failure.code, failure.message);
                self.respond(id, &error.response(), keep_alive_if_refused, false);
            }
        }
    }

    /// Pass streamed body pieces on while the upload's window has room; read the socket again
    /// when the parser has room.
    pub(super) fn feed_upload(&mut self, id: ConnectionId) {
        loop {
            let Some(connection) = self.connections.http.get_mut(&id) else {
                return;
            };
            let Phase::File(job) = &mut connection.phase else {
                return;
            };
            if !job.receiving {
                return;
            }
            let (session_id, exec) = (job.session, job.exec);
            let Some(session) = self.sessions.get_mut(session_id) else {
                return;
            };
            let pending = connection.parser.streamed_bytes().max(1);
            if !session.http_file_has_room(exec, pending) {
                return;
            }
            let fed = match connection.parser.poll() {
                Ok(crate::http::request::Progress::Body(piece)) => {
                    session.http_file_body(exec, &piece, false, &mut Control(&mut self.runtime))
                }
                Ok(crate::http::request::Progress::BodyEnd) => {
                    job.receiving = false;
                    session.http_file_body(exec, &[], true, &mut Control(&mut self.runtime))
                }
                Ok(crate::http::request::Progress::SendContinue) => {
                    connection
                        .out
                        .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    Ok(())
                }
                Ok(_) => {
                    // Nothing decoded: read more from the socket if it was left unread.
                    if !std::mem::take(&mut connection.read_paused) {
                        self.flush(id);
                        return;
                    }
                    match connection.read_available() {
                        Ok(super::connection::ReadOutcome::Open) => Ok(()),
                        Ok(super::connection::ReadOutcome::Closed) => {
                            return self.abandon_file_job(id)
                        }
                        Err(error) => {
                            self.abandon_file_job(id);
                            return self.respond(
                                id,
                                &ApiError::Http(error).response(),
                                false,
                                false,
                            );
                        }
                    }
                }
                Err(error) => {
                    self.abandon_file_job(id);
                    return self.respond(id, &ApiError::Http(error).response(), false, false);
                }
            };
            if let Err(failure) = fed {
                return self.end_file_job(id, Err(failure));
            }
        }
    }

    /// An event of the transfer of connection `connection`.
    pub(super) fn http_file_event(&mut self, connection: u64, exec: ExecId, event: HttpFileOut) {
        let id = ConnectionId(connection);
        let Some(http) = self.connections.http.get_mut(&id) else {
            return;
        };
        let Phase::File(job) = &mut http.phase else {
            return;
        };
        if job.exec != exec {
            return;
        }
        match event {
            HttpFileOut::Data(data) => {
                if !job.head_sent {
                    job.head_sent = true;
                    let head = ResponseHead::new(200)
                        .header("Content-Type", "application/octet-stream")
                        .header("Cache-Control", "no-store");
                    http.out
                        .extend_from_slice(&head.encode(None, job.keep_alive));
                }
                encode_chunk(&data, &mut http.out);
                if http.out.len() > OUT_HIGH_WATER && !job.output_paused {
                    job.output_paused = true;
                    self.runtime.set_exec_output_paused(job.sandbox, exec, true);
                }
                self.flush(id);
            }
            HttpFileOut::Room => self.feed_upload(id),
            HttpFileOut::Done(result) => self.end_file_job(id, result),
        }
    }

    /// Answer the request with how its transfer ended.
    fn end_file_job(&mut self, id: ConnectionId, result: Result<Map<String, Value>, FileFailure>) {
        let Some(connection) = self.connections.http.get_mut(&id) else {
            return;
        };
        let Some(job) = connection.phase.take_file_job(Phase::Reading) else {
            return;
        };
        if job.output_paused {
            self.runtime
                .set_exec_output_paused(job.sandbox, job.exec, false);
        }
        if job.receiving {
            // The body was not read to its end: the stream is out of step; close after.
            if let Some(session) = self.sessions.get_mut(job.session) {
                session.abandon_http_file(job.exec, &mut Control(&mut self.runtime));
            }
        }
        let keep_alive = job.keep_alive && !job.receiving;
        match (result, job.download, job.head_sent) {
            (Ok(_), true, true) => {
                connection.out.extend_from_slice(final_chunk());
                connection.phase = if keep_alive {
                    Phase::Reading
                } else {
                    Phase::Closing
                };
                *self.metrics.http_responses.entry(200).or_default() += 1;
            }
            (Ok(_), true, false) => {
                // An empty file.
                let response = Response::new(200, "application/octet-stream", Vec::new());
                self.respond(id, &response, keep_alive, false);
            }
            (Ok(keys), false, _) => self.respond(
                id,
                &Response::json(200, &Value::Object(keys)),
                keep_alive,
                false,
            ),
            (Err(_), true, true) => {
                // Cut short: without the final chunk the client knows the body is incomplete.
                connection.phase = Phase::Closing;
            }
            (Err(failure), _, _) => {
                let error = ApiError::File(failure.code, failure.message);
                self.respond(id, &error.response(), keep_alive, false);
            }
        }
        self.flush(id);
        self.process_requests(id);
    }

    /// The connection of a transfer under way goes away: the transfer is abandoned (an upload
    /// leaves no file, a download stops).
    pub(super) fn abandon_file_job(&mut self, id: ConnectionId) {
        let Some(connection) = self.connections.http.get_mut(&id) else {
            return;
        };
        let Some(job) = connection.phase.take_file_job(Phase::Closing) else {
            return;
        };
        if let Some(session) = self.sessions.get_mut(job.session) {
            session.abandon_http_file(job.exec, &mut Control(&mut self.runtime));
        }
        if job.output_paused {
            self.runtime
                .set_exec_output_paused(job.sandbox, job.exec, false);
        }
    }

    /// After a flush: a paused download goes on once the buffer drained.
    pub(super) fn resume_file_output(&mut self, id: ConnectionId) {
        let Some(connection) = self.connections.http.get_mut(&id) else {
            return;
        };
        if connection.out.len() >= OUT_LOW_WATER {
            return;
        }
        if let Phase::File(job) = &mut connection.phase {
            if std::mem::take(&mut job.output_paused) {
                self.runtime
                    .set_exec_output_paused(job.sandbox, job.exec, false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> Request {
        Request::for_test(method, target, headers, b"")
    }

    #[test]
    fn files_requests_are_checked() {
        assert_eq!(sandbox_of("/sandboxes/abc/files"), Some("abc"));
        assert_eq!(sandbox_of("/sandboxes//files"), None);
        assert_eq!(sandbox_of("/sandboxes/a/b/files"), None);
        let parsed = parse(
            &request(
                "GET",
                "/sandboxes/abc/files?path=%2Froot%2Fa&sandbox_token=t",
                &[],
            ),
            "abc",
        )
        .unwrap();
        assert_eq!(parsed.token, "t");
        assert_eq!(
            parsed.operation,
            Operation::Download {
                path: "/root/a".into()
            }
        );
        let parsed = parse(
            &request(
                "PUT",
                "/sandboxes/abc/files?path=a&mode=384",
                &[("x-sandbox-token", "h")],
            ),
            "abc",
        )
        .unwrap();
        assert_eq!(parsed.token, "h");
        assert_eq!(
            parsed.operation,
            Operation::Upload {
                path: "a".into(),
                mode: 384,
                body: None
            }
        );
        let list = parse(&request("GET", "/s?path=/&list=1&depth=3", &[]), "x").unwrap();
        assert_eq!(
            list.operation,
            Operation::List {
                path: "/".into(),
                depth: 3
            }
        );
        for (method, target, status) in [
            ("GET", "/s", 400),
            ("GET", "/s?path=a&list=maybe", 400),
            ("GET", "/s?path=a&list=1&depth=0", 400),
            ("PUT", "/s?path=a&mode=99999", 400),
            ("POST", "/s?path=a", 405),
            ("GET", "/s?path=a&path=b", 400),
        ] {
            let error = parse(&request(method, target, &[]), "x").unwrap_err();
            assert_eq!(error.status(), status, "{method} {target}: {error:?}");
        }
        assert_eq!(status_of("not_found"), 404);
        assert_eq!(status_of("no_space"), 507);
        assert_eq!(status_of("file_too_large"), 413);
        assert_eq!(status_of("path_too_long"), 414);
        assert_eq!(status_of("permission_denied"), 403);
        assert_eq!(status_of("is_a_directory"), 409);
    }
}
