/**
 * A work queue of string keys in the style of client-go's: a key is queued at
 * most once, a key re-added while being processed is processed again after,
 * failures are retried with per-key exponential backoff, and `get()` waits
 * for work or shutdown.
 * @module
 */

/** Options of a {@link WorkQueue}. */
export interface WorkQueueOptions {
  /** First retry delay after a failure (ms, default 100). */
  retryInitialMs?: number;
  /** Longest retry delay (ms, default 60 000). */
  retryMaxMs?: number;
}

/** A deduplicating, rate-limited queue of keys. */
export class WorkQueue {
  readonly #initial: number;
  readonly #max: number;
  #queue: string[] = [];
  #queued = new Set<string>();
  #processing = new Set<string>();
  #dirty = new Set<string>();
  #failures = new Map<string, number>();
  #timers = new Map<string, ReturnType<typeof setTimeout>>();
  #waiters: ((key: string | undefined) => void)[] = [];
  #idleWaiters: (() => void)[] = [];
  #shutdown = false;

  constructor(opts: WorkQueueOptions = {}) {
    this.#initial = opts.retryInitialMs ?? 100;
    this.#max = opts.retryMaxMs ?? 60_000;
  }

  /** Queue `key` now (no-op when already queued; deferred when being processed). */
  add(key: string): void {
    if (this.#shutdown) return;
    if (this.#processing.has(key)) {
      this.#dirty.add(key);
      return;
    }
    if (this.#queued.has(key)) return;
    const w = this.#waiters.shift();
    if (w) {
      this.#processing.add(key);
      w(key);
      return;
    }
    this.#queued.add(key);
    this.#queue.push(key);
  }

  /** Queue `key` after `ms` (a pending delayed add of the same key is kept if sooner). */
  addAfter(key: string, ms: number): void {
    if (this.#shutdown) return;
    if (ms <= 0) return this.add(key);
    if (this.#timers.has(key)) return;
    this.#timers.set(
      key,
      setTimeout(() => {
        this.#timers.delete(key);
        this.add(key);
      }, ms),
    );
  }

  /** Queue `key` after its backoff delay, which doubles with each consecutive failure. */
  addRateLimited(key: string): number {
    const n = this.#failures.get(key) ?? 0;
    this.#failures.set(key, n + 1);
    const delay = Math.min(this.#max, this.#initial * 2 ** Math.min(n, 30));
    this.addAfter(key, delay);
    return delay;
  }

  /** Forget the failure count of `key` (after a success). */
  forget(key: string): void {
    this.#failures.delete(key);
  }

  /** Consecutive failures of `key`. */
  failures(key: string): number {
    return this.#failures.get(key) ?? 0;
  }

  /** The next key to process, or `undefined` once shut down. Call {@link done} after. */
  get(): Promise<string | undefined> {
    if (this.#shutdown) return Promise.resolve(undefined);
    const key = this.#queue.shift();
    if (key !== undefined) {
      this.#queued.delete(key);
      this.#processing.add(key);
      return Promise.resolve(key);
    }
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** Mark `key` processed; re-queue it if it was added meanwhile. */
  done(key: string): void {
    this.#processing.delete(key);
    if (this.#dirty.delete(key)) this.add(key);
    this.#checkIdle();
  }

  /** Queued (not yet taken) keys. */
  get length(): number {
    return this.#queue.length;
  }

  /** Whether nothing is queued, being processed or waiting on a retry timer. */
  isIdle(): boolean {
    return this.#queue.length === 0 && this.#processing.size === 0 && this.#timers.size === 0;
  }

  /** Resolves when {@link isIdle} (checked after each `done`). */
  whenIdle(): Promise<void> {
    if (this.isIdle()) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  #checkIdle(): void {
    if (!this.isIdle()) return;
    for (const w of this.#idleWaiters.splice(0)) w();
  }

  /** Drop everything queued and pending (e.g. on losing leadership); keys in flight finish. */
  clear(): void {
    for (const t of this.#timers.values()) clearTimeout(t);
    this.#timers.clear();
    this.#queue = [];
    this.#queued.clear();
    this.#dirty.clear();
    this.#failures.clear();
    this.#checkIdle();
  }

  /** Stop: waiting and future `get()` calls return `undefined`; timers are cleared. */
  shutdown(): void {
    this.#shutdown = true;
    this.clear();
    for (const w of this.#waiters.splice(0)) w(undefined);
    for (const w of this.#idleWaiters.splice(0)) w();
  }

  /** Restart after {@link shutdown}. */
  reopen(): void {
    this.#shutdown = false;
  }
}
