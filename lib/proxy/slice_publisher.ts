/**
 * Publishes this replica's EndpointSlices, controller-runtime style: the
 * desired slice of a cluster is a pure function of what this replica serves
 * (`desiredSlice` in `lib/controller/slices.ts`), the observed ones come from
 * an informer of Tower's slices (only this replica's are looked at), and a
 * work queue keyed by cluster applies the difference: create, update, delete,
 * re-reading on a conflict. Every cluster with a slice of ours is queued at
 * start, so the stale slices of a previous container of this Pod go at once,
 * and everything is queued again every `resyncMs` to repair drift (a slice
 * deleted by hand, or by the leader while this replica's Lease looked dead).
 *
 * `withdraw()` is the first step of a graceful shutdown: nothing is desired
 * any more, every slice of ours is deleted, and it resolves once they are
 * gone, so kube-proxy stops sending new connections here before any socket
 * closes.
 * @module
 */

import { sleep } from "../backoff.ts";
import type { KubeClient } from "../kube/client.ts";
import { errorText } from "../kube/client.ts";
import { KubeApiError } from "../kube/errors.ts";
import type { Informer } from "../kube/informer.ts";
import { ENDPOINT_SLICES } from "../kube/types.ts";
import { logger } from "../log.ts";
import { WorkQueue } from "../controller/queue.ts";
import {
  clusterOfSlice,
  desiredSlice,
  type EndpointSliceObject,
  type ReplicaIdentity,
  replicaOfSlice,
  type ServedCluster,
  type SliceAction,
  sliceActions,
} from "../controller/slices.ts";

const log = logger("proxy/slices");

/** Options of a {@link SlicePublisher}. */
export interface SlicePublisherOptions {
  client: KubeClient;
  /** Tower's slices in the replica's namespace (any selector that includes this replica's). */
  slices: Informer<EndpointSliceObject>;
  replica: ReplicaIdentity;
  /** What this replica serves of `cluster` now (a live session and listening endpoints), if anything. */
  served(cluster: string): ServedCluster | undefined;
  /** Clusters this replica may serve (queued at start and at each resync). */
  clusters(): Iterable<string>;
  /** Concurrent writes (default 8). */
  workers?: number;
  /** Queue everything again this often (ms, default 60 000; 0: never). */
  resyncMs?: number;
  /** First retry delay of a failed write (ms, default 200). */
  retryInitialMs?: number;
}

/** Counters (tests, logs). */
export interface SlicePublisherStats {
  creates: number;
  updates: number;
  deletes: number;
  failures: number;
}

/** Keeps this replica's EndpointSlices equal to what it serves. */
export class SlicePublisher {
  readonly #o: SlicePublisherOptions;
  readonly #queue: WorkQueue;
  /** Cluster → this replica's slices of it, by name. */
  readonly #mine = new Map<string, Map<string, EndpointSliceObject>>();
  /** Slice name → uid of its last deletion the informer showed (a late write result is no news). */
  readonly #gone = new Map<string, string>();
  #withdrawing = false;
  #stopped = false;
  #ac?: AbortController;
  #workers: Promise<void>[] = [];
  #resync?: ReturnType<typeof setInterval>;
  readonly stats: SlicePublisherStats = { creates: 0, updates: 0, deletes: 0, failures: 0 };

  constructor(opts: SlicePublisherOptions) {
    this.#o = opts;
    this.#queue = new WorkQueue({ retryInitialMs: opts.retryInitialMs ?? 200, retryMaxMs: 10_000 });
    this.#queue.shutdown(); // opened by start()
    const track = (s: EndpointSliceObject, present: boolean) => {
      if (replicaOfSlice(s) !== opts.replica.name) return;
      const cluster = clusterOfSlice(s);
      if (!cluster) return;
      let m = this.#mine.get(cluster);
      if (present) {
        if (!m) this.#mine.set(cluster, m = new Map());
        m.set(s.metadata.name!, s);
        this.#gone.delete(s.metadata.name!);
      } else {
        m?.delete(s.metadata.name!);
        if (m?.size === 0) this.#mine.delete(cluster);
        if (s.metadata.uid) this.#gone.set(s.metadata.name!, s.metadata.uid);
      }
      this.#queue.add(cluster);
    };
    opts.slices.addHandlers({
      onAdd: (s) => track(s, true),
      onUpdate: (old, s) => {
        if (clusterOfSlice(old) !== clusterOfSlice(s)) track(old, false);
        track(s, true);
      },
      onDelete: (s) => track(s, false),
    });
  }

