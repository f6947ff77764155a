/**
 * A running execution (`SandboxProcess`) and its output streams (`OutputStream`).
 *
 * The user's code failing is data, not an exception: `wait()` resolves to the exit code whatever
 * it is. Promises here reject only when the service fails (the connection is lost for good, the
 * server refuses a request), always with a `SandboxError`.
 */

import { SandboxStateError } from './errors.js';
import { Deferred } from './internal/deferred.js';
import type { ExecutionResult } from './internal/protocol.js';

export type { ExecutionResult } from './internal/protocol.js';

/** Where the library pushes a stream's data; not part of the public API. */
export interface OutputSink {
  push(data: string | Uint8Array): void;
  end(): void;
  fail(error: Error): void;
}

/**
 * One output stream of a process (stdout or stderr). Single consumer: each chunk is handed out
 * once, to whichever of `readAll()`, `readAllBytes()`, `for await` or `bytes()` reads it first.
 * Chunks are kept from the moment the process starts, so nothing is lost if you read late.
 *
 * Iterating yields text chunks as the server sends them (not lines). With `binary: true` on
 * `exec`, the chunks are decoded from exact bytes, and `bytes()` / `readAllBytes()` give the bytes.
 */
export class OutputStream implements AsyncIterable<string> {
  readonly #chunks: (string | Uint8Array)[] = [];
  #ended = false;
  #error: Error | undefined;
  #wake: Deferred<void> | undefined;
  readonly #decoder = new TextDecoder('utf-8');

