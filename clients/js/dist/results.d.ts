/**
 * Plain data the API hands out: how a process ended (`ExecutionResult`), what `Sandbox.run()`
 * returns (`RunResult`), a row of `Sandbox.listProcesses()` (`ProcessInfo`), and what
 * `Sandbox.list()` returns (`SandboxList` of `SandboxInfo`). No behaviour.
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
/** One sandbox, as `Sandbox.list()` reports it (never its token). */
export interface SandboxInfo {
    sandboxId: string;
    /**
     * Live on the instance that answered: `creating`, `restoring`, `running`, `checkpointing`,
     * `snapshotting`, `moving` (being handed off), `ending`. From the store (`checkpointed: true`):
     * `checkpointed`, or `running` when an instance runs it now.
     */
    state: string;
    labels: Record<string, string>;
    /** It has a checkpoint in the store (a live one was restored from one). */
    checkpointed: boolean;
    /** Created with `enableSandboxHandoff`. */
    handoff: boolean;
    /** Seconds since it was created or restored (live sandboxes only). */
    ageSecs: number | null;
    /** Seconds since its client's last message (live sandboxes only; 0 while a process runs). */
    idleSecs: number | null;
    /** A client is connected to it (live sandboxes only). */
    attached: boolean | null;
    /** Created with checkpointing (live sandboxes only). */
    checkpointable: boolean | null;
    /** When its checkpoint was taken (the store's listing only). */
    checkpointUnixMs: number | null;
    /** The size of its checkpoint (the store's listing only). */
    sizeBytes: number | null;
}
/** What `Sandbox.list()` returns: one page. */
export interface SandboxList {
    sandboxes: SandboxInfo[];
    /** The store's listing only: pass it as `after` for the next page (null: the end). */
    nextAfter: string | null;
}
/**
 * A file or directory of the sandbox, as `sandbox.files.list()` / `stat()` report it (a symbolic
 * link is described, not followed).
 */
export interface FileEntry {
    name: string;
    /** Absolute, symbolic links of its parents resolved. */
    path: string;
    /** `file`, `dir`, `symlink` or `other`. */
    type: string;
    size: number;
    /** Permission bits (e.g. `0o644`). */
    mode: number;
    mtimeUnixMs: number;
}
//# sourceMappingURL=results.d.ts.map