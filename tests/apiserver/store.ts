/**
 * In-memory object storage with etcd-like revisions: every write bumps one
 * global resourceVersion, a bounded history of changes feeds watches (older
 * revisions are "compacted" and yield 410 Gone), and subscribers see each
 * change as it is committed.
 * @module
 */

import { clone, type KubeObject } from "./types.ts";

/** A committed change. */
export interface StoreEvent {
  type: "ADDED" | "MODIFIED" | "DELETED";
  /** Storage key of the resource (see `storageKeyOf`). */
  resource: string;
  /** The object after the change (for DELETED: as it was, with the deletion revision). */
  object: KubeObject;
  /** The object before the change (MODIFIED only). */
  prev?: KubeObject;
  /** Revision of this change. */
  rv: number;
}

/** A live subscription to changes. */
export interface Subscription {
  /** Stop receiving. */
  close(): void;
}

function keyOf(resource: string, namespace: string, name: string): string {
  return `${resource}\u0000${namespace}\u0000${name}`;
}

/** The object storage. */
export class Store {
  #objects = new Map<string, KubeObject>();
  #rv: number;
  #history: StoreEvent[] = [];
  /** Changes with rv ≤ this are no longer in history. */
  #compacted: number;
  #subs = new Set<(e: StoreEvent) => void>();

  /**
   * @param historyLimit how many changes to keep for watches
   * @param startRv first revision (a restart that loses state keeps counting up)
   */
  constructor(readonly historyLimit = 5000, startRv = 1) {
    this.#rv = startRv;
    this.#compacted = startRv;
  }

  /** Current (latest committed) revision. */
  get revision(): number {
    return this.#rv;
  }

  /** Oldest revision a watch may start from. */
  get compactedRevision(): number {
    return this.#compacted;
  }

  /** A copy of the object, or undefined. */
  get(resource: string, namespace: string, name: string): KubeObject | undefined {
    const o = this.#objects.get(keyOf(resource, namespace, name));
    return o ? clone(o) : undefined;
  }

  /**
   * Copies of all objects of a resource (optionally one namespace) that
   * `filter` accepts (it sees the stored object: it must not change it),
   * sorted by namespace/name.
   */
  list(
    resource: string,
    namespace?: string,
    filter: (o: KubeObject) => boolean = () => true,
  ): KubeObject[] {
    const prefix = namespace === undefined
      ? `${resource}\u0000`
      : `${resource}\u0000${namespace}\u0000`;
    const out: KubeObject[] = [];
    for (const [k, o] of this.#objects) if (k.startsWith(prefix) && filter(o)) out.push(clone(o));
    return out.sort((a, b) =>
      `${a.metadata.namespace ?? ""}/${a.metadata.name}`.localeCompare(
        `${b.metadata.namespace ?? ""}/${b.metadata.name}`,
      )
    );
  }

  /**
   * The stored objects of a resource themselves, unsorted and uncopied, for a read-only scan
   * (a Service write looks at every other Service's allocations: copying and sorting 10,000 of
   * them per write made creating 10,000 Services take many minutes). Callers must not change
   * them.
   */
  *peek(resource: string): Iterable<Readonly<KubeObject>> {
    const prefix = `${resource}\u0000`;
    for (const [k, o] of this.#objects) if (k.startsWith(prefix)) yield o;
  }

  /**
   * Commit an object (create or replace) and return the stored copy with its
   * new resourceVersion.
   */
  put(resource: string, obj: KubeObject): KubeObject {
    const key = keyOf(resource, obj.metadata.namespace ?? "", obj.metadata.name ?? "");
    const prev = this.#objects.get(key);
    const rv = ++this.#rv;
    const stored = clone(obj);
    stored.metadata.resourceVersion = String(rv);
    this.#objects.set(key, stored);
    this.#emit(
      prev
        ? { type: "MODIFIED", resource, object: clone(stored), prev: clone(prev), rv }
        : { type: "ADDED", resource, object: clone(stored), rv },
    );
    return clone(stored);
  }

  /** Remove an object; returns it with the deletion revision, or undefined. */
  remove(resource: string, namespace: string, name: string): KubeObject | undefined {
    const key = keyOf(resource, namespace, name);
    const old = this.#objects.get(key);
    if (!old) return undefined;
    this.#objects.delete(key);
    const rv = ++this.#rv;
    const gone = clone(old);
    gone.metadata.resourceVersion = String(rv);
    this.#emit({ type: "DELETED", resource, object: clone(gone), rv });
    return gone;
  }

  /** Changes of `resource` with revision > `sinceRv` (caller checks compaction first). */
  eventsSince(resource: string, sinceRv: number): StoreEvent[] {
    return this.#history.filter((e) => e.rv > sinceRv && e.resource === resource)
      .map((e) => ({ ...e, object: clone(e.object), prev: e.prev && clone(e.prev) }));
  }

  /** Forget all history up to now: watches from an older revision get 410 Gone. */
  compact(): void {
    this.#history = [];
    this.#compacted = this.#rv;
  }

  /** Drop every object (history is compacted too). */
  clear(): void {
    this.#objects.clear();
    this.compact();
  }

  /** Receive every future change. */
  subscribe(fn: (e: StoreEvent) => void): Subscription {
    this.#subs.add(fn);
    return { close: () => this.#subs.delete(fn) };
  }

  #emit(e: StoreEvent): void {
    this.#history.push(e);
    if (this.#history.length > this.historyLimit) {
      const dropped = this.#history.splice(0, this.#history.length - this.historyLimit);
      this.#compacted = dropped[dropped.length - 1].rv;
    }
    for (const fn of [...this.#subs]) {
      try {
        fn({ ...e, object: clone(e.object), prev: e.prev && clone(e.prev) });
      } catch {
        // a subscriber's failure must not break the write
      }
    }
  }
}
