/**
 * The JSON messages of docs/protocol.md: encoders for what the client sends, and the parser for
 * what the server sends. Nothing here does I/O or keeps state.
 *
 * Keys are snake_case because they are the wire format. Every request carries the `id` the
 * protocol core chose (a server that does not know request ids ignores the key).
 */
import { bytesToBase64 } from './base64.js';
// A text stdin chunk whose JSON escaping would make the message this large is sent as base64
// instead (control characters cost up to 6 bytes each in JSON; the server refuses messages over
// 4 MiB).
const MAX_TEXT_STDIN_JSON = 3 * 1024 * 1024;
/** The init object, the first message on `/create`: always the original's five keys. */
export function initMessage(init) {
    const message = {
        idle_timeout: init.idle_timeout,
        enable_checkpoint: init.enable_checkpoint,
        enable_idle_timeout_auto_checkpoint: init.enable_idle_timeout_auto_checkpoint,
        enable_sandbox_handoff: init.enable_sandbox_handoff,
        filesystem_snapshot_name: init.filesystem_snapshot_name,
    };
    // Our addition; sent only when asked for, so the message stays the original's.
    if (init.enable_network === true)
        message.enable_network = true;
    // Our addition too, sent only when given. The server checks the sizes.
    if (init.labels !== undefined) {
        if (Object.values(init.labels).some((value) => typeof value !== 'string')) {
            throw new TypeError('labels must map str to str');
        }
        message.labels = { ...init.labels };
    }
    // Our addition (issue 20), sent only when given.
    if (init.expose_ports !== undefined && init.expose_ports.length > 0) {
        message.expose_ports = init.expose_ports.map(checkPort);
    }
    return JSON.stringify(message);
}
/** A TCP port number (1 to 65535), or a `RangeError` naming the value. */
export function checkPort(port) {
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
        throw new RangeError(`port must be an integer from 1 to 65535, got ${String(port)}`);
    }
    return port;
}
export function execMessage(requestId, req) {
    const message = { id: requestId, language: req.language, code: req.code };
    // Only the additions that are used, so a core server sees the core message.
    if (req.env !== undefined)
        message['env'] = { ...req.env };
    if (req.cwd !== undefined)
        message['cwd'] = req.cwd;
    if (req.timeout !== undefined)
        message['timeout'] = req.timeout;
    if (req.outputEncoding !== undefined && req.outputEncoding !== 'text')
        message['output_encoding'] = req.outputEncoding;
    if (req.pty !== undefined)
        message['pty'] = { cols: req.pty.cols, rows: req.pty.rows };
    return JSON.stringify(message);
}
/**
 * `{"event": "stdin"}`: `data` as text when `asText` (it is valid UTF-8), else base64;
 * `processId` only when known (protocol 2).
 */
export function stdinMessage(requestId, processId, data, asText, eof = false) {
    const message = { event: 'stdin' };
    if (processId !== undefined)
        message['process_id'] = processId;
    if (data !== undefined) {
        message['data'] = asText ? new TextDecoder().decode(data) : bytesToBase64(data);
        if (!asText)
            message['encoding'] = 'base64';
    }
    if (eof)
        message['eof'] = true;
    message['id'] = requestId;
    const text = JSON.stringify(message);
    if (asText && data !== undefined && new TextEncoder().encode(text).length > MAX_TEXT_STDIN_JSON) {
        return stdinMessage(requestId, processId, data, false, eof);
    }
    return text;
}
export function actionMessage(action, requestId, extra = {}) {
    return JSON.stringify({ action, ...extra, id: requestId });
}
/** One server frame as a JSON object; `undefined` for anything else (ignored). */
export function parseFrame(text) {
    let value;
    try {
        value = JSON.parse(text);
    }
    catch {
        return undefined;
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value))
        return undefined;
    return value;
}
export function optInt(value) {
    return typeof value === 'number' && Number.isInteger(value) ? value : undefined;
}
export function optNumber(value) {
    return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
}
export function optStr(value) {
    return typeof value === 'string' ? value : undefined;
}
//# sourceMappingURL=frames.js.map