/**
 * A scripted in-memory `Transport`: the test plays the server's side frame by frame (the twin of
 * the Python suite's `scripted.py`). Every connection the client opens is queued in
 * `connections`; every frame it sends in `sent`. Events reach the client asynchronously, like a
 * real socket's.
 */
import type { Connection, ConnectionHandlers, ConnectOptions, Transport } from '../../src/index.js';

/** An async queue: `next()` waits for the next item, at most `ms`. */
export class Queue<T> {
  readonly #items: T[] = [];
  readonly #waiters: ((item: T) => void)[] = [];

  push(item: T): void {
    const waiter = this.#waiters.shift();
    if (waiter !== undefined) waiter(item);
    else this.#items.push(item);
  }

  get size(): number {
    return this.#items.length;
  }

  peek(): T | undefined {
    return this.#items[0];
  }

  next(ms: number): Promise<T | undefined> {
    const item = this.#items.shift();
    if (item !== undefined) return Promise.resolve(item);
    return new Promise((resolve) => {
      const waiter = (value: T): void => {
        clearTimeout(timer);
        resolve(value);
      };
      const timer = setTimeout(() => {
        const index = this.#waiters.indexOf(waiter);
        if (index >= 0) this.#waiters.splice(index, 1);
        resolve(undefined);
      }, ms);
      this.#waiters.push(waiter);
    });
  }
}

export class ScriptedConnection implements Connection {
  readonly url: string;
  readonly headers: Readonly<Record<string, string>>;
  closedBy: 'server' | 'client' | 'drop' | undefined;
  readonly #handlers: ConnectionHandlers;
  readonly #transport: ScriptedTransport;

  constructor(url: string, headers: Readonly<Record<string, string>>, handlers: ConnectionHandlers, transport: ScriptedTransport) {
    this.url = url;
    this.headers = headers;
    this.#handlers = handlers;
    this.#transport = transport;
  }

  get path(): string {
    const parsed = new URL(this.url);
    return parsed.pathname + parsed.search;
  }

  // ---- the client's side

  isOpen(): boolean {
    return this.closedBy === undefined;
  }

  send(text: string): void {
    if (this.closedBy === undefined) this.#transport.sent.push([this, text]);
  }

  close(code = 1000, reason = 'client close'): void {
    if (this.closedBy !== undefined) return;
    this.closedBy = 'client';
    setImmediate(() => this.#handlers.onClose(code, reason));
  }

  abort(): void {
    if (this.closedBy !== undefined) return;
    this.closedBy = 'client';
    setImmediate(() => this.#handlers.onClose(null, 'aborted'));
  }

  // ---- the server's side

  push(text: string): void {
    if (this.closedBy === undefined) setImmediate(() => this.#handlers.onMessage(text));
  }

  closeByServer(code: number, reason = ''): void {
    if (this.closedBy !== undefined) return;
    this.closedBy = 'server';
    setImmediate(() => this.#handlers.onClose(code, reason));
  }

  drop(): void {
    if (this.closedBy !== undefined) return;
    this.closedBy = 'drop';
    setImmediate(() => this.#handlers.onClose(null, ''));
  }
}

export class ScriptedTransport implements Transport {
  readonly connections = new Queue<ScriptedConnection>();
  readonly sent = new Queue<[ScriptedConnection, string]>();
  readonly opened: ScriptedConnection[] = [];

  connect(url: string, options: ConnectOptions, handlers: ConnectionHandlers): Promise<Connection> {
    const connection = new ScriptedConnection(url, options.headers, handlers, this);
    this.opened.push(connection);
    this.connections.push(connection);
    return Promise.resolve(connection);
  }
}
