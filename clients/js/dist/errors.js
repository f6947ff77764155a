/**
 * Errors raised by the client. Every error the library throws on purpose is a `SandboxError`:
 *
 * ```text
 * SandboxError
 * ├── SandboxConnectionError
 * │   └── SandboxTimeoutError
 * ├── SandboxAuthenticationError     (HTTP 401/403: no, or a wrong, API key / identity token)
 * ├── SandboxCreationError
 * ├── SandboxExecutionError
 * │   └── SandboxUnsupportedLanguageError
 * ├── SandboxCheckpointError
 * │   └── SandboxRestoreError
 * ├── SandboxSnapshotError
 * ├── SandboxPermissionError
 * ├── SandboxNotFoundError
 * ├── SandboxInUseError
 * ├── SandboxRequestError
 * ├── SandboxStateError
 * └── SandboxFileError               (code: not_found, is_a_directory, permission_denied, ...)
 * ```
 *
 * The user's code failing is not an error: a non-zero exit code is data (`process.wait()`
 * resolves to it). An error means the service, the connection or the way the library was used
 * went wrong. Errors the server reported carry its `status` and its human-readable `message`
 * verbatim. `STATUS_ERRORS` is the one table from status to class, the same as the Python
 * client's (both are checked against clients/errors.json).
 */
/** Root of every error raised by this library. */
export class SandboxError extends Error {
    /** The server's status string, or `undefined` for errors detected by the client itself. */
    status;
    constructor(message, options = {}) {
        super(message, options.cause === undefined ? undefined : { cause: options.cause });
        this.name = new.target.name;
        this.status = options.status;
    }
}
/**
 * The connection could not be opened, or was lost and not recovered: every pending wait
 * (`wait()`, `readAll()`, requests) rejects with it when the session ends without an answer.
 */
export class SandboxConnectionError extends SandboxError {
    closeCode;
    closeReason;
    constructor(message, options = {}) {
        super(message, options);
        this.closeCode = options.closeCode;
        this.closeReason = options.closeReason;
    }
}
/** The server did not answer within the configured time. */
export class SandboxTimeoutError extends SandboxConnectionError {
}
/**
 * The server (or Cloud Run's IAM in front of it) refused the WebSocket upgrade: HTTP 401 (no, or a
 * wrong, API key or identity token: pass `apiKey` or an `Authorization` header) or 403 (an
 * identity that may not invoke the service). The same credentials would be refused again, so
 * automatic re-attaching stops at it.
 */
export class SandboxAuthenticationError extends SandboxError {
    httpStatus;
    constructor(message, options) {
        super(message, options);
        this.httpStatus = options.httpStatus;
    }
}
/** The server could not create the sandbox (`SANDBOX_CREATION_ERROR`). */
export class SandboxCreationError extends SandboxError {
}
/** The server refused or failed an execution request, stdin write or kill. */
export class SandboxExecutionError extends SandboxError {
}
/** The language is not one the server runs. */
export class SandboxUnsupportedLanguageError extends SandboxExecutionError {
}
/** Checkpointing failed (or is not enabled for this sandbox or server). */
export class SandboxCheckpointError extends SandboxError {
}
/** Restoring a checkpointed sandbox on attach failed. */
export class SandboxRestoreError extends SandboxCheckpointError {
}
/** A filesystem snapshot could not be created (or snapshots are not enabled). */
export class SandboxSnapshotError extends SandboxError {
}
/** The sandbox token was wrong or missing. */
export class SandboxPermissionError extends SandboxError {
}
/** No live or checkpointed sandbox has that id. */
export class SandboxNotFoundError extends SandboxError {
}
/** Another client is attached to the sandbox. */
export class SandboxInUseError extends SandboxError {
}
/** The server refused a request as malformed (`SANDBOX_REQUEST_ERROR`), naming the field. */
export class SandboxRequestError extends SandboxError {
}
/**
 * The operation is not allowed in the sandbox's or process's current state: raised by the
 * client (a second exec on a server that runs one at a time, stdin of an ended process, a
 * terminated sandbox, a request the server does not support) and for the server's
 * `SANDBOX_EXECUTION_IN_PROGRESS_ERROR`.
 */
export class SandboxStateError extends SandboxError {
}
/**
 * A file operation failed (`SANDBOX_FILE_ERROR`). `code` says why, as docs/protocol.md lists:
 * `not_found`, `is_a_directory`, `not_a_directory`, `permission_denied`, `no_space`,
 * `path_too_long`, `file_too_large`, `already_exists`, `invalid_path`, `io`.
 */
export class SandboxFileError extends SandboxError {
    code;
    constructor(message, options = {}) {
        super(message, options);
        this.code = options.code ?? 'io';
    }
}
/**
 * The one table from the server's error statuses to error classes. Statuses not listed here
 * (including ones a newer server may add) are not errors to this client.
 */
export const STATUS_ERRORS = Object.freeze({
    SANDBOX_ERROR: SandboxError,
    SANDBOX_CREATION_ERROR: SandboxCreationError,
    SANDBOX_NOT_FOUND: SandboxNotFoundError,
    SANDBOX_IN_USE: SandboxInUseError,
    SANDBOX_PERMISSION_DENIAL_ERROR: SandboxPermissionError,
    SANDBOX_EXECUTION_ERROR: SandboxExecutionError,
    SANDBOX_EXECUTION_UNSUPPORTED_LANGUAGE_ERROR: SandboxUnsupportedLanguageError,
    SANDBOX_EXECUTION_IN_PROGRESS_ERROR: SandboxStateError,
    SANDBOX_EXECUTION_FORCE_KILL_ERROR: SandboxExecutionError,
    SANDBOX_STDIN_ERROR: SandboxExecutionError,
    SANDBOX_CHECKPOINT_ERROR: SandboxCheckpointError,
    SANDBOX_RESTORE_ERROR: SandboxRestoreError,
    SANDBOX_FILESYSTEM_SNAPSHOT_ERROR: SandboxSnapshotError,
    SANDBOX_KILL_ERROR: SandboxError,
    SANDBOX_LOCK_RENEWAL_ERROR: SandboxError,
    SANDBOX_REQUEST_ERROR: SandboxRequestError,
    SANDBOX_FILE_ERROR: SandboxFileError,
    // Code contexts are not in this client yet: until they are, the root class.
    SANDBOX_CODE_CONTEXT_ERROR: SandboxError,
});
// Used only when the server sent no message (a server that speaks just the core protocol
// sends none with SANDBOX_NOT_FOUND / SANDBOX_IN_USE).
const DEFAULT_MESSAGES = Object.freeze({
    SANDBOX_NOT_FOUND: 'sandbox not found',
    SANDBOX_IN_USE: 'sandbox is in use by another client',
    SANDBOX_PERMISSION_DENIAL_ERROR: 'permission denied: wrong or missing sandbox token',
});
/** True when `status` is an error status this client knows. */
export function isErrorStatus(status) {
    return Object.prototype.hasOwnProperty.call(STATUS_ERRORS, status);
}
/** Builds the error for an error status; `message` is the server's text, if it sent one. */
export function errorFromStatus(status, message) {
    const cls = isErrorStatus(status) ? STATUS_ERRORS[status] : undefined;
    const text = message !== undefined && message !== ''
        ? message
        : (Object.prototype.hasOwnProperty.call(DEFAULT_MESSAGES, status) ? DEFAULT_MESSAGES[status] : undefined) ??
            `the server reported ${status}`;
    return new (cls ?? SandboxError)(text, { status });
}
//# sourceMappingURL=errors.js.map