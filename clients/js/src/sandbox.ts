/**
 * `Sandbox`: one WebSocket session with one sandbox on a Cloud Run Sandbox server.
 *
 * This file wires three pieces together and holds the user-facing state:
 * - `internal/transport.ts` moves text frames over a socket;
 * - `internal/protocol.ts` turns frames into events and requests into frames (no I/O);
 * - `process.ts` is what `exec()` hands back.
 *
 * Invariant: no promise handed to the caller stays pending once the connection is gone for good.
 * Every path that ends a session goes through `#finish`, which rejects what is still waiting with
 * a `SandboxConnectionError` (or resolves it, for `terminate()` / `checkpoint()` that succeeded).
 */

import {
  SandboxAuthenticationError,
  SandboxConnectionError,
  type SandboxError,
  SandboxExecutionError,
  SandboxInUseError,
  SandboxNotFoundError,
  SandboxStateError,
  errorFromStatus,
} from './errors.js';
import { type BackoffPolicy, backoffDelay, normalizeBackoff } from './internal/backoff.js';
import { Deferred, handled } from './internal/deferred.js';
import type { InitFrame } from './internal/frames.js';
import {
  type ExecutionResult,
  type ProtocolEvent,
  ProtocolMachine,
  type RequestId,
  type ServerError,
} from './internal/protocol.js';
import { forgetToken, recallToken, rememberToken } from './internal/tokens.js';
import { type Transport, type WebSocketConstructor, connect } from './internal/transport.js';
import { attachUrl, createUrl } from './internal/urls.js';
import { type ProcessControl, type ProcessHost, SandboxProcess } from './process.js';

export type { WebSocketConstructor, WebSocketLike } from './internal/transport.js';

/** The languages the server runs. Other strings are sent as is (and refused by the server). */
export type Language = 'python' | 'bash';

/** Automatic re-attach after a dropped connection (all times in seconds). */
export interface ReconnectOptions {
  /** Attempts before giving up. Default 10. */
  maxAttempts?: number;
  /** Delay before the first attempt; doubles after each failure. Default 0.25. */
  initialDelay?: number;
  /** Cap on one delay. Default 10. */
  maxDelay?: number;
}

/** Options shared by `Sandbox.create` and `Sandbox.attach`. Times are in seconds. */
export interface ConnectionOptions {
  /**
   * Re-attach automatically when the connection drops (not when the server ends the session),
   * with capped exponential backoff; running processes' output continues where it stopped and
   * stdin written meanwhile is sent after. Off by default.
   */
  autoReconnect?: boolean | ReconnectOptions | undefined;
  /** Limit for opening the socket and the sandbox becoming ready. Default 60. */
  connectTimeout?: number | undefined;
  /** Limit for the server to answer `terminate()` and close the socket. Default 30. */
  closeTimeout?: number | undefined;
  /** A WHATWG-compatible WebSocket constructor (e.g. `globalThis.WebSocket`) instead of `ws`. */
  webSocket?: WebSocketConstructor | undefined;
  /**
   * Extra headers for the WebSocket upgrade, e.g. `{ Authorization: 'Bearer <identity token>' }`
   * for a Cloud Run service deployed with `--no-allow-unauthenticated`. Sent again on every
   * re-attach. Needs `ws` (a WHATWG `webSocket` cannot send headers: connecting then fails).
   */
  headers?: Readonly<Record<string, string>> | undefined;
  /**
   * Shorthand for `headers: { Authorization: 'Bearer <apiKey>' }`, for a server started with
   * `SANDBOX_API_KEYS`. Giving both `apiKey` and an `Authorization` header is a TypeError. A
   * refused key rejects with `SandboxAuthenticationError`.
   */
  apiKey?: string | undefined;
  /** Called with every `status_update` the server sends, in order. */
  onStatus?: ((status: string, message: string | undefined) => void) | undefined;
  /** Called with server errors that no pending call is waiting for. */
  onError?: ((error: SandboxError) => void) | undefined;
}

