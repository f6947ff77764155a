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
import { SandboxConnectionError, SandboxError, SandboxFileError, SandboxStateError, errorFromStatus, isErrorStatus, } from '../errors.js';
import { base64ToBytes, bytesToBase64 } from './base64.js';
import { actionMessage, checkPort, execMessage, optInt, optNumber, optStr, parseFrame, stdinMessage, } from './frames.js';
/** Raw bytes of stdin in one message (the design's bound; base64 makes it 1.33 MiB). */
export const MAX_STDIN_CHUNK = 1024 * 1024;
/** The window of a process whose RUNNING did not give one: the in-flight bound without flow control. */
export const DEFAULT_STDIN_WINDOW = 1024 * 1024;
/**
 * Close codes after which a dropped connection is worth re-attaching: the server going away or
 * restarting, or no close frame at all (`null`: the connection dropped). A final status before
 * the close (not found, in use, killed, checkpointed...) wins over the code.
 */
export const RETRYABLE_CLOSE_CODES = new Set([1001, 1005, 1006, 1011, 1012, 1013, 1014]);
/** Requests of which one at a time may wait for its answer. */
const ONE_AT_A_TIME = ['snapshot_filesystem', 'checkpoint', 'kill_sandbox'];
class Process {
    key;
    binary;
    started = false;
    processId;
    /** stdin flow control (protocol 2): undefined means none (protocol 1: send freely). */
    window;
    sent = 0;
    written = 0;
    /** Protocol 1: a reconnect was sent while it ran; its next RUNNING is the resume marker. */
    resume = false;
    /** Incremental decoders, used only if a text-mode process gets base64 chunks. */
    decoders = new Map();
    constructor(key, binary) {
        this.key = key;
        this.binary = binary;
    }
    convert(data, isBase64, stream) {
        if (this.binary)
            return isBase64 ? b64decode(data) : new TextEncoder().encode(data);
        if (!isBase64)
            return data;
        let decoder = this.decoders.get(stream);
        if (decoder === undefined) {
            decoder = new TextDecoder('utf-8');
            this.decoders.set(stream, decoder);
        }
        return decoder.decode(b64decode(data), { stream: true });
    }
    flush() {
        const out = [];
        for (const [stream, decoder] of this.decoders) {
            const rest = decoder.decode();
            if (rest)
                out.push([stream, rest]);
        }
        return out;
    }
}
function b64decode(data) {
    try {
        return base64ToBytes(data);
    }
    catch {
        return new Uint8Array(0);
    }
}
/**
 * `size`, shortened so that `data[start, start+size)` does not end inside a UTF-8 character
 * (unless that leaves nothing).
 */
