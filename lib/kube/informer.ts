/**
 * Informer: list-then-watch one resource into a local cache and tell
 * handlers about adds, updates and deletes. Watches resume from the last
 * resourceVersion seen (events and bookmarks); 410 Gone relists and diffs the
 * cache; every other failure backs off exponentially and retries, forever,
 * until `stop()`. Nothing it does throws to the caller: a dead API server
 * only produces log lines and retries.
 * @module
 */

import { logger } from "../log.ts";
import { Backoff, sleep } from "../backoff.ts";
import { errorText, type KubeClient } from "./client.ts";
import { KubeApiError } from "./errors.ts";
import { type KubeObject, objectKey, type ResourceType, type WatchEvent } from "./types.ts";

const log = logger("kube/informer");

/** Callbacks of an {@link Informer}. Exceptions (and rejected promises) are logged, not fatal. */
export interface InformerHandlers<T extends KubeObject> {
  onAdd?(obj: T): void | Promise<void>;
  onUpdate?(oldObj: T, newObj: T): void | Promise<void>;
  /** The last known state of the deleted object. */
  onDelete?(obj: T): void | Promise<void>;
  /** After each (re)list has been applied to the cache. */
  onSync?(): void | Promise<void>;
  /** A list or watch failed (the informer retries by itself). */
  onError?(err: unknown): void;
}

/** Options of an {@link Informer}. */
export interface InformerOptions {
  /** Namespace to watch (namespaced resources; default all namespaces). */
  namespace?: string;
  labelSelector?: string;
  fieldSelector?: string;
  /** First retry delay after an error (ms, default 500). */
  backoffInitialMs?: number;
  /** Longest retry delay (ms, default 30 000). */
  backoffMaxMs?: number;
  /** Server-side duration of one watch request (s, default 300). */
  watchTimeoutSeconds?: number;
  /** A watch silent this long is considered dead (ms, default timeout + 30 s). */
  watchIdleTimeoutMs?: number;
}

/** Counters, mainly for tests and metrics. */
export interface InformerStats {
  lists: number;
  watches: number;
  errors: number;
  relists410: number;
}

/** A cache of one resource kept current by list+watch. */
export class Informer<T extends KubeObject = KubeObject> {
  readonly #client: KubeClient;
  readonly #res: ResourceType;
  readonly #opts: InformerOptions;
  readonly #cache = new Map<string, T>();
  readonly #handlers: InformerHandlers<T>[] = [];
  readonly #stats: InformerStats = { lists: 0, watches: 0, errors: 0, relists410: 0 };
  #rv = "";
  #synced = false;
  #syncWaiters: ((ok: boolean) => void)[] = [];
  #ac?: AbortController;
  #loop?: Promise<void>;
  #stopped = false;

  constructor(client: KubeClient, res: ResourceType, opts: InformerOptions = {}) {
    this.#client = client;
    this.#res = res;
    this.#opts = opts;
  }

