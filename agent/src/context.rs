//! Code contexts (issue 13): long-lived Python processes that run code cells in one namespace,
//! as a notebook kernel does, so that no process is started per cell.
//!
//! A context is the driver script (`context_driver.py`) in its own process group with the
//! sandbox's limits and `MPLBACKEND=Agg`. Besides stdout and stderr (the running cell's
//! output, streamed like an execution's), it has two private pipes: cells go in on its fd 3,
//! events come out on its fd 4 (`u32 LE length | u8 type | payload`: an event as JSON, or the
//! end of the cell). While a cell runs, the context's output and events are that cell's,
//! under the cell's execution id and output window; between cells what it writes is read and
//! dropped, so that a background thread cannot block it.
//!
//! An interrupt is SIGINT to the driver (KeyboardInterrupt in the cell, the state is kept);
//! a context that does not end its cell within [`INTERRUPT_GRACE`] after it is killed. A
//! context whose process died says why until it is deleted (restart = delete + create).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::agent_loop::OUTBOX_HIGH_WATER;
use crate::execution::{prepare_command, Execution, PipeRead, SpawnError};
use crate::pipes::set_nonblocking;
use crate::protocol::{AgentConfig, CellRequest, ContextInfo, ExecId, ExitStatus, FromAgent};

const DRIVER: &str = include_str!("context_driver.py");

/// How long an interrupted cell has to end before its context is killed.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(2);

/// The driver's message types on its events pipe.
const EVENT: u8 = 1;
const DONE: u8 = 2;

/// The error event of a cell whose context died under it (the JSON the driver would send).
fn context_died_event(why: &str) -> Vec<u8> {
    let event = serde_json::json!({
        "type": "error",
        "name": "ContextDied",
        "value": format!("the code context died ({why})"),
        "traceback": [],
    });
    event.to_string().into_bytes()
}

/// How a process ended, in words.
pub fn describe_exit(status: ExitStatus) -> String {
    match status {
        ExitStatus::Code(code) => format!("exit code {code}"),
        ExitStatus::Signal(signal) => format!("signal {signal}"),
    }
}

/// What a piece of the events pipe turned out to be.
#[derive(Debug, PartialEq, Eq)]
enum Piece {
    /// Part of an event's JSON; `true` on its last part.
    EventPart(Vec<u8>, bool),
    /// The cell ended (exit code 0, or 1 after an error).
    Done(i32),
}

/// Splits the driver's byte stream into messages without holding a whole one: an event is
/// passed on in parts as it arrives (results can be megabytes).
#[derive(Debug, Default)]
struct EventParser {
    header: Vec<u8>,
    /// The message being read: its type and the payload bytes still to come.
    current: Option<(u8, usize)>,
}

impl EventParser {
    fn push(&mut self, mut bytes: &[u8], pieces: &mut Vec<Piece>) {
        while !bytes.is_empty() || matches!(self.current, Some((_, 0))) {
            match self.current {
                None => {
                    let take = (5 - self.header.len()).min(bytes.len());
                    self.header.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.header.len() == 5 {
                        let length = u32::from_le_bytes([
                            self.header[0],
                            self.header[1],
                            self.header[2],
                            self.header[3],
                        ]) as usize;
                        self.current = Some((self.header[4], length.saturating_sub(1)));
                        self.header.clear();
                    }
                }
                Some((kind, remaining)) => {
                    let take = remaining.min(bytes.len());
                    let (payload, rest) = bytes.split_at(take);
                    bytes = rest;
                    let left = remaining - take;
                    self.current = (left > 0).then_some((kind, left));
                    match kind {
                        EVENT => pieces.push(Piece::EventPart(payload.to_vec(), left == 0)),
                        DONE if left == 0 => {
                            let code = payload.last().map_or(1, |byte| i32::from(*byte != 0));
                            pieces.push(Piece::Done(code));
                        }
                        // A message of another type, or a DONE in parts: only its end counts.
                        _ => {}
                    }
                }
            }
        }
    }

    /// An event was being passed on when the context died.
    fn in_event(&self) -> bool {
        matches!(self.current, Some((EVENT, _)))
    }
}

/// The cell a context runs.
#[derive(Debug)]
struct Cell {
    id: ExecId,
    /// The driver said the cell ended, with this exit code; its output is still drained.
    done: Option<i32>,
    /// Interrupted: killed if not done by then.
    kill_at: Option<Instant>,
}

