/**
 * Fault switches for tests: fail the next N requests with a status, delay
 * responses, hold a request until the test lets it go, drop every open watch
 * stream.
 * @module
 */

import { ApiError } from "./types.ts";

/** Which requests a fault applies to. */
export type RequestMatch = (method: string, path: string) => boolean;

const REASONS: Record<number, string> = {
  409: "Conflict",
  429: "TooManyRequests",
  500: "InternalError",
  503: "ServiceUnavailable",
  504: "Timeout",
};

interface Hold {
  match?: RequestMatch;
  arrived: PromiseWithResolvers<void>;
  released: PromiseWithResolvers<void>;
}

/** A held request: {@link Faults.hold}. */
export interface HeldRequest {
  /** Resolves once the request has reached the server (it is in flight, unanswered). */
  arrived: Promise<void>;
  /** Let it go on (idempotent). */
  release(): void;
}

interface Failure {
  remaining: number;
  status: number;
  match?: RequestMatch;
}

/** The switches; `check` is called by the server for every request. */
export class Faults {
  #failures: Failure[] = [];
  #delayMs = 0;
  #holds: Hold[] = [];
  #dropHandlers = new Set<() => void>();
  /** How many requests have been failed so far. */
  failed = 0;

  /**
   * Fail the next `n` requests (those matching `match`, default all) with
   * `status` (500, 429 with `Retry-After: 1`, 409, …) and a `Status` body.
   */
  failNext(n: number, status = 500, match?: RequestMatch): void {
    this.#failures.push({ remaining: n, status, match });
  }

  /** Delay every response by `ms` (0 turns it off). */
  delay(ms: number): void {
    this.#delayMs = ms;
  }

  /**
   * Hold the next request matching `match` (default: any) at the server, unanswered, until
   * `release()`: a test then knows the request is in flight for as long as it needs.
   */
  hold(match?: RequestMatch): HeldRequest {
    const h: Hold = {
      match,
      arrived: Promise.withResolvers<void>(),
      released: Promise.withResolvers<void>(),
    };
    this.#holds.push(h);
    return { arrived: h.arrived.promise, release: () => h.released.resolve() };
  }

  /** End every open watch stream now (clients see the stream close). */
  dropWatches(): void {
    for (const fn of [...this.#dropHandlers]) fn();
  }

  /** Forget all pending failures and the delay; let held requests go. */
  reset(): void {
    this.#failures = [];
    this.#delayMs = 0;
    for (const h of this.#holds.splice(0)) h.released.resolve();
  }

  /** Register a watch stream's closer; returns the unregister function. */
  onDrop(fn: () => void): () => void {
    this.#dropHandlers.add(fn);
    return () => this.#dropHandlers.delete(fn);
  }

  /** Number of watch streams currently open. */
  get openWatches(): number {
    return this.#dropHandlers.size;
  }

  /** Apply the switches to a request: waits for the delay, throws an injected failure. */
  async check(method: string, path: string): Promise<void> {
    const held = this.#holds.findIndex((h) => !h.match || h.match(method, path));
    if (held >= 0) {
      const [h] = this.#holds.splice(held, 1);
      h.arrived.resolve();
      await h.released.promise;
    }
    if (this.#delayMs > 0) await new Promise((r) => setTimeout(r, this.#delayMs));
    const f = this.#failures.find((x) => x.remaining > 0 && (!x.match || x.match(method, path)));
    if (!f) return;
    f.remaining--;
    this.#failures = this.#failures.filter((x) => x.remaining > 0);
    this.failed++;
    const reason = REASONS[f.status] ?? "InternalError";
    throw new ApiError(
      f.status,
      reason,
      `injected fault: ${f.status} ${reason} for ${method} ${path}`,
      f.status === 429 ? { retryAfterSeconds: 1 } : undefined,
    );
  }
}
