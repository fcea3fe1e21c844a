/**
 * The deployment's replicas as the API shows them: every Tower-managed
 * EndpointSlice (which replica serves which cluster) and every replica Lease
 * (`tower-replica-<pod>`, renewed about every second). From these the leader
 * knows whether a cluster is served anywhere (`AgentAvailable`), and every
 * replica reaps the slices of a replica whose Lease stopped moving: a replica
 * killed with SIGKILL, or cut off from the API server, must not keep
 * kube-proxy sending its clusters' traffic to a dead address until its Pod is
 * deleted (reaping is idempotent, so several reapers race harmlessly, and it
 * does not wait for a dead leader's successor).
 *
 * A Lease counts as expired when its record has not changed for its duration,
 * measured on the local clock from when this process saw it change (as leader
 * election does: clock skew does not matter, and a process that just started
 * waits a whole duration before it calls anyone dead). Before deleting
 * anything the reaper reads the Lease again: a stalled watch must never
 * take a healthy replica's slices away.
 * @module
 */

import type { KubeClient } from "../kube/client.ts";
import { errorText } from "../kube/client.ts";
import { KubeApiError } from "../kube/errors.ts";
import type { Informer } from "../kube/informer.ts";
import type { Lease } from "../kube/leader.ts";
import { sleep } from "../backoff.ts";
import { ENDPOINT_SLICES, LEASES } from "../kube/types.ts";
import { Slots } from "../slots.ts";
import { logger } from "../log.ts";
import {
  clusterOfSlice,
  type EndpointSliceObject,
  REPLICA_LABEL,
  replicaOfSlice,
  sliceReady,
} from "./slices.ts";

const log = logger("controller/replicas");

/** Prefix of a replica's Lease name; the rest is its pod name. */
const REPLICA_LEASE_PREFIX = "tower-replica-";
/** Label selector of every replica Lease (they carry {@link REPLICA_LABEL}). */
export const REPLICA_LEASES_SELECTOR = REPLICA_LABEL;
/** Default replica Lease duration (ms). */
const DEFAULT_REPLICA_LEASE_MS = 2_000;

/** Name of `replica`'s Lease. */
export function replicaLeaseName(replica: string): string {
  return `${REPLICA_LEASE_PREFIX}${replica}`;
}

/** Options of a {@link ReplicaView}. */
export interface ReplicaViewOptions {
  client: KubeClient;
  namespace: string;
  /** Every Tower-managed slice of the namespace. */
  slices: Informer<EndpointSliceObject>;
  /** Every replica Lease of the namespace. */
  leases: Informer<Lease>;
  /** This process's replica name (always live to itself), if it is one. */
  self?: string;
  /** Duration assumed for a replica seen without a Lease (ms, default 2 000). */
  defaultLeaseMs?: number;
  /** Local clock (ms; tests). */
  now?: () => number;
  /** Deletes of a dead replica's slices at a time (default 16). */
  reapConcurrency?: number;
  /**
   * Whether this process may judge others dead now: false while its own Lease renewals are not
   * getting through in time. A slow API server delays every replica's renewals alike; judged by
   * the Leases alone, the replicas then reap each other's slices and kube-proxy routes no cluster
   * (seen once in the 10,000-cluster bench). Default: always.
   */
  mayJudge?: () => boolean;
}

interface Seen {
  /** The Lease record last seen (holder, renew time), or "" for a replica seen only by its slices. */
  record: string;
  /** Local time it was first seen like that. */
  at: number;
  durationMs: number;
  /** The Lease's resourceVersion (a precondition for deleting it). */
  resourceVersion?: string;
}

/** Which replicas serve which clusters, and which replicas are alive. */
export class ReplicaView {
  readonly #o: ReplicaViewOptions;
  readonly #now: () => number;
  /** Cluster → slice key → [replica, ready]. */
  readonly #byCluster = new Map<string, Map<string, [string, boolean]>>();
  /** Replica → keys (`namespace/name`) of its slices. */
  readonly #byReplica = new Map<string, Set<string>>();
  readonly #seen = new Map<string, Seen>();
  readonly #expired = new Set<string>();
  #listeners: ((cluster: string) => void)[] = [];

