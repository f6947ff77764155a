/**
 * Cloud Run Sandbox client: the public surface, the same names as the Python client's
 * `codesandbox` (camelCase). Everything importable is listed here; modules under `internal/` are
 * not part of the API.
 */
export { Sandbox, type AttachOptions, type AttachProcessOptions, type ConnectionOptions, type CreateOptions, type ExecOptions, type Language, type ListOptions, type ReconnectOptions, type RunOptions, type SandboxState, } from './sandbox.js';
export { OutputStream, SandboxProcess, type OutputCallback } from './process.js';
export { Execution, Result, type CodeContext, type ExecutionError, type Logs, type RunCodeOptions, } from './code.js';
export type { ExecutionResult, ProcessInfo, RunResult, SandboxInfo, SandboxList } from './results.js';
export { STATUS_ERRORS, SandboxAuthenticationError, SandboxCheckpointError, SandboxConnectionError, SandboxCreationError, SandboxError, SandboxExecutionError, SandboxInUseError, SandboxNotFoundError, SandboxPermissionError, SandboxRequestError, SandboxRestoreError, SandboxSnapshotError, SandboxStateError, SandboxTimeoutError, SandboxUnsupportedLanguageError, type SandboxAuthenticationErrorOptions, type SandboxConnectionErrorOptions, type SandboxErrorClass, type SandboxErrorOptions, } from './errors.js';
export { WebSocketTransport, type Connection, type ConnectionHandlers, type ConnectOptions, type Transport, type WebSocketConstructor, type WebSocketLike, } from './internal/transport.js';
//# sourceMappingURL=index.d.ts.map