/**
 * The client side of the wire protocol, without any I/O (sans-IO): the twin of the Python
 * client's `_protocol.py`, line for line where the languages allow.
 *
 * `ClientProtocol` is fed what happened on the socket (a text frame arrived, the connection
 * closed) and the user's requests (run code, write stdin, checkpoint...). It returns the frames
 * to send and a list of effects (`effects.ts`): facts for the I/O layer, such as "the sandbox is
 * ready", "process 3 started", "output arrived", "request 5 failed with this error", "reconnect
 * now". It never touches a socket or a timer, so every flow is a plain test (`tests/flows/*.json`
 * at the repository root).
 *
 * Two modes, chosen by the server's `SANDBOX_RUNNING`:
 *
 * - **Protocol 2** (it says `"protocol": 2`): every request carries an `id` (`"1"`, `"2"`, ...)
 *   and every answer echoes it, so answers are paired by id only. Several processes run at once,
 *   each with its own handle; stdin has a window the server acknowledges (`stdin_ack`), so writes
 *   never overrun it.
 * - **Protocol 1** (any other server, including the original one): ids are still sent and ignored
 *   by the server. The server answers a connection's messages in order and runs one execution at
 *   a time, so an answer goes to the oldest pending request of the kind its status answers. A
 *   second execution is refused here, before the server sees it. `SANDBOX_EXECUTION_ERROR` is the
 *   one status two requests share (an exec refused, or stdin that reached the server after the
 *   execution ended); see `staleStdin`.
 *
 * In both, an error `status_update` is followed by an `error` event with the same text. A server
 * with our additions also puts the text in the status (`message`); a core server does not. Both
 * work: a message-less error status is held until its `error` event (or the next frame, or the
 * close) supplies the text, and an `error` event that repeats a status's message is dropped.
 * Unknown events, statuses and keys are ignored.
 *
 * A process is known by its key: the id of the request that made its handle (the exec, or the
 * `attach_process`).
 */
import { SandboxError } from '../errors.js';
import type { Effect } from './effects.js';
import { type ExecRequest, type OutputEncoding } from './frames.js';
/** Raw bytes of stdin in one message (the design's bound; base64 makes it 1.33 MiB). */
export declare const MAX_STDIN_CHUNK: number;
/** The window of a process whose RUNNING did not give one: the in-flight bound without flow control. */
export declare const DEFAULT_STDIN_WINDOW: number;
/**
 * Close codes after which a dropped connection is worth re-attaching: the server going away or
 * restarting, or no close frame at all (`null`: the connection dropped). A final status before
 * the close (not found, in use, killed, checkpointed...) wins over the code.
 */
