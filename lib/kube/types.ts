/**
 * Shapes shared by the REST client: resource descriptors, object metadata,
 * lists, watch events, and descriptors for the resources Tower uses.
 * @module
 */

/** Which REST collection an object lives in. */
export interface ResourceType {
  /** API group; `""` for the core group (`/api/v1`). */
  group: string;
  version: string;
  /** Lower-case plural, e.g. `services`. */
  plural: string;
  namespaced: boolean;
  /** Kind, used to fill `apiVersion`/`kind` on create when missing. */
  kind?: string;
}

/** Kubernetes `ObjectMeta` (the fields Tower uses; others pass through). */
export interface ObjectMeta {
  name?: string;
  generateName?: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  generation?: number;
  creationTimestamp?: string;
  deletionTimestamp?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  finalizers?: string[];
  ownerReferences?: Record<string, unknown>[];
  [key: string]: unknown;
}

/** Any Kubernetes object. */
export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta;
  [key: string]: unknown;
}

/** A list response. */
export interface KubeList<T extends KubeObject = KubeObject> {
  apiVersion?: string;
  kind?: string;
  metadata: { resourceVersion?: string; continue?: string; remainingItemCount?: number };
  items: T[];
}

/** Watch event types. */
export type WatchEventType = "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK";

/** One event of a watch stream (ERROR events are thrown as `KubeApiError`). */
export interface WatchEvent<T extends KubeObject = KubeObject> {
  type: WatchEventType;
  object: T;
}

/** The `Status` body the API server returns with errors. */
export interface StatusBody {
  kind?: string;
  apiVersion?: string;
  status?: string;
  message?: string;
  reason?: string;
  code?: number;
  details?: {
    name?: string;
    group?: string;
    kind?: string;
    retryAfterSeconds?: number;
    causes?: { reason?: string; message?: string; field?: string }[];
  };
}

/** `apiVersion` string of a resource type (`v1`, `cluster.kubesphere.io/v1alpha1`). */
export function apiVersionOf(res: ResourceType): string {
  return res.group === "" ? res.version : `${res.group}/${res.version}`;
}

/** `namespace/name` (or `name` for cluster-scoped objects): the cache key. */
export function objectKey(obj: KubeObject): string {
  const ns = obj.metadata.namespace;
  return ns ? `${ns}/${obj.metadata.name}` : String(obj.metadata.name);
}

/** Cluster-scoped `cluster.kubesphere.io/v1alpha1` Clusters. */
export const CLUSTERS: ResourceType = {
  group: "cluster.kubesphere.io",
  version: "v1alpha1",
  plural: "clusters",
  namespaced: false,
  kind: "Cluster",
};
/** Core Services. */
export const SERVICES: ResourceType = {
  group: "",
  version: "v1",
  plural: "services",
  namespaced: true,
  kind: "Service",
};
/** Core Secrets. */
export const SECRETS: ResourceType = {
  group: "",
  version: "v1",
  plural: "secrets",
  namespaced: true,
  kind: "Secret",
};
/** Core ConfigMaps. */
export const CONFIGMAPS: ResourceType = {
  group: "",
  version: "v1",
  plural: "configmaps",
  namespaced: true,
  kind: "ConfigMap",
};
/** Core Events (the `v1` API). */
export const EVENTS: ResourceType = {
  group: "",
  version: "v1",
  plural: "events",
  namespaced: true,
  kind: "Event",
};
/** Core Namespaces. */
export const NAMESPACES: ResourceType = {
  group: "",
  version: "v1",
  plural: "namespaces",
  namespaced: false,
  kind: "Namespace",
};
/** `coordination.k8s.io/v1` Leases. */
export const LEASES: ResourceType = {
  group: "coordination.k8s.io",
  version: "v1",
  plural: "leases",
  namespaced: true,
  kind: "Lease",
};
/** `discovery.k8s.io/v1` EndpointSlices. */
export const ENDPOINT_SLICES: ResourceType = {
  group: "discovery.k8s.io",
  version: "v1",
  plural: "endpointslices",
  namespaced: true,
  kind: "EndpointSlice",
};
/** Core Pods. */
export const PODS: ResourceType = {
  group: "",
  version: "v1",
  plural: "pods",
  namespaced: true,
  kind: "Pod",
};
