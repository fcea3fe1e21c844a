/**
 * `KubeClient`: a small typed REST client over Deno's `fetch` for any
 * resource described by a {@link ResourceType}, cluster-scoped or namespaced:
 * get/list (paginated)/create/update/patch (merge, JSON, strategic)/delete,
 * streaming watch as an abortable async iterator, `updateWithRetry` for
 * optimistic-concurrency conflicts, and retry with backoff on 429/5xx and
 * network errors for calls that are safe to repeat.
 * @module
 */

import { logger } from "../log.ts";
import { backoffDelay, sleep } from "../backoff.ts";
import type { KubeConnection } from "./config.ts";
import { KubeApiError } from "./errors.ts";
import {
  apiVersionOf,
  type KubeList,
  type KubeObject,
  type ResourceType,
  type StatusBody,
  type WatchEvent,
  type WatchEventType,
} from "./types.ts";

const log = logger("kube/client");

/** Client-wide knobs. */
export interface KubeClientOptions {
  /** Extra attempts after a retryable failure (default 4). */
  retries?: number;
  /** First retry delay (ms, default 200). */
  retryInitialMs?: number;
  /** Longest retry delay, also caps `Retry-After` (ms, default 5000). */
  retryMaxMs?: number;
  /** Per-request timeout for non-watch calls (ms, default 30 000). */
  requestTimeoutMs?: number;
  /** `User-Agent` header (default `tower`). */
  userAgent?: string;
}

/** Options common to every call. */
export interface CallOptions {
  /** Namespace of a namespaced resource (defaults to `metadata.namespace` of a body). */
  namespace?: string;
  /** Abort the call. */
  signal?: AbortSignal;
  /** Override the per-request timeout (ms). */
  timeoutMs?: number;
}

/** Options of {@link KubeClient.list}. */
export interface ListOptions extends CallOptions {
  labelSelector?: string;
  fieldSelector?: string;
  /** Page size; every page is fetched and concatenated. */
  limit?: number;
}

/** Options of {@link KubeClient.watch}. */
export interface WatchOptions extends CallOptions {
  /** Start after this resourceVersion (from a list or a previous event). */
  resourceVersion?: string;
  labelSelector?: string;
  fieldSelector?: string;
  /** Server-side watch duration (default 300 s). */
  timeoutSeconds?: number;
  /** Ask for BOOKMARK events (default true). */
  allowWatchBookmarks?: boolean;
  /** Give up when nothing arrives for this long (ms, default timeoutSeconds·1000 + 30 000). */
  idleTimeoutMs?: number;
}

/** Options of {@link KubeClient.delete}. */
export interface DeleteOptions extends CallOptions {
  propagationPolicy?: "Foreground" | "Background" | "Orphan";
  gracePeriodSeconds?: number;
  preconditions?: { resourceVersion?: string; uid?: string };
}

/** Options of {@link KubeClient.update} and {@link KubeClient.patch}. */
export interface WriteOptions extends CallOptions {
  /** Write a subresource, e.g. `status`. */
  subresource?: string;
}

/** Options of {@link KubeClient.updateWithRetry}. */
export interface UpdateWithRetryOptions extends WriteOptions {
  /** Attempts in total on 409 Conflict (default 5). */
  attempts?: number;
}

/** Patch flavours: merge (RFC 7386), json (RFC 6902), strategic (Kubernetes). */
export type PatchType = "merge" | "json" | "strategic";

/** One RFC 6902 operation. */
export interface JsonPatchOp {
  op: "add" | "remove" | "replace" | "move" | "copy" | "test";
  path: string;
  value?: unknown;
  from?: string;
}

const PATCH_CONTENT_TYPES: Record<PatchType, string> = {
  merge: "application/merge-patch+json",
  json: "application/json-patch+json",
  strategic: "application/strategic-merge-patch+json",
};

/**
 * When a failed call may be sent again: `idempotent` on 429, 5xx and network
 * errors; `rejected-only` only on 429 (the server refused it unprocessed).
 */
export type RetryPolicy = "idempotent" | "rejected-only";

