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
export interface SandboxErrorOptions {
    /** The server's `status` string (e.g. `SANDBOX_NOT_FOUND`), when the server reported it. */
    status?: string | undefined;
    /** The underlying cause (another error, a socket error...). */
    cause?: unknown;
}
/** Root of every error raised by this library. */
export declare class SandboxError extends Error {
    /** The server's status string, or `undefined` for errors detected by the client itself. */
    readonly status: string | undefined;
    constructor(message: string, options?: SandboxErrorOptions);
}
export interface SandboxConnectionErrorOptions extends SandboxErrorOptions {
    /** WebSocket close code, when the server closed the connection (undefined: it dropped). */
    closeCode?: number | undefined;
    /** WebSocket close reason, when the server closed the connection. */
    closeReason?: string | undefined;
}
/**
 * The connection could not be opened, or was lost and not recovered: every pending wait
 * (`wait()`, `readAll()`, requests) rejects with it when the session ends without an answer.
 */
export declare class SandboxConnectionError extends SandboxError {
    closeCode: number | undefined;
    readonly closeReason: string | undefined;
    constructor(message: string, options?: SandboxConnectionErrorOptions);
}
/** The server did not answer within the configured time. */
export declare class SandboxTimeoutError extends SandboxConnectionError {
}
export interface SandboxAuthenticationErrorOptions extends SandboxErrorOptions {
    /** The HTTP status of the refusal: 401 or 403. */
    httpStatus: number;
}
/**
 * The server (or Cloud Run's IAM in front of it) refused the WebSocket upgrade: HTTP 401 (no, or a
 * wrong, API key or identity token: pass `apiKey` or an `Authorization` header) or 403 (an
 * identity that may not invoke the service). The same credentials would be refused again, so
 * automatic re-attaching stops at it.
 */
export declare class SandboxAuthenticationError extends SandboxError {
    readonly httpStatus: number;
    constructor(message: string, options: SandboxAuthenticationErrorOptions);
}
/** The server could not create the sandbox (`SANDBOX_CREATION_ERROR`). */
export declare class SandboxCreationError extends SandboxError {
}
/** The server refused or failed an execution request, stdin write or kill. */
export declare class SandboxExecutionError extends SandboxError {
}
/** The language is not one the server runs. */
export declare class SandboxUnsupportedLanguageError extends SandboxExecutionError {
}
/** Checkpointing failed (or is not enabled for this sandbox or server). */
export declare class SandboxCheckpointError extends SandboxError {
}
/** Restoring a checkpointed sandbox on attach failed. */
export declare class SandboxRestoreError extends SandboxCheckpointError {
}
/** A filesystem snapshot could not be created (or snapshots are not enabled). */
export declare class SandboxSnapshotError extends SandboxError {
}
/** The sandbox token was wrong or missing. */
export declare class SandboxPermissionError extends SandboxError {
}
/** No live or checkpointed sandbox has that id. */
export declare class SandboxNotFoundError extends SandboxError {
}
/** Another client is attached to the sandbox. */
export declare class SandboxInUseError extends SandboxError {
}
/** The server refused a request as malformed (`SANDBOX_REQUEST_ERROR`), naming the field. */
export declare class SandboxRequestError extends SandboxError {
}
/**
 * The operation is not allowed in the sandbox's or process's current state: raised by the
 * client (a second exec on a server that runs one at a time, stdin of an ended process, a
 * terminated sandbox, a request the server does not support) and for the server's
 * `SANDBOX_EXECUTION_IN_PROGRESS_ERROR`.
 */
export declare class SandboxStateError extends SandboxError {
}
export interface SandboxFileErrorOptions extends SandboxErrorOptions {
    code?: string | undefined;
}
/**
 * A file operation failed (`SANDBOX_FILE_ERROR`). `code` says why, as docs/protocol.md lists:
 * `not_found`, `is_a_directory`, `not_a_directory`, `permission_denied`, `no_space`,
 * `path_too_long`, `file_too_large`, `already_exists`, `invalid_path`, `io`.
 */
export declare class SandboxFileError extends SandboxError {
    code: string;
    constructor(message: string, options?: SandboxFileErrorOptions);
}
export type SandboxErrorClass = new (message: string, options?: SandboxErrorOptions) => SandboxError;
/**
 * The one table from the server's error statuses to error classes. Statuses not listed here
 * (including ones a newer server may add) are not errors to this client.
 */
export declare const STATUS_ERRORS: Readonly<Record<string, SandboxErrorClass>>;
/** True when `status` is an error status this client knows. */
export declare function isErrorStatus(status: string): boolean;
/** Builds the error for an error status; `message` is the server's text, if it sent one. */
export declare function errorFromStatus(status: string, message: string | undefined): SandboxError;
//# sourceMappingURL=errors.d.ts.map