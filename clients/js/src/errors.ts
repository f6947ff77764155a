/**
 * Errors raised by the client. Every error the library throws is a `SandboxError`:
 *
 * ```text
 * SandboxError                       any failure of the service (never the user's code failing)
 * ├── SandboxConnectionError         the socket could not be opened, or closed under a pending call
 * ├── SandboxAuthenticationError     the upgrade was refused with HTTP 401/403 (API key, identity token)
 * ├── SandboxCreationError           SANDBOX_CREATION_ERROR (bad options, unknown snapshot, limits)
 * ├── SandboxExecutionError          an execution could not start, or stdin/kill failed
 * ├── SandboxCheckpointError         checkpoint or restore failed (or checkpointing is not enabled)
 * ├── SandboxSnapshotError           filesystem snapshot failed (or snapshots are not enabled)
 * ├── SandboxPermissionError         wrong or missing sandbox token on attach
 * ├── SandboxNotFoundError           no sandbox (live or checkpointed) has that id
 * ├── SandboxInUseError              another client is attached to that sandbox
 * └── SandboxStateError              the call is not allowed in the sandbox's or process's state
 * ```
 *
 * A process that exits non-zero is *not* an error: `process.wait()` resolves to its exit code.
 *
 * Errors that come from the server carry its `status` string and its human-readable `message`
 * verbatim. The one mapping from status to class is `ERROR_CLASS_BY_STATUS` below.
 */

export interface SandboxErrorOptions {
  /** The server's `status` string (e.g. `SANDBOX_NOT_FOUND`), when the error came from the server. */
  status?: string | undefined;
  /** The underlying cause (another error, a socket error...). */
  cause?: unknown;
}

export class SandboxError extends Error {
  /** The server's status string, or `undefined` for errors raised by the client itself. */
  readonly status: string | undefined;

  constructor(message: string, options: SandboxErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.status = options.status;
  }
}

export interface SandboxConnectionErrorOptions extends SandboxErrorOptions {
  /** WebSocket close code, when the socket was closed. */
  closeCode?: number | undefined;
  /** WebSocket close reason, when the socket was closed. */
  closeReason?: string | undefined;
}

export class SandboxConnectionError extends SandboxError {
  readonly closeCode: number | undefined;
  readonly closeReason: string | undefined;

  constructor(message: string, options: SandboxConnectionErrorOptions = {}) {
    super(message, options);
    this.closeCode = options.closeCode;
    this.closeReason = options.closeReason;
  }
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
export class SandboxAuthenticationError extends SandboxError {
  readonly httpStatus: number;

  constructor(message: string, options: SandboxAuthenticationErrorOptions) {
    super(message, options);
    this.httpStatus = options.httpStatus;
  }
}

export class SandboxCreationError extends SandboxError {}
export class SandboxExecutionError extends SandboxError {}
export class SandboxCheckpointError extends SandboxError {}
export class SandboxSnapshotError extends SandboxError {}
export class SandboxPermissionError extends SandboxError {}
export class SandboxNotFoundError extends SandboxError {}
export class SandboxInUseError extends SandboxError {}
export class SandboxStateError extends SandboxError {}

type SandboxErrorClass = new (message: string, options?: SandboxErrorOptions) => SandboxError;

/**
 * The one table from the server's error statuses to error classes. Statuses not listed here
 * (including ones a newer server may add) are not errors for this client and are ignored.
 */
export const ERROR_CLASS_BY_STATUS: Readonly<Record<string, SandboxErrorClass>> = Object.freeze({
  SANDBOX_ERROR: SandboxError,
  SANDBOX_CREATION_ERROR: SandboxCreationError,
  SANDBOX_NOT_FOUND: SandboxNotFoundError,
  SANDBOX_IN_USE: SandboxInUseError,
  SANDBOX_PERMISSION_DENIAL_ERROR: SandboxPermissionError,
  SANDBOX_EXECUTION_ERROR: SandboxExecutionError,
  SANDBOX_EXECUTION_UNSUPPORTED_LANGUAGE_ERROR: SandboxExecutionError,
  SANDBOX_EXECUTION_FORCE_KILL_ERROR: SandboxExecutionError,
  SANDBOX_STDIN_ERROR: SandboxExecutionError,
  // Sent when a checkpoint is asked for while an execution runs.
  SANDBOX_EXECUTION_IN_PROGRESS_ERROR: SandboxCheckpointError,
  SANDBOX_CHECKPOINT_ERROR: SandboxCheckpointError,
  SANDBOX_RESTORE_ERROR: SandboxCheckpointError,
  SANDBOX_FILESYSTEM_SNAPSHOT_ERROR: SandboxSnapshotError,
  SANDBOX_KILL_ERROR: SandboxError,
  SANDBOX_LOCK_RENEWAL_ERROR: SandboxError,
});

/** True when `status` is an error status this client knows. */
export function isErrorStatus(status: string): boolean {
  return Object.prototype.hasOwnProperty.call(ERROR_CLASS_BY_STATUS, status);
}

/** Builds the error for a server error status, carrying the server's message and status. */
export function errorFromStatus(status: string, message: string): SandboxError {
  const cls = isErrorStatus(status) ? ERROR_CLASS_BY_STATUS[status] : undefined;
  return new (cls ?? SandboxError)(message, { status });
}