pub struct Context {
    pub info: ContextInfo,
    /// `None` if it could not be started (`info.died` says why).
    process: Option<Execution>,
    cells_in: Option<File>,
    code_pending: Vec<u8>,
    events: Option<File>,
    parser: EventParser,
    cell: Option<Cell>,
    cells_run: u64,
    /// Being deleted: it goes once its process is gone and its cell ended.
    pub deleting: bool,
}

impl Context {
    /// Start the context's process; a failure gives a dead context that says why.
    pub fn start(context_id: &str, cwd: &str, config: &AgentConfig) -> Context {
        let mut context = Context {
            info: ContextInfo {
                context_id: context_id.to_string(),
                cwd: cwd.to_string(),
                died: None,
            },
            process: None,
            cells_in: None,
            code_pending: Vec::new(),
            events: None,
            parser: EventParser::default(),
            cell: None,
            cells_run: 0,
            deleting: false,
        };
        if let Err(error) = context.spawn(config) {
            context.info.died = Some(format!("cannot start: {error}"));
        }
        context
    }

    fn spawn(&mut self, config: &AgentConfig) -> Result<(), SpawnError> {
        let cwd_is_dir = std::fs::metadata(&self.info.cwd)
            .map(|meta| meta.is_dir())
            .unwrap_or(false);
        if !cwd_is_dir {
            return Err(SpawnError::NoSuchDirectory(self.info.cwd.clone()));
        }
        let (cells_reader, cells_writer) = io::pipe().map_err(SpawnError::Pipe)?;
        let (events_reader, events_writer) = io::pipe().map_err(SpawnError::Pipe)?;
        // The child's ends are placed on fds 3 then 4: the second must not be 3, which the
        // first placement replaces. The agent holds fds 3 and up for its whole life (its
        // signal socket, its pipes to the server), so a new pipe never gets 3; checked anyway.
        if events_writer.as_raw_fd() == 3 {
            return Err(SpawnError::Pipe(io::Error::other(
                "the events pipe got descriptor 3",
            )));
        }
        let mut command = Command::new("/usr/bin/python3");
        command.arg("-u").arg("-c").arg(DRIVER);
        prepare_command(&mut command, config, &config.limits);
        command.env("MPLBACKEND", "Agg").current_dir(&self.info.cwd);
        sandbox_ffi::pass_fd_to_child(&mut command, cells_reader.as_raw_fd(), 3);
        sandbox_ffi::pass_fd_to_child(&mut command, events_writer.as_raw_fd(), 4);
        let mut process = Execution::from_command(ExecId(0), command)?;
        drop((cells_reader, events_writer));
        // Cells do not read stdin (input() sees its end).
        process.close_stdin_when_flushed();
        let cells_in = File::from(OwnedFd::from(cells_writer));
        let events = File::from(OwnedFd::from(events_reader));
        set_nonblocking(cells_in.as_fd()).map_err(SpawnError::ConfigurePipes)?;
        set_nonblocking(events.as_fd()).map_err(SpawnError::ConfigurePipes)?;
        self.process = Some(process);
        self.cells_in = Some(cells_in);
        self.events = Some(events);
        Ok(())
    }

    pub fn pid(&self) -> Option<Pid> {
        self.process.as_ref().map(Execution::pid)
    }

    /// The execution id of the cell it runs.
    pub fn cell(&self) -> Option<ExecId> {
        self.cell.as_ref().map(|cell| cell.id)
    }

    /// Hand it a cell; refused if it is dead or busy.
    pub fn run_cell(&mut self, id: ExecId, request: &CellRequest) -> Result<(), String> {
        if let Some(why) = &self.info.died {
            return Err(format!(
                "context {} died ({why}); restart it",
                self.info.context_id
            ));
        }
        if let Some(cell) = &self.cell {
            return Err(format!(
                "context {} is running cell {}",
                self.info.context_id, cell.id
            ));
        }
        let Some(process) = self.process.as_mut() else {
            return Err(format!("context {} has no process", self.info.context_id));
        };
        self.cells_run += 1;
        let message = serde_json::json!({
            "code": request.code,
            "cell": self.cells_run,
            "max_result_bytes": request.max_result_bytes,
        })
        .to_string();
        let length = u32::try_from(message.len()).map_err(|_| "the cell is too large")?;
        self.code_pending.extend_from_slice(&length.to_le_bytes());
        self.code_pending.extend_from_slice(message.as_bytes());
        process.set_id(id);
        process.reset_window();
        self.cell = Some(Cell {
            id,
            done: None,
            kill_at: None,
        });
        self.write_code();
        Ok(())
    }

