/**
 * The code interpreter's results (docs/protocol.md, "Code interpreter"): what
 * `Sandbox.runCode()` returns, and the code contexts it runs in. The same names as the Python
 * client's `codesandbox` (camelCase).
 *
 * The user's code failing is data (`Execution.error`), not an exception; a context that cannot
 * take the cell (dead, unknown, too many waiting) rejects with `SandboxError`.
 */

import { base64ToBytes } from './internal/base64.js';
import type { ExecutionResult } from './results.js';

/**
 * One result of a cell: its trailing expression's value (`isMainResult`), a `display()`, or a
 * figure. `data` maps MIME types to values as the server sent them; the getters decode the common
 * ones.
 */
export class Result {
  constructor(
    readonly data: Record<string, unknown>,
    readonly isMainResult = false,
  ) {}

  /** The MIME types this result has (`text/plain` always). */
  formats(): string[] {
    return Object.keys(this.data);
  }

  #text(mime: string): string | undefined {
    const value = this.data[mime];
    return typeof value === 'string' ? value : undefined;
  }

  #binary(mime: string): Uint8Array | undefined {
    const value = this.#text(mime);
    return value === undefined ? undefined : base64ToBytes(value);
  }

  get text(): string | undefined {
    return this.#text('text/plain');
  }
  get html(): string | undefined {
    return this.#text('text/html');
  }
  get markdown(): string | undefined {
    return this.#text('text/markdown');
  }
  get svg(): string | undefined {
    return this.#text('image/svg+xml');
  }
  get latex(): string | undefined {
    return this.#text('text/latex');
  }
  get png(): Uint8Array | undefined {
    return this.#binary('image/png');
  }
  get jpeg(): Uint8Array | undefined {
    return this.#binary('image/jpeg');
  }
  get json(): unknown {
    return this.data['application/json'];
  }
}

/** The cell's error: the exception's class name, its message, the traceback lines. */
export interface ExecutionError {
  name: string;
  value: string;
  traceback: string[];
}

/** What the cell printed, chunk by chunk as it arrived. */
export interface Logs {
  stdout: string[];
  stderr: string[];
}

/**
 * A cell's outcome: its results, its output, its error (if it raised), and how it ended
 * (`exitCode` 0 or 1; `reason`: exited, killed, timeout, output_limit, context_died).
 */
export class Execution {
  readonly results: Result[] = [];
  readonly logs: Logs = { stdout: [], stderr: [] };
  error: ExecutionError | undefined;
  processId: number | undefined;
  exitCode: number | undefined;
  reason: string | undefined;
  durationMs: number | null | undefined;

  /** The main result's text (undefined if the cell ended without a value). */
  get text(): string | undefined {
    return this.results.find((result) => result.isMainResult)?.text;
  }
}

/** A code context: a Python process with its own globals and working directory. */
export interface CodeContext {
  contextId: string;
  cwd: string;
  language: string;
  /** From `listCodeContexts()`: idle, busy or dead. */
  state?: string;
  /** Why it died, if it did. */
  died?: string;
}

/** Callbacks of `runCode()`, called as the cell runs. */
export interface RunCodeOptions {
  /** The context to run in (default: `"default"`, created on first use). */
  context?: CodeContext | string;
  /** Seconds; the cell is then interrupted (KeyboardInterrupt; the context keeps its state). */
  timeout?: number;
  onStdout?: (text: string) => void;
  onStderr?: (text: string) => void;
  onResult?: (result: Result) => void;
  onError?: (error: ExecutionError) => void;
}

/** A string field of a frame from the server, or `fallback`. */
function str(value: unknown, fallback: string): string {
  return typeof value === 'string' ? value : fallback;
}

export function contextIdOf(context: CodeContext | string | undefined): string | undefined {
  return typeof context === 'string' || context === undefined ? context : context.contextId;
}

export function codeContextFromWire(value: unknown): CodeContext {
  const wire = (typeof value === 'object' && value !== null ? value : {}) as Record<string, unknown>;
  const context: CodeContext = {
    contextId: str(wire['context_id'], ''),
    cwd: str(wire['cwd'], ''),
    language: str(wire['language'], 'python'),
  };
  if (typeof wire['state'] === 'string') context.state = wire['state'];
  if (typeof wire['died'] === 'string') context.died = wire['died'];
  return context;
}

/** Gathers one cell's events into an `Execution` and calls the user's callbacks. */
export class CellCollector {
  readonly execution = new Execution();

  constructor(private readonly options: RunCodeOptions) {}

  stdout = (text: string): void => {
    this.execution.logs.stdout.push(text);
    this.options.onStdout?.(text);
  };

  stderr = (text: string): void => {
    this.execution.logs.stderr.push(text);
    this.options.onStderr?.(text);
  };

  event(frame: Record<string, unknown>): void {
    if (frame['event'] === 'result') {
      const data = frame['data'];
      const result = new Result(
        typeof data === 'object' && data !== null ? (data as Record<string, unknown>) : {},
        frame['is_main_result'] === true,
      );
      this.execution.results.push(result);
      this.options.onResult?.(result);
    } else if (frame['event'] === 'execution_error') {
      const traceback = frame['traceback'];
      const error: ExecutionError = {
        name: str(frame['name'], ''),
        value: str(frame['value'], ''),
        traceback: Array.isArray(traceback) ? traceback.map(String) : [],
      };
      this.execution.error = error;
      this.options.onError?.(error);
    }
  }

  finish(processId: number | undefined, result: ExecutionResult): Execution {
    this.execution.processId = processId;
    this.execution.exitCode = result.exitCode;
    this.execution.reason = result.reason;
    this.execution.durationMs = result.durationMs;
    return this.execution;
  }
}
