/**
 * A process in the sandbox (`SandboxProcess`) and its output streams (`OutputStream`).
 *
 * The sandbox drives a process through the `ProcessControl` that `newProcess` returns with it
 * (output arrived, it ended, stdin was acknowledged or refused); the process asks its sandbox
 * for stdin and kill through the `ProcessHost` interface. So this module does not know
 * `Sandbox` (no import cycle), and the sandbox does not poke at private fields.
 *
 * The user's code failing is data, not an exception: `wait()` resolves to the exit code whatever
 * it is. Promises here reject only when the service fails, always with a `SandboxError`.
 */
import { SandboxStateError } from './errors.js';
import { Deferred } from './internal/deferred.js';
/**
 * One output stream of a process (stdout or stderr), read once like a pipe: each chunk is handed
 * out once, to whichever of `readAll()`, `readAllBytes()`, `for await`, `lines()` or `bytes()`
 * reads it first. Chunks are kept from the moment the process starts, so nothing is lost by
 * reading late; every read works while the process is still running (it waits for more output,
 * and ends when the process ends).
 *
 * Text is the default. A process started with `outputEncoding: 'base64'` receives its output as
 * exact bytes: `readAllBytes()` / `bytes()` give them unchanged, and text reads decode them as
 * UTF-8 (a character split across chunks is kept whole; invalid bytes become U+FFFD).
 */
