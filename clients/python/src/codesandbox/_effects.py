"""What the protocol core tells the I/O layer: one dataclass per kind of fact ("the
sandbox is ready", "request 5 failed with this error", "output arrived for process 1",
"reconnect now"). ``ClientProtocol`` returns lists of these; ``Sandbox`` applies them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from ._errors import SandboxError
from ._frames import StreamName
from ._results import ExecutionResult


@dataclass(frozen=True)
class Ready:
    """The sandbox is running (``/create`` or ``/attach`` finished)."""

    sandbox_id: str | None
    sandbox_token: str | None
    protocol: int


@dataclass(frozen=True)
class SetupFailed:
    error: SandboxError


@dataclass(frozen=True)
class Reattached:
    """A re-attach after a drop succeeded; the I/O layer sends ``reconnect`` and its queue."""

    protocol: int


@dataclass(frozen=True)
class ReattachFailed:
    error: SandboxError
    retryable: bool


@dataclass(frozen=True)
class Reconnect:
    """The connection dropped; the I/O layer should re-attach (``auto_reconnect``)."""

    reason: str


@dataclass(frozen=True)
class StatusSeen:
    """Every ``status_update``, in order (for ``on_status``)."""

    status: str
    message: str | None


@dataclass(frozen=True)
class ProcessStarted:
    """A process handle exists now (its exec runs, or ``attach_process`` succeeded)."""

    key: str
    process_id: int | None


@dataclass(frozen=True)
class RequestDone:
    """The request succeeded. ``value``: the process key (exec, attach_process), the
    processes (list_processes), the idle timeout in effect (set_idle_timeout), else None."""

    request_id: str
    value: Any = None


@dataclass(frozen=True)
class RequestFailed:
    """``session_ends``: the server closes the connection after this error (a checkpoint
    that is not possible at all); the I/O layer reports it once the close arrived."""

    request_id: str
    error: SandboxError
    session_ends: bool = False


@dataclass(frozen=True)
class OutputReceived:
    key: str
    stream: StreamName
    data: str | bytes


@dataclass(frozen=True)
class ProcessEnded:
    key: str
    result: ExecutionResult


@dataclass(frozen=True)
class CellEventReceived:
    """A code cell's ``result`` or ``execution_error`` (the frame as sent)."""

    key: str
    frame: dict[str, Any]


@dataclass(frozen=True)
class StdinAcknowledged:
    """The server consumed more of the process's stdin: writers may have room now."""

    key: str


@dataclass(frozen=True)
class StdinFailed:
    """The server refused stdin for the process: its writers must raise ``error``."""

    key: str
    error: SandboxError


@dataclass(frozen=True)
class SendFrame:
    """A frame the protocol itself sends (the kill of an execution nobody waits for)."""

    frame: str


@dataclass(frozen=True)
class Notice:
    """An error the server reported that no pending request is waiting for."""

    error: SandboxError


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
    Reconnect,
    StatusSeen,
    ProcessStarted,
    RequestDone,
    RequestFailed,
    OutputReceived,
    ProcessEnded,
    CellEventReceived,
    StdinAcknowledged,
    StdinFailed,
    SendFrame,
    Notice,
    Closed,
]
