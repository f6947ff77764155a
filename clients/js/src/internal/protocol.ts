/**
 * The client side of the protocol as a sans-IO state machine.
 *
 * `ProtocolMachine` never touches a socket or a timer. The caller feeds it what happened
 * (`receive(text)` for a frame, `connectionClosed(code, reason)` when the socket closed) and asks
 * it for the frames of what it wants to do (`execute(...)`, `killProcess(...)`, ...). It answers
 * with plain `ProtocolEvent`s. That keeps every protocol flow testable against recorded frame
 * sequences (test/fixtures/*.json) without a server.
 *
 * Attributing server answers to requests: the server handles one connection's messages in order
 * and only one execution runs at a time, so each kind of request keeps a FIFO of the request ids
 * sent and not yet answered, and an answer goes to the head of its FIFO. The protocol has no
 * request ids, so `SANDBOX_EXECUTION_ERROR` is ambiguous between "second exec while one runs"
 * and "stdin while nothing runs". The client never sends stdin for a process it knows has ended,
 * so the error goes to the oldest unanswered exec when there is one (a hung promise would be
 * worse than a misattributed error in the rare race), otherwise it is reported as unattributed.
 *
 * Error text: our server puts `message` on every error `status_update` and repeats it in the
 * `error` event right after; the original server sends only the `error` event. Both shapes give
 * one error with the server's words: a status with a message is reported at once and the
 * following `error` event is swallowed; a status without one waits for the next frame.
 */

import { base64ToBytes } from './base64.js';
import {
  type ExecRequest,
  type InitFrame,
  type ServerFrame,
  type StreamName,
  encodeAction,
  encodeExec,
  encodeInit,
  encodeSnapshot,
  encodeStdin,
  parseServerFrame,
} from './frames.js';

/** An error as the server reported it. `status` is undefined for a bare `error` event. */
export interface ServerError {
  status: string | undefined;
  message: string;
}

/** What `SANDBOX_EXECUTION_DONE` says about how an execution ended. */
export interface ExecutionResult {
  /** Exit status; `128 + N` when ended by signal N; `-1` if the server did not send one. */
  exitCode: number;
  /** Signal that ended the process, or null. */
  signal: number | null;
  /** `exited`, `signaled`, `killed`, `timeout`, `output_limit`, `sandbox_lost`, or `unknown`. */
  reason: string;
  /** Wall-clock duration in milliseconds, or null if the server did not send it. */
  durationMs: number | null;
}

export type SetupKind = 'create' | 'attach';

/** Request ids are chosen by the machine and echoed in the events that answer the request. */
export type RequestId = number;

export type ProtocolEvent =
  /** Every `status_update`, known or not, in arrival order (for observers and logs). */
  | { type: 'status'; status: string; message: string | undefined }
  | { type: 'sandbox_id'; sandboxId: string; sandboxToken: string | undefined }
  /** Setup finished: the sandbox is running and accepts requests. */
  | { type: 'ready' }
  | { type: 'setup_failed'; error: ServerError }
  | { type: 'exec_started'; id: RequestId }
  /** After a `reconnect` action, the server confirmed the execution is still running. */
  | { type: 'exec_resumed'; id: RequestId }
  /**
   * A re-attach restored the sandbox from a checkpoint (the server instance went away, e.g. shut
   * down with SIGTERM, and saved it): the execution that was running cannot be followed any more.
   */
  | { type: 'exec_lost'; id: RequestId }
  | { type: 'exec_rejected'; id: RequestId; error: ServerError }
  | { type: 'output'; id: RequestId; stream: StreamName; data: string | Uint8Array }
  | { type: 'exec_done'; id: RequestId; result: ExecutionResult }
  | { type: 'kill_process_done'; id: RequestId }
  | { type: 'kill_process_failed'; id: RequestId; error: ServerError }
  | { type: 'checkpointed'; id: RequestId | undefined }
  /**
   * `sessionEnds`: the server closes the connection after this error (checkpointing not enabled:
   * the sandbox survives, attach again to use it). False when the session continues (a
   * checkpoint refused up front, e.g. open TCP connections, or asked for while an execution runs).
   */
  | { type: 'checkpoint_failed'; id: RequestId; error: ServerError; sessionEnds: boolean }
  | { type: 'snapshot_created'; id: RequestId }
  | { type: 'snapshot_failed'; id: RequestId; error: ServerError }
  /** The sandbox was killed: by our `kill_sandbox` (`id` set) or by the server (idle timeout). */
  | { type: 'sandbox_killed'; id: RequestId | undefined }
  | { type: 'kill_sandbox_failed'; id: RequestId; error: ServerError }
  /** An error no pending request accounts for (stdin after the process ended, lock trouble...). */
  | { type: 'server_error'; error: ServerError }
  /**
   * The server runs an execution nobody here is waiting for (its start was in flight when the
   * connection dropped, and the caller was told it failed). The caller should kill it.
   */
  | { type: 'orphan_execution' }
  | {
      type: 'closed';
      code: number;
      reason: string;
      /** The connection dropped while the session was usable: re-attaching may continue it. */
      reconnectable: boolean;
      /** Requests sent and not answered; their answers are lost with the connection. */
      unanswered: RequestId[];
      /** The execution running when the connection closed, if any. */
      runningId: RequestId | undefined;
    };

