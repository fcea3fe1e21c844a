/**
 * The Cluster controller: the thin I/O layer around {@link reconcileCluster}.
 * Informers on Clusters and on the Services of `kubesphere-system` feed a
 * work queue keyed by cluster name; one worker takes a key, computes the plan
 * from the caches, and applies it (Service first, then the Cluster, spec and
 * status together, with a status-subresource write when the CRD has one). A
 * 409 re-reads both objects from the API server and recomputes. Other
 * failures retry with per-key backoff. Nothing here throws to the caller:
 * a dead API server only delays reconciling.
 *
 * One worker on purpose: port allocation reads every other cluster's ports,
 * so reconciles must not interleave.
 * @module
 */

import { reconciles } from "../metrics.ts";
import type { KubeClient } from "../kube/client.ts";
import { jsonEqual } from "../kube/client.ts";
import { KubeApiError } from "../kube/errors.ts";
import type { Informer } from "../kube/informer.ts";
import { CLUSTERS, SERVICES } from "../kube/types.ts";
import { logger } from "../log.ts";
import type { EventRecorder } from "./events.ts";
import { WorkQueue } from "./queue.ts";
import { type PortClaim, portClaim } from "./claims.ts";
import { PortIndex } from "./port_index.ts";
import { DEFAULT_PORT_RANGE, type PortRange } from "./ports.ts";
import { type AgentState, reconcileCluster, type ReconcilePlan } from "./reconcile.ts";
import type { ReplicaView } from "./replicas.ts";
import {
  type ClusterObject,
  clusterOfService,
  serviceName,
  type ServiceObject,
  TOWER_NAMESPACE,
} from "./types.ts";

const log = logger("controller");

/** Options of a {@link ClusterController}. */
export interface ClusterControllerOptions {
  client: KubeClient;
  /** Informer on Clusters (shared with the cluster source). */
  clusters: Informer<ClusterObject>;
  /** Informer on the Services of {@link namespace}. */
  services: Informer<ServiceObject>;
  /** Namespace of the `mc-*` Services (default `kubesphere-system`). */
  namespace?: string;
  /** `--publish-service-address`. */
  publishAddress?: string;
  /** `--port-range`: kubernetes ports new pairs come from (default 6000–20080). */
  portRange?: PortRange;
  /** Ports never handed out (the proxy's own listeners: agent port, metrics port). */
  reservedPorts?: ReadonlySet<number>;
  /** The `mc-*` Services select the proxy pods (no EndpointSlices published; see reconcile). */
  selectPods?: boolean;
  /** The replicas' EndpointSlices and Leases: a cluster served by any live replica is available. */
  replicas?: ReplicaView;
  /**
   * Until this long after the controller is created, a cluster with no agent
   * on this proxy keeps its `AgentAvailable` as it is (agents of a restarted
   * proxy need a moment to reconnect). Default 30 000 ms.
   */
  agentGraceMs?: number;
  /** First retry delay of a failed reconcile (ms, default 500). */
  retryInitialMs?: number;
  /** Longest retry delay (ms, default 60 000). */
  retryMaxMs?: number;
  /** Re-reconcile every cluster this often (ms, default 300 000; 0 = never). */
  resyncMs?: number;
  /** Where Events go (none when undefined). */
  events?: EventRecorder;
  /** Clock (tests). */
  now?: () => Date;
  /** Token generator (tests). */
  newToken?: () => string;
}

/** Counters for tests and metrics. */
export interface ControllerStats {
  reconciles: number;
  failures: number;
  conflicts: number;
  clusterWrites: number;
  serviceCreates: number;
  serviceUpdates: number;
  serviceDeletes: number;
}

function isConflict(err: unknown): boolean {
  return err instanceof KubeApiError && err.status === 409;
}

class StaleCache extends Error {
  constructor() {
    super("cache may be stale; re-reading");
  }
}

/** Index key of the claim this controller wrote for `name` (NUL: no cluster name has one). */
function writtenKey(name: string): string {
  return `${name}\0written`;
}

