/**
 * The code interpreter's results (docs/protocol.md, "Code interpreter"): what
 * `Sandbox.runCode()` returns, and the code contexts it runs in. The same names as the Python
 * client's `codesandbox` (camelCase).
 *
 * The user's code failing is data (`Execution.error`), not an exception; a context that cannot
 * take the cell (dead, unknown, too many waiting) rejects with `SandboxError`.
 */
import type { ExecutionResult } from './results.js';
/**
 * One result of a cell: its trailing expression's value (`isMainResult`), a `display()`, or a
 * figure. `data` maps MIME types to values as the server sent them; the getters decode the common
 * ones.
 */
export declare class Result {
    #private;
    readonly data: Record<string, unknown>;
    readonly isMainResult: boolean;
    constructor(data: Record<string, unknown>, isMainResult?: boolean);
    /** The MIME types this result has (`text/plain` always). */
    formats(): string[];
    get text(): string | undefined;
    get html(): string | undefined;
    get markdown(): string | undefined;
    get svg(): string | undefined;
    get latex(): string | undefined;
    get png(): Uint8Array | undefined;
    get jpeg(): Uint8Array | undefined;
    get json(): unknown;
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
export declare class Execution {
    readonly results: Result[];
    readonly logs: Logs;
    error: ExecutionError | undefined;
    processId: number | undefined;
    exitCode: number | undefined;
    reason: string | undefined;
    durationMs: number | null | undefined;
    /** The main result's text (undefined if the cell ended without a value). */
    get text(): string | undefined;
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
export declare function contextIdOf(context: CodeContext | string | undefined): string | undefined;
export declare function codeContextFromWire(value: unknown): CodeContext;
/** Gathers one cell's events into an `Execution` and calls the user's callbacks. */
export declare class CellCollector {
    private readonly options;
    readonly execution: Execution;
    constructor(options: RunCodeOptions);
    stdout: (text: string) => void;
    stderr: (text: string) => void;
    event(frame: Record<string, unknown>): void;
    finish(processId: number | undefined, result: ExecutionResult): Execution;
}
//# sourceMappingURL=code.d.ts.map