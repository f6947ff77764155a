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
import { type SandboxError } from './errors.js';
import type { ExecutionResult } from './results.js';
type Chunk = string | Uint8Array;
/** Called with each chunk of a stream's output, as text, as it arrives. */
export type OutputCallback = (text: string) => void;
/** Where the library pushes a stream's data; not part of the public API. */
interface OutputSink {
    push(data: Chunk): void;
    end(error: SandboxError | undefined): void;
}
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
export declare class OutputStream implements AsyncIterable<string> {
    #private;
    /** @internal Made by the library; `connect` receives the writer side. */
    constructor(connect: (sink: OutputSink) => void);
    /** True once the process ended and every chunk was read. */
    get finished(): boolean;
    /** Everything not read yet, as text, once the process has ended. */
    readAll(): Promise<string>;
    /** Like `readAll()`, as bytes (exact with `outputEncoding: 'base64'`). */
    readAllBytes(): Promise<Uint8Array>;
    /** Text chunks as they arrive (not lines); ends when the process ends. */
    [Symbol.asyncIterator](): AsyncIterator<string>;
    /** Lines as they complete, without their `"\n"`; a last line without one comes at the end. */
    lines(): AsyncIterable<string>;
    /** Byte chunks as they arrive (text chunks are UTF-8 encoded). */
    bytes(): AsyncIterable<Uint8Array>;
}
/** What a process needs from its sandbox (`Sandbox` provides it); not part of the public API. */
export interface ProcessHost {
    writeStdin(key: string, data: string | Uint8Array): Promise<void>;
    closeStdin(key: string): Promise<void>;
    killProcess(key: string): Promise<void>;
}
/** A process started with `Sandbox.exec()` (or followed with `Sandbox.attachProcess()`). */
export declare class SandboxProcess {
    #private;
    /** The process's standard output. */
    readonly stdout: OutputStream;
    /** The process's standard error. */
    readonly stderr: OutputStream;
    /** The server's handle (null from a server without protocol 2). */
    readonly processId: number | null;
    /** @internal Made by `newProcess`. */
    constructor(host: ProcessHost, key: string, processId: number | undefined, connect: (wiring: {
        stdout: OutputSink;
        stderr: OutputSink;
        settle: (result: ExecutionResult | SandboxError) => void;
        refuseStdin: (error: SandboxError) => void;
    }) => void);
    /** True once the server reported the end of the process (or the session ended). */
    get done(): boolean;
    /** The server's refusal of this process's stdin, if it refused any (later writes reject with it too). */
    get stdinError(): SandboxError | undefined;
    /** The exit status once ended (`128 + N` when ended by signal N), else null. */
    get exitCode(): number | null;
    /** Why it ended: `exited`, `signaled`, `killed`, `timeout`, `output_limit` or `sandbox_lost`. */
    get reason(): string | null;
    /** The signal that ended it, if any. */
    get signal(): number | null;
    /** How long it ran, in milliseconds, once it ended (when the server says). */
    get durationMs(): number | null;
    /**
     * Waits for the end; everything the server said about it. Rejects with
     * `SandboxConnectionError` only if the session ended before the process did. Not bounded.
     */
    result(): Promise<ExecutionResult>;
    /** Waits for the process to end and resolves to its exit code (see `result()`). */
    wait(): Promise<number>;
    /**
     * Writes to the process's stdin (text, or bytes sent exactly). With a server that speaks
     * protocol 2 this waits while the server's stdin window is full, and rejects with the server's
     * refusal (`SandboxExecutionError`). While the sandbox reconnects, the data is queued.
     */
    write(data: string | Uint8Array): Promise<void>;
    /** The same as `write()` (the original client's name). */
    writeToStdin(data: string | Uint8Array): Promise<void>;
    /**
     * Closes the process's stdin: its next read sees end-of-file. With protocol 2 this first waits
     * until the server acknowledged everything written (so a refusal of it rejects here). Does
     * nothing if stdin is closed already or the process ended (before or during the call: a
     * process that read what it needed and exited did not need the end-of-file).
     */
    closeStdin(): Promise<void>;
    /**
     * Kills the process (its whole process group); does nothing if it already ended. Resolves once
     * the server confirmed; `wait()` then resolves with reason `killed`.
     */
    kill(): Promise<void>;
}
/** The library's side of a process: what happens to it comes in here. */
export declare class ProcessControl {
    #private;
    readonly process: SandboxProcess;
    constructor(process: SandboxProcess, sinks: {
        stdout: OutputSink;
        stderr: OutputSink;
    }, settle: (outcome: ExecutionResult | SandboxError) => void, refuseStdin: (error: SandboxError) => void, onStdout: OutputCallback | undefined, onStderr: OutputCallback | undefined);
    output(stream: 'stdout' | 'stderr', data: Chunk): void;
    finish(result: ExecutionResult): void;
    fail(error: SandboxError): void;
    /** The server's refusal of this process's stdin; every later write rejects with it. */
    get stdinError(): SandboxError | undefined;
    refuseStdin(error: SandboxError): void;
    /** Resolves at the next change writers wait for (room, refusal, or the end). */
    stdinChanged(): Promise<void>;
    notifyStdin(): void;
}
/** A new process handle (`control.process`) and the control the library keeps. */
export declare function newProcess(host: ProcessHost, key: string, processId: number | undefined, callbacks?: {
    onStdout?: OutputCallback | undefined;
    onStderr?: OutputCallback | undefined;
}): ProcessControl;
export {};
//# sourceMappingURL=process.d.ts.map