/** Reconciles Clusters while {@link run} is active. */
export class ClusterController {
  readonly #o: ClusterControllerOptions;
  readonly #ns: string;
  readonly #queue: WorkQueue;
  readonly #agents = new Map<string, boolean>();
  readonly #endpointErrors = new Map<string, string>();
  /**
   * Every cluster's ports, from the informer (key: the name) and as written by this controller
   * while the cache may not show it yet (key: {@link writtenKey}).
   */
  readonly #ports: PortIndex;
  readonly #createdAt = Date.now();
  readonly stats: ControllerStats = {
    reconciles: 0,
    failures: 0,
    conflicts: 0,
    clusterWrites: 0,
    serviceCreates: 0,
    serviceUpdates: 0,
    serviceDeletes: 0,
  };
  #running = false;

  constructor(opts: ClusterControllerOptions) {
    this.#o = opts;
    this.#ns = opts.namespace ?? TOWER_NAMESPACE;
    this.#queue = new WorkQueue({
      retryInitialMs: opts.retryInitialMs ?? 500,
      retryMaxMs: opts.retryMaxMs ?? 60_000,
    });
    this.#queue.shutdown(); // opened by run()
    this.#ports = new PortIndex(opts.portRange ?? DEFAULT_PORT_RANGE, opts.reservedPorts);
    opts.clusters.addHandlers({
      onAdd: (c) => {
        this.#ports.set(c.metadata.name, portClaim(c));
        this.#queue.add(c.metadata.name);
      },
      onUpdate: (_old, c) => {
        const name = c.metadata.name;
        const now = portClaim(c);
        this.#ports.set(name, now);
        const written = this.#ports.get(writtenKey(name));
        if (
          written && written.kubernetesPort === now.kubernetesPort &&
          written.kubespherePort === now.kubespherePort
        ) this.#ports.delete(writtenKey(name));
        this.#queue.add(name);
      },
      onDelete: (c) => {
        this.#ports.delete(c.metadata.name);
        this.#ports.delete(writtenKey(c.metadata.name));
        this.#queue.add(c.metadata.name);
      },
    });
    const onService = (s: ServiceObject) => {
      const name = clusterOfService(s.metadata.name);
      if (name && (s.metadata.namespace ?? this.#ns) === this.#ns) this.#queue.add(name);
    };
    opts.services.addHandlers({
      onAdd: onService,
      onUpdate: (_old, s) => onService(s),
      onDelete: onService,
    });
    opts.replicas?.listen((name) => this.#queue.add(name));
  }

  /** Whether {@link run} is active (this replica reconciles). */
  get running(): boolean {
    return this.#running;
  }

  /**
   * Record whether cluster `name` has an agent on this proxy (feeds
   * `AgentAvailable`); reconciles it when running.
   */
  setAgentConnected(name: string, connected: boolean): void {
    this.#agents.set(name, connected);
    this.#queue.add(name);
  }

  /** Record why this proxy cannot serve `name`'s endpoints (undefined: it can). */
  setEndpointError(name: string, error: string | undefined): void {
    if (this.#endpointErrors.get(name) === error) return;
    if (error === undefined) this.#endpointErrors.delete(name);
    else this.#endpointErrors.set(name, error);
    this.#queue.add(name);
  }

  /** Queue a reconcile of `name` (when running). */
  enqueue(name: string): void {
    this.#queue.add(name);
  }

  /** Resolves when nothing is queued, in flight or waiting to retry. */
  whenIdle(): Promise<void> {
    return this.#queue.whenIdle();
  }

  /** Whether some live replica (this one included) publishes a ready endpoint for `name`. */
  servedByReplicas(name: string): boolean {
    return this.#o.replicas?.served(name) ?? false;
  }

  #agentState(name: string): AgentState {
    if (this.servedByReplicas(name)) return "connected";
    const known = this.#agents.get(name);
    if (known !== undefined) return known ? "connected" : "disconnected";
    return Date.now() - this.#createdAt >= (this.#o.agentGraceMs ?? 30_000)
      ? "disconnected"
      : "unknown";
  }

  #enqueueAll(): void {
    for (const c of this.#o.clusters.list()) this.#queue.add(c.metadata.name);
    for (const s of this.#o.services.list()) {
      const name = clusterOfService(s.metadata.name);
      if (name && (s.metadata.namespace ?? this.#ns) === this.#ns) this.#queue.add(name);
    }
  }

  /**
   * Reconcile until `signal` aborts (e.g. leadership lost): waits for both
   * caches, queues every cluster, then works the queue. Resolves once the
   * worker has stopped; an in-flight request is aborted.
   */
  async run(signal: AbortSignal): Promise<void> {
    if (this.#running) throw new Error("cluster controller: already running");
    if (signal.aborted) return;
    this.#running = true;
    const timers: ReturnType<typeof setTimeout>[] = [];
    const onAbort = () => this.#queue.shutdown();
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      log.info("starting cluster controller", {
        namespace: this.#ns,
        publishAddress: this.#o.publishAddress ?? "",
      });
      const synced = await this.#o.clusters.waitForSync(signal) &&
        await this.#o.services.waitForSync(signal) &&
        (await this.#o.replicas?.waitForSync(signal) ?? true);
      if (!synced || signal.aborted) return;

      this.#queue.reopen();
      this.#enqueueAll();
      const graceLeft = this.#createdAt + (this.#o.agentGraceMs ?? 30_000) - Date.now();
      if (graceLeft > 0) timers.push(setTimeout(() => this.#enqueueAll(), graceLeft));
      const resync = this.#o.resyncMs ?? 300_000;
      if (resync > 0) timers.push(setInterval(() => this.#enqueueAll(), resync));
      for (;;) {
        const key = await this.#queue.get();
        if (key === undefined || signal.aborted) {
          if (key !== undefined) this.#queue.done(key);
          break;
        }
        try {
          await this.reconcile(key, signal);
          reconciles.inc({ result: "success" });
          this.#queue.forget(key);
        } catch (err) {
          if (signal.aborted) {
            this.#queue.done(key);
            break;
          }
          this.stats.failures++;
          reconciles.inc({ result: "error" });
          const delay = this.#queue.addRateLimited(key);
          log.warn("reconcile failed, will retry", {
            cluster: key,
            err: (err as Error).message,
            retryInMs: delay,
          });
        }
        this.#queue.done(key);
      }
    } finally {
      for (const t of timers) clearTimeout(t);
      signal.removeEventListener("abort", onAbort);
      this.#queue.shutdown();
      this.#running = false;
      log.info("stopped cluster controller");
    }
  }

  /**
   * One reconcile of cluster `name`: from the caches first; on a 409 (or
   * before deleting a Service) from fresh reads. Throws on failure.
   */
  async reconcile(name: string, signal?: AbortSignal): Promise<void> {
    this.stats.reconciles++;
    const svc = serviceName(name);
    let cluster = this.#o.clusters.get(name);
    let service = this.#o.services.get(svc, this.#ns);
    let fresh = false;
    const attempts = 6;
    let lastErr: unknown;
    for (let i = 0; i < attempts; i++) {
      try {
        await this.#apply(name, cluster, service, fresh, signal);
        return;
      } catch (err) {
        if (!(err instanceof StaleCache) && !isConflict(err)) throw err;
        if (isConflict(err)) this.stats.conflicts++;
        lastErr = err;
        log.v(4, "re-reading after a conflict", { cluster: name, err: (err as Error).message });
      }
      cluster = await this.#o.client.tryGet<ClusterObject>(CLUSTERS, name, { signal });
      service = await this.#o.client.tryGet<ServiceObject>(SERVICES, svc, {
        namespace: this.#ns,
        signal,
      });
      fresh = true;
    }
    throw new Error(
      `cluster ${name}: still conflicting after ${attempts} attempts: ${
        (lastErr as Error).message
      }`,
    );
  }

  #plan(
    name: string,
    cluster: ClusterObject | undefined,
    service: ServiceObject | undefined,
  ): ReconcilePlan {
    const self: PortClaim = cluster ? portClaim(cluster) : { name };
    return reconcileCluster({
      name,
      cluster,
      service,
      ports: this.#ports.viewFor(self),
      selectPods: this.#o.selectPods,
      agent: this.#agentState(name),
      // Served through another replica: this one's trouble with its own endpoints does not count.
      endpointError: this.servedByReplicas(name) ? undefined : this.#endpointErrors.get(name),
      now: (this.#o.now ?? (() => new Date()))(),
      publishAddress: this.#o.publishAddress,
      namespace: this.#ns,
      newToken: this.#o.newToken,
    });
  }

  async #apply(
    name: string,
    cluster: ClusterObject | undefined,
    service: ServiceObject | undefined,
    fresh: boolean,
    signal?: AbortSignal,
  ): Promise<void> {
    const { client } = this.#o;
    const ns = this.#ns;
    let plan = this.#plan(name, cluster, service);
    // The Service first: the Cluster's endpoints need its ClusterIP.
    for (let i = 0; i < 3; i++) {
      if (plan.service.kind === "create") {
        service = await client.create<ServiceObject>(SERVICES, plan.service.service, {
          namespace: ns,
          signal,
        });
        this.stats.serviceCreates++;
        log.info("created Service", { cluster: name, service: `${ns}/${serviceName(name)}` });
      } else if (plan.service.kind === "update") {
        service = await client.update<ServiceObject>(SERVICES, plan.service.service, {
          namespace: ns,
          signal,
        });
        this.stats.serviceUpdates++;
        log.info("updated Service", { cluster: name, service: `${ns}/${serviceName(name)}` });
      } else break;
      plan = this.#plan(name, cluster, service);
    }
    if (plan.service.kind === "delete") {
      // Deleting on the word of a cache is risky (a Cluster created a moment
      // ago may not be in it yet): decide again from fresh reads.
      if (!fresh) throw new StaleCache();
      try {
        await client.delete(SERVICES, plan.service.name, {
          namespace: ns,
          signal,
          preconditions: service?.metadata.uid ? { uid: service.metadata.uid } : undefined,
        });
        this.stats.serviceDeletes++;
        log.info("deleted Service of a cluster Tower no longer serves", {
          cluster: name,
          service: `${ns}/${plan.service.name}`,
        });
      } catch (err) {
        if (!(err instanceof KubeApiError && err.isNotFound)) throw err;
      }
    }
    let subject = cluster;
    if (plan.cluster) {
      subject = await this.#writeCluster(plan.cluster, signal);
      this.#ports.set(writtenKey(name), portClaim(subject));
      log.info("updated Cluster", {
        cluster: name,
        events: plan.events.map((e) => e.reason).join(","),
      });
    }
    if (subject && this.#o.events) {
      for (const ev of plan.events) this.#o.events.record(subject, ev);
    }
  }

  /** PUT the Cluster; when status did not stick (status subresource), PUT `/status` too. */
  async #writeCluster(desired: ClusterObject, signal?: AbortSignal): Promise<ClusterObject> {
    const { client } = this.#o;
    const out = await client.update<ClusterObject>(CLUSTERS, desired, { signal });
    this.stats.clusterWrites++;
    if (desired.status === undefined || jsonEqual(out.status ?? {}, desired.status)) return out;
    const withStatus: ClusterObject = { ...out, status: desired.status };
    try {
      const res = await client.update<ClusterObject>(CLUSTERS, withStatus, {
        subresource: "status",
        signal,
      });
      this.stats.clusterWrites++;
      return res;
    } catch (err) {
      // No status subresource: the main update stored what the schema keeps.
      if (!(err instanceof KubeApiError && err.isNotFound)) throw err;
      log.v(2, "stored status differs from the written one (schema pruning?)", {
        cluster: desired.metadata.name,
      });
      return out;
    }
  }
}
