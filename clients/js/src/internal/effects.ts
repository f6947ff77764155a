/**
 * What the protocol core tells the I/O layer: one variant per kind of fact ("the sandbox is
 * ready", "request 5 failed with this error", "output arrived for process 1", "reconnect now").
 * `ClientProtocol` returns arrays of these; `Sandbox` applies them.
 */

import type { SandboxError } from '../errors.js';
import type { ExecutionResult, ProcessInfo } from '../results.js';
import type { StreamName } from './frames.js';

export type Effect =
  /** The sandbox is running (`/create` or `/attach` finished). */
  | { type: 'Ready'; sandboxId: string | undefined; sandboxToken: string | undefined; protocol: number }
  | { type: 'SetupFailed'; error: SandboxError }
  /** A re-attach after a drop succeeded; the I/O layer sends `reconnect` and its queue. */
  | { type: 'Reattached'; protocol: number }
  | { type: 'ReattachFailed'; error: SandboxError; retryable: boolean }
  /** The connection dropped; the I/O layer should re-attach (`autoReconnect`). */
  | { type: 'Reconnect'; reason: string }
  /** Every `status_update`, in order (for `onStatus`). */
  | { type: 'StatusSeen'; status: string; message: string | undefined }
  /** A process handle exists now (its exec runs, or `attach_process` succeeded). */
  | { type: 'ProcessStarted'; key: string; processId: number | undefined }
  /**
   * The request succeeded. `value`: the process key (exec, attach_process), the processes
   * (list_processes), the idle timeout in effect (set_idle_timeout), else undefined.
   */
  | {
      type: 'RequestDone';
      requestId: string;
      /** ... or the reply frame (code context actions). */
      value?: string | ProcessInfo[] | number | Record<string, unknown> | undefined;
    }
  /**
   * `sessionEnds`: the server closes the connection after this error (a checkpoint that is not
   * possible at all); the I/O layer reports it once the close arrived.
   */
  | { type: 'RequestFailed'; requestId: string; error: SandboxError; sessionEnds: boolean }
  | { type: 'OutputReceived'; key: string; stream: StreamName; data: string | Uint8Array }
  | { type: 'ProcessEnded'; key: string; result: ExecutionResult }
  /** A code cell's `result` or `execution_error` (the frame as sent). */
  | { type: 'CellEventReceived'; key: string; frame: Record<string, unknown> }
  /** The server consumed more of the process's stdin: writers may have room now. */
  | { type: 'StdinAcknowledged'; key: string }
  /** The server refused stdin for the process: its writers must reject with `error`. */
  | { type: 'StdinFailed'; key: string; error: SandboxError }
  /** A frame the protocol itself sends (the kill of an execution nobody waits for). */
  | { type: 'SendFrame'; frame: string }
  /** An error the server reported that no pending request is waiting for. */
  | { type: 'Notice'; error: SandboxError }
  /** The session is over. `error` is what every pending wait should reject with. */
  | { type: 'Closed'; error: SandboxError; terminated: boolean; checkpointed: boolean };
