/**
 * `Sandbox`: one WebSocket session with one sandbox; the twin of the Python client's
 * `_sandbox.py`.
 *
 * It owns one `Connection` (from its `Transport`) and one `ClientProtocol`. Every incoming frame
 * goes to the protocol, and the resulting effects settle promises, feed processes and streams;
 * requests go the other way. When the connection drops and `autoReconnect` is on, it re-attaches
 * with backoff, sends `{"action": "reconnect"}` and flushes what was queued meanwhile.
 *
 * Invariant: no promise handed to the caller stays pending once the connection is gone for good;
 * every path that ends a session goes through the `Closed` effect, which settles what still
 * waits (rejects it, or, for `terminate()` / `checkpoint()` that succeeded, resolves it).
 */

import {
  SandboxAuthenticationError,
  SandboxConnectionError,
  type SandboxError,
  SandboxNotFoundError,
  SandboxPermissionError,
  SandboxStateError,
  SandboxTimeoutError,
} from './errors.js';
import {
  CellCollector,
  type CodeContext,
  type Execution,
  type RunCodeOptions,
  codeContextFromWire,
  contextIdOf,
} from './code.js';
import { Deferred, handled } from './internal/deferred.js';
import type { Effect } from './internal/effects.js';
import { type OutputEncoding, initMessage } from './internal/frames.js';
import { ClientProtocol } from './internal/protocol.js';
import { type ReconnectOptions, type ReconnectPolicy, reconnectDelay, reconnectPolicy } from './internal/reconnect.js';
import { forgetLive, forgetToken, liveSession, recallToken, rememberToken, setLive } from './internal/registry.js';
import {
  type Connection,
  type ConnectionHandlers,
  type Transport,
  type WebSocketConstructor,
  WebSocketTransport,
  connectionHeaders,
} from './internal/transport.js';
import { fetchList, listUrl } from './internal/listing.js';
import { attachUrl, createUrl } from './internal/urls.js';
import { type OutputCallback, type ProcessControl, type ProcessHost, type SandboxProcess, newProcess } from './process.js';
import type { ProcessInfo, RunResult, SandboxList } from './results.js';

/** The languages the server runs. Other strings are sent as is (and refused by the server). */
export type Language = 'python' | 'bash';

/** Options shared by `Sandbox.create` and `Sandbox.attach`. Times are in seconds. */
export interface ConnectionOptions {
  /**
   * Re-attach automatically when the connection drops (not when the server ends the session),
   * with capped exponential backoff. Off by default.
   */
  autoReconnect?: boolean | ReconnectOptions | undefined;
  /** Bound on opening the WebSocket. Default 30; null: none. */
  connectTimeout?: number | null | undefined;
  /** Bound on every wait for a server answer (sandbox ready, exec started, ...). Default 120; null: none. */
  requestTimeout?: number | null | undefined;
  /** Bound on the server's close after terminate() / checkpoint(). Default 10; null: none. */
  closeTimeout?: number | null | undefined;
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
  /** How connections are opened (default: a `WebSocketTransport`). */
  transport?: Transport | undefined;
  /** A WHATWG `WebSocket` constructor (e.g. `globalThis.WebSocket`) for the default transport. */
  webSocket?: WebSocketConstructor | undefined;
}

/** `Sandbox.create` options: the init object of docs/protocol.md, plus connection options. */
export interface CreateOptions extends ConnectionOptions {
  /** Seconds without a client before the server deletes the sandbox; null: the server's default; 0: its cap. */
  idleTimeout?: number | null | undefined;
  /** Allow `checkpoint()` (the server needs `CHECKPOINT_AND_RESTORE_PATH`). */
  enableCheckpoint?: boolean | undefined;
  /** Checkpoint instead of delete when the idle timeout fires. */
  enableIdleTimeoutAutoCheckpoint?: boolean | undefined;
  /** Let the sandbox move to another server instance when a client attaches there (implies checkpointing). */
  enableSandboxHandoff?: boolean | undefined;
  /** Start from this named filesystem snapshot (the server needs `FILESYSTEM_SNAPSHOT_PATH`). */
  filesystemSnapshotName?: string | null | undefined;
  /** Network egress under the server's policy (by default the Python package index, for `pip install`). */
  enableNetwork?: boolean | undefined;
  /** At most 16 short strings, listed by `Sandbox.list()` (sent only when given). */
  labels?: Readonly<Record<string, string>> | undefined;
}

/** `Sandbox.list` options. Times are in seconds. */
export interface ListOptions {
  /** List the checkpoints in the server's store instead of the sandboxes of the instance that answers. */
  checkpointed?: boolean | undefined;
  /** The store's listing: at most this many (1 to 1000, the server's default 100). */
  limit?: number | undefined;
  /** The store's listing: continue after this sandbox id (a previous page's `nextAfter`). */
  after?: string | undefined;
  /** As in `ConnectionOptions`. */
  headers?: Readonly<Record<string, string>> | undefined;
  /** As in `ConnectionOptions`. */
  apiKey?: string | undefined;
  /** Bound on the request. Default 30; null: none. */
  timeout?: number | null | undefined;
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
  /** `base64`: receive output as exact bytes (`readAllBytes()`, `bytes()`). Default `text`. */
  outputEncoding?: OutputEncoding | undefined;
  /** Called with each chunk of stdout text as it arrives (the stream keeps it too). */
  onStdout?: OutputCallback | undefined;
  /** Called with each chunk of stderr text as it arrives (the stream keeps it too). */
  onStderr?: OutputCallback | undefined;
}

