"""The exception tree, and the one table that maps the server's statuses onto it.

Every exception the library raises on purpose is a ``SandboxError``::

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
    └── SandboxFileError            (``code``: not_found, is_a_directory, permission_denied, ...)

The user's code failing is not an exception: a non-zero exit code is data
(``SandboxProcess.exit_code``). An exception means the service, the connection or
the way the library was used went wrong.
"""

from __future__ import annotations


class SandboxError(Exception):
    """Root of every error raised by this library.

    ``message`` is the server's human-readable text when the server reported the
    error (else ours), ``status`` the server's status string (``None`` when the error
    was detected client-side).
    """

    def __init__(self, message: str, *, status: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        if self.status:
            return f"{self.message} [{self.status}]"
        return self.message


class SandboxConnectionError(SandboxError, ConnectionError):
    """The connection could not be opened, or was lost and not recovered.

    Raised by every pending wait (``wait()``, ``read_all()``, operations) when the
    server closes the socket without finishing what was asked.
    """

    def __init__(
        self,
        message: str,
        *,
        status: str | None = None,
        close_code: int | None = None,
    ) -> None:
        super().__init__(message, status=status)
        self.close_code = close_code


class SandboxTimeoutError(SandboxConnectionError, TimeoutError):
    """The server did not answer within the configured time."""


class SandboxAuthenticationError(SandboxError):
    """The server (or Cloud Run's IAM in front of it) refused the connection: HTTP 401
    (no credentials, or wrong ones: pass ``api_key=`` or an ``Authorization`` header) or
    403 (an identity that may not invoke the service). Retrying with the same credentials
    does not help, so automatic re-attaching stops at it.

    ``http_status`` is the HTTP status; ``message`` includes the server's explanation.
    """

    def __init__(self, message: str, *, http_status: int) -> None:
        super().__init__(message)
        self.http_status = http_status


class SandboxCreationError(SandboxError):
    """The server could not create the sandbox (``SANDBOX_CREATION_ERROR``)."""


class SandboxExecutionError(SandboxError):
    """The server refused or failed an execution request, stdin write or kill."""


class SandboxUnsupportedLanguageError(SandboxExecutionError):
    """The language is not one the server runs."""


class SandboxCheckpointError(SandboxError):
    """Checkpointing failed (or is not enabled for this sandbox or server)."""


class SandboxRestoreError(SandboxCheckpointError):
    """Restoring a checkpointed sandbox on attach failed."""


class SandboxSnapshotError(SandboxError):
    """A filesystem snapshot could not be created (or snapshots are not enabled)."""


class SandboxPermissionError(SandboxError):
    """The sandbox token was wrong or missing."""


class SandboxNotFoundError(SandboxError):
    """No live or checkpointed sandbox has that id."""


class SandboxInUseError(SandboxError):
    """Another client is attached to the sandbox."""


class SandboxRequestError(SandboxError):
    """The server refused a request as malformed (``SANDBOX_REQUEST_ERROR``), naming the
    offending field or value."""


class SandboxStateError(SandboxError):
    """The operation is not allowed in the sandbox's or process's current state.

    Raised client-side (e.g. a second ``exec`` while one runs on a server that runs one
    at a time, writing to the stdin of a finished process, using a terminated sandbox, a
    request the server does not support) and for the server's
    ``SANDBOX_EXECUTION_IN_PROGRESS_ERROR``.
    """


class SandboxFileError(SandboxError):
    """A file operation failed (``SANDBOX_FILE_ERROR``, or an HTTP error of the files
    routes). ``code`` says why, as docs/protocol.md lists: ``not_found``,
    ``is_a_directory``, ``not_a_directory``, ``permission_denied``, ``no_space``,
    ``path_too_long``, ``file_too_large``, ``already_exists``, ``invalid_path``, ``io``.
    """

    def __init__(self, message: str, *, status: str | None = None, code: str = "io") -> None:
        super().__init__(message, status=status)
        self.code = code


# The one mapping from the server's error statuses to exception classes, the same as the
# TypeScript client's (both are checked against clients/errors.json). Statuses not listed
# here (including ones added by a newer server) are not errors to this client.
STATUS_ERRORS: dict[str, type[SandboxError]] = {
    "SANDBOX_ERROR": SandboxError,
    "SANDBOX_CREATION_ERROR": SandboxCreationError,
    "SANDBOX_NOT_FOUND": SandboxNotFoundError,
    "SANDBOX_IN_USE": SandboxInUseError,
    "SANDBOX_PERMISSION_DENIAL_ERROR": SandboxPermissionError,
    "SANDBOX_EXECUTION_ERROR": SandboxExecutionError,
    "SANDBOX_EXECUTION_UNSUPPORTED_LANGUAGE_ERROR": SandboxUnsupportedLanguageError,
    "SANDBOX_EXECUTION_IN_PROGRESS_ERROR": SandboxStateError,
    "SANDBOX_EXECUTION_FORCE_KILL_ERROR": SandboxExecutionError,
    "SANDBOX_STDIN_ERROR": SandboxExecutionError,
    "SANDBOX_CHECKPOINT_ERROR": SandboxCheckpointError,
    "SANDBOX_RESTORE_ERROR": SandboxRestoreError,
    "SANDBOX_FILESYSTEM_SNAPSHOT_ERROR": SandboxSnapshotError,
    "SANDBOX_KILL_ERROR": SandboxError,
    "SANDBOX_LOCK_RENEWAL_ERROR": SandboxError,
    "SANDBOX_REQUEST_ERROR": SandboxRequestError,
    "SANDBOX_FILE_ERROR": SandboxFileError,
    # Code contexts are not in this client yet: until they are, the root class.
    "SANDBOX_CODE_CONTEXT_ERROR": SandboxError,
}


def is_error_status(status: str) -> bool:
    return status in STATUS_ERRORS


def error_from_status(status: str, message: str | None) -> SandboxError:
    """Build the exception for an error status; ``message`` is the server's text."""
    cls = STATUS_ERRORS.get(status, SandboxError)
    text = message or _DEFAULT_MESSAGES.get(status) or f"the server reported {status}"
    return cls(text, status=status)


# Used only when the server sent no message (a server that speaks just the core
# protocol sends none with SANDBOX_NOT_FOUND / SANDBOX_IN_USE).
_DEFAULT_MESSAGES: dict[str, str] = {
    "SANDBOX_NOT_FOUND": "sandbox not found",
    "SANDBOX_IN_USE": "sandbox is in use by another client",
    "SANDBOX_PERMISSION_DENIAL_ERROR": "permission denied: wrong or missing sandbox token",
}
