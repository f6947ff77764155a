/**
 * The only module that touches a socket. It opens one WebSocket, hands each text frame to
 * `onMessage`, reports the close exactly once through `onClose`, and sends text.
 *
 * Implementation: the `ws` package by default (Node), or any WHATWG-compatible `WebSocket`
 * constructor the caller passes (e.g. `globalThis.WebSocket`); when `ws` cannot be loaded the
 * global `WebSocket` is used where one exists.
 */

import { SandboxAuthenticationError, SandboxConnectionError } from '../errors.js';

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

export interface TransportOptions {
  /** Use this WebSocket implementation instead of `ws`. */
  webSocket?: WebSocketConstructor | undefined;
  /** Extra HTTP headers for the upgrade request (e.g. `Authorization`); `ws` only: with a WHATWG
   * WebSocket, which cannot send headers, connecting fails with a TypeError. */
  headers?: Readonly<Record<string, string>> | undefined;
  /** Give up opening the socket after this many milliseconds. */
  connectTimeoutMs: number;
}

export interface TransportHandlers {
  onMessage(text: string): void;
  onClose(code: number, reason: string): void;
}

export interface Transport {
  /** True while frames can be sent (false once closing or closed). */
  isOpen(): boolean;
  send(text: string): void;
  /** Closing handshake; `onClose` follows. */
  close(code?: number, reason?: string): void;
  /** Drops the connection at once, without a closing handshake (`onClose` gets 1006). */
  terminate(): void;
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

/** Opens a WebSocket to `url`; resolves once it is open. */
export async function connect(
  url: string,
  options: TransportOptions,
  handlers: TransportHandlers,
): Promise<Transport> {
  if (options.webSocket !== undefined) {
    return connectWhatwg(url, options.webSocket, options, handlers);
  }
  const ws = await loadWs();
  if (ws !== undefined) return connectWs(ws, url, options, handlers);
  const global = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (global !== undefined) return connectWhatwg(url, global, options, handlers);
  throw new SandboxConnectionError('no WebSocket implementation: install the "ws" package');
}

function connectWs(
  module: WsModule,
  url: string,
  options: TransportOptions,
  handlers: TransportHandlers,
): Promise<Transport> {
  const WebSocketImpl = module.WebSocket;
  return new Promise((resolve, reject) => {
    let opened = false;
    let settled = false;
    const socket = new WebSocketImpl(url, {
      headers: options.headers === undefined ? {} : { ...options.headers },
      handshakeTimeout: options.connectTimeoutMs,
      // The server refuses frames over 4 MiB by default; accept large server frames anyway.
      maxPayload: 256 * 1024 * 1024,
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
            ? new SandboxAuthenticationError(refusalMessage(url, status, body), { httpStatus: status })
            : new SandboxConnectionError(
                `websocket upgrade to ${url} refused with HTTP ${status}${body ? `: ${body}` : ''}`,
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
        fail(new SandboxConnectionError(`cannot connect to ${url}: ${error.message}`, { cause: error }));
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
        terminate: () => socket.terminate(),
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
            `connection to ${url} closed before it opened${failure ? `: ${failure.message}` : ''}`,
            { closeCode: code, cause: failure },
          ),
        );
        return;
      }
      handlers.onClose(code, reason.toString('utf8'));
    });
  });
}

function connectWhatwg(
  url: string,
  WebSocketImpl: WebSocketConstructor,
  options: TransportOptions,
  handlers: TransportHandlers,
): Promise<Transport> {
  if (options.headers !== undefined && Object.keys(options.headers).length > 0) {
    return Promise.reject(
      new TypeError('headers and apiKey need the "ws" package: a WHATWG WebSocket cannot send headers'),
    );
  }
  return new Promise((resolve, reject) => {
    let opened = false;
    let closed = false;
    const socket = new WebSocketImpl(url);
    const timer = setTimeout(() => {
      if (opened) return;
      reject(new SandboxConnectionError(`cannot connect to ${url}: timed out`));
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
        terminate: () => {
          socket.close();
          if (!closed) {
            closed = true;
            handlers.onClose(1006, 'terminated');
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
        reject(new SandboxConnectionError(`cannot connect to ${url}`));
      }
    });
    socket.addEventListener('close', (event: { code: number; reason: string }) => {
      clearTimeout(timer);
      if (!opened) {
        reject(new SandboxConnectionError(`connection to ${url} closed before it opened`, { closeCode: event.code }));
        return;
      }
      if (closed) return;
      closed = true;
      handlers.onClose(event.code, event.reason);
    });
  });
}

/** What a 401 / 403 means, with the server's own words when it sent a JSON error. */
function refusalMessage(url: string, status: number, body: string): string {
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
  // The query holds the sandbox token: keep it out of messages.
  const where = url.split('?', 1)[0] ?? url;
  return `the server refused the connection to ${where} with HTTP ${status}${detail} (${hint})`;
}
