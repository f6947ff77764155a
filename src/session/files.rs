//! The session's file transfers (issue 14, docs/protocol.md "Files"): each operation is one
//! execution of the agent's file helper (see `agent/src/files.rs`), which this table follows
//! apart from the session's processes (they are not listed, not replayed, not counted against
//! `SANDBOX_MAX_SESSION_PROCESSES`).
//!
//! - A read streams the helper's stdout as `file_data` events, then replies with the size. Its
//!   output comes under the runtime's per-execution window, so a reader that does not keep up
//!   holds back only this transfer (and the connection's high-water mark pauses the sandbox as
//!   for any output).
//! - A write feeds the client's chunks to the helper's stdin under a window, as stdin is
//!   (`file_ack` events as bytes land), then the commit trailer and the end of stdin on the
//!   last chunk; the helper renames the temporary file into place and says the size.
//! - Every other operation prints one JSON object: the reply's keys.
//! - A failure is the helper's JSON on stderr: `SANDBOX_FILE_ERROR` with its `code`.
//!
//! When the client goes away, its writes are abandoned by closing their stdin without the
//! trailer (the helper removes its temporary file) and its reads are killed.
//!
//! The same transfers serve the HTTP routes (`server/files_http.rs`): their answers go to an
//! HTTP connection as [`Out::HttpFile`] instead of frames.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::file_messages::FileMessage;
use super::text::base64_encode;
use super::{Frame, Out, RequestId, SandboxControl, ServerEvent, Session, State, Status};
use crate::agent_protocol::{
    file_commit_trailer, ExecId, FileFailure, FileRequest, Language, Stream,
    FILE_COMMIT_TRAILER_BYTES,
};
use crate::runtime::exec::{ExecOutcome, Reason};
use crate::runtime::ExecSpec;

/// File operations one session may have under way at once.
pub const MAX_FILE_TRANSFERS: usize = 16;

/// How long one operation may take, transfer included (a stalled client's write ends there).
pub const FILE_OPERATION_TIMEOUT: Duration = Duration::from_secs(3600);

/// Bytes of a reply (a listing of 10000 entries fits) and of a failure kept from the helper.
const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;
const MAX_FAILURE_BYTES: usize = 64 * 1024;

/// A file event to a client; its frame carries the request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileEvent {
    /// `{"event":"file_data","data":"<base64>"}`: a chunk of a read.
    Data(String),
    /// `{"event":"file_ack","written":N}` (the first one of a write also gives its `window`).
    Ack { written: u64, window: Option<u64> },
    /// `{"event":"reply", ...keys}`.
    Reply(Map<String, Value>),
    /// `SANDBOX_FILE_ERROR` with `message` and `code`.
    FailedStatus { code: String, message: String },
    /// The `error` event after it, with the same `message` and `code`.
    Failed { code: String, message: String },
}

impl FileEvent {
    pub fn to_value(&self, id: Option<&RequestId>) -> Value {
        let mut map = Map::new();
        if let Some(id) = id {
            map.insert("id".into(), json!(id));
        }
        let event = match self {
            FileEvent::Data(data) => {
                map.insert("data".into(), json!(data));
                "file_data"
            }
            FileEvent::Ack { written, window } => {
                map.insert("written".into(), json!(written));
                if let Some(window) = window {
                    map.insert("window".into(), json!(window));
                }
                "file_ack"
            }
            FileEvent::Reply(keys) => {
                map.extend(keys.clone());
                "reply"
            }
            FileEvent::FailedStatus { code, message } => {
                map.insert("status".into(), json!(Status::FileError.as_str()));
                map.insert("code".into(), json!(code));
                map.insert("message".into(), json!(message));
                "status_update"
            }
            FileEvent::Failed { code, message } => {
                map.insert("code".into(), json!(code));
                map.insert("message".into(), json!(message));
                "error"
            }
        };
        map.insert("event".into(), json!(event));
        Value::Object(map)
    }
}

/// Both frames of a file error.
pub fn file_error_frames(code: &str, message: &str, id: Option<&RequestId>) -> [Out; 2] {
    let (code, message) = (code.to_string(), message.to_string());
    [
        Out::Send(Frame::answering(
            ServerEvent::File(FileEvent::FailedStatus {
                code: code.clone(),
                message: message.clone(),
            }),
            id,
        )),
        Out::Send(Frame::answering(
            ServerEvent::File(FileEvent::Failed { code, message }),
            id,
        )),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    /// Anything answered with one JSON object.
    Other,
}

/// Where a transfer's answers go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// The session's WebSocket client, as frames echoing the request id.
    Client(RequestId),
    /// An HTTP connection (by its id), as [`Out::HttpFile`].
    Http(u64),
}

