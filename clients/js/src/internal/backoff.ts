/**
 * Delays for re-attach attempts: exponential, capped, with a bounded number of attempts, so a
 * dead server is never hammered in a tight loop.
 */

export interface BackoffPolicy {
  /** Attempts before giving up (at least 1). */
  maxAttempts: number;
  /** Delay before the first attempt, in seconds (> 0). */
  initialDelay: number;
  /** Cap on any single delay, in seconds. */
  maxDelay: number;
}

export const DEFAULT_BACKOFF: Readonly<BackoffPolicy> = Object.freeze({
  maxAttempts: 10,
  initialDelay: 0.25,
  maxDelay: 10,
});

/**
 * Delay in seconds before attempt `attempt` (1-based): `initialDelay * 2^(attempt-1)`, capped at
 * `maxDelay`, then scaled by `jitter` in [0.5, 1] so many clients dropped together spread out.
 */
export function backoffDelay(policy: BackoffPolicy, attempt: number, jitter = 1): number {
  const base = Math.min(policy.maxDelay, policy.initialDelay * 2 ** Math.max(0, attempt - 1));
  const factor = Math.min(1, Math.max(0.5, jitter));
  return base * factor;
}

/** Fills defaults and clamps values so that no policy can produce a tight loop. */
export function normalizeBackoff(partial: Partial<BackoffPolicy> | undefined): BackoffPolicy {
  const p = { ...DEFAULT_BACKOFF, ...stripUndefined(partial ?? {}) };
  return {
    maxAttempts: Math.max(1, Math.floor(p.maxAttempts)),
    initialDelay: Math.max(0.05, p.initialDelay),
    maxDelay: Math.max(Math.max(0.05, p.initialDelay), p.maxDelay),
  };
}

function stripUndefined<T extends object>(obj: T): Partial<T> {
  return Object.fromEntries(Object.entries(obj).filter(([, v]) => v !== undefined)) as Partial<T>;
}
