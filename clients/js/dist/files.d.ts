/**
 * `sandbox.files`: read, write, list and manage the sandbox's files without an execution
 * (docs/protocol.md "Files"). Paths are absolute, or relative to `/root`.
 *
 * Transfers are chunked (1 MiB) and flow-controlled: a write sends a chunk only while the
 * server's window has room (`file_ack`), a read takes the data as it comes. A failed operation
 * rejects with `SandboxFileError`, whose `code` says why (`not_found`, ...). The same methods as
 * the Python client's `Files` (camelCase).
 */
import type { FileEntry } from './results.js';
/** The largest chunk of a write (raw bytes), as the server accepts it. */
export declare const CHUNK_BYTES: number;
/** What `write` takes: bytes, text (UTF-8), a Blob, or (async) iterables of bytes. */
export type WriteData = Uint8Array | string | Blob | AsyncIterable<Uint8Array> | Iterable<Uint8Array>;
/** What the reader tells a transfer under way. */
export declare class Transfer {
    #private;
    readonly sink?: ((data: Uint8Array) => void) | undefined;
    written: number;
    window: number | undefined;
    constructor(sink?: ((data: Uint8Array) => void) | undefined);
    onData(data: Uint8Array): void;
    onAck(written: number, window: number | undefined): void;
    /** Resolves at the next sign of progress. */
    changed(): Promise<void>;
}
/** What `Files` needs of its sandbox (its private state stays there). */
export interface FilesHost {
    /** Starts a file request: its id, and the promise of its reply frame. */
    begin(action: string, fields: Record<string, unknown>, transfer: Transfer): {
        id: string;
        answer: Promise<unknown>;
    };
    /** Sends a later chunk of the write `id`. */
    sendChunk(id: string, data: Uint8Array, more: boolean): void;
    /** The request is over (answered, failed or given up). */
    end(id: string): void;
    requestTimeoutSeconds(): number | null;
}
export declare class Files {
    #private;
    /** @internal Made by `Sandbox`; use `sandbox.files`. */
    constructor(host: FilesHost);
    /** The file's bytes. */
    read(path: string): Promise<Uint8Array>;
    /** The file decoded as UTF-8 text. */
    readText(path: string): Promise<string>;
    /**
     * Creates or replaces the file (`append: true`: adds to it) with `data`; resolves to its size
     * afterwards. The file appears under its name only once complete.
     */
    write(path: string, data: WriteData, options?: {
        mode?: number;
        append?: boolean;
    }): Promise<number>;
    /** The entries under the directory (`depth` levels, 1 to 10). */
    list(path?: string, options?: {
        depth?: number;
    }): Promise<FileEntry[]>;
    /** What the path is (a symbolic link is described, not followed). */
    stat(path: string): Promise<FileEntry>;
    exists(path: string): Promise<boolean>;
    /** Removes a file, or a directory (`recursive: true` for one that is not empty). */
    remove(path: string, options?: {
        recursive?: boolean;
    }): Promise<void>;
    /** Makes the directory (and its parents, unless `parents: false`). */
    makeDir(path: string, options?: {
        parents?: boolean;
    }): Promise<void>;
    rename(source: string, destination: string): Promise<void>;
    /** Copies a local file into the sandbox (streamed, Node.js); resolves to its size. */
    upload(local: string, remote: string, options?: {
        mode?: number;
    }): Promise<number>;
    /** Copies a file of the sandbox to a local file (streamed, Node.js); resolves to its size. */
    download(remote: string, local: string): Promise<number>;
}
//# sourceMappingURL=files.d.ts.map