/**
 * Close codes after which the session may be continued by re-attaching: the transport went away
 * (1006 abnormal closure, 1005 no status, 1001 going away, 1012 service restart, 1014 bad
 * gateway). Every other code is the server ending the session on purpose.
 */
export const RECONNECTABLE_CLOSE_CODES: ReadonlySet<number> = new Set([1001, 1005, 1006, 1012, 1014]);

const ERROR_STATUSES: ReadonlySet<string> = new Set([
  'SANDBOX_ERROR',
  'SANDBOX_CREATION_ERROR',
  'SANDBOX_NOT_FOUND',
  'SANDBOX_IN_USE',
  'SANDBOX_PERMISSION_DENIAL_ERROR',
  'SANDBOX_EXECUTION_ERROR',
  'SANDBOX_EXECUTION_UNSUPPORTED_LANGUAGE_ERROR',
  'SANDBOX_EXECUTION_FORCE_KILL_ERROR',
  'SANDBOX_STDIN_ERROR',
  'SANDBOX_EXECUTION_IN_PROGRESS_ERROR',
  'SANDBOX_CHECKPOINT_ERROR',
  'SANDBOX_RESTORE_ERROR',
  'SANDBOX_FILESYSTEM_SNAPSHOT_ERROR',
  'SANDBOX_KILL_ERROR',
  'SANDBOX_LOCK_RENEWAL_ERROR',
]);

/**
 * Statuses after which the server closes the connection itself; a close is then expected.
 * `SANDBOX_CHECKPOINT_ERROR` is one only when no `SANDBOX_CHECKPOINTING` came first (checkpointing
 * not enabled): after `SANDBOX_CHECKPOINTING` the checkpoint was refused up front and the session
 * continues, or the save failed and the server closes with 4000 (not a drop either way).
 */
const SESSION_ENDING_STATUSES: ReadonlySet<string> = new Set([
  'SANDBOX_CREATION_ERROR',
  'SANDBOX_NOT_FOUND',
  'SANDBOX_IN_USE',
  'SANDBOX_PERMISSION_DENIAL_ERROR',
  'SANDBOX_RESTORE_ERROR',
  'SANDBOX_CHECKPOINTED',
  'SANDBOX_KILLED',
]);

export type Phase = 'setup' | 'ready' | 'closed';

export class ProtocolMachine {
  private phaseValue: Phase = 'setup';
  private setupKindValue: SetupKind;
  private nextId: RequestId = 1;

  // FIFOs of requests sent and not yet answered, one per kind of answer.
  private execStarts: RequestId[] = [];
  private killProcesses: RequestId[] = [];
  private checkpoints: RequestId[] = [];
  private snapshots: RequestId[] = [];
  private killSandboxes: RequestId[] = [];

  /** The execution the server is running for us (RUNNING seen, DONE not yet). */
  private running: RequestId | undefined;
  /** The server runs an execution we did not ask for; its output is dropped. */
  private orphanRunning = false;
  /** A `reconnect` was sent while an execution ran: its next RUNNING is a resume, not a start. */
  private awaitingResume = false;
  /** The server said something after which it closes the connection. */
  private endingExpected = false;
  /** The caller closed the connection itself. */
  private closingLocally = false;
  /** A re-attach is in progress (`beginReattach` until SANDBOX_RUNNING). */
  private reattaching = false;
  /** That re-attach restored the sandbox from a checkpoint (SANDBOX_RESTORING). */
  private reattachRestored = false;
  /** `SANDBOX_CHECKPOINTING` was seen and the checkpoint has not been answered yet. */
  private checkpointing = false;
  /** Whether the last `SANDBOX_CHECKPOINT_ERROR` ends the session (see SESSION_ENDING_STATUSES). */
  private checkpointErrorEndsSession = true;

