"""Python client for Cloud Run Sandbox: run untrusted Python and Bash in gVisor sandboxes.

Quick start::

    from codesandbox import Sandbox

    sandbox = await Sandbox.create("wss://<service>")
    process = await sandbox.exec("echo 'Hello from the sandbox!'", "bash")
    stdout = await process.stdout.read_all()
    await sandbox.terminate()

Without asyncio (scripts, notebooks): ``SyncSandbox`` has the same methods.

Exceptions (all from ``SandboxError``; the table from server statuses to classes is
``STATUS_ERRORS``, the same as the TypeScript client's: clients/errors.json)::

    SandboxError
    ├── SandboxConnectionError      (also a builtin ConnectionError)
    │   └── SandboxTimeoutError     (also a builtin TimeoutError)
    ├── SandboxAuthenticationError  (HTTP 401/403: no, or a wrong, API key / identity token)
    ├── SandboxCreationError
    ├── SandboxExecutionError
    │   └── SandboxUnsupportedLanguageError
    ├── SandboxCheckpointError
    │   └── SandboxRestoreError
    ├── SandboxSnapshotError
    ├── SandboxPermissionError
    ├── SandboxNotFoundError
    ├── SandboxInUseError
    ├── SandboxRequestError
    └── SandboxStateError
"""

from ._code import CodeContext, Execution, ExecutionError, Logs, Result
from ._errors import (
    STATUS_ERRORS,
    SandboxAuthenticationError,
    SandboxCheckpointError,
    SandboxConnectionError,
    SandboxCreationError,
    SandboxError,
    SandboxExecutionError,
    SandboxInUseError,
    SandboxNotFoundError,
    SandboxPermissionError,
    SandboxRequestError,
    SandboxRestoreError,
    SandboxSnapshotError,
    SandboxStateError,
    SandboxTimeoutError,
    SandboxUnsupportedLanguageError,
)
from ._process import OutputStream, SandboxProcess
from ._reconnect import ReconnectOptions
from ._results import ExecutionResult, ProcessInfo, RunResult, SandboxInfo, SandboxList
from ._sandbox import Sandbox, SandboxState
from ._sync import SyncOutputStream, SyncProcess, SyncSandbox
from ._transport import Connection, ConnectionClosed, Transport, WebSocketTransport

__version__ = "0.2.0"

__all__ = [
    "STATUS_ERRORS",
    "CodeContext",
    "Connection",
    "ConnectionClosed",
    "Execution",
    "ExecutionError",
    "ExecutionResult",
    "Logs",
    "OutputStream",
    "ProcessInfo",
    "ReconnectOptions",
    "Result",
    "RunResult",
    "Sandbox",
    "SandboxAuthenticationError",
    "SandboxCheckpointError",
    "SandboxConnectionError",
    "SandboxCreationError",
    "SandboxError",
    "SandboxExecutionError",
    "SandboxInUseError",
    "SandboxInfo",
    "SandboxList",
    "SandboxNotFoundError",
    "SandboxPermissionError",
    "SandboxProcess",
    "SandboxRequestError",
    "SandboxRestoreError",
    "SandboxSnapshotError",
    "SandboxState",
    "SandboxStateError",
    "SandboxTimeoutError",
    "SandboxUnsupportedLanguageError",
    "SyncOutputStream",
    "SyncProcess",
    "SyncSandbox",
    "Transport",
    "WebSocketTransport",
    "__version__",
]
