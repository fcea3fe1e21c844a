/**
 * Idle keep-alive upstream connections, reused most-recently-idle first.
 * Bounded in count and idle time; a connection is evicted (and destroyed)
 * as soon as its stream ends, fails or sends unsolicited bytes, when its
 * session is no longer live, or when its session is dropped.
 * @module
 */

import type { UpstreamConn } from "./conn.ts";

/** Limits of an {@link UpstreamPool}. */
export interface PoolOptions {
  /** Idle connections kept at most (default 32); the oldest is closed beyond. */
  maxIdle: number;
  /**
   * Idle connections are closed after this long (default 60 s: under the 90 s that Kubernetes
   * API servers and client-go keep idle connections, so the proxy closes first).
   */
  idleTimeoutMs: number;
}

/** Defaults of {@link PoolOptions}. */
export const DEFAULT_POOL_OPTIONS: PoolOptions = { maxIdle: 32, idleTimeoutMs: 60_000 };

interface Idle {
  conn: UpstreamConn;
  /** `performance.now()` when it became idle. */
  since: number;
}

/** A pool of idle upstream connections. */
export class UpstreamPool {
  readonly #opts: PoolOptions;
  /** Oldest first (so expiry looks at the front; reuse takes from the back). */
  #idle: Idle[] = [];
  /** One timer for the whole pool, due when the oldest entry expires. */
  #timer: ReturnType<typeof setTimeout> | undefined;

  constructor(opts: Partial<PoolOptions> = {}) {
    this.#opts = { ...DEFAULT_POOL_OPTIONS, ...opts };
  }

  /** Number of idle connections. */
  get size(): number {
    return this.#idle.length;
  }

  /**
   * Take the most recently idled usable connection, or undefined. Connections whose session is
   * not `isLive` are destroyed on the way.
   */
  take(isLive?: (key: string) => boolean): UpstreamConn | undefined {
    let found: UpstreamConn | undefined;
    while (this.#idle.length > 0) {
      const e = this.#idle.pop()!;
      this.#release(e);
      if (e.conn.dead || (isLive && !isLive(e.conn.key))) {
        e.conn.destroy();
        continue;
      }
      found = e.conn;
      break;
    }
    if (this.#idle.length === 0) this.#schedule();
    return found;
  }

  /** Keep `conn` for reuse; returns false (and destroys it) when it cannot be kept. */
  put(conn: UpstreamConn): boolean {
    if (conn.dead || this.#opts.maxIdle <= 0 || conn.wire.buffered > 0) {
      conn.destroy();
      return false;
    }
    while (this.#idle.length >= this.#opts.maxIdle) {
      const oldest = this.#idle.shift()!;
      this.#release(oldest);
      oldest.conn.destroy();
    }
    const entry: Idle = { conn, since: performance.now() };
    this.#idle.push(entry);
    this.#schedule();
    conn.wire.setSink({
      onData: () => this.#evict(entry), // unsolicited bytes: the connection is out of sync
      onEnd: () => this.#evict(entry),
      onClose: () => this.#evict(entry),
    });
    return true;
  }

  /** Destroy the idle connections riding on session `key`. */
  dropKey(key: string): void {
    for (const e of this.#idle.filter((e) => e.conn.key === key)) this.#evict(e);
  }

  /** Destroy every idle connection. */
  clear(): void {
    for (const e of this.#idle.splice(0)) {
      this.#release(e);
      e.conn.destroy();
    }
    this.#schedule();
  }

  #release(e: Idle): void {
    e.conn.wire.setSink(null);
  }

  #evict(e: Idle): void {
    const i = this.#idle.indexOf(e);
    if (i < 0) return;
    this.#idle.splice(i, 1);
    this.#release(e);
    e.conn.destroy();
    if (this.#idle.length === 0) this.#schedule();
  }

  /** Keep the timer due at the oldest entry's expiry; none while the pool is empty. */
  #schedule(): void {
    if (this.#idle.length === 0) {
      if (this.#timer !== undefined) clearTimeout(this.#timer);
      this.#timer = undefined;
      return;
    }
    if (this.#timer !== undefined) return;
    const due = this.#idle[0].since + this.#opts.idleTimeoutMs - performance.now();
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      const cutoff = performance.now() - this.#opts.idleTimeoutMs;
      while (this.#idle.length > 0 && this.#idle[0].since <= cutoff) {
        const e = this.#idle.shift()!;
        this.#release(e);
        e.conn.destroy();
      }
      this.#schedule();
    }, Math.max(0, due));
  }
}
