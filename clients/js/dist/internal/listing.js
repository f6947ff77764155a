/**
 * `GET /sandboxes`: the sandboxes of a server instance, or the checkpoints in its store; the twin
 * of the Python client's `_listing.py`.
 *
 * The request is plain HTTP (the service's base URL with `http(s)://`) made with the runtime's
 * `fetch`; the parser is separate and does no I/O, so it is tested against recorded answers.
 */
import { SandboxAuthenticationError, SandboxConnectionError, SandboxError, SandboxTimeoutError, } from '../errors.js';
import { refusalMessage } from './transport.js';
// A page of 1000 sandboxes is well under a megabyte; anything larger is not our server.
const MAX_BODY_BYTES = 16 * 1024 * 1024;
/** The `GET /sandboxes` URL (`http(s)://`) for the service's base URL. */
export function listUrl(url, options) {
    let parsed;
    try {
        parsed = new URL(url);
    }
    catch {
        throw new TypeError(`invalid sandbox server url: ${JSON.stringify(url)}`);
    }
    const schemes = { 'ws:': 'http:', 'wss:': 'https:', 'http:': 'http:', 'https:': 'https:' };
    const scheme = schemes[parsed.protocol];
    if (scheme === undefined) {
        throw new TypeError(`unsupported url scheme ${JSON.stringify(parsed.protocol)} in ${url}: use ws://, wss://, http:// or https://`);
    }
    const out = new URL(`${scheme}//${parsed.host}`);
    out.pathname = `${parsed.pathname.replace(/\/+$/, '')}/sandboxes`;
    const query = new URLSearchParams();
    if (options.checkpointed === true)
        query.set('checkpointed', '1');
    if (options.limit !== undefined) {
        if (!Number.isInteger(options.limit) || options.limit < 1 || options.limit > 1000) {
            throw new RangeError(`limit must be an integer from 1 to 1000, got ${String(options.limit)}`);
        }
        query.set('limit', String(options.limit));
    }
    if (options.after !== undefined)
        query.set('after', options.after);
    out.search = query.toString();
    return out.toString();
}
/** The answer of `GET /sandboxes`; entries without an id are skipped. */
export function parseList(body) {
    let value;
    try {
        value = JSON.parse(body);
    }
    catch (error) {
        throw new SandboxError(`the server's sandbox list is not JSON: ${String(error)}`);
    }
    const object = typeof value === 'object' && value !== null ? value : undefined;
    const items = object?.['sandboxes'];
    if (!Array.isArray(items))
        throw new SandboxError("the server's sandbox list has no 'sandboxes'");
    const sandboxes = items.map(info).filter((entry) => entry !== undefined);
    const nextAfter = object?.['next_after'];
    return { sandboxes, nextAfter: typeof nextAfter === 'string' ? nextAfter : null };
}
function info(item) {
    if (typeof item !== 'object' || item === null)
        return undefined;
    const entry = item;
    const sandboxId = entry['sandbox_id'];
    if (typeof sandboxId !== 'string')
        return undefined;
    const labels = {};
    const given = entry['labels'];
    if (typeof given === 'object' && given !== null && !Array.isArray(given)) {
        for (const [key, text] of Object.entries(given))
            if (typeof text === 'string')
                labels[key] = text;
    }
    const state = entry['state'];
    return {
        sandboxId,
        state: typeof state === 'string' ? state : 'unknown',
        labels,
        checkpointed: entry['checkpointed'] === true,
        handoff: entry['handoff'] === true,
        ageSecs: number(entry['age_secs']),
        idleSecs: number(entry['idle_secs']),
        attached: flag(entry['attached']),
        checkpointable: flag(entry['checkpointable']),
        checkpointUnixMs: integer(entry['checkpoint_unix_ms']),
        sizeBytes: integer(entry['size_bytes']),
    };
}
function number(value) {
    return typeof value === 'number' && Number.isFinite(value) ? value : null;
}
function integer(value) {
    return typeof value === 'number' && Number.isInteger(value) ? value : null;
}
function flag(value) {
    return typeof value === 'boolean' ? value : null;
}
/** `GET url` with `headers`; `timeout` in seconds (null: none). */
export async function fetchList(url, headers, timeout) {
    let response;
    try {
        response = await fetch(url, {
            headers: { Accept: 'application/json', ...headers },
            ...(timeout === null ? {} : { signal: AbortSignal.timeout(timeout * 1000) }),
        });
    }
    catch (error) {
        if (error instanceof Error && (error.name === 'TimeoutError' || error.name === 'AbortError')) {
            throw new SandboxTimeoutError(`timed out after ${String(timeout)}s waiting for ${url}`, { cause: error });
        }
        throw new SandboxConnectionError(`cannot get ${url}: ${String(error)}`, { cause: error });
    }
    const body = await response.text();
    if (body.length > MAX_BODY_BYTES) {
        throw new SandboxError(`the answer of ${url} is larger than ${String(MAX_BODY_BYTES)} bytes`);
    }
    if (response.status === 401 || response.status === 403) {
        throw new SandboxAuthenticationError(refusalMessage(url, response.status, body), { httpStatus: response.status });
    }
    if (response.status !== 200)
        throw new SandboxError(httpError(url, response.status, body));
    return parseList(body);
}
/** An error answer, with the server's own words (`{"error": ...}`) when it sent them. */
function httpError(url, status, body) {
    let detail = '';
    try {
        const parsed = JSON.parse(body);
        if (typeof parsed.error === 'string')
            detail = `: ${parsed.error}`;
    }
    catch {
        // Not JSON: the status says enough.
    }
    return `GET ${url} failed with HTTP ${String(status)}${detail}`;
}
//# sourceMappingURL=listing.js.map