/// What an HTTP connection hears of its transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpFileOut {
    /// A piece of the file being read.
    Data(Vec<u8>),
    /// Bytes of the upload were written: there may be room in its window again.
    Room,
    /// The end: the reply's keys, or why it failed.
    Done(Result<Map<String, Value>, FileFailure>),
}

/// Where a write stands.
#[derive(Debug, Default)]
struct Upload {
    window: u64,
    /// Data bytes accepted from the client.
    received: u64,
    /// Bytes the helper consumed (the trailer included, at the end).
    consumed: u64,
    acknowledged: u64,
    /// The last chunk came: the trailer was sent and stdin closed.
    finished: bool,
}

impl Upload {
    /// Bytes accepted and not yet written.
    fn in_flight(&self) -> u64 {
        self.received - self.consumed.min(self.received)
    }
}

#[derive(Debug)]
struct Transfer {
    sink: Sink,
    kind: Kind,
    /// A read's bytes sent so far.
    sent: u64,
    reply: Vec<u8>,
    failure: Vec<u8>,
    upload: Upload,
    /// Its client went away: nobody is told how it ends (a new client has its own ids).
    abandoned: bool,
}

/// The file operations under way, by the execution of their helper.
#[derive(Debug, Default)]
pub struct FileTransfers {
    by_exec: BTreeMap<ExecId, Transfer>,
}

impl FileTransfers {
    pub fn is_empty(&self) -> bool {
        self.by_exec.is_empty()
    }

    fn of_request(&self, request: &RequestId) -> Option<ExecId> {
        self.by_exec
            .iter()
            .find(|(_, transfer)| transfer.sink == Sink::Client(request.clone()))
            .map(|(exec, _)| *exec)
    }
}

fn append_bounded(buffer: &mut Vec<u8>, data: &[u8], bound: usize) {
    let room = bound.saturating_sub(buffer.len());
    buffer.extend_from_slice(&data[..data.len().min(room)]);
}

fn failure(code: &str, message: impl Into<String>) -> FileFailure {
    FileFailure {
        code: code.to_string(),
        message: message.into(),
    }
}

/// The helper's request for `message`, and the first chunk of a write.
fn helper_request(message: FileMessage) -> (FileRequest, Kind, Option<(Vec<u8>, bool)>) {
    match message {
        FileMessage::Read { path } => (FileRequest::Read { path }, Kind::Read, None),
        FileMessage::Write {
            path,
            mode,
            append,
            data,
            more,
        } => (
            FileRequest::Write {
                path: path.unwrap_or_default(),
                mode,
                append,
            },
            Kind::Write,
            Some((data, more)),
        ),
        FileMessage::List { path, depth } => (FileRequest::List { path, depth }, Kind::Other, None),
        FileMessage::Stat { path } => (FileRequest::Stat { path }, Kind::Other, None),
        FileMessage::Exists { path } => (FileRequest::Exists { path }, Kind::Other, None),
        FileMessage::MakeDir { path, parents } => {
            (FileRequest::MakeDir { path, parents }, Kind::Other, None)
        }
        FileMessage::Remove { path, recursive } => {
            (FileRequest::Remove { path, recursive }, Kind::Other, None)
        }
        FileMessage::Rename { from, to } => (FileRequest::Rename { from, to }, Kind::Other, None),
    }
}

