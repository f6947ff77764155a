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
    """``"exec"`` or ``"terminal"`` (later also ``"cell"``)."""
    language: str | None
    running: bool
    started_unix_ms: int | None


@dataclass(frozen=True)
class SandboxInfo:
    """One sandbox, as ``Sandbox.list()`` reports it (never its token)."""

    sandbox_id: str
    state: str
    """Live on the instance that answered: ``"creating"``, ``"restoring"``, ``"running"``,
    ``"checkpointing"``, ``"snapshotting"``, ``"moving"`` (being handed off), ``"ending"``.
    From the store (``checkpointed=True``): ``"checkpointed"``, or ``"running"`` when an
    instance runs it now."""
    labels: dict[str, str]
    checkpointed: bool
    """It has a checkpoint in the store (a live one was restored from one)."""
    handoff: bool
    """Created with ``enable_sandbox_handoff``."""
    age_secs: float | None = None
    """Since it was created or restored (live sandboxes only)."""
    idle_secs: float | None = None
    """Since its client's last message (live sandboxes only; 0 while a process runs)."""
    attached: bool | None = None
    """A client is connected to it (live sandboxes only)."""
    checkpointable: bool | None = None
    """Created with checkpointing (live sandboxes only)."""
    checkpoint_unix_ms: int | None = None
    """When its checkpoint was taken (the store's listing only)."""
    size_bytes: int | None = None
    """The size of its checkpoint (the store's listing only)."""


@dataclass(frozen=True)
class SandboxList:
    """What ``Sandbox.list()`` returns: one page."""

    sandboxes: list[SandboxInfo]
    next_after: str | None = None
    """The store's listing only: pass it as ``after`` for the next page (``None``: the end)."""


@dataclass(frozen=True)
class FileEntry:
    """A file or directory of the sandbox, as ``sandbox.files.list()`` / ``stat()`` report
    it (a symbolic link is described, not followed)."""

    name: str
    path: str
    """Absolute, symbolic links of its parents resolved."""
    type: str
    """``"file"``, ``"dir"``, ``"symlink"`` or ``"other"``."""
    size: int
    mode: int
    """Permission bits (e.g. ``0o644``)."""
    mtime_unix_ms: int