  constructor(opts: ReplicaViewOptions) {
    this.#o = opts;
    this.#now = opts.now ?? (() => performance.now());
    opts.slices.addHandlers({
      onAdd: (s) => this.#slice(s, true),
      onUpdate: (old, s) => {
        if (
          clusterOfSlice(old) !== clusterOfSlice(s) || replicaOfSlice(old) !== replicaOfSlice(s)
        ) {
          this.#slice(old, false);
        }
        this.#slice(s, true);
      },
      onDelete: (s) => this.#slice(s, false),
    });
    opts.leases.addHandlers({
      onAdd: (l) => this.#lease(l),
      onUpdate: (_o, l) => this.#lease(l),
      onDelete: (l) => {
        const r = this.#replicaOfLease(l);
        if (r) {
          this.#seen.delete(r);
          this.#notifyReplica(r);
        }
      },
    });
  }

  /** Be told when whether `cluster` is served may have changed. */
  listen(fn: (cluster: string) => void): () => void {
    this.#listeners.push(fn);
    return () => {
      this.#listeners = this.#listeners.filter((l) => l !== fn);
    };
  }

  /** Resolves once both informers have listed (false when stopped or aborted first). */
  async waitForSync(signal?: AbortSignal): Promise<boolean> {
    return await this.#o.slices.waitForSync(signal) && await this.#o.leases.waitForSync(signal);
  }

  /** Whether `replica` is alive: this process, or a Lease (or slices) that moved within its duration. */
  isLive(replica: string): boolean {
    if (replica === this.#o.self) return true;
    const s = this.#seen.get(replica);
    if (!s) return false;
    // While this process cannot judge (its own heartbeat lags), a replica it has seen stays live:
    // AgentAvailable, kubeconfigs and handovers must not act on Leases that look stale only
    // because the API server is slow for everyone.
    return this.#now() - s.at <= s.durationMs || !this.#judging();
  }

  #judging(): boolean {
    return this.#o.mayJudge?.() ?? true;
  }

  /** Whether a live replica publishes a ready endpoint for `cluster`. */
  served(cluster: string, opts: { except?: string } = {}): boolean {
    for (const [replica, ready] of this.#byCluster.get(cluster)?.values() ?? []) {
      if (ready && replica !== opts.except && this.isLive(replica)) return true;
    }
    return false;
  }

  /** Replicas publishing a slice for `cluster` (live or not). */
  replicasOf(cluster: string): string[] {
    return [...new Set([...this.#byCluster.get(cluster)?.values() ?? []].map(([r]) => r))];
  }

  /** Replicas known (by Lease or slice). */
  replicas(): string[] {
    return [...new Set([...this.#seen.keys(), ...this.#byReplica.keys()])];
  }

  #replicaOfLease(l: Lease): string | undefined {
    const name = l.metadata.name ?? "";
    return name.startsWith(REPLICA_LEASE_PREFIX)
      ? (l.metadata.labels?.[REPLICA_LABEL] || name.slice(REPLICA_LEASE_PREFIX.length))
      : undefined;
  }

  #lease(l: Lease): void {
    const r = this.#replicaOfLease(l);
    if (!r) return;
    const record = JSON.stringify([l.spec?.holderIdentity ?? "", l.spec?.renewTime ?? ""]);
    const durationMs = (l.spec?.leaseDurationSeconds ?? 0) * 1000 ||
      (this.#o.defaultLeaseMs ?? DEFAULT_REPLICA_LEASE_MS);
    const prev = this.#seen.get(r);
    const wasLive = this.isLive(r);
    if (!prev || prev.record !== record) {
      this.#seen.set(r, {
        record,
        at: this.#now(),
        durationMs,
        resourceVersion: l.metadata.resourceVersion,
      });
      this.#expired.delete(r);
    } else prev.resourceVersion = l.metadata.resourceVersion;
    if (!wasLive) this.#notifyReplica(r);
  }

  #slice(s: EndpointSliceObject, present: boolean): void {
    const cluster = clusterOfSlice(s);
    const replica = replicaOfSlice(s);
    if (!cluster || !replica) return;
    const key = `${s.metadata.namespace}/${s.metadata.name}`;
    if (present) {
      let m = this.#byCluster.get(cluster);
      if (!m) this.#byCluster.set(cluster, m = new Map());
      m.set(key, [replica, sliceReady(s)]);
      let k = this.#byReplica.get(replica);
      if (!k) this.#byReplica.set(replica, k = new Set());
      k.add(key);
      // A replica seen only by its slices gets a Lease's duration to show its Lease.
      if (!this.#seen.has(replica)) {
        this.#seen.set(replica, {
          record: "",
          at: this.#now(),
          durationMs: this.#o.defaultLeaseMs ?? DEFAULT_REPLICA_LEASE_MS,
        });
      }
    } else {
      const m = this.#byCluster.get(cluster);
      m?.delete(key);
      if (m?.size === 0) this.#byCluster.delete(cluster);
      const k = this.#byReplica.get(replica);
      k?.delete(key);
      if (k?.size === 0) this.#byReplica.delete(replica);
    }
    this.#notify(cluster);
  }

