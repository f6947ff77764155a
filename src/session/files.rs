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

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::file_messages::FileMessage;
use super::text::base64_encode;
use super::{Frame, Out, RequestId, SandboxControl, ServerEvent, Session, Status};
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

#[derive(Debug)]
struct Transfer {
    request: RequestId,
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
            .find(|(_, transfer)| &transfer.request == request)
            .map(|(exec, _)| *exec)
    }
}

fn append_bounded(buffer: &mut Vec<u8>, data: &[u8], bound: usize) {
    let room = bound.saturating_sub(buffer.len());
    buffer.extend_from_slice(&data[..data.len().min(room)]);
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
                return self.continue_write(exec, data, *more, out, control);
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
            out.extend(super::error_frames(
                Status::RequestError,
                &format!(
                    "request id {} is already used by a file transfer under way",
                    serde_json::to_string(id).unwrap_or_default()
                ),
                Some(id),
            ));
            return;
        }
        if self.files.by_exec.len() >= MAX_FILE_TRANSFERS {
            let message = format!(
                "this session already has {MAX_FILE_TRANSFERS} file operations under way; wait for one to end"
            );
            out.extend(file_error_frames("io", &message, Some(id)));
            return;
        }
        let (request, kind, first_chunk) = match message {
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
            FileMessage::List { path, depth } => {
                (FileRequest::List { path, depth }, Kind::Other, None)
            }
            FileMessage::Stat { path } => (FileRequest::Stat { path }, Kind::Other, None),
            FileMessage::Exists { path } => (FileRequest::Exists { path }, Kind::Other, None),
            FileMessage::MakeDir { path, parents } => {
                (FileRequest::MakeDir { path, parents }, Kind::Other, None)
            }
            FileMessage::Remove { path, recursive } => {
                (FileRequest::Remove { path, recursive }, Kind::Other, None)
            }
            FileMessage::Rename { from, to } => {
                (FileRequest::Rename { from, to }, Kind::Other, None)
            }
        };
        let Some(sandbox) = self.sandbox else { return };
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
        };
        let exec = match control.start_exec(sandbox, spec) {
            Ok(exec) => exec,
            Err(error) => {
                let message = format!("cannot start the file operation: {error}");
                out.extend(file_error_frames("io", &message, Some(id)));
                return;
            }
        };
        self.files.by_exec.insert(
            exec,
            Transfer {
                request: id.clone(),
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
        if let Some((data, more)) = first_chunk {
            out.push(Out::Send(Frame::answering(
                ServerEvent::File(FileEvent::Ack {
                    written: 0,
                    window: Some(window),
                }),
                Some(id),
            )));
            self.continue_write(exec, &data, more, out, control);
        }
    }

    /// A chunk of the write under way as `exec`.
    fn continue_write(
        &mut self,
        exec: ExecId,
        data: &[u8],
        more: bool,
        out: &mut Vec<Out>,
        control: &mut dyn SandboxControl,
    ) {
        let Some(sandbox) = self.sandbox else { return };
        let Some(transfer) = self.files.by_exec.get_mut(&exec) else {
            return;
        };
        let id = transfer.request.clone();
        let upload = &mut transfer.upload;
        if upload.finished {
            let message = "write_file: the transfer was already finished (more: false)";
            out.extend(file_error_frames("io", message, Some(&id)));
            return;
        }
        let in_flight = upload.received + data.len() as u64 - upload.consumed.min(upload.received);
        if in_flight > upload.window {
            // Past the window: the transfer is broken, end it without committing.
            let message = format!(
                "write_file: {in_flight} bytes not acknowledged, the window is {}",
                upload.window
            );
            upload.finished = true;
            let _ = control.close_stdin(sandbox, exec);
            out.extend(file_error_frames("io", &message, Some(&id)));
            return;
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
        if let Err(error) = sent {
            upload.finished = true;
            let _ = control.close_stdin(sandbox, exec);
            let message = format!("write_file: cannot pass the data on: {error}");
            out.extend(file_error_frames("io", &message, Some(&id)));
        }
    }

    /// The client went away: its writes end without committing (their temporary files are
    /// removed), its reads are stopped.
    pub fn abandon_file_transfers(&mut self, control: &mut dyn SandboxControl) {
        let Some(sandbox) = self.sandbox else { return };
        for (exec, transfer) in &mut self.files.by_exec {
            transfer.abandoned = true;
            match transfer.kind {
                Kind::Write if !transfer.upload.finished => {
                    transfer.upload.finished = true;
                    let _ = control.close_stdin(sandbox, *exec);
                }
                Kind::Read => {
                    let _ = control.kill_exec(sandbox, *exec);
                }
                _ => {}
            }
        }
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
                    Some(&transfer.request),
                )));
            }
        }
    }

    /// A runtime notice about `exec`, a file operation's.
    fn file_runtime(&mut self, exec: ExecId, event: FileNotice, out: &mut Vec<Out>) {
        let Some(transfer) = self.files.by_exec.get_mut(&exec) else {
            return;
        };
        match event {
            FileNotice::Output(Stream::Stdout, data) if transfer.kind == Kind::Read => {
                transfer.sent += data.len() as u64;
                if self.attached && !transfer.abandoned {
                    out.push(Out::Send(Frame::answering(
                        ServerEvent::File(FileEvent::Data(base64_encode(&data))),
                        Some(&transfer.request),
                    )));
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
            }
            FileNotice::SpawnFailed(message) => {
                let Some(transfer) = self.files.by_exec.remove(&exec) else {
                    return;
                };
                if self.attached && !transfer.abandoned {
                    let message = format!("cannot start the file operation: {message}");
                    out.extend(file_error_frames("io", &message, Some(&transfer.request)));
                }
            }
            FileNotice::Finished(outcome) => {
                self.flush_file_acks(out);
                let Some(transfer) = self.files.by_exec.remove(&exec) else {
                    return;
                };
                if self.attached && !transfer.abandoned {
                    finish(transfer, &outcome, out);
                }
            }
            FileNotice::Started => {}
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

/// The answer to a finished operation: its reply, or its error.
fn finish(transfer: Transfer, outcome: &ExecOutcome, out: &mut Vec<Out>) {
    let id = Some(&transfer.request);
    let exited = outcome.reason == Reason::Exited;
    if exited && outcome.exit_code() == 0 {
        let reply = match transfer.kind {
            Kind::Read => Ok(json!({ "size": transfer.sent })),
            Kind::Write | Kind::Other => serde_json::from_slice::<Value>(&transfer.reply),
        };
        if let Ok(Value::Object(keys)) = reply {
            out.push(Out::Send(Frame::answering(
                ServerEvent::File(FileEvent::Reply(keys)),
                id,
            )));
            return;
        }
        out.extend(file_error_frames(
            "io",
            "the file operation gave no answer the server understands",
            id,
        ));
        return;
    }
    let failure = match serde_json::from_slice::<FileFailure>(&transfer.failure) {
        Ok(failure) if exited => failure,
        _ => FileFailure {
            code: "io".into(),
            message: format!(
                "the file operation ended before its answer ({})",
                outcome.reason.as_str()
            ),
        },
    };
    out.extend(file_error_frames(&failure.code, &failure.message, id));
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
