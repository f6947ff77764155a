/**
 * The only module that touches the network, behind a small public interface.
 *
 * A `Transport` opens `Connection`s; a connection moves text frames and reports its end once
 * through `onClose`. `WebSocketTransport` (the default) does it with the `ws` package in Node, or
 * with any WHATWG-compatible `WebSocket` constructor given to it (e.g. `globalThis.WebSocket`).
 * Pass another transport to `Sandbox.create(url, { transport })`: tests use a scripted in-memory
 * one, and a transport is where a proxy or a different WebSocket library would plug in.
 */
import { SandboxAuthenticationError, SandboxConnectionError, SandboxTimeoutError } from '../errors.js';
/** The default transport: WebSocket with `ws` (Node) or a WHATWG `WebSocket` constructor. */
export class WebSocketTransport {
    #webSocket;
    constructor(options = {}) {
        this.#webSocket = options.webSocket;
    }
    async connect(url, options, handlers) {
        if (this.#webSocket !== undefined)
            return connectWhatwg(url, this.#webSocket, options, handlers);
        const ws = await loadWs();
        if (ws !== undefined)
            return connectWs(ws, url, options, handlers);
        const global = globalThis.WebSocket;
        if (global !== undefined)
            return connectWhatwg(url, global, options, handlers);
        throw new SandboxConnectionError('no WebSocket implementation: install the "ws" package');
    }
}
/** The URL without its query (which holds the sandbox token). */
function redact(url) {
    return url.split('?', 1)[0] ?? url;
}
/** The extra upgrade headers: `headers`, plus `Authorization: Bearer <apiKey>` with `apiKey`. */
export function connectionHeaders(headers, apiKey) {
    if (apiKey === undefined)
        return { ...headers };
    if (typeof apiKey !== 'string' || apiKey === '')
        throw new TypeError('apiKey must be a non-empty string');
    if (Object.keys(headers ?? {}).some((name) => name.toLowerCase() === 'authorization')) {
        throw new TypeError('give either apiKey or an Authorization header, not both');
    }
    return { ...headers, Authorization: `Bearer ${apiKey}` };
}
/** What a 401 / 403 means, with the server's own words when it sent a JSON error. */
export function refusalMessage(url, status, body) {
    let detail = '';
    try {
        const parsed = JSON.parse(body);
        if (typeof parsed.error === 'string')
            detail = `: ${parsed.error}`;
    }
    catch {
        // Not JSON (Cloud Run's IAM answers with HTML): the status says enough.
    }
    const hint = status === 401
        ? 'pass apiKey (or an Authorization header) that the server accepts'
        : 'the credentials are valid but may not use this service (IAM: roles/run.invoker)';
    return `the server refused the connection to ${url} with HTTP ${status}${detail} (${hint})`;
}
/** 1006 is never sent in a close frame: it is how WebSocket libraries report a drop. */
function closeCode(code) {
    return code === 1006 ? null : code;
}
const OPEN = 1;
let wsModule;
function loadWs() {
    wsModule ??= import('ws').then((m) => m, () => undefined);
    return wsModule;
}
function connectWs(module, url, options, handlers) {
    const WebSocketImpl = module.WebSocket;
    return new Promise((resolve, reject) => {
        let opened = false;
        let settled = false;
        const socket = new WebSocketImpl(url, {
            headers: { ...options.headers },
            ...(options.connectTimeoutMs === undefined ? {} : { handshakeTimeout: options.connectTimeoutMs }),
            // The server refuses frames over 4 MiB by default; accept large server frames anyway.
            maxPayload: 256 * 1024 * 1024,
            perMessageDeflate: false,
        });
        let failure;
        const fail = (error) => {
            if (settled)
                return;
            settled = true;
            reject(error);
        };
        socket.on('unexpected-response', (_req, res) => {
            // The server answered the upgrade with plain HTTP (404 unknown path, 503 busy...): report
            // its status and the start of its body, which says why.
            const status = res.statusCode ?? 0;
            const chunks = [];
            const finish = () => {
                const body = Buffer.concat(chunks).toString('utf8').slice(0, 500).trim();
                fail(status === 401 || status === 403
                    ? new SandboxAuthenticationError(refusalMessage(redact(url), status, body), { httpStatus: status })
                    : new SandboxConnectionError(`websocket upgrade to ${redact(url)} refused with HTTP ${status}${body ? `: ${body}` : ''}`));
                socket.terminate();
            };
            res.on('data', (chunk) => chunks.push(chunk));
            res.on('end', finish);
            res.on('error', finish);
        });
        socket.on('error', (error) => {
            failure = error;
            if (!opened) {
                const timedOut = /timed out|timeout/i.test(error.message);
                const text = timedOut
                    ? `timed out after ${(options.connectTimeoutMs ?? 0) / 1000}s connecting to ${redact(url)}`
                    : `cannot connect to ${redact(url)}: ${error.message}`;
                fail(timedOut ? new SandboxTimeoutError(text, { cause: error }) : new SandboxConnectionError(text, { cause: error }));
            }
        });
        socket.on('open', () => {
            opened = true;
            settled = true;
            resolve({
                isOpen: () => socket.readyState === OPEN,
                send: (text) => {
                    if (socket.readyState === OPEN)
                        socket.send(text);
                },
                close: (code, reason) => socket.close(code, reason),
                abort: () => socket.terminate(),
            });
        });
        socket.on('message', (data, isBinary) => {
            // The protocol is text only; a binary frame is not ours to interpret.
            if (isBinary)
                return;
            const text = Array.isArray(data)
                ? Buffer.concat(data).toString('utf8')
                : data instanceof ArrayBuffer
                    ? Buffer.from(data).toString('utf8')
                    : data.toString('utf8');
            handlers.onMessage(text);
        });
        socket.on('close', (code, reason) => {
            if (!opened) {
                fail(new SandboxConnectionError(`connection to ${redact(url)} closed before it opened${failure ? `: ${failure.message}` : ''}`, { closeCode: code, cause: failure }));
                return;
            }
            handlers.onClose(closeCode(code), reason.toString('utf8'));
        });
    });
}
function connectWhatwg(url, WebSocketImpl, options, handlers) {
    if (Object.keys(options.headers).length > 0) {
        return Promise.reject(new TypeError('headers and apiKey need the "ws" package: a WHATWG WebSocket cannot send headers'));
    }
    return new Promise((resolve, reject) => {
        let opened = false;
        let closed = false;
        const socket = new WebSocketImpl(url);
        const timer = options.connectTimeoutMs === undefined
            ? undefined
            : setTimeout(() => {
                if (opened)
                    return;
                reject(new SandboxTimeoutError(`timed out after ${(options.connectTimeoutMs ?? 0) / 1000}s connecting to ${redact(url)}`));
                socket.close();
            }, options.connectTimeoutMs);
        socket.addEventListener('open', () => {
            opened = true;
            clearTimeout(timer);
            resolve({
                isOpen: () => !closed && socket.readyState === OPEN,
                send: (text) => {
                    if (socket.readyState === OPEN)
                        socket.send(text);
                },
                close: (code, reason) => socket.close(code, reason),
                // The WHATWG API has no abrupt close: report the drop now and let the socket wind down.
                abort: () => {
                    socket.close();
                    if (!closed) {
                        closed = true;
                        handlers.onClose(null, 'aborted');
                    }
                },
            });
        });
        socket.addEventListener('message', (event) => {
            if (typeof event.data === 'string')
                handlers.onMessage(event.data);
        });
        socket.addEventListener('error', () => {
            if (!opened) {
                clearTimeout(timer);
                reject(new SandboxConnectionError(`cannot connect to ${redact(url)}`));
            }
        });
        socket.addEventListener('close', (event) => {
            clearTimeout(timer);
            if (!opened) {
                reject(new SandboxConnectionError(`connection to ${redact(url)} closed before it opened`, { closeCode: event.code }));
                return;
            }
            if (closed)
                return;
            closed = true;
            handlers.onClose(closeCode(event.code), event.reason);
        });
    });
}
//# sourceMappingURL=transport.js.map