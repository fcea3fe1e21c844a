/**
 * Exponential backoff with full jitter, and an abortable sleep for retry
 * loops (never used for test synchronisation).
 * @module
 */

/** Backoff parameters. */
export interface BackoffOptions {
  /** First delay (ms). */
  initialMs: number;
  /** Upper bound (ms). */
  maxMs: number;
  /** Growth factor per attempt (default 2). */
  factor?: number;
  /** Fraction of the delay that is randomised, 0..1 (default 0.5). */
  jitter?: number;
}

/** Delay before retry number `attempt` (0-based), jittered, capped at `maxMs`. */
export function backoffDelay(
  attempt: number,
  opts: BackoffOptions,
  random: () => number = Math.random,
): number {
  const factor = opts.factor ?? 2;
  const jitter = Math.min(1, Math.max(0, opts.jitter ?? 0.5));
  const base = Math.min(opts.maxMs, opts.initialMs * Math.pow(factor, Math.max(0, attempt)));
  return Math.max(0, Math.round(base * (1 - jitter) + base * jitter * random()));
}

/** Stateful backoff: `next()` grows the delay, `reset()` starts over. */
export class Backoff {
  #attempt = 0;
  constructor(readonly opts: BackoffOptions) {}
  /** The next delay (ms). */
  next(): number {
    return backoffDelay(this.#attempt++, this.opts);
  }
  /** Start over from the initial delay. */
  reset(): void {
    this.#attempt = 0;
  }
  /** Attempts since the last reset. */
  get attempts(): number {
    return this.#attempt;
  }
}

/** Resolve after `ms`, or early (without throwing) when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted || ms <= 0) return Promise.resolve();
  return new Promise((resolve) => {
    const onAbort = () => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
