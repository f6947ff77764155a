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
    ├── SandboxStateError
    └── SandboxFileError            (``code``: not_found, is_a_directory, ...)
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
    SandboxFileError,
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
from ._files import Files
from ._process import OutputStream, SandboxProcess
from ._reconnect import ReconnectOptions
from ._results import (
    ExecutionResult,
    FileEntry,
    ProcessInfo,
    RunResult,
    SandboxInfo,
    SandboxList,
)
from ._sandbox import Sandbox, SandboxState
from ._sync import SyncFiles, SyncOutputStream, SyncProcess, SyncSandbox, SyncTerminal
from ._terminal import Terminal
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
    "FileEntry",
    "Files",
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
    "SandboxFileError",
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
    "SyncFiles",
    "SyncOutputStream",
    "SyncProcess",
    "SyncSandbox",
    "SyncTerminal",
    "Terminal",
    "Transport",
    "WebSocketTransport",
    "__version__",
]
