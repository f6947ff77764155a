/**
 * When and how often to re-attach after a dropped connection: the twin of the Python client's
 * `_reconnect.py` (same option names, defaults and formula).
 */

/**
 * Capped exponential backoff for `autoReconnect` (times in seconds). Attempt `n` (from 1) waits
 * `min(maxDelay, initialDelay * multiplier ** (n - 1))`, spread by +/- `jitter` (a fraction),
 * before re-attaching. After `maxAttempts` failed attempts every pending wait rejects with
 * `SandboxConnectionError`. The defaults retry for about a minute, long enough for a server to
 * notice that the old connection is dead (it answers `SANDBOX_IN_USE` until then).
 */
export interface ReconnectOptions {
  /** Attempts before giving up (at least 1). Default 10. */
  maxAttempts?: number | undefined;
  /** Delay before the first attempt. Default 0.25. */
  initialDelay?: number | undefined;
  /** Cap on one delay. Default 10. */
  maxDelay?: number | undefined;
  /** Growth of the delay per attempt (at least 1). Default 2. */
  multiplier?: number | undefined;
  /** Random spread of each delay, as a fraction in [0, 1). Default 0.1. */
  jitter?: number | undefined;
}

export type ReconnectPolicy = Required<{ [K in keyof ReconnectOptions]: number }>;

export const DEFAULT_RECONNECT: Readonly<ReconnectPolicy> = Object.freeze({
  maxAttempts: 10,
  initialDelay: 0.25,
  maxDelay: 10,
  multiplier: 2,
  jitter: 0.1,
});

/** The options with their defaults filled in; throws `RangeError` on a value that makes no sense. */
export function reconnectPolicy(options: ReconnectOptions = {}): ReconnectPolicy {
  const policy: ReconnectPolicy = {
    maxAttempts: options.maxAttempts ?? DEFAULT_RECONNECT.maxAttempts,
    initialDelay: options.initialDelay ?? DEFAULT_RECONNECT.initialDelay,
    maxDelay: options.maxDelay ?? DEFAULT_RECONNECT.maxDelay,
    multiplier: options.multiplier ?? DEFAULT_RECONNECT.multiplier,
    jitter: options.jitter ?? DEFAULT_RECONNECT.jitter,
  };
  if (!(policy.maxAttempts >= 1)) throw new RangeError('maxAttempts must be at least 1');
  if (!(policy.initialDelay >= 0) || !(policy.maxDelay >= 0)) throw new RangeError('delays must not be negative');
  if (!(policy.multiplier >= 1)) throw new RangeError('multiplier must be at least 1');
  if (!(policy.jitter >= 0 && policy.jitter < 1)) throw new RangeError('jitter must be in [0, 1)');
  return policy;
}

/** Seconds to wait before attempt number `attempt` (1-based); `random` is in [0, 1). */
export function reconnectDelay(policy: ReconnectPolicy, attempt: number, random: number = Math.random()): number {
  let base = Math.min(policy.maxDelay, policy.initialDelay * policy.multiplier ** (attempt - 1));
  if (policy.jitter > 0) base *= 1 + (random * 2 - 1) * policy.jitter;
  return Math.max(0, base);
}
