/**
 * The code interpreter's results (docs/protocol.md, "Code interpreter"): what
 * `Sandbox.runCode()` returns, and the code contexts it runs in. The same names as the Python
 * client's `codesandbox` (camelCase).
 *
 * The user's code failing is data (`Execution.error`), not an exception; a context that cannot
 * take the cell (dead, unknown, too many waiting) rejects with `SandboxError`.
 */
import { base64ToBytes } from './internal/base64.js';
/**
 * One result of a cell: its trailing expression's value (`isMainResult`), a `display()`, or a
 * figure. `data` maps MIME types to values as the server sent them; the getters decode the common
 * ones.
 */
export class Result {
    data;
    isMainResult;
    constructor(data, isMainResult = false) {
        this.data = data;
        this.isMainResult = isMainResult;
    }
    /** The MIME types this result has (`text/plain` always). */
    formats() {
        return Object.keys(this.data);
    }
    #text(mime) {
        const value = this.data[mime];
        return typeof value === 'string' ? value : undefined;
    }
    #binary(mime) {
        const value = this.#text(mime);
        return value === undefined ? undefined : base64ToBytes(value);
    }
    get text() {
        return this.#text('text/plain');
    }
    get html() {
        return this.#text('text/html');
    }
    get markdown() {
        return this.#text('text/markdown');
    }
    get svg() {
        return this.#text('image/svg+xml');
    }
    get latex() {
        return this.#text('text/latex');
    }
    get png() {
        return this.#binary('image/png');
    }
    get jpeg() {
        return this.#binary('image/jpeg');
    }
    get json() {
        return this.data['application/json'];
    }
}
/**
 * A cell's outcome: its results, its output, its error (if it raised), and how it ended
 * (`exitCode` 0 or 1; `reason`: exited, killed, timeout, output_limit, context_died).
 */
export class Execution {
    results = [];
    logs = { stdout: [], stderr: [] };
    error;
    processId;
    exitCode;
    reason;
    durationMs;
    /** The main result's text (undefined if the cell ended without a value). */
    get text() {
        return this.results.find((result) => result.isMainResult)?.text;
    }
}
/** A string field of a frame from the server, or `fallback`. */
function str(value, fallback) {
    return typeof value === 'string' ? value : fallback;
}
export function contextIdOf(context) {
    return typeof context === 'string' || context === undefined ? context : context.contextId;
}
export function codeContextFromWire(value) {
    const wire = (typeof value === 'object' && value !== null ? value : {});
    const context = {
        contextId: str(wire['context_id'], ''),
        cwd: str(wire['cwd'], ''),
        language: str(wire['language'], 'python'),
    };
    if (typeof wire['state'] === 'string')
        context.state = wire['state'];
    if (typeof wire['died'] === 'string')
        context.died = wire['died'];
    return context;
}
/** Gathers one cell's events into an `Execution` and calls the user's callbacks. */
export class CellCollector {
    options;
    execution = new Execution();
    constructor(options) {
        this.options = options;
    }
    stdout = (text) => {
        this.execution.logs.stdout.push(text);
        this.options.onStdout?.(text);
    };
    stderr = (text) => {
        this.execution.logs.stderr.push(text);
        this.options.onStderr?.(text);
    };
    event(frame) {
        if (frame['event'] === 'result') {
            const data = frame['data'];
            const result = new Result(typeof data === 'object' && data !== null ? data : {}, frame['is_main_result'] === true);
            this.execution.results.push(result);
            this.options.onResult?.(result);
        }
        else if (frame['event'] === 'execution_error') {
            const traceback = frame['traceback'];
            const error = {
                name: str(frame['name'], ''),
                value: str(frame['value'], ''),
                traceback: Array.isArray(traceback) ? traceback.map(String) : [],
            };
            this.execution.error = error;
            this.options.onError?.(error);
        }
    }
    finish(processId, result) {
        this.execution.processId = processId;
        this.execution.exitCode = result.exitCode;
        this.execution.reason = result.reason;
        this.execution.durationMs = result.durationMs;
        return this.execution;
    }
}
//# sourceMappingURL=code.js.map