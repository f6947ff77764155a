/**
 * An in-process scripted server behind a fake WHATWG WebSocket, for testing `Sandbox` without a
 * network (it goes through the `webSocket` option, i.e. the transport's WHATWG path). Events are
 * delivered asynchronously, like a real socket.
 */
import type { WebSocketConstructor, WebSocketLike } from '../../src/index.js';

type Listener = (event: unknown) => void;

export class FakeSocket implements WebSocketLike {
  readyState = 0;
  binaryType = 'blob';
  readonly url: string;
  readonly sent: Record<string, unknown>[] = [];
  readonly #listeners = new Map<string, Listener[]>();
  readonly #server: FakeServer;

  constructor(url: string, server: FakeServer) {
    this.url = url;
    this.#server = server;
    setImmediate(() => server.accept(this));
  }

  addEventListener(type: string, listener: (event: never) => void): void {
    const list = this.#listeners.get(type) ?? [];
    list.push(listener as Listener);
    this.#listeners.set(type, list);
  }

  send(data: string): void {
    if (this.readyState !== 1) return;
    const message = JSON.parse(data) as Record<string, unknown>;
    // A protocol-1 server ignores request ids; tests/flows checks them.
    delete message['id'];
    this.sent.push(message);
    setImmediate(() => this.#server.message(this, message));
  }

  /** Client-side close: the server answers with the same code. */
  close(code = 1000, reason = ''): void {
    if (this.readyState >= 2) return;
    this.readyState = 2;
    setImmediate(() => this.serverClose(code, reason));
  }

  // ---- server side ----

  open(): void {
    this.readyState = 1;
    this.#emit('open', {});
  }

  push(frame: Record<string, unknown>): void {
    if (this.readyState !== 1) return;
    this.#emit('message', { data: JSON.stringify(frame) });
  }

  status(status: string, extra: Record<string, unknown> = {}): void {
    this.push({ event: 'status_update', status, ...extra });
  }

  error(status: string, message: string): void {
    this.status(status, { message });
    this.push({ event: 'error', message });
  }

  serverClose(code: number, reason = ''): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.#emit('close', { code, reason });
  }

  /** The connection vanishes (no close frame): the client sees 1006. */
  drop(): void {
    this.serverClose(1006, '');
  }

  /** The server refuses the upgrade. */
  refuse(): void {
    this.readyState = 3;
    this.#emit('error', {});
    this.#emit('close', { code: 1006, reason: '' });
  }

  #emit(type: string, event: unknown): void {
    for (const listener of this.#listeners.get(type) ?? []) listener(event);
  }
}

export interface Script {
  /** A socket connected (`socket.url` tells /create or /attach); default: accept as below. */
  connect?(socket: FakeSocket, server: FakeServer): void;
  /** A message arrived from the client after setup. */
  message?(socket: FakeSocket, message: Record<string, unknown>, server: FakeServer): void;
}

export class FakeServer {
  readonly sockets: FakeSocket[] = [];
  readonly WebSocket: WebSocketConstructor;
  script: Script;
  /** Id and token of the first sandbox created; later ones get `-2`, `-3`... appended. */
  sandboxId = 'fake-sandbox-1';
  token = 'fake-token-1';
  #creates = 0;

  constructor(script: Script = {}) {
    this.script = script;
    // eslint-disable-next-line @typescript-eslint/no-this-alias -- the constructor below needs the server
    const server = this;
    this.WebSocket = class extends FakeSocket {
      constructor(url: string) {
        super(url, server);
      }
    };
  }

  get last(): FakeSocket {
    const socket = this.sockets[this.sockets.length - 1];
    if (socket === undefined) throw new Error('no socket yet');
    return socket;
  }

  accept(socket: FakeSocket): void {
    this.sockets.push(socket);
    if (this.script.connect !== undefined) {
      this.script.connect(socket, this);
      return;
    }
    socket.open();
    if (new URL(socket.url).pathname.startsWith('/attach/')) socket.status('SANDBOX_RUNNING');
  }

  message(socket: FakeSocket, message: Record<string, unknown>): void {
    if (new URL(socket.url).pathname === '/create' && socket.sent.length === 1) {
      socket.status('SANDBOX_CREATING');
      const n = ++this.#creates;
      const suffix = n === 1 ? '' : `-${n}`;
      socket.push({ event: 'sandbox_id', sandbox_id: this.sandboxId + suffix, sandbox_token: this.token + suffix });
      socket.status('SANDBOX_RUNNING');
      return;
    }
    if (message['action'] === 'kill_sandbox') {
      for (const s of ['SANDBOX_KILLING', 'SANDBOX_DELETING', 'SANDBOX_DELETED', 'SANDBOX_KILLED']) socket.status(s);
      socket.serverClose(1000);
      return;
    }
    this.script.message?.(socket, message, this);
  }
}

export function tick(ms = 0): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