/** `run` options: as `exec` (text output), plus `stdin`. */
export interface RunOptions extends Omit<ExecOptions, 'outputEncoding'> {
  /** Written to the process's stdin, which is then closed (always, even without `stdin`). */
  stdin?: string | Uint8Array | undefined;
}

/** `attachProcess` options. */
export type AttachProcessOptions = Pick<ExecOptions, 'outputEncoding' | 'onStdout' | 'onStderr'>;

/**
 * - `running`: connected, requests go to the server;
 * - `reconnecting`: the connection dropped and is being re-established (requests are queued);
 * - `closed`: disconnected; the sandbox may still exist on the server (attach again to use it);
 * - `checkpointed`: saved by `checkpoint()`; `Sandbox.attach` restores it;
 * - `killed`: deleted by `terminate()` or by the server's idle timeout.
 */
export type SandboxState = 'running' | 'reconnecting' | 'closed' | 'checkpointed' | 'killed';

const DEFAULT_CONNECT_TIMEOUT = 30;
const DEFAULT_REQUEST_TIMEOUT = 120;
const DEFAULT_CLOSE_TIMEOUT = 10;
/** A re-attached connection that lived this long (seconds) earns a fresh set of attempts. */
const STABLE_AFTER = 10;

type Outcome = Extract<Effect, { type: 'Reattached' | 'ReattachFailed' }>;

export class Sandbox {
  readonly #url: string;
  readonly #options: ConnectionOptions;
  readonly #policy: ReconnectPolicy | undefined;
  readonly #protocol: ClientProtocol;
  readonly #transport: Transport;
  /** `headers` plus the `apiKey`'s `Authorization`: sent with every upgrade. */
  readonly #headers: Readonly<Record<string, string>>;
  readonly #host: ProcessHost;

  #sandboxId: string | undefined;
  #sandboxToken: string | undefined;
  #connection: Connection | undefined;
  /** Bumped for every connection, so that events of an abandoned one are ignored. */
  #generation = 0;
  /** Resolved when the current connection is gone (its close came). */
  #connectionGone: Deferred<void> | undefined;
  #ready: Deferred<void> | undefined;
  readonly #pending = new Map<string, Deferred<unknown>>();
  readonly #callbacks = new Map<string, { onStdout: OutputCallback | undefined; onStderr: OutputCallback | undefined }>();
  /** Code cells being run, by their process key. */
  readonly #cells = new Map<string, CellCollector>();
  readonly #controls = new Map<string, ProcessControl>();
  /** Failures the server closes the session after: reported once the close came. */
  readonly #afterClose: [Deferred<unknown>, SandboxError][] = [];
  readonly #outbox: string[] = [];
  /** A re-attach attempt waiting for its outcome. */
  #attempt: Deferred<Outcome> | undefined;
  #reattached = new Deferred<void>();
  readonly #closed = new Deferred<void>();
  #closeError: SandboxError | undefined;
  #closeTimer: ReturnType<typeof setTimeout> | undefined;
  #reconnectStreak = 0;
  #lastReattach = -Infinity;
  #terminating: Promise<void> | undefined;