  /** An error status without `message`, waiting for its `error` event. */
  private pendingError: string | undefined;
  /** An error status with `message` was reported: its twin `error` event is to be skipped. */
  private skipNextErrorEvent = false;

  constructor(setupKind: SetupKind) {
    this.setupKindValue = setupKind;
  }

  get phase(): Phase {
    return this.phaseValue;
  }

  get setupKind(): SetupKind {
    return this.setupKindValue;
  }

  /** Id of the execution currently running on the server for us, if any. */
  get runningId(): RequestId | undefined {
    return this.running;
  }

  // ---- what the client sends -------------------------------------------------------------

  /** The init object for `/create`. */
  init(init: InitFrame): string {
    return encodeInit(init);
  }

  execute(req: ExecRequest): { id: RequestId; frame: string } {
    const id = this.nextId++;
    this.execStarts.push(id);
    return { id, frame: encodeExec(req) };
  }

  stdin(data: string | Uint8Array | undefined, eof: boolean): string {
    return encodeStdin(data, eof);
  }

  killProcess(): { id: RequestId; frame: string } {
    const id = this.nextId++;
    this.killProcesses.push(id);
    return { id, frame: encodeAction('kill_process') };
  }

  killSandbox(): { id: RequestId; frame: string } {
    const id = this.nextId++;
    this.killSandboxes.push(id);
    return { id, frame: encodeAction('kill_sandbox') };
  }

  checkpoint(): { id: RequestId; frame: string } {
    const id = this.nextId++;
    this.checkpoints.push(id);
    return { id, frame: encodeAction('checkpoint') };
  }

  snapshotFilesystem(name: string): { id: RequestId; frame: string } {
    const id = this.nextId++;
    this.snapshots.push(id);
    return { id, frame: encodeSnapshot(name) };
  }

  /** The caller is about to close the socket on purpose: the close is not a drop. */
  closeLocally(): void {
    this.closingLocally = true;
  }

  /** A new socket to `/attach/{id}` replaces a dropped one; the session awaits SANDBOX_RUNNING. */
  beginReattach(): void {
    this.phaseValue = 'setup';
    this.setupKindValue = 'attach';
    this.endingExpected = false;
    this.closingLocally = false;
    this.checkpointing = false;
    this.reattaching = true;
    this.reattachRestored = false;
    this.pendingError = undefined;
    this.skipNextErrorEvent = false;
  }

  /**
   * `{"action":"reconnect"}`, sent once a re-attach is ready: the server replays the running
   * execution's unread output.
   */
  reconnect(): string {
    this.awaitingResume = this.running !== undefined;
    return encodeAction('reconnect');
  }

  // ---- what happened ---------------------------------------------------------------------

  /** One text frame from the server. Frames that are not JSON objects are ignored. */
  receive(text: string): ProtocolEvent[] {
    const out: ProtocolEvent[] = [];
    const frame = parseServerFrame(text);
    if (frame === undefined) return out;
    const event = frame['event'];

    if (event === 'error') {
      const message = typeof frame['message'] === 'string' ? frame['message'] : 'unknown error';
      if (this.pendingError !== undefined) {
        const status = this.pendingError;
        this.pendingError = undefined;
        this.onError({ status, message }, out);
      } else if (this.skipNextErrorEvent) {
        this.skipNextErrorEvent = false;
      } else {
        this.onError({ status: undefined, message }, out);
      }
      return out;
    }

    // Any other frame ends the wait for an `error` event.
    this.flushPendingError(out);
    this.skipNextErrorEvent = false;

    switch (event) {
      case 'status_update': {
        if (typeof frame['status'] === 'string') this.onStatus(frame['status'], frame, out);
        break;
      }
      case 'sandbox_id': {
        const sandboxId = frame['sandbox_id'];
        const token = frame['sandbox_token'];
        if (typeof sandboxId === 'string' || typeof sandboxId === 'number') {
          out.push({
            type: 'sandbox_id',
            sandboxId: String(sandboxId),
            sandboxToken: typeof token === 'string' ? token : undefined,
          });
        }
        break;
      }
      case 'stdout':
      case 'stderr': {
        this.onOutput(event, frame, out);
        break;
      }
      default:
        // Unknown events are ignored (docs/protocol.md: clients ignore what they do not know).
        break;
    }
    return out;
  }

