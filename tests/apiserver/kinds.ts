/**
 * Per-kind semantics of the test API server before an object is stored:
 * validation (metadata and owner references, Events, Service ports,
 * EndpointSlices, RBAC, CRDs), defaults and the
 * work of the controllers it stands in for (a Namespace's finalizer and
 * phase, a Service's ClusterIP and node ports, a Pod scheduled and running at
 * once, the empty status of Deployments and PDBs).
 * @module
 */

import { prepareCrd } from "./crds.ts";
import {
  ATOMIC_LISTS,
  defaultEndpointSlice,
  isEndpointSlice,
  validateEndpointSlice,
} from "./endpointslices.ts";
import { prepareService, type ServiceNetwork } from "./services.ts";
import type { Store } from "./store.ts";
import {
  badRequest,
  invalid,
  type KubeObject,
  newInvalid,
  type ResourceDef,
  storageKeyOf,
  timestamp,
} from "./types.ts";
import {
  prepareSecret,
  validateEvent,
  validateMetadata,
  validateOwnerReferences,
  validateRbac,
  validateServicePorts,
} from "./validation.ts";

type Obj = Record<string, unknown>;

/** What the per-kind steps read besides the object. */
export interface WriteContext {
  store: Store;
  network: ServiceNetwork;
  /** Accept loopback addresses in EndpointSlices (the real server refuses them). */
  allowLoopbackEndpoints: boolean;
}

/**
 * Defaults the real server applies while decoding a body (before comparing
 * it with the stored object), and its decoder's errors (400: wrong types;
 * unknown fields when `strict`, i.e. `fieldValidation=Strict`).
 */
export function applyDefaults(def: ResourceDef, obj: KubeObject, strict: boolean): void {
  if (isEndpointSlice(def)) defaultEndpointSlice(obj, strict);
}

/** Top-level lists a strategic merge patch replaces whole for this kind. */
export function atomicLists(def: ResourceDef): string[] {
  return isEndpointSlice(def) ? ATOMIC_LISTS : [];
}

/**
 * Validate and complete `obj` (a create when `old` is undefined) in place;
 * throws the real server's `ApiError` (422 Invalid, 400 BadRequest).
 */
export function prepareWrite(
  ctx: WriteContext,
  def: ResourceDef,
  obj: KubeObject,
  old: KubeObject | undefined,
): void {
  const o = obj as Obj;
  const metaCauses = validateMetadata(obj);
  if (metaCauses.length) throw invalid(def, obj.metadata.name ?? "", metaCauses);
  const refCauses = validateOwnerReferences(obj);
  if (refCauses.length) throw newInvalid(def, obj.metadata.name ?? "", refCauses);
  if (def.kind === "Event" && !old) {
    const eventCauses = validateEvent(obj, def.group === "events.k8s.io");
    if (eventCauses.length) throw invalid(def, obj.metadata.name ?? "", eventCauses);
  }
  if (def.group === "" && def.kind === "Secret") {
    const bad = prepareSecret(obj);
    if (bad) throw badRequest(bad);
  }
  if (def.group === "" && def.kind === "Service") {
    const portCauses = validateServicePorts(obj);
    if (portCauses.length) throw invalid(def, obj.metadata.name ?? "", portCauses);
  }
  if (def.group === "" && def.kind === "Namespace") {
    obj.metadata.labels = {
      ...obj.metadata.labels,
      "kubernetes.io/metadata.name": obj.metadata.name!,
    };
    if (!old) {
      o.spec = { finalizers: ["kubernetes"] };
      o.status = { phase: "Active" };
    }
  }
  if (def.group === "" && def.kind === "Service") {
    const others = [...ctx.store.peek(storageKeyOf(def))].filter((s) =>
      !(s.metadata.namespace === obj.metadata.namespace && s.metadata.name === obj.metadata.name)
    );
    prepareService(def, obj, old, others, ctx.network);
  }
  if (def.group === "" && def.kind === "Pod" && !old) startPod(ctx.store, def, obj);
  if (isEndpointSlice(def)) validateEndpointSlice(def, obj, old, ctx.allowLoopbackEndpoints);
  if (def.kind === "CustomResourceDefinition") prepareCrd(def, obj, old);
  if (!old && def.generation && !def.crd && def.statusSubresource) {
    // Built-ins with a controller (Deployments, PDBs) start with an empty status.
    o.status = {};
  }
  if (def.group === "rbac.authorization.k8s.io") {
    const rbacCauses = validateRbac(def.kind, obj, old);
    if (rbacCauses.length) throw invalid(def, obj.metadata.name ?? "", rbacCauses);
  }
}

/**
 * A new Pod needs containers; it is scheduled (default `node-1`) and running
 * at once, with a pod IP in its node's pod range: the scheduler and kubelet
 * this server stands in for. (Set another IP through `pods/<p>/status`.)
 */
function startPod(store: Store, def: ResourceDef, obj: KubeObject): void {
  const o = obj as Obj;
  const spec = (o.spec ?? {}) as Obj;
  const containers = (spec.containers ?? []) as Obj[];
  if (!containers.length) {
    throw invalid(def, obj.metadata.name!, [{
      reason: "FieldValueRequired",
      field: "spec.containers",
      message: "Required value",
    }]);
  }
  const node = store.get("/nodes", "", String(spec.nodeName ?? "node-1"));
  const hostIP = ((node?.status as Obj | undefined)?.addresses as Obj[] | undefined)?.[0]
    ?.address ?? "192.168.0.11";
  spec.nodeName ??= "node-1";
  const n = 2 + (store.revision % 250);
  o.status = {
    phase: "Running",
    hostIP,
    podIP: `10.244.${String(hostIP).split(".")[3] ?? 0}.${n}`,
    startTime: timestamp(),
    conditions: ["Initialized", "Ready", "ContainersReady", "PodScheduled"].map((type) => ({
      type,
      status: "True",
      lastTransitionTime: timestamp(),
    })),
    containerStatuses: containers.map((c) => ({
      name: c.name,
      image: c.image,
      imageID: "",
      ready: true,
      started: true,
      restartCount: 0,
      state: { running: { startedAt: timestamp() } },
    })),
  };
}
