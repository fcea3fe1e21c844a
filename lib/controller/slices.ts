/**
 * The EndpointSlices proxy replicas publish for the `mc-<name>` Services,
 * which select no pods (pure: shapes, names, the desired slice, comparison).
 *
 * Each replica that holds a live agent session of a cluster and listens on
 * that cluster's endpoints publishes one slice: its own pod IP, the cluster's
 * two ports by name, an ownerReference to its Pod (deleting the Pod collects
 * the slice), and labels naming the Service, Tower as manager and the
 * replica. kube-proxy then routes each cluster's traffic only to replicas that
 * can carry it.
 * @module
 */

import { createHash } from "node:crypto";
import type { KubeObject } from "../kube/types.ts";
import { serviceName } from "./types.ts";

/** Label naming the Service a slice belongs to (what kube-proxy selects by). */
const SERVICE_NAME_LABEL = "kubernetes.io/service-name";
/** Label naming the slice's manager. */
const MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by";
/** Our value of {@link MANAGED_BY_LABEL}. */
const MANAGED_BY_TOWER = "tower.kubesphere.io";
/** Label naming the replica (pod) that published a slice. */
export const REPLICA_LABEL = "tower.kubesphere.io/replica";
/** Label selector of every slice Tower manages. */
export const TOWER_SLICES_SELECTOR = `${MANAGED_BY_LABEL}=${MANAGED_BY_TOWER}`;

/** One endpoint of a slice. */
export interface SliceEndpoint {
  addresses: string[];
  conditions?: { ready?: boolean; serving?: boolean; terminating?: boolean };
  targetRef?: { kind?: string; name?: string; namespace?: string; uid?: string };
  nodeName?: string;
  [key: string]: unknown;
}

/** One port of a slice. */
export interface SlicePort {
  name?: string;
  port?: number;
  protocol?: string;
  [key: string]: unknown;
}

/** A `discovery.k8s.io/v1` EndpointSlice (the fields Tower uses). */
export interface EndpointSliceObject extends KubeObject {
  addressType: "IPv4" | "IPv6" | "FQDN";
  endpoints: SliceEndpoint[] | null;
  ports: SlicePort[] | null;
}

/** Who a replica is: its Pod (from the downward API) and address. */
export interface ReplicaIdentity {
  /** Pod name (`POD_NAME`); also the value of {@link REPLICA_LABEL}. */
  name: string;
  /** Namespace of the Pod, the Services and the slices. */
  namespace: string;
  /** Pod IP (`POD_IP`): where the replica's endpoints listen. */
  ip: string;
  /** The Pod's uid (owner of the slices), when known. */
  uid?: string;
  /** The node the Pod runs on, when known (topology for kube-proxy). */
  nodeName?: string;
}

/** What a replica serves of one cluster: it holds a session and listens on these ports. */
export interface ServedCluster {
  cluster: string;
  kubernetesPort: number;
  kubespherePort: number;
}

/** Longest object name (a DNS subdomain). */
const MAX_NAME = 253;

function hex10(s: string): string {
  return createHash("sha256").update(s).digest("hex").slice(0, 10);
}

/**
 * Name of `replica`'s slice for `cluster`: `mc-<cluster>-<10 hex of sha256(replica)>`. When that
 * would pass 253 characters the prefix is cut and the hash also covers the cluster (two long
 * names sharing a prefix must not collide).
 */
export function sliceName(cluster: string, replica: string): string {
  const prefix = serviceName(cluster);
  if (prefix.length + 11 <= MAX_NAME) return `${prefix}-${hex10(replica)}`;
  const cut = prefix.slice(0, MAX_NAME - 11).replace(/[-.]+$/, "");
  return `${cut}-${hex10(`${cluster}/${replica}`)}`;
}

/** The cluster a slice serves (from its Service label), if it is an `mc-*` one. */
export function clusterOfSlice(s: KubeObject): string | undefined {
  const svc = s.metadata.labels?.[SERVICE_NAME_LABEL];
  return svc?.startsWith("mc-") && svc.length > 3 ? svc.slice(3) : undefined;
}

/** The replica that published a slice (its label), if Tower manages it. */
export function replicaOfSlice(s: KubeObject): string | undefined {
  if (s.metadata.labels?.[MANAGED_BY_LABEL] !== MANAGED_BY_TOWER) return undefined;
  return s.metadata.labels?.[REPLICA_LABEL] || undefined;
}

/** Whether a slice has an endpoint that is ready (absent `ready` means ready, as kube-proxy reads it). */
export function sliceReady(s: EndpointSliceObject): boolean {
  return (s.endpoints ?? []).some((e) => e.conditions?.ready !== false && e.addresses.length > 0);
}