impl Session {
    /// A file action from the client (with its request id).
    pub(super) fn file_message(
        &mut self,
        message: FileMessage,
        id: Option<&RequestId>,
        out: &mut Vec<Out>,
        control: &mut dyn SandboxControl,
    ) {
        let Some(id) = id else {
            out.extend(super::error_frames(
                Status::RequestError,
                "file actions need an \"id\": their answers are paired by it",
                None,
            ));
            return;
        };
        if let FileMessage::Write {
            data, more, path, ..
        } = &message
        {
            if let Some(exec) = self.files.of_request(id) {
                if let Err(failed) = self.feed(exec, data, *more, control) {
                    out.extend(file_error_frames(&failed.code, &failed.message, Some(id)));
                }
                return;
            }
            if path.is_none() {
                out.extend(file_error_frames(
                    "invalid_path",
                    "write_file: the first chunk of a transfer needs a \"path\"",
                    Some(id),
                ));
                return;
            }
        } else if self.files.of_request(id).is_some() {
            let text = format!(
                "request id {} is already used by a file transfer under way",
                serde_json::to_string(id).unwrap_or_default()
            );
            out.extend(super::error_frames(Status::RequestError, &text, Some(id)));
            return;
        }
        let (request, kind, first_chunk) = helper_request(message);
        let exec = match self.begin(Sink::Client(id.clone()), request, kind, control) {
            Ok(exec) => exec,
            Err(failed) => {
                out.extend(file_error_frames(&failed.code, &failed.message, Some(id)));
                return;
            }
        };
        if let Some((data, more)) = first_chunk {
            out.push(Out::Send(Frame::answering(
                ServerEvent::File(FileEvent::Ack {
                    written: 0,
                    window: Some(self.settings.stdin_window_bytes),
                }),
                Some(id),
            )));
            if let Err(failed) = self.feed(exec, &data, more, control) {
                out.extend(file_error_frames(&failed.code, &failed.message, Some(id)));
            }
        }
    }

    /// Starts the helper for `request`; its execution.
    fn begin(
        &mut self,
        sink: Sink,
        request: FileRequest,
        kind: Kind,
        control: &mut dyn SandboxControl,
    ) -> Result<ExecId, FileFailure> {
        if self.files.by_exec.len() >= MAX_FILE_TRANSFERS {
            return Err(failure(
                "io",
                format!(
                    "this session already has {MAX_FILE_TRANSFERS} file operations under way; wait for one to end"
                ),
            ));
        }
        let Some(sandbox) = self.sandbox else {
            return Err(failure("io", "the session has no sandbox"));
        };
        let window = self.settings.stdin_window_bytes;
        let spec = ExecSpec {
            language: Language::Bash,
            code: String::new(),
            env: Vec::new(),
            cwd: super::file_messages::HOME.to_string(),
            timeout: FILE_OPERATION_TIMEOUT,
            // The client keeps to its window; the trailer comes on top.
            stdin_bound: window.saturating_add(FILE_COMMIT_TRAILER_BYTES as u64),
            file: Some(request),
            pty: None,
            cell: None,
        };
        let exec = control
            .start_exec(sandbox, spec)
            .map_err(|error| failure("io", format!("cannot start the file operation: {error}")))?;
        self.files.by_exec.insert(
            exec,
            Transfer {
                sink,
                kind,
                sent: 0,
                reply: Vec::new(),
                failure: Vec::new(),
                abandoned: false,
                upload: Upload {
                    window,
                    ..Upload::default()
                },
            },
        );
        Ok(exec)
    }

    /// A chunk of the write under way as `exec`; the last one (`more: false`) commits it.
    fn feed(
        &mut self,
        exec: ExecId,
        data: &[u8],
        more: bool,
        control: &mut dyn SandboxControl,
    ) -> Result<(), FileFailure> {
        let (Some(sandbox), Some(transfer)) = (self.sandbox, self.files.by_exec.get_mut(&exec))
        else {
            return Err(failure("io", "the transfer is over"));
        };
        let upload = &mut transfer.upload;
        if upload.finished {
            return Err(failure(
                "io",
                "write_file: the transfer was already finished (more: false)",
            ));
        }
        let in_flight = upload.in_flight() + data.len() as u64;
        if in_flight > upload.window {
            // Past the window: the transfer is broken, end it without committing.
            upload.finished = true;
            let _ = control.close_stdin(sandbox, exec);
            return Err(failure(
                "io",
                format!(
                    "write_file: {in_flight} bytes not acknowledged, the window is {}",
                    upload.window
                ),
            ));
        }
        upload.received += data.len() as u64;
        let mut sent = if data.is_empty() {
            Ok(())
        } else {
            control.write_stdin(sandbox, exec, data)
        };
        if !more && sent.is_ok() {
            upload.finished = true;
            sent = control
                .write_stdin(sandbox, exec, &file_commit_trailer(upload.received))
                .and_then(|()| control.close_stdin(sandbox, exec));
        }
        sent.map_err(|error| {
            upload.finished = true;
            let _ = control.close_stdin(sandbox, exec);
            failure(
                "io",
                format!("write_file: cannot pass the data on: {error}"),
            )
        })
    }

