/**
 * Exponential backoff with jitter, and an abortable sleep, for retry loops: the agent's
 * reconnects (factor 1.4, as the original tower and chisel use) and the Kubernetes client's
 * retries, watches and writes (factor 2). Jitter spreads retries that start together (agents
 * after a proxy restart, writers after a conflict) instead of letting them arrive as a herd.
 * Never used for test synchronisation.
 * @module
 */

/** Backoff parameters. */
export interface BackoffOptions {
  /** First delay (ms). */
  initialMs: number;
  /** Largest delay (ms); it caps the first delay too. */
  maxMs: number;
  /** Growth factor per attempt (default 2). */
  factor?: number;
  /**
   * Fraction of each delay that is random, 0..1 (default 0.5): a delay `d` becomes a value in
   * `[d·(1 - jitter), d]`, so the default gives `[d/2, d]`; 0 gives exactly `d`.
   */
  jitter?: number;
  /** Random source in [0, 1) (default `Math.random`; tests inject one). */
  random?: () => number;
}

/** Delay (whole ms) before retry number `attempt` (0-based), jittered, capped at `maxMs`. */
export function backoffDelay(attempt: number, opts: BackoffOptions): number {
  const factor = opts.factor ?? 2;
  const jitter = Math.min(1, Math.max(0, opts.jitter ?? 0.5));
  const random = opts.random ?? Math.random;
  const base = Math.min(opts.maxMs, opts.initialMs * Math.pow(factor, Math.max(0, attempt)));
  return Math.max(0, Math.round(base * (1 - jitter) + base * jitter * random()));
}

/** Stateful backoff: `next()` grows the delay, `reset()` starts over. */
export class Backoff {
  #attempt = 0;
  constructor(readonly opts: BackoffOptions) {}
  /** The delay before the next attempt (ms); advances the sequence. */
  next(): number {
    return backoffDelay(this.#attempt++, this.opts);
  }
  /** Start over from the initial delay (after a success). */
  reset(): void {
    this.#attempt = 0;
  }
  /** Delays handed out since the last reset. */
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
