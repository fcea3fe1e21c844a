/**
 * A concurrency limit for async work: at most `n` calls of {@link Slots.run} at a time, the
 * rest waiting in arrival order.
 * @module
 */

/** At most `n` tasks at once; later ones wait their turn (FIFO). */
export class Slots {
  #free: number;
  readonly #waiting: (() => void)[] = [];

  constructor(n: number) {
    if (!Number.isInteger(n) || n < 1) throw new Error(`slots: need a positive count, got ${n}`);
    this.#free = n;
  }

  /** Tasks waiting for a slot (for tests and metrics). */
  get waiting(): number {
    return this.#waiting.length;
  }

  /** Run `fn` once a slot is free; resolves or rejects as `fn` does. */
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#free > 0) this.#free--;
    else await new Promise<void>((resolve) => this.#waiting.push(resolve));
    try {
      return await fn();
    } finally {
      // Hand the slot straight to the next task, or give it back.
      const next = this.#waiting.shift();
      if (next) next();
      else this.#free++;
    }
  }
}
