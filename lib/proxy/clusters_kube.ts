/**
 * Kubernetes mode: clusters come from `cluster.kubesphere.io/v1alpha1`
 * Cluster objects in the host cluster. One informer keeps a cache that
 * answers `lookup`/`list` with no I/O (a standby replica serves tunnels from
 * it too); the Cluster controller (`lib/controller/`) runs beside it, gated
 * by the Lease when `--leader-elect` is on, and learns from
 * `agentConnected`/`agentDisconnected` whether to report `AgentAvailable`.
 * Kubeconfigs are written into `spec.connection.kubeconfig` (base64 bytes).
 *
 * With a replica identity (`POD_NAME`/`POD_IP`), it also watches every
 * Tower-managed EndpointSlice and replica Lease (`ReplicaView`: a cluster
 * served by any live replica is available; every replica reaps dead
 * replicas' slices), heartbeats this replica's Lease and publishes its slices.
 * @module
 */

import { Buffer } from "node:buffer";
import type { KubeClient } from "../kube/client.ts";
import { Informer, type InformerOptions } from "../kube/informer.ts";
import { CLUSTERS, SERVICES } from "../kube/types.ts";
import { logger } from "../log.ts";
import { ClusterController, type ClusterControllerOptions } from "../controller/controller.ts";
import { EventRecorder } from "../controller/events.ts";
import { ControllerRunner, type LeaderElectionOptions } from "../controller/leader.ts";
import type { PortRange } from "../controller/ports.ts";
import { REPLICA_LEASES_SELECTOR, ReplicaView } from "../controller/replicas.ts";
import {
  type EndpointSliceObject,
  type ReplicaIdentity,
  type ServedCluster,
  TOWER_SLICES_SELECTOR,
} from "../controller/slices.ts";
import type { Lease } from "../kube/leader.ts";
import { ENDPOINT_SLICES, LEASES } from "../kube/types.ts";
import { ReplicaLease } from "./replica_lease.ts";
import { SlicePublisher } from "./slice_publisher.ts";
import {
  type ClusterObject,
  isProxyCluster,
  serviceName,
  type ServiceObject,
  TOWER_NAMESPACE,
} from "../controller/types.ts";
import type { AgentConfig } from "../tunnel/handshake.ts";
import {
  type ClusterChange,
  type ClusterRecord,
  type ClusterSource,
  CREDENTIAL_GENERATION_ANNOTATION,
} from "./clusters.ts";

const log = logger("proxy/clusters-kube");

/** Options of {@link KubeClusterSource}. */
export interface KubeClusterSourceOptions {
  /** Client for the host cluster's API. */
  client: KubeClient;
  /** Namespace of Services, Lease and controller state (default `kubesphere-system`). */
  namespace?: string;
  /** `--publish-service-address`. */
  publishAddress?: string;
  /** `--leader-elect`: Lease settings; undefined = this replica always reconciles. */
  leaderElection?: LeaderElectionOptions;
  /** Record Events on Clusters (default true). */
  events?: boolean;
  /** Tuning of the controller (tests: short grace and retry delays). */
  controller?: Pick<
    ClusterControllerOptions,
    "agentGraceMs" | "retryInitialMs" | "retryMaxMs" | "resyncMs" | "now" | "newToken"
  >;
  /** Tuning of the informers (tests: short backoff). */
  informer?: Pick<
    InformerOptions,
    "backoffInitialMs" | "backoffMaxMs" | "watchTimeoutSeconds" | "watchIdleTimeoutMs"
  >;
  /** Do not run the controller at all (a read-only source). */
  readOnly?: boolean;
  /** `--port-range` and the ports never handed out (the proxy's listeners). */
  portRange?: PortRange;
  reservedPorts?: ReadonlySet<number>;
  /**
   * This replica (pod name, IP, uid): it publishes EndpointSlices and a Lease, and the `mc-*`
   * Services select no pods. Without it (standalone replica outside the cluster, or an old
   * manifest) nothing is published.
   */
  replica?: ReplicaIdentity;
  /** Replica Lease renewal period and duration (ms; default 500 and 2 000). */
  replicaLease?: { renewMs?: number; durationMs?: number };
  /** How often the leader looks for dead replicas (ms, default 500). */
  reapPeriodMs?: number;
  /** Re-publish every slice this often (ms, default 60 000). */
  sliceResyncMs?: number;
  /**
   * The `mc-*` Services select the proxy pods (default: only in the cluster without a replica
   * identity or publish address, the single-replica layout of old).
   */
  selectPods?: boolean;
}

