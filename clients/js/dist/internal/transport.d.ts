/**
 * The only module that touches the network, behind a small public interface.
 *
 * A `Transport` opens `Connection`s; a connection moves text frames and reports its end once
 * through `onClose`. `WebSocketTransport` (the default) does it with the `ws` package in Node, or
 * with any WHATWG-compatible `WebSocket` constructor given to it (e.g. `globalThis.WebSocket`).
 * Pass another transport to `Sandbox.create(url, { transport })`: tests use a scripted in-memory
 * one, and a transport is where a proxy or a different WebSocket library would plug in.
 */
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
export declare class WebSocketTransport implements Transport {
    #private;
    constructor(options?: {
        webSocket?: WebSocketConstructor | undefined;
    });
    connect(url: string, options: ConnectOptions, handlers: ConnectionHandlers): Promise<Connection>;
}
/** The extra upgrade headers: `headers`, plus `Authorization: Bearer <apiKey>` with `apiKey`. */
export declare function connectionHeaders(headers: Readonly<Record<string, string>> | undefined, apiKey: string | undefined): Readonly<Record<string, string>>;
/** What a 401 / 403 means, with the server's own words when it sent a JSON error. */
export declare function refusalMessage(url: string, status: number, body: string): string;
//# sourceMappingURL=transport.d.ts.map