/** The slice `replica` publishes for `served`. */
export function desiredSlice(served: ServedCluster, replica: ReplicaIdentity): EndpointSliceObject {
  const endpoint: SliceEndpoint = {
    addresses: [replica.ip],
    conditions: { ready: true, serving: true, terminating: false },
    targetRef: {
      kind: "Pod",
      name: replica.name,
      namespace: replica.namespace,
      ...(replica.uid ? { uid: replica.uid } : {}),
    },
  };
  if (replica.nodeName) endpoint.nodeName = replica.nodeName;
  const slice: EndpointSliceObject = {
    apiVersion: "discovery.k8s.io/v1",
    kind: "EndpointSlice",
    metadata: {
      name: sliceName(served.cluster, replica.name),
      namespace: replica.namespace,
      labels: {
        [SERVICE_NAME_LABEL]: serviceName(served.cluster),
        [MANAGED_BY_LABEL]: MANAGED_BY_TOWER,
        [REPLICA_LABEL]: replica.name,
      },
    },
    addressType: replica.ip.includes(":") ? "IPv6" : "IPv4",
    endpoints: [endpoint],
    ports: [
      { name: "kubernetes", port: served.kubernetesPort, protocol: "TCP" },
      { name: "kubesphere", port: served.kubespherePort, protocol: "TCP" },
    ],
  };
  if (replica.uid) {
    slice.metadata.ownerReferences = [{
      apiVersion: "v1",
      kind: "Pod",
      name: replica.name,
      uid: replica.uid,
      controller: false,
    }];
  }
  return slice;
}

/** The fields of a slice Tower sets, normalised for comparison (server defaults left out). */
function essence(s: EndpointSliceObject): unknown {
  return {
    labels: [
      s.metadata.labels?.[SERVICE_NAME_LABEL],
      s.metadata.labels?.[MANAGED_BY_LABEL],
      s.metadata.labels?.[REPLICA_LABEL],
    ],
    owners: (s.metadata.ownerReferences ?? []).map((o) => [o.kind, o.name, o.uid]),
    addressType: s.addressType,
    endpoints: (s.endpoints ?? []).map((e) => [
      e.addresses,
      e.conditions?.ready ?? true,
      e.conditions?.serving ?? true,
      e.conditions?.terminating ?? false,
      e.targetRef?.name,
      e.targetRef?.uid,
      e.nodeName,
    ]),
    ports: (s.ports ?? []).map((p) => [p.name ?? "", p.port, p.protocol ?? "TCP"]),
  };
}

/** Whether `observed` already says what `desired` says. */
function sliceUpToDate(
  observed: EndpointSliceObject,
  desired: EndpointSliceObject,
): boolean {
  return JSON.stringify(essence(observed)) === JSON.stringify(essence(desired));
}

/**
 * `desired` written over `observed` for an update: our labels and fields, everyone else's
 * labels, annotations and metadata kept (resourceVersion included, for a conditional write).
 */
function sliceUpdate(
  observed: EndpointSliceObject,
  desired: EndpointSliceObject,
): EndpointSliceObject {
  return {
    ...observed,
    metadata: {
      ...observed.metadata,
      labels: { ...observed.metadata.labels, ...desired.metadata.labels },
      ownerReferences: desired.metadata.ownerReferences,
    },
    addressType: desired.addressType,
    endpoints: desired.endpoints,
    ports: desired.ports,
  };
}

/** What to do with one cluster's slices of this replica. */
export type SliceAction =
  | { kind: "create"; slice: EndpointSliceObject }
  | { kind: "update"; slice: EndpointSliceObject }
  | { kind: "delete"; name: string; uid?: string };

/**
 * The actions that bring `observed` (this replica's slices of one cluster) to `desired` (its one
 * slice, or none): create or update the wanted one, delete every other.
 */
export function sliceActions(
  desired: EndpointSliceObject | undefined,
  observed: readonly EndpointSliceObject[],
): SliceAction[] {
  const out: SliceAction[] = [];
  const want = desired?.metadata.name;
  let found = false;
  for (const o of observed) {
    if (o.metadata.name === want && desired) {
      found = true;
      if (!sliceUpToDate(o, desired)) out.push({ kind: "update", slice: sliceUpdate(o, desired) });
    } else out.push({ kind: "delete", name: o.metadata.name!, uid: o.metadata.uid });
  }
  if (desired && !found) out.push({ kind: "create", slice: desired });
  return out;
}
