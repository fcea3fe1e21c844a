/**
 * Shapes of the API objects the controller reads and writes (the fields Tower
 * uses; every other field is carried through untouched) and the names and
 * constants of SPEC §3.
 * @module
 */

import type { ObjectMeta as KubeObjectMeta } from "../kube/types.ts";

/** API group/version of the Cluster resource. */
export const CLUSTER_API_VERSION = "cluster.kubesphere.io/v1alpha1";
/** Namespace of the `mc-<name>` Services, Secrets, Lease and Events. */
export const TOWER_NAMESPACE = "kubesphere-system";
/** Prefix of the per-cluster Service name. */
export const SERVICE_PREFIX = "mc-";
/** Service port clients use for the kubernetes endpoint. */
export const SERVICE_KUBERNETES_PORT = 6443;
/** Service port clients use for the kubesphere endpoint. */
export const SERVICE_KUBESPHERE_PORT = 80;
/** Cluster annotation holding a JSON object of annotations for the LoadBalancer Service (sic). */
export const LB_ANNOTATIONS_KEY = "tower.kubesphere.io/external-lb-service-annoations";
/**
 * Service annotation listing (JSON array) the annotation keys Tower applied from
 * {@link LB_ANNOTATIONS_KEY}, so keys removed from the Cluster are removed again.
 */
export const MANAGED_ANNOTATIONS_KEY = "tower.kubesphere.io/managed-annotations";

/** Condition types Tower owns. */
export const CONDITION_INITIALIZED = "Initialized";
export const CONDITION_AGENT_AVAILABLE = "AgentAvailable";
export const CONDITION_EXTERNAL_ACCESS_READY = "ExternalAccessReady";

/** Messages of the `AgentAvailable` condition (the Go tower's, kept verbatim). */
export const AGENT_CONNECTED_MESSAGE = "Agent has connected to proxy successfully.";
export const AGENT_NOT_CONNECTED_MESSAGE = "Agent has not connected to proxy.";

/** `True`, `False` or `Unknown`. */
export type ConditionStatus = "True" | "False" | "Unknown";

/** One entry of `status.conditions`. */
export interface ClusterCondition {
  type: string;
  status: ConditionStatus;
  lastUpdateTime?: string;
  lastTransitionTime?: string;
  reason?: string;
  message?: string;
  [key: string]: unknown;
}

/** Object metadata ({@link KubeObjectMeta}) of the objects read here: always named. */
export type ObjectMeta = KubeObjectMeta & { name: string };

/** `spec.connection` of a Cluster. */
export interface ClusterConnection {
  type?: string;
  token?: string;
  kubernetesAPIServerPort?: number;
  kubesphereAPIServerPort?: number;
  kubernetesAPIEndpoint?: string;
  kubesphereAPIEndpoint?: string;
  externalKubernetesAPIEndpoint?: string;
  /** Base64 of the kubeconfig bytes. */
  kubeconfig?: string;
  [key: string]: unknown;
}

/** `spec` of a Cluster. */
export interface ClusterSpec {
  joinFederation?: boolean;
  enable?: boolean;
  provider?: string;
  externalKubeAPIEnabled?: boolean;
  connection?: ClusterConnection;
  [key: string]: unknown;
}

/** `status` of a Cluster. */
export interface ClusterStatus {
  conditions?: ClusterCondition[];
  [key: string]: unknown;
}

/** A `cluster.kubesphere.io/v1alpha1` Cluster. */
export interface ClusterObject {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta;
  spec?: ClusterSpec;
  status?: ClusterStatus;
  [key: string]: unknown;
}

/** One port of a Service. */
export interface ServicePort {
  name?: string;
  protocol?: string;
  port: number;
  targetPort?: number | string;
  nodePort?: number;
  [key: string]: unknown;
}

/** A core/v1 Service (the fields used here). */
export interface ServiceObject {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta;
  spec?: {
    type?: string;
    clusterIP?: string;
    selector?: Record<string, string>;
    ports?: ServicePort[];
    [key: string]: unknown;
  };
  status?: {
    loadBalancer?: { ingress?: { ip?: string; hostname?: string }[] };
    [key: string]: unknown;
  };
  [key: string]: unknown;
}

/** Name of the Service of cluster `name`. */
export function serviceName(cluster: string): string {
  return `${SERVICE_PREFIX}${cluster}`;
}

/** The cluster a Service belongs to, or undefined when it is not an `mc-*` Service. */
export function clusterOfService(service: string): string | undefined {
  return service.startsWith(SERVICE_PREFIX) && service.length > SERVICE_PREFIX.length
    ? service.slice(SERVICE_PREFIX.length)
    : undefined;
}

/** Whether Tower serves this Cluster: not being deleted, `joinFederation`, type `proxy`. */
export function isProxyCluster(c: ClusterObject | undefined): c is ClusterObject {
  return !!c && !c.metadata.deletionTimestamp && c.spec?.joinFederation === true &&
    c.spec?.connection?.type === "proxy";
}