  /** The socket closed (either side). Ends the session unless the caller re-attaches. */
  connectionClosed(code: number, reason: string): ProtocolEvent[] {
    const out: ProtocolEvent[] = [];
    this.flushPendingError(out);
    this.skipNextErrorEvent = false;
    const reconnectable =
      this.phaseValue === 'ready' &&
      !this.closingLocally &&
      !this.endingExpected &&
      this.checkpoints.length === 0 &&
      this.killSandboxes.length === 0 &&
      RECONNECTABLE_CLOSE_CODES.has(code);
    const unanswered = [
      ...this.execStarts,
      ...this.killProcesses,
      ...this.checkpoints,
      ...this.snapshots,
      ...this.killSandboxes,
    ].sort((a, b) => a - b);
    this.execStarts = [];
    this.killProcesses = [];
    this.checkpoints = [];
    this.snapshots = [];
    this.killSandboxes = [];
    this.awaitingResume = false;
    this.orphanRunning = false;
    this.checkpointing = false;
    this.phaseValue = 'closed';
    // `running` survives: a failed re-attach attempt (closed during setup, so not reconnectable
    // itself) is followed by another, and the execution must still be resumed after it.
    out.push({ type: 'closed', code, reason, reconnectable, unanswered, runningId: this.running });
    return out;
  }

  // ---- internals -------------------------------------------------------------------------

  private flushPendingError(out: ProtocolEvent[]): void {
    if (this.pendingError === undefined) return;
    const status = this.pendingError;
    this.pendingError = undefined;
    this.onError({ status, message: status }, out);
  }

  private onStatus(status: string, frame: ServerFrame, out: ProtocolEvent[]): void {
    const message = typeof frame['message'] === 'string' ? frame['message'] : undefined;
    out.push({ type: 'status', status, message });
    if (SESSION_ENDING_STATUSES.has(status)) this.endingExpected = true;
    switch (status) {
      case 'SANDBOX_CHECKPOINTING':
        this.checkpointing = true;
        break;
      case 'SANDBOX_CHECKPOINT_ERROR':
        this.checkpointErrorEndsSession = !this.checkpointing;
        if (this.checkpointErrorEndsSession) this.endingExpected = true;
        this.checkpointing = false;
        break;
      case 'SANDBOX_EXECUTION_IN_PROGRESS_ERROR':
      case 'SANDBOX_CHECKPOINTED':
        this.checkpointing = false;
        break;
      default:
        break;
    }

    if (ERROR_STATUSES.has(status)) {
      if (message !== undefined) {
        this.skipNextErrorEvent = true;
        this.onError({ status, message }, out);
      } else {
        this.pendingError = status;
      }
      return;
    }

    switch (status) {
      case 'SANDBOX_RESTORING':
        if (this.phaseValue === 'setup' && this.reattaching) this.reattachRestored = true;
        break;
      case 'SANDBOX_RUNNING':
        if (this.phaseValue === 'setup') {
          this.phaseValue = 'ready';
          if (this.reattachRestored && this.running !== undefined) {
            // A restored session knows nothing of the execution that ran when it was saved.
            out.push({ type: 'exec_lost', id: this.running });
            this.running = undefined;
          }
          this.reattaching = false;
          this.reattachRestored = false;
          out.push({ type: 'ready' });
        }
        break;
      case 'SANDBOX_EXECUTION_RUNNING':
        this.onExecutionRunning(out);
        break;
      case 'SANDBOX_EXECUTION_DONE':
        this.onExecutionDone(frame, out);
        break;
      case 'SANDBOX_EXECUTION_FORCE_KILLED': {
        const id = this.killProcesses.shift();
        if (id !== undefined) out.push({ type: 'kill_process_done', id });
        break;
      }
      case 'SANDBOX_CHECKPOINTED':
        out.push({ type: 'checkpointed', id: this.checkpoints.shift() });
        break;
      case 'SANDBOX_FILESYSTEM_SNAPSHOT_CREATED': {
        const id = this.snapshots.shift();
        if (id !== undefined) out.push({ type: 'snapshot_created', id });
        break;
      }
      case 'SANDBOX_KILLED':
        out.push({ type: 'sandbox_killed', id: this.killSandboxes.shift() });
        break;
      default:
        // Progress statuses (CREATING, RESTORING, CHECKPOINTING, DELETING, LOCK_*...) and unknown
        // ones carry no decision for the client.
        break;
    }
  }

