/**
 * The garbage collector of the test API server, for any kind: what
 * kube-controller-manager's collector does, driven by the store's changes
 * and run to completion before the request that caused them is answered
 * (a queue drained on the next microtask, never inside a store write, so
 * watchers see every change in revision order).
 *
 * - An object whose owner goes (DELETED) is checked: an owner reference is
 *   solid when an object of that apiVersion/kind and name exists with that
 *   uid (namespaced owners in the dependent's own namespace, cluster-scoped
 *   ones at the cluster scope); dangling otherwise. With no solid owner the
 *   dependent is deleted (background, or with the policy its own `orphan` /
 *   `foregroundDeletion` finalizer asks for); with some, the dangling
 *   references are removed from it.
 * - The same check runs when an object is created or its ownerReferences
 *   change, so a reference to an owner that is already gone (or never was)
 *   gets the object collected right after its creation.
 * - References the collector cannot resolve are left alone for good: an
 *   apiVersion/kind not served, or a namespaced owner kind named by a
 *   cluster-scoped dependent (that one, and a namespaced reference whose uid
 *   lives in another namespace, also get the real collector's Warning Event
 *   `OwnerRefInvalidNamespace`).
 * - `orphan` finalizer (DELETE with `propagationPolicy=Orphan`): the owner's
 *   uid is removed from its dependents' references, then the finalizer.
 * - `foregroundDeletion` finalizer (`propagationPolicy=Foreground`): the
 *   dependents are deleted first (foreground again for those that have
 *   dependents of their own); the finalizer goes once no dependent with
 *   `blockOwnerDeletion: true` is left.
 * @module
 */

import { logger } from "../../lib/log.ts";
import type { Registry } from "./registry.ts";
import type { Store, StoreEvent } from "./store.ts";
import { invalidValue, notSupported } from "./fielderrors.ts";
import {
  ApiError,
  apiVersionOf,
  clone,
  type KubeObject,
  newInvalid,
  type ResourceDef,
  sameJson,
  storageKeyOf,
  timestamp,
} from "./types.ts";

const log = logger("test-apiserver/gc");

/** `metadata.ownerReferences[]`. */
export interface OwnerRef {
  apiVersion?: string;
  kind?: string;
  name?: string;
  uid?: string;
  controller?: boolean;
  blockOwnerDeletion?: boolean;
}

/** The propagation policy a deletion asks for. */
export type Propagation = "Background" | "Foreground" | "Orphan";

/** The finalizers the collector acts on. */
export const ORPHAN = "orphan";
export const FOREGROUND = "foregroundDeletion";

/** How the collector changes objects: through the core, with its semantics. */
export interface GcHost {
  registry: Registry;
  store: Store;
  /** DELETE with a propagation policy and a uid precondition. */
  deleteObject(def: ResourceDef, obj: KubeObject, policy: Propagation): void;
  /** PUT of `obj` (carrying the stored resourceVersion). */
  updateObject(def: ResourceDef, obj: KubeObject): void;
  /** Record a Warning Event about `obj`. */
  warn(obj: KubeObject, def: ResourceDef, reason: string, message: string): void;
}

type Task = { kind: "attempt" | "orphan" | "foreground"; key: string };

/** Refuses to loop: the most tasks one drain may run. */
const MAX_TASKS_PER_DRAIN = 1_000_000;

function keyOf(resource: string, namespace: string, name: string): string {
  return `${resource}\u0000${namespace}\u0000${name}`;
}

function splitKey(key: string): [string, string, string] {
  const [r, ns, n] = key.split("\u0000");
  return [r, ns, n];
}

/** The owner references of an object (none for a malformed field). */
export function ownerRefs(obj: KubeObject | undefined): OwnerRef[] {
  const refs = obj?.metadata.ownerReferences;
  return Array.isArray(refs) ? refs as OwnerRef[] : [];
}

function finalizers(obj: KubeObject): string[] {
  return obj.metadata.finalizers ?? [];
}

function deleting(obj: KubeObject | undefined, finalizer: string): boolean {
  return !!obj?.metadata.deletionTimestamp && finalizers(obj).includes(finalizer);
}

