/**
 * What the replicas figure watches on the API server, as informers of the
 * project's own client: which Clusters the controller has finished
 * (token, both ports, `Initialized=True`, the `mc-<name>` Service), and which
 * replicas publish a ready EndpointSlice for which cluster (kube-proxy's view:
 * a cluster is served when a live replica's slice has a ready endpoint and no
 * dead replica's slice is left to send connections nowhere).
 * @module
 */

import { KubeClient, loadKubeConnection } from "../../lib/kube/mod.ts";
import { Informer } from "../../lib/kube/informer.ts";
import { CLUSTERS, ENDPOINT_SLICES, SERVICES } from "../../lib/kube/types.ts";
import type { ClusterObject, ServiceObject } from "../../lib/controller/types.ts";
import {
  clusterOfSlice,
  type EndpointSliceObject,
  replicaOfSlice,
  sliceReady,
  TOWER_SLICES_SELECTOR,
} from "../../lib/controller/slices.ts";

const NAMESPACE = "kubesphere-system";

/** Whether the controller has done everything for `c` but the Service. */
export function clusterReconciled(c: ClusterObject): boolean {
  const conn = c.spec?.connection;
  return !!conn?.token && !!conn.kubernetesAPIServerPort && !!conn.kubesphereAPIServerPort &&
    (c.status?.conditions ?? []).some((x) => x.type === "Initialized" && x.status === "True");
}

/** Clusters, Services and Tower's EndpointSlices, kept by watches. */
export class ReplicasWatch {
  readonly #close: () => void;
  readonly clusters: Informer<ClusterObject>;
  readonly services: Informer<ServiceObject>;
  readonly slices: Informer<EndpointSliceObject>;
  /** Clusters reconciled (see {@link clusterReconciled}) whose Service exists. */
  readonly done = new Set<string>();
  readonly #reconciled = new Set<string>();
  readonly #services = new Set<string>();
  /** Cluster → slice name → [replica, ready]. */
  readonly #byCluster = new Map<string, Map<string, [string, boolean]>>();
  /** Replica → its slices' clusters (by slice name). */
  readonly #byReplica = new Map<string, Map<string, string>>();

  private constructor(client: KubeClient, close: () => void) {
    this.#close = close;
    this.clusters = new Informer<ClusterObject>(client, CLUSTERS);
    this.services = new Informer<ServiceObject>(client, SERVICES, { namespace: NAMESPACE });
    this.slices = new Informer<EndpointSliceObject>(client, ENDPOINT_SLICES, {
      namespace: NAMESPACE,
      labelSelector: TOWER_SLICES_SELECTOR,
    });
    const cluster = (c: ClusterObject, present: boolean) => {
      const name = c.metadata.name;
      if (present && clusterReconciled(c)) this.#reconciled.add(name);
      else this.#reconciled.delete(name);
      this.#check(name);
    };
    this.clusters.addHandlers({
      onAdd: (c) => cluster(c, true),
      onUpdate: (_o, c) => cluster(c, true),
      onDelete: (c) => cluster(c, false),
    });
    const service = (s: ServiceObject, present: boolean) => {
      const name = s.metadata.name?.startsWith("mc-") ? s.metadata.name.slice(3) : undefined;
      if (!name) return;
      if (present) this.#services.add(name);
      else this.#services.delete(name);
      this.#check(name);
    };
    this.services.addHandlers({
      onAdd: (s) => service(s, true),
      onUpdate: (_o, s) => service(s, true),
      onDelete: (s) => service(s, false),
    });
    this.slices.addHandlers({
      onAdd: (s) => this.#slice(s, true),
      onUpdate: (_o, s) => this.#slice(s, true),
      onDelete: (s) => this.#slice(s, false),
    });
  }

  /** Watch the API server of `kubeconfig` (resolves once every informer has listed). */
  static async start(kubeconfig: string): Promise<ReplicasWatch> {
    const conn = await loadKubeConnection(kubeconfig);
    const w = new ReplicasWatch(new KubeClient(conn), () => conn.close());
    for (const i of [w.clusters, w.services, w.slices]) i.start();
    for (const i of [w.clusters, w.services, w.slices]) await i.waitForSync();
    return w;
  }

  #check(name: string): void {
    if (this.#reconciled.has(name) && this.#services.has(name)) this.done.add(name);
    else this.done.delete(name);
  }

  #slice(s: EndpointSliceObject, present: boolean): void {
    const cluster = clusterOfSlice(s);
    const replica = replicaOfSlice(s);
    const name = s.metadata.name!;
    if (!cluster || !replica) return;
    let m = this.#byCluster.get(cluster);
    let r = this.#byReplica.get(replica);
    if (present) {
      if (!m) this.#byCluster.set(cluster, m = new Map());
      if (!r) this.#byReplica.set(replica, r = new Map());
      m.set(name, [replica, sliceReady(s)]);
      r.set(name, cluster);
    } else {
      m?.delete(name);
      if (m?.size === 0) this.#byCluster.delete(cluster);
      r?.delete(name);
      if (r?.size === 0) this.#byReplica.delete(replica);
    }
  }

  /** Whether `cluster` has a ready slice of a live replica and none of a `dead` one. */
  served(cluster: string, dead: ReadonlySet<string> = new Set()): boolean {
    let live = false;
    for (const [replica, ready] of this.#byCluster.get(cluster)?.values() ?? []) {
      if (dead.has(replica)) return false;
      if (ready) live = true;
    }
    return live;
  }

  /** Clusters `replica` publishes slices for. */
  clustersOf(replica: string): Set<string> {
    return new Set(this.#byReplica.get(replica)?.values() ?? []);
  }

  /** The token of cluster `name` ("" when it has none yet). */
  token(name: string): string {
    return this.clusters.get(name)?.spec?.connection?.token ?? "";
  }

  async close(): Promise<void> {
    await Promise.all([this.clusters.stop(), this.services.stop(), this.slices.stop()]);
    this.#close();
  }
}