/** A raw request for {@link KubeClient.request}. */
export interface RawRequest {
  /** HTTP method. */
  method: string;
  path: string;
  query?: URLSearchParams;
  body?: unknown;
  contentType?: string;
  retry: RetryPolicy;
  signal?: AbortSignal;
  timeoutMs?: number;
}

/** Deep equality of JSON values (key order ignored). */
export function jsonEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== typeof b || a === null || b === null || typeof a !== "object") return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) {
    const bb = b as unknown[];
    return a.length === bb.length && a.every((v, i) => jsonEqual(v, bb[i]));
  }
  const ao = a as Record<string, unknown>;
  const bo = b as Record<string, unknown>;
  const ak = Object.keys(ao).filter((k) => ao[k] !== undefined);
  const bk = Object.keys(bo).filter((k) => bo[k] !== undefined);
  return ak.length === bk.length && ak.every((k) => jsonEqual(ao[k], bo[k]));
}

/** An error's message followed by its causes' (fetch hides "connection refused" in `cause`). */
export function errorText(err: unknown): string {
  const parts: string[] = [];
  let e: unknown = err;
  for (let i = 0; i < 4 && e !== undefined && e !== null; i++) {
    const msg = e instanceof Error ? e.message : String(e);
    if (msg && !parts.includes(msg)) parts.push(msg);
    e = e instanceof Error ? e.cause : undefined;
  }
  return parts.join(": ");
}

/** The collection path of `res` (namespace given: that namespace; else all namespaces). */
export function resourcePath(
  res: ResourceType,
  namespace?: string,
  name?: string,
  subresource?: string,
): string {
  let p = res.group === "" ? `/api/${res.version}` : `/apis/${res.group}/${res.version}`;
  if (res.namespaced && namespace) p += `/namespaces/${encodeURIComponent(namespace)}`;
  p += `/${res.plural}`;
  if (name !== undefined) {
    if (name === "") throw new Error(`${res.plural}: empty object name`);
    p += `/${encodeURIComponent(name)}`;
  }
  if (subresource) p += `/${subresource}`;
  return p;
}

/** The REST client. */
export class KubeClient {
  readonly #conn: KubeConnection;
  readonly #retries: number;
  readonly #retryInitialMs: number;
  readonly #retryMaxMs: number;
  readonly #timeoutMs: number;
  readonly #userAgent: string;

  constructor(conn: KubeConnection, opts: KubeClientOptions = {}) {
    this.#conn = conn;
    this.#retries = opts.retries ?? 4;
    this.#retryInitialMs = opts.retryInitialMs ?? 200;
    this.#retryMaxMs = opts.retryMaxMs ?? 5000;
    this.#timeoutMs = opts.requestTimeoutMs ?? 30_000;
    this.#userAgent = opts.userAgent ?? "tower";
  }

  /** The connection this client uses. */
  get connection(): KubeConnection {
    return this.#conn;
  }

