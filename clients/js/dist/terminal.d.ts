/**
 * Terminals: a program on a pseudo-terminal inside the sandbox (`sandbox.pty`).
 *
 * A terminal is a process like the others (it has a `processId`, is listed with kind
 * `"terminal"`, can be killed and re-attached), with three differences: its output is one stream
 * of raw bytes (escape sequences and invalid UTF-8 pass untouched), its input is keystrokes
 * (`"\x03"` is ctrl-C for the program in the foreground), and it has a window size (`resize`;
 * the program gets SIGWINCH).
 */
import type { SandboxProcess } from './process.js';
/** The largest number of columns or rows (the smallest is 1). */
export declare const MAX_TERMINAL_SIZE = 1000;
/** `sandbox.pty.create()` options. */
export interface TerminalOptions {
    /** Columns (default 80). */
    cols?: number | undefined;
    /** Rows (default 24). */
    rows?: number | undefined;
    /** A bash command line to run instead of the user's login shell. */
    command?: string | undefined;
    /** Variables added to the environment (`TERM` is `xterm-256color`). */
    env?: Readonly<Record<string, string>> | undefined;
    /** Absolute working directory inside the sandbox (default `/root`). */
    cwd?: string | undefined;
    /** Wall-clock limit in seconds (default: the server's longest, `SANDBOX_MAX_EXEC_TIMEOUT_SECS`). */
    timeout?: number | undefined;
    /** Called with each chunk of the terminal's output, as raw bytes. */
    onData?: ((data: Uint8Array) => void) | undefined;
}
/** @internal What terminals need from their sandbox. */
export interface TerminalHost {
    start(options: TerminalOptions): Promise<{
        process: SandboxProcess;
        key: string;
    }>;
    resize(key: string, cols: number, rows: number): Promise<void>;
}
/** A program on a pseudo-terminal in the sandbox, from `sandbox.pty.create()`. */
export declare class Terminal {
    #private;
    /** The underlying process (its `processId`, `exitCode`, `reason`...). */
    readonly process: SandboxProcess;
    /** @internal Made by `Terminals.create`. */
    constructor(host: TerminalHost, process: SandboxProcess, key: string);
    get processId(): number | null;
    get exitCode(): number | null;
    /** The terminal's output as raw byte chunks until it ends (read once, like a pipe; `onData` reads it for you). */
    output(): AsyncIterable<Uint8Array>;
    /** Types `data` (keystrokes: `"ls\r"`, `"\x03"` for ctrl-C); waits for room in the stdin window. */
    write(data: string | Uint8Array): Promise<void>;
    /** Sets the window size (the program gets SIGWINCH). */
    resize(cols: number, rows: number): Promise<void>;
    /** Waits for the program to end; its exit code (128 + N when killed by signal N). */
    wait(): Promise<number>;
    /** Kills the program (its `reason` becomes `"killed"`). */
    kill(): Promise<void>;
}
/** `sandbox.pty`: opens terminals in the sandbox. */
export declare class Terminals {
    #private;
    /** @internal Made by `Sandbox.pty`. */
    constructor(host: TerminalHost);
    /**
     * Opens a terminal (default 80 x 24) running `command` (default: the user's login shell) with
     * `TERM=xterm-256color`, once the server confirmed it started. Needs a server that speaks
     * protocol 2.
     */
    create(options?: TerminalOptions): Promise<Terminal>;
}
//# sourceMappingURL=terminal.d.ts.map