/** The garbage collector over one store. */
export class GarbageCollector {
  /** Owner uid → keys of the objects that name it. */
  #dependents = new Map<string, Set<string>>();
  /** Object key → the owner uids it names. */
  #owners = new Map<string, string[]>();
  /** uid → key of every live object (to spot cross-namespace references). */
  #byUid = new Map<string, string>();
  #queue: Task[] = [];
  #scheduled = false;

  constructor(readonly host: GcHost) {
    host.store.subscribe((e) => this.#observe(e));
    this.reindex();
  }

  /** Rebuild the index from the stored objects (after a reset that dropped them). */
  reindex(): void {
    this.#dependents.clear();
    this.#owners.clear();
    this.#byUid.clear();
    const seen = new Set<string>();
    for (const d of this.host.registry.all()) {
      const resource = storageKeyOf(d);
      if (seen.has(resource)) continue;
      seen.add(resource);
      for (const o of this.host.store.list(resource)) this.#index(resource, o);
    }
  }

  #index(resource: string, obj: KubeObject): void {
    const key = keyOf(resource, obj.metadata.namespace ?? "", obj.metadata.name ?? "");
    this.#unindex(key);
    if (obj.metadata.uid) this.#byUid.set(obj.metadata.uid, key);
    const uids = ownerRefs(obj).map((r) => String(r.uid ?? ""));
    if (!uids.length) return;
    this.#owners.set(key, uids);
    for (const u of uids) {
      let deps = this.#dependents.get(u);
      if (!deps) this.#dependents.set(u, deps = new Set());
      deps.add(key);
    }
  }

  #unindex(key: string, uid?: string): void {
    if (uid && this.#byUid.get(uid) === key) this.#byUid.delete(uid);
    for (const u of this.#owners.get(key) ?? []) {
      const deps = this.#dependents.get(u);
      deps?.delete(key);
      if (deps && !deps.size) this.#dependents.delete(u);
    }
    this.#owners.delete(key);
  }

  #observe(e: StoreEvent): void {
    const m = e.object.metadata;
    const key = keyOf(e.resource, m.namespace ?? "", m.name ?? "");
    if (e.type === "DELETED") {
      this.#unindex(key, m.uid);
      for (const dep of this.#dependents.get(m.uid ?? "") ?? []) this.#enqueue("attempt", dep);
      // Owners deleting in the foreground wait for this one.
      for (const r of ownerRefs(e.object)) {
        const ownerKey = this.#byUid.get(String(r.uid ?? ""));
        if (ownerKey) this.#enqueue("foreground", ownerKey);
      }
      return;
    }
    this.#index(e.resource, e.object);
    if (ownerRefs(e.object).length && !sameJson(ownerRefs(e.prev), ownerRefs(e.object))) {
      this.#enqueue("attempt", key);
    }
    if (deleting(e.object, ORPHAN) && !deleting(e.prev, ORPHAN)) this.#enqueue("orphan", key);
    if (deleting(e.object, FOREGROUND) && !deleting(e.prev, FOREGROUND)) {
      for (const dep of this.#dependents.get(m.uid ?? "") ?? []) this.#enqueue("attempt", dep);
      this.#enqueue("foreground", key);
    }
  }

  #enqueue(kind: Task["kind"], key: string): void {
    this.#queue.push({ kind, key });
    if (this.#scheduled) return;
    this.#scheduled = true;
    queueMicrotask(() => this.#drain());
  }

  #drain(): void {
    let n = 0;
    while (this.#queue.length) {
      const task = this.#queue.shift()!;
      if (++n > MAX_TASKS_PER_DRAIN) {
        log.error("garbage collector gave up: too many tasks in one pass", {
          left: this.#queue.length,
        });
        this.#queue = [];
        break;
      }
      try {
        if (task.kind === "attempt") this.#attemptToDelete(task.key);
        else if (task.kind === "orphan") this.#orphanDependents(task.key);
        else this.#processDeletingDependents(task.key);
      } catch (err) {
        // The real collector retries; here the next change of the object does.
        log.v(2, "garbage collector step failed", {
          task: task.kind,
          object: task.key.replaceAll("\u0000", "/"),
          error: err instanceof ApiError ? err.message : String(err),
        });
      }
    }
    this.#scheduled = false;
  }

  #get(key: string): { def: ResourceDef; obj: KubeObject } | undefined {
    const [resource, ns, name] = splitKey(key);
    const def = this.host.registry.all().find((d) => storageKeyOf(d) === resource);
    const obj = def && this.host.store.get(resource, ns, name);
    return def && obj ? { def, obj } : undefined;
  }