export declare const RETRYABLE_CLOSE_CODES: ReadonlySet<number>;
export type Phase = 'setup' | 'open' | 'reattaching' | 'closed';
/** One sandbox session as seen by the client. See the module comment. */
export declare class ClientProtocol {
    readonly attach: boolean;
    readonly autoReconnect: boolean;
    phase: Phase;
    sandboxId: string | undefined;
    sandboxToken: string | undefined;
    /** 2 once the server announced it; 1 until then (and for servers that never do). */
    protocol: number;
    /** The sandbox is known to be gone (killed). */
    terminated: boolean;
    /** The sandbox is known to be saved (checkpointed). */
    checkpointed: boolean;
    private nextId;
    /** In the order they were sent. */
    private readonly requests;
    private readonly processes;
    /** Request id -> process key (protocol 2). */
    private readonly aliases;
    /** Protocol 2: execs the caller stopped waiting for; their process is killed. */
    private readonly abandoned;
    /** Protocol 2: attach_process requests: process id and binary output. */
    private readonly pendingAttach;
    /**
     * Protocol 2: the `seq` of the last numbered event of each process that has not ended, sent
     * with `reconnect` so that the server sends again what a drop lost.
     */
    private readonly received;
    /** The code of a SANDBOX_FILE_ERROR status, until its error event gives the text. */
    private readonly fileCodes;
    /** Protocol 1: the key of the one process (starting or running). */
    private foreground;
    /** Protocol 1: the server runs an execution nobody waits for (being killed). */
    private orphanRunning;
    /**
     * Protocol 1: stdin frames sent while the last execution ran. Each one that reached the server
     * after the execution ended is answered with SANDBOX_EXECUTION_ERROR, possibly after we saw
     * DONE: that many such errors are stale, not answers to a following exec.
     */
    private staleStdin;
    private stdinThisExecution;
    /** Error statuses waiting for / already given their message: [status, id]. */
    private heldStatus;
    private echo;
    /** A status after which the server closes and the close is final. */
    private final;
    /**
     * SANDBOX_CHECKPOINTING came since the last checkpoint request. A checkpoint error without it
     * means checkpointing is not possible at all and the server closes (4000); after it, a refusal
     * up front keeps the session.
     */
    private checkpointingSeen;
    private checkpointError;
    private closingByRequest;
    private closedEmitted;
    /** The current re-attach attempt already failed. */
    private attemptFailed;
    constructor(attach: boolean, autoReconnect?: boolean);
    /** Bytes of stdin the process may be sent now; undefined: no flow control. */
    stdinRoom(key: string): number | undefined;
    /** Bytes sent to the process's stdin that the server has not acknowledged yet. */
    stdinUnacknowledged(key: string): number;
    /**
     * How many bytes of `data[offset..]` the next stdin message may carry now; 0: wait for an
     * acknowledgement. Pieces are at most 1 MiB, and at most the window.
     */
    nextStdinPiece(key: string, data: Uint8Array, offset: number, asText: boolean): number;
    private newId;
    private requireOpen;
    private requireProtocol2;
    private live;
    private addRequest;
    /** Returns the request id (the process's key once it runs) and the frame. */
    sendExec(req: ExecRequest): {
        id: string;
        frame: string;
    };
    /**
     * A code cell (protocol 2): a process like an exec's, whose `result` and `execution_error`
     * events come as `CellEventReceived`. Returns the request id (the process's key once it runs).
     */
    sendRunCode(code: string, contextId?: string, timeout?: number): {
        id: string;
        frame: string;
    };
    /** create/list/restart/delete_code_context (protocol 2); the reply frame is the value. */
    sendCodeContextAction(action: string, fields?: Record<string, unknown>): {
        id: string;
        frame: string;
    };
    /** The frame for one piece of stdin (see `nextStdinPiece`). */
    sendStdin(key: string, data: Uint8Array, asText: boolean): string;
    sendCloseStdin(key: string): string;
    sendKill(key: string): {
        id: string;
        frame: string;
    };
    /** The `process_id` to address a process with (protocol 2), else undefined: the foreground. */
    private target;
    sendSnapshot(name: string): {
        id: string;
        frame: string;
    };
    sendCheckpoint(): {
        id: string;
        frame: string;
    };
    sendTerminate(): {
        id: string;
        frame: string;
    };
    /** A terminal's new window size. */
    sendResize(key: string, cols: number, rows: number): {
        id: string;
        frame: string;
    };
    sendListProcesses(): {
        id: string;
        frame: string;
    };
    sendSetIdleTimeout(idleTimeout: number): {
        id: string;
        frame: string;
    };
    sendExpose(port: number): {
        id: string;
        frame: string;
    };
    sendUnexpose(port: number): {
        id: string;
        frame: string;
    };
    sendListPorts(): {
        id: string;
        frame: string;
    };
    sendAttachProcess(processId: number, outputEncoding?: OutputEncoding): {
        id: string;
        frame: string;
    };
    /**
     * A file action (docs/protocol.md "Files"): its request id and frame. The reply finishes the
     * request with the whole `reply` frame as its value.
     */
    sendFile(action: string, fields: Record<string, unknown>): {
        id: string;
        frame: string;
    };
    /** A later chunk of the write `requestId` (same id; `more: false` ends it). */
    sendFileChunk(requestId: string, data: Uint8Array, more: boolean): string;
    /** After a re-attach: resend what was held while we were away. */
    sendReconnect(): string;
    /** The caller stopped waiting for the answer (timeout or cancellation). */
    abandon(requestId: string): void;
    receiveFrame(text: string): Effect[];
    private flushHeld;
    /**
     * The request an answer of these kinds is for: by id (protocol 2), else the oldest pending one
     * of those kinds (protocol 1).
     */
    private answering;
    /** Protocol 2: the process an event with this id is about. */
    private processFor;
    private onStatus;
    private onRunning;
    private onExecutionRunning2;
    private onExecutionRunning1;
    /**
     * The server runs an execution whose caller gave up waiting for it to start (timeout, or its
     * answer was lost with the connection): stop it, so that it does not hold the foreground slot
     * (protocol 1) or a process slot.
     */
    private killOrphan;
    /**
     * Protocol 2: the process an output or DONE is about; an exec whose RUNNING was lost (in a
     * dropped connection) starts with its first other event.
     */
    private processOrStart;
    private start;
    private end;
    private forget;
    private finish;
    private fail;
    private onErrorStatus;
    private onErrorStatus2;
    private onErrorStatus1;
    /**
     * Protocol 1: whether an execution error answers late stdin rather than an exec. Only when
     * stdin was sent in the last execution; and when an exec waits for its answer, only if the text
     * is about stdin (ours says "no execution is running to receive stdin"), so that an exec
     * refused right after is not mistaken for it.
     */
    private isStaleStdinError;
    private onLoneError;
    private onOutput;
    private onReply;
    private onAttached;
    private onStdinAck;
    /**
     * The socket closed. `code` is the server's close code, `null` if no close frame came (the
     * connection dropped).
     */
    connectionClosed(code: number | null, reason?: string): Effect[];
    /** The I/O layer opened a new `/attach` connection after a drop. */
    beginReattach(): void;
    /** Reconnecting failed for good (or the user closed the sandbox). */
    giveUp(error: SandboxError): Effect[];
    /**
     * Remember the last numbered event of each process (the latest, not the highest: a restored
     * sandbox numbers its processes' events from 1 again).
     */
    private noteReceived;
    private failEverything;
}
//# sourceMappingURL=protocol.d.ts.map