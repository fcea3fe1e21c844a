/**
 * Live agent sessions by cluster. Several agents of one cluster may be
 * connected at once (HA), up to `maxPerCluster`: one more closes the
 * cluster's oldest session whose channel opens have been failing, or else
 * its oldest. Streams are spread over the sessions round-robin; a closing
 * session is never picked, and one whose agent refused or never answered a
 * channel open in the last {@link FAILURE_MEMORY_MS} comes only after those
 * that did not. Tells listeners when a cluster gains its first session or
 * loses its last.
 * @module
 */

import type { Duplex } from "node:stream";
import type { AgentConfig } from "../tunnel/handshake.ts";

/** One authenticated agent connection, as the registry sees it. */
export interface AgentSession {
  /** Unique per session (used to key pooled upstream streams). */
  readonly id: string;
  readonly cluster: string;
  /** The token this session authenticated with. */
  readonly token: string;
  readonly config: AgentConfig;
  readonly remoteAddress: string;
  /** Whether the session still takes new streams. */
  readonly alive: boolean;
  /** Number of open channels. */
  readonly channels: number;
  /**
   * Open a tunnelled TCP stream to `host:port` on the agent's side; rejects with
   * `StreamLimitError` at the session's channel limit.
   */
  openStream(target: string): Promise<Duplex>;
  /** Close the session (idempotent); `reason` is logged. */
  close(reason: string): void;
}

/** Registry events. */
export interface RegistryListener {
  /** `session` is the cluster's first live session. */
  clusterUp?(cluster: string, session: AgentSession): void;
  /** The cluster's last session ended. */
  clusterDown?(cluster: string): void;
  /** Any session added or removed (for metrics). */
  changed?(cluster: string, sessions: number): void;
  /** A session was removed. */
  removed?(session: AgentSession): void;
}

/** Options of {@link SessionRegistry}. */
export interface RegistryOptions {
  /** Most sessions per cluster (default 16). */
  maxPerCluster?: number;
}

/** How long a failed channel open puts its session behind the others. */
const FAILURE_MEMORY_MS = 30_000;

/** Channel opens that failed on a session, lately. */
interface Health {
  /** Failures in a row (a success clears them). */
  failures: number;
  /** `performance.now()` of the last. */
  at: number;
}

/** Sessions by cluster name. */
export class SessionRegistry {
  readonly maxPerCluster: number;
  #byCluster = new Map<string, AgentSession[]>();
  #next = new Map<string, number>();
  #health = new WeakMap<AgentSession, Health>();
  #listeners: RegistryListener[] = [];

  constructor(opts: RegistryOptions = {}) {
    this.maxPerCluster = opts.maxPerCluster ?? 16;
  }

  /** Register for up/down events. */
  listen(l: RegistryListener): () => void {
    this.#listeners.push(l);
    return () => {
      this.#listeners = this.#listeners.filter((x) => x !== l);
    };
  }

  /**
   * Add a live session. Past `maxPerCluster` the cluster's oldest failing session, or else its
   * oldest, is closed: a reconnecting agent replaces its own stale session, and a token holder
   * opening sessions cannot keep the cluster's agents out for good (each one that comes back
   * gets in, and those refusing channels go first).
   */
  add(session: AgentSession): void {
    const list = this.#byCluster.get(session.cluster) ?? [];
    list.push(session);
    this.#byCluster.set(session.cluster, list);
    for (const l of this.#listeners) {
      if (list.length === 1) l.clusterUp?.(session.cluster, session);
      l.changed?.(session.cluster, list.length);
    }
    while (list.length > this.maxPerCluster) {
      const now = performance.now();
      const victim = list.find((s) => s !== session && this.#failing(s, now)) ?? list[0];
      victim.close(`more than ${this.maxPerCluster} sessions for the cluster: closing the oldest`);
      this.remove(victim);
    }
  }

  /**
   * The outcome of opening a stream on `session`: the agent accepted it (`ok`), or refused it
   * or never answered.
   */
  reportOpen(session: AgentSession, ok: boolean): void {
    if (ok) {
      this.#health.delete(session);
      return;
    }
    const h = this.#health.get(session);
    if (h) {
      h.failures++;
      h.at = performance.now();
    } else this.#health.set(session, { failures: 1, at: performance.now() });
  }

  /** Failures in a row of `session`'s recent channel opens (0: none lately). */
  #failing(session: AgentSession, now: number): number {
    const h = this.#health.get(session);
    return h && now - h.at < FAILURE_MEMORY_MS ? h.failures : 0;
  }

  /** Remove a session (idempotent). */
  remove(session: AgentSession): void {
    const list = this.#byCluster.get(session.cluster);
    if (!list) return;
    const i = list.indexOf(session);
    if (i < 0) return;
    list.splice(i, 1);
    if (list.length === 0) this.#byCluster.delete(session.cluster);
    for (const l of this.#listeners) {
      l.removed?.(session);
      l.changed?.(session.cluster, list.length);
      if (list.length === 0) l.clusterDown?.(session.cluster);
    }
  }

  /** Live sessions of a cluster. */
  sessions(cluster: string): readonly AgentSession[] {
    return this.#byCluster.get(cluster) ?? [];
  }

  /** All clusters with at least one session. */
  clusters(): string[] {
    return [...this.#byCluster.keys()];
  }

  /** Total number of sessions. */
  get size(): number {
    let n = 0;
    for (const l of this.#byCluster.values()) n += l.length;
    return n;
  }

  /**
   * Next live session of `cluster` whose id is not in `skip`: round-robin over those without
   * recent channel-open failures, else the one with the fewest; undefined when none.
   */
  pick(cluster: string, skip?: ReadonlySet<string>): AgentSession | undefined {
    const list = this.#byCluster.get(cluster);
    if (!list || list.length === 0) return undefined;
    const start = this.#next.get(cluster) ?? 0;
    const now = performance.now();
    let fallback: AgentSession | undefined;
    let fallbackFailures = Infinity;
    for (let k = 0; k < list.length; k++) {
      const i = (start + k) % list.length;
      const s = list[i];
      if (!s.alive || skip?.has(s.id)) continue;
      const failures = this.#failing(s, now);
      if (failures === 0) {
        this.#next.set(cluster, (i + 1) % list.length);
        return s;
      }
      if (failures < fallbackFailures) {
        fallback = s;
        fallbackFailures = failures;
      }
    }
    return fallback;
  }

  /** Close every session of `cluster` (or only those for which `filter` is true). */
  closeCluster(cluster: string, reason: string, filter?: (s: AgentSession) => boolean): number {
    const list = [...(this.#byCluster.get(cluster) ?? [])];
    let n = 0;
    for (const s of list) {
      if (!filter || filter(s)) {
        s.close(reason);
        n++;
      }
    }
    return n;
  }

  /** Close every session. */
  closeAll(reason: string): void {
    for (const c of [...this.#byCluster.keys()]) this.closeCluster(c, reason);
  }
}
