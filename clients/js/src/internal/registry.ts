/**
 * Sandbox tokens this process has been given, by sandbox id, so that `Sandbox.attach(url, id)`
 * works without a token in the process that created the sandbox. Module-level on purpose: it is
 * the process's memory, shared by every Sandbox object. Never persisted.
 */
const tokens = new Map<string, string>();

export function rememberToken(sandboxId: string, token: string): void {
  tokens.set(sandboxId, token);
}

export function recallToken(sandboxId: string): string | undefined {
  return tokens.get(sandboxId);
}

export function forgetToken(sandboxId: string): void {
  tokens.delete(sandboxId);
}
