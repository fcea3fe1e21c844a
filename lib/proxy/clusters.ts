/**
 * The proxy's view of the clusters it may serve, behind one interface with two
 * implementations: Cluster objects in the host cluster's API
 * (`lib/controller/`) and a local file (`clusters_file.ts`, standalone mode).
 * @module
 */

import type { ServedCluster } from "../controller/slices.ts";
import type { AgentConfig } from "../tunnel/handshake.ts";

/** What the tunnel needs to know about one cluster. */
export interface ClusterRecord {
  name: string;
  /** Token agents must present (hex). Empty means no agent may connect yet. */
  token: string;
  /** Whether Tower serves it (`joinFederation` and `connection.type: proxy`). */
  enabled: boolean;
  /** Allocated listener ports, once known. */
  kubernetesPort?: number;
  kubespherePort?: number;
  /** Hosts/IPs clients use to reach the endpoints (serving certificate SANs). */
  endpointHosts: string[];
  /** `https://host:port` written into kubeconfigs. */
  kubernetesEndpoint?: string;
  /**
   * The cluster's credential generation (annotation {@link CREDENTIAL_GENERATION_ANNOTATION}):
   * changing it revokes every client certificate issued for the cluster and re-issues its
   * kubeconfig, without touching the agents' token.
   */
  credentialGeneration?: string;
}

/** The annotation an operator changes (to any new value) to revoke a cluster's certificates. */
export const CREDENTIAL_GENERATION_ANNOTATION = "tower.kubesphere.io/credential-generation";

/** A change to the set of clusters: the new record, or `undefined` when gone. */
export type ClusterChange = (name: string, record: ClusterRecord | undefined) => void;

/** Where the proxy reads clusters from and reports what happens to their agents. */
export interface ClusterSource {
  /** Resolves when the initial set is loaded. */
  ready(): Promise<void>;
  /** The current record of a cluster, from a local cache (no I/O). */
  lookup(name: string): ClusterRecord | undefined;
  /** Every known cluster. */
  list(): ClusterRecord[];
  /** Be told of every change; returns an unsubscribe function. */
  subscribe(listener: ClusterChange): () => void;
  /** The first agent session of `name` came up (`config` is from that agent). */
  agentConnected(name: string, config: AgentConfig): Promise<void>;
  /** The last agent session of `name` went away. */
  agentDisconnected(name: string): Promise<void>;
  /** The kubeconfig published for `name` so far, if any (to avoid re-issuing a valid one). */
  currentKubeconfig?(name: string): Promise<string | undefined>;
  /** Make `kubeconfig` available to users of cluster `name` (Cluster object or file). */
  publishKubeconfig(name: string, kubeconfig: string): Promise<void>;
  /**
   * Optional: whether the cluster's endpoints are serving; `error` says why not
   * (e.g. a port already in use), for a condition on the Cluster.
   */
  endpointsStatus?(name: string, error: string | undefined): void;
  /** Optional: whether another replica serves `name` now (its EndpointSlice; default false). */
  servedElsewhere?(name: string): boolean;
  /** Optional: whether this process may write kubeconfigs now (Kubernetes mode: the leader). */
  mayWrite?(): boolean;
  /**
   * Optional: be told when {@link servedElsewhere} may have changed for a cluster, or when
   * {@link mayWrite} may have changed (`undefined`: every cluster).
   */
  watchServing?(fn: (name: string | undefined) => void): () => void;
  /**
   * Optional (replicas publishing EndpointSlices): start publishing what `served` says this
   * replica serves, and heartbeating its Lease.
   */
  startPublishing?(served: (name: string) => ServedCluster | undefined): Promise<void>;
  /** Optional: what this replica serves of `name` may have changed. */
  servingChanged?(name: string): void;
  /**
   * Optional, at shutdown: withdraw this replica's EndpointSlices and Lease (resolves once they
   * are gone, or after `timeoutMs`).
   */
  withdraw?(timeoutMs: number): Promise<void>;
  /** Optional: lines for `/readyz` (e.g. caches synced, leader or standby). */
  readiness?(): { ok: boolean; detail: string[] };
  /** Stop watching; pending writes are finished or dropped. */
  close(): Promise<void>;
}