    /// The client went away: its writes end without committing (their temporary files are
    /// removed), its reads are stopped. HTTP transfers go on.
    pub fn abandon_file_transfers(&mut self, control: &mut dyn SandboxControl) {
        let execs: Vec<ExecId> = self
            .files
            .by_exec
            .iter()
            .filter(|(_, transfer)| matches!(transfer.sink, Sink::Client(_)))
            .map(|(exec, _)| *exec)
            .collect();
        for exec in execs {
            self.abandon(exec, control);
        }
    }

    fn abandon(&mut self, exec: ExecId, control: &mut dyn SandboxControl) {
        let (Some(sandbox), Some(transfer)) = (self.sandbox, self.files.by_exec.get_mut(&exec))
        else {
            return;
        };
        transfer.abandoned = true;
        match transfer.kind {
            Kind::Write if !transfer.upload.finished => {
                transfer.upload.finished = true;
                let _ = control.close_stdin(sandbox, exec);
            }
            Kind::Read => {
                let _ = control.kill_exec(sandbox, exec);
            }
            _ => {}
        }
    }

    /// An HTTP request's file operation: its execution, whose events come back as
    /// [`Out::HttpFile`] for `connection`. A write's body follows with
    /// [`Session::http_file_body`].
    pub fn start_http_file(
        &mut self,
        connection: u64,
        message: FileMessage,
        control: &mut dyn SandboxControl,
    ) -> Result<ExecId, FileFailure> {
        if self.state != State::Running {
            return Err(failure(
                "busy",
                "the sandbox is not running here now (being created, saved or deleted)",
            ));
        }
        let (request, kind, first_chunk) = helper_request(message);
        let exec = self.begin(Sink::Http(connection), request, kind, control)?;
        if let Some((data, false)) = first_chunk {
            // The whole body is there already.
            self.feed(exec, &data, false, control)?;
        }
        Ok(exec)
    }

    /// A piece of an HTTP upload's body (`end`: the body is complete).
    pub fn http_file_body(
        &mut self,
        exec: ExecId,
        data: &[u8],
        end: bool,
        control: &mut dyn SandboxControl,
    ) -> Result<(), FileFailure> {
        self.feed(exec, data, !end, control)
    }

    /// Whether an HTTP upload may take `bytes` more now.
    pub fn http_file_has_room(&self, exec: ExecId, bytes: usize) -> bool {
        self.files.by_exec.get(&exec).is_some_and(|transfer| {
            transfer.upload.in_flight() + bytes as u64 <= transfer.upload.window
        })
    }

    /// The HTTP client of `exec` went away.
    pub fn abandon_http_file(&mut self, exec: ExecId, control: &mut dyn SandboxControl) {
        self.abandon(exec, control);
    }

    /// Whether file operations are under way (a checkpoint waits for them).
    pub(super) fn has_file_transfers(&self) -> bool {
        !self.files.is_empty()
    }

    /// The acknowledgements due to writers; called once per batch of notices.
    pub(super) fn flush_file_acks(&mut self, out: &mut Vec<Out>) {
        if !self.attached {
            return;
        }
        for transfer in self.files.by_exec.values_mut() {
            let Sink::Client(id) = &transfer.sink else {
                continue;
            };
            let upload = &mut transfer.upload;
            let written = upload.consumed.min(upload.received);
            if transfer.kind == Kind::Write && !transfer.abandoned && written > upload.acknowledged
            {
                upload.acknowledged = written;
                out.push(Out::Send(Frame::answering(
                    ServerEvent::File(FileEvent::Ack {
                        written,
                        window: None,
                    }),
                    Some(id),
                )));
            }
        }
    }

    /// A runtime notice about `exec`, a file operation's.
    fn file_runtime(&mut self, exec: ExecId, event: FileNotice, out: &mut Vec<Out>) {
        let attached = self.attached;
        let Some(transfer) = self.files.by_exec.get_mut(&exec) else {
            return;
        };
        let silent = transfer.abandoned || (matches!(transfer.sink, Sink::Client(_)) && !attached);
        match event {
            FileNotice::Output(Stream::Stdout, data) if transfer.kind == Kind::Read => {
                transfer.sent += data.len() as u64;
                match &transfer.sink {
                    _ if silent => {}
                    Sink::Client(id) => out.push(Out::Send(Frame::answering(
                        ServerEvent::File(FileEvent::Data(base64_encode(&data))),
                        Some(id),
                    ))),
                    Sink::Http(connection) => out.push(Out::HttpFile {
                        connection: *connection,
                        exec,
                        event: HttpFileOut::Data(data),
                    }),
                }
            }
            FileNotice::Output(Stream::Stdout, data) => {
                append_bounded(&mut transfer.reply, &data, MAX_REPLY_BYTES)
            }
            FileNotice::Output(Stream::Stderr, data) => {
                append_bounded(&mut transfer.failure, &data, MAX_FAILURE_BYTES)
            }
            FileNotice::StdinWritten(count) => {
                transfer.upload.consumed += u64::from(count);
                if let (Sink::Http(connection), false) = (&transfer.sink, silent) {
                    out.push(Out::HttpFile {
                        connection: *connection,
                        exec,
                        event: HttpFileOut::Room,
                    });
                }
            }
            FileNotice::SpawnFailed(message) => {
                let failed = failure("io", format!("cannot start the file operation: {message}"));
                self.end_transfer(exec, Err(failed), out);
            }
            FileNotice::Finished(outcome) => {
                self.flush_file_acks(out);
                let result = self
                    .files
                    .by_exec
                    .get(&exec)
                    .map(|transfer| result_of(transfer, &outcome));
                if let Some(result) = result {
                    self.end_transfer(exec, result, out);
                }
            }
            FileNotice::Started => {}
        }
    }

