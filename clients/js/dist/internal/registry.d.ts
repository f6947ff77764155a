/**
 * What this process knows about sandboxes across `Sandbox` objects (module-level on purpose: it
 * is the process's memory; never persisted). The twin of the Python client's `_registry.py`.
 *
 * - Tokens: `Sandbox.create` records the token the server issued, so that
 *   `Sandbox.attach(url, sandboxId)` works without it in the same process (as the original
 *   clients allow). Across processes the caller passes the token.
 * - Live sessions: the one connected `Sandbox` of each sandbox id, so that a handle whose own
 *   session ended (checkpointed, disconnected) forwards calls to it: after
 *   `s2 = await Sandbox.attach(url, s1.sandboxId)`, `s1.snapshotFilesystem()` and
 *   `s1.terminate()` go through `s2`.
 */
export declare function rememberToken(sandboxId: string, token: string): void;
export declare function recallToken(sandboxId: string): string | undefined;
export declare function forgetToken(sandboxId: string): void;
export declare function setLive(sandboxId: string, session: unknown): void;
export declare function liveSession(sandboxId: string | undefined): unknown;
export declare function forgetLive(sandboxId: string | undefined, session: unknown): void;
//# sourceMappingURL=registry.d.ts.map