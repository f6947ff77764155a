/**
 * The JSON messages of docs/protocol.md: encoders for what the client sends, and the parser for
 * what the server sends. Nothing here does I/O or keeps state.
 *
 * Keys are snake_case because they are the wire format. Every request carries the `id` the
 * protocol core chose (a server that does not know request ids ignores the key).
 */
export type StreamName = 'stdout' | 'stderr';
export type OutputEncoding = 'text' | 'base64';
/** The init object's keys (the original's five, plus ours when used). */
export interface InitFrame {
    idle_timeout: number | null;
    enable_checkpoint: boolean;
    enable_idle_timeout_auto_checkpoint: boolean;
    enable_sandbox_handoff: boolean;
    filesystem_snapshot_name: string | null;
    enable_network?: boolean;
    labels?: Readonly<Record<string, string>> | undefined;
    expose_ports?: readonly number[] | undefined;
}
/** The init object, the first message on `/create`: always the original's five keys. */
export declare function initMessage(init: InitFrame): string;
/** A TCP port number (1 to 65535), or a `RangeError` naming the value. */
export declare function checkPort(port: number): number;
export interface ExecRequest {
    code: string;
    language: string;
    env?: Readonly<Record<string, string>> | undefined;
    cwd?: string | undefined;
    timeout?: number | undefined;
    outputEncoding?: OutputEncoding | undefined;
    /** A terminal of this size (protocol 2). */
    pty?: {
        cols: number;
        rows: number;
    } | undefined;
}
export declare function execMessage(requestId: string, req: ExecRequest): string;
/**
 * `{"event": "stdin"}`: `data` as text when `asText` (it is valid UTF-8), else base64;
 * `processId` only when known (protocol 2).
 */
export declare function stdinMessage(requestId: string, processId: number | undefined, data: Uint8Array | undefined, asText: boolean, eof?: boolean): string;
export declare function actionMessage(action: string, requestId: string, extra?: Record<string, unknown>): string;
/** A frame from the server after JSON parsing; every key is optional until checked. */
export type ServerFrame = Record<string, unknown>;
/** One server frame as a JSON object; `undefined` for anything else (ignored). */
export declare function parseFrame(text: string): ServerFrame | undefined;
export declare function optInt(value: unknown): number | undefined;
export declare function optNumber(value: unknown): number | undefined;
export declare function optStr(value: unknown): string | undefined;
//# sourceMappingURL=frames.d.ts.map