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

/** The subset of the WHATWG WebSocket API this client needs. */
export interface WebSocketLike {
  readonly readyState: number;
  binaryType: string;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: string, listener: (event: never) => void): void;
}

/** A WHATWG-compatible WebSocket constructor, such as `globalThis.WebSocket`. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ConnectOptions {
  /** Extra HTTP headers for the upgrade request (e.g. `Authorization`). */
  headers: Readonly<Record<string, string>>;
  /** Give up opening the connection after this many milliseconds (undefined: no bound). */
  connectTimeoutMs: number | undefined;
}

export interface ConnectionHandlers {
  /** One text frame from the server. */
  onMessage(text: string): void;
  /**
   * The connection is over (reported once): `code` is the close code the server sent, `null`
   * when no close frame came (the connection dropped).
   */
  onClose(code: number | null, reason: string): void;
}

/** One open connection to the server: text frames both ways. */
export interface Connection {
  /** True while frames can be sent (false once closing or closed). */
  isOpen(): boolean;
  /** Sends one text frame (dropped if the connection is no longer open). */
  send(text: string): void;
  /** A clean close handshake; `onClose` follows. */
  close(code?: number, reason?: string): void;
  /** Drops the connection at once, without a close frame; `onClose(null)` follows. */
  abort(): void;
}

/** Opens connections to the server's WebSocket endpoints. */
export interface Transport {
  /**
   * Opens `url` (`ws://` or `wss://`, with the endpoint's path and query); resolves once open.
   * Rejects with `SandboxConnectionError` (or `SandboxTimeoutError`) when it cannot, and
   * `SandboxAuthenticationError` when the server refuses it with HTTP 401 / 403.
   */
  connect(url: string, options: ConnectOptions, handlers: ConnectionHandlers): Promise<Connection>;
}

/** The default transport: WebSocket with `ws` (Node) or a WHATWG `WebSocket` constructor. */
export class WebSocketTransport implements Transport {
  readonly #webSocket: WebSocketConstructor | undefined;

  constructor(options: { webSocket?: WebSocketConstructor | undefined } = {}) {
    this.#webSocket = options.webSocket;
  }

