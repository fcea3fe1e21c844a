/**
 * Live agent sessions by cluster. Several agents of one cluster may be
 * connected at once (HA); streams are spread over them round-robin and a
 * closing session is never picked. Tells listeners when a cluster gains its
 * first session or loses its last.
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
  /** Open a tunnelled TCP stream to `host:port` on the agent's side. */
  openStream(target: string, opts?: { reclaim?: () => boolean }): Promise<Duplex>;
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

/** Sessions by cluster name. */
export class SessionRegistry {
  #byCluster = new Map<string, AgentSession[]>();
  #next = new Map<string, number>();
  #listeners: RegistryListener[] = [];

  /** Register for up/down events. */
  listen(l: RegistryListener): () => void {
    this.#listeners.push(l);
    return () => {
      this.#listeners = this.#listeners.filter((x) => x !== l);
    };
  }

  /** Add a live session. */
  add(session: AgentSession): void {
    const list = this.#byCluster.get(session.cluster) ?? [];
    list.push(session);
    this.#byCluster.set(session.cluster, list);
    for (const l of this.#listeners) {
      if (list.length === 1) l.clusterUp?.(session.cluster, session);
      l.changed?.(session.cluster, list.length);
    }
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

  /** Next live session of `cluster`, round-robin; undefined when none. */
  pick(cluster: string): AgentSession | undefined {
    const list = this.#byCluster.get(cluster);
    if (!list || list.length === 0) return undefined;
    const start = this.#next.get(cluster) ?? 0;
    for (let k = 0; k < list.length; k++) {
      const s = list[(start + k) % list.length];
      if (s.alive) {
        this.#next.set(cluster, (start + k + 1) % list.length);
        return s;
      }
    }
    return undefined;
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