  private constructor(url: string, attach: boolean, options: ConnectionOptions) {
    this.#url = url;
    this.#options = { ...options };
    if (options.transport !== undefined && options.webSocket !== undefined) {
      throw new TypeError('pass webSocket to the transport, not next to transport');
    }
    this.#transport = options.transport ?? new WebSocketTransport({ webSocket: options.webSocket });
    this.#headers = connectionHeaders(options.headers, options.apiKey);
    const reconnect = options.autoReconnect;
    this.#policy =
      reconnect === undefined || reconnect === false ? undefined : reconnectPolicy(reconnect === true ? {} : reconnect);
    this.#protocol = new ClientProtocol(attach, this.#policy !== undefined);
    this.#host = {
      writeStdin: (key, data) => this.#writeStdin(key, data),
      closeStdin: (key) => this.#closeStdin(key),
      killProcess: (key) => this.#killProcess(key),
    };
    this.#reattached.resolve();
  }

  // ---- factories -------------------------------------------------------------------------

  /**
   * Creates a new sandbox and waits until it runs. `url` is the service's base URL (`wss://host`,
   * `ws://127.0.0.1:8080`; `https://` / `http://` work too). Rejects with `SandboxCreationError`
   * (with the server's message) when the server refuses, `SandboxConnectionError` when it cannot
   * be reached.
   */
  static async create(url: string, options: CreateOptions = {}): Promise<Sandbox> {
    const sandbox = new Sandbox(url, false, options);
    const first = initMessage({
      idle_timeout: options.idleTimeout ?? null,
      enable_checkpoint: options.enableCheckpoint ?? false,
      enable_idle_timeout_auto_checkpoint: options.enableIdleTimeoutAutoCheckpoint ?? false,
      enable_sandbox_handoff: options.enableSandboxHandoff ?? false,
      filesystem_snapshot_name: options.filesystemSnapshotName ?? null,
      enable_network: options.enableNetwork ?? false,
      labels: options.labels,
    });
    await sandbox.#open(createUrl(url), first);
    return sandbox;
  }

  /**
   * The sandboxes of the server instance that answers (`GET /sandboxes`), or with
   * `checkpointed: true` the checkpoints in its store, one page of at most `limit` from `after` on
   * (`nextAfter` for the next page). Behind a load balancer (Cloud Run) the answer comes from
   * whichever instance got the request. Tokens are never listed. A refusal (HTTP 401 or 403)
   * rejects with `SandboxAuthenticationError`.
   */
  static async list(url: string, options: ListOptions = {}): Promise<SandboxList> {
    const target = listUrl(url, options);
    return fetchList(target, connectionHeaders(options.headers, options.apiKey), options.timeout === undefined ? 30 : options.timeout);
  }

  /**
   * Attaches to a live sandbox, or restores a checkpointed one. `sandboxToken` may be omitted
   * for a sandbox created (or attached with a token) in this process: the library remembers it.
   */
  static async attach(
    url: string,
    sandboxId: string,
    sandboxToken?: string,
    options: AttachOptions = {},
  ): Promise<Sandbox> {
    const token = sandboxToken ?? recallToken(sandboxId);
    if (token === undefined) {
      throw new SandboxPermissionError(
        `no sandbox_token given for sandbox "${sandboxId}" and none remembered in this process; ` +
          'pass the token that create() returned',
      );
    }
    const sandbox = new Sandbox(url, true, options);
    sandbox.#sandboxId = sandboxId;
    sandbox.#sandboxToken = token;
    sandbox.#protocol.sandboxId = sandboxId;
    sandbox.#protocol.sandboxToken = token;
    await sandbox.#open(attachUrl(url, sandboxId, token), undefined);
    return sandbox;
  }

  async #open(url: string, firstMessage: string | undefined): Promise<void> {
    const ready = new Deferred<void>();
    this.#ready = ready;
    try {
      const connection = await this.#connect(url);
      if (firstMessage !== undefined) connection.send(firstMessage);
      await this.#wait(ready.promise, 'the sandbox to be ready');
    } catch (error) {
      this.#shutdown(error instanceof SandboxConnectionError ? error : new SandboxConnectionError('the connection is closed'));
      throw error;
    }
    if (this.#sandboxId !== undefined) {
      if (this.#sandboxToken !== undefined) rememberToken(this.#sandboxId, this.#sandboxToken);
      setLive(this.#sandboxId, this);
    }
  }

  /** Opens a connection whose events reach this sandbox until the next one is opened. */
  async #connect(url: string): Promise<Connection> {
    const generation = ++this.#generation;
    const gone = new Deferred<void>();
    this.#connectionGone = gone;
    const handlers: ConnectionHandlers = {
      onMessage: (text) => {
        if (generation === this.#generation) this.#apply(this.#protocol.receiveFrame(text));
      },
      onClose: (code, reason) => {
        gone.resolve();
        if (generation === this.#generation) this.#onClose(code, reason);
      },
    };
    const connectTimeout = this.#options.connectTimeout === undefined ? DEFAULT_CONNECT_TIMEOUT : this.#options.connectTimeout;
    const connection = await this.#transport.connect(
      url,
      { headers: this.#headers, connectTimeoutMs: connectTimeout === null ? undefined : connectTimeout * 1000 },
      handlers,
    );
    if (generation !== this.#generation) {
      connection.abort(); // given up meanwhile
      throw new SandboxConnectionError('the connection is closed');
    }
    this.#connection = connection;
    return connection;
  }

  #onClose(code: number | null, reason: string): void {
    this.#connection = undefined;
    const effects = this.#protocol.connectionClosed(code, reason);
    this.#apply(effects);
    if (effects.some((e) => e.type === 'Reconnect')) {
      this.#reattached = new Deferred<void>();
      void this.#reconnect();
    } else if (this.#attempt === undefined) {
      this.#markClosed(undefined);
    }
  }

  // ---- queries ---------------------------------------------------------------------------

  /** The service's base URL. */
  get url(): string {
    return this.#url;
  }

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
    if (this.#protocol.terminated) return 'killed';
    if (this.#protocol.checkpointed) return 'checkpointed';
    if (this.#closed.settled || this.#protocol.phase === 'closed') return 'closed';
    if (this.#protocol.phase === 'reattaching') return 'reconnecting';
    return 'running';
  }

  /**
   * 2 when the server announced protocol 2 (request ids, several processes at once, stdin flow
   * control, process handles); else 1.
   */
  get protocol(): number {
    return this.#protocol.protocol;
  }

  /** True once this connection is over (terminated, checkpointed, or lost). */
  get closed(): boolean {
    return this.#closed.settled;
  }

  get terminated(): boolean {
    return this.#protocol.terminated;
  }

  get checkpointed(): boolean {
    return this.#protocol.checkpointed;
  }

  // ---- executions ------------------------------------------------------------------------

  /**
   * Starts `code` in `language` and resolves to the process once the server confirmed it
   * started. With a server that speaks protocol 2, processes run side by side; with another, one
   * at a time: `exec` while one runs rejects with `SandboxStateError` without asking the server.
   */
  exec(code: string, language: Language | (string & {}), options: ExecOptions = {}): Promise<SandboxProcess> {
    return handled(this.#exec(code, language, options));
  }

  async #exec(code: string, language: string, options: ExecOptions): Promise<SandboxProcess> {
    if (typeof code !== 'string' || typeof language !== 'string') {
      throw new TypeError('exec(code, language): both must be strings');
    }
    const live = this.#liveElsewhere();
    if (live !== undefined) return live.exec(code, language, options);
    this.#checkUsable();
    const { id, frame } = this.#protocol.sendExec({
      code,
      language,
      env: options.env,
      cwd: options.cwd,
      timeout: options.timeout,
      outputEncoding: options.outputEncoding,
    });
    this.#callbacks.set(id, { onStdout: options.onStdout, onStderr: options.onStderr });
    return (await this.#request(id, frame, 'the execution to start')) as SandboxProcess;
  }

  /**
   * Runs `code` to the end; resolves to its output (text) and how it ended. `stdin` is written,
   * then stdin is closed (always: a program that reads stdin sees end-of-file instead of waiting
   * forever). If the server refuses the stdin, the process is killed and `run` rejects (also for a
   * refusal that came after the last write, from a server without protocol 2).
   */
  run(code: string, language: Language | (string & {}), options: RunOptions = {}): Promise<RunResult> {
    return handled(this.#run(code, language, options));
  }

  async #run(code: string, language: string, options: RunOptions): Promise<RunResult> {
    const { stdin, ...execOptions } = options;
    const process = await this.exec(code, language, execOptions);
    try {
      await feedAndClose(process, stdin);
      const [stdout, stderr, result] = await Promise.all([
        process.stdout.readAll(),
        process.stderr.readAll(),
        process.result(),
      ]);
      if (process.stdinError !== undefined) throw process.stdinError;
      return {
        stdout,
        stderr,
        exitCode: result.exitCode,
        reason: result.reason,
        signal: result.signal,
        durationMs: result.durationMs,
      };
    } catch (error) {
      // Do not leave the process running behind a failed run().
      if (!process.done && !this.closed) await process.kill().catch(() => undefined);
      throw error;
    }
  }

  /** The sandbox's processes, running or ended and not yet reported (protocol 2). */
  listProcesses(): Promise<ProcessInfo[]> {
    return handled(
      this.#simple(
        (live) => live.listProcesses(),
        () => this.#protocol.sendListProcesses(),
        'the process list',
      ) as Promise<ProcessInfo[]>,
    );
  }

  /**
   * Follows a process of the sandbox started elsewhere (another connection, another client
   * process) by its `processId` (see `listProcesses()`): its output held while nobody followed
   * it comes first, then what it writes from now on, then its end (protocol 2).
   */
  attachProcess(processId: number, options: AttachProcessOptions = {}): Promise<SandboxProcess> {
    return handled(this.#attachProcess(processId, options));
  }

  async #attachProcess(processId: number, options: AttachProcessOptions): Promise<SandboxProcess> {
    const live = this.#liveElsewhere();
    if (live !== undefined) return live.attachProcess(processId, options);
    this.#checkUsable();
    const { id, frame } = this.#protocol.sendAttachProcess(processId, options.outputEncoding);
    this.#callbacks.set(id, { onStdout: options.onStdout, onStderr: options.onStderr });
    return (await this.#request(id, frame, `process ${processId}`)) as SandboxProcess;
  }

  /**
   * Changes how long the sandbox lives without a client (seconds; 0: the server's cap), counted
   * from the disconnection. Resolves to what the server put in effect (protocol 2).
   */
  setIdleTimeout(idleTimeout: number): Promise<number | null> {
    return handled(
      this.#simple(
        (live) => live.setIdleTimeout(idleTimeout),
        () => this.#protocol.sendSetIdleTimeout(idleTimeout),
        'the idle timeout',
      ).then((value) => (typeof value === 'number' ? value : null)),
    );
  }

  // ---- code interpreter ------------------------------------------------------------------

  /**
   * Runs a cell of Python in a code context (the `"default"` one, created on first use, unless
   * `options.context` names another) and resolves to its `Execution`: variables, imports and
   * definitions persist from cell to cell. The trailing expression's value is the main result;
   * `display()` and matplotlib figures add results; an exception in the cell is
   * `Execution.error` (not a rejection). Cells of one context run one at a time: this waits for
   * the ones before it. A dead, deleted or unknown context rejects with `SandboxError`
   * (protocol 2).
   */
  runCode(code: string, options: RunCodeOptions = {}): Promise<Execution> {
    return handled(this.#runCode(code, options));
  }

  async #runCode(code: string, options: RunCodeOptions): Promise<Execution> {
    if (typeof code !== 'string') throw new TypeError('runCode(code): code must be a string');
    const live = this.#liveElsewhere();
    if (live !== undefined) return live.runCode(code, options);
    this.#checkUsable();
    const { id, frame } = this.#protocol.sendRunCode(code, contextIdOf(options.context), options.timeout);
    const collector = new CellCollector(options);
    this.#cells.set(id, collector);
    this.#callbacks.set(id, { onStdout: collector.stdout, onStderr: collector.stderr });
    const deferred = new Deferred<unknown>();
    this.#pending.set(id, deferred);
    try {
      this.#send(frame, true);
      // Not bounded by the request timeout: the cell may wait behind others of its context; the
      // server answers (or the session ends) in every case.
      const process = (await deferred.promise) as SandboxProcess;
      const result = await process.result();
      return collector.finish(process.processId ?? undefined, result);
    } catch (error) {
      this.#protocol.abandon(id);
      throw error;
    } finally {
      this.#pending.delete(id);
      this.#callbacks.delete(id);
      this.#cells.delete(id);
    }
  }

  /** A new code context (its own globals; `cwd` defaults to `/root`). */
  async createCodeContext(options: { cwd?: string } = {}): Promise<CodeContext> {
    const reply = await this.#codeContextAction('create_code_context', { cwd: options.cwd });
    return codeContextFromWire(reply['context']);
  }

  /** The sandbox's code contexts, with their `state` (idle, busy, dead). */
  async listCodeContexts(): Promise<CodeContext[]> {
    const reply = await this.#codeContextAction('list_code_contexts');
    const contexts = reply['contexts'];
    return Array.isArray(contexts) ? contexts.map(codeContextFromWire) : [];
  }

  /** A fresh process for the context (its state is lost; a dead one lives again). */
  async restartCodeContext(context: CodeContext | string): Promise<CodeContext> {
    const reply = await this.#codeContextAction('restart_code_context', { context_id: contextIdOf(context) });
    return codeContextFromWire(reply['context']);
  }

  /** Ends the context; cells waiting for it are refused. */
  async deleteCodeContext(context: CodeContext | string): Promise<void> {
    await this.#codeContextAction('delete_code_context', { context_id: contextIdOf(context) });
  }

  async #codeContextAction(action: string, fields: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
    const reply = await handled(
      this.#simple(
        (live) => live.#codeContextAction(action, fields),
        () => this.#protocol.sendCodeContextAction(action, fields),
        action,
      ),
    );
    return typeof reply === 'object' && reply !== null ? (reply as Record<string, unknown>) : {};
  }

  // ---- sandbox actions -------------------------------------------------------------------

  /**
   * Saves the sandbox's files as snapshot `name`; resolves once the server reported
   * `SANDBOX_FILESYSTEM_SNAPSHOT_CREATED`. The session goes on, with its processes. Rejects with
   * `SandboxSnapshotError` (an invalid name, a server without `FILESYSTEM_SNAPSHOT_PATH`, an
   * execution running); the session stays usable.
   */
  snapshotFilesystem(name: string): Promise<void> {
    if (typeof name !== 'string') return Promise.reject(new TypeError('the snapshot name must be a string'));
    return handled(
      this.#simple(
        (live) => live.snapshotFilesystem(name),
        () => this.#protocol.sendSnapshot(name),
        'the filesystem snapshot',
      ).then(() => undefined),
    );
  }

  /**
   * Saves the sandbox (filesystem and running processes) and disconnects; resolves once the
   * server reported `SANDBOX_CHECKPOINTED` and closed the connection. Continue later with
   * `Sandbox.attach(url, sandboxId)`, on this or any instance sharing `CHECKPOINT_AND_RESTORE_PATH`.
   * Rejects with `SandboxStateError` while an execution runs and `SandboxCheckpointError` when
   * the server refuses up front (the session goes on in both cases), or with
   * `SandboxCheckpointError` once the server closed when checkpointing is not possible at all.
   */
  checkpoint(): Promise<void> {
    return handled(this.#checkpoint());
  }

  async #checkpoint(): Promise<void> {
    const live = this.#liveElsewhere();
    if (live !== undefined) return live.checkpoint();
    this.#checkUsable();
    const { id, frame } = this.#protocol.sendCheckpoint();
    await this.#request(id, frame, 'the checkpoint');
    await this.#waitServerClose();
  }

  /**
   * Deletes the sandbox and its saved state (`kill_sandbox`). Safe to call without `await` (it
   * never causes an unhandled rejection); calling it again returns the same promise. If this
   * connection is already closed (it dropped, or a checkpoint closed it), it re-attaches first so
   * that the sandbox really goes.
   */
  terminate(): Promise<void> {
    this.#terminating ??= handled(this.#terminate());
    return this.#terminating;
  }

  /** Same as `terminate()`. */
  kill(): Promise<void> {
    return this.terminate();
  }

  async #terminate(): Promise<void> {
    if (this.#protocol.terminated || this.#sandboxId === undefined) return;
    if (!this.closed && this.#protocol.phase !== 'closed') {
      const { id, frame } = this.#protocol.sendTerminate();
      try {
        await this.#request(id, frame, 'the sandbox to be terminated');
      } catch (error) {
        // A silent server is an answer to give the caller; a closed connection is not final.
        if (!(error instanceof SandboxConnectionError) || error instanceof SandboxTimeoutError) throw error;
        if (this.#isTerminated()) return;
        // The connection closed under us (e.g. right after a failed checkpoint): re-attach below
        // to finish the job.
        await this.#waitServerClose();
      }
      if (this.#isTerminated()) {
        forgetToken(this.#sandboxId);
        await this.#waitServerClose();
        return;
      }
    }
    const live = this.#liveElsewhere();
    if (live !== undefined) {
      await live.terminate();
    } else {
      await this.#terminateByReattach();
    }
    this.#protocol.terminated = true;
    forgetToken(this.#sandboxId);
  }

  async #terminateByReattach(): Promise<void> {
    let other: Sandbox;
    try {
      other = await Sandbox.attach(this.#url, this.sandboxId, this.#sandboxToken, {
        transport: this.#transport,
        headers: this.#headers,
        connectTimeout: this.#options.connectTimeout,
        requestTimeout: this.#options.requestTimeout,
        closeTimeout: this.#options.closeTimeout,
      });
    } catch (error) {
      if (error instanceof SandboxNotFoundError) return; // already gone: what terminate() wants
      throw error;
    }
    await other.terminate();
  }

  /**
   * Closes this connection without deleting the sandbox (it lives on until its idle timeout;
   * `Sandbox.attach` continues it). Pending waits reject with `SandboxConnectionError`.
   */
  disconnect(): Promise<void> {
    return handled(this.#disconnect());
  }

  async #disconnect(): Promise<void> {
    const connection = this.#connection;
    const gone = this.#connectionGone;
    this.#shutdown(new SandboxConnectionError('disconnected by the client'));
    if (connection !== undefined && gone !== undefined) {
      // The server learns of it from the close handshake: wait for it (bounded), so that an
      // attach right after does not find the sandbox still held by this connection.
      await withTimeout(gone.promise, this.#closeTimeoutSeconds());
    }
  }

  // ---- the ProcessHost side --------------------------------------------------------------

  async #writeStdin(key: string, data: string | Uint8Array): Promise<void> {
    const asText = typeof data === 'string';
    const payload = typeof data === 'string' ? new TextEncoder().encode(data) : data;
    let offset = 0;
    while (offset < payload.length) {
      const control = this.#stdinControl(key, 'write to stdin');
      const changed = control.stdinChanged();
      if (!this.#reattached.settled && this.#protocol.stdinRoom(key) !== undefined) {
        // Stdin with flow control waits for the new connection (not queued), so that the
        // window is counted on the connection it is sent on.
        await this.#reattached.promise; // also resolved when the session ends
        continue;
      }
      const size = this.#protocol.nextStdinPiece(key, payload, offset, asText);
      if (size === 0) {
        await changed;
        continue;
      }
      const frame = this.#protocol.sendStdin(key, payload.subarray(offset, offset + size), asText);
      this.#send(frame, true);
      offset += size;
    }
  }

  async #closeStdin(key: string): Promise<void> {
    // Everything written must be acknowledged first (protocol 2): a refusal of it reaches this
    // call, and EOF comes after the last byte.
    for (;;) {
      const control = this.#controls.get(key);
      if (control?.stdinError !== undefined) throw control.stdinError;
      if (control === undefined || control.process.done) {
        if (this.closed && this.#closeError !== undefined) throw this.#closeError;
        return; // it ended meanwhile: nothing reads its stdin any more
      }
      const changed = control.stdinChanged();
      if (this.#protocol.stdinUnacknowledged(key) === 0) break;
      await changed;
    }
    this.#send(this.#protocol.sendCloseStdin(key), true);
  }

  /** The process's control while its stdin can still be used; else the reason. */
  #stdinControl(key: string, what: string): ProcessControl {
    const control = this.#controls.get(key);
    if (control?.stdinError !== undefined) throw control.stdinError;
    if (control === undefined || control.process.done) {
      if (this.closed && this.#closeError !== undefined) throw this.#closeError;
      throw new SandboxStateError(`cannot ${what}: the process has ended`);
    }
    return control;
  }

  async #killProcess(key: string): Promise<void> {
    const control = this.#controls.get(key);
    if (control === undefined || control.process.done) return;
    const { id, frame } = this.#protocol.sendKill(key);
    try {
      await this.#request(id, frame, 'the process to be killed');
    } catch (error) {
      // The process may have ended on its own while the kill was on its way (the server then
      // answers with an error): that is success.
      if (ended(control.process)) return;
      throw error;
    }
  }

  // ---- plumbing --------------------------------------------------------------------------

  /** Read anew after an `await` (the compiler would narrow `terminated` across it). */
  #isTerminated(): boolean {
    return this.#protocol.terminated;
  }

  #isClosed(): boolean {
    return this.#closed.settled;
  }

  /** A request with no process behind it, forwarded to the live session when this one ended. */
  async #simple(
    forward: (live: Sandbox) => Promise<unknown>,
    make: () => { id: string; frame: string },
    what: string,
  ): Promise<unknown> {
    const live = this.#liveElsewhere();
    if (live !== undefined) return forward(live);
    this.#checkUsable();
    const { id, frame } = make();
    return this.#request(id, frame, what);
  }

  /** Another handle's live session for this sandbox, when this one's has ended. */
  #liveElsewhere(): Sandbox | undefined {
    if (!this.closed || this.#protocol.terminated) return undefined;
    const live = liveSession(this.#sandboxId);
    if (!(live instanceof Sandbox) || live === this) return undefined;
    return live.closed ? undefined : live;
  }

  #checkUsable(): void {
    if (this.closed && this.#closeError !== undefined) {
      if (this.#protocol.terminated) throw new SandboxStateError('the sandbox was terminated');
      if (this.#protocol.checkpointed) {
        throw new SandboxStateError('the sandbox was checkpointed; attach to it to continue');
      }
      throw new SandboxStateError(`the connection to the sandbox is closed: ${this.#closeError.message}`);
    }
  }

  #requestTimeoutSeconds(): number | null {
    return this.#options.requestTimeout === undefined ? DEFAULT_REQUEST_TIMEOUT : this.#options.requestTimeout;
  }

  #closeTimeoutSeconds(): number {
    const seconds = this.#options.closeTimeout === undefined ? DEFAULT_CLOSE_TIMEOUT : this.#options.closeTimeout;
    return seconds ?? Infinity;
  }

  /** Waits for something the server settles, bounded by `requestTimeout`. */
  async #wait<T>(promise: Promise<T>, what: string): Promise<T> {
    const seconds = this.#requestTimeoutSeconds();
    if (seconds === null) return promise;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        reject(new SandboxTimeoutError(`no answer from the server within ${seconds}s waiting for ${what}`));
      }, seconds * 1000);
    });
    try {
      return await Promise.race([promise, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Sends a request and waits for its answer (the value of `RequestDone`). */
  async #request(requestId: string, frame: string, what: string): Promise<unknown> {
    const deferred = new Deferred<unknown>();
    this.#pending.set(requestId, deferred);
    try {
      this.#send(frame, true);
      return await this.#wait(deferred.promise, what);
    } catch (error) {
      this.#protocol.abandon(requestId);
      throw error;
    } finally {
      this.#pending.delete(requestId);
      this.#callbacks.delete(requestId);
    }
  }

  #send(frame: string, queueWhileReconnecting: boolean): void {
    // Queued from the drop until the re-attach sent `reconnect` and the queue, in that order.
    if (queueWhileReconnecting && (!this.#reattached.settled || this.#outbox.length > 0)) {
      this.#outbox.push(frame);
      return;
    }
    const connection = this.#connection;
    if (connection?.isOpen() === true && !this.closed) {
      connection.send(frame);
    } else if (this.#policy !== undefined && !this.closed) {
      // The connection is dying and its close not reported yet: the re-attach sends it after.
      this.#outbox.push(frame);
    } else {
      throw new SandboxConnectionError('the connection to the sandbox is closed');
    }
  }

  /** After kill_sandbox / checkpoint: the server closes; do not leave it half-open. */
  async #waitServerClose(): Promise<void> {
    await withTimeout(this.#closed.promise, this.#closeTimeoutSeconds());
    if (!this.closed) this.#shutdown(new SandboxConnectionError('closed by the client'));
  }

  /**
   * The server is expected to close: if it does not within `closeTimeout`, the client closes, so
   * that nothing waits on a half-open session.
   */
  #armCloseTimer(): void {
    const seconds = this.#closeTimeoutSeconds();
    if (this.#closeTimer !== undefined || !Number.isFinite(seconds)) return;
    this.#closeTimer = setTimeout(() => {
      this.#closeTimer = undefined;
      if (!this.closed) {
        this.#shutdown(
          new SandboxConnectionError(`the server did not close the connection within ${seconds}s; closed by the client`),
        );
      }
    }, seconds * 1000);
  }

  /** Re-attaches with backoff. True when the session continues on a new connection. */
  async #reconnect(): Promise<boolean> {
    const policy = this.#policy;
    if (policy === undefined || this.#sandboxId === undefined || this.#sandboxToken === undefined) return false;
    let lastError: SandboxError = new SandboxConnectionError('the connection dropped');
    const now = (): number => performance.now() / 1000;
    // A connection that drops again right after a successful re-attach does not get a fresh set
    // of attempts, so a server that accepts and drops cannot loop us.
    if (now() - this.#lastReattach > STABLE_AFTER) this.#reconnectStreak = 0;
    while (this.#reconnectStreak < policy.maxAttempts) {
      this.#reconnectStreak++;
      await sleep(reconnectDelay(policy, this.#reconnectStreak) * 1000);
      if (this.closed) return false; // the caller disconnected meanwhile
      const attempt = new Deferred<Outcome>();
      this.#attempt = attempt;
      this.#protocol.beginReattach();
      let connection: Connection;
      try {
        connection = await this.#connect(attachUrl(this.#url, this.#sandboxId, this.#sandboxToken));
      } catch (error) {
        this.#attempt = undefined;
        if (error instanceof SandboxConnectionError) {
          lastError = error;
          continue;
        }
        if (error instanceof SandboxAuthenticationError) {
          // The same credentials will be refused again (e.g. a revoked key).
          lastError = error;
          break;
        }
        throw error;
      }
      let outcome: Outcome;
      try {
        outcome = await this.#wait(attempt.promise, 'the re-attach');
      } catch (error) {
        this.#attempt = undefined;
        this.#generation++;
        connection.abort();
        lastError = error instanceof SandboxConnectionError ? error : lastError;
        continue;
      }
      this.#attempt = undefined;
      if (this.#isClosed()) return false; // the caller disconnected meanwhile
      if (outcome.type === 'Reattached') {
        connection.send(this.#protocol.sendReconnect());
        for (const frame of this.#outbox.splice(0)) connection.send(frame);
        this.#lastReattach = now();
        this.#reattached.resolve();
        return true;
      }
      this.#generation++;
      connection.abort();
      lastError = outcome.error;
      if (!outcome.retryable) break;
    }
    this.#outbox.length = 0;
    const message = `lost the connection to sandbox ${this.#sandboxId} and could not re-attach: ${lastError.message}`;
    const error =
      lastError instanceof SandboxAuthenticationError
        ? new SandboxAuthenticationError(message, { httpStatus: lastError.httpStatus, cause: lastError })
        : new SandboxConnectionError(message, { status: lastError.status, cause: lastError });
    this.#apply(this.#protocol.giveUp(error));
    this.#markClosed(error);
    return false;
  }

  #apply(effects: Effect[]): void {
    for (const effect of effects) this.#applyOne(effect);
  }

  #applyOne(effect: Effect): void {
    switch (effect.type) {
      case 'Ready':
        this.#sandboxId = effect.sandboxId;
        this.#sandboxToken = effect.sandboxToken;
        this.#ready?.resolve();
        break;
      case 'SetupFailed':
        this.#ready?.reject(effect.error);
        this.#markClosed(effect.error);
        break;
      case 'Reattached':
      case 'ReattachFailed':
        this.#attempt?.resolve(effect);
        break;
      case 'StatusSeen':
        if (this.#options.onStatus !== undefined) {
          const { onStatus } = this.#options;
          callBack(() => onStatus(effect.status, effect.message));
        }
        if (effect.status === 'SANDBOX_CHECKPOINTED' || effect.status === 'SANDBOX_KILLED') this.#armCloseTimer();
        break;
      case 'ProcessStarted': {
        const callbacks = this.#callbacks.get(effect.key);
        this.#callbacks.delete(effect.key);
        this.#controls.set(effect.key, newProcess(this.#host, effect.key, effect.processId, callbacks));
        break;
      }
      case 'RequestDone': {
        const deferred = this.#pending.get(effect.requestId);
        this.#pending.delete(effect.requestId);
        let value: unknown = effect.value;
        if (typeof value === 'string' && this.#controls.has(value)) {
          // An exec or attach_process: the caller gets the process (it may end within this same
          // batch of effects, before the caller resumes).
          value = this.#controls.get(value)?.process;
        }
        deferred?.resolve(value);
        break;
      }
      case 'RequestFailed': {
        const deferred = this.#pending.get(effect.requestId);
        this.#pending.delete(effect.requestId);
        if (deferred === undefined) break;
        if (effect.sessionEnds) {
          // Reported once the server's close came, so that the caller sees a settled session
          // (`closed` is true, attach works at once).
          this.#afterClose.push([deferred, effect.error]);
          this.#armCloseTimer();
        } else {
          deferred.reject(effect.error);
        }
        break;
      }
      case 'OutputReceived':
        this.#controls.get(effect.key)?.output(effect.stream, effect.data);
        break;
      case 'ProcessEnded': {
        const control = this.#controls.get(effect.key);
        this.#controls.delete(effect.key);
        control?.finish(effect.result);
        break;
      }
      case 'CellEventReceived': {
        const cell = this.#cells.get(effect.key);
        if (cell !== undefined) callBack(() => cell.event(effect.frame));
        break;
      }
      case 'StdinAcknowledged':
        this.#controls.get(effect.key)?.notifyStdin();
        break;
      case 'StdinFailed':
        this.#controls.get(effect.key)?.refuseStdin(effect.error);
        break;
      case 'SendFrame':
        try {
          this.#send(effect.frame, true);
        } catch {
          // The session is ending: nothing left to stop.
        }
        break;
      case 'Notice':
        if (this.#options.onError !== undefined) {
          const { onError } = this.#options;
          callBack(() => onError(effect.error));
        }
        break;
      case 'Reconnect':
        break;
      case 'Closed':
        this.#outbox.length = 0;
        this.#failAll(effect.error);
        if (effect.terminated && this.#sandboxId !== undefined) forgetToken(this.#sandboxId);
        this.#markClosed(effect.error);
        break;
    }
  }

  #failAll(error: SandboxError): void {
    this.#ready?.reject(error);
    for (const [deferred, own] of this.#afterClose.splice(0)) deferred.reject(own);
    for (const deferred of this.#pending.values()) deferred.reject(error);
    this.#pending.clear();
    const controls = [...this.#controls.values()];
    this.#controls.clear();
    for (const control of controls) control.fail(error);
  }

  #markClosed(error: SandboxError | undefined): void {
    this.#closeError ??= error ?? new SandboxConnectionError('the connection is closed');
    this.#closed.resolve();
    this.#reattached.resolve();
    if (this.#closeTimer !== undefined) clearTimeout(this.#closeTimer);
    this.#closeTimer = undefined;
    forgetLive(this.#sandboxId, this);
  }

  /** Ends the session here: closes the connection, settles whatever still waits. */
  #shutdown(error: SandboxError): void {
    this.#generation++; // the closed connection's events no longer concern us
    const connection = this.#connection;
    this.#connection = undefined;
    connection?.close(1000, 'client close');
    this.#attempt?.resolve({ type: 'ReattachFailed', error, retryable: false });
    this.#apply(this.#protocol.giveUp(error));
    this.#markClosed(error);
  }
}

/** `run()`'s stdin: written, then closed. A process that ended meanwhile did not need it. */
async function feedAndClose(process: SandboxProcess, stdin: string | Uint8Array | undefined): Promise<void> {
  try {
    if (stdin !== undefined && stdin.length > 0) await process.write(stdin);
    await process.closeStdin();
  } catch (error) {
    if (!(error instanceof SandboxStateError) || !process.done) throw error;
  }
}

/** Read anew after an `await` (the compiler would narrow `done` across it). */
function ended(process: SandboxProcess): boolean {
  return process.done;
}

function callBack(fn: () => void): void {
  try {
    fn();
  } catch {
    // A user's callback must not break the session.
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Waits for `promise`, at most `seconds` (the timer is cleared, so it never keeps Node alive). */
async function withTimeout(promise: Promise<unknown>, seconds: number): Promise<void> {
  if (!Number.isFinite(seconds)) {
    await promise;
    return;
  }
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([promise, new Promise<void>((resolve) => (timer = setTimeout(resolve, seconds * 1000)))]);
  } finally {
    clearTimeout(timer);
  }
}

export type { ReconnectOptions } from './internal/reconnect.js';
