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
import { type SandboxError } from './errors.js';
import { type CodeContext, type Execution, type RunCodeOptions } from './code.js';
import { type OutputEncoding } from './internal/frames.js';
import { type ReconnectOptions } from './internal/reconnect.js';
import { type Transport, type WebSocketConstructor } from './internal/transport.js';
import { type OutputCallback, type SandboxProcess } from './process.js';
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
export declare class Sandbox {
    #private;
    private constructor();
    /**
     * Creates a new sandbox and waits until it runs. `url` is the service's base URL (`wss://host`,
     * `ws://127.0.0.1:8080`; `https://` / `http://` work too). Rejects with `SandboxCreationError`
     * (with the server's message) when the server refuses, `SandboxConnectionError` when it cannot
     * be reached.
     */
    static create(url: string, options?: CreateOptions): Promise<Sandbox>;
    /**
     * The sandboxes of the server instance that answers (`GET /sandboxes`), or with
     * `checkpointed: true` the checkpoints in its store, one page of at most `limit` from `after` on
     * (`nextAfter` for the next page). Behind a load balancer (Cloud Run) the answer comes from
     * whichever instance got the request. Tokens are never listed. A refusal (HTTP 401 or 403)
     * rejects with `SandboxAuthenticationError`.
     */
    static list(url: string, options?: ListOptions): Promise<SandboxList>;
    /**
     * Attaches to a live sandbox, or restores a checkpointed one. `sandboxToken` may be omitted
     * for a sandbox created (or attached with a token) in this process: the library remembers it.
     */
    static attach(url: string, sandboxId: string, sandboxToken?: string, options?: AttachOptions): Promise<Sandbox>;
    /** The service's base URL. */
    get url(): string;
    /** The sandbox's id (use it with `Sandbox.attach`). */
    get sandboxId(): string;
    /** The secret that `Sandbox.attach` needs in another process. Keep it private. */
    get sandboxToken(): string | undefined;
    /** See `SandboxState`. */
    get state(): SandboxState;
    /**
     * 2 when the server announced protocol 2 (request ids, several processes at once, stdin flow
     * control, process handles); else 1.
     */
    get protocol(): number;
    /** True once this connection is over (terminated, checkpointed, or lost). */
    get closed(): boolean;
    get terminated(): boolean;
    get checkpointed(): boolean;
    /**
     * Starts `code` in `language` and resolves to the process once the server confirmed it
     * started. With a server that speaks protocol 2, processes run side by side; with another, one
     * at a time: `exec` while one runs rejects with `SandboxStateError` without asking the server.
     */
    exec(code: string, language: Language | (string & {}), options?: ExecOptions): Promise<SandboxProcess>;
    /**
     * Runs `code` to the end; resolves to its output (text) and how it ended. `stdin` is written,
     * then stdin is closed (always: a program that reads stdin sees end-of-file instead of waiting
     * forever). If the server refuses the stdin, the process is killed and `run` rejects (also for a
     * refusal that came after the last write, from a server without protocol 2).
     */
    run(code: string, language: Language | (string & {}), options?: RunOptions): Promise<RunResult>;
    /** The sandbox's processes, running or ended and not yet reported (protocol 2). */
    listProcesses(): Promise<ProcessInfo[]>;
    /**
     * Follows a process of the sandbox started elsewhere (another connection, another client
     * process) by its `processId` (see `listProcesses()`): its output held while nobody followed
     * it comes first, then what it writes from now on, then its end (protocol 2).
     */
    attachProcess(processId: number, options?: AttachProcessOptions): Promise<SandboxProcess>;
    /**
     * Changes how long the sandbox lives without a client (seconds; 0: the server's cap), counted
     * from the disconnection. Resolves to what the server put in effect (protocol 2).
     */
    setIdleTimeout(idleTimeout: number): Promise<number | null>;
    /**
     * Runs a cell of Python in a code context (the `"default"` one, created on first use, unless
     * `options.context` names another) and resolves to its `Execution`: variables, imports and
     * definitions persist from cell to cell. The trailing expression's value is the main result;
     * `display()` and matplotlib figures add results; an exception in the cell is
     * `Execution.error` (not a rejection). Cells of one context run one at a time: this waits for
     * the ones before it. A dead, deleted or unknown context rejects with `SandboxError`
     * (protocol 2).
     */
    runCode(code: string, options?: RunCodeOptions): Promise<Execution>;
    /** A new code context (its own globals; `cwd` defaults to `/root`). */
    createCodeContext(options?: {
        cwd?: string;
    }): Promise<CodeContext>;
    /** The sandbox's code contexts, with their `state` (idle, busy, dead). */
    listCodeContexts(): Promise<CodeContext[]>;
    /** A fresh process for the context (its state is lost; a dead one lives again). */
    restartCodeContext(context: CodeContext | string): Promise<CodeContext>;
    /** Ends the context; cells waiting for it are refused. */
    deleteCodeContext(context: CodeContext | string): Promise<void>;
    /**
     * Saves the sandbox's files as snapshot `name`; resolves once the server reported
     * `SANDBOX_FILESYSTEM_SNAPSHOT_CREATED`. The session goes on, with its processes. Rejects with
     * `SandboxSnapshotError` (an invalid name, a server without `FILESYSTEM_SNAPSHOT_PATH`, an
     * execution running); the session stays usable.
     */
    snapshotFilesystem(name: string): Promise<void>;
    /**
     * Saves the sandbox (filesystem and running processes) and disconnects; resolves once the
     * server reported `SANDBOX_CHECKPOINTED` and closed the connection. Continue later with
     * `Sandbox.attach(url, sandboxId)`, on this or any instance sharing `CHECKPOINT_AND_RESTORE_PATH`.
     * Rejects with `SandboxStateError` while an execution runs and `SandboxCheckpointError` when
     * the server refuses up front (the session goes on in both cases), or with
     * `SandboxCheckpointError` once the server closed when checkpointing is not possible at all.
     */
    checkpoint(): Promise<void>;
    /**
     * Deletes the sandbox and its saved state (`kill_sandbox`). Safe to call without `await` (it
     * never causes an unhandled rejection); calling it again returns the same promise. If this
     * connection is already closed (it dropped, or a checkpoint closed it), it re-attaches first so
     * that the sandbox really goes.
     */
    terminate(): Promise<void>;
    /** Same as `terminate()`. */
    kill(): Promise<void>;
    /**
     * Closes this connection without deleting the sandbox (it lives on until its idle timeout;
     * `Sandbox.attach` continues it). Pending waits reject with `SandboxConnectionError`.
     */
    disconnect(): Promise<void>;
}
export type { ReconnectOptions } from './internal/reconnect.js';
//# sourceMappingURL=sandbox.d.ts.map