  private onExecutionRunning(out: ProtocolEvent[]): void {
    if (this.phaseValue !== 'ready') return;
    if (this.awaitingResume && this.running !== undefined) {
      this.awaitingResume = false;
      out.push({ type: 'exec_resumed', id: this.running });
      return;
    }
    const id = this.execStarts.shift();
    if (id !== undefined) {
      this.running = id;
      this.orphanRunning = false;
      out.push({ type: 'exec_started', id });
      return;
    }
    this.orphanRunning = true;
    out.push({ type: 'orphan_execution' });
  }

  private onExecutionDone(frame: ServerFrame, out: ProtocolEvent[]): void {
    this.awaitingResume = false;
    if (this.orphanRunning) {
      this.orphanRunning = false;
      return;
    }
    const id = this.running;
    if (id === undefined) return;
    this.running = undefined;
    const exitCode = frame['exit_code'];
    const signal = frame['signal'];
    const reason = frame['reason'];
    const duration = frame['duration_ms'];
    const hasExit = typeof exitCode === 'number' && Number.isInteger(exitCode);
    out.push({
      type: 'exec_done',
      id,
      result: {
        exitCode: hasExit ? exitCode : -1,
        signal: typeof signal === 'number' ? signal : null,
        reason: typeof reason === 'string' ? reason : hasExit ? 'exited' : 'unknown',
        durationMs: typeof duration === 'number' ? duration : null,
      },
    });
  }

  private onOutput(stream: StreamName, frame: ServerFrame, out: ProtocolEvent[]): void {
    const raw = frame['data'];
    if (typeof raw !== 'string') return;
    if (this.orphanRunning || this.running === undefined) return;
    let data: string | Uint8Array = raw;
    if (frame['encoding'] === 'base64') {
      try {
        data = base64ToBytes(raw);
      } catch {
        return;
      }
    }
    out.push({ type: 'output', id: this.running, stream, data });
  }

  /** Routes an error to the request it answers (see the module comment). */
  private onError(error: ServerError, out: ProtocolEvent[]): void {
    if (this.phaseValue === 'setup') {
      out.push({ type: 'setup_failed', error });
      return;
    }
    let id: RequestId | undefined;
    switch (error.status) {
      case 'SANDBOX_EXECUTION_ERROR':
      case 'SANDBOX_EXECUTION_UNSUPPORTED_LANGUAGE_ERROR':
        id = this.execStarts.shift();
        if (id !== undefined) {
          out.push({ type: 'exec_rejected', id, error });
          return;
        }
        break;
      case 'SANDBOX_EXECUTION_FORCE_KILL_ERROR':
        id = this.killProcesses.shift();
        if (id !== undefined) {
          out.push({ type: 'kill_process_failed', id, error });
          return;
        }
        break;
      case 'SANDBOX_EXECUTION_IN_PROGRESS_ERROR':
        id = this.checkpoints.shift();
        if (id !== undefined) {
          out.push({ type: 'checkpoint_failed', id, error, sessionEnds: false });
          return;
        }
        id = this.snapshots.shift();
        if (id !== undefined) {
          out.push({ type: 'snapshot_failed', id, error });
          return;
        }
        break;
      case 'SANDBOX_CHECKPOINT_ERROR':
        id = this.checkpoints.shift();
        if (id !== undefined) {
          out.push({ type: 'checkpoint_failed', id, error, sessionEnds: this.checkpointErrorEndsSession });
          return;
        }
        break;
      case 'SANDBOX_FILESYSTEM_SNAPSHOT_ERROR':
        id = this.snapshots.shift();
        if (id !== undefined) {
          out.push({ type: 'snapshot_failed', id, error });
          return;
        }
        break;
      case 'SANDBOX_KILL_ERROR':
        id = this.killSandboxes.shift();
        if (id !== undefined) {
          out.push({ type: 'kill_sandbox_failed', id, error });
          return;
        }
        break;
      default:
        break;
    }
    out.push({ type: 'server_error', error });
  }
}
