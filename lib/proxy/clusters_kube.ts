/**
 * Kubernetes mode: clusters come from `cluster.kubesphere.io/v1alpha1`
 * Cluster objects in the host cluster. One informer keeps a cache that
 * answers `lookup`/`list` with no I/O (a standby replica serves tunnels from
 * it too); the Cluster controller (`lib/controller/`) runs beside it, gated
 * by the Lease when `--leader-elect` is on, and learns from
 * `agentConnected`/`agentDisconnected` whether to report `AgentAvailable`.
 * Kubeconfigs are written into `spec.connection.kubeconfig` (base64 bytes).
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
    const identity = opts.leaderElection?.identity;
    if (opts.events !== false) {
      this.#events = new EventRecorder({ client: opts.client, instance: identity });
    }
    this.controller = new ClusterController({
      client: opts.client,
      clusters: this.#clusters,
      services: this.#services,
      namespace: this.#ns,
      publishAddress: opts.publishAddress,
      events: this.#events,
      ...opts.controller,
    });
    this.#clusters.start();
    if (!opts.readOnly) {
      this.#services.start();
      this.runner = new ControllerRunner(this.controller, opts.client, opts.leaderElection);
      this.runner.start();
    }
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
    const synced = this.#clusters.hasSynced();
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
    await Promise.all([this.#clusters.stop(), this.#services.stop()]);
    await this.#events?.flush();
  }
}