function hostOf(url: string | undefined): string | undefined {
  if (!url) return undefined;
  try {
    const h = new URL(url).hostname;
    return h.startsWith("[") && h.endsWith("]") ? h.slice(1, -1) : h || undefined;
  } catch {
    return undefined;
  }
}

/**
 * The tunnel's view of a Cluster object: token, whether Tower serves it,
 * ports, the hosts clients use (endpoint hosts, the external endpoint's
 * host when external access is on, and the `mc-<name>` Service's DNS names)
 * and the kubernetes endpoint for kubeconfigs.
 */
export function recordFromCluster(c: ClusterObject, namespace = TOWER_NAMESPACE): ClusterRecord {
  const conn = c.spec?.connection ?? {};
  const name = c.metadata.name;
  const hosts: string[] = [];
  const add = (h: string | undefined) => {
    if (h && !hosts.includes(h)) hosts.push(h);
  };
  add(hostOf(conn.kubernetesAPIEndpoint));
  add(hostOf(conn.kubesphereAPIEndpoint));
  if (c.spec?.externalKubeAPIEnabled) add(hostOf(conn.externalKubernetesAPIEndpoint));
  const svc = serviceName(name);
  for (const h of [svc, `${svc}.${namespace}`, `${svc}.${namespace}.svc`]) add(h);
  const port = (p: unknown) =>
    typeof p === "number" && Number.isInteger(p) && p > 0 && p < 65536 ? p : undefined;
  const rec: ClusterRecord = {
    name,
    token: typeof conn.token === "string" ? conn.token : "",
    enabled: isProxyCluster(c),
    endpointHosts: hosts,
  };
  const k = port(conn.kubernetesAPIServerPort);
  const s = port(conn.kubesphereAPIServerPort);
  if (k) rec.kubernetesPort = k;
  if (s) rec.kubespherePort = s;
  if (conn.kubernetesAPIEndpoint) rec.kubernetesEndpoint = conn.kubernetesAPIEndpoint;
  const generation = c.metadata.annotations?.[CREDENTIAL_GENERATION_ANNOTATION];
  if (generation) rec.credentialGeneration = generation;
  return rec;
}

/** Clusters from the host cluster's API, with the controller running beside. */
export class KubeClusterSource implements ClusterSource {
  readonly #o: KubeClusterSourceOptions;
  readonly #ns: string;
  readonly #clusters: Informer<ClusterObject>;
  readonly #services: Informer<ServiceObject>;
  readonly #slices?: Informer<EndpointSliceObject>;
  readonly #leases?: Informer<Lease>;
  /** Which replicas serve which clusters (with a replica identity). */
  readonly replicas?: ReplicaView;
  #publisher?: SlicePublisher;
  readonly #reapAc = new AbortController();
  #reaping?: Promise<void>;
  #lease?: ReplicaLease;
  #servingListeners: ((name: string | undefined) => void)[] = [];
  readonly #records = new Map<string, ClusterRecord>();
  #listeners: ClusterChange[] = [];
  readonly #events?: EventRecorder;
  /** The Cluster controller (reconciles only while {@link isLeader}). */
  readonly controller: ClusterController;
  /** Runs the controller, gated by the Lease when leader election is on. */
  readonly runner?: ControllerRunner;
  #closed = false;