  #notify(cluster: string): void {
    for (const l of this.#listeners) {
      try {
        l(cluster);
      } catch (err) {
        log.error("replica view listener failed", { cluster, err: (err as Error).message });
      }
    }
  }

  #notifyReplica(replica: string): void {
    const clusters = new Set<string>();
    for (const key of this.#byReplica.get(replica) ?? []) {
      const [ns, name] = key.split("/");
      const s = this.#o.slices.get(name, ns);
      const c = s && clusterOfSlice(s);
      if (c) clusters.add(c);
    }
    for (const c of clusters) this.#notify(c);
  }

  /**
   * Until `signal` aborts: every `periodMs`, reap the replicas whose
   * Lease expired — after a fresh read confirms it — deleting their slices and their Lease; not
   * while `mayJudge` says this replica's own renewals lag.
   */
  async reap(signal: AbortSignal, periodMs = 500): Promise<void> {
    if (!await this.waitForSync(signal)) return;
    let stalled = false;
    while (!signal.aborted) {
      const judging = this.#judging();
      if (!judging && !stalled) {
        log.warn("not reaping other replicas while this replica's own Lease renewals lag");
      } else if (judging && stalled) log.info("reaping other replicas again");
      stalled = !judging;
      for (const r of judging ? this.replicas() : []) {
        if (signal.aborted) break;
        if (this.isLive(r)) continue;
        if (!this.#expired.has(r)) {
          this.#expired.add(r);
          this.#notifyReplica(r); // AgentAvailable may turn False at once
        }
        try {
          await this.#reapOne(r, signal);
        } catch (err) {
          if (signal.aborted) break;
          log.warn("cannot remove a dead replica's EndpointSlices yet", {
            replica: r,
            err: errorText(err),
          });
        }
      }
      await sleep(periodMs, signal);
    }
  }

  async #reapOne(replica: string, signal: AbortSignal): Promise<void> {
    const { client, namespace } = this.#o;
    const leaseName = replicaLeaseName(replica);
    const fresh = await client.tryGet<Lease>(LEASES, leaseName, { namespace, signal });
    if (fresh) {
      // The watch may lag: a Lease that moved since is alive after all.
      this.#lease(fresh);
      if (this.isLive(replica)) return;
    }
    const keys = [...this.#byReplica.get(replica) ?? []];
    // Several deletes at a time: one after the other, a replica with 931 clusters took 38 s to
    // reap on a loaded API server (each request waiting its turn), while kube-proxy kept sending
    // those clusters' connections to the dead address.
    const slots = new Slots(this.#o.reapConcurrency ?? 16);
    const results = await Promise.allSettled(keys.map((key) =>
      slots.run(async () => {
        // A reap of a thousand slices takes seconds: stop when this process can no longer judge,
        // or the replica shows a live Lease after all.
        if (this.isLive(replica)) return;
        const [ns, name] = key.split("/");
        const s = this.#o.slices.get(name, ns);
        try {
          await client.delete(ENDPOINT_SLICES, name, {
            namespace: ns,
            signal,
            preconditions: s?.metadata.uid ? { uid: s.metadata.uid } : undefined,
          });
        } catch (err) {
          if (!(err instanceof KubeApiError && (err.isNotFound || err.isConflict))) throw err;
        }
      })
    ));
    const failed = results.find((r) => r.status === "rejected");
    if (failed) throw (failed as PromiseRejectedResult).reason;
    if (this.isLive(replica)) return; // stopped on the way (see above): its Lease stays
    if (fresh) {
      try {
        await client.delete(LEASES, leaseName, {
          namespace,
          signal,
          preconditions: { resourceVersion: fresh.metadata.resourceVersion },
        });
      } catch (err) {
        if (!(err instanceof KubeApiError && (err.isNotFound || err.isConflict))) throw err;
      }
    }
    this.#seen.delete(replica);
    this.#expired.delete(replica);
    if (keys.length > 0 || fresh) {
      log.info("Removed a dead replica's EndpointSlices", {
        replica,
        slices: keys.length,
        lease: fresh ? leaseName : "none",
      });
    }
  }
}
