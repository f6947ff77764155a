"""The client side of the wire protocol, without any I/O (sans-IO).

``ClientProtocol`` is fed what happened on the socket (a text frame arrived, the
connection closed) and the user's requests (run code, write stdin, checkpoint...). It
returns the frames to send and a list of *effects*: facts for the I/O layer, such as
"the sandbox is ready", "process 3 started", "output arrived", "request 5 failed with
this error", "reconnect now". It never blocks, sleeps or touches a socket, so every
flow is a plain test (``tests/flows/*.json`` at the repository root).

Two modes, chosen by the server's ``SANDBOX_RUNNING``:

* **Protocol 2** (it says ``"protocol": 2``): every request carries an ``id`` (``"1"``,
  ``"2"``, ...) and every answer echoes it, so answers are paired by id only. Several
  processes run at once, each with its own handle; stdin has a window the server
  acknowledges (``stdin_ack``), so writes never overrun it.
* **Protocol 1** (any other server, including the original one): ids are still sent and
  ignored by the server. The server answers a connection's messages in order and runs one
  execution at a time, so an answer goes to the oldest pending request of the kind its
  status answers. A second execution is refused here, before the server sees it.
  ``SANDBOX_EXECUTION_ERROR`` is the one status two requests share (an exec refused, or
  stdin that reached the server after the execution ended); see ``_stale_stdin``.

In both, an error ``status_update`` is followed by an ``error`` event with the same text.
A server with our additions also puts the text in the status (``message``); a core server
does not. Both work: a message-less error status is held until its ``error`` event (or
the next frame, or the close) supplies the text, and an ``error`` event that repeats a
status's message is dropped. Unknown events, statuses and keys are ignored.

A process is known by its *key*: the id of the request that made its handle (the exec,
or the ``attach_process``).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import enum
import logging
from dataclasses import dataclass, field
from typing import Any

from ._effects import (
    CellEventReceived,
    Closed,
    Effect,
    FileAcknowledged,
    FileData,
    Notice,
    OutputReceived,
    ProcessEnded,
    ProcessStarted,
    Ready,
    Reattached,
    ReattachFailed,
    Reconnect,
    RequestDone,
    RequestFailed,
    SendFrame,
    SetupFailed,
    StatusSeen,
    StdinAcknowledged,
    StdinFailed,
)
from ._errors import (
    SandboxConnectionError,
    SandboxError,
    SandboxFileError,
    SandboxStateError,
    error_from_status,
    is_error_status,
)
from ._frames import (
    OutputEncoding,
    StreamName,
    action_message,
    check_port,
    exec_message,
    opt_int,
    opt_number,
    opt_str,
    parse_frame,
    stdin_message,
)
from ._results import ExecutionResult, ProcessInfo

logger = logging.getLogger("codesandbox")

# Raw bytes of stdin in one message (the design's bound; base64 makes it 1.33 MiB).
MAX_STDIN_CHUNK = 1024 * 1024
# The window of a process whose RUNNING did not give one: the in-flight bound of stdin
# without flow control.
DEFAULT_STDIN_WINDOW = 1024 * 1024

# Close codes after which a dropped connection is worth re-attaching: no close frame at
# all (network drop, keepalive timeout), or the server going away / restarting. A final
# status before the close (not found, in use, killed, checkpointed...) wins over the code.
RETRYABLE_CLOSE_CODES = frozenset({1001, 1005, 1006, 1011, 1012, 1013, 1014})


# ---------------------------------------------------------------------------- state


class Phase(enum.Enum):
    SETUP = "setup"  # waiting for SANDBOX_RUNNING after /create or /attach
    OPEN = "open"
    REATTACHING = "reattaching"  # a new /attach after a drop, waiting for SANDBOX_RUNNING
    CLOSED = "closed"


class Kind(enum.Enum):
    """What a request is (the wire name of its message)."""

    EXEC = "exec"
    STDIN = "stdin"
    KILL = "kill_process"
    SNAPSHOT = "snapshot_filesystem"
    CHECKPOINT = "checkpoint"
    TERMINATE = "kill_sandbox"
    LIST = "list_processes"
    IDLE_TIMEOUT = "set_idle_timeout"
    ATTACH_PROCESS = "attach_process"
    FILE = "file"  # any file action (read_file, write_file, list_files, ...)
    EXPOSE = "expose"
    UNEXPOSE = "unexpose"
    LIST_PORTS = "list_ports"
    RESIZE = "resize"
    CODE_CONTEXT = "code_context"  # create/list/restart/delete_code_context


# Requests of which one at a time may wait for its answer.
_ONE_AT_A_TIME = (Kind.SNAPSHOT, Kind.CHECKPOINT, Kind.TERMINATE)


@dataclass
class _Request:
    id: str
    kind: Kind
    key: str | None = None  # the process it is about (exec: its own key; kill/stdin)
    end: int = 0  # stdin: the process's sent total once this message is consumed


@dataclass
class _Process:
    key: str
    binary: bool
    started: bool = False
    process_id: int | None = None
    # stdin flow control (protocol 2): None means none (protocol 1: send freely).
    window: int | None = None
    sent: int = 0
    written: int = 0
    # Protocol 1: a reconnect was sent while it ran; its next RUNNING is the resume marker.
    resume: bool = False
    # Incremental decoders, used only if a text-mode process gets base64 chunks.
    decoders: dict[str, codecs.IncrementalDecoder] = field(default_factory=dict)

    def convert(self, data: str, is_base64: bool, stream: StreamName) -> str | bytes:
        if self.binary:
            return _b64decode(data) if is_base64 else data.encode("utf-8")
        if not is_base64:
            return data
        decoder = self.decoders.get(stream)
        if decoder is None:
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            self.decoders[stream] = decoder
        text: str = decoder.decode(_b64decode(data))
        return text

    def flush(self) -> list[tuple[StreamName, str]]:
        out: list[tuple[StreamName, str]] = []
        for stream, decoder in self.decoders.items():
            rest: str = decoder.decode(b"", final=True)
            if rest:
                out.append(("stdout" if stream == "stdout" else "stderr", rest))
        return out


def _b64decode(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        logger.warning("ignoring an output chunk with invalid base64")
        return b""


def _utf8_boundary(data: bytes, start: int, size: int) -> int:
    """``size``, shortened so that ``data[start:start+size]`` does not end inside a
    UTF-8 character (unless that leaves nothing)."""
    end = start + size
    if end >= len(data):
        return size
    cut = end
    while cut > start and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut - start if cut > start else size


class ClientProtocol:
    """One sandbox session as seen by the client. See the module docstring."""

    def __init__(self, *, attach: bool, auto_reconnect: bool = False) -> None:
        self.phase = Phase.SETUP
        self.attach = attach
        self.auto_reconnect = auto_reconnect
        self.sandbox_id: str | None = None
        self.sandbox_token: str | None = None
        # 2 once the server announced it; 1 until then (and for servers that never do).
        self.protocol = 1
        # The sandbox is known to be gone (killed) or saved (checkpointed).
        self.terminated = False
        self.checkpointed = False

        self._next_id = 1
        self._requests: dict[str, _Request] = {}  # in the order they were sent
        self._processes: dict[str, _Process] = {}
        self._aliases: dict[str, str] = {}  # request id -> process key (protocol 2)
        # Protocol 2: execs the caller stopped waiting for; their process is killed.
        self._abandoned: set[str] = set()
        # Protocol 2: attach_process requests: (process_id, binary output).
        self._pending_attach: dict[str, tuple[int, bool]] = {}
        # Protocol 2: the ``seq`` of the last numbered event of each process that has not
        # ended, sent with ``reconnect`` so that the server sends again what a drop lost.
        self._received: dict[int, int] = {}
        # The code of a SANDBOX_FILE_ERROR status, until its error event gives the text.
        self._file_codes: dict[str, str] = {}
        # Protocol 1: the key of the one process (starting or running).
        self._foreground: str | None = None
        # Protocol 1: the server runs an execution nobody waits for (being killed).
        self._orphan_running = False
        # Protocol 1: stdin frames sent while the last execution ran. Each one that
        # reached the server after the execution ended is answered with
        # SANDBOX_EXECUTION_ERROR, possibly after we saw DONE: that many such errors are
        # stale, not answers to a following exec. Reset by the next exec's answer.
        self._stale_stdin = 0
        self._stdin_this_execution = 0
        # Error statuses waiting for / already given their message: (status, id).
        self._held_status: tuple[str, str | None] | None = None
        self._echo: tuple[str, str | None] | None = None
        # A status after which the server closes and the close is final.
        self._final: SandboxError | None = None
        # SANDBOX_CHECKPOINTING came since the last checkpoint request. A checkpoint
        # error without it means checkpointing is not possible at all and the server
        # closes (4000); after it, a refusal up front keeps the session.
        self._checkpointing_seen = False
        self._checkpoint_error: SandboxError | None = None
        self._closing_by_request = False
        self._closed_emitted = False
        self._attempt_failed = False  # the current re-attach attempt already failed

    # ------------------------------------------------------------- queries

    def running_processes(self) -> int:
        return len(self._processes)

    def stdin_room(self, key: str) -> int | None:
        """Bytes of stdin the process may be sent now; ``None``: no flow control."""
        process = self._processes.get(key)
        if process is None or process.window is None:
            return None
        return process.window - max(0, process.sent - process.written)

    def stdin_unacknowledged(self, key: str) -> int:
        """Bytes sent to the process's stdin that the server has not acknowledged yet."""
        process = self._processes.get(key)
        if process is None or process.window is None:
            return 0
        return max(0, process.sent - process.written)

    def next_stdin_piece(self, key: str, data: bytes, offset: int, as_text: bool) -> int:
        """How many bytes of ``data[offset:]`` the next stdin message may carry now; 0:
        wait for an acknowledgement. Pieces are at most 1 MiB, and at most the window."""
        process = self._live(key, "write to stdin")
        limit = MAX_STDIN_CHUNK
        if process.window is not None:
            limit = max(1, min(limit, process.window))
        size = min(limit, len(data) - offset)
        if as_text:
            size = _utf8_boundary(data, offset, size)
        room = self.stdin_room(key)
        if room is not None and room < size:
            return 0
        return size

    # ----------------------------------------------------- requests (client)

    def _new_id(self) -> str:
        request_id = str(self._next_id)
        self._next_id += 1
        return request_id

    def _require_open(self, what: str) -> None:
        if self.phase is Phase.CLOSED:
            if self.terminated:
                raise SandboxStateError(f"cannot {what}: the sandbox was terminated")
            if self.checkpointed:
                raise SandboxStateError(
                    f"cannot {what}: the sandbox was checkpointed; attach to it to continue"
                )
            raise SandboxStateError(f"cannot {what}: the connection to the sandbox is closed")
        if self.phase is Phase.SETUP:
            raise SandboxStateError(f"cannot {what}: the sandbox is not ready yet")
        if self._closing_by_request:
            raise SandboxStateError(f"cannot {what}: the sandbox is being terminated or saved")

    def _require_protocol_2(self, what: str) -> None:
        if self.protocol < 2:
            raise SandboxStateError(
                f"cannot {what}: the server does not announce protocol 2 (it runs one "
                "execution at a time and has no process handles)"
            )

    def _live(self, key: str, what: str) -> _Process:
        process = self._processes.get(key)
        if process is None:
            raise SandboxStateError(f"cannot {what}: the process has ended")
        # Allowed while reconnecting: the I/O layer queues the frame.
        if self.phase is Phase.CLOSED or self._closing_by_request:
            self._require_open(what)
        return process

    def _add_request(self, kind: Kind, key: str | None = None) -> _Request:
        if kind in _ONE_AT_A_TIME and any(r.kind is kind for r in self._requests.values()):
            raise SandboxStateError(f"a {kind.value} request is already waiting for its answer")
        request = _Request(self._new_id(), kind, key)
        self._requests[request.id] = request
        return request

    def send_exec(
        self,
        code: str,
        language: str,
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        output_encoding: OutputEncoding = "text",
        pty: dict[str, int] | None = None,
    ) -> tuple[str, str]:
        """Returns (request id, frame). The id is the process's key once it runs. With
        ``pty`` (``{"cols", "rows"}``), a terminal (protocol 2)."""
        self._require_open("start an execution")
        if pty is not None:
            self._require_protocol_2("open a terminal")
        if output_encoding not in ("text", "base64"):
            raise ValueError(f"output_encoding must be 'text' or 'base64', not {output_encoding!r}")
        if self.protocol < 2 and self._foreground is not None:
            raise SandboxStateError(
                "an execution is already running in this sandbox and this server runs one "
                "at a time (it does not announce protocol 2); wait for it "
                "(process.wait()) or kill it first"
            )
        request = self._add_request(Kind.EXEC)
        request.key = request.id
        self._processes[request.id] = _Process(request.id, binary=output_encoding == "base64")
        if self.protocol < 2:
            self._foreground = request.id
        frame = exec_message(
            request.id,
            code,
            language,
            env=env,
            cwd=cwd,
            timeout=timeout,
            output_encoding=output_encoding,
            pty=pty,
        )
        return request.id, frame

    def send_resize(self, key: str, cols: int, rows: int) -> tuple[str, str]:
        """A terminal's new window size."""
        process = self._live(key, "resize the terminal")
        self._require_protocol_2("resize a terminal")
        request = self._add_request(Kind.RESIZE, key)
        return request.id, action_message(
            "resize", request.id, process_id=process.process_id, cols=cols, rows=rows
        )

    def send_run_code(
        self,
        code: str,
        *,
        context_id: str | None = None,
        timeout: float | None = None,
    ) -> tuple[str, str]:
        """A code cell (protocol 2): a process like an exec's, whose ``result`` and
        ``execution_error`` events come as ``CellEventReceived``. Returns (request id,
        frame); the id is the process's key once it runs."""
        self._require_open("run code")
        self._require_protocol_2("run code")
        request = self._add_request(Kind.EXEC)
        request.key = request.id
        self._processes[request.id] = _Process(request.id, binary=False)
        extra: dict[str, Any] = {"code": code}
        if context_id is not None:
            extra["context_id"] = context_id
        if timeout is not None:
            extra["timeout"] = timeout
        return request.id, action_message("run_code", request.id, **extra)

    def send_code_context_action(self, action: str, **fields: Any) -> tuple[str, str]:
        """``create_code_context``, ``list_code_contexts``, ``restart_code_context`` or
        ``delete_code_context`` (protocol 2); the reply frame is the request's value."""
        self._require_open("manage code contexts")
        self._require_protocol_2("manage code contexts")
        request = self._add_request(Kind.CODE_CONTEXT)
        given = {name: value for name, value in fields.items() if value is not None}
        return request.id, action_message(action, request.id, **given)

    def send_stdin(self, key: str, data: bytes, *, as_text: bool) -> str:
        """The frame for one piece of stdin (see ``next_stdin_piece``)."""
        process = self._live(key, "write to stdin")
        request_id = self._new_id()
        if process.window is not None:
            process.sent += len(data)
            self._requests[request_id] = _Request(request_id, Kind.STDIN, key, end=process.sent)
        else:
            self._stdin_this_execution += 1
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            as_text = False
        return stdin_message(request_id, self._target(process), data, as_text=as_text, eof=False)

    def send_close_stdin(self, key: str) -> str:
        process = self._live(key, "close stdin")
        request_id = self._new_id()
        if process.window is not None:
            # Never covered by an acknowledgement: an error about it is still its own.
            self._requests[request_id] = _Request(request_id, Kind.STDIN, key, end=process.sent + 1)
        else:
            self._stdin_this_execution += 1
        return stdin_message(request_id, self._target(process), None, as_text=True, eof=True)

    def send_kill(self, key: str) -> tuple[str, str]:
        process = self._live(key, "kill the process")
        request = self._add_request(Kind.KILL, key)
        target = self._target(process)
        extra = {} if target is None else {"process_id": target}
        return request.id, action_message("kill_process", request.id, **extra)

    def _target(self, process: _Process) -> int | None:
        """The ``process_id`` to address a process with (protocol 2), else ``None``: the
        foreground execution."""
        return process.process_id if self.protocol >= 2 else None

    def send_snapshot(self, name: str) -> tuple[str, str]:
        self._require_open("snapshot the filesystem")
        request = self._add_request(Kind.SNAPSHOT)
        return request.id, action_message("snapshot_filesystem", request.id, name=name)

    def send_checkpoint(self) -> tuple[str, str]:
        self._require_open("checkpoint")
        request = self._add_request(Kind.CHECKPOINT)
        self._checkpointing_seen = False
        return request.id, action_message("checkpoint", request.id)

    def send_terminate(self) -> tuple[str, str]:
        self._require_open("terminate")
        request = self._add_request(Kind.TERMINATE)
        self._closing_by_request = True
        return request.id, action_message("kill_sandbox", request.id)

    def send_list_processes(self) -> tuple[str, str]:
        self._require_open("list processes")
        self._require_protocol_2("list processes")
        request = self._add_request(Kind.LIST)
        return request.id, action_message("list_processes", request.id)

    def send_set_idle_timeout(self, idle_timeout: float) -> tuple[str, str]:
        self._require_open("set the idle timeout")
        self._require_protocol_2("set the idle timeout")
        request = self._add_request(Kind.IDLE_TIMEOUT)
        return request.id, action_message("set_idle_timeout", request.id, idle_timeout=idle_timeout)

    def send_expose(self, port: int) -> tuple[str, str]:
        self._require_open("expose a port")
        self._require_protocol_2("expose a port")
        request = self._add_request(Kind.EXPOSE)
        return request.id, action_message("expose", request.id, port=check_port(port))

    def send_unexpose(self, port: int) -> tuple[str, str]:
        self._require_open("unexpose a port")
        self._require_protocol_2("unexpose a port")
        request = self._add_request(Kind.UNEXPOSE)
        return request.id, action_message("unexpose", request.id, port=check_port(port))

    def send_list_ports(self) -> tuple[str, str]:
        self._require_open("list the exposed ports")
        self._require_protocol_2("list the exposed ports")
        request = self._add_request(Kind.LIST_PORTS)
        return request.id, action_message("list_ports", request.id)

    def send_attach_process(
        self, process_id: int, *, output_encoding: OutputEncoding = "text"
    ) -> tuple[str, str]:
        self._require_open("attach to a process")
        self._require_protocol_2("attach to a process")
        if output_encoding not in ("text", "base64"):
            raise ValueError(f"output_encoding must be 'text' or 'base64', not {output_encoding!r}")
        request = self._add_request(Kind.ATTACH_PROCESS)
        request.key = request.id
        # Its events carry this id from the reply on; the process is made then.
        self._pending_attach[request.id] = (process_id, output_encoding == "base64")
        return request.id, action_message("attach_process", request.id, process_id=process_id)

    def send_file(self, action: str, **fields: Any) -> tuple[str, str]:
        """A file action (docs/protocol.md "Files"): its request id and frame. The reply
        finishes the request with the whole ``reply`` frame as its value."""
        self._require_open("use files")
        self._require_protocol_2("use files")
        request = self._add_request(Kind.FILE)
        return request.id, action_message(action, request.id, **fields)

    def send_file_chunk(self, request_id: str, data: bytes, *, more: bool) -> str:
        """A later chunk of the write ``request_id`` (same id; ``more=False`` ends it)."""
        return action_message(
            "write_file",
            request_id,
            data=base64.b64encode(data).decode("ascii"),
            more=more,
        )

    def send_reconnect(self) -> str:
        """After a re-attach: resend what was held while we were away."""
        if self.protocol < 2:
            foreground = self._processes.get(self._foreground or "")
            if foreground is not None and foreground.started:
                foreground.resume = True
        if self.protocol >= 2 and self._received:
            received = {str(pid): seq for pid, seq in self._received.items()}
            return action_message("reconnect", self._new_id(), received=received)
        return action_message("reconnect", self._new_id())

    def abandon(self, request_id: str) -> None:
        """The caller stopped waiting for the answer (timeout or cancellation)."""
        request = self._requests.pop(request_id, None)
        if request is None:
            return
        if request.kind is Kind.TERMINATE:
            self._closing_by_request = False
        elif request.kind is Kind.EXEC:
            process = self._processes.pop(request_id, None)
            if process is not None and not process.started:
                if self._foreground == request_id:
                    self._foreground = None
                if self.protocol >= 2:
                    self._abandoned.add(request_id)
        elif request.kind is Kind.ATTACH_PROCESS:
            self._pending_attach.pop(request_id, None)

    # ------------------------------------------------------ frames (server)

    def receive_frame(self, text: str | bytes) -> list[Effect]:
        frame = parse_frame(text)
        if frame is None:
            return []
        self._note_received(frame)
        effects: list[Effect] = []
        event = frame.get("event")
        request_id = opt_str(frame.get("id"))
        if event == "error":
            message = opt_str(frame.get("message")) or "unknown error"
            held, self._held_status = self._held_status, None
            if held is not None and held[1] == request_id:
                self._on_error_status(held[0], message, request_id, effects)
            else:
                if held is not None:
                    self._on_error_status(held[0], None, held[1], effects)
                if self._echo != (message, request_id):
                    self._on_lone_error(message, effects)
            self._echo = None
            return effects

        # Any other frame: a held error status gets no more text.
        self._flush_held(effects)
        self._echo = None
        # ... and the server did not close after a checkpoint error.
        self._checkpoint_error = None
        if event == "status_update":
            status = opt_str(frame.get("status"))
            if status is None:
                return effects
            said = opt_str(frame.get("message"))
            if status == "SANDBOX_FILE_ERROR" and request_id is not None:
                self._file_codes[request_id] = opt_str(frame.get("code")) or "io"
            effects.append(StatusSeen(status, said))
            if is_error_status(status):
                if said:
                    self._echo = (said, request_id)
                    self._on_error_status(status, said, request_id, effects)
                else:
                    self._held_status = (status, request_id)
            else:
                self._on_status(status, frame, request_id, effects)
        elif event == "sandbox_id":
            sandbox_id = frame.get("sandbox_id")
            if self.phase is Phase.SETUP and not self.attach and isinstance(sandbox_id, str):
                self.sandbox_id = sandbox_id
                self.sandbox_token = opt_str(frame.get("sandbox_token"))
        elif event in ("stdout", "stderr"):
            self._on_output("stdout" if event == "stdout" else "stderr", frame, request_id, effects)
        elif event == "reply":
            self._on_reply(frame, request_id, effects)
        elif event in ("result", "execution_error"):
            if self.phase is Phase.OPEN and self.protocol >= 2:
                process = self._process_or_start(frame, request_id, effects)
                if process is not None:
                    effects.append(CellEventReceived(process.key, frame))
        elif event == "stdin_ack":
            self._on_stdin_ack(frame, request_id, effects)
        elif event == "file_data" and request_id in self._requests:
            data = frame.get("data")
            effects.append(FileData(request_id, _b64decode(data if isinstance(data, str) else "")))
        elif event == "file_ack" and request_id in self._requests:
            written = opt_int(frame.get("written")) or 0
            effects.append(FileAcknowledged(request_id, written, opt_int(frame.get("window"))))
        return effects

    def _note_received(self, frame: dict[str, Any]) -> None:
        """Remember the last numbered event of each process (the latest, not the highest:
        a restored sandbox numbers its processes' events from 1 again)."""
        process_id, seq = opt_int(frame.get("process_id")), opt_int(frame.get("seq"))
        if process_id is None or seq is None:
            return
        if frame.get("status") == "SANDBOX_EXECUTION_DONE":
            self._received.pop(process_id, None)  # its last event: nothing to ask again
        else:
            self._received[process_id] = seq

    def _flush_held(self, effects: list[Effect]) -> None:
        if self._held_status is not None:
            (status, request_id), self._held_status = self._held_status, None
            self._on_error_status(status, None, request_id, effects)

    def _answering(self, kinds: tuple[Kind, ...], request_id: str | None) -> _Request | None:
        """The request an answer of these kinds is for: by id (protocol 2), else the oldest
        pending one of those kinds (protocol 1)."""
        if self.protocol >= 2:
            request = self._requests.get(request_id or "")
            return request if request is not None and request.kind in kinds else None
        for request in self._requests.values():
            if request.kind in kinds:
                return request
        return None

    def _process_for(self, request_id: str | None) -> _Process | None:
        """Protocol 2: the process an event with this id is about."""
        key = self._aliases.get(request_id or "")
        return None if key is None else self._processes.get(key)

    def _on_status(
        self, status: str, frame: dict[str, Any], request_id: str | None, effects: list[Effect]
    ) -> None:
        if self.phase in (Phase.SETUP, Phase.REATTACHING):
            if status == "SANDBOX_RUNNING":
                self._on_running(frame, effects)
            return
        if self.phase is not Phase.OPEN:
            return

        if status == "SANDBOX_EXECUTION_RUNNING":
            if self.protocol >= 2:
                self._on_execution_running_2(frame, request_id, effects)
            else:
                self._on_execution_running_1(frame, effects)
        elif status == "SANDBOX_EXECUTION_DONE":
            if self.protocol >= 2:
                process = self._process_or_start(frame, request_id, effects)
            else:
                if self._orphan_running:
                    self._orphan_running = False
                    return
                process = self._processes.get(self._foreground or "")
                if process is not None and not process.started:
                    self._start(process, frame, effects)
            if process is not None:
                self._end(process, frame, effects)
        elif status == "SANDBOX_EXECUTION_FORCE_KILLED":
            self._finish(self._answering((Kind.KILL,), request_id), effects)
        elif status == "SANDBOX_FILESYSTEM_SNAPSHOT_CREATED":
            self._finish(self._answering((Kind.SNAPSHOT,), request_id), effects)
        elif status == "SANDBOX_CHECKPOINTING":
            self._checkpointing_seen = True
        elif status == "SANDBOX_CHECKPOINTED":
            self.checkpointed = True
            request = self._answering((Kind.CHECKPOINT,), request_id)
            if request is not None:
                self._closing_by_request = True
                self._finish(request, effects)
            else:
                self._final = SandboxConnectionError(
                    "the server checkpointed the sandbox and closed the connection; "
                    "attach to it to continue",
                    status=status,
                )
        elif status == "SANDBOX_KILLED":
            self.terminated = True
            request = self._answering((Kind.TERMINATE,), request_id)
            if request is not None:
                self._finish(request, effects)
            else:
                message = opt_str(frame.get("message"))
                if message is None and frame.get("reason") == "idle_timeout":
                    message = "the server deleted the sandbox after its idle timeout"
                self._final = SandboxConnectionError(
                    message or "the server killed the sandbox (idle timeout or shutdown)",
                    status=status,
                )
        # Every other status (progress, locks, unknown) changes nothing here.

    def _on_running(self, frame: dict[str, Any], effects: list[Effect]) -> None:
        self.protocol = 2 if (opt_int(frame.get("protocol")) or 1) >= 2 else 1
        reattached = self.phase is Phase.REATTACHING
        self.phase = Phase.OPEN
        if not reattached:
            effects.append(Ready(self.sandbox_id, self.sandbox_token, self.protocol))
            return
        for process in self._processes.values():
            if self.protocol < 2:
                process.window = None
            else:
                # Stdin in flight when the connection dropped is taken as lost: only what
                # the server acknowledged counts.
                process.sent = process.written
        effects.append(Reattached(self.protocol))

    def _on_execution_running_2(
        self, frame: dict[str, Any], request_id: str | None, effects: list[Effect]
    ) -> None:
        request = self._answering((Kind.EXEC,), request_id)
        if request is not None:
            process = self._processes.get(request.id)
            if process is not None:
                self._start(process, frame, effects)
        elif request_id in self._abandoned:
            self._kill_orphan(opt_int(frame.get("process_id")), request_id, effects)
        # Else: a process we know, replayed after a reconnect. Nothing to do.

    def _on_execution_running_1(self, frame: dict[str, Any], effects: list[Effect]) -> None:
        process = self._processes.get(self._foreground or "")
        if process is not None and process.started:
            process.resume = False  # the resume marker after a reconnect
            return
        if process is not None:
            self._start(process, frame, effects)
            return
        self._kill_orphan(None, None, effects)

    def _kill_orphan(
        self, process_id: int | None, request_id: str | None, effects: list[Effect]
    ) -> None:
        """The server runs an execution whose caller gave up waiting for it to start
        (timeout, or its answer was lost with the connection): stop it, so that it does
        not hold the foreground slot (protocol 1) or a process slot."""
        if request_id is not None:
            self._abandoned.discard(request_id)
        if self.protocol < 2:
            self._orphan_running = True
        kill_id = self._new_id()
        # Registered so that its answer is consumed; nobody waits for it.
        self._requests[kill_id] = _Request(kill_id, Kind.KILL, None)
        extra = {} if process_id is None or self.protocol < 2 else {"process_id": process_id}
        effects.append(SendFrame(action_message("kill_process", kill_id, **extra)))

    def _process_or_start(
        self, frame: dict[str, Any], request_id: str | None, effects: list[Effect]
    ) -> _Process | None:
        """Protocol 2: the process an output or DONE is about; an exec whose RUNNING was
        lost (in a dropped connection) starts with its first other event."""
        process = self._process_for(request_id)
        if process is not None:
            return process
        request = self._answering((Kind.EXEC,), request_id)
        if request is not None:
            process = self._processes.get(request.id)
            if process is not None:
                self._start(process, frame, effects)
                return process
        if request_id in self._abandoned:
            self._abandoned.discard(request_id)
        return None

    def _start(self, process: _Process, frame: dict[str, Any], effects: list[Effect]) -> None:
        process.started = True
        process.process_id = opt_int(frame.get("process_id"))
        if self.protocol >= 2:
            window = opt_int(frame.get("stdin_window"))
            process.window = window if window is not None and window > 0 else DEFAULT_STDIN_WINDOW
        self._requests.pop(process.key, None)
        self._aliases[process.key] = process.key
        self._stale_stdin = 0
        self._stdin_this_execution = 0
        effects.append(ProcessStarted(process.key, process.process_id))
        effects.append(RequestDone(process.key, process.key))

    def _end(self, process: _Process, frame: dict[str, Any], effects: list[Effect]) -> None:
        for stream, rest in process.flush():
            effects.append(OutputReceived(process.key, stream, rest))
        self._forget(process)
        exit_code = opt_int(frame.get("exit_code"))
        reason = opt_str(frame.get("reason"))
        result = ExecutionResult(
            exit_code=-1 if exit_code is None else exit_code,
            signal=opt_int(frame.get("signal")),
            reason=reason or ("exited" if exit_code is not None else "unknown"),
            duration_ms=opt_int(frame.get("duration_ms")),
        )
        effects.append(ProcessEnded(process.key, result))

    def _forget(self, process: _Process) -> None:
        self._processes.pop(process.key, None)
        for alias in [a for a, key in self._aliases.items() if key == process.key]:
            del self._aliases[alias]
        for request in [r for r in self._requests.values() if r.key == process.key]:
            if request.kind is Kind.STDIN:
                del self._requests[request.id]
        if self._foreground == process.key:
            self._foreground = None
            self._stale_stdin = self._stdin_this_execution
            self._stdin_this_execution = 0

    def _finish(self, request: _Request | None, effects: list[Effect], value: Any = None) -> None:
        if request is not None and self._requests.pop(request.id, None) is not None:
            effects.append(RequestDone(request.id, value))

    def _fail(self, request: _Request, error: SandboxError, effects: list[Effect]) -> None:
        if self._requests.pop(request.id, None) is None:
            return
        if request.kind is Kind.TERMINATE:
            self._closing_by_request = False
        if request.kind is Kind.STDIN:
            if request.key is not None and request.key in self._processes:
                effects.append(StdinFailed(request.key, error))
            return
        if request.kind is Kind.EXEC:
            self._processes.pop(request.id, None)  # never started: its request was pending
            if self._foreground == request.id:
                self._foreground = None
        if request.kind is Kind.ATTACH_PROCESS:
            self._pending_attach.pop(request.id, None)
        session_ends = False
        if request.kind is Kind.CHECKPOINT and error.status == "SANDBOX_CHECKPOINT_ERROR":
            session_ends = not self._checkpointing_seen
        effects.append(RequestFailed(request.id, error, session_ends))

    def _on_error_status(
        self, status: str, message: str | None, request_id: str | None, effects: list[Effect]
    ) -> None:
        error = error_from_status(status, message)
        if isinstance(error, SandboxFileError):
            error.code = self._file_codes.pop(request_id or "", "io")
        if self.phase is Phase.SETUP:
            self.phase = Phase.CLOSED
            effects.append(SetupFailed(error))
            return
        if self.phase is Phase.REATTACHING:
            # IN_USE right after a drop usually means the server has not noticed the old
            # connection died yet: worth another try. Everything else is final.
            retryable = status == "SANDBOX_IN_USE"
            if not retryable:
                self.phase = Phase.CLOSED
                self._final = error
            self._attempt_failed = True
            effects.append(ReattachFailed(error, retryable))
            return
        if self.phase is not Phase.OPEN:
            return
        if status == "SANDBOX_CHECKPOINT_ERROR":
            # Either the server closes with 4000 next (checkpointing impossible, or the
            # save failed), or the session goes on (refused up front).
            self._checkpoint_error = error
        if status in (
            "SANDBOX_NOT_FOUND",
            "SANDBOX_IN_USE",
            "SANDBOX_PERMISSION_DENIAL_ERROR",
            "SANDBOX_CREATION_ERROR",
            "SANDBOX_RESTORE_ERROR",
        ):
            # Setup errors in an open session: the server is ending it.
            self._final = error
        if self.protocol >= 2:
            self._on_error_status_2(error, request_id, effects)
        else:
            self._on_error_status_1(status, error, effects)

    def _on_error_status_2(
        self, error: SandboxError, request_id: str | None, effects: list[Effect]
    ) -> None:
        request = self._requests.get(request_id or "")
        if request is not None:
            self._fail(request, error, effects)
        elif request_id is not None and (
            request_id in self._abandoned or self._process_for(request_id) is None
        ):
            # The answer to a request nobody waits for any more.
            logger.debug("ignoring an error for request %s: %s", request_id, error)
        else:
            effects.append(Notice(error))

    def _on_error_status_1(self, status: str, error: SandboxError, effects: list[Effect]) -> None:
        kinds: tuple[Kind, ...] = ()
        if status in ("SANDBOX_EXECUTION_ERROR", "SANDBOX_EXECUTION_UNSUPPORTED_LANGUAGE_ERROR"):
            if status == "SANDBOX_EXECUTION_ERROR" and self._is_stale_stdin_error(error):
                # The answer to a stdin frame that reached the server after the last
                # execution ended (see ``_stale_stdin``).
                self._stale_stdin -= 1
                logger.debug("ignoring a late stdin error: %s", error.message)
                return
            kinds = (Kind.EXEC,)
        elif status == "SANDBOX_EXECUTION_FORCE_KILL_ERROR":
            kinds = (Kind.KILL,)
        elif status in ("SANDBOX_EXECUTION_IN_PROGRESS_ERROR", "SANDBOX_CHECKPOINT_ERROR"):
            kinds = (Kind.CHECKPOINT,)
        elif status == "SANDBOX_FILESYSTEM_SNAPSHOT_ERROR":
            kinds = (Kind.SNAPSHOT,)
        elif status == "SANDBOX_KILL_ERROR":
            kinds = (Kind.TERMINATE,)
        elif status == "SANDBOX_STDIN_ERROR":
            foreground = self._processes.get(self._foreground or "")
            if foreground is not None and foreground.started:
                effects.append(StdinFailed(foreground.key, error))
                return
        elif status == "SANDBOX_ERROR":
            # A generic error is the best answer a waiting exec gets.
            kinds = (Kind.EXEC,)
        request = self._answering(kinds, None) if kinds else None
        if request is not None:
            if request.kind is Kind.EXEC:
                self._stale_stdin = 0
            self._fail(request, error, effects)
        else:
            effects.append(Notice(error))

    def _is_stale_stdin_error(self, error: SandboxError) -> bool:
        """Protocol 1: whether an execution error answers late stdin rather than an exec.
        Only when stdin was sent in the last execution; and when an exec waits for its
        answer, only if the text is about stdin (ours says "no execution is running to
        receive stdin"), so that an exec refused right after is not mistaken for it."""
        if self._stale_stdin <= 0:
            return False
        exec_waiting = self._answering((Kind.EXEC,), None) is not None
        return not exec_waiting or "stdin" in error.message.lower()

    def _on_lone_error(self, message: str, effects: list[Effect]) -> None:
        error = SandboxError(message)
        if self.phase is Phase.SETUP:
            self.phase = Phase.CLOSED
            effects.append(SetupFailed(error))
        elif self.phase is Phase.REATTACHING:
            self.phase = Phase.CLOSED
            self._final = error
            self._attempt_failed = True
            effects.append(ReattachFailed(error, False))
        else:
            effects.append(Notice(error))

    def _on_output(
        self,
        stream: StreamName,
        frame: dict[str, Any],
        request_id: str | None,
        effects: list[Effect],
    ) -> None:
        data = frame.get("data")
        if not isinstance(data, str) or self.phase is not Phase.OPEN:
            return
        if self.protocol >= 2:
            process = self._process_or_start(frame, request_id, effects)
        else:
            process = None if self._orphan_running else self._processes.get(self._foreground or "")
            if process is not None and not process.started:
                # Output before EXECUTION_RUNNING (after a reconnect whose execution ended
                # while we were away, the kept output comes without a RUNNING).
                self._start(process, frame, effects)
        if process is None:
            logger.debug("ignoring output of no process of ours")
            return
        converted = process.convert(data, frame.get("encoding") == "base64", stream)
        if converted:
            effects.append(OutputReceived(process.key, stream, converted))

    def _on_reply(
        self, frame: dict[str, Any], request_id: str | None, effects: list[Effect]
    ) -> None:
        request = self._requests.get(request_id or "")
        if request is None or self.phase is not Phase.OPEN:
            return
        if request.kind is Kind.LIST:
            self._finish(request, effects, _process_infos(frame.get("processes")))
        elif request.kind is Kind.IDLE_TIMEOUT:
            self._finish(request, effects, opt_number(frame.get("idle_timeout")))
        elif request.kind is Kind.ATTACH_PROCESS:
            self._on_attached(request, frame, effects)
        elif request.kind is Kind.EXPOSE:
            self._finish(request, effects, opt_str(frame.get("url")))
        elif request.kind is Kind.UNEXPOSE:
            self._finish(request, effects, frame.get("unexposed") is True)
        elif request.kind is Kind.LIST_PORTS:
            self._finish(request, effects, _port_urls(frame.get("ports")))
        elif request.kind in (Kind.FILE, Kind.CODE_CONTEXT):
            self._finish(request, effects, frame)
        else:
            self._finish(request, effects)

    def _on_attached(self, request: _Request, frame: dict[str, Any], effects: list[Effect]) -> None:
        asked, binary = self._pending_attach.pop(request.id, (None, False))
        process_id = opt_int(frame.get("process_id"))
        if process_id is None:
            process_id = asked
        known = next(
            (p for p in self._processes.values() if p.process_id == process_id and p.started),
            None,
        )
        if known is not None:
            # Already followed here: its events come with this id from now on.
            self._aliases[request.id] = known.key
            self._finish(request, effects, known.key)
            return
        process = _Process(request.id, binary=binary, started=True, process_id=process_id)
        window = opt_int(frame.get("stdin_window"))
        process.window = window if window is not None and window > 0 else DEFAULT_STDIN_WINDOW
        written = opt_int(frame.get("stdin_written"))
        if written is not None:
            process.sent = process.written = written
        self._processes[request.id] = process
        self._aliases[request.id] = request.id
        effects.append(ProcessStarted(request.id, process_id))
        self._finish(request, effects, request.id)

    def _on_stdin_ack(
        self, frame: dict[str, Any], request_id: str | None, effects: list[Effect]
    ) -> None:
        process = self._process_for(request_id)
        written = opt_int(frame.get("written"))
        if process is None or written is None or process.window is None:
            return
        process.written = max(process.written, written)
        # A process attached here does not know what was sent before: trust the server.
        process.sent = max(process.sent, process.written)
        for request in [
            r
            for r in self._requests.values()
            if r.kind is Kind.STDIN and r.key == process.key and r.end <= process.written
        ]:
            del self._requests[request.id]
        effects.append(StdinAcknowledged(process.key))

    # ------------------------------------------------------------- closing

    def connection_closed(
        self, code: int | None, reason: str = "", *, close_frame_received: bool = True
    ) -> list[Effect]:
        """The socket closed. ``code`` is the server's close code, ``None`` if none came."""
        effects: list[Effect] = []
        self._flush_held(effects)
        self._echo = None
        described = _describe_close(code, reason, close_frame_received)

        if self.phase is Phase.CLOSED:
            # A setup or re-attach failure already said why.
            return effects
        if self.phase is Phase.SETUP:
            self.phase = Phase.CLOSED
            effects.append(
                SetupFailed(
                    SandboxConnectionError(
                        f"the server closed the connection before the sandbox was ready "
                        f"({described})",
                        close_code=code,
                    )
                )
            )
            return effects
        if self.phase is Phase.REATTACHING:
            if self._attempt_failed:
                return effects  # this attempt already failed with a reason
            self._attempt_failed = True
            effects.append(
                ReattachFailed(
                    SandboxConnectionError(
                        f"re-attach failed: connection closed ({described})", close_code=code
                    ),
                    True,
                )
            )
            return effects

        # Phase.OPEN
        checkpoint_error, self._checkpoint_error = self._checkpoint_error, None
        if checkpoint_error is not None and close_frame_received and self._final is None:
            self._final = SandboxConnectionError(
                "the server closed the connection after a checkpoint error: "
                f"{checkpoint_error.message}",
                status=checkpoint_error.status,
            )
        dropped = not close_frame_received or code in RETRYABLE_CLOSE_CODES
        if (
            self.auto_reconnect
            and dropped
            and self._final is None
            and not self._closing_by_request
            and not self.terminated
            and not self.checkpointed
            and self.sandbox_id is not None
        ):
            self.phase = Phase.REATTACHING
            # The answers to these requests may have been lost with the connection. An
            # exec's is not: the server replays the process's events after reconnect.
            lost = SandboxConnectionError(
                "the connection dropped while waiting for the answer; its outcome is unknown",
                close_code=code,
            )
            for request in list(self._requests.values()):
                internal = request.kind is Kind.KILL and request.key is None
                if request.kind is Kind.STDIN or internal:
                    # Stdin in flight is taken as lost (see ``_on_running``); an internal
                    # kill has nobody waiting for it.
                    del self._requests[request.id]
                elif request.kind is not Kind.EXEC:
                    self._fail(request, lost, effects)
            effects.append(Reconnect(described))
            return effects

        self.phase = Phase.CLOSED
        if self.terminated:
            error: SandboxError = SandboxConnectionError(
                "the sandbox was terminated", status="SANDBOX_KILLED", close_code=code
            )
            if self._final is not None and self._final.status == "SANDBOX_KILLED":
                error = self._final
        elif self.checkpointed:
            error = SandboxConnectionError(
                "the sandbox was checkpointed; attach to it to continue",
                status="SANDBOX_CHECKPOINTED",
                close_code=code,
            )
        elif self._final is not None:
            error = self._final
        else:
            error = SandboxConnectionError(
                f"the server closed the connection ({described})", close_code=code
            )
        if isinstance(error, SandboxConnectionError):
            error.close_code = code
        self._fail_everything(error, effects)
        self._closed_emitted = True
        effects.append(Closed(error, terminated=self.terminated, checkpointed=self.checkpointed))
        return effects

    def begin_reattach(self) -> None:
        """The I/O layer opened a new ``/attach`` connection after a drop."""
        self.phase = Phase.REATTACHING
        self._attempt_failed = False

    def give_up(self, error: SandboxError) -> list[Effect]:
        """Reconnecting failed for good (or the user closed the sandbox)."""
        effects: list[Effect] = []
        if self._closed_emitted:
            return effects
        self.phase = Phase.CLOSED
        self._fail_everything(error, effects)
        self._closed_emitted = True
        effects.append(Closed(error, terminated=self.terminated, checkpointed=self.checkpointed))
        return effects

    def _fail_everything(self, error: SandboxError, effects: list[Effect]) -> None:
        for request in list(self._requests.values()):
            if request.kind is Kind.STDIN or (request.kind is Kind.KILL and request.key is None):
                continue  # nobody waits for these
            self._fail(request, error, effects)
        self._requests.clear()
        self._processes.clear()
        self._aliases.clear()
        self._pending_attach.clear()
        self._received.clear()
        self._foreground = None


def _process_infos(value: Any) -> list[ProcessInfo]:
    infos: list[ProcessInfo] = []
    for item in value if isinstance(value, list) else []:
        if not isinstance(item, dict):
            continue
        process_id = opt_int(item.get("process_id"))
        if process_id is None:
            continue
        infos.append(
            ProcessInfo(
                process_id=process_id,
                request_id=opt_str(item.get("id")),
                kind=opt_str(item.get("kind")) or "exec",
                language=opt_str(item.get("language")),
                running=item.get("running") is True,
                started_unix_ms=opt_int(item.get("started_unix_ms")),
            )
        )
    return infos


def _describe_close(code: int | None, reason: str, received: bool) -> str:
    if not received or code is None:
        return "no close frame: the connection dropped"
    if reason:
        return f"close code {code}: {reason}"
    return f"close code {code}"


def _port_urls(value: Any) -> dict[int, str]:
    """``list_ports``'s ``ports`` as ``{port: url}`` (entries of another shape are skipped)."""
    ports: dict[int, str] = {}
    if isinstance(value, list):
        for entry in value:
            if isinstance(entry, dict):
                port, url = entry.get("port"), entry.get("url")
                if isinstance(port, int) and isinstance(url, str):
                    ports[port] = url
    return ports
