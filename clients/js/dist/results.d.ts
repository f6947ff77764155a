/**
 * Plain data the API hands out: how a process ended (`ExecutionResult`), what `Sandbox.run()`
 * returns (`RunResult`), and a row of `Sandbox.listProcesses()` (`ProcessInfo`). No behaviour.
 */
/** How a process ended (`SANDBOX_EXECUTION_DONE`). */
export interface ExecutionResult {
    /** Exit status; `128 + N` when signal N ended it; `-1` when the server did not say. */
    exitCode: number;
    /** The signal that ended it, or null. */
    signal: number | null;
    /** `exited`, `signaled`, `killed`, `timeout`, `output_limit`, `sandbox_lost`, or `unknown`. */
    reason: string;
    /** Wall-clock duration in milliseconds, or null when the server did not say. */
    durationMs: number | null;
}
/** What `run()` returns. A non-zero `exitCode` is a result, not an error. */
export interface RunResult {
    stdout: string;
    stderr: string;
    exitCode: number;
    reason: string;
    signal: number | null;
    durationMs: number | null;
}
/** One process of the sandbox, as `Sandbox.listProcesses()` reports it. */
export interface ProcessInfo {
    /** The server's handle: `Sandbox.attachProcess(processId)` follows it. */
    processId: number;
    /** The id of the request that started it (null for one started without an id). */
    requestId: string | null;
    /** `exec` (later also `cell` and `terminal`). */
    kind: string;
    language: string | null;
    running: boolean;
    startedUnixMs: number | null;
}
//# sourceMappingURL=results.d.ts.map