  #ns(res: ResourceType, given: string | undefined, what: string): string | undefined {
    if (!res.namespaced) return undefined;
    if (!given) throw new Error(`${res.plural} ${what}: namespace required`);
    return given;
  }

  /** Get one object; throws {@link KubeApiError} (`isNotFound`) when absent. */
  async get<T extends KubeObject = KubeObject>(
    res: ResourceType,
    name: string,
    opts: CallOptions = {},
  ): Promise<T> {
    const ns = this.#ns(res, opts.namespace, name);
    return await this.request<T>({
      method: "GET",
      path: resourcePath(res, ns, name),
      retry: "idempotent",
      signal: opts.signal,
      timeoutMs: opts.timeoutMs,
    });
  }

  /** Get one object, or `undefined` when it does not exist. */
  async tryGet<T extends KubeObject = KubeObject>(
    res: ResourceType,
    name: string,
    opts: CallOptions = {},
  ): Promise<T | undefined> {
    try {
      return await this.get<T>(res, name, opts);
    } catch (err) {
      if (err instanceof KubeApiError && err.isNotFound) return undefined;
      throw err;
    }
  }

  /**
   * List objects (all namespaces of a namespaced resource when no namespace is
   * given), following `continue` tokens; the result's resourceVersion is the
   * first page's, suitable to start a watch.
   */
  async list<T extends KubeObject = KubeObject>(
    res: ResourceType,
    opts: ListOptions = {},
  ): Promise<KubeList<T>> {
    const path = resourcePath(res, res.namespaced ? opts.namespace : undefined);
    let cont: string | undefined;
    let first: KubeList<T> | undefined;
    const items: T[] = [];
    for (let page = 0; page < 100_000; page++) {
      const q = new URLSearchParams();
      if (opts.labelSelector) q.set("labelSelector", opts.labelSelector);
      if (opts.fieldSelector) q.set("fieldSelector", opts.fieldSelector);
      if (opts.limit) q.set("limit", String(opts.limit));
      if (cont) q.set("continue", cont);
      const l = await this.request<KubeList<T>>({
        method: "GET",
        path,
        query: q,
        retry: "idempotent",
        signal: opts.signal,
        timeoutMs: opts.timeoutMs,
      });
      first ??= l;
      items.push(...(l.items ?? []));
      cont = l.metadata?.continue;
      if (!cont) break;
    }
    const out = first as KubeList<T>;
    return {
      ...out,
      metadata: { resourceVersion: out.metadata?.resourceVersion },
      items,
    };
  }

  /** Create an object (fills `apiVersion`/`kind` from `res` when missing). */
  async create<T extends KubeObject = KubeObject>(
    res: ResourceType,
    obj: T,
    opts: CallOptions = {},
  ): Promise<T> {
    const ns = this.#ns(res, opts.namespace ?? obj.metadata.namespace, "create");
    const body = { apiVersion: apiVersionOf(res), ...(res.kind ? { kind: res.kind } : {}), ...obj };
    return await this.request<T>({
      method: "POST",
      path: resourcePath(res, ns),
      body,
      retry: "rejected-only",
      signal: opts.signal,
      timeoutMs: opts.timeoutMs,
    });
  }

  /**
   * Replace an object (PUT). With `metadata.resourceVersion` set the write is
   * conditional: a concurrent change gives a 409 (`isConflict`).
   */
  async update<T extends KubeObject = KubeObject>(
    res: ResourceType,
    obj: T,
    opts: WriteOptions = {},
  ): Promise<T> {
    const name = obj.metadata.name;
    if (!name) throw new Error(`${res.plural} update: metadata.name required`);
    const ns = this.#ns(res, opts.namespace ?? obj.metadata.namespace, name);
    const body = { apiVersion: apiVersionOf(res), ...(res.kind ? { kind: res.kind } : {}), ...obj };
    return await this.request<T>({
      method: "PUT",
      path: resourcePath(res, ns, name, opts.subresource),
      body,
      retry: obj.metadata.resourceVersion ? "idempotent" : "rejected-only",
      signal: opts.signal,
      timeoutMs: opts.timeoutMs,
    });
  }

  /** Patch an object: `merge` takes a partial object, `json` a list of operations. */
  async patch<T extends KubeObject = KubeObject>(
    res: ResourceType,
    name: string,
    patch: Record<string, unknown> | JsonPatchOp[],
    type: PatchType = "merge",
    opts: WriteOptions = {},
  ): Promise<T> {
    if ((type === "json") !== Array.isArray(patch)) {
      throw new Error(
        `${res.plural} ${name}: ${type} patch needs ${type === "json" ? "an array" : "an object"}`,
      );
    }
    const ns = this.#ns(res, opts.namespace, name);
    return await this.request<T>({
      method: "PATCH",
      path: resourcePath(res, ns, name, opts.subresource),
      body: patch,
      contentType: PATCH_CONTENT_TYPES[type],
      retry: type === "json" ? "rejected-only" : "idempotent",
      signal: opts.signal,
      timeoutMs: opts.timeoutMs,
    });
  }

  /** Delete an object; throws `isNotFound` when it is already gone. */
  async delete(res: ResourceType, name: string, opts: DeleteOptions = {}): Promise<void> {
    const ns = this.#ns(res, opts.namespace, name);
    const body: Record<string, unknown> = { apiVersion: "v1", kind: "DeleteOptions" };
    if (opts.propagationPolicy) body.propagationPolicy = opts.propagationPolicy;
    if (opts.gracePeriodSeconds !== undefined) body.gracePeriodSeconds = opts.gracePeriodSeconds;
    if (opts.preconditions) body.preconditions = opts.preconditions;
    await this.request<unknown>({
      method: "DELETE",
      path: resourcePath(res, ns, name),
      body,
      retry: "idempotent",
      signal: opts.signal,
      timeoutMs: opts.timeoutMs,
    });
  }

  /**
   * Read-modify-write with optimistic concurrency: get the object, let
   * `mutate` change it (a copy; return `undefined` or an equal object for "no
   * change", which skips the write), PUT it, and on 409 Conflict re-read and
   * try again, at most `attempts` times. Returns the stored object.
   */
  async updateWithRetry<T extends KubeObject = KubeObject>(
    res: ResourceType,
    name: string,
    mutate: (obj: T) => T | undefined | void | Promise<T | undefined | void>,
    opts: UpdateWithRetryOptions = {},
  ): Promise<T> {
    const attempts = Math.max(1, opts.attempts ?? 5);
    let lastErr: unknown;
    for (let i = 0; i < attempts; i++) {
      const cur = await this.get<T>(res, name, opts);
      const copy = structuredClone(cur);
      const next = (await mutate(copy)) ?? undefined;
      if (next === undefined || jsonEqual(next, cur)) return cur;
      next.metadata.resourceVersion = cur.metadata.resourceVersion;
      try {
        return await this.update<T>(res, next, opts);
      } catch (err) {
        if (!(err instanceof KubeApiError && err.isConflict)) throw err;
        lastErr = err;
        log.v(4, "update conflict, re-reading", { resource: res.plural, name, attempt: i + 1 });
        await sleep(backoffDelay(i, { initialMs: 10, maxMs: this.#retryMaxMs }), opts.signal);
        opts.signal?.throwIfAborted();
      }
    }
    throw new Error(
      `${res.plural} ${name}: update still conflicting after ${attempts} attempts: ${
        (lastErr as Error).message
      }`,
    );
  }

  /**
   * Watch a collection (`?watch=true`): yields ADDED/MODIFIED/DELETED/BOOKMARK
   * events until the server ends the stream (then the iterator completes) or
   * `signal` aborts (completes quietly). ERROR events (e.g. 410 Expired) and
   * HTTP errors are thrown as {@link KubeApiError}; a stream silent for
   * `idleTimeoutMs` is treated as dead and throws.
   */
  async *watch<T extends KubeObject = KubeObject>(
    res: ResourceType,
    opts: WatchOptions = {},
  ): AsyncGenerator<WatchEvent<T>, void, undefined> {
    const q = new URLSearchParams({ watch: "true" });
    if (opts.resourceVersion) q.set("resourceVersion", opts.resourceVersion);
    if (opts.allowWatchBookmarks ?? true) q.set("allowWatchBookmarks", "true");
    const timeoutSeconds = opts.timeoutSeconds ?? 300;
    q.set("timeoutSeconds", String(timeoutSeconds));
    if (opts.labelSelector) q.set("labelSelector", opts.labelSelector);
    if (opts.fieldSelector) q.set("fieldSelector", opts.fieldSelector);
    const path = resourcePath(res, res.namespaced ? opts.namespace : undefined);
    const context = `watch ${path}`;
    if (opts.signal?.aborted) return;

    const ac = new AbortController();
    const idleMs = opts.idleTimeoutMs ?? timeoutSeconds * 1000 + 30_000;
    let idle = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        idle = true;
        ac.abort();
      }, idleMs);
    };
    const onAbort = () => ac.abort();
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    let reader: ReadableStreamDefaultReader<string> | undefined;
    let resp: Response | undefined;
    try {
      arm();
      const headers = await this.#headers();
      resp = await fetch(`${this.#conn.server}${path}?${q}`, {
        method: "GET",
        headers,
        signal: ac.signal,
        client: this.#conn.httpClient,
      });
      if (!resp.ok) {
        const text = await resp.text();
        throw KubeApiError.fromResponse("GET", `${path}?watch`, resp.status, text);
      }
      if (!resp.body) throw new Error(`${context}: response without body`);
      reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        arm();
        buf += value;
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (line === "") continue;
          let ev: { type?: string; object?: unknown };
          try {
            ev = JSON.parse(line);
          } catch {
            throw new Error(`${context}: malformed event line: ${line.slice(0, 100)}`);
          }
          if (ev.type === "ERROR") {
            throw KubeApiError.fromStatus(context, (ev.object ?? {}) as StatusBody);
          }
          if (!ev.object || typeof ev.object !== "object") {
            throw new Error(`${context}: event without object: ${line.slice(0, 100)}`);
          }
          yield { type: ev.type as WatchEventType, object: ev.object as T };
        }
      }
    } catch (err) {
      if (opts.signal?.aborted) return;
      if (idle) {
        throw new Error(`${context}: no data for ${idleMs} ms, assuming the stream is dead`);
      }
      if (err instanceof KubeApiError) throw err;
      const msg = errorText(err);
      if (msg.startsWith(context)) throw err;
      throw new Error(`${context}: ${msg}`, { cause: err });
    } finally {
      clearTimeout(timer);
      opts.signal?.removeEventListener("abort", onAbort);
      // Releasing the connection of a watch that is over: a failure here changes nothing.
      if (reader) {
        await reader.cancel().catch(() => {});
      } else if (resp?.body && !resp.bodyUsed) {
        await resp.body.cancel().catch(() => {});
      }
      ac.abort();
    }
  }

  async #headers(): Promise<Record<string, string>> {
    return {
      "User-Agent": this.#userAgent,
      Accept: "application/json",
      ...await this.#conn.headers(),
    };
  }

  /**
   * Send one request with retries per policy and return the parsed JSON body
   * (or `undefined` for an empty body). Lower-level than the typed methods.
   */
  async request<T>(req: RawRequest): Promise<T> {
    const what = `${req.method} ${req.path}`;
    for (let attempt = 0;; attempt++) {
      req.signal?.throwIfAborted();
      let retryAfterMs = 0;
      let err: unknown;
      try {
        return await this.#once<T>(req);
      } catch (e) {
        err = e;
      }
      if (req.signal?.aborted) throw err;
      let retryable: boolean;
      if (err instanceof KubeApiError) {
        retryable = err.status === 429 || (req.retry === "idempotent" && err.isRetryable);
        if (err.retryAfterSeconds) retryAfterMs = err.retryAfterSeconds * 1000;
      } else {
        // Network failure or timeout: the request may have been applied.
        retryable = req.retry === "idempotent";
      }
      if (!retryable || attempt >= this.#retries) throw err;
      const delay = Math.min(
        this.#retryMaxMs,
        Math.max(
          retryAfterMs,
          backoffDelay(attempt, { initialMs: this.#retryInitialMs, maxMs: this.#retryMaxMs }),
        ),
      );
      log.v(4, "retrying request", {
        request: what,
        attempt: attempt + 1,
        delayMs: delay,
        error: String(err),
      });
      await sleep(delay, req.signal);
    }
  }

  async #once<T>(req: RawRequest): Promise<T> {
    const what = `${req.method} ${req.path}`;
    const timeout = AbortSignal.timeout(req.timeoutMs ?? this.#timeoutMs);
    const signal = req.signal ? AbortSignal.any([req.signal, timeout]) : timeout;
    const headers = await this.#headers();
    if (req.body !== undefined) headers["Content-Type"] = req.contentType ?? "application/json";
    const url = `${this.#conn.server}${req.path}${req.query?.size ? `?${req.query}` : ""}`;
    let resp: Response;
    let text: string;
    try {
      resp = await fetch(url, {
        method: req.method,
        headers,
        body: req.body === undefined ? undefined : JSON.stringify(req.body),
        signal,
        client: this.#conn.httpClient,
      });
      text = await resp.text();
    } catch (err) {
      if (req.signal?.aborted) throw err;
      if (timeout.aborted) throw new Error(`${what}: timed out`, { cause: err });
      throw new Error(`${what}: ${errorText(err)}`, { cause: err });
    }
    if (log.enabled(6)) log.v(6, "request", { request: what, status: resp.status });
    if (!resp.ok) {
      throw KubeApiError.fromResponse(
        req.method,
        req.path,
        resp.status,
        text,
        resp.headers.get("Retry-After"),
      );
    }
    if (text === "") return undefined as T;
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new Error(`${what}: response is not JSON: ${text.slice(0, 100)}`);
    }
  }
}
