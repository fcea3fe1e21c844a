/**
 * Exponential backoff with jitter for the agent's reconnect loop (factor 1.4,
 * as chisel/tower use), so that agents reconnecting after a proxy restart are
 * spread out instead of arriving as a herd.
 * @module
 */

/** Options for {@link Backoff}. */
export interface BackoffOptions {
  /** First delay (default 100 ms). */
  minMs?: number;
  /** Largest delay (default 2 min, `--max-retry-interval`). */
  maxMs?: number;
  /** Growth per attempt (default 1.4). */
  factor?: number;
  /** Randomise delays (default true). */
  jitter?: boolean;
  /** Random source in [0, 1) (tests inject one). */
  random?: () => number;
}

/** Delay sequence: min·factor^n capped at max, jittered into [d/2, d]. */
export class Backoff {
  #attempt = 0;
  readonly #min: number;
  readonly #max: number;
  readonly #factor: number;
  readonly #jitter: boolean;
  readonly #random: () => number;

  constructor(opts: BackoffOptions = {}) {
    this.#min = opts.minMs ?? 100;
    this.#max = Math.max(opts.maxMs ?? 120_000, this.#min);
    this.#factor = opts.factor ?? 1.4;
    this.#jitter = opts.jitter ?? true;
    this.#random = opts.random ?? Math.random;
  }

  /** Attempts made since the last reset. */
  get attempt(): number {
    return this.#attempt;
  }

  /** The delay before the next attempt; advances the sequence. */
  next(): number {
    const d = Math.min(this.#max, this.#min * Math.pow(this.#factor, this.#attempt));
    this.#attempt++;
    if (!this.#jitter) return d;
    return d / 2 + this.#random() * (d / 2);
  }

  /** Back to the first delay (after a successful connection). */
  reset(): void {
    this.#attempt = 0;
  }
}
