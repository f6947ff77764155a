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
const tokens = new Map();
const live = new Map();
export function rememberToken(sandboxId, token) {
    tokens.set(sandboxId, token);
}
export function recallToken(sandboxId) {
    return tokens.get(sandboxId);
}
export function forgetToken(sandboxId) {
    tokens.delete(sandboxId);
}
export function setLive(sandboxId, session) {
    live.set(sandboxId, session);
}
export function liveSession(sandboxId) {
    return sandboxId === undefined ? undefined : live.get(sandboxId);
}
export function forgetLive(sandboxId, session) {
    if (sandboxId !== undefined && live.get(sandboxId) === session)
        live.delete(sandboxId);
}
//# sourceMappingURL=registry.js.map