/** `Sandbox.create` options: the init object of docs/protocol.md, plus connection options. */
export interface CreateOptions extends ConnectionOptions {
  /** Seconds without client messages before the server deletes the sandbox; 0 or null = never. */
  idleTimeout?: number | null | undefined;
  /** Allow `checkpoint()` (the server needs `CHECKPOINT_AND_RESTORE_PATH`). */
  enableCheckpoint?: boolean | undefined;
  /** Checkpoint instead of delete when the idle timeout fires. */
  enableIdleTimeoutAutoCheckpoint?: boolean | undefined;
  /** Let another server instance take the sandbox over. */
  enableSandboxHandoff?: boolean | undefined;
  /** Start from this named filesystem snapshot (the server needs `FILESYSTEM_SNAPSHOT_PATH`). */
  filesystemSnapshotName?: string | null | undefined;
  /** Network egress under the server's policy (by default the Python package index, for `pip install`). */
  enableNetwork?: boolean | undefined;
}

export type AttachOptions = ConnectionOptions;

/** `exec` options. */
export interface ExecOptions {
  /** Variables added to the execution's environment. */
  env?: Readonly<Record<string, string>> | undefined;
  /** Absolute working directory inside the sandbox (default `/root`). */
  cwd?: string | undefined;
  /** Wall-clock limit in seconds; the process group is killed with reason `timeout`. */
  timeout?: number | undefined;
  /** Receive output as exact bytes (`readAllBytes()`, `bytes()`); text is decoded from them. */
  binary?: boolean | undefined;
}

/** What `run()` returns. A non-zero `exitCode` is a result, not an error. */
export interface RunResult {
  stdout: string;
  stderr: string;
  exitCode: number;
  /** `exited`, `signaled`, `killed`, `timeout`, `output_limit` or `sandbox_lost`. */
  reason: string;
  signal: number | null;
  durationMs: number | null;
}

/**
 * - `running`: connected, requests go to the server;
 * - `reconnecting`: the connection dropped and is being re-established (requests are queued);
 * - `closed`: disconnected; the sandbox may still exist on the server (attach again to use it);
 * - `checkpointed`: saved by `checkpoint()`; `Sandbox.attach` restores it;
 * - `killed`: deleted by `terminate()` or by the server's idle timeout.
 */
export type SandboxState = 'running' | 'reconnecting' | 'closed' | 'checkpointed' | 'killed';

/**
 * The live session of each sandbox in this process. A handle whose own session ended
 * (checkpointed, disconnected) forwards calls to the live one for the same sandbox, so that
 * `s1.snapshotFilesystem()` or `s1.terminate()` still work after `s2 = Sandbox.attach(url, id)`.
 */
const liveSessions = new Map<string, Sandbox>();

const DEFAULT_CONNECT_TIMEOUT = 60;
const DEFAULT_CLOSE_TIMEOUT = 30;

interface PendingExec {
  process: SandboxProcess;
  control: ProcessControl;
  started: Deferred<SandboxProcess>;
  isStarted: boolean;
}

interface PendingRequest {
  deferred: Deferred<void>;
  /** Decides what a server error means for this request; rejects with it by default. */
  onError?: (error: SandboxError) => void;
}

interface OutboxItem {
  run(): void;
  fail(error: Error): void;
}

export class Sandbox {
  readonly #url: string;
  readonly #options: ConnectionOptions;
  /** `headers` plus the `apiKey`'s `Authorization`: sent with every upgrade. */
  readonly #headers: Readonly<Record<string, string>> | undefined;
  readonly #backoff: BackoffPolicy | undefined;
  readonly #machine: ProtocolMachine;
  readonly #host: ProcessHost;

  #sandboxId: string | undefined;
  #sandboxToken: string | undefined;
  #state: SandboxState = 'running';
  #transport: Transport | undefined;
  /** Bumped for every socket, so events of an abandoned socket are ignored. */
  #generation = 0;
  #setup: Deferred<void> | undefined;
  #socketClosed: Deferred<void> | undefined;
  #closeTimer: ReturnType<typeof setTimeout> | undefined;
  /** Why the client cut the socket itself (close timer), to explain the close to waiters. */
  #closeReason: string | undefined;

  readonly #execs = new Map<RequestId, PendingExec>();
  readonly #requests = new Map<RequestId, PendingRequest>();
  /** Answers that complete once the server's close of the session arrives (see `#handle`). */
  readonly #afterClose: (() => void)[] = [];
  /** Set when the server said the session ends (checkpointed or killed). */
  #ending: 'checkpointed' | 'killed' | undefined;
  #killedByServer = false;
  readonly #outbox: OutboxItem[] = [];
  #terminating: Promise<void> | undefined;

