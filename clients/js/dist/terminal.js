/**
 * Terminals: a program on a pseudo-terminal inside the sandbox (`sandbox.pty`).
 *
 * A terminal is a process like the others (it has a `processId`, is listed with kind
 * `"terminal"`, can be killed and re-attached), with three differences: its output is one stream
 * of raw bytes (escape sequences and invalid UTF-8 pass untouched), its input is keystrokes
 * (`"\x03"` is ctrl-C for the program in the foreground), and it has a window size (`resize`;
 * the program gets SIGWINCH).
 */
/** The largest number of columns or rows (the smallest is 1). */
export const MAX_TERMINAL_SIZE = 1000;
function checkSize(cols, rows) {
    for (const [name, value] of [
        ['cols', cols],
        ['rows', rows],
    ]) {
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
    process;
    #host;
    #key;
    /** @internal Made by `Terminals.create`. */
    constructor(host, process, key) {
        this.#host = host;
        this.process = process;
        this.#key = key;
    }
    get processId() {
        return this.process.processId;
    }
    get exitCode() {
        return this.process.exitCode;
    }
    /** The terminal's output as raw byte chunks until it ends (read once, like a pipe; `onData` reads it for you). */
    output() {
        return this.process.stdout.bytes();
    }
    /** Types `data` (keystrokes: `"ls\r"`, `"\x03"` for ctrl-C); waits for room in the stdin window. */
    write(data) {
        return this.process.write(data);
    }
    /** Sets the window size (the program gets SIGWINCH). */
    async resize(cols, rows) {
        checkSize(cols, rows);
        await this.#host.resize(this.#key, cols, rows);
    }
    /** Waits for the program to end; its exit code (128 + N when killed by signal N). */
    wait() {
        return this.process.wait();
    }
    /** Kills the program (its `reason` becomes `"killed"`). */
    kill() {
        return this.process.kill();
    }
}
/** `sandbox.pty`: opens terminals in the sandbox. */
export class Terminals {
    #host;
    /** @internal Made by `Sandbox.pty`. */
    constructor(host) {
        this.#host = host;
    }
    /**
     * Opens a terminal (default 80 x 24) running `command` (default: the user's login shell) with
     * `TERM=xterm-256color`, once the server confirmed it started. Needs a server that speaks
     * protocol 2.
     */
    async create(options = {}) {
        checkSize(options.cols ?? 80, options.rows ?? 24);
        if (options.command !== undefined && typeof options.command !== 'string') {
            throw new TypeError('command must be a string');
        }
        const { process, key } = await this.#host.start(options);
        const terminal = new Terminal(this.#host, process, key);
        const onData = options.onData;
        if (onData !== undefined) {
            void (async () => {
                for await (const chunk of terminal.output())
                    onData(chunk);
            })().catch(() => undefined);
        }
        return terminal;
    }
}
//# sourceMappingURL=terminal.js.map