/**
 * Kubernetes Events (core/v1) about Cluster objects, best effort: a failed
 * write is logged and dropped, and an Event identical to the previous one
 * for the same Cluster is not repeated within a window (so a Warning
 * produced by every reconcile does not flood the API, while transitions
 * such as connected → disconnected → connected are all recorded). Cluster is cluster-scoped, so, like
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
  /** A repeat of a Cluster's previous event is suppressed for this long (ms, default 10 min). */
  dedupeMs?: number;
  /** Clock (tests). */
  now?: () => Date;
}

/** Writes Events about Clusters. */
export class EventRecorder {
  readonly #o: EventRecorderOptions;
  /** Per cluster: the previous event's key and when it was recorded. */
  readonly #last = new Map<string, { key: string; at: number }>();
  #inflight = new Set<Promise<void>>();

  constructor(opts: EventRecorderOptions) {
    this.#o = opts;
  }

  /** Record `ev` about `cluster` in the background. */
  record(cluster: ClusterObject, ev: ClusterEvent): void {
    const now = (this.#o.now ?? (() => new Date()))();
    const name = cluster.metadata.name;
    const key = `${ev.type}\0${ev.reason}\0${ev.message}`;
    const last = this.#last.get(name);
    if (last?.key === key && now.getTime() - last.at < (this.#o.dedupeMs ?? 600_000)) return;
    this.#last.set(name, { key, at: now.getTime() });
    if (this.#last.size > 100_000) this.#last.clear();
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
