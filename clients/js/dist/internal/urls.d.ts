/** Endpoint URLs from the user's base URL (`ws://`, `wss://`, `http://` or `https://`). */
export declare function createUrl(url: string): string;
export declare function attachUrl(url: string, sandboxId: string, token: string): string;
//# sourceMappingURL=urls.d.ts.map