  /** The served resource of an owner reference's apiVersion/kind. */
  #ownerDef(ref: OwnerRef): ResourceDef | undefined {
    return this.host.registry.all().find((d) =>
      apiVersionOf(d) === ref.apiVersion && d.kind === ref.kind
    );
  }

  /**
   * `solid`, `dangling`, `waiting` (owner deleting in the foreground), or
   * `unresolvable` (never collected).
   */
  #classify(
    ref: OwnerRef,
    dep: KubeObject,
    depDef: ResourceDef,
  ): "solid" | "dangling" | "waiting" | "unresolvable" {
    const def = this.#ownerDef(ref);
    if (!def) return "unresolvable";
    const ns = dep.metadata.namespace ?? "";
    if (def.namespaced && !depDef.namespaced) {
      this.#reportInvalidNamespace(dep, depDef, ref);
      return "unresolvable";
    }
    const owner = this.host.store.get(storageKeyOf(def), def.namespaced ? ns : "", ref.name ?? "");
    if (!owner || owner.metadata.uid !== ref.uid) {
      const elsewhere = this.#byUid.get(String(ref.uid ?? ""));
      if (def.namespaced && elsewhere && splitKey(elsewhere)[1] !== ns) {
        this.#reportInvalidNamespace(dep, depDef, ref);
      }
      return "dangling";
    }
    return deleting(owner, FOREGROUND) ? "waiting" : "solid";
  }

  #reportInvalidNamespace(dep: KubeObject, depDef: ResourceDef, ref: OwnerRef): void {
    const ns = dep.metadata.namespace ?? "";
    this.host.warn(
      dep,
      depDef,
      "OwnerRefInvalidNamespace",
      `ownerRef [${ref.apiVersion}/${ref.kind}, namespace: ${ns}, name: ${ref.name}, uid: ` +
        `${ref.uid}] does not exist in namespace ${JSON.stringify(ns)}`,
    );
  }

  #attemptToDelete(key: string): void {
    const found = this.#get(key);
    if (!found) return;
    const { def, obj } = found;
    if (obj.metadata.deletionTimestamp) {
      if (deleting(obj, FOREGROUND)) this.#processDeletingDependents(key);
      return;
    }
    const refs = ownerRefs(obj);
    if (!refs.length) return;
    const solid: OwnerRef[] = [];
    const gone = new Set<string>();
    let waiting = false;
    for (const r of refs) {
      const c = this.#classify(r, obj, def);
      if (c === "unresolvable") return;
      if (c === "solid") solid.push(r);
      else gone.add(String(r.uid));
      if (c === "waiting") waiting = true;
    }
    if (solid.length) {
      if (!gone.size) return;
      const next = clone(obj);
      next.metadata.ownerReferences = refs.filter((r) => !gone.has(String(r.uid)));
      this.host.updateObject(def, next);
      return;
    }
    const hasDependents = !!this.#dependents.get(obj.metadata.uid ?? "")?.size;
    let policy: Propagation = "Background";
    if (waiting && hasDependents) policy = "Foreground";
    else if (finalizers(obj).includes(ORPHAN)) policy = "Orphan";
    else if (finalizers(obj).includes(FOREGROUND)) policy = "Foreground";
    this.host.deleteObject(def, obj, policy);
  }

  #orphanDependents(key: string): void {
    const found = this.#get(key);
    if (!found || !deleting(found.obj, ORPHAN)) return;
    const uid = found.obj.metadata.uid ?? "";
    for (const depKey of [...this.#dependents.get(uid) ?? []]) {
      const dep = this.#get(depKey);
      if (!dep) continue;
      const next = clone(dep.obj);
      const refs = ownerRefs(next).filter((r) => r.uid !== uid);
      if (refs.length) next.metadata.ownerReferences = refs;
      else delete next.metadata.ownerReferences;
      this.host.updateObject(dep.def, next);
    }
    this.#removeFinalizer(key, ORPHAN);
  }

  #processDeletingDependents(key: string): void {
    const found = this.#get(key);
    if (!found || !deleting(found.obj, FOREGROUND)) return;
    const uid = found.obj.metadata.uid ?? "";
    const blocking = [...this.#dependents.get(uid) ?? []].filter((depKey) => {
      const dep = this.#get(depKey);
      return !!dep &&
        ownerRefs(dep.obj).some((r) => r.uid === uid && r.blockOwnerDeletion === true);
    });
    if (!blocking.length) this.#removeFinalizer(key, FOREGROUND);
  }

  #removeFinalizer(key: string, finalizer: string): void {
    const found = this.#get(key);
    if (!found) return;
    const next = clone(found.obj);
    next.metadata.finalizers = finalizers(next).filter((f) => f !== finalizer);
    if (!next.metadata.finalizers.length) delete next.metadata.finalizers;
    this.host.updateObject(found.def, next);
  }
}

