"""Python client for Cloud Run Sandbox: run untrusted Python and Bash in gVisor sandboxes.

Quick start::

    from codesandbox import Sandbox

    sandbox = await Sandbox.create("wss://<service>")
    process = await sandbox.exec("echo 'Hello from the sandbox!'", "bash")
    stdout = await process.stdout.read_all()
    await sandbox.terminate()

Exceptions (all from ``SandboxError``)::

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
    └── SandboxStateError
"""

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
    SandboxRestoreError,
    SandboxSnapshotError,
    SandboxStateError,
    SandboxTimeoutError,
    SandboxUnsupportedLanguageError,
)
from ._process import OutputStream, RunResult, SandboxProcess
from ._reconnect import ReconnectOptions
from ._sandbox import Sandbox, SandboxState

__version__ = "0.1.0"

__all__ = [
    "STATUS_ERRORS",
    "OutputStream",
    "ReconnectOptions",
    "RunResult",
    "Sandbox",
    "SandboxAuthenticationError",
    "SandboxCheckpointError",
    "SandboxConnectionError",
    "SandboxCreationError",
    "SandboxError",
    "SandboxExecutionError",
    "SandboxInUseError",
    "SandboxNotFoundError",
    "SandboxPermissionError",
    "SandboxProcess",
    "SandboxRestoreError",
    "SandboxSnapshotError",
    "SandboxState",
    "SandboxStateError",
    "SandboxTimeoutError",
    "SandboxUnsupportedLanguageError",
    "__version__",
]