  /** @internal Created by the library; `connect` receives the writer side. */
  constructor(connect: (sink: OutputSink) => void) {
    connect({
      push: (data) => {
        if (this.#ended) return;
        this.#chunks.push(data);
        this.#notify();
      },
      end: () => {
        this.#ended = true;
        this.#notify();
      },
      fail: (error) => {
        if (this.#ended) return;
        this.#error = error;
        this.#ended = true;
        this.#notify();
      },
    });
  }

  /** True once the process ended and every chunk was read. */
  get finished(): boolean {
    return this.#ended && this.#chunks.length === 0;
  }

  /** Reads everything not read yet, until the process ends. */
  async readAll(): Promise<string> {
    let text = '';
    for await (const chunk of this) text += chunk;
    return text;
  }

  /** Like `readAll()`, as bytes (exact bytes when the process was started with `binary: true`). */
  async readAllBytes(): Promise<Uint8Array> {
    const parts: Uint8Array[] = [];
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

  /** Text chunks as they arrive; ends when the process ends. */
  async *[Symbol.asyncIterator](): AsyncIterator<string> {
    for (;;) {
      const chunk = await this.#next();
      if (chunk === undefined) {
        const tail = this.#decoder.decode();
        if (tail) yield tail;
        return;
      }
      if (typeof chunk === 'string') {
        yield chunk;
      } else {
        // Streaming decode: a character split across chunks is not broken.
        const text = this.#decoder.decode(chunk, { stream: true });
        if (text) yield text;
      }
    }
  }

  /** Byte chunks as they arrive (text chunks are UTF-8 encoded). */
  async *bytes(): AsyncIterable<Uint8Array> {
    const encoder = new TextEncoder();
    for (;;) {
      const chunk = await this.#next();
      if (chunk === undefined) return;
      yield typeof chunk === 'string' ? encoder.encode(chunk) : chunk;
    }
  }

  /** The next unread chunk, or undefined at the end; rethrows the stream's failure. */
  async #next(): Promise<string | Uint8Array | undefined> {
    for (;;) {
      const chunk = this.#chunks.shift();
      if (chunk !== undefined) return chunk;
      if (this.#error !== undefined) throw this.#error;
      if (this.#ended) return undefined;
      this.#wake ??= new Deferred<void>();
      await this.#wake.promise;
    }
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.resolve();
  }
}

/** What a process needs from its sandbox; implemented by `Sandbox`, not part of the public API. */
export interface ProcessHost {
  writeStdin(process: SandboxProcess, data: string | Uint8Array | undefined, eof: boolean): Promise<void>;
  killProcess(process: SandboxProcess): Promise<void>;
}

/** Where the library reports a process's life; not part of the public API. */
export interface ProcessControl {
  stdout: OutputSink;
  stderr: OutputSink;
  /** The server reported SANDBOX_EXECUTION_DONE. */
  finish(result: ExecutionResult): void;
  /** The process's fate can no longer be learned (connection lost for good). */
  fail(error: Error): void;
}

/** An execution started by `sandbox.exec()`. */
export class SandboxProcess {
  /** The process's standard output. */
  readonly stdout: OutputStream;
  /** The process's standard error. */
  readonly stderr: OutputStream;

  readonly #host: ProcessHost;
  readonly #done = new Deferred<ExecutionResult>();
  #result: ExecutionResult | undefined;
  #stdinClosed = false;

  /** @internal Created by `Sandbox.exec`. */
  constructor(host: ProcessHost, connect: (control: ProcessControl) => void) {
    this.#host = host;
    const sinks: { stdout?: OutputSink; stderr?: OutputSink } = {};
    this.stdout = new OutputStream((sink) => (sinks.stdout = sink));
    this.stderr = new OutputStream((sink) => (sinks.stderr = sink));
    // OutputStream's constructor calls its argument synchronously, so both sinks are set here.
    const { stdout: out, stderr: err } = sinks;
    if (out === undefined || err === undefined) throw new Error('output stream did not connect');
    connect({
      stdout: out,
      stderr: err,
      finish: (result) => {
        if (this.#done.settled) return;
        this.#result = result;
        out.end();
        err.end();
        this.#done.resolve(result);
      },
      fail: (error) => {
        if (this.#done.settled) return;
        out.fail(error);
        err.fail(error);
        this.#done.reject(error);
      },
    });
  }

  /** Exit code once the process ended (`128 + N` if killed by signal N), else null. */
  get exitCode(): number | null {
    return this.#result?.exitCode ?? null;
  }

  /**
   * Why it ended, once it ended: `exited`, `signaled`, `killed`, `timeout`, `output_limit` or
   * `sandbox_lost`. Null while it runs.
   */
  get reason(): string | null {
    return this.#result?.reason ?? null;
  }

  /** The signal that ended it, if any. */
  get signal(): number | null {
    return this.#result?.signal ?? null;
  }

  /** How long it ran, in milliseconds, once it ended (when the server reports it). */
  get durationMs(): number | null {
    return this.#result?.durationMs ?? null;
  }

  /** True once the server reported the end of the process. */
  get done(): boolean {
    return this.#result !== undefined;
  }

  /**
   * Waits for the process to end and resolves to its exit code. A non-zero exit code is a result,
   * not an error; rejects only if the connection is lost for good.
   */
  async wait(): Promise<number> {
    return (await this.#done.promise).exitCode;
  }

  /** Waits for the end and resolves to everything the server said about it. */
  result(): Promise<ExecutionResult> {
    return this.#done.promise;
  }

  /** Writes to the process's stdin (text, or bytes sent exactly). */
  async writeToStdin(data: string | Uint8Array): Promise<void> {
    this.#checkStdin('write to stdin');
    await this.#host.writeStdin(this, data, false);
  }

  /** Closes the process's stdin (the process reads EOF). */
  async closeStdin(): Promise<void> {
    this.#checkStdin('close stdin');
    this.#stdinClosed = true;
    await this.#host.writeStdin(this, undefined, true);
  }

  /**
   * Kills the process (its whole process group). Resolves once the server confirmed; `wait()`
   * then resolves with reason `killed`. Killing a process that already ended does nothing.
   */
  async kill(): Promise<void> {
    if (this.done) return;
    await this.#host.killProcess(this);
  }

  #checkStdin(what: string): void {
    if (this.done) throw new SandboxStateError(`cannot ${what}: the process has ended`);
    if (this.#stdinClosed) throw new SandboxStateError(`cannot ${what}: stdin is closed`);
  }
}