/**
 * The policy of a DELETE (DeleteOptions body or query), validated as the
 * real server does; undefined when none is given.
 */
export function propagationPolicy(
  opts: Record<string, unknown>,
  q: URLSearchParams,
): Propagation | undefined {
  const policy = opts.propagationPolicy ?? q.get("propagationPolicy") ?? undefined;
  const orphanParam = q.get("orphanDependents");
  const orphan = opts.orphanDependents ??
    (orphanParam === null ? undefined : orphanParam === "true");
  const causes = [];
  if (policy !== undefined && orphan !== undefined) {
    causes.push(
      invalidValue(
        "propagationPolicy",
        policy,
        "orphanDependents and deletionPropagation cannot be both set",
      ),
    );
  }
  if (policy !== undefined && !["Foreground", "Background", "Orphan"].includes(String(policy))) {
    causes.push(
      notSupported("propagationPolicy", policy, ["Foreground", "Background", "Orphan", "nil"]),
    );
  }
  if (causes.length) throw newInvalid({ group: "meta.k8s.io", kind: "DeleteOptions" }, "", causes);
  if (orphan !== undefined) return orphan === true ? "Orphan" : "Background";
  return policy as Propagation | undefined;
}

/**
 * The finalizers an object keeps when deleted with `policy`: its own, with
 * `orphan`/`foregroundDeletion` as the policy asks (without a policy, those
 * it already has).
 */
export function deletionFinalizers(current: string[], policy: Propagation | undefined): string[] {
  const orphan = policy ? policy === "Orphan" : current.includes(ORPHAN);
  const foreground = policy ? policy === "Foreground" : current.includes(FOREGROUND);
  return [
    ...current.filter((f) => f !== ORPHAN && f !== FOREGROUND),
    ...(orphan ? [ORPHAN] : []),
    ...(foreground ? [FOREGROUND] : []),
  ];
}

/** The core/v1 Event the collector records about `obj` (in `default` for cluster-scoped ones). */
export function warningEvent(
  obj: KubeObject,
  def: ResourceDef,
  reason: string,
  message: string,
): KubeObject {
  const ns = def.namespaced ? obj.metadata.namespace ?? "" : "default";
  const ts = timestamp();
  const stamp = (Date.now() * 1e6 + Math.floor(Math.random() * 1e6)).toString(16);
  return {
    apiVersion: "v1",
    kind: "Event",
    metadata: { name: `${obj.metadata.name}.${stamp}`, namespace: ns },
    involvedObject: {
      kind: def.kind,
      apiVersion: apiVersionOf(def),
      ...(def.namespaced ? { namespace: ns } : {}),
      name: obj.metadata.name,
      uid: obj.metadata.uid,
    },
    reason,
    message,
    type: "Warning",
    source: { component: "garbage-collector-controller" },
    reportingComponent: "garbage-collector-controller",
    reportingInstance: "",
    firstTimestamp: ts,
    lastTimestamp: ts,
    count: 1,
  };
}
