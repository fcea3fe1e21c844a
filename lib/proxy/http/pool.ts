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
  /** Idle connections kept at most (default 256, per endpoint); the oldest is closed beyond. */
  maxIdle: number;
  /**
   * Idle connections are closed after this long (default 60 s: under the 90 s that Kubernetes
   * API servers and client-go keep idle connections, so the proxy closes first).
   */
  idleTimeoutMs: number;
}

/** Defaults of {@link PoolOptions}. */
const DEFAULT_POOL_OPTIONS: PoolOptions = { maxIdle: 256, idleTimeoutMs: 60_000 };

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
  /** Session of the connection taken last. */
  #lastKey: string | undefined;
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
   * Take a usable idle connection, or undefined: the most recently idled one of a session other
   * than the previous take's when there is one (so reuse alternates over the cluster's sessions),
   * else the most recently idled one. Connections that are dead or whose session is not `isLive`
   * are destroyed on the way.
   */
  take(isLive?: (key: string) => boolean): UpstreamConn | undefined {
    let found: UpstreamConn | undefined;
    for (let i = this.#idle.length - 1; i >= 0; i--) {
      const e = this.#idle[i];
      if (e.conn.dead || (isLive && !isLive(e.conn.key))) {
        this.#idle.splice(i, 1);
        this.#release(e);
        e.conn.destroy();
        continue;
      }
      if (found === undefined || (e.conn.key !== this.#lastKey && found.key === this.#lastKey)) {
        found = e.conn;
        if (found.key !== this.#lastKey) break;
      }
    }
    if (found !== undefined) {
      const i = this.#idle.findIndex((e) => e.conn === found);
      this.#release(this.#idle[i]);
      this.#idle.splice(i, 1);
      this.#lastKey = found.key;
    }
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

  /** Destroy the connection idle longest among those riding on session `key`; false if none. */
  dropOldest(key: string): boolean {
    const e = this.#idle.find((e) => e.conn.key === key);
    if (e === undefined) return false;
    this.#evict(e);
    return true;
  }

  /** Destroy every idle connection and stop the expiry timer (also when done with the pool). */
  clear(): void {
    for (const e of this.#idle.splice(0)) {
      this.#release(e);
      e.conn.destroy();
    }
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
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
  }

  /**
   * Keep a timer due no later than the oldest entry's expiry. A pool that empties keeps its
   * timer (it fires, finds nothing and stops): one request at a time empties and refills the
   * pool with every request, and re-arming each time cost ~3% of the proxy's CPU.
   */
  #schedule(): void {
    if (this.#timer !== undefined || this.#idle.length === 0) return;
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
