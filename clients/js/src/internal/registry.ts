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

const tokens = new Map<string, string>();
const live = new Map<string, unknown>();

export function rememberToken(sandboxId: string, token: string): void {
  tokens.set(sandboxId, token);
}

export function recallToken(sandboxId: string): string | undefined {
  return tokens.get(sandboxId);
}

export function forgetToken(sandboxId: string): void {
  tokens.delete(sandboxId);
}

export function setLive(sandboxId: string, session: unknown): void {
  live.set(sandboxId, session);
}

export function liveSession(sandboxId: string | undefined): unknown {
  return sandboxId === undefined ? undefined : live.get(sandboxId);
}

export function forgetLive(sandboxId: string | undefined, session: unknown): void {
  if (sandboxId !== undefined && live.get(sandboxId) === session) live.delete(sandboxId);
}
