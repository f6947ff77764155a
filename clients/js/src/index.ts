/**
 * Cloud Run Sandbox client: the public surface. Everything importable is listed here; modules
 * under `internal/` are not part of the API.
 */

export {
  Sandbox,
  type AttachOptions,
  type ConnectionOptions,
  type CreateOptions,
  type ExecOptions,
  type Language,
  type ReconnectOptions,
  type RunResult,
  type SandboxState,
  type WebSocketConstructor,
  type WebSocketLike,
} from './sandbox.js';
export { OutputStream, SandboxProcess, type ExecutionResult } from './process.js';
export {
  ERROR_CLASS_BY_STATUS,
  SandboxAuthenticationError,
  SandboxCheckpointError,
  SandboxConnectionError,
  SandboxCreationError,
  SandboxError,
  SandboxExecutionError,
  SandboxInUseError,
  SandboxNotFoundError,
  SandboxPermissionError,
  SandboxSnapshotError,
  SandboxStateError,
  type SandboxAuthenticationErrorOptions,
  type SandboxConnectionErrorOptions,
  type SandboxErrorOptions,
} from './errors.js';
