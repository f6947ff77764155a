/**
 * `sandbox.files`: read, write, list and manage the sandbox's files without an execution
 * (docs/protocol.md "Files"). Paths are absolute, or relative to `/root`.
 *
 * Transfers are chunked (1 MiB) and flow-controlled: a write sends a chunk only while the
 * server's window has room (`file_ack`), a read takes the data as it comes. A failed operation
 * rejects with `SandboxFileError`, whose `code` says why (`not_found`, ...). The same methods as
 * the Python client's `Files` (camelCase).
 */

import { SandboxTimeoutError } from './errors.js';
import { bytesToBase64 } from './internal/base64.js';
import type { FileEntry } from './results.js';

/** The largest chunk of a write (raw bytes), as the server accepts it. */
export const CHUNK_BYTES = 1024 * 1024;

/** What `write` takes: bytes, text (UTF-8), a Blob, or (async) iterables of bytes. */
export type WriteData = Uint8Array | string | Blob | AsyncIterable<Uint8Array> | Iterable<Uint8Array>;

/** What the reader tells a transfer under way. */
export class Transfer {
  written = 0;
  window: number | undefined;
  #wake: (() => void) | undefined;

  constructor(readonly sink?: (data: Uint8Array) => void) {}

  onData(data: Uint8Array): void {
    this.sink?.(data);
    this.#notify();
  }

  onAck(written: number, window: number | undefined): void {
    this.written = Math.max(this.written, written);
    if (window !== undefined) this.window = window;
    this.#notify();
  }

  /** Resolves at the next sign of progress. */
  changed(): Promise<void> {
    return new Promise((resolve) => {
      this.#wake = resolve;
    });
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }
}

/** What `Files` needs of its sandbox (its private state stays there). */
export interface FilesHost {
  /** Starts a file request: its id, and the promise of its reply frame. */
  begin(action: string, fields: Record<string, unknown>, transfer: Transfer): { id: string; answer: Promise<unknown> };
  /** Sends a later chunk of the write `id`. */
  sendChunk(id: string, data: Uint8Array, more: boolean): void;
  /** The request is over (answered, failed or given up). */
  end(id: string): void;
  requestTimeoutSeconds(): number | null;
}

function toEntry(value: unknown): FileEntry {
  const row = typeof value === 'object' && value !== null ? (value as Record<string, unknown>) : {};
  const num = (key: string): number => (typeof row[key] === 'number' ? row[key] : 0);
  const str = (key: string, fallback: string): string => (typeof row[key] === 'string' ? row[key] : fallback);
  return {
    name: str('name', ''),
    path: str('path', ''),
    type: str('type', 'other'),
    size: num('size'),
    mode: num('mode'),
    mtimeUnixMs: num('mtime_unix_ms'),
  };
}

function isBlob(data: WriteData): data is Blob {
  return typeof Blob !== 'undefined' && data instanceof Blob;
}

/** The next piece, or undefined at the end. */
async function next(pieces: AsyncGenerator<Uint8Array, void, undefined>): Promise<Uint8Array | undefined> {
  const result = await pieces.next();
  return result.done === true ? undefined : result.value;
}

/** `data` as pieces of at most `CHUNK_BYTES`. */
async function* chunks(input: WriteData): AsyncGenerator<Uint8Array, void, undefined> {
  const data = typeof input === 'string' ? new TextEncoder().encode(input) : input;
  if (isBlob(data)) {
    for (let start = 0; start < data.size; start += CHUNK_BYTES) {
      yield new Uint8Array(await data.slice(start, start + CHUNK_BYTES).arrayBuffer());
    }
    return;
  }
  if (data instanceof Uint8Array) {
    for (let start = 0; start < data.length; start += CHUNK_BYTES) yield data.subarray(start, start + CHUNK_BYTES);
    return;
  }
  const split = function* (piece: Uint8Array): Generator<Uint8Array> {
    for (let start = 0; start < piece.length; start += CHUNK_BYTES) yield piece.subarray(start, start + CHUNK_BYTES);
  };
  if (Symbol.asyncIterator in data) {
    for await (const piece of data) yield* split(piece);
    return;
  }
  for (const piece of data) yield* split(piece);
}

export class Files {
  readonly #host: FilesHost;

  /** @internal Made by `Sandbox`; use `sandbox.files`. */
  constructor(host: FilesHost) {
    this.#host = host;
  }

  /** The file's bytes. */
  async read(path: string): Promise<Uint8Array> {
    const pieces: Uint8Array[] = [];
    await this.#read(path, (data) => pieces.push(data));
    const total = pieces.reduce((sum, piece) => sum + piece.length, 0);
    const out = new Uint8Array(total);
    let offset = 0;
    for (const piece of pieces) {
      out.set(piece, offset);
      offset += piece.length;
    }
    return out;
  }

  /** The file decoded as UTF-8 text. */
  async readText(path: string): Promise<string> {
    return new TextDecoder().decode(await this.read(path));
  }

