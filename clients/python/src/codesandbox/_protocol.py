"""The client side of the wire protocol, without any I/O (sans-IO).

``ClientProtocol`` is fed what happened on the socket (a text frame arrived, the
connection closed) and the user's requests (run code, write stdin, checkpoint...). It
returns the frames to send and a list of *effects*: facts for the I/O layer, such as
"the sandbox is ready", "the execution started", "output arrived", "the operation
failed with this error", "reconnect now". It never blocks, sleeps or touches a socket,
so every protocol flow is a plain unit test over recorded frames (see
``tests/fixtures``).

Invariants worth knowing:

* The server answers a connection's messages in order, and every request kind has its
  own answer statuses, so a pending request is matched by the status kind.
  ``SANDBOX_EXECUTION_ERROR`` is the one status shared by two requests (an exec
  refused, or stdin written when nothing runs); see ``_stale_stdin``.
* An error ``status_update`` is followed by an ``error`` event with the same text. A
  server with our additions also puts the text in the status (``message``); a
  core-protocol server does not. Both work: a message-less error status is held until
  its ``error`` event (or the next frame, or the close) supplies the text, and an
  ``error`` event that repeats a status's message is dropped.
* Unknown events, unknown statuses and unknown keys are ignored.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import enum
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from ._errors import (
    SandboxConnectionError,
    SandboxError,
    SandboxStateError,
    error_from_status,
    is_error_status,
)

logger = logging.getLogger("codesandbox")

StreamName = Literal["stdout", "stderr"]
OutputEncoding = Literal["text", "base64"]

# Close codes after which a dropped connection is worth re-attaching: no close frame
# at all (network drop, keepalive timeout), or the server going away / restarting.
# 1000 (kill or checkpoint done), 1011 after NOT_FOUND / IN_USE, 4000 (fatal), 1008
# (rate limit), 1009 (too big) and 1003/1007 (bad frames) are final answers.
RETRYABLE_CLOSE_CODES = frozenset({1001, 1006, 1011, 1012, 1013, 1014})


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class StatusUpdate:
    status: str
    message: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    duration_ms: int | None = None


@dataclass(frozen=True)
class SandboxIdAssigned:
    sandbox_id: str
    sandbox_token: str | None


@dataclass(frozen=True)
class OutputChunk:
    stream: StreamName
    data: str
    base64: bool


@dataclass(frozen=True)
class ServerErrorMessage:
    message: str


ServerEvent = Union[StatusUpdate, SandboxIdAssigned, OutputChunk, ServerErrorMessage]


def _opt_int(value: Any) -> int | None:
    # bool is an int subclass; a boolean is never a valid code here.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def parse_frame(text: str | bytes) -> ServerEvent | None:
    """Turn one frame into an event; ``None`` for anything this client does not know."""
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        logger.warning("ignoring a frame that is not JSON: %.200r", text)
        return None
    if not isinstance(obj, dict):
        return None
    event = obj.get("event")
    if event == "status_update":
        status = obj.get("status")
        if not isinstance(status, str):
            return None
        return StatusUpdate(
            status=status,
            message=_opt_str(obj.get("message")),
            exit_code=_opt_int(obj.get("exit_code")),
            signal=_opt_int(obj.get("signal")),
            reason=_opt_str(obj.get("reason")),
            duration_ms=_opt_int(obj.get("duration_ms")),
        )
    if event == "sandbox_id":
        sandbox_id = obj.get("sandbox_id")
        if not isinstance(sandbox_id, str):
            return None
        return SandboxIdAssigned(sandbox_id, _opt_str(obj.get("sandbox_token")))
    if event in ("stdout", "stderr"):
        data = obj.get("data")
        if not isinstance(data, str):
            return None
        return OutputChunk(event, data, obj.get("encoding") == "base64")
    if event == "error":
        message = obj.get("message")
        return ServerErrorMessage(message if isinstance(message, str) else "unknown error")
    return None


# --------------------------------------------------------------------- messages out


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def init_message(
    *,
    idle_timeout: int | None,
    enable_checkpoint: bool,
    enable_idle_timeout_auto_checkpoint: bool,
    enable_sandbox_handoff: bool,
    filesystem_snapshot_name: str | None,
    enable_network: bool = False,
) -> str:
    message: dict[str, Any] = {
        "idle_timeout": idle_timeout,
        "enable_checkpoint": enable_checkpoint,
        "enable_idle_timeout_auto_checkpoint": enable_idle_timeout_auto_checkpoint,
        "enable_sandbox_handoff": enable_sandbox_handoff,
        "filesystem_snapshot_name": filesystem_snapshot_name,
    }
    if enable_network:
        # Our addition; sent only when asked for, so the message stays the original's.
        message["enable_network"] = True
    return _dumps(message)


def exec_message(
    code: str,
    language: str,
    *,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    timeout: float | None = None,
    output_encoding: OutputEncoding = "text",
) -> str:
    msg: dict[str, Any] = {"language": language, "code": code}
    # Only send the additions that are used, so a core-protocol server sees the exact
    # core message.
    if env is not None:
        msg["env"] = dict(env)
    if cwd is not None:
        msg["cwd"] = cwd
    if timeout is not None:
        msg["timeout"] = timeout
    if output_encoding != "text":
        msg["output_encoding"] = output_encoding
    return _dumps(msg)


def stdin_message(data: str | bytes | None = None, *, eof: bool = False) -> str:
    msg: dict[str, Any] = {"event": "stdin"}
    if isinstance(data, (bytes, bytearray, memoryview)):
        msg["data"] = base64.b64encode(bytes(data)).decode("ascii")
        msg["encoding"] = "base64"
    elif data is not None:
        msg["data"] = data
    if eof:
        msg["eof"] = True
    return _dumps(msg)


def action_message(action: str, **extra: Any) -> str:
    return _dumps({"action": action, **extra})


# -------------------------------------------------------------------------- effects


@dataclass(frozen=True)
class Ready:
    """The sandbox is running (``/create`` or ``/attach`` finished)."""

    sandbox_id: str | None
    sandbox_token: str | None


@dataclass(frozen=True)
class SetupFailed:
    error: SandboxError


@dataclass(frozen=True)
class Reattached:
    """A re-attach after a drop succeeded; the I/O layer now flushes its outbox."""


@dataclass(frozen=True)
class ReattachFailed:
    error: SandboxError
    retryable: bool


@dataclass(frozen=True)
class ExecStarted:
    execution_id: int


@dataclass(frozen=True)
class ExecFailed:
    error: SandboxError


@dataclass(frozen=True)
class OutputReceived:
    execution_id: int
    stream: StreamName
    data: str | bytes


@dataclass(frozen=True)
class ExecDone:
    execution_id: int
    exit_code: int | None
    signal: int | None
    reason: str | None
    duration_ms: int | None


class Op(enum.Enum):
    """Requests that wait for an answer (besides exec, which has its own effects)."""

    KILL_PROCESS = "kill_process"
    SNAPSHOT = "snapshot_filesystem"
    CHECKPOINT = "checkpoint"
    TERMINATE = "kill_sandbox"


@dataclass(frozen=True)
class OpDone:
    op: Op


@dataclass(frozen=True)
class OpFailed:
    op: Op
    error: SandboxError


@dataclass(frozen=True)
class Notice:
    """An error the server reported that no pending request is waiting for."""

    error: SandboxError


@dataclass(frozen=True)
class Reconnect:
    """The connection dropped; the I/O layer should re-attach (``auto_reconnect``)."""

    reason: str


@dataclass(frozen=True)
class Closed:
    """The session is over. ``error`` is what every pending wait should raise."""

    error: SandboxError
    terminated: bool = False
    checkpointed: bool = False


Effect = Union[
    Ready,
    SetupFailed,
    Reattached,
    ReattachFailed,
    ExecStarted,
    ExecFailed,
    OutputReceived,
    ExecDone,
    OpDone,
    OpFailed,
    Notice,
    Reconnect,
    Closed,
]


# ---------------------------------------------------------------------------- state


class Phase(enum.Enum):
    SETUP = "setup"  # waiting for SANDBOX_RUNNING after /create or /attach
    OPEN = "open"
    REATTACHING = "reattaching"  # a new /attach after a drop, waiting for SANDBOX_RUNNING
    CLOSED = "closed"


@dataclass
class _Execution:
    id: int
    binary: bool
    # Incremental decoders, used only if a text-mode execution gets base64 chunks.
    decoders: dict[str, codecs.IncrementalDecoder] = field(default_factory=dict)

    def convert(self, chunk: OutputChunk) -> str | bytes:
        if self.binary:
            return _b64decode(chunk.data) if chunk.base64 else chunk.data.encode("utf-8")
        if not chunk.base64:
            return chunk.data
        decoder = self.decoders.get(chunk.stream)
        if decoder is None:
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            self.decoders[chunk.stream] = decoder
        text: str = decoder.decode(_b64decode(chunk.data))
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


class ClientProtocol:
    """One sandbox session as seen by the client. See the module docstring."""

    def __init__(self, *, attach: bool, auto_reconnect: bool = False) -> None:
        self.phase = Phase.SETUP
        self.attach = attach
        self.auto_reconnect = auto_reconnect
        self.sandbox_id: str | None = None
        self.sandbox_token: str | None = None
        # The sandbox is known to be gone (killed) or saved (checkpointed).
        self.terminated = False
        self.checkpointed = False

        self._next_execution_id = 1
        self._exec_pending: tuple[int, bool] | None = None  # (id, binary)
        self._execution: _Execution | None = None
        self._ops: set[Op] = set()
        # Stdin frames sent while the last execution ran. Each one that reached the
        # server after the execution ended is answered with SANDBOX_EXECUTION_ERROR,
        # possibly after we saw DONE: that many such errors are stale, not answers to
        # a following exec. Reset by the next exec's answer (answers are in order).
        self._stale_stdin = 0
        self._stdin_this_execution = 0
        # Error statuses waiting for / already given their message.
        self._held_status: str | None = None
        self._echo_message: str | None = None
        # A status after which the server closes and the close is final.
        self._final: SandboxError | None = None
        # A SANDBOX_CHECKPOINT_ERROR the server may or may not close after: it closes
        # with 4000 when checkpointing is not possible at all (not enabled, the save
        # failed) and keeps the session when it refused up front (e.g. open TCP
        # connections). Any later frame, or ``connection_confirmed()``, says it stayed.
        self._checkpoint_error: SandboxError | None = None
        self._closing_by_request = False
        self._closed_emitted = False
        self._attempt_failed = False  # the current re-attach attempt already failed

    # ------------------------------------------------------------- queries

    @property
    def execution_running(self) -> bool:
        return self._execution is not None or self._exec_pending is not None

    def pending(self, op: Op) -> bool:
        return op in self._ops

    # ----------------------------------------------------- requests (client)

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

    def send_exec(
        self,
        code: str,
        language: str,
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        output_encoding: OutputEncoding = "text",
    ) -> tuple[int, str]:
        """Returns (execution id, frame). One foreground execution at a time."""
        self._require_open("start an execution")
        if self.execution_running:
            raise SandboxStateError(
                "an execution is already running in this sandbox; "
                "wait for it (process.wait()) or kill it first"
            )
        if output_encoding not in ("text", "base64"):
            raise ValueError(f"output_encoding must be 'text' or 'base64', not {output_encoding!r}")
        execution_id = self._next_execution_id
        self._next_execution_id += 1
        self._exec_pending = (execution_id, output_encoding == "base64")
        frame = exec_message(
            code, language, env=env, cwd=cwd, timeout=timeout, output_encoding=output_encoding
        )
        return execution_id, frame

    def send_stdin(self, execution_id: int, data: str | bytes | None, *, eof: bool) -> str:
        self._require_live_execution(execution_id, "write to stdin")
        self._stdin_this_execution += 1
        return stdin_message(data, eof=eof)

    def send_kill_process(self, execution_id: int) -> str:
        self._require_live_execution(execution_id, "kill the process")
        self._start_op(Op.KILL_PROCESS)
        return action_message("kill_process")

    def _require_live_execution(self, execution_id: int, what: str) -> None:
        if self._execution is None or self._execution.id != execution_id:
            raise SandboxStateError(f"cannot {what}: the process has finished")
        # Allowed while reconnecting: the I/O layer queues the frame.
        if self.phase is Phase.CLOSED or self._closing_by_request:
            self._require_open(what)

    def send_snapshot(self, name: str) -> str:
        self._require_open("snapshot the filesystem")
        self._start_op(Op.SNAPSHOT)
        return action_message("snapshot_filesystem", name=name)

    def send_checkpoint(self) -> str:
        self._require_open("checkpoint")
        self._start_op(Op.CHECKPOINT)
        return action_message("checkpoint")

    def send_terminate(self) -> str:
        self._require_open("terminate")
        self._start_op(Op.TERMINATE)
        self._closing_by_request = True
        return action_message("kill_sandbox")

    def send_reconnect(self) -> str:
        return action_message("reconnect")

    def _start_op(self, op: Op) -> None:
        if op in self._ops:
            raise SandboxStateError(f"a {op.value} request is already waiting for its answer")
        self._ops.add(op)

    def abandon_op(self, op: Op) -> None:
        """The caller stopped waiting (timeout or cancellation)."""
        self._ops.discard(op)
        if op is Op.TERMINATE:
            self._closing_by_request = False

    def abandon_exec(self, execution_id: int) -> None:
        if self._exec_pending is not None and self._exec_pending[0] == execution_id:
            self._exec_pending = None

    # ------------------------------------------------------ frames (server)

    def receive_frame(self, text: str | bytes) -> list[Effect]:
        event = parse_frame(text)
        if event is None:
            return []
        effects: list[Effect] = []
        if isinstance(event, ServerErrorMessage):
            if self._held_status is not None:
                status, self._held_status = self._held_status, None
                self._on_error_status(status, event.message, effects)
            elif self._echo_message is not None and event.message == self._echo_message:
                pass  # the text we already used from the status's ``message``
            else:
                self._on_lone_error(event.message, effects)
            self._echo_message = None
            return effects

        # Any other frame: a held error status gets no more text.
        self._flush_held(effects)
        self._echo_message = None
        # ... and the server did not close after a checkpoint error.
        self._checkpoint_error = None
        if isinstance(event, StatusUpdate):
            if is_error_status(event.status):
                if event.message:
                    self._echo_message = event.message
                    self._on_error_status(event.status, event.message, effects)
                else:
                    self._held_status = event.status
            else:
                self._on_status(event, effects)
        elif isinstance(event, SandboxIdAssigned):
            if self.phase is Phase.SETUP and not self.attach:
                self.sandbox_id = event.sandbox_id
                self.sandbox_token = event.sandbox_token
        elif isinstance(event, OutputChunk):
            self._on_output(event, effects)
        return effects

    def _flush_held(self, effects: list[Effect]) -> None:
        if self._held_status is not None:
            status, self._held_status = self._held_status, None
            self._on_error_status(status, None, effects)

    def _on_status(self, ev: StatusUpdate, effects: list[Effect]) -> None:
        status = ev.status
        if self.phase is Phase.SETUP:
            if status == "SANDBOX_RUNNING":
                self.phase = Phase.OPEN
                effects.append(Ready(self.sandbox_id, self.sandbox_token))
            return
        if self.phase is Phase.REATTACHING:
            if status == "SANDBOX_RUNNING":
                self.phase = Phase.OPEN
                effects.append(Reattached())
            return
        if self.phase is not Phase.OPEN:
            return

        if status == "SANDBOX_EXECUTION_RUNNING":
            if self._exec_pending is not None and self._execution is None:
                execution_id, binary = self._exec_pending
                self._exec_pending = None
                self._execution = _Execution(execution_id, binary)
                self._stale_stdin = 0
                self._stdin_this_execution = 0
                effects.append(ExecStarted(execution_id))
            # Else: the resume marker after a reconnect. Nothing to do.
        elif status == "SANDBOX_EXECUTION_DONE":
            execution = self._execution
            if execution is None:
                return
            for stream, rest in execution.flush():
                effects.append(OutputReceived(execution.id, stream, rest))
            self._execution = None
            self._stale_stdin = self._stdin_this_execution
            self._stdin_this_execution = 0
            effects.append(
                ExecDone(execution.id, ev.exit_code, ev.signal, ev.reason, ev.duration_ms)
            )
        elif status == "SANDBOX_EXECUTION_FORCE_KILLED":
            self._finish_op(Op.KILL_PROCESS, effects)
        elif status == "SANDBOX_FILESYSTEM_SNAPSHOT_CREATED":
            self._finish_op(Op.SNAPSHOT, effects)
        elif status == "SANDBOX_CHECKPOINTED":
            self.checkpointed = True
            if Op.CHECKPOINT in self._ops:
                self._closing_by_request = True
                self._finish_op(Op.CHECKPOINT, effects)
            else:
                self._final = SandboxConnectionError(
                    "the server checkpointed the sandbox and closed the connection; "
                    "attach to it to continue",
                    status=status,
                )
        elif status == "SANDBOX_KILLED":
            self.terminated = True
            if Op.TERMINATE in self._ops:
                self._finish_op(Op.TERMINATE, effects)
            else:
                self._final = SandboxConnectionError(
                    "the server killed the sandbox (idle timeout or shutdown)", status=status
                )
        elif status == "SANDBOX_CHECKPOINTING" and Op.CHECKPOINT not in self._ops:
            pass  # an automatic checkpoint (idle timeout); its CHECKPOINTED is final
        # Every other status (progress, locks, unknown) changes nothing here.

    def _finish_op(self, op: Op, effects: list[Effect]) -> None:
        if op in self._ops:
            self._ops.discard(op)
            effects.append(OpDone(op))

    def _fail_op(self, op: Op, error: SandboxError, effects: list[Effect]) -> bool:
        if op in self._ops:
            self._ops.discard(op)
            if op is Op.TERMINATE:
                self._closing_by_request = False
            effects.append(OpFailed(op, error))
            return True
        return False

    def _on_error_status(self, status: str, message: str | None, effects: list[Effect]) -> None:
        error = error_from_status(status, message)
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

        if status in (
            "SANDBOX_EXECUTION_ERROR",
            "SANDBOX_EXECUTION_UNSUPPORTED_LANGUAGE_ERROR",
        ):
            if status == "SANDBOX_EXECUTION_ERROR" and self._stale_stdin > 0:
                # The answer to a stdin frame that reached the server after the last
                # execution ended (see ``_stale_stdin``).
                self._stale_stdin -= 1
                logger.debug("ignoring a late stdin error: %s", error.message)
                return
            if self._exec_pending is not None:
                self._exec_pending = None
                self._stale_stdin = 0
                effects.append(ExecFailed(error))
                return
            effects.append(Notice(error))
        elif status == "SANDBOX_EXECUTION_FORCE_KILL_ERROR":
            if not self._fail_op(Op.KILL_PROCESS, error, effects):
                effects.append(Notice(error))
        elif status == "SANDBOX_EXECUTION_IN_PROGRESS_ERROR":
            if not self._fail_op(Op.CHECKPOINT, error, effects):
                effects.append(Notice(error))
        elif status == "SANDBOX_CHECKPOINT_ERROR":
            # Either the server closes with 4000 next (checkpointing impossible), or the
            # session goes on (refused up front); see ``_checkpoint_error``.
            self._checkpoint_error = error
            if not self._fail_op(Op.CHECKPOINT, error, effects):
                effects.append(Notice(error))
        elif status == "SANDBOX_FILESYSTEM_SNAPSHOT_ERROR":
            if not self._fail_op(Op.SNAPSHOT, error, effects):
                effects.append(Notice(error))
        elif status == "SANDBOX_KILL_ERROR":
            if not self._fail_op(Op.TERMINATE, error, effects):
                effects.append(Notice(error))
        elif status in (
            "SANDBOX_NOT_FOUND",
            "SANDBOX_IN_USE",
            "SANDBOX_PERMISSION_DENIAL_ERROR",
            "SANDBOX_CREATION_ERROR",
            "SANDBOX_RESTORE_ERROR",
        ):
            # Setup errors in an open session: the server is ending it.
            self._final = error
            effects.append(Notice(error))
        else:
            # SANDBOX_ERROR, SANDBOX_STDIN_ERROR, lock errors, ...: reported, the
            # session goes on. A generic error is the best answer a waiting exec gets.
            if status == "SANDBOX_ERROR" and self._exec_pending is not None:
                self._exec_pending = None
                effects.append(ExecFailed(error))
                return
            effects.append(Notice(error))

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

    def _on_output(self, chunk: OutputChunk, effects: list[Effect]) -> None:
        execution = self._execution
        if execution is None and self._exec_pending is not None and self.phase is Phase.OPEN:
            # Output before EXECUTION_RUNNING (e.g. after a reconnect whose execution
            # ended while we were away: the kept output comes without a RUNNING).
            execution_id, binary = self._exec_pending
            self._exec_pending = None
            execution = self._execution = _Execution(execution_id, binary)
            effects.append(ExecStarted(execution_id))
        if execution is None:
            logger.debug("ignoring output with no execution running")
            return
        data = execution.convert(chunk)
        if data:
            effects.append(OutputReceived(execution.id, chunk.stream, data))

    # ------------------------------------------------------------- closing

    def connection_closed(
        self, code: int | None, reason: str = "", *, close_frame_received: bool = True
    ) -> list[Effect]:
        """The socket closed. ``code`` is the server's close code, ``None`` if none came."""
        effects: list[Effect] = []
        self._flush_held(effects)
        self._echo_message = None
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
            # The answers to these requests may have been lost with the connection.
            for op in sorted(self._ops, key=lambda o: o.value):
                effects.append(
                    OpFailed(
                        op,
                        SandboxConnectionError(
                            f"the connection dropped while waiting for the answer to "
                            f"{op.value}; its outcome is unknown",
                            close_code=code,
                        ),
                    )
                )
            self._ops.clear()
            effects.append(Reconnect(described))
            return effects

        self.phase = Phase.CLOSED
        if self.terminated:
            error: SandboxError = SandboxConnectionError(
                "the sandbox was terminated", status="SANDBOX_KILLED", close_code=code
            )
        elif self.checkpointed:
            error = SandboxConnectionError(
                "the sandbox was checkpointed; attach to it to continue",
                status="SANDBOX_CHECKPOINTED",
                close_code=code,
            )
        elif self._final is not None:
            error = self._final
            if isinstance(error, SandboxConnectionError):
                error.close_code = code
        else:
            error = SandboxConnectionError(
                f"the server closed the connection ({described})", close_code=code
            )
        self._fail_everything(error, effects)
        self._closed_emitted = True
        effects.append(Closed(error, terminated=self.terminated, checkpointed=self.checkpointed))
        return effects

    def connection_confirmed(self) -> None:
        """The server answered a ping after a checkpoint error: it kept the session."""
        self._checkpoint_error = None

    @property
    def checkpoint_error_unsettled(self) -> bool:
        """A checkpoint error came and it is not known yet whether the server closes."""
        return self._checkpoint_error is not None and self.phase is Phase.OPEN

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
        for op in sorted(self._ops, key=lambda o: o.value):
            effects.append(OpFailed(op, error))
        self._ops.clear()
        if self._exec_pending is not None:
            self._exec_pending = None
            effects.append(ExecFailed(error))
        self._execution = None


def _describe_close(code: int | None, reason: str, received: bool) -> str:
    if not received or code is None:
        return "no close frame: the connection dropped"
    if reason:
        return f"close code {code}: {reason}"
    return f"close code {code}"