  private constructor(url: string, options: ConnectionOptions, machine: ProtocolMachine) {
    this.#url = url;
    this.#options = { ...options };
    this.#headers = connectionHeaders(options.headers, options.apiKey);
    const reconnect = options.autoReconnect;
    this.#backoff =
      reconnect === undefined || reconnect === false
        ? undefined
        : normalizeBackoff(reconnect === true ? {} : reconnect);
    this.#machine = machine;
    this.#host = {
      writeStdin: (process, data, eof) => this.#writeStdin(process, data, eof),
      killProcess: (process) => this.#killProcess(process),
    };
  }

  // ---- construction ----------------------------------------------------------------------

  /**
   * Creates a sandbox and connects to it. Rejects with `SandboxCreationError` (with the server's
   * message) when the server refuses, or `SandboxConnectionError` when it cannot be reached.
   */
  static async create(url: string, options: CreateOptions = {}): Promise<Sandbox> {
    const sandbox = new Sandbox(url, options, new ProtocolMachine('create'));
    await sandbox.#start('create', initFrame(options));
    return sandbox;
  }

  /**
   * Attaches to an existing sandbox (restoring it if it was checkpointed). Without `sandboxToken`,
   * the token this process got when it created or attached to the sandbox is used.
   */
  static async attach(
    url: string,
    sandboxId: string,
    sandboxToken?: string,
    options: AttachOptions = {},
  ): Promise<Sandbox> {
    const sandbox = new Sandbox(url, options, new ProtocolMachine('attach'));
    sandbox.#sandboxId = sandboxId;
    sandbox.#sandboxToken = sandboxToken ?? recallToken(sandboxId);
    await sandbox.#start('attach', undefined);
    if (sandbox.#sandboxToken !== undefined) rememberToken(sandboxId, sandbox.#sandboxToken);
    return sandbox;
  }

  // ---- properties ------------------------------------------------------------------------

  /** The sandbox's id (use it with `Sandbox.attach`). */
  get sandboxId(): string {
    return this.#sandboxId ?? '';
  }

  /** The secret that `Sandbox.attach` needs in another process. Keep it private. */
  get sandboxToken(): string | undefined {
    return this.#sandboxToken;
  }

  /** See `SandboxState`. */
  get state(): SandboxState {
    return this.#state;
  }

  // ---- operations ------------------------------------------------------------------------

  /**
   * Starts `code` in `language`. Resolves to the process once the server started it; rejects with
   * `SandboxExecutionError` when the server refuses (unsupported language, an execution already
   * running). One execution runs at a time per sandbox.
   */
  exec(code: string, language: Language | (string & {}), options: ExecOptions = {}): Promise<SandboxProcess> {
    const live = this.#liveElsewhere();
    if (live !== undefined) return live.exec(code, language, options);
    return handled(this.#exec(code, language, options));
  }

  /** Runs `code` to the end and collects its output and exit code. */
  async run(code: string, language: Language | (string & {}), options: ExecOptions = {}): Promise<RunResult> {
    const process = await this.exec(code, language, options);
    const [stdout, stderr, result] = await Promise.all([
      process.stdout.readAll(),
      process.stderr.readAll(),
      process.result(),
    ]);
    return {
      stdout,
      stderr,
      exitCode: result.exitCode,
      reason: result.reason,
      signal: result.signal,
      durationMs: result.durationMs,
    };
  }

  /**
   * Saves the sandbox (filesystem and processes) and ends this session; `Sandbox.attach` later
   * restores it, possibly on another server instance. Rejects with `SandboxCheckpointError` with
   * the server's message (e.g. checkpointing not enabled, an execution is running).
   */
  checkpoint(): Promise<void> {
    const live = this.#liveElsewhere();
    if (live !== undefined) return live.checkpoint();
    return handled(this.#checkpoint());
  }

  /** Saves the sandbox's filesystem as snapshot `name`; the session continues. */
  snapshotFilesystem(name: string): Promise<void> {
    const live = this.#liveElsewhere();
    if (live !== undefined) return live.snapshotFilesystem(name);
    return handled(this.#snapshot(name));
  }

  /**
   * Deletes the sandbox and its saved state and closes the connection. Safe to call without
   * `await` (it never causes an unhandled rejection, and the socket is closed within
   * `closeTimeout`). On a disconnected or checkpointed sandbox it attaches first, then deletes.
   * Calling it again returns the same promise.
   */
  terminate(): Promise<void> {
    this.#terminating ??= handled(this.#terminate());
    return this.#terminating;
  }

  /** Same as `terminate()`. */
  kill(): Promise<void> {
    return this.terminate();
  }

  /**
   * Closes the connection without deleting the sandbox (it lives on until its idle timeout;
   * `Sandbox.attach` reconnects to it). Running processes' promises reject.
   */
  disconnect(): Promise<void> {
    return handled(this.#disconnect());
  }

  // ---- implementation: requests ----------------------------------------------------------

  async #exec(code: string, language: string, options: ExecOptions): Promise<SandboxProcess> {
    if (typeof code !== 'string') throw new TypeError('code must be a string');
    if (typeof language !== 'string') throw new TypeError('language must be a string');
    this.#ensureUsable('exec');
    let control!: ProcessControl;
    const process = new SandboxProcess(this.#host, (c) => (control = c));
    const started = new Deferred<SandboxProcess>();
    this.#submit({
      run: () => {
        const { id, frame } = this.#machine.execute({
          language,
          code,
          env: options.env,
          cwd: options.cwd,
          timeout: options.timeout,
          binary: options.binary,
        });
        this.#execs.set(id, { process, control, started, isStarted: false });
        this.#send(frame);
      },
      fail: (error) => started.reject(error),
    });
    return started.promise;
  }

  async #writeStdin(process: SandboxProcess, data: string | Uint8Array | undefined, eof: boolean): Promise<void> {
    this.#ensureUsable('write to stdin');
    const id = this.#idOf(process);
    if (id === undefined || id !== this.#machine.runningId) {
      throw new SandboxStateError('cannot write to stdin: the process is not running');
    }
    const sent = new Deferred<void>();
    this.#submit({
      run: () => {
        this.#send(this.#machine.stdin(data, eof));
        sent.resolve();
      },
      fail: (error) => sent.reject(error),
    });
    return sent.promise;
  }

  async #killProcess(process: SandboxProcess): Promise<void> {
    this.#ensureUsable('kill the process');
    const deferred = new Deferred<void>();
    this.#submit({
      run: () => {
        const { id, frame } = this.#machine.killProcess();
        this.#requests.set(id, {
          deferred,
          // "Nothing is running" after the process ended on its own is not a failure.
          onError: (error) => (process.done ? deferred.resolve() : deferred.reject(error)),
        });
        this.#send(frame);
      },
      fail: (error) => deferred.reject(error),
    });
    return deferred.promise;
  }

  async #checkpoint(): Promise<void> {
    this.#ensureUsable('checkpoint');
    const deferred = new Deferred<void>();
    this.#submit({
      run: () => {
        const { id, frame } = this.#machine.checkpoint();
        this.#requests.set(id, { deferred });
        this.#send(frame);
      },
      fail: (error) => deferred.reject(error),
    });
    return deferred.promise;
  }

  async #snapshot(name: string): Promise<void> {
    if (typeof name !== 'string' || name === '') throw new TypeError('snapshot name must be a non-empty string');
    this.#ensureUsable('snapshot the filesystem');
    const deferred = new Deferred<void>();
    this.#submit({
      run: () => {
        const { id, frame } = this.#machine.snapshotFilesystem(name);
        this.#requests.set(id, { deferred });
        this.#send(frame);
      },
      fail: (error) => deferred.reject(error),
    });
    return deferred.promise;
  }

  async #terminate(): Promise<void> {
    if (this.#state === 'killed') return;
    if (this.#state === 'closed' || this.#state === 'checkpointed') {
      const live = this.#liveElsewhere();
      if (live !== undefined) {
        await live.terminate();
        this.#state = 'killed';
        return;
      }
      // The sandbox may still exist on the server: attach to it and delete it from there.
      if (this.#sandboxId === undefined || this.#sandboxId === '') return;
      let other: Sandbox;
      try {
        other = await Sandbox.attach(this.#url, this.#sandboxId, this.#sandboxToken, {
          connectTimeout: this.#options.connectTimeout,
          closeTimeout: this.#options.closeTimeout,
          webSocket: this.#options.webSocket,
          headers: this.#headers,
        });
      } catch (error) {
        // Deleting what no longer exists (e.g. removed by its idle timeout) is done already.
        if (!(error instanceof SandboxNotFoundError)) throw error;
        this.#state = 'killed';
        return;
      }
      await other.#killSandbox();
      this.#state = 'killed';
      return;
    }
    await this.#killSandbox();
  }

  /** Sends kill_sandbox on this (live or re-attaching) session and waits for the server's close. */
  async #killSandbox(): Promise<void> {
    const deferred = new Deferred<void>();
    this.#submit({
      run: () => {
        const { id, frame } = this.#machine.killSandbox();
        this.#requests.set(id, { deferred });
        this.#send(frame);
        this.#armCloseTimer('kill_sandbox');
      },
      fail: (error) => deferred.reject(error),
    });
    await deferred.promise;
    if (this.#sandboxId !== undefined) forgetToken(this.#sandboxId);
  }

  async #disconnect(): Promise<void> {
    if (this.#state === 'reconnecting') {
      this.#finish(new SandboxConnectionError('disconnected by the client while re-attaching'));
      return;
    }
    if (this.#state !== 'running' || this.#transport === undefined) return;
    const closed = this.#socketClosed;
    this.#machine.closeLocally();
    this.#transport.close(1000, 'client disconnect');
    this.#armCloseTimer('close');
    await closed?.promise;
  }

  /** Another handle's live session for this sandbox, when this handle's session has ended. */
  #liveElsewhere(): Sandbox | undefined {
    if (this.#state !== 'closed' && this.#state !== 'checkpointed') return undefined;
    const live = this.#sandboxId === undefined ? undefined : liveSessions.get(this.#sandboxId);
    if (live === undefined || live === this) return undefined;
    return live.#state === 'running' || live.#state === 'reconnecting' ? live : undefined;
  }

  #ensureUsable(what: string): void {
    const id = this.#sandboxId ?? '';
    switch (this.#state) {
      case 'running':
      case 'reconnecting':
        if (this.#terminating !== undefined) {
          throw new SandboxStateError(`cannot ${what}: sandbox ${id} is being terminated`);
        }
        return;
      case 'killed':
        throw new SandboxStateError(`cannot ${what}: sandbox ${id} was terminated`);
      case 'checkpointed':
        throw new SandboxStateError(
          `cannot ${what}: sandbox ${id} was checkpointed; use Sandbox.attach to restore it`,
        );
      case 'closed':
        throw new SandboxStateError(
          `cannot ${what}: the connection to sandbox ${id} is closed; use Sandbox.attach to reconnect`,
        );
    }
  }

  /**
   * Runs `item` now, or after the re-attach when the connection is being re-established. A socket
   * that is already dying (its close not reported yet) counts as re-establishing when
   * auto-reconnect is on: what is written then is sent after the re-attach, not lost.
   */
  #submit(item: OutboxItem): void {
    if (this.#state === 'reconnecting') {
      this.#outbox.push(item);
    } else if (this.#transport?.isOpen() === true) {
      item.run();
    } else if (this.#backoff !== undefined) {
      this.#outbox.push(item);
    } else {
      item.fail(new SandboxConnectionError(`the connection to sandbox ${this.sandboxId} is closing`));
    }
  }

  #send(frame: string): void {
    this.#transport?.send(frame);
  }

  #idOf(process: SandboxProcess): RequestId | undefined {
    for (const [id, entry] of this.#execs) if (entry.process === process) return id;
    return undefined;
  }

  // ---- implementation: connection --------------------------------------------------------

  async #start(kind: 'create' | 'attach', init: InitFrame | undefined): Promise<void> {
    try {
      await this.#open(kind, init);
      if (this.#sandboxId !== undefined) liveSessions.set(this.#sandboxId, this);
    } catch (error) {
      // The server usually closes after a setup error; don't wait for it.
      this.#machine.closeLocally();
      this.#transport?.terminate();
      this.#transport = undefined;
      this.#clearCloseTimer();
      this.#state = 'closed';
      throw error;
    }
  }

  /** Opens a socket to /create or /attach and waits for SANDBOX_RUNNING. */
  async #open(kind: 'create' | 'attach', init: InitFrame | undefined): Promise<void> {
    const generation = ++this.#generation;
    const setup = new Deferred<void>();
    this.#setup = setup;
    this.#socketClosed = new Deferred<void>();
    const seconds = this.#options.connectTimeout ?? DEFAULT_CONNECT_TIMEOUT;
    const url =
      kind === 'create' ? createUrl(this.#url) : attachUrl(this.#url, this.#sandboxId ?? '', this.#sandboxToken);
    const timeout = new Deferred<never>();
    const timer = setTimeout(() => {
      const what = this.#sandboxId === undefined ? 'the sandbox' : `sandbox ${this.#sandboxId}`;
      timeout.reject(new SandboxConnectionError(`timed out after ${seconds}s waiting for ${what} to be ready`));
    }, seconds * 1000);
    try {
      const connecting = connect(
        url,
        { webSocket: this.#options.webSocket, headers: this.#headers, connectTimeoutMs: seconds * 1000 },
        {
          onMessage: (text) => {
            if (generation === this.#generation) this.#dispatch(this.#machine.receive(text));
          },
          onClose: (code, reason) => {
            if (generation === this.#generation) this.#dispatch(this.#machine.connectionClosed(code, reason));
          },
        },
      );
      let transport: Transport;
      try {
        transport = await Promise.race([connecting, timeout.promise]);
      } catch (error) {
        // Timed out while connecting: if the socket opens after all, nobody will use it.
        connecting.then(
          (late) => late.terminate(),
          () => undefined,
        );
        throw error;
      }
      this.#transport = transport;
      if (init !== undefined) transport.send(this.#machine.init(init));
      await Promise.race([setup.promise, timeout.promise]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Re-attaches after a dropped connection, with capped exponential backoff. */
  async #reconnectLoop(policy: BackoffPolicy): Promise<void> {
    let lastError: unknown;
    for (let attempt = 1; attempt <= policy.maxAttempts; attempt++) {
      await sleep(backoffDelay(policy, attempt, 0.5 + Math.random() / 2) * 1000);
      if (!this.#isReconnecting()) return;
      this.#machine.beginReattach();
      try {
        await this.#open('attach', undefined);
      } catch (error) {
        lastError = error;
        this.#generation++; // ignore whatever the failed socket still reports
        this.#transport?.terminate();
        this.#transport = undefined;
        if (!this.#isReconnecting()) return;
        // A dropped socket may still hold the sandbox for a moment (SANDBOX_IN_USE): retry.
        if (error instanceof SandboxConnectionError || error instanceof SandboxInUseError) continue;
        break;
      }
      if (!this.#isReconnecting()) {
        // The caller gave up while we were re-attaching.
        this.#machine.closeLocally();
        this.#transport?.close(1000, 'client disconnect');
        return;
      }
      this.#state = 'running';
      this.#send(this.#machine.reconnect());
      for (const item of this.#outbox.splice(0)) item.run();
      return;
    }
    const detail = lastError instanceof Error ? `: ${lastError.message}` : '';
    const message = `connection to sandbox ${this.sandboxId} lost; re-attach failed${detail}`;
    this.#finish(
      lastError instanceof SandboxAuthenticationError
        ? new SandboxAuthenticationError(message, { httpStatus: lastError.httpStatus, cause: lastError })
        : new SandboxConnectionError(message, lastError === undefined ? {} : { cause: lastError }),
    );
  }

  /** Re-read after every `await`: the caller may have disconnected meanwhile. */
  #isReconnecting(): boolean {
    return this.#state === 'reconnecting';
  }

  #armCloseTimer(what: string): void {
    this.#clearCloseTimer();
    const seconds = this.#options.closeTimeout ?? DEFAULT_CLOSE_TIMEOUT;
    this.#closeTimer = setTimeout(() => {
      this.#closeTimer = undefined;
      const transport = this.#transport;
      if (transport === undefined) return;
      this.#closeReason = `the server did not close the connection within ${seconds}s after ${what}`;
      transport.terminate();
    }, seconds * 1000);
  }

  #clearCloseTimer(): void {
    if (this.#closeTimer !== undefined) clearTimeout(this.#closeTimer);
    this.#closeTimer = undefined;
  }

  // ---- implementation: events ------------------------------------------------------------

  #dispatch(events: ProtocolEvent[]): void {
    for (const event of events) this.#handle(event);
  }

  #handle(event: ProtocolEvent): void {
    switch (event.type) {
      case 'status':
        this.#callback(() => this.#options.onStatus?.(event.status, event.message));
        break;
      case 'sandbox_id':
        this.#sandboxId = event.sandboxId;
        this.#sandboxToken = event.sandboxToken;
        if (event.sandboxToken !== undefined) rememberToken(event.sandboxId, event.sandboxToken);
        break;
      case 'ready':
        this.#setup?.resolve();
        break;
      case 'setup_failed':
        this.#setup?.reject(toError(event.error));
        break;
      case 'exec_started': {
        const entry = this.#execs.get(event.id);
        if (entry !== undefined) {
          entry.isStarted = true;
          entry.started.resolve(entry.process);
        }
        break;
      }
      case 'exec_resumed':
        break;
      case 'exec_lost': {
        const entry = this.#execs.get(event.id);
        this.#execs.delete(event.id);
        entry?.control.fail(
          new SandboxConnectionError(
            `sandbox ${this.sandboxId} was restored from a checkpoint after the connection dropped; ` +
              'the output and exit of the execution that was running are no longer available',
          ),
        );
        break;
      }
      case 'exec_rejected': {
        const entry = this.#execs.get(event.id);
        this.#execs.delete(event.id);
        entry?.started.reject(toError(event.error, SandboxExecutionError));
        break;
      }
      case 'output': {
        const entry = this.#execs.get(event.id);
        entry?.control[event.stream].push(event.data);
        break;
      }
      case 'exec_done': {
        const entry = this.#execs.get(event.id);
        this.#execs.delete(event.id);
        entry?.control.finish(event.result);
        break;
      }
      case 'kill_process_done':
      case 'snapshot_created':
        this.#takeRequest(event.id)?.deferred.resolve();
        break;
      case 'kill_process_failed':
      case 'snapshot_failed':
      case 'checkpoint_failed':
      case 'kill_sandbox_failed': {
        const request = this.#takeRequest(event.id);
        const error = toError(event.error);
        const settle = (): void => {
          if (request?.onError !== undefined) request.onError(error);
          else request?.deferred.reject(error);
        };
        if (event.type === 'checkpoint_failed' && event.sessionEnds) {
          // The server ends the session after this error (the sandbox survives). Report it once
          // the socket is closed, so the caller can attach again right away. A checkpoint refused
          // after SANDBOX_CHECKPOINTING (open TCP connections...) leaves the session running.
          this.#afterClose.push(settle);
          this.#armCloseTimer('a checkpoint error');
        } else {
          settle();
        }
        break;
      }
      case 'checkpointed':
      case 'sandbox_killed': {
        // Success; complete it once the server's close arrives, so that an attach right after
        // `await checkpoint()` does not find the sandbox still held by this connection.
        this.#ending = event.type === 'checkpointed' ? 'checkpointed' : 'killed';
        if (event.type === 'sandbox_killed' && event.id === undefined) this.#killedByServer = true;
        const request = event.id === undefined ? undefined : this.#takeRequest(event.id);
        if (request !== undefined) this.#afterClose.push(() => request.deferred.resolve());
        this.#armCloseTimer(event.type === 'checkpointed' ? 'checkpoint' : 'kill_sandbox');
        break;
      }
      case 'server_error':
        this.#callback(() => this.#options.onError?.(toError(event.error)));
        break;
      case 'orphan_execution': {
        // An execution whose start was lost with a dropped connection (its caller got an error):
        // stop it so that it does not block the next exec.
        const { frame } = this.#machine.killProcess();
        this.#send(frame);
        break;
      }
      case 'closed':
        this.#onClosed(event);
        break;
    }
  }

  #onClosed(event: Extract<ProtocolEvent, { type: 'closed' }>): void {
    this.#transport = undefined;
    this.#clearCloseTimer();
    this.#socketClosed?.resolve();
    const why = this.#closeReason ?? `connection closed (code ${event.code}${event.reason ? `: ${event.reason}` : ''})`;
    this.#closeReason = undefined;
    const error = (message: string): SandboxConnectionError =>
      new SandboxConnectionError(message, { closeCode: event.code, closeReason: event.reason });

    if (this.#setup !== undefined && !this.#setup.settled) {
      this.#setup.reject(error(`${why} before sandbox ${this.sandboxId} was ready`.replace('  ', ' ')));
    }
    for (const id of event.unanswered) {
      const exec = this.#execs.get(id);
      if (exec !== undefined && !exec.isStarted) {
        this.#execs.delete(id);
        exec.started.reject(error(`${why} before the server started the execution`));
      }
      this.#takeRequest(id)?.deferred.reject(error(`${why} before the server answered`));
    }
    if (this.#state === 'reconnecting') return; // the re-attach loop decides what happens next
    if (event.reconnectable && this.#backoff !== undefined) {
      this.#state = 'reconnecting';
      void this.#reconnectLoop(this.#backoff);
      return;
    }
    let reason = why;
    if (this.#ending === 'killed') {
      reason = this.#killedByServer ? 'the sandbox was deleted by the server (idle timeout)' : 'the sandbox was terminated';
    } else if (this.#ending === 'checkpointed') {
      reason = 'the sandbox was checkpointed';
    }
    this.#finish(error(reason));
  }

  /** Ends the session for good: settles everything still waiting. */
  #finish(error: SandboxError): void {
    this.#state = this.#ending ?? 'closed';
    if (this.#sandboxId !== undefined && liveSessions.get(this.#sandboxId) === this) {
      liveSessions.delete(this.#sandboxId);
    }
    this.#clearCloseTimer();
    for (const settle of this.#afterClose.splice(0)) settle();
    for (const item of this.#outbox.splice(0)) item.fail(error);
    for (const [id, entry] of this.#execs) {
      this.#execs.delete(id);
      if (entry.isStarted) entry.control.fail(error);
      else entry.started.reject(error);
    }
    for (const [id, request] of this.#requests) {
      this.#requests.delete(id);
      request.deferred.reject(error);
    }
    if (this.#transport !== undefined) {
      this.#machine.closeLocally();
      this.#transport.terminate();
      this.#transport = undefined;
    }
  }

  #takeRequest(id: RequestId): PendingRequest | undefined {
    const request = this.#requests.get(id);
    this.#requests.delete(id);
    return request;
  }

  #callback(fn: () => void): void {
    try {
      fn();
    } catch {
      // A throwing user callback must not corrupt the session's state.
    }
  }
}

function toError(error: ServerError, fallback?: new (message: string, options?: { status?: string }) => SandboxError): SandboxError {
  if (error.status === undefined) {
    return fallback === undefined ? errorFromStatus('SANDBOX_ERROR', error.message) : new fallback(error.message);
  }
  return errorFromStatus(error.status, error.message);
}

/** The extra upgrade headers: `headers`, plus `Authorization: Bearer <apiKey>` with `apiKey`. */
function connectionHeaders(
  headers: Readonly<Record<string, string>> | undefined,
  apiKey: string | undefined,
): Readonly<Record<string, string>> | undefined {
  if (apiKey === undefined) return headers;
  if (typeof apiKey !== 'string' || apiKey === '') throw new TypeError('apiKey must be a non-empty string');
  if (Object.keys(headers ?? {}).some((name) => name.toLowerCase() === 'authorization')) {
    throw new TypeError('give either apiKey or an Authorization header, not both');
  }
  return { ...headers, Authorization: `Bearer ${apiKey}` };
}

function initFrame(options: CreateOptions): InitFrame {
  const init: InitFrame = {};
  if (options.idleTimeout !== undefined) init.idle_timeout = options.idleTimeout;
  if (options.enableCheckpoint !== undefined) init.enable_checkpoint = options.enableCheckpoint;
  if (options.enableIdleTimeoutAutoCheckpoint !== undefined) {
    init.enable_idle_timeout_auto_checkpoint = options.enableIdleTimeoutAutoCheckpoint;
  }
  if (options.enableSandboxHandoff !== undefined) init.enable_sandbox_handoff = options.enableSandboxHandoff;
  if (options.filesystemSnapshotName !== undefined) init.filesystem_snapshot_name = options.filesystemSnapshotName;
  if (options.enableNetwork === true) init.enable_network = true;
  return init;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export { SandboxProcess, OutputStream } from './process.js';
export type { ExecutionResult };
export {
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
} from './errors.js';