function utf8Boundary(data, start, size) {
    const end = start + size;
    if (end >= data.length)
        return size;
    let cut = end;
    while (cut > start && ((data[cut] ?? 0) & 0xc0) === 0x80)
        cut--;
    return cut > start ? cut - start : size;
}
function isValidUtf8(data) {
    try {
        new TextDecoder('utf-8', { fatal: true }).decode(data);
        return true;
    }
    catch {
        return false;
    }
}
/** One sandbox session as seen by the client. See the module comment. */
export class ClientProtocol {
    attach;
    autoReconnect;
    phase = 'setup';
    sandboxId;
    sandboxToken;
    /** 2 once the server announced it; 1 until then (and for servers that never do). */
    protocol = 1;
    /** The sandbox is known to be gone (killed). */
    terminated = false;
    /** The sandbox is known to be saved (checkpointed). */
    checkpointed = false;
    nextId = 1;
    /** In the order they were sent. */
    requests = new Map();
    processes = new Map();
    /** Request id -> process key (protocol 2). */
    aliases = new Map();
    /** Protocol 2: execs the caller stopped waiting for; their process is killed. */
    abandoned = new Set();
    /** Protocol 2: attach_process requests: process id and binary output. */
    pendingAttach = new Map();
    /**
     * Protocol 2: the `seq` of the last numbered event of each process that has not ended, sent
     * with `reconnect` so that the server sends again what a drop lost.
     */
    received = new Map();
    /** The code of a SANDBOX_FILE_ERROR status, until its error event gives the text. */
    fileCodes = new Map();
    /** Protocol 1: the key of the one process (starting or running). */
    foreground;
    /** Protocol 1: the server runs an execution nobody waits for (being killed). */
    orphanRunning = false;
    /**
     * Protocol 1: stdin frames sent while the last execution ran. Each one that reached the server
     * after the execution ended is answered with SANDBOX_EXECUTION_ERROR, possibly after we saw
     * DONE: that many such errors are stale, not answers to a following exec.
     */
    staleStdin = 0;
    stdinThisExecution = 0;
    /** Error statuses waiting for / already given their message: [status, id]. */
    heldStatus;
    echo;
    /** A status after which the server closes and the close is final. */
    final;
    /**
     * SANDBOX_CHECKPOINTING came since the last checkpoint request. A checkpoint error without it
     * means checkpointing is not possible at all and the server closes (4000); after it, a refusal
     * up front keeps the session.
     */
    checkpointingSeen = false;
    checkpointError;
    closingByRequest = false;
    closedEmitted = false;
    /** The current re-attach attempt already failed. */
    attemptFailed = false;
    constructor(attach, autoReconnect = false) {
        this.attach = attach;
        this.autoReconnect = autoReconnect;
    }
    // ---- queries ---------------------------------------------------------------------------
    /** Bytes of stdin the process may be sent now; undefined: no flow control. */
    stdinRoom(key) {
        const process = this.processes.get(key);
        if (process?.window === undefined)
            return undefined;
        return process.window - Math.max(0, process.sent - process.written);
    }
    /** Bytes sent to the process's stdin that the server has not acknowledged yet. */
    stdinUnacknowledged(key) {
        const process = this.processes.get(key);
        if (process?.window === undefined)
            return 0;
        return Math.max(0, process.sent - process.written);
    }
    /**
     * How many bytes of `data[offset..]` the next stdin message may carry now; 0: wait for an
     * acknowledgement. Pieces are at most 1 MiB, and at most the window.
     */
    nextStdinPiece(key, data, offset, asText) {
        const process = this.live(key, 'write to stdin');
        let limit = MAX_STDIN_CHUNK;
        if (process.window !== undefined)
            limit = Math.max(1, Math.min(limit, process.window));
        let size = Math.min(limit, data.length - offset);
        if (asText)
            size = utf8Boundary(data, offset, size);
        const room = this.stdinRoom(key);
        if (room !== undefined && room < size)
            return 0;
        return size;
    }
    // ---- requests (client) -----------------------------------------------------------------
    newId() {
        return String(this.nextId++);
    }
    requireOpen(what) {
        if (this.phase === 'closed') {
            if (this.terminated)
                throw new SandboxStateError(`cannot ${what}: the sandbox was terminated`);
            if (this.checkpointed) {
                throw new SandboxStateError(`cannot ${what}: the sandbox was checkpointed; attach to it to continue`);
            }
            throw new SandboxStateError(`cannot ${what}: the connection to the sandbox is closed`);
        }
        if (this.phase === 'setup')
            throw new SandboxStateError(`cannot ${what}: the sandbox is not ready yet`);
        if (this.closingByRequest) {
            throw new SandboxStateError(`cannot ${what}: the sandbox is being terminated or saved`);
        }
    }
    requireProtocol2(what) {
        if (this.protocol < 2) {
            throw new SandboxStateError(`cannot ${what}: the server does not announce protocol 2 (it runs one execution at a time and has no process handles)`);
        }
    }
    live(key, what) {
        const process = this.processes.get(key);
        if (process === undefined)
            throw new SandboxStateError(`cannot ${what}: the process has ended`);
        // Allowed while reconnecting: the I/O layer queues the frame.
        if (this.phase === 'closed' || this.closingByRequest)
            this.requireOpen(what);
        return process;
    }
    addRequest(kind, key) {
        if (ONE_AT_A_TIME.includes(kind) && [...this.requests.values()].some((r) => r.kind === kind)) {
            throw new SandboxStateError(`a ${kind} request is already waiting for its answer`);
        }
        const request = { id: this.newId(), kind, key, end: 0 };
        this.requests.set(request.id, request);
        return request;
    }
    /** Returns the request id (the process's key once it runs) and the frame. */
    sendExec(req) {
        this.requireOpen('start an execution');
        // Checked at run time too: JavaScript callers are not type-checked.
        const encoding = req.outputEncoding ?? 'text';
        if (encoding !== 'text' && encoding !== 'base64') {
            throw new TypeError(`outputEncoding must be 'text' or 'base64', not ${JSON.stringify(encoding)}`);
        }
        if (this.protocol < 2 && this.foreground !== undefined) {
            throw new SandboxStateError('an execution is already running in this sandbox and this server runs one at a time ' +
                '(it does not announce protocol 2); wait for it (process.wait()) or kill it first');
        }
        if (req.pty !== undefined)
            this.requireProtocol2('open a terminal');
        const request = this.addRequest('exec');
        request.key = request.id;
        this.processes.set(request.id, new Process(request.id, encoding === 'base64'));
        if (this.protocol < 2)
            this.foreground = request.id;
        return { id: request.id, frame: execMessage(request.id, req) };
    }
    /**
     * A code cell (protocol 2): a process like an exec's, whose `result` and `execution_error`
     * events come as `CellEventReceived`. Returns the request id (the process's key once it runs).
     */
    sendRunCode(code, contextId, timeout) {
        this.requireOpen('run code');
        this.requireProtocol2('run code');
        const request = this.addRequest('exec');
        request.key = request.id;
        this.processes.set(request.id, new Process(request.id, false));
        const extra = { code };
        if (contextId !== undefined)
            extra['context_id'] = contextId;
        if (timeout !== undefined)
            extra['timeout'] = timeout;
        return { id: request.id, frame: actionMessage('run_code', request.id, extra) };
    }
    /** create/list/restart/delete_code_context (protocol 2); the reply frame is the value. */
    sendCodeContextAction(action, fields = {}) {
        this.requireOpen('manage code contexts');
        this.requireProtocol2('manage code contexts');
        const request = this.addRequest('code_context');
        const given = Object.fromEntries(Object.entries(fields).filter(([, value]) => value !== undefined));
        return { id: request.id, frame: actionMessage(action, request.id, given) };
    }
    /** The frame for one piece of stdin (see `nextStdinPiece`). */
    sendStdin(key, data, asText) {
        const process = this.live(key, 'write to stdin');
        const requestId = this.newId();
        if (process.window !== undefined) {
            process.sent += data.length;
            this.requests.set(requestId, { id: requestId, kind: 'stdin', key, end: process.sent });
        }
        else {
            this.stdinThisExecution++;
        }
        return stdinMessage(requestId, this.target(process), data, asText && isValidUtf8(data));
    }
    sendCloseStdin(key) {
        const process = this.live(key, 'close stdin');
        const requestId = this.newId();
        if (process.window !== undefined) {
            // Never covered by an acknowledgement: an error about it is still its own.
            this.requests.set(requestId, { id: requestId, kind: 'stdin', key, end: process.sent + 1 });
        }
        else {
            this.stdinThisExecution++;
        }
        return stdinMessage(requestId, this.target(process), undefined, true, true);
    }
    sendKill(key) {
        const process = this.live(key, 'kill the process');
        const request = this.addRequest('kill_process', key);
        const target = this.target(process);
        return { id: request.id, frame: actionMessage('kill_process', request.id, target === undefined ? {} : { process_id: target }) };
    }
    /** The `process_id` to address a process with (protocol 2), else undefined: the foreground. */
    target(process) {
        return this.protocol >= 2 ? process.processId : undefined;
    }
    sendSnapshot(name) {
        this.requireOpen('snapshot the filesystem');
        const request = this.addRequest('snapshot_filesystem');
        return { id: request.id, frame: actionMessage('snapshot_filesystem', request.id, { name }) };
    }
    sendCheckpoint() {
        this.requireOpen('checkpoint');
        const request = this.addRequest('checkpoint');
        this.checkpointingSeen = false;
        return { id: request.id, frame: actionMessage('checkpoint', request.id) };
    }
    sendTerminate() {
        this.requireOpen('terminate');
        const request = this.addRequest('kill_sandbox');
        this.closingByRequest = true;
        return { id: request.id, frame: actionMessage('kill_sandbox', request.id) };
    }
    /** A terminal's new window size. */
    sendResize(key, cols, rows) {
        const process = this.live(key, 'resize the terminal');
        this.requireProtocol2('resize a terminal');
        const request = this.addRequest('resize', key);
        return {
            id: request.id,
            frame: actionMessage('resize', request.id, { process_id: process.processId, cols, rows }),
        };
    }
    sendListProcesses() {
        this.requireOpen('list processes');
        this.requireProtocol2('list processes');
        const request = this.addRequest('list_processes');
        return { id: request.id, frame: actionMessage('list_processes', request.id) };
    }
    sendSetIdleTimeout(idleTimeout) {
        this.requireOpen('set the idle timeout');
        this.requireProtocol2('set the idle timeout');
        const request = this.addRequest('set_idle_timeout');
        return { id: request.id, frame: actionMessage('set_idle_timeout', request.id, { idle_timeout: idleTimeout }) };
    }
    sendExpose(port) {
        this.requireOpen('expose a port');
        this.requireProtocol2('expose a port');
        const checked = checkPort(port);
        const request = this.addRequest('expose');
        return { id: request.id, frame: actionMessage('expose', request.id, { port: checked }) };
    }
    sendUnexpose(port) {
        this.requireOpen('unexpose a port');
        this.requireProtocol2('unexpose a port');
        const checked = checkPort(port);
        const request = this.addRequest('unexpose');
        return { id: request.id, frame: actionMessage('unexpose', request.id, { port: checked }) };
    }
    sendListPorts() {
        this.requireOpen('list the exposed ports');
        this.requireProtocol2('list the exposed ports');
        const request = this.addRequest('list_ports');
        return { id: request.id, frame: actionMessage('list_ports', request.id) };
    }
    sendAttachProcess(processId, outputEncoding = 'text') {
        this.requireOpen('attach to a process');
        this.requireProtocol2('attach to a process');
        const encoding = outputEncoding;
        if (encoding !== 'text' && encoding !== 'base64') {
            throw new TypeError(`outputEncoding must be 'text' or 'base64', not ${JSON.stringify(encoding)}`);
        }
        const request = this.addRequest('attach_process');
        request.key = request.id;
        // Its events carry this id from the reply on; the process is made then.
        this.pendingAttach.set(request.id, { processId, binary: outputEncoding === 'base64' });
        return { id: request.id, frame: actionMessage('attach_process', request.id, { process_id: processId }) };
    }
    /**
     * A file action (docs/protocol.md "Files"): its request id and frame. The reply finishes the
     * request with the whole `reply` frame as its value.
     */
    sendFile(action, fields) {
        this.requireOpen('use files');
        this.requireProtocol2('use files');
        const request = this.addRequest('file');
        return { id: request.id, frame: actionMessage(action, request.id, fields) };
    }
    /** A later chunk of the write `requestId` (same id; `more: false` ends it). */
    sendFileChunk(requestId, data, more) {
        return actionMessage('write_file', requestId, { data: bytesToBase64(data), more });
    }
    /** After a re-attach: resend what was held while we were away. */
    sendReconnect() {
        if (this.protocol < 2) {
            const foreground = this.processes.get(this.foreground ?? '');
            if (foreground?.started === true)
                foreground.resume = true;
        }
        if (this.protocol >= 2 && this.received.size > 0) {
            const received = Object.fromEntries([...this.received].map(([pid, seq]) => [String(pid), seq]));
            return actionMessage('reconnect', this.newId(), { received });
        }
        return actionMessage('reconnect', this.newId());
    }
    /** The caller stopped waiting for the answer (timeout or cancellation). */
    abandon(requestId) {
        const request = this.requests.get(requestId);
        if (request === undefined)
            return;
        this.requests.delete(requestId);
        if (request.kind === 'kill_sandbox') {
            this.closingByRequest = false;
        }
        else if (request.kind === 'exec') {
            const process = this.processes.get(requestId);
            if (process !== undefined && !process.started) {
                this.processes.delete(requestId);
                if (this.foreground === requestId)
                    this.foreground = undefined;
                if (this.protocol >= 2)
                    this.abandoned.add(requestId);
            }
        }
        else if (request.kind === 'attach_process') {
            this.pendingAttach.delete(requestId);
        }
    }
    // ---- frames (server) -------------------------------------------------------------------
    receiveFrame(text) {
        const frame = parseFrame(text);
        if (frame === undefined)
            return [];
        this.noteReceived(frame);
        const effects = [];
        const event = frame['event'];
        const requestId = optStr(frame['id']);
        if (event === 'error') {
            const message = optStr(frame['message']) ?? 'unknown error';
            const held = this.heldStatus;
            this.heldStatus = undefined;
            if (held !== undefined && held[1] === requestId) {
                this.onErrorStatus(held[0], message, requestId, effects);
            }
            else {
                if (held !== undefined)
                    this.onErrorStatus(held[0], undefined, held[1], effects);
                if (!(this.echo?.[0] === message && this.echo[1] === requestId)) {
                    this.onLoneError(message, effects);
                }
            }
            this.echo = undefined;
            return effects;
        }
        // Any other frame: a held error status gets no more text.
        this.flushHeld(effects);
        this.echo = undefined;
        // ... and the server did not close after a checkpoint error.
        this.checkpointError = undefined;
        if (event === 'status_update') {
            const status = optStr(frame['status']);
            if (status === undefined)
                return effects;
            const said = optStr(frame['message']);
            if (status === 'SANDBOX_FILE_ERROR' && requestId !== undefined) {
                this.fileCodes.set(requestId, optStr(frame['code']) ?? 'io');
            }
            effects.push({ type: 'StatusSeen', status, message: said });
            if (isErrorStatus(status)) {
                if (said !== undefined && said !== '') {
                    this.echo = [said, requestId];
                    this.onErrorStatus(status, said, requestId, effects);
                }
                else {
                    this.heldStatus = [status, requestId];
                }
            }
            else {
                this.onStatus(status, frame, requestId, effects);
            }
        }
        else if (event === 'sandbox_id') {
            const sandboxId = frame['sandbox_id'];
            if (this.phase === 'setup' && !this.attach && typeof sandboxId === 'string') {
                this.sandboxId = sandboxId;
                this.sandboxToken = optStr(frame['sandbox_token']);
            }
        }
        else if (event === 'stdout' || event === 'stderr') {
            this.onOutput(event, frame, requestId, effects);
        }
        else if (event === 'reply') {
            this.onReply(frame, requestId, effects);
        }
        else if (event === 'result' || event === 'execution_error') {
            if (this.phase === 'open' && this.protocol >= 2) {
                const process = this.processOrStart(frame, requestId, effects);
                if (process !== undefined)
                    effects.push({ type: 'CellEventReceived', key: process.key, frame });
            }
        }
        else if (event === 'stdin_ack') {
            this.onStdinAck(frame, requestId, effects);
        }
        else if (event === 'file_data' && requestId !== undefined && this.requests.has(requestId)) {
            const data = frame['data'];
            effects.push({ type: 'FileData', requestId, data: base64ToBytes(typeof data === 'string' ? data : '') });
        }
        else if (event === 'file_ack' && requestId !== undefined && this.requests.has(requestId)) {
            const written = optInt(frame['written']) ?? 0;
            effects.push({ type: 'FileAcknowledged', requestId, written, window: optInt(frame['window']) });
        }
        return effects;
    }
    flushHeld(effects) {
        if (this.heldStatus !== undefined) {
            const [status, requestId] = this.heldStatus;
            this.heldStatus = undefined;
            this.onErrorStatus(status, undefined, requestId, effects);
        }
    }
    /**
     * The request an answer of these kinds is for: by id (protocol 2), else the oldest pending one
     * of those kinds (protocol 1).
     */
    answering(kinds, requestId) {
        if (this.protocol >= 2) {
            const request = this.requests.get(requestId ?? '');
            return request !== undefined && kinds.includes(request.kind) ? request : undefined;
        }
        for (const request of this.requests.values())
            if (kinds.includes(request.kind))
                return request;
        return undefined;
    }
    /** Protocol 2: the process an event with this id is about. */
    processFor(requestId) {
        const key = this.aliases.get(requestId ?? '');
        return key === undefined ? undefined : this.processes.get(key);
    }
    onStatus(status, frame, requestId, effects) {
        if (this.phase === 'setup' || this.phase === 'reattaching') {
            if (status === 'SANDBOX_RUNNING')
                this.onRunning(frame, effects);
            return;
        }
        if (this.phase !== 'open')
            return;
        if (status === 'SANDBOX_EXECUTION_RUNNING') {
            if (this.protocol >= 2)
                this.onExecutionRunning2(frame, requestId, effects);
            else
                this.onExecutionRunning1(frame, effects);
        }
        else if (status === 'SANDBOX_EXECUTION_DONE') {
            let process;
            if (this.protocol >= 2) {
                process = this.processOrStart(frame, requestId, effects);
            }
            else {
                if (this.orphanRunning) {
                    this.orphanRunning = false;
                    return;
                }
                process = this.processes.get(this.foreground ?? '');
                if (process !== undefined && !process.started)
                    this.start(process, frame, effects);
            }
            if (process !== undefined)
                this.end(process, frame, effects);
        }
        else if (status === 'SANDBOX_EXECUTION_FORCE_KILLED') {
            this.finish(this.answering(['kill_process'], requestId), effects);
        }
        else if (status === 'SANDBOX_FILESYSTEM_SNAPSHOT_CREATED') {
            this.finish(this.answering(['snapshot_filesystem'], requestId), effects);
        }
        else if (status === 'SANDBOX_CHECKPOINTING') {
            this.checkpointingSeen = true;
        }
        else if (status === 'SANDBOX_CHECKPOINTED') {
            this.checkpointed = true;
            const request = this.answering(['checkpoint'], requestId);
            if (request !== undefined) {
                this.closingByRequest = true;
                this.finish(request, effects);
            }
            else {
                this.final = new SandboxConnectionError('the server checkpointed the sandbox and closed the connection; attach to it to continue', { status });
            }
        }
        else if (status === 'SANDBOX_KILLED') {
            this.terminated = true;
            const request = this.answering(['kill_sandbox'], requestId);
            if (request !== undefined) {
                this.finish(request, effects);
            }
            else {
                let message = optStr(frame['message']);
                if (message === undefined && frame['reason'] === 'idle_timeout') {
                    message = 'the server deleted the sandbox after its idle timeout';
                }
                this.final = new SandboxConnectionError(message ?? 'the server killed the sandbox (idle timeout or shutdown)', {
                    status,
                });
            }
        }
        // Every other status (progress, locks, unknown) changes nothing here.
    }
    onRunning(frame, effects) {
        this.protocol = (optInt(frame['protocol']) ?? 1) >= 2 ? 2 : 1;
        const reattached = this.phase === 'reattaching';
        this.phase = 'open';
        if (!reattached) {
            effects.push({ type: 'Ready', sandboxId: this.sandboxId, sandboxToken: this.sandboxToken, protocol: this.protocol });
            return;
        }
        for (const process of this.processes.values()) {
            if (this.protocol < 2) {
                process.window = undefined;
            }
            else {
                // Stdin in flight when the connection dropped is taken as lost: only what the server
                // acknowledged counts.
                process.sent = process.written;
            }
        }
        effects.push({ type: 'Reattached', protocol: this.protocol });
    }
    onExecutionRunning2(frame, requestId, effects) {
        const request = this.answering(['exec'], requestId);
        if (request !== undefined) {
            const process = this.processes.get(request.id);
            if (process !== undefined)
                this.start(process, frame, effects);
        }
        else if (requestId !== undefined && this.abandoned.has(requestId)) {
            this.killOrphan(optInt(frame['process_id']), requestId, effects);
        }
        // Else: a process we know, replayed after a reconnect. Nothing to do.
    }
    onExecutionRunning1(frame, effects) {
        const process = this.processes.get(this.foreground ?? '');
        if (process?.started === true) {
            process.resume = false; // the resume marker after a reconnect
            return;
        }
        if (process !== undefined) {
            this.start(process, frame, effects);
            return;
        }
        this.killOrphan(undefined, undefined, effects);
    }
    /**
     * The server runs an execution whose caller gave up waiting for it to start (timeout, or its
     * answer was lost with the connection): stop it, so that it does not hold the foreground slot
     * (protocol 1) or a process slot.
     */
    killOrphan(processId, requestId, effects) {
        if (requestId !== undefined)
            this.abandoned.delete(requestId);
        if (this.protocol < 2)
            this.orphanRunning = true;
        const killId = this.newId();
        // Registered so that its answer is consumed; nobody waits for it.
        this.requests.set(killId, { id: killId, kind: 'kill_process', key: undefined, end: 0 });
        const extra = processId === undefined || this.protocol < 2 ? {} : { process_id: processId };
        effects.push({ type: 'SendFrame', frame: actionMessage('kill_process', killId, extra) });
    }
    /**
     * Protocol 2: the process an output or DONE is about; an exec whose RUNNING was lost (in a
     * dropped connection) starts with its first other event.
     */
    processOrStart(frame, requestId, effects) {
        let process = this.processFor(requestId);
        if (process !== undefined)
            return process;
        const request = this.answering(['exec'], requestId);
        if (request !== undefined) {
            process = this.processes.get(request.id);
            if (process !== undefined) {
                this.start(process, frame, effects);
                return process;
            }
        }
        if (requestId !== undefined)
            this.abandoned.delete(requestId);
        return undefined;
    }
    start(process, frame, effects) {
        process.started = true;
        process.processId = optInt(frame['process_id']);
        if (this.protocol >= 2) {
            const window = optInt(frame['stdin_window']);
            process.window = window !== undefined && window > 0 ? window : DEFAULT_STDIN_WINDOW;
        }
        this.requests.delete(process.key);
        this.aliases.set(process.key, process.key);
        this.staleStdin = 0;
        this.stdinThisExecution = 0;
        effects.push({ type: 'ProcessStarted', key: process.key, processId: process.processId });
        effects.push({ type: 'RequestDone', requestId: process.key, value: process.key });
    }
    end(process, frame, effects) {
        for (const [stream, rest] of process.flush()) {
            effects.push({ type: 'OutputReceived', key: process.key, stream, data: rest });
        }
        this.forget(process);
        const exitCode = optInt(frame['exit_code']);
        const reason = optStr(frame['reason']);
        const result = {
            exitCode: exitCode ?? -1,
            signal: optInt(frame['signal']) ?? null,
            reason: reason !== undefined && reason !== '' ? reason : exitCode !== undefined ? 'exited' : 'unknown',
            durationMs: optInt(frame['duration_ms']) ?? null,
        };
        effects.push({ type: 'ProcessEnded', key: process.key, result });
    }
    forget(process) {
        this.processes.delete(process.key);
        for (const [alias, key] of [...this.aliases])
            if (key === process.key)
                this.aliases.delete(alias);
        for (const request of [...this.requests.values()]) {
            if (request.key === process.key && request.kind === 'stdin')
                this.requests.delete(request.id);
        }
        if (this.foreground === process.key) {
            this.foreground = undefined;
            this.staleStdin = this.stdinThisExecution;
            this.stdinThisExecution = 0;
        }
    }
    finish(request, effects, value) {
        if (request !== undefined && this.requests.delete(request.id)) {
            effects.push({ type: 'RequestDone', requestId: request.id, value });
        }
    }
    fail(request, error, effects) {
        if (!this.requests.delete(request.id))
            return;
        if (request.kind === 'kill_sandbox')
            this.closingByRequest = false;
        if (request.kind === 'stdin') {
            if (request.key !== undefined && this.processes.has(request.key)) {
                effects.push({ type: 'StdinFailed', key: request.key, error });
            }
            return;
        }
        if (request.kind === 'exec') {
            this.processes.delete(request.id); // never started: its request was pending
            if (this.foreground === request.id)
                this.foreground = undefined;
        }
        if (request.kind === 'attach_process')
            this.pendingAttach.delete(request.id);
        let sessionEnds = false;
        if (request.kind === 'checkpoint' && error.status === 'SANDBOX_CHECKPOINT_ERROR') {
            sessionEnds = !this.checkpointingSeen;
        }
        effects.push({ type: 'RequestFailed', requestId: request.id, error, sessionEnds });
    }
    onErrorStatus(status, message, requestId, effects) {
        const error = errorFromStatus(status, message);
        if (error instanceof SandboxFileError) {
            error.code = this.fileCodes.get(requestId ?? '') ?? 'io';
            this.fileCodes.delete(requestId ?? '');
        }
        if (this.phase === 'setup') {
            this.phase = 'closed';
            effects.push({ type: 'SetupFailed', error });
            return;
        }
        if (this.phase === 'reattaching') {
            // IN_USE right after a drop usually means the server has not noticed the old connection
            // died yet: worth another try. Everything else is final.
            const retryable = status === 'SANDBOX_IN_USE';
            if (!retryable) {
                this.phase = 'closed';
                this.final = error;
            }
            this.attemptFailed = true;
            effects.push({ type: 'ReattachFailed', error, retryable });
            return;
        }
        if (this.phase !== 'open')
            return;
        if (status === 'SANDBOX_CHECKPOINT_ERROR') {
            // Either the server closes with 4000 next (checkpointing impossible, or the save failed),
            // or the session goes on (refused up front).
            this.checkpointError = error;
        }
        if ([
            'SANDBOX_NOT_FOUND',
            'SANDBOX_IN_USE',
            'SANDBOX_PERMISSION_DENIAL_ERROR',
            'SANDBOX_CREATION_ERROR',
            'SANDBOX_RESTORE_ERROR',
        ].includes(status)) {
            // Setup errors in an open session: the server is ending it.
            this.final = error;
        }
        if (this.protocol >= 2)
            this.onErrorStatus2(error, requestId, effects);
        else
            this.onErrorStatus1(status, error, effects);
    }
    onErrorStatus2(error, requestId, effects) {
        const request = this.requests.get(requestId ?? '');
        if (request !== undefined) {
            this.fail(request, error, effects);
        }
        else if (requestId !== undefined && (this.abandoned.has(requestId) || this.processFor(requestId) === undefined)) {
            // The answer to a request nobody waits for any more.
        }
        else {
            effects.push({ type: 'Notice', error });
        }
    }
    onErrorStatus1(status, error, effects) {
        let kinds = [];
        if (status === 'SANDBOX_EXECUTION_ERROR' || status === 'SANDBOX_EXECUTION_UNSUPPORTED_LANGUAGE_ERROR') {
            if (status === 'SANDBOX_EXECUTION_ERROR' && this.isStaleStdinError(error)) {
                // The answer to a stdin frame that reached the server after the last execution ended.
                this.staleStdin--;
                return;
            }
            kinds = ['exec'];
        }
        else if (status === 'SANDBOX_EXECUTION_FORCE_KILL_ERROR') {
            kinds = ['kill_process'];
        }
        else if (status === 'SANDBOX_EXECUTION_IN_PROGRESS_ERROR' || status === 'SANDBOX_CHECKPOINT_ERROR') {
            kinds = ['checkpoint'];
        }
        else if (status === 'SANDBOX_FILESYSTEM_SNAPSHOT_ERROR') {
            kinds = ['snapshot_filesystem'];
        }
        else if (status === 'SANDBOX_KILL_ERROR') {
            kinds = ['kill_sandbox'];
        }
        else if (status === 'SANDBOX_STDIN_ERROR') {
            const foreground = this.processes.get(this.foreground ?? '');
            if (foreground?.started === true) {
                effects.push({ type: 'StdinFailed', key: foreground.key, error });
                return;
            }
        }
        else if (status === 'SANDBOX_ERROR') {
            // A generic error is the best answer a waiting exec gets.
            kinds = ['exec'];
        }
        const request = kinds.length > 0 ? this.answering(kinds, undefined) : undefined;
        if (request !== undefined) {
            if (request.kind === 'exec')
                this.staleStdin = 0;
            this.fail(request, error, effects);
        }
        else {
            effects.push({ type: 'Notice', error });
        }
    }
    /**
     * Protocol 1: whether an execution error answers late stdin rather than an exec. Only when
     * stdin was sent in the last execution; and when an exec waits for its answer, only if the text
     * is about stdin (ours says "no execution is running to receive stdin"), so that an exec
     * refused right after is not mistaken for it.
     */
    isStaleStdinError(error) {
        if (this.staleStdin <= 0)
            return false;
        const execWaiting = this.answering(['exec'], undefined) !== undefined;
        return !execWaiting || error.message.toLowerCase().includes('stdin');
    }
    onLoneError(message, effects) {
        const bare = new SandboxError(message);
        if (this.phase === 'setup') {
            this.phase = 'closed';
            effects.push({ type: 'SetupFailed', error: bare });
        }
        else if (this.phase === 'reattaching') {
            this.phase = 'closed';
            this.final = bare;
            this.attemptFailed = true;
            effects.push({ type: 'ReattachFailed', error: bare, retryable: false });
        }
        else {
            effects.push({ type: 'Notice', error: bare });
        }
    }
    onOutput(stream, frame, requestId, effects) {
        const data = frame['data'];
        if (typeof data !== 'string' || this.phase !== 'open')
            return;
        let process;
        if (this.protocol >= 2) {
            process = this.processOrStart(frame, requestId, effects);
        }
        else {
            process = this.orphanRunning ? undefined : this.processes.get(this.foreground ?? '');
            if (process !== undefined && !process.started) {
                // Output before EXECUTION_RUNNING (after a reconnect whose execution ended while we were
                // away, the kept output comes without a RUNNING).
                this.start(process, frame, effects);
            }
        }
        if (process === undefined)
            return;
        const converted = process.convert(data, frame['encoding'] === 'base64', stream);
        if (converted.length > 0)
            effects.push({ type: 'OutputReceived', key: process.key, stream, data: converted });
    }
    onReply(frame, requestId, effects) {
        const request = this.requests.get(requestId ?? '');
        if (request === undefined || this.phase !== 'open')
            return;
        if (request.kind === 'list_processes') {
            this.finish(request, effects, processInfos(frame['processes']));
        }
        else if (request.kind === 'set_idle_timeout') {
            this.finish(request, effects, optNumber(frame['idle_timeout']));
        }
        else if (request.kind === 'attach_process') {
            this.onAttached(request, frame, effects);
        }
        else if (request.kind === 'expose') {
            this.finish(request, effects, optStr(frame['url']) ?? null);
        }
        else if (request.kind === 'unexpose') {
            this.finish(request, effects, frame['unexposed'] === true);
        }
        else if (request.kind === 'list_ports') {
            this.finish(request, effects, portUrls(frame['ports']));
        }
        else if (request.kind === 'file' || request.kind === 'code_context') {
            this.finish(request, effects, frame);
        }
        else {
            this.finish(request, effects);
        }
    }
    onAttached(request, frame, effects) {
        const asked = this.pendingAttach.get(request.id);
        this.pendingAttach.delete(request.id);
        const processId = optInt(frame['process_id']) ?? asked?.processId;
        const known = [...this.processes.values()].find((p) => p.processId === processId && p.started);
        if (known !== undefined) {
            // Already followed here: its events come with this id from now on.
            this.aliases.set(request.id, known.key);
            this.finish(request, effects, known.key);
            return;
        }
        const process = new Process(request.id, asked?.binary ?? false);
        process.started = true;
        process.processId = processId;
        const window = optInt(frame['stdin_window']);
        process.window = window !== undefined && window > 0 ? window : DEFAULT_STDIN_WINDOW;
        const written = optInt(frame['stdin_written']);
        if (written !== undefined)
            process.sent = process.written = written;
        this.processes.set(request.id, process);
        this.aliases.set(request.id, request.id);
        effects.push({ type: 'ProcessStarted', key: request.id, processId });
        this.finish(request, effects, request.id);
    }
    onStdinAck(frame, requestId, effects) {
        const process = this.processFor(requestId);
        const written = optInt(frame['written']);
        if (process === undefined || written === undefined || process.window === undefined)
            return;
        process.written = Math.max(process.written, written);
        // A process attached here does not know what was sent before: trust the server.
        process.sent = Math.max(process.sent, process.written);
        for (const request of [...this.requests.values()]) {
            if (request.kind === 'stdin' && request.key === process.key && request.end <= process.written) {
                this.requests.delete(request.id);
            }
        }
        effects.push({ type: 'StdinAcknowledged', key: process.key });
    }
    // ---- closing ---------------------------------------------------------------------------
    /**
     * The socket closed. `code` is the server's close code, `null` if no close frame came (the
     * connection dropped).
     */
    connectionClosed(code, reason = '') {
        const effects = [];
        this.flushHeld(effects);
        this.echo = undefined;
        const described = describeClose(code, reason);
        const closeCode = code ?? undefined;
        if (this.phase === 'closed')
            return effects; // a setup or re-attach failure already said why
        if (this.phase === 'setup') {
            this.phase = 'closed';
            effects.push({
                type: 'SetupFailed',
                error: new SandboxConnectionError(`the server closed the connection before the sandbox was ready (${described})`, { closeCode }),
            });
            return effects;
        }
        if (this.phase === 'reattaching') {
            if (this.attemptFailed)
                return effects; // this attempt already failed with a reason
            this.attemptFailed = true;
            effects.push({
                type: 'ReattachFailed',
                error: new SandboxConnectionError(`re-attach failed: connection closed (${described})`, { closeCode }),
                retryable: true,
            });
            return effects;
        }
        // phase 'open'
        const checkpointError = this.checkpointError;
        this.checkpointError = undefined;
        if (checkpointError !== undefined && code !== null && this.final === undefined) {
            this.final = new SandboxConnectionError(`the server closed the connection after a checkpoint error: ${checkpointError.message}`, { status: checkpointError.status });
        }
        const dropped = code === null || RETRYABLE_CLOSE_CODES.has(code);
        if (this.autoReconnect &&
            dropped &&
            this.final === undefined &&
            !this.closingByRequest &&
            !this.terminated &&
            !this.checkpointed &&
            this.sandboxId !== undefined) {
            this.phase = 'reattaching';
            // The answers to these requests may have been lost with the connection. An exec's is not:
            // the server replays the process's events after reconnect.
            const lost = new SandboxConnectionError('the connection dropped while waiting for the answer; its outcome is unknown', { closeCode });
            for (const request of [...this.requests.values()]) {
                const internal = request.kind === 'kill_process' && request.key === undefined;
                if (request.kind === 'stdin' || internal) {
                    // Stdin in flight is taken as lost (see `onRunning`); an internal kill has nobody
                    // waiting for it.
                    this.requests.delete(request.id);
                }
                else if (request.kind !== 'exec') {
                    this.fail(request, lost, effects);
                }
            }
            effects.push({ type: 'Reconnect', reason: described });
            return effects;
        }
        this.phase = 'closed';
        let error;
        if (this.terminated) {
            error =
                this.final?.status === 'SANDBOX_KILLED'
                    ? this.final
                    : new SandboxConnectionError('the sandbox was terminated', { status: 'SANDBOX_KILLED' });
        }
        else if (this.checkpointed) {
            error = new SandboxConnectionError('the sandbox was checkpointed; attach to it to continue', {
                status: 'SANDBOX_CHECKPOINTED',
            });
        }
        else if (this.final !== undefined) {
            error = this.final;
        }
        else {
            error = new SandboxConnectionError(`the server closed the connection (${described})`);
        }
        if (error instanceof SandboxConnectionError)
            error.closeCode = closeCode;
        this.failEverything(error, effects);
        this.closedEmitted = true;
        effects.push({ type: 'Closed', error, terminated: this.terminated, checkpointed: this.checkpointed });
        return effects;
    }
    /** The I/O layer opened a new `/attach` connection after a drop. */
    beginReattach() {
        this.phase = 'reattaching';
        this.attemptFailed = false;
    }
    /** Reconnecting failed for good (or the user closed the sandbox). */
    giveUp(error) {
        const effects = [];
        if (this.closedEmitted)
            return effects;
        this.phase = 'closed';
        this.failEverything(error, effects);
        this.closedEmitted = true;
        effects.push({ type: 'Closed', error, terminated: this.terminated, checkpointed: this.checkpointed });
        return effects;
    }
    /**
     * Remember the last numbered event of each process (the latest, not the highest: a restored
     * sandbox numbers its processes' events from 1 again).
     */
    noteReceived(frame) {
        const processId = optInt(frame['process_id']);
        const seq = optInt(frame['seq']);
        if (processId === undefined || seq === undefined)
            return;
        if (frame['status'] === 'SANDBOX_EXECUTION_DONE') {
            this.received.delete(processId); // its last event: nothing to ask again
        }
        else {
            this.received.set(processId, seq);
        }
    }
    failEverything(error, effects) {
        for (const request of [...this.requests.values()]) {
            if (request.kind === 'stdin' || (request.kind === 'kill_process' && request.key === undefined))
                continue;
            this.fail(request, error, effects);
        }
        this.requests.clear();
        this.processes.clear();
        this.aliases.clear();
        this.pendingAttach.clear();
        this.received.clear();
        this.foreground = undefined;
    }
}
function processInfos(value) {
    const infos = [];
    for (const item of Array.isArray(value) ? value : []) {
        if (typeof item !== 'object' || item === null)
            continue;
        const row = item;
        const processId = optInt(row['process_id']);
        if (processId === undefined)
            continue;
        infos.push({
            processId,
            requestId: optStr(row['id']) ?? null,
            kind: optStr(row['kind']) ?? 'exec',
            language: optStr(row['language']) ?? null,
            running: row['running'] === true,
            startedUnixMs: optInt(row['started_unix_ms']) ?? null,
        });
    }
    return infos;
}
function describeClose(code, reason) {
    if (code === null)
        return 'no close frame: the connection dropped';
    if (reason)
        return `close code ${code}: ${reason}`;
    return `close code ${code}`;
}
/** `list_ports`'s `ports` as `{port: url}` (entries of another shape are skipped). */
function portUrls(value) {
    const ports = {};
    if (Array.isArray(value)) {
        for (const entry of value) {
            if (typeof entry !== 'object' || entry === null)
                continue;
            const { port, url } = entry;
            if (typeof port === 'number' && Number.isInteger(port) && typeof url === 'string')
                ports[port] = url;
        }
    }
    return ports;
}
//# sourceMappingURL=protocol.js.map