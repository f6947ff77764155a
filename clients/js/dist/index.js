/**
 * Cloud Run Sandbox client: the public surface, the same names as the Python client's
 * `codesandbox` (camelCase). Everything importable is listed here; modules under `internal/` are
 * not part of the API.
 */
export { Sandbox, } from './sandbox.js';
export { OutputStream, SandboxProcess } from './process.js';
export { Execution, Result, } from './code.js';
export { STATUS_ERRORS, SandboxAuthenticationError, SandboxCheckpointError, SandboxConnectionError, SandboxCreationError, SandboxError, SandboxExecutionError, SandboxInUseError, SandboxNotFoundError, SandboxPermissionError, SandboxRequestError, SandboxRestoreError, SandboxSnapshotError, SandboxStateError, SandboxTimeoutError, SandboxUnsupportedLanguageError, } from './errors.js';
export { WebSocketTransport, } from './internal/transport.js';
//# sourceMappingURL=index.js.map