export class OutputStream {
    #chunks = [];
    #ended = false;
    #error;
    #wake;
    #decoder = new TextDecoder('utf-8');
    /** @internal Made by the library; `connect` receives the writer side. */
    constructor(connect) {
        connect({
            push: (data) => {
                if (this.#ended)
                    return;
                this.#chunks.push(data);
                this.#notify();
            },
            end: (error) => {
                if (this.#ended)
                    return;
                this.#ended = true;
                this.#error = error;
                this.#notify();
            },
        });
    }
    /** True once the process ended and every chunk was read. */
    get finished() {
        return this.#ended && this.#chunks.length === 0;
    }
    /** Everything not read yet, as text, once the process has ended. */
    async readAll() {
        let text = '';
        for await (const chunk of this)
            text += chunk;
        return text;
    }
    /** Like `readAll()`, as bytes (exact with `outputEncoding: 'base64'`). */
    async readAllBytes() {
        const parts = [];
        let size = 0;
        for await (const chunk of this.bytes()) {
            parts.push(chunk);
            size += chunk.length;
        }
        const out = new Uint8Array(size);
        let offset = 0;
        for (const part of parts) {
            out.set(part, offset);
            offset += part.length;
        }
        return out;
    }
    /** Text chunks as they arrive (not lines); ends when the process ends. */
    async *[Symbol.asyncIterator]() {
        for (;;) {
            const chunk = await this.#next();
            if (chunk === undefined) {
                const tail = this.#decoder.decode();
                if (tail)
                    yield tail;
                return;
            }
            // Streaming decode: a character split across chunks is not broken.
            const text = typeof chunk === 'string' ? chunk : this.#decoder.decode(chunk, { stream: true });
            if (text)
                yield text;
        }
    }
    /** Lines as they complete, without their `"\n"`; a last line without one comes at the end. */
    async *lines() {
        let pending = '';
        for await (const chunk of this) {
            pending += chunk;
            let start = 0;
            for (let end = pending.indexOf('\n', start); end >= 0; end = pending.indexOf('\n', start)) {
                yield pending.slice(start, end);
                start = end + 1;
            }
            pending = pending.slice(start);
        }
        if (pending)
            yield pending;
    }
    /** Byte chunks as they arrive (text chunks are UTF-8 encoded). */
    async *bytes() {
        const encoder = new TextEncoder();
        for (;;) {
            const chunk = await this.#next();
            if (chunk === undefined)
                return;
            yield typeof chunk === 'string' ? encoder.encode(chunk) : chunk;
        }
    }
    /** The next unread chunk, undefined at the end; rethrows the stream's failure. */
    async #next() {
        for (;;) {
            const chunk = this.#chunks.shift();
            if (chunk !== undefined)
                return chunk;
            if (this.#error !== undefined)
                throw this.#error;
            if (this.#ended)
                return undefined;
            this.#wake ??= new Deferred();
            await this.#wake.promise;
        }
    }
    #notify() {
        const wake = this.#wake;
        this.#wake = undefined;
        wake?.resolve();
    }
}
/** A process started with `Sandbox.exec()` (or followed with `Sandbox.attachProcess()`). */
export class SandboxProcess {
    /** The process's standard output. */
    stdout;
    /** The process's standard error. */
    stderr;
    /** The server's handle (null from a server without protocol 2). */
    processId;
    #host;
    #key;
    #done = new Deferred();
    #result;
    #stdinError;
    #stdinClosed = false;
    /** @internal Made by `newProcess`. */
    constructor(host, key, processId, connect) {
        this.#host = host;
        this.#key = key;
        this.processId = processId ?? null;
        let out;
        let err;
        this.stdout = new OutputStream((sink) => (out = sink));
        this.stderr = new OutputStream((sink) => (err = sink));
        // OutputStream's constructor calls its argument synchronously, so both sinks are set here.
        if (out === undefined || err === undefined)
            throw new Error('output stream did not connect');
        const stdout = out;
        const stderr = err;
        connect({
            stdout,
            stderr,
            refuseStdin: (error) => {
                this.#stdinError ??= error;
            },
            settle: (outcome) => {
                if (this.#done.settled)
                    return;
                if (outcome instanceof Error) {
                    stdout.end(outcome);
                    stderr.end(outcome);
                    this.#done.reject(outcome);
                }
                else {
                    this.#result = outcome;
                    stdout.end(undefined);
                    stderr.end(undefined);
                    this.#done.resolve(outcome);
                }
            },
        });
    }
    /** True once the server reported the end of the process (or the session ended). */
    get done() {
        return this.#done.settled;
    }
    /** The server's refusal of this process's stdin, if it refused any (later writes reject with it too). */
    get stdinError() {
        return this.#stdinError;
    }
    /** The exit status once ended (`128 + N` when ended by signal N), else null. */
    get exitCode() {
        return this.#result?.exitCode ?? null;
    }
    /** Why it ended: `exited`, `signaled`, `killed`, `timeout`, `output_limit` or `sandbox_lost`. */
    get reason() {
        return this.#result?.reason ?? null;
    }
    /** The signal that ended it, if any. */
    get signal() {
        return this.#result?.signal ?? null;
    }
    /** How long it ran, in milliseconds, once it ended (when the server says). */
    get durationMs() {
        return this.#result?.durationMs ?? null;
    }
    /**
     * Waits for the end; everything the server said about it. Rejects with
     * `SandboxConnectionError` only if the session ended before the process did. Not bounded.
     */
    result() {
        return this.#done.promise;
    }
    /** Waits for the process to end and resolves to its exit code (see `result()`). */
    async wait() {
        return (await this.#done.promise).exitCode;
    }
    /**
     * Writes to the process's stdin (text, or bytes sent exactly). With a server that speaks
     * protocol 2 this waits while the server's stdin window is full, and rejects with the server's
     * refusal (`SandboxExecutionError`). While the sandbox reconnects, the data is queued.
     */
    async write(data) {
        if (typeof data !== 'string' && !(data instanceof Uint8Array)) {
            throw new TypeError('stdin data must be a string or a Uint8Array');
        }
        this.#checkStdin('write to stdin');
        await this.#host.writeStdin(this.#key, data);
    }
    /** The same as `write()` (the original client's name). */
    async writeToStdin(data) {
        await this.write(data);
    }
    /**
     * Closes the process's stdin: its next read sees end-of-file. With protocol 2 this first waits
     * until the server acknowledged everything written (so a refusal of it rejects here). Does
     * nothing if stdin is closed already or the process ended (before or during the call: a
     * process that read what it needed and exited did not need the end-of-file).
     */
    async closeStdin() {
        if (this.done || this.#stdinClosed)
            return;
        this.#stdinClosed = true;
        await this.#host.closeStdin(this.#key);
    }
    /**
     * Kills the process (its whole process group); does nothing if it already ended. Resolves once
     * the server confirmed; `wait()` then resolves with reason `killed`.
     */
    async kill() {
        if (this.done)
            return;
        await this.#host.killProcess(this.#key);
    }
    #checkStdin(what) {
        if (this.done)
            throw new SandboxStateError(`cannot ${what}: the process has ended`);
        if (this.#stdinClosed)
            throw new SandboxStateError(`cannot ${what}: stdin is closed`);
    }
}
/** The library's side of a process: what happens to it comes in here. */
export class ProcessControl {
    process;
    #sinks;
    #settle;
    #refuseStdin;
    #callbacks;
    #decoders = { stdout: new TextDecoder('utf-8'), stderr: new TextDecoder('utf-8') };
    #stdinWake;
    constructor(process, sinks, settle, refuseStdin, onStdout, onStderr) {
        this.process = process;
        this.#sinks = sinks;
        this.#settle = settle;
        this.#refuseStdin = refuseStdin;
        this.#callbacks = { stdout: onStdout, stderr: onStderr };
    }
    output(stream, data) {
        if (this.process.done || data.length === 0)
            return;
        this.#sinks[stream].push(data);
        const callback = this.#callbacks[stream];
        if (callback !== undefined) {
            const text = typeof data === 'string' ? data : this.#decoders[stream].decode(data, { stream: true });
            if (text)
                call(callback, text);
        }
    }
    finish(result) {
        if (this.process.done)
            return;
        for (const stream of ['stdout', 'stderr']) {
            const tail = this.#decoders[stream].decode();
            const callback = this.#callbacks[stream];
            if (tail && callback !== undefined)
                call(callback, tail);
        }
        this.#settle(result);
        this.notifyStdin();
    }
    fail(error) {
        if (this.process.done)
            return;
        this.#settle(error);
        this.notifyStdin();
    }
    /** The server's refusal of this process's stdin; every later write rejects with it. */
    get stdinError() {
        return this.process.stdinError;
    }
    refuseStdin(error) {
        this.#refuseStdin(error);
        this.notifyStdin();
    }
    /** Resolves at the next change writers wait for (room, refusal, or the end). */
    stdinChanged() {
        this.#stdinWake ??= new Deferred();
        return this.#stdinWake.promise;
    }
    notifyStdin() {
        const wake = this.#stdinWake;
        this.#stdinWake = undefined;
        wake?.resolve();
    }
}
function call(callback, text) {
    try {
        callback(text);
    }
    catch {
        // A user's callback must not break the session.
    }
}
/** A new process handle (`control.process`) and the control the library keeps. */
export function newProcess(host, key, processId, callbacks = {}) {
    let wiring;
    const process = new SandboxProcess(host, key, processId, (given) => (wiring = given));
    // SandboxProcess's constructor calls its argument synchronously.
    if (wiring === undefined)
        throw new Error('process did not connect');
    const { stdout, stderr, settle, refuseStdin } = wiring;
    return new ProcessControl(process, { stdout, stderr }, settle, refuseStdin, callbacks.onStdout, callbacks.onStderr);
}
//# sourceMappingURL=process.js.map