  /** Clusters with a slice of this replica (as the informer shows them). */
  published(): string[] {
    return [...this.#mine.keys()];
  }

  /** Whether `cluster` has a slice of this replica. */
  has(cluster: string): boolean {
    return this.#mine.has(cluster);
  }

  /** Queue `cluster` (what this replica serves of it may have changed). */
  changed(cluster: string): void {
    this.#queue.add(cluster);
  }

  /** Resolves when nothing is queued or being written. */
  whenIdle(): Promise<void> {
    return this.#queue.whenIdle();
  }

  /** Start the workers once the informer has listed (stale slices of ours are queued then). */
  async start(): Promise<void> {
    if (this.#ac) return;
    this.#ac = new AbortController();
    const signal = this.#ac.signal;
    if (!await this.#o.slices.waitForSync(signal)) return;
    this.#queue.reopen();
    this.#enqueueAll();
    const resync = this.#o.resyncMs ?? 60_000;
    if (resync > 0) {
      this.#resync = setInterval(() => {
        this.#refresh();
        this.#enqueueAll();
      }, resync);
    }
    for (let i = 0; i < (this.#o.workers ?? 8); i++) this.#workers.push(this.#work(signal));
  }

  /**
   * Forget the slices of ours the informer does not show: what this replica remembers of its
   * own writes must not outlive a deletion it missed (a slice it just created and not yet seen
   * is created again, answered 409 and read back).
   */
  #refresh(): void {
    for (const [cluster, m] of [...this.#mine]) {
      for (const name of [...m.keys()]) {
        if (!this.#o.slices.get(name, this.#o.replica.namespace)) this.#forget(cluster, name);
      }
    }
  }

  #enqueueAll(): void {
    for (const c of this.#mine.keys()) this.#queue.add(c);
    for (const c of this.#o.clusters()) this.#queue.add(c);
  }

  async #work(signal: AbortSignal): Promise<void> {
    for (;;) {
      const key = await this.#queue.get();
      if (key === undefined) return;
      try {
        await this.#sync(key, signal);
        this.#queue.forget(key);
      } catch (err) {
        if (signal.aborted) {
          this.#queue.done(key);
          return;
        }
        this.stats.failures++;
        const delay = this.#queue.addRateLimited(key);
        log.warn("Cannot publish the cluster's EndpointSlice, will retry", {
          cluster: key,
          err: errorText(err),
          retryInMs: delay,
        });
      }
      this.#queue.done(key);
    }
  }

  async #sync(cluster: string, signal: AbortSignal): Promise<void> {
    const served = this.#withdrawing ? undefined : this.#o.served(cluster);
    const desired = served && desiredSlice(served, this.#o.replica);
    const observed = [...this.#mine.get(cluster)?.values() ?? []];
    for (const action of sliceActions(desired, observed)) {
      await this.#apply(cluster, action, signal);
    }
  }

  async #apply(cluster: string, a: SliceAction, signal: AbortSignal): Promise<void> {
    const { client } = this.#o;
    const namespace = this.#o.replica.namespace;
    try {
      if (a.kind === "create") {
        const made = await client.create(ENDPOINT_SLICES, a.slice, { namespace, signal });
        this.stats.creates++;
        this.#remember(cluster, made as EndpointSliceObject);
        log.info("Published the cluster's EndpointSlice", {
          cluster,
          slice: a.slice.metadata.name,
          address: this.#o.replica.ip,
        });
      } else if (a.kind === "update") {
        const made = await client.update(ENDPOINT_SLICES, a.slice, { namespace, signal });
        this.stats.updates++;
        this.#remember(cluster, made as EndpointSliceObject);
        log.v(2, "updated EndpointSlice", { cluster, slice: a.slice.metadata.name });
      } else {
        await client.delete(ENDPOINT_SLICES, a.name, {
          namespace,
          signal,
          preconditions: a.uid ? { uid: a.uid } : undefined,
        });
        this.stats.deletes++;
        this.#forget(cluster, a.name);
        log.info("Withdrew the cluster's EndpointSlice", { cluster, slice: a.name });
      }
    } catch (err) {
      if (!(err instanceof KubeApiError)) throw err;
      if (a.kind === "delete" && (err.isNotFound || err.isConflict)) {
        this.#forget(cluster, a.name); // gone already (or a new one under that name: re-read)
        if (err.isConflict) await this.#reread(cluster, a.name, signal);
        return;
      }
      if (err.isConflict || err.isNotFound || err.status === 409) {
        // Our cache was behind: read the truth and let the queue try again.
        const name = a.kind === "delete" ? a.name : a.slice.metadata.name!;
        await this.#reread(cluster, name, signal);
        this.#queue.add(cluster);
        return;
      }
      throw err;
    }
  }

  async #reread(cluster: string, name: string, signal: AbortSignal): Promise<void> {
    const cur = await this.#o.client.tryGet<EndpointSliceObject>(ENDPOINT_SLICES, name, {
      namespace: this.#o.replica.namespace,
      signal,
    });
    if (cur && replicaOfSlice(cur) === this.#o.replica.name) this.#remember(cluster, cur);
    else this.#forget(cluster, name);
  }

  /** Note a write's result before the informer does (the next sync must not repeat it). */
  #remember(cluster: string, s: EndpointSliceObject): void {
    // The informer already showed this very object deleted (the slice was reaped while the
    // create was answered): remembering it would keep the cluster without a slice for good.
    if (s.metadata.uid && this.#gone.get(s.metadata.name!) === s.metadata.uid) return;
    let m = this.#mine.get(cluster);
    if (!m) this.#mine.set(cluster, m = new Map());
    const old = m.get(s.metadata.name!);
    // Never go back to an older version the informer delivers late.
    if (old && Number(old.metadata.resourceVersion) > Number(s.metadata.resourceVersion)) return;
    m.set(s.metadata.name!, s);
  }

  #forget(cluster: string, name: string): void {
    const m = this.#mine.get(cluster);
    m?.delete(name);
    if (m?.size === 0) this.#mine.delete(cluster);
  }

  /**
   * Delete every slice of this replica and publish none from now on; resolves once the deletes
   * are done (or `timeoutMs` passed).
   */
  async withdraw(timeoutMs = 10_000): Promise<void> {
    this.#withdrawing = true;
    if (!this.#ac) return;
    for (const c of this.#mine.keys()) this.#queue.add(c);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((r) =>
      timer = setTimeout(() => r("timeout"), timeoutMs)
    );
    const done = (async () => {
      while (this.#mine.size > 0 && !this.#stopped) {
        for (const c of this.#mine.keys()) this.#queue.add(c);
        await this.#queue.whenIdle();
        if (this.#mine.size > 0) await sleep(50);
      }
    })();
    const r = await Promise.race([done.then(() => "done" as const), timeout]);
    clearTimeout(timer);
    if (r === "timeout") {
      log.warn("EndpointSlices still published at shutdown", { clusters: this.#mine.size });
    } else log.info("Withdrew every EndpointSlice of this replica");
  }

  /** Stop the workers (the slices stay: {@link withdraw} first to remove them). */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#resync);
    this.#ac?.abort();
    this.#queue.shutdown();
    await Promise.all(this.#workers);
    this.#workers = [];
  }
}