  /**
   * Creates or replaces the file (`append: true`: adds to it) with `data`; resolves to its size
   * afterwards. The file appears under its name only once complete.
   */
  async write(path: string, data: WriteData, options: { mode?: number; append?: boolean } = {}): Promise<number> {
    const pieces = chunks(data);
    const first = (await next(pieces)) ?? new Uint8Array(0);
    let following = await next(pieces);
    const transfer = new Transfer();
    const { id, answer } = this.#host.begin(
      'write_file',
      {
        path,
        mode: options.mode ?? 0o644,
        append: options.append ?? false,
        data: bytesToBase64(first),
        more: following !== undefined,
      },
      transfer,
    );
    const state = { answered: false };
    void answer.then(
      () => (state.answered = true),
      () => (state.answered = true),
    );
    try {
      let sent = first.length;
      while (following !== undefined) {
        const chunk: Uint8Array = following;
        const after = await next(pieces);
        const room = (): boolean =>
          transfer.window !== undefined && sent + chunk.length - transfer.written <= transfer.window;
        await this.#until(answer, transfer, () => state.answered || room(), `room to write ${path}`);
        if (state.answered) break;
        this.#host.sendChunk(id, chunk, after !== undefined);
        sent += chunk.length;
        following = after;
      }
      const reply = await this.#finish(answer, transfer, `the write of ${path}`);
      return typeof reply['size'] === 'number' ? reply['size'] : 0;
    } finally {
      this.#host.end(id);
    }
  }

  /** The entries under the directory (`depth` levels, 1 to 10). */
  async list(path = '/root', options: { depth?: number } = {}): Promise<FileEntry[]> {
    const reply = await this.#simple('list_files', `the listing of ${path}`, { path, depth: options.depth ?? 1 });
    const entries = reply['entries'];
    return Array.isArray(entries) ? entries.map(toEntry) : [];
  }

  /** What the path is (a symbolic link is described, not followed). */
  async stat(path: string): Promise<FileEntry> {
    return toEntry((await this.#simple('stat_file', `the stat of ${path}`, { path }))['entry']);
  }

  async exists(path: string): Promise<boolean> {
    return (await this.#simple('exists', `whether ${path} exists`, { path }))['exists'] === true;
  }

  /** Removes a file, or a directory (`recursive: true` for one that is not empty). */
  async remove(path: string, options: { recursive?: boolean } = {}): Promise<void> {
    await this.#simple('remove_file', `the removal of ${path}`, { path, recursive: options.recursive ?? false });
  }

  /** Makes the directory (and its parents, unless `parents: false`). */
  async makeDir(path: string, options: { parents?: boolean } = {}): Promise<void> {
    await this.#simple('make_dir', `the directory ${path}`, { path, parents: options.parents ?? true });
  }

  async rename(source: string, destination: string): Promise<void> {
    await this.#simple('rename_file', `the rename of ${source}`, { from: source, to: destination });
  }

  /** Copies a local file into the sandbox (streamed, Node.js); resolves to its size. */
  async upload(local: string, remote: string, options: { mode?: number } = {}): Promise<number> {
    const fs = await import('node:fs');
    const stream = fs.createReadStream(local, { highWaterMark: CHUNK_BYTES });
    try {
      return await this.write(remote, stream as AsyncIterable<Uint8Array>, options);
    } finally {
      stream.destroy();
    }
  }

  /** Copies a file of the sandbox to a local file (streamed, Node.js); resolves to its size. */
  async download(remote: string, local: string): Promise<number> {
    const fs = await import('node:fs');
    const handle = await fs.promises.open(local, 'w');
    let size = 0;
    let writing = Promise.resolve();
    try {
      await this.#read(remote, (data) => {
        size += data.length;
        const copy = data.slice();
        writing = writing.then(async () => {
          await handle.write(copy);
        });
      });
      await writing;
    } finally {
      await handle.close();
    }
    return size;
  }

  // ---- internals ---------------------------------------------------------------------------

  async #read(path: string, sink: (data: Uint8Array) => void): Promise<void> {
    const transfer = new Transfer(sink);
    const { id, answer } = this.#host.begin('read_file', { path }, transfer);
    try {
      await this.#finish(answer, transfer, `the read of ${path}`);
    } finally {
      this.#host.end(id);
    }
  }

  async #simple(action: string, what: string, fields: Record<string, unknown>): Promise<Record<string, unknown>> {
    const transfer = new Transfer();
    const { id, answer } = this.#host.begin(action, fields, transfer);
    try {
      return await this.#finish(answer, transfer, what);
    } finally {
      this.#host.end(id);
    }
  }

  /** Waits until `condition()` or the answer; the timeout counts from the last progress. */
  async #until(answer: Promise<unknown>, transfer: Transfer, condition: () => boolean, what: string): Promise<void> {
    const seconds = this.#host.requestTimeoutSeconds();
    const state = { settled: false };
    const done = answer.then(
      () => (state.settled = true),
      () => (state.settled = true),
    );
    while (!state.settled && !condition()) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<'timeout'>((resolve) => {
        if (seconds !== null) timer = setTimeout(() => resolve('timeout'), seconds * 1000);
      });
      try {
        const outcome = await Promise.race([done, transfer.changed(), timeout]);
        if (outcome === 'timeout') {
          throw new SandboxTimeoutError(`no progress from the server within ${seconds}s waiting for ${what}`);
        }
      } finally {
        clearTimeout(timer);
      }
    }
  }

  async #finish(answer: Promise<unknown>, transfer: Transfer, what: string): Promise<Record<string, unknown>> {
    await this.#until(answer, transfer, () => false, what);
    const value = await answer; // rejects with the SandboxFileError (or other SandboxError)
    return typeof value === 'object' && value !== null ? (value as Record<string, unknown>) : {};
  }
}