    /// Forget `exec`'s transfer and tell its client how it ended.
    fn end_transfer(
        &mut self,
        exec: ExecId,
        result: Result<Map<String, Value>, FileFailure>,
        out: &mut Vec<Out>,
    ) {
        let Some(transfer) = self.files.by_exec.remove(&exec) else {
            return;
        };
        if transfer.abandoned {
            return;
        }
        match transfer.sink {
            Sink::Client(id) if self.attached => match result {
                Ok(keys) => out.push(Out::Send(Frame::answering(
                    ServerEvent::File(FileEvent::Reply(keys)),
                    Some(&id),
                ))),
                Err(failed) => {
                    out.extend(file_error_frames(&failed.code, &failed.message, Some(&id)))
                }
            },
            Sink::Client(_) => {}
            Sink::Http(connection) => out.push(Out::HttpFile {
                connection,
                exec,
                event: HttpFileOut::Done(result),
            }),
        }
    }
}

/// The runtime notices a file operation gets.
#[derive(Debug)]
pub(super) enum FileNotice {
    Started,
    SpawnFailed(String),
    Output(Stream, Vec<u8>),
    StdinWritten(u32),
    Finished(ExecOutcome),
}

/// How a finished operation ended: its reply's keys, or its failure.
fn result_of(
    transfer: &Transfer,
    outcome: &ExecOutcome,
) -> Result<Map<String, Value>, FileFailure> {
    let exited = outcome.reason == Reason::Exited;
    if exited && outcome.exit_code() == 0 {
        let reply = match transfer.kind {
            Kind::Read => Ok(json!({ "size": transfer.sent })),
            Kind::Write | Kind::Other => serde_json::from_slice::<Value>(&transfer.reply),
        };
        return match reply {
            Ok(Value::Object(keys)) => Ok(keys),
            _ => Err(failure(
                "io",
                "the file operation gave no answer the server understands",
            )),
        };
    }
    match serde_json::from_slice::<FileFailure>(&transfer.failure) {
        Ok(failed) if exited => Err(failed),
        _ => Err(failure(
            "io",
            format!(
                "the file operation ended before its answer ({})",
                outcome.reason.as_str()
            ),
        )),
    }
}

impl Session {
    /// Hands the notice to the file operation it is about; what is not about one comes back.
    pub(super) fn route_file_notice(
        &mut self,
        event: crate::runtime::RuntimeEvent,
        out: &mut Vec<Out>,
    ) -> Option<crate::runtime::RuntimeEvent> {
        use crate::runtime::RuntimeEvent as E;
        let (exec, notice) = match event {
            E::ExecStarted(exec) if self.files.by_exec.contains_key(&exec) => {
                (exec, FileNotice::Started)
            }
            E::ExecSpawnFailed(exec, message) if self.files.by_exec.contains_key(&exec) => {
                (exec, FileNotice::SpawnFailed(message))
            }
            E::Output(exec, stream, data) if self.files.by_exec.contains_key(&exec) => {
                (exec, FileNotice::Output(stream, data))
            }
            E::StdinWritten(exec, count) if self.files.by_exec.contains_key(&exec) => {
                (exec, FileNotice::StdinWritten(count))
            }
            E::ExecFinished(exec, outcome) if self.files.by_exec.contains_key(&exec) => {
                (exec, FileNotice::Finished(outcome))
            }
            other => return Some(other),
        };
        self.file_runtime(exec, notice, out);
        None
    }
}
