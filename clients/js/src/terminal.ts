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
export const MAX_TERMINAL_SIZE = 1000;

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
  start(options: TerminalOptions): Promise<{ process: SandboxProcess; key: string }>;
  resize(key: string, cols: number, rows: number): Promise<void>;
}

function checkSize(cols: unknown, rows: unknown): void {
  for (const [name, value] of [
    ['cols', cols],
    ['rows', rows],
  ] as const) {
    if (typeof value !== 'number' || !Number.isInteger(value)) {
      throw new TypeError(`${name} must be an integer, not ${JSON.stringify(value)}`);
    }
    if (value < 1 || value > MAX_TERMINAL_SIZE) {
      throw new RangeError(`${name} must be from 1 to ${MAX_TERMINAL_SIZE}, got ${value}`);
    }
  }
}

/** A program on a pseudo-terminal in the sandbox, from `sandbox.pty.create()`. */
export class Terminal {
  /** The underlying process (its `processId`, `exitCode`, `reason`...). */
  readonly process: SandboxProcess;
  readonly #host: TerminalHost;
  readonly #key: string;

  /** @internal Made by `Terminals.create`. */
  constructor(host: TerminalHost, process: SandboxProcess, key: string) {
    this.#host = host;
    this.process = process;
    this.#key = key;
  }

  get processId(): number | null {
    return this.process.processId;
  }

  get exitCode(): number | null {
    return this.process.exitCode;
  }

  /** The terminal's output as raw byte chunks until it ends (read once, like a pipe; `onData` reads it for you). */
  output(): AsyncIterable<Uint8Array> {
    return this.process.stdout.bytes();
  }

  /** Types `data` (keystrokes: `"ls\r"`, `"\x03"` for ctrl-C); waits for room in the stdin window. */
  write(data: string | Uint8Array): Promise<void> {
    return this.process.write(data);
  }

  /** Sets the window size (the program gets SIGWINCH). */
  async resize(cols: number, rows: number): Promise<void> {
    checkSize(cols, rows);
    await this.#host.resize(this.#key, cols, rows);
  }

  /** Waits for the program to end; its exit code (128 + N when killed by signal N). */
  wait(): Promise<number> {
    return this.process.wait();
  }

  /** Kills the program (its `reason` becomes `"killed"`). */
  kill(): Promise<void> {
    return this.process.kill();
  }
}

/** `sandbox.pty`: opens terminals in the sandbox. */
export class Terminals {
  readonly #host: TerminalHost;

  /** @internal Made by `Sandbox.pty`. */
  constructor(host: TerminalHost) {
    this.#host = host;
  }

  /**
   * Opens a terminal (default 80 x 24) running `command` (default: the user's login shell) with
   * `TERM=xterm-256color`, once the server confirmed it started. Needs a server that speaks
   * protocol 2.
   */
  async create(options: TerminalOptions = {}): Promise<Terminal> {
    checkSize(options.cols ?? 80, options.rows ?? 24);
    if (options.command !== undefined && typeof options.command !== 'string') {
      throw new TypeError('command must be a string');
    }
    const { process, key } = await this.#host.start(options);
    const terminal = new Terminal(this.#host, process, key);
    const onData = options.onData;
    if (onData !== undefined) {
      void (async () => {
        for await (const chunk of terminal.output()) onData(chunk);
      })().catch(() => undefined);
    }
    return terminal;
  }
}
