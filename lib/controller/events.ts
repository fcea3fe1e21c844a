/**
 * Kubernetes Events (core/v1) about Cluster objects, best effort: a failed
 * write is logged and dropped, and the same reason+message for the same
 * Cluster is not repeated within a window (so a Warning produced by every
 * reconcile does not flood the API). Cluster is cluster-scoped, so, like
 * client-go's recorder, Events go to the `default` namespace.
 * @module
 */

import type { KubeClient } from "../kube/client.ts";
import { EVENTS } from "../kube/types.ts";
import { logger } from "../log.ts";
import type { ClusterEvent } from "./reconcile.ts";
import { CLUSTER_API_VERSION, type ClusterObject } from "./types.ts";

const log = logger("controller/events");

/** Options of an {@link EventRecorder}. */
export interface EventRecorderOptions {
  client: KubeClient;
  /** Namespace of the Events (default `default`). */
  namespace?: string;
  /** `source.component` / `reportingComponent` (default `tower`). */
  component?: string;
  /** `reportingInstance` (e.g. the leader-election identity). */
  instance?: string;
  /** Identical events for one Cluster are suppressed for this long (ms, default 10 min). */
  dedupeMs?: number;
  /** Clock (tests). */
  now?: () => Date;
}

/** Writes Events about Clusters. */
export class EventRecorder {
  readonly #o: EventRecorderOptions;
  readonly #recent = new Map<string, number>();
  #inflight = new Set<Promise<void>>();

  constructor(opts: EventRecorderOptions) {
    this.#o = opts;
  }

  /** Record `ev` about `cluster` in the background. */
  record(cluster: ClusterObject, ev: ClusterEvent): void {
    const now = (this.#o.now ?? (() => new Date()))();
    const key = `${cluster.metadata.name}\0${ev.type}\0${ev.reason}\0${ev.message}`;
    const last = this.#recent.get(key);
    if (last !== undefined && now.getTime() - last < (this.#o.dedupeMs ?? 600_000)) return;
    this.#recent.set(key, now.getTime());
    if (this.#recent.size > 10_000) this.#recent.clear();
    const p = this.#write(cluster, ev, now).finally(() => this.#inflight.delete(p));
    this.#inflight.add(p);
  }

  async #write(cluster: ClusterObject, ev: ClusterEvent, now: Date): Promise<void> {
    const ts = now.toISOString().replace(/\.\d{3}Z$/, "Z");
    const name = cluster.metadata.name;
    const suffix = Array.from(
      crypto.getRandomValues(new Uint8Array(8)),
      (b) => b.toString(16).padStart(2, "0"),
    ).join("");
    const component = this.#o.component ?? "tower";
    const body = {
      metadata: { name: `${name}.${suffix}`, namespace: this.#o.namespace ?? "default" },
      involvedObject: {
        apiVersion: cluster.apiVersion ?? CLUSTER_API_VERSION,
        kind: "Cluster",
        name,
        uid: cluster.metadata.uid,
        resourceVersion: cluster.metadata.resourceVersion,
      },
      type: ev.type,
      reason: ev.reason,
      message: ev.message,
      source: { component },
      reportingComponent: component,
      reportingInstance: this.#o.instance ?? "",
      firstTimestamp: ts,
      lastTimestamp: ts,
      count: 1,
    };
    try {
      await this.#o.client.create(EVENTS, body);
      log.v(2, "event recorded", { cluster: name, reason: ev.reason });
    } catch (err) {
      log.warn("cannot record event", {
        cluster: name,
        reason: ev.reason,
        err: (err as Error).message,
      });
    }
  }

  /** Wait for the writes in flight. */
  async flush(): Promise<void> {
    while (this.#inflight.size > 0) await Promise.all([...this.#inflight]);
  }
}