  /**
   * Register handlers. When the cache is already synced, `onAdd` is called
   * for every cached object first (like client-go).
   */
  addHandlers(h: InformerHandlers<T>): void {
    this.#handlers.push(h);
    if (this.#synced && h.onAdd) {
      for (const obj of this.#cache.values()) this.#call("add", () => h.onAdd?.(obj));
    }
  }

  /** Start listing and watching in the background (idempotent). */
  start(): void {
    if (this.#loop) return;
    this.#stopped = false;
    this.#ac = new AbortController();
    this.#loop = this.#run(this.#ac.signal);
  }

  /** Stop; resolves once no request is running and no handler will be called again. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#ac?.abort();
    await this.#loop;
    this.#loop = undefined;
    for (const w of this.#syncWaiters.splice(0)) w(false);
  }

  /** Whether the first list has been applied to the cache. */
  hasSynced(): boolean {
    return this.#synced;
  }

  /** Resolve `true` once synced, or `false` if stopped (or `signal` aborts) before that. */
  waitForSync(signal?: AbortSignal): Promise<boolean> {
    if (this.#synced) return Promise.resolve(true);
    if (signal?.aborted || this.#stopped) return Promise.resolve(false);
    return new Promise((resolve) => {
      const done = (ok: boolean) => {
        signal?.removeEventListener("abort", onAbort);
        resolve(ok);
      };
      const onAbort = () => {
        this.#syncWaiters = this.#syncWaiters.filter((w) => w !== done);
        done(false);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#syncWaiters.push(done);
    });
  }

  /** A cached object by name (and namespace for namespaced resources). */
  get(name: string, namespace?: string): T | undefined {
    return this.#cache.get(namespace ? `${namespace}/${name}` : name);
  }

  /** Every cached object. */
  list(): T[] {
    return [...this.#cache.values()];
  }

  /** The last resourceVersion seen (list, event or bookmark). */
  get resourceVersion(): string {
    return this.#rv;
  }

  /** List/watch/error counters. */
  get stats(): Readonly<InformerStats> {
    return { ...this.#stats };
  }

  async #run(signal: AbortSignal): Promise<void> {
    const what = this.#res.group ? `${this.#res.plural}.${this.#res.group}` : this.#res.plural;
    const backoff = new Backoff({
      initialMs: this.#opts.backoffInitialMs ?? 500,
      maxMs: this.#opts.backoffMaxMs ?? 30_000,
    });
    let needList = true;
    let goneStreak = 0;
    while (!signal.aborted) {
      try {
        if (needList) {
          this.#stats.lists++;
          const l = await this.#client.list<T>(this.#res, {
            namespace: this.#opts.namespace,
            labelSelector: this.#opts.labelSelector,
            fieldSelector: this.#opts.fieldSelector,
            signal,
          });
          if (signal.aborted) break;
          this.#replace(l.items);
          this.#rv = l.metadata.resourceVersion ?? "";
          needList = false;
          this.#markSynced();
          log.v(4, "listed", { resource: what, count: l.items.length, resourceVersion: this.#rv });
        }
        this.#stats.watches++;
        const started = Date.now();
        let events = 0;
        for await (
          const ev of this.#client.watch<T>(this.#res, {
            namespace: this.#opts.namespace,
            labelSelector: this.#opts.labelSelector,
            fieldSelector: this.#opts.fieldSelector,
            resourceVersion: this.#rv,
            timeoutSeconds: this.#opts.watchTimeoutSeconds,
            idleTimeoutMs: this.#opts.watchIdleTimeoutMs,
            signal,
          })
        ) {
          if (signal.aborted) break;
          events++;
          this.#apply(ev);
        }
        if (signal.aborted) break;
        log.v(4, "watch ended, resuming", { resource: what, resourceVersion: this.#rv, events });
        if (events > 0 || Date.now() - started > 1000) {
          backoff.reset();
          goneStreak = 0;
        } else {
          // A watch that closes at once with nothing: do not spin.
          await sleep(backoff.next(), signal);
        }
      } catch (err) {
        if (signal.aborted) break;
        this.#stats.errors++;
        for (const h of this.#handlers) if (h.onError) this.#call("error", () => h.onError?.(err));
        if (err instanceof KubeApiError && err.isGone) {
          this.#stats.relists410++;
          log.info("watch resourceVersion expired, relisting", {
            resource: what,
            resourceVersion: this.#rv,
          });
          needList = true;
          // Relist at once the first time; repeated 410s without progress back off.
          if (goneStreak++ > 0) await sleep(backoff.next(), signal);
          continue;
        }
        const delay = backoff.next();
        log.warn(needList ? "list failed, retrying" : "watch failed, retrying", {
          resource: what,
          error: errorText(err),
          retryInMs: delay,
        });
        await sleep(delay, signal);
      }
    }
  }

  #markSynced(): void {
    const first = !this.#synced;
    this.#synced = true;
    if (first) { for (const w of this.#syncWaiters.splice(0)) w(true); }
    for (const h of this.#handlers) if (h.onSync) this.#call("sync", () => h.onSync?.());
  }

  #replace(items: T[]): void {
    const seen = new Set<string>();
    for (const obj of items) {
      const key = objectKey(obj);
      seen.add(key);
      this.#upsert(key, obj);
    }
    for (const [key, old] of [...this.#cache]) {
      if (seen.has(key)) continue;
      this.#cache.delete(key);
      for (const h of this.#handlers) if (h.onDelete) this.#call("delete", () => h.onDelete?.(old));
    }
  }

  #upsert(key: string, obj: T): void {
    const old = this.#cache.get(key);
    if (old && old.metadata.resourceVersion === obj.metadata.resourceVersion) return;
    this.#cache.set(key, obj);
    for (const h of this.#handlers) {
      if (old) {
        if (h.onUpdate) this.#call("update", () => h.onUpdate?.(old, obj));
      } else if (h.onAdd) this.#call("add", () => h.onAdd?.(obj));
    }
  }

  #apply(ev: WatchEvent<T>): void {
    const rv = ev.object.metadata?.resourceVersion;
    if (ev.type === "BOOKMARK") {
      if (rv) this.#rv = rv;
      return;
    }
    const key = objectKey(ev.object);
    if (ev.type === "DELETED") {
      const old = this.#cache.get(key) ?? ev.object;
      this.#cache.delete(key);
      for (const h of this.#handlers) if (h.onDelete) this.#call("delete", () => h.onDelete?.(old));
    } else {
      this.#upsert(key, ev.object);
    }
    if (rv) this.#rv = rv;
  }

  #call(kind: string, fn: () => void | Promise<void> | undefined): void {
    const report = (err: unknown) =>
      log.error("informer handler failed", {
        resource: this.#res.plural,
        handler: kind,
        error: errorText(err),
      });
    try {
      const r = fn();
      if (r instanceof Promise) r.catch(report);
    } catch (err) {
      report(err);
    }
  }
}