    pub fn code_fd_if_pending(&self) -> Option<BorrowedFd<'_>> {
        if self.code_pending.is_empty() {
            return None;
        }
        self.cells_in.as_ref().map(|pipe| pipe.as_fd())
    }

    /// Write what the cells pipe takes now (the driver reads it while idle).
    pub fn write_code(&mut self) {
        let Some(pipe) = self.cells_in.as_mut() else {
            self.code_pending.clear();
            return;
        };
        let mut written = 0;
        while written < self.code_pending.len() {
            match pipe.write(&self.code_pending[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    // The driver is gone: its death ends the cell.
                    written = self.code_pending.len();
                }
            }
        }
        self.code_pending.drain(..written);
    }

    /// Whether its output and events may be read now.
    pub fn window_open(&self) -> bool {
        self.process
            .as_ref()
            .is_some_and(Execution::output_window_open)
    }

    pub fn stdout_fd(&self) -> Option<BorrowedFd<'_>> {
        self.process.as_ref().and_then(Execution::stdout_fd)
    }

    pub fn stderr_fd(&self) -> Option<BorrowedFd<'_>> {
        self.process.as_ref().and_then(Execution::stderr_fd)
    }

    pub fn events_fd(&self) -> Option<BorrowedFd<'_>> {
        self.events.as_ref().map(|pipe| pipe.as_fd())
    }

    /// Its stdout or stderr polled readable: the running cell's output, or dropped between
    /// cells.
    pub fn read_output(&mut self, which: PipeRead, outbox: &mut Vec<u8>, scratch: &mut [u8]) {
        let idle = self.cell.is_none();
        let Some(process) = self.process.as_mut() else {
            return;
        };
        if idle {
            let mut dropped = Vec::new();
            process.read_output(which, &mut dropped, scratch);
            process.reset_window();
        } else {
            process.read_output(which, outbox, scratch);
        }
    }

    /// Its events pipe polled readable: the running cell's events go out as `CellEvent`
    /// parts, under the cell's output window.
    pub fn read_events(&mut self, outbox: &mut Vec<u8>, scratch: &mut [u8]) {
        let mut pieces = Vec::new();
        loop {
            let Some(process) = self.process.as_mut() else {
                return;
            };
            let room = process.window_room();
            if room == 0 || outbox.len() >= OUTBOX_HIGH_WATER {
                break;
            }
            let Some(pipe) = self.events.as_mut() else {
                break;
            };
            let room = room.min(scratch.len());
            match pipe.read(&mut scratch[..room]) {
                Ok(0) => {
                    self.events = None;
                    break;
                }
                Ok(n) => {
                    process.spend_window(n);
                    self.parser.push(&scratch[..n], &mut pieces);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.events = None;
                    break;
                }
            }
            self.pass_on(&mut pieces, outbox, scratch);
        }
        self.pass_on(&mut pieces, outbox, scratch);
    }

    fn pass_on(&mut self, pieces: &mut Vec<Piece>, outbox: &mut Vec<u8>, scratch: &mut [u8]) {
        for piece in pieces.drain(..) {
            let Some(cell) = self.cell.as_mut() else {
                // Between cells nothing is expected: dropped, and the window given back.
                if let Some(process) = self.process.as_mut() {
                    process.reset_window();
                }
                continue;
            };
            match piece {
                Piece::EventPart(data, last) => {
                    // What the stream had before this event goes first (a print before a
                    // display()); best effort, within the window.
                    if let Some(process) = self.process.as_mut() {
                        for which in [PipeRead::Stdout, PipeRead::Stderr] {
                            process.read_output(which, outbox, scratch);
                        }
                    }
                    FromAgent::CellEvent(cell.id, data, last).encode(outbox);
                }
                Piece::Done(code) => cell.done = Some(code),
            }
        }
    }

    /// Interrupt the running cell: SIGINT to the driver (not its group: a child process
    /// gets its KeyboardInterrupt-driven cleanup from the cell's code), killed if the cell
    /// has not ended within [`INTERRUPT_GRACE`].
    pub fn interrupt(&mut self, now: Instant) {
        let pid = self.pid();
        let (Some(cell), Some(pid)) = (self.cell.as_mut(), pid) else {
            return;
        };
        let _ = kill(pid, Signal::SIGINT);
        cell.kill_at.get_or_insert(now + INTERRUPT_GRACE);
    }

    /// End its process group.
    pub fn kill(&self) {
        if let Some(process) = &self.process {
            if self.info.died.is_none() {
                process.signal_group(Signal::SIGKILL as i32);
            }
        }
    }

    /// The next moment it must be looked at (an interrupted cell's grace ends).
    pub fn deadline(&self) -> Option<Instant> {
        self.cell.as_ref().and_then(|cell| cell.kill_at)
    }

    /// Its process was reaped.
    pub fn on_exit(&mut self, status: ExitStatus) {
        self.info.died.get_or_insert(describe_exit(status));
        if let Some(process) = self.process.as_mut() {
            process.set_exited(status);
        }
        self.cells_in = None;
        self.code_pending.clear();
    }

    /// The cell's end, once everything it wrote went out: its execution id and exit code.
    pub fn finish_cell(
        &mut self,
        outbox: &mut Vec<u8>,
        scratch: &mut [u8],
        now: Instant,
    ) -> Option<(ExecId, i32)> {
        let cell = self.cell.as_ref()?;
        if cell.done.is_none() && self.info.died.is_none() {
            if cell.kill_at.is_some_and(|at| now >= at) {
                self.kill();
            }
            return None;
        }
        if outbox.len() >= OUTBOX_HIGH_WATER {
            return None;
        }
        let id = cell.id;
        let code = match (&self.info.died, cell.done) {
            (None, Some(code)) => {
                let drained = self
                    .process
                    .as_mut()
                    .is_none_or(|process| process.drain_available(outbox, scratch));
                if !drained {
                    return None;
                }
                code
            }
            (Some(why), _) => {
                if let Some(process) = self.process.as_mut() {
                    process.drain_after_exit(outbox, scratch);
                    // Its pipes are closed once drained (or given up on).
                    process.finished_status()?;
                }
                if self.parser.in_event() {
                    // Its last event was cut off: end it (the server drops what does not parse).
                    FromAgent::CellEvent(id, Vec::new(), true).encode(outbox);
                }
                FromAgent::CellEvent(id, context_died_event(why), true).encode(outbox);
                1
            }
            (None, None) => return None,
        };
        self.cell = None;
        if let Some(process) = self.process.as_mut() {
            process.set_id(ExecId(0));
            process.reset_window();
        }
        Some((id, code))
    }

    /// Whether a deleted context can go: no cell, no process left.
    pub fn is_gone(&self) -> bool {
        self.cell.is_none() && (self.process.is_none() || self.info.died.is_some())
    }

    /// A restored server has nothing in flight.
    pub fn reset_window(&mut self) {
        if let Some(process) = self.process.as_mut() {
            process.reset_window();
        }
    }

    /// Output credit for the running cell.
    pub fn add_credit(&mut self, bytes: u32) {
        if let Some(process) = self.process.as_mut() {
            process.add_credit(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = ((payload.len() + 1) as u32).to_le_bytes().to_vec();
        bytes.push(kind);
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn events_are_passed_on_in_parts_and_done_ends_the_cell() {
        let mut stream = message(EVENT, b"{\"a\":1}");
        stream.extend(message(DONE, &[1]));
        stream.extend(message(EVENT, b""));
        let mut parser = EventParser::default();
        let mut pieces = Vec::new();
        // Fed byte by byte, as the slowest pipe would.
        for byte in &stream {
            parser.push(&[*byte], &mut pieces);
        }
        let event: Vec<u8> = pieces
            .iter()
            .filter_map(|piece| match piece {
                Piece::EventPart(data, _) => Some(data.clone()),
                Piece::Done(_) => None,
            })
            .flatten()
            .collect();
        assert_eq!(event, b"{\"a\":1}");
        let lasts = pieces
            .iter()
            .filter(|piece| matches!(piece, Piece::EventPart(_, true)))
            .count();
        assert_eq!(lasts, 2, "{pieces:?}");
        assert!(pieces.contains(&Piece::Done(1)));
        assert!(!parser.in_event());

        let mut parser = EventParser::default();
        let mut pieces = Vec::new();
        parser.push(&stream, &mut pieces);
        assert_eq!(
            pieces,
            [
                Piece::EventPart(b"{\"a\":1}".to_vec(), true),
                Piece::Done(1),
                Piece::EventPart(Vec::new(), true),
            ]
        );
    }

    #[test]
    fn a_cut_event_is_known() {
        let stream = message(EVENT, b"{\"a\":1}");
        let mut parser = EventParser::default();
        let mut pieces = Vec::new();
        parser.push(&stream[..8], &mut pieces);
        assert!(parser.in_event());
        assert_eq!(describe_exit(ExitStatus::Signal(9)), "signal 9");
    }
}