  async connect(url: string, options: ConnectOptions, handlers: ConnectionHandlers): Promise<Connection> {
    if (this.#webSocket !== undefined) return connectWhatwg(url, this.#webSocket, options, handlers);
    const ws = await loadWs();
    if (ws !== undefined) return connectWs(ws, url, options, handlers);
    const global = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (global !== undefined) return connectWhatwg(url, global, options, handlers);
    throw new SandboxConnectionError('no WebSocket implementation: install the "ws" package');
  }
}

/** The URL without its query (which holds the sandbox token). */
function redact(url: string): string {
  return url.split('?', 1)[0] ?? url;
}

/** The extra upgrade headers: `headers`, plus `Authorization: Bearer <apiKey>` with `apiKey`. */
export function connectionHeaders(
  headers: Readonly<Record<string, string>> | undefined,
  apiKey: string | undefined,
): Readonly<Record<string, string>> {
  if (apiKey === undefined) return { ...headers };
  if (typeof apiKey !== 'string' || apiKey === '') throw new TypeError('apiKey must be a non-empty string');
  if (Object.keys(headers ?? {}).some((name) => name.toLowerCase() === 'authorization')) {
    throw new TypeError('give either apiKey or an Authorization header, not both');
  }
  return { ...headers, Authorization: `Bearer ${apiKey}` };
}

/** What a 401 / 403 means, with the server's own words when it sent a JSON error. */
export function refusalMessage(url: string, status: number, body: string): string {
  let detail = '';
  try {
    const parsed = JSON.parse(body) as { error?: unknown };
    if (typeof parsed.error === 'string') detail = `: ${parsed.error}`;
  } catch {
    // Not JSON (Cloud Run's IAM answers with HTML): the status says enough.
  }
  const hint =
    status === 401
      ? 'pass apiKey (or an Authorization header) that the server accepts'
      : 'the credentials are valid but may not use this service (IAM: roles/run.invoker)';
  return `the server refused the connection to ${url} with HTTP ${status}${detail} (${hint})`;
}

/** 1006 is never sent in a close frame: it is how WebSocket libraries report a drop. */
function closeCode(code: number): number | null {
  return code === 1006 ? null : code;
}

const OPEN = 1;

type WsModule = typeof import('ws');
let wsModule: Promise<WsModule | undefined> | undefined;

function loadWs(): Promise<WsModule | undefined> {
  wsModule ??= import('ws').then(
    (m) => m,
    () => undefined,
  );
  return wsModule;
}

function connectWs(
  module: WsModule,
  url: string,
  options: ConnectOptions,
  handlers: ConnectionHandlers,
): Promise<Connection> {
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
    let failure: Error | undefined;
    const fail = (error: Error): void => {
      if (settled) return;
      settled = true;
      reject(error);
    };

    socket.on('unexpected-response', (_req, res) => {
      // The server answered the upgrade with plain HTTP (404 unknown path, 503 busy...): report
      // its status and the start of its body, which says why.
      const status = res.statusCode ?? 0;
      const chunks: Buffer[] = [];
      const finish = (): void => {
        const body = Buffer.concat(chunks).toString('utf8').slice(0, 500).trim();
        fail(
          status === 401 || status === 403
            ? new SandboxAuthenticationError(refusalMessage(redact(url), status, body), { httpStatus: status })
            : new SandboxConnectionError(
                `websocket upgrade to ${redact(url)} refused with HTTP ${status}${body ? `: ${body}` : ''}`,
              ),
        );
        socket.terminate();
      };
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', finish);
      res.on('error', finish);
    });
    socket.on('error', (error: Error) => {
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
          if (socket.readyState === OPEN) socket.send(text);
        },
        close: (code, reason) => socket.close(code, reason),
        abort: () => socket.terminate(),
      });
    });
    socket.on('message', (data, isBinary) => {
      // The protocol is text only; a binary frame is not ours to interpret.
      if (isBinary) return;
      const text = Array.isArray(data)
        ? Buffer.concat(data).toString('utf8')
        : data instanceof ArrayBuffer
          ? Buffer.from(data).toString('utf8')
          : data.toString('utf8');
      handlers.onMessage(text);
    });
    socket.on('close', (code, reason) => {
      if (!opened) {
        fail(
          new SandboxConnectionError(
            `connection to ${redact(url)} closed before it opened${failure ? `: ${failure.message}` : ''}`,
            { closeCode: code, cause: failure },
          ),
        );
        return;
      }
      handlers.onClose(closeCode(code), reason.toString('utf8'));
    });
  });
}

function connectWhatwg(
  url: string,
  WebSocketImpl: WebSocketConstructor,
  options: ConnectOptions,
  handlers: ConnectionHandlers,
): Promise<Connection> {
  if (Object.keys(options.headers).length > 0) {
    return Promise.reject(
      new TypeError('headers and apiKey need the "ws" package: a WHATWG WebSocket cannot send headers'),
    );
  }
  return new Promise((resolve, reject) => {
    let opened = false;
    let closed = false;
    const socket = new WebSocketImpl(url);
    const timer =
      options.connectTimeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            if (opened) return;
            reject(new SandboxTimeoutError(`timed out after ${(options.connectTimeoutMs ?? 0) / 1000}s connecting to ${redact(url)}`));
            socket.close();
          }, options.connectTimeoutMs);
    socket.addEventListener('open', () => {
      opened = true;
      clearTimeout(timer);
      resolve({
        isOpen: () => !closed && socket.readyState === OPEN,
        send: (text) => {
          if (socket.readyState === OPEN) socket.send(text);
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
    socket.addEventListener('message', (event: { data: unknown }) => {
      if (typeof event.data === 'string') handlers.onMessage(event.data);
    });
    socket.addEventListener('error', () => {
      if (!opened) {
        clearTimeout(timer);
        reject(new SandboxConnectionError(`cannot connect to ${redact(url)}`));
      }
    });
    socket.addEventListener('close', (event: { code: number; reason: string }) => {
      clearTimeout(timer);
      if (!opened) {
        reject(new SandboxConnectionError(`connection to ${redact(url)} closed before it opened`, { closeCode: event.code }));
        return;
      }
      if (closed) return;
      closed = true;
      handlers.onClose(closeCode(event.code), event.reason);
    });
  });
}
