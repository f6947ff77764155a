"""Plain data the API hands out: how a process ended (``ExecutionResult``), what
``Sandbox.run()`` returns (``RunResult``), and a row of ``Sandbox.list_processes()``
(``ProcessInfo``). No behaviour, no I/O."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExecutionResult:
    """How a process ended (``SANDBOX_EXECUTION_DONE``)."""

    exit_code: int
    """The exit status; ``128 + N`` when signal N ended it; ``-1`` when the server did not
    say (a server without the protocol additions)."""
    signal: int | None
    reason: str
    """``"exited"``, ``"signaled"``, ``"killed"``, ``"timeout"``, ``"output_limit"``,
    ``"sandbox_lost"``, or ``"unknown"`` when the server did not say."""
    duration_ms: int | None


@dataclass(frozen=True)
class RunResult:
    """What ``Sandbox.run()`` returns. A non-zero ``exit_code`` is a result, not an error."""

    stdout: str
    stderr: str
    exit_code: int
    reason: str
    signal: int | None = None
    duration_ms: int | None = None


@dataclass(frozen=True)
class ProcessInfo:
    """One process of the sandbox, as ``Sandbox.list_processes()`` reports it."""

    process_id: int
    """The server's handle: ``Sandbox.attach_process(process_id)`` follows it."""
    request_id: str | None
    """The id of the request that started it (``None`` for one started without an id)."""
    kind: str
    """``"exec"`` (later also ``"cell"`` and ``"terminal"``)."""
    language: str | None
    running: bool
    started_unix_ms: int | None