  /** Starts watching (and, unless read-only, the controller/election) at once. */
  constructor(opts: KubeClusterSourceOptions) {
    this.#o = opts;
    this.#ns = opts.namespace ?? TOWER_NAMESPACE;
    const inf: InformerOptions = { backoffMaxMs: 30_000, ...opts.informer };
    this.#clusters = new Informer<ClusterObject>(opts.client, CLUSTERS, inf);
    this.#services = new Informer<ServiceObject>(opts.client, SERVICES, {
      ...inf,
      namespace: this.#ns,
    });
    this.#clusters.addHandlers({
      onAdd: (c) => this.#changed(c.metadata.name, c),
      onUpdate: (_o, c) => this.#changed(c.metadata.name, c),
      onDelete: (c) => this.#changed(c.metadata.name, undefined),
    });
    const identity = opts.leaderElection?.identity ?? opts.replica?.name;
    if (opts.events !== false) {
      this.#events = new EventRecorder({ client: opts.client, instance: identity });
    }
    if (opts.replica && !opts.readOnly) {
      this.#slices = new Informer<EndpointSliceObject>(opts.client, ENDPOINT_SLICES, {
        ...inf,
        namespace: this.#ns,
        labelSelector: TOWER_SLICES_SELECTOR,
      });
      this.#leases = new Informer<Lease>(opts.client, LEASES, {
        ...inf,
        namespace: this.#ns,
        labelSelector: REPLICA_LEASES_SELECTOR,
      });
      this.replicas = new ReplicaView({
        client: opts.client,
        namespace: this.#ns,
        slices: this.#slices,
        leases: this.#leases,
        self: opts.replica.name,
        defaultLeaseMs: opts.replicaLease?.durationMs,
        // Others are judged only while this replica's own heartbeat gets through (not before its
        // Lease runs: startPublishing starts it, after the endpoints are set up).
        mayJudge: () => this.#lease?.renewedInTime() ?? false,
      });
      this.replicas.listen((name) => this.#notifyServing(name));
    }
    this.controller = new ClusterController({
      client: opts.client,
      clusters: this.#clusters,
      services: this.#services,
      namespace: this.#ns,
      publishAddress: opts.publishAddress,
      events: this.#events,
      portRange: opts.portRange,
      reservedPorts: opts.reservedPorts,
      selectPods: opts.selectPods,
      replicas: this.replicas,
      ...opts.controller,
    });
    this.#clusters.start();
    if (!opts.readOnly) {
      this.#services.start();
      this.#slices?.start();
      this.#leases?.start();
      // Every replica reaps, not only the leader: a dead leader's slices must not wait for a new
      // leader's election (up to the 30 s Lease), and each deletion is confirmed by a fresh read.
      this.#reaping = this.replicas?.reap(this.#reapAc.signal, opts.reapPeriodMs).catch((err) =>
        log.error("replica reaper stopped", { err: (err as Error).message })
      );
      const election = opts.leaderElection && {
        ...opts.leaderElection,
        onChange: (leading: boolean) => {
          opts.leaderElection?.onChange?.(leading);
          this.#notifyServing(undefined);
        },
      };
      this.runner = new ControllerRunner(this.controller, opts.client, election);
      this.runner.start();
      if (!election) queueMicrotask(() => this.#notifyServing(undefined));
    }
  }

  #notifyServing(name: string | undefined): void {
    for (const l of this.#servingListeners) {
      try {
        l(name);
      } catch (err) {
        log.error("serving listener failed", { cluster: name, err: (err as Error).message });
      }
    }
  }

  servedElsewhere(name: string): boolean {
    return this.replicas?.served(name, { except: this.#o.replica?.name }) ?? false;
  }

  mayWrite(): boolean {
    return !this.#o.readOnly && (!this.#o.leaderElection || this.isLeader());
  }

  watchServing(fn: (name: string | undefined) => void): () => void {
    this.#servingListeners.push(fn);
    return () => {
      this.#servingListeners = this.#servingListeners.filter((l) => l !== fn);
    };
  }

  async startPublishing(served: (name: string) => ServedCluster | undefined): Promise<void> {
    const replica = this.#o.replica;
    if (!replica || !this.#slices || this.#publisher) return;
    this.#lease = new ReplicaLease({
      client: this.#o.client,
      namespace: this.#ns,
      replica: replica.name,
      podUid: replica.uid,
      ...this.#o.replicaLease,
    });
    // The first heartbeat before the first slice: the leader never sees a slice without a Lease.
    await this.#lease.start();
    this.#publisher = new SlicePublisher({
      client: this.#o.client,
      slices: this.#slices,
      replica,
      served,
      clusters: () => this.#records.keys(),
      resyncMs: this.#o.sliceResyncMs,
    });
    await this.#publisher.start();
    log.info("Publishing EndpointSlices for this replica", {
      replica: replica.name,
      address: replica.ip,
    });
  }

  servingChanged(name: string): void {
    this.#publisher?.changed(name);
  }

  /** The slice publisher (tests). */
  get publisher(): SlicePublisher | undefined {
    return this.#publisher;
  }

  async withdraw(timeoutMs: number): Promise<void> {
    await this.#publisher?.withdraw(timeoutMs);
    await this.#publisher?.stop();
    await this.#lease?.stop({ release: true });
  }

  #changed(name: string, c: ClusterObject | undefined): void {
    const before = this.#records.get(name);
    const after = c ? recordFromCluster(c, this.#ns) : undefined;
    if (after) this.#records.set(name, after);
    else this.#records.delete(name);
    if (JSON.stringify(before) === JSON.stringify(after)) return;
    for (const l of this.#listeners) {
      try {
        l(name, after);
      } catch (err) {
        log.error("cluster change listener failed", {
          cluster: name,
          err: (err as Error).message,
        });
      }
    }
  }

  /** Resolves once the Clusters have been listed (waits through API errors). */
  async ready(): Promise<void> {
    const ok = await this.#clusters.waitForSync();
    if (!ok) throw new Error("cluster source closed before the Clusters were listed");
  }

  /** Ready once Clusters are listed; a standby (not leading) replica is ready too. */
  readiness(): { ok: boolean; detail: string[] } {
    const synced = this.#clusters.hasSynced() && (this.#slices?.hasSynced() ?? true);
    const elector = this.runner?.elector;
    const role = !elector
      ? "controller: running (no leader election)"
      : elector.isLeader()
      ? "controller: leader"
      : `controller: standby (leader ${elector.leader || "unknown"})`;
    return { ok: synced, detail: [`clusters cache: ${synced ? "synced" : "syncing"}`, role] };
  }

  lookup(name: string): ClusterRecord | undefined {
    return this.#records.get(name);
  }

  list(): ClusterRecord[] {
    return [...this.#records.values()];
  }

  subscribe(listener: ClusterChange): () => void {
    this.#listeners.push(listener);
    return () => {
      this.#listeners = this.#listeners.filter((l) => l !== listener);
    };
  }

  /** Whether this replica writes to the API (always, without leader election). */
  isLeader(): boolean {
    return this.runner?.isLeader() ?? false;
  }

  /** The Cluster object as cached (no I/O). */
  cluster(name: string): ClusterObject | undefined {
    return this.#clusters.get(name);
  }

  currentKubeconfig(name: string): Promise<string | undefined> {
    const b64 = this.#clusters.get(name)?.spec?.connection?.kubeconfig;
    return Promise.resolve(b64 ? Buffer.from(b64, "base64").toString("utf8") : undefined);
  }

  agentConnected(name: string, config: AgentConfig): Promise<void> {
    log.v(2, "cluster agent up", { cluster: name, version: config.Version });
    this.controller.setAgentConnected(name, true);
    return Promise.resolve();
  }

  endpointsStatus(name: string, error: string | undefined): void {
    this.controller.setEndpointError(name, error);
  }

  agentDisconnected(name: string): Promise<void> {
    log.v(2, "cluster agent down", { cluster: name });
    this.controller.setAgentConnected(name, false);
    return Promise.resolve();
  }

  /**
   * Store `kubeconfig` in `spec.connection.kubeconfig` (base64 of its bytes),
   * re-reading on 409; no write when it is already there. A standby replica
   * (leader election on, lease held elsewhere) does not write.
   */
  async publishKubeconfig(name: string, kubeconfig: string): Promise<void> {
    if (this.#o.readOnly || (this.#o.leaderElection && !this.isLeader())) {
      log.v(2, "not the leader: kubeconfig not written", { cluster: name });
      return;
    }
    const data = Buffer.from(kubeconfig, "utf8").toString("base64");
    try {
      await this.#o.client.updateWithRetry<ClusterObject>(CLUSTERS, name, (c) => {
        const conn = (c.spec ??= {}).connection ??= {};
        if (conn.kubeconfig === data) return undefined;
        conn.kubeconfig = data;
        return c;
      }, { attempts: 10 });
    } catch (err) {
      throw new Error(`cluster ${name}: write kubeconfig: ${(err as Error).message}`);
    }
    log.info("Wrote kubeconfig into the Cluster", { cluster: name });
  }

  /** Stop the controller (releasing the Lease) and the informers, and flush Events. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.runner?.stop();
    this.#reapAc.abort();
    await this.#reaping;
    await this.#publisher?.stop();
    await this.#lease?.stop({ release: false });
    await Promise.all([
      this.#clusters.stop(),
      this.#services.stop(),
      this.#slices?.stop(),
      this.#leases?.stop(),
    ]);
    await this.#events?.flush();
  }
}
