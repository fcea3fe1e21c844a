/**
 * The transport-agnostic core of the test API server: routes a request
 * (`ApiRequest`) to discovery, list/watch/get/create/update/patch/delete of
 * any served resource with the real server's semantics (resourceVersion,
 * uid, generation, conflicts, finalizers, selectors, status subresource,
 * CRD schemas), and returns an `ApiResponse` whose body may be a stream
 * (watch, follow logs).
 * @module
 */

import { parse as parseYaml } from "yaml";
import * as discovery from "./discovery.ts";
import { fromEventsV1, toEventsV1 } from "./events.ts";
import { Faults } from "./faults.ts";
import { fixtures } from "./fixtures.ts";
import { deletionFinalizers, GarbageCollector, propagationPolicy, warningEvent } from "./gc.ts";
import { applyDefaults, atomicLists, prepareWrite } from "./kinds.ts";
import { podLogResponse } from "./logs.ts";
import { jsonPatch, mergePatch, strategicMergePatch } from "./patch.ts";
import { defsFromCrd, Registry } from "./registry.ts";
import { pruneAndValidate } from "./schema.ts";
import { parseFieldSelector, parseLabelSelector, selectableFields } from "./selectors.ts";
import { DEFAULT_NETWORK, type ServiceNetwork } from "./services.ts";
import { Store } from "./store.ts";
import { partialMetadata, toTable } from "./tables.ts";
import {
  alreadyExists,
  ApiError,
  apiVersionOf,
  badRequest,
  clone,
  conflict,
  invalid,
  type JsonObject,
  type KubeObject,
  notFound,
  type ResourceDef,
  sameJson,
  storageKeyOf,
  timestamp,
} from "./types.ts";
import { validateName } from "./validation.ts";
import { type WatchContext, watchResponse } from "./watch.ts";

type Obj = Record<string, unknown>;

/** Who is calling (from the client certificate or the token). */
export interface UserInfo {
  name: string;
  groups: string[];
}

/** A request, already authenticated, with its whole body. */
export interface ApiRequest {
  method: string;
  url: URL;
  headers: Headers;
  body: Uint8Array;
  /** Aborted when the client goes away (ends streams). */
  signal: AbortSignal;
  user: UserInfo;
}

/** A response; `body` is a stream for watches and followed logs. */
export interface ApiResponse {
  status: number;
  headers: Record<string, string>;
  body: string | ReadableStream<Uint8Array>;
}

/** Options of the core. */
export interface CoreOptions {
  /** Service CIDR and node-port range. */
  network?: ServiceNetwork;
  /** How often watches with `allowWatchBookmarks=true` get a BOOKMARK (ms, default 1000). */
  bookmarkIntervalMs?: number;
  /** Extra namespaces to create at start (e.g. `kubesphere-system`). */
  namespaces?: string[];
  /** How many changes the watch history keeps (older revisions → 410 Gone). */
  historyLimit?: number;
  /** Interval between lines of `pods/<p>/log?follow=true` (ms, default 200). */
  logLineIntervalMs?: number;
  /** `host:port` advertised in `/api`. */
  serverAddress?: string;
  /**
   * Accept loopback addresses (127.0.0.0/8, ::1) in EndpointSlices, which the
   * real server refuses (422): for tests whose "pods" are processes on
   * 127.0.0.x. Default false.
   */
  allowLoopbackEndpoints?: boolean;
}

const JSON_HEADERS = { "content-type": "application/json" };

function jsonResponse(status: number, body: unknown, headers: Record<string, string> = {}) {
  return { status, headers: { ...JSON_HEADERS, ...headers }, body: JSON.stringify(body) };
}

/** A `Status` response for an error. */
export function errorResponse(err: ApiError): ApiResponse {
  const headers: Record<string, string> = {};
  if (err.details?.retryAfterSeconds) {
    headers["retry-after"] = String(err.details.retryAfterSeconds);
  }
  return jsonResponse(err.code, err.toStatus(), headers);
}

function randomSuffix(n = 5): string {
  const alphabet = "bcdfghjklmnpqrstvwxz2456789";
  const b = crypto.getRandomValues(new Uint8Array(n));
  return Array.from(b, (x) => alphabet[x % alphabet.length]).join("");
}

function withoutKeys(o: KubeObject, keys: string[]): Obj {
  const c: Obj = { ...o };
  for (const k of keys) delete c[k];
  return c;
}

/**
 * Whether the real server maintains `metadata.generation` for this resource
 * (custom resources and CRDs do; ConfigMaps, Services, Leases… do not).
 */
function tracksGeneration(def: ResourceDef): boolean {
  return !!def.generation || !!def.crd || def.kind === "CustomResourceDefinition";
}

/** Whether a PUT without `metadata.resourceVersion` is accepted (not for CRs and CRDs). */
function allowsUnconditionalUpdate(def: ResourceDef): boolean {
  return !def.crd && def.kind !== "CustomResourceDefinition";
}

/** A parsed resource path. */
interface Target {
  def: ResourceDef;
  namespace: string;
  name?: string;
  sub?: string;
}

/** The core server. */
export class ApiCore {
  readonly registry = new Registry();
  readonly store: Store;
  readonly faults = new Faults();
  readonly network: ServiceNetwork;
  readonly bookmarkIntervalMs: number;
  readonly logLineIntervalMs: number;
  serverAddress: string;
  /** Open follow-log streams (for tests: a stream ends when its client goes away). */
  openLogStreams = 0;
  #logIdle: (() => void)[] = [];
  /** Watches refused with an ERROR 410 Expired event (from a compacted resourceVersion). */
  expiredWatches = 0;
  /** The garbage collector (ownerReferences), run before each write request is answered. */
  readonly gc: GarbageCollector;

  constructor(readonly opts: CoreOptions = {}, store?: Store) {
    this.network = opts.network ?? DEFAULT_NETWORK;
    this.bookmarkIntervalMs = opts.bookmarkIntervalMs ?? 1000;
    this.logLineIntervalMs = opts.logLineIntervalMs ?? 200;
    this.serverAddress = opts.serverAddress ?? "127.0.0.1:6443";
    this.store = store ?? new Store(opts.historyLimit ?? 20000);
    if (!store) this.loadFixtures();
    else this.#reloadCrds();
    this.gc = new GarbageCollector({
      registry: this.registry,
      store: this.store,
      deleteObject: (def, obj, policy) =>
        this.#delete(def, obj.metadata.namespace ?? "", obj.metadata.name!, {
          propagationPolicy: policy,
          preconditions: { uid: obj.metadata.uid },
        }, new URLSearchParams()),
      updateObject: (def, obj) =>
        this.#update(
          def,
          obj.metadata.namespace ?? "",
          obj.metadata.name!,
          obj,
          new URLSearchParams(),
          false,
        ),
      warn: (obj, def, reason, message) => this.#warn(obj, def, reason, message),
    });
  }

  /** Record a Warning Event about `obj` as a controller would (best effort). */
  #warn(obj: KubeObject, def: ResourceDef, reason: string, message: string): void {
    const event = warningEvent(obj, def, reason, message);
    try {
      this.createObject(this.registry.find("", "v1", "events")!, event.metadata.namespace!, event);
    } catch {
      // e.g. the namespace is going away: the event is lost, as a real recorder's may be
    }
  }

  /** Resolves when no follow-log stream is open. */
  logStreamsIdle(): Promise<void> {
    if (this.openLogStreams === 0) return Promise.resolve();
    return new Promise((resolve) => this.#logIdle.push(resolve));
  }

  /** Create the fixture objects. */
  loadFixtures(): void {
    for (const f of fixtures(this.opts.namespaces)) {
      const def = this.registry.find(...f.resource)!;
      this.createObject(def, f.object.metadata.namespace ?? "", clone(f.object));
    }
  }

  /** Drop all objects and CRDs, then load fixtures again (a restart that lost state). */
  reset(): void {
    for (const d of this.registry.all()) if (d.crd) this.registry.removeCrd(d.crd);
    this.store.clear();
    this.gc.reindex();
    this.loadFixtures();
  }

  #reloadCrds(): void {
    const crdDef = this.registry.find("apiextensions.k8s.io", "v1", "customresourcedefinitions")!;
    for (const crd of this.store.list(storageKeyOf(crdDef))) {
      this.registry.setCrd(crd.metadata.name!, defsFromCrd(crd as JsonObject));
    }
  }

  /** Handle one request; never throws. */
  async handle(req: ApiRequest): Promise<ApiResponse> {
    try {
      await this.faults.check(req.method, req.url.pathname);
      return await this.#route(req);
    } catch (err) {
      if (err instanceof ApiError) return errorResponse(err);
      return errorResponse(
        new ApiError(500, "InternalError", `Internal error occurred: ${(err as Error).message}`),
      );
    }
  }

  #route(req: ApiRequest): ApiResponse | Promise<ApiResponse> {
    const path = req.url.pathname.replace(/\/+$/, "") || "/";
    const segs = path.split("/").filter((s) => s !== "").map(decodeURIComponent);
    if (req.method === "GET") {
      switch (path) {
        case "/version":
          return jsonResponse(200, discovery.versionInfo());
        case "/healthz":
        case "/livez":
        case "/readyz":
          return { status: 200, headers: { "content-type": "text/plain" }, body: "ok" };
        case "/api":
          return jsonResponse(200, discovery.coreVersions(this.serverAddress));
        case "/apis":
          return jsonResponse(200, discovery.groupList(this.registry));
        case "/openapi/v3":
          return jsonResponse(200, discovery.openApiV3Root(this.registry));
        case "/openapi/v2":
          return jsonResponse(
            404,
            new ApiError(404, "NotFound", "the server could not find the requested resource")
              .toStatus(),
          );
      }
      if (segs[0] === "openapi" && segs[1] === "v3") {
        const [g, v] = segs[2] === "api" ? ["", segs[3]] : [segs[3], segs[4]];
        const doc = discovery.openApiV3GroupVersion(this.registry, g ?? "", v ?? "");
        if (doc) return jsonResponse(200, doc);
      }
    }
    let group: string, version: string, rest: string[];
    if (segs[0] === "api" && segs.length >= 2) {
      [group, version, rest] = ["", segs[1], segs.slice(2)];
    } else if (segs[0] === "apis" && segs.length >= 3) {
      [group, version, rest] = [segs[1], segs[2], segs.slice(3)];
    } else if (segs[0] === "apis" && segs.length === 2 && req.method === "GET") {
      const g = discovery.group(this.registry, segs[1]);
      if (g) return jsonResponse(200, g);
      throw new ApiError(404, "NotFound", "the server could not find the requested resource");
    } else {
      throw new ApiError(404, "NotFound", "the server could not find the requested resource");
    }
    if (rest.length === 0 && req.method === "GET") {
      const list = discovery.resourceList(this.registry, group, version);
      if (list) return jsonResponse(200, list);
    }
    const target = this.#target(group, version, rest);
    return this.#dispatch(req, target);
  }

  #target(group: string, version: string, rest: string[]): Target {
    let namespace = "";
    let r = rest;
    if (r[0] === "namespaces" && r.length >= 3 && r[2] !== "status" && r[2] !== "finalize") {
      namespace = r[1];
      r = r.slice(2);
    }
    const def = this.registry.find(group, version, r[0] ?? "");
    if (!def || r.length > 3 || (namespace && !def.namespaced)) {
      throw new ApiError(404, "NotFound", "the server could not find the requested resource");
    }
    return { def, namespace, name: r[1], sub: r[2] };
  }

  #dispatch(req: ApiRequest, t: Target): ApiResponse | Promise<ApiResponse> {
    const q = req.url.searchParams;
    const { def, namespace, name, sub } = t;
    if (name === undefined) {
      switch (req.method) {
        case "GET":
          if (q.get("watch") === "true" || q.get("watch") === "1") return this.#watch(req, t);
          return this.#list(req, t);
        case "POST": {
          const body = this.#parseBody(req);
          const created = this.#create(def, namespace, body, q);
          return this.#respond(req, def, created, 201);
        }
        case "DELETE":
          return this.#deleteCollection(req, t);
      }
      throw new ApiError(
        405,
        "MethodNotAllowed",
        `the server does not allow this method on the requested resource`,
      );
    }
    if (sub === "log" && def.kind === "Pod" && req.method === "GET") return this.#podLog(req, t);
    if (sub && sub !== "status" && !(sub === "finalize" && def.kind === "Namespace")) {
      if (["exec", "attach", "portforward"].includes(sub) && def.subresources.includes(sub)) {
        this.#mustGet(def, namespace, name);
        throw new ApiError(400, "BadRequest", "Upgrade request required");
      }
      throw new ApiError(404, "NotFound", "the server could not find the requested resource");
    }
    if (sub === "status" && !def.statusSubresource) {
      throw new ApiError(404, "NotFound", "the server could not find the requested resource");
    }
    const statusOnly = sub === "status";
    switch (req.method) {
      case "GET":
        return this.#respond(req, def, this.#read(def, this.#mustGet(def, namespace, name)), 200);
      case "PUT": {
        const body = this.#parseBody(req);
        return this.#respond(
          req,
          def,
          this.#update(def, namespace, name, body, q, statusOnly),
          200,
        );
      }
      case "PATCH":
        return this.#respond(req, def, this.#patch(req, def, namespace, name, statusOnly), 200);
      case "DELETE": {
        if (statusOnly) break;
        const opts = req.body.length ? this.#parseBody(req) as Obj : {};
        return this.#respond(req, def, this.#delete(def, namespace, name, opts, q), 200);
      }
    }
    throw new ApiError(
      405,
      "MethodNotAllowed",
      `the server does not allow this method on the requested resource`,
    );
  }

  #parseBody(req: ApiRequest): KubeObject {
    const text = new TextDecoder().decode(req.body);
    const ct = req.headers.get("content-type") ?? "";
    try {
      const v = ct.includes("yaml") ? parseYaml(text) : JSON.parse(text);
      if (v === null || typeof v !== "object") throw new Error("not an object");
      return v as KubeObject;
    } catch (err) {
      throw badRequest(`the body of the request could not be decoded: ${(err as Error).message}`);
    }
  }

  /** Convert a stored object to the shape of `def`'s API version. */
  #read(def: ResourceDef, obj: KubeObject): KubeObject {
    if (def.group === "events.k8s.io") return toEventsV1(obj);
    return { apiVersion: apiVersionOf(def), kind: def.kind, ...obj } as KubeObject;
  }

  #respond(req: ApiRequest, def: ResourceDef, obj: KubeObject, status: number): ApiResponse {
    const accept = req.headers.get("accept") ?? "";
    const out = this.#read(def, obj);
    if (/as=Table/.test(accept.split(",")[0])) {
      const q = req.url.searchParams;
      return jsonResponse(
        status,
        toTable(
          def,
          [out],
          { resourceVersion: out.metadata.resourceVersion ?? "" },
          q.get("includeObject") ?? "Metadata",
        ),
      );
    }
    if (/as=PartialObjectMetadata/.test(accept.split(",")[0])) {
      return jsonResponse(status, partialMetadata(out));
    }
    return jsonResponse(status, out);
  }

  #mustGet(def: ResourceDef, namespace: string, name: string): KubeObject {
    const o = this.store.get(storageKeyOf(def), def.namespaced ? namespace : "", name);
    if (!o) throw notFound(def, name);
    return o;
  }

  // ---- list / watch -------------------------------------------------------

  #matcher(req: ApiRequest, t: Target): (o: KubeObject) => boolean {
    const q = req.url.searchParams;
    const labels = parseLabelSelector(q.get("labelSelector"));
    const fields = parseFieldSelector(q.get("fieldSelector"), selectableFields(t.def));
    const ns = t.def.namespaced ? t.namespace : "";
    return (o) => (!ns || o.metadata.namespace === ns) && labels(o) && fields(this.#read(t.def, o));
  }

  #list(req: ApiRequest, t: Target): ApiResponse {
    const q = req.url.searchParams;
    const rv = q.get("resourceVersion");
    if (rv && rv !== "0" && q.get("resourceVersionMatch") === "Exact") {
      if (Number(rv) < this.store.compactedRevision) throw this.#expired(Number(rv));
    }
    const match = this.#matcher(req, t);
    let items = this.store.list(
      storageKeyOf(t.def),
      t.def.namespaced ? t.namespace || undefined : undefined,
      match,
    );
    const meta: JsonObject = { resourceVersion: String(this.store.revision) };
    const cont = q.get("continue");
    if (cont) {
      let after = "";
      try {
        after = JSON.parse(atob(cont)).start;
      } catch {
        throw badRequest("continue key is not valid");
      }
      items = items.filter((o) => `${o.metadata.namespace ?? ""}/${o.metadata.name}` > after);
    }
    const limit = Number(q.get("limit") ?? 0);
    if (limit > 0 && items.length > limit) {
      const last = items[limit - 1];
      meta.continue = btoa(JSON.stringify({
        rv: this.store.revision,
        start: `${last.metadata.namespace ?? ""}/${last.metadata.name}`,
      }));
      meta.remainingItemCount = items.length - limit;
      items = items.slice(0, limit);
    }
    const out = items.map((o) => this.#read(t.def, o));
    const accept = (req.headers.get("accept") ?? "").split(",")[0];
    if (/as=Table/.test(accept)) {
      return jsonResponse(200, toTable(t.def, out, meta, q.get("includeObject") ?? "Metadata"));
    }
    if (/as=PartialObjectMetadataList/.test(accept)) {
      return jsonResponse(200, {
        kind: "PartialObjectMetadataList",
        apiVersion: "meta.k8s.io/v1",
        metadata: meta,
        items: out.map(partialMetadata),
      });
    }
    return jsonResponse(200, {
      apiVersion: apiVersionOf(t.def),
      kind: t.def.listKind,
      metadata: meta,
      items: out as unknown as JsonObject[],
    });
  }

  #expired(rv: number): ApiError {
    return new ApiError(
      410,
      "Expired",
      `too old resource version: ${rv} (${this.store.compactedRevision})`,
    );
  }

  #watch(req: ApiRequest, t: Target): ApiResponse {
    const ctx: WatchContext = {
      store: this.store,
      faults: this.faults,
      bookmarkIntervalMs: this.bookmarkIntervalMs,
      read: (def, obj) => this.#read(def, obj),
      expired: (rv) => this.#expired(rv),
      onExpired: () => this.expiredWatches++,
    };
    return watchResponse(ctx, req, t.def, t.namespace, this.#matcher(req, t));
  }

  // ---- writes -------------------------------------------------------------

  /**
   * Create `body` as a `def` object in `namespace` with all server
   * semantics (defaults, allocation, hooks). Used by requests and fixtures.
   */
  createObject(def: ResourceDef, namespace: string, body: KubeObject): KubeObject {
    return this.#create(def, namespace, body, new URLSearchParams());
  }

  #checkKind(def: ResourceDef, body: KubeObject): void {
    if (def.crd && (body.kind === undefined || body.apiVersion === undefined)) {
      throw badRequest(`Object 'Kind' is missing in '${JSON.stringify(body).slice(0, 200)}'`);
    }
    if (
      (body.kind !== undefined && body.kind !== def.kind) ||
      (body.apiVersion !== undefined && body.apiVersion !== apiVersionOf(def))
    ) {
      throw badRequest(
        `the API version in the data (${body.apiVersion}) does not match the expected API ` +
          `version (${
            apiVersionOf(def)
          }), or the kind (${body.kind}) the expected kind (${def.kind})`,
      );
    }
  }

  #applySchema(def: ResourceDef, obj: KubeObject, q: URLSearchParams): KubeObject {
    if (!def.schema) return obj;
    const r = pruneAndValidate(obj as Obj, def.schema as Obj);
    if (r.unknownFields.length && q.get("fieldValidation") === "Strict") {
      throw badRequest(
        `${def.kind} in version "${def.version}" cannot be handled as a ${def.kind}: strict decoding error: ${
          r.unknownFields.map((f) => `unknown field "${f}"`).join(", ")
        }`,
      );
    }
    if (r.errors.length) throw invalid(def, obj.metadata.name ?? "", r.errors);
    return r.object as KubeObject;
  }

  #create(def: ResourceDef, namespace: string, input: KubeObject, q: URLSearchParams): KubeObject {
    let body = clone(input);
    if (def.group === "events.k8s.io") body = fromEventsV1(body);
    else this.#checkKind(def, body);
    applyDefaults(def, body, q.get("fieldValidation") === "Strict");
    if (!body.metadata || typeof body.metadata !== "object") body.metadata = {};
    const m = body.metadata;
    if (def.namespaced) {
      if (m.namespace && namespace && m.namespace !== namespace) {
        throw badRequest(
          "the namespace of the provided object does not match the namespace sent on the request",
        );
      }
      namespace ||= m.namespace ?? "";
      if (!namespace) throw badRequest("the namespace of the object is required");
      m.namespace = namespace;
      if (!this.store.get("/namespaces", "", namespace)) {
        throw new ApiError(404, "NotFound", `namespaces "${namespace}" not found`, {
          name: namespace,
          kind: "namespaces",
        });
      }
    } else delete m.namespace;
    if (!m.name) {
      if (!m.generateName) {
        throw invalid(def, "", [{
          reason: "FieldValueRequired",
          field: "metadata.name",
          message: "Required value: name or generateName is required",
        }]);
      }
      m.name = m.generateName + randomSuffix();
    }
    const nameCauses = validateName(def, m.name);
    if (nameCauses.length) throw invalid(def, m.name, nameCauses);
    const key = storageKeyOf(def);
    if (this.store.get(key, def.namespaced ? namespace : "", m.name)) {
      throw alreadyExists(def, m.name);
    }
    delete m.resourceVersion;
    delete m.deletionTimestamp;
    delete m.deletionGracePeriodSeconds;
    m.uid = crypto.randomUUID();
    m.creationTimestamp = timestamp();
    if (tracksGeneration(def)) m.generation = 1;
    else delete m.generation;
    let obj: KubeObject = def.group === "events.k8s.io"
      ? body
      : { ...body, apiVersion: apiVersionOf(def), kind: def.kind };
    obj = this.#applySchema(def, obj, q);
    if (def.statusSubresource && def.crd) delete obj.status;
    this.#beforeWrite(def, obj, undefined);
    if (q.get("dryRun") === "All") return obj;
    const stored = this.store.put(key, obj);
    this.#afterWrite(def, stored);
    return stored;
  }

  #update(
    def: ResourceDef,
    namespace: string,
    name: string,
    input: KubeObject,
    q: URLSearchParams,
    statusOnly: boolean,
  ): KubeObject {
    let body = clone(input);
    if (def.group === "events.k8s.io") body = fromEventsV1(body);
    else this.#checkKind(def, body);
    applyDefaults(def, body, q.get("fieldValidation") === "Strict");
    const old = this.#mustGet(def, namespace, name);
    if (!body.metadata || typeof body.metadata !== "object") body.metadata = {};
    if (body.metadata.name !== undefined && body.metadata.name !== name) {
      throw badRequest(
        `the name of the object (${body.metadata.name}) does not match the name on the URL (${name})`,
      );
    }
    if (!body.metadata.resourceVersion && !allowsUnconditionalUpdate(def)) {
      // Custom resources and CRDs refuse unconditional updates (AllowUnconditionalUpdate false).
      throw invalid(def, name, [{
        field: "metadata.resourceVersion",
        message: "Invalid value: 0x0: must be specified for an update",
      }]);
    }
    if (
      body.metadata.resourceVersion &&
      body.metadata.resourceVersion !== old.metadata.resourceVersion
    ) {
      throw conflict(def, name);
    }
    let next: KubeObject;
    if (statusOnly) {
      next = { ...old, status: body.status } as KubeObject;
      if (body.status === undefined) delete next.status;
    } else {
      next = def.group === "events.k8s.io"
        ? body
        : { ...body, apiVersion: apiVersionOf(def), kind: def.kind };
      if (def.statusSubresource) {
        if (old.status === undefined) delete next.status;
        else next.status = old.status;
      }
      const m = next.metadata;
      m.name = name;
      if (def.namespaced) m.namespace = old.metadata.namespace;
      else delete m.namespace;
      m.uid = old.metadata.uid;
      m.creationTimestamp = old.metadata.creationTimestamp;
      m.generation = old.metadata.generation;
      if (old.metadata.deletionTimestamp) {
        const added = (m.finalizers ?? []).filter((f) =>
          !(old.metadata.finalizers ?? []).includes(f)
        );
        if (added.length) {
          throw invalid(def, name, [{
            reason: "FieldValueForbidden",
            field: "metadata.finalizers",
            message: `Forbidden: no new finalizers can be added if the object is being deleted, ` +
              `found new finalizers ${JSON.stringify(added)}`,
          }]);
        }
        m.deletionTimestamp = old.metadata.deletionTimestamp;
        m.deletionGracePeriodSeconds = old.metadata.deletionGracePeriodSeconds;
      } else {
        delete m.deletionTimestamp;
        delete m.deletionGracePeriodSeconds;
      }
    }
    next = this.#applySchema(def, next, q);
    next.metadata.resourceVersion = old.metadata.resourceVersion;
    const specKeys = def.statusSubresource ? ["metadata", "status"] : ["metadata"];
    if (
      tracksGeneration(def) && !sameJson(withoutKeys(next, specKeys), withoutKeys(old, specKeys))
    ) {
      next.metadata.generation = (old.metadata.generation ?? 0) + 1;
    }
    this.#beforeWrite(def, next, old);
    if (sameJson(next, old)) return old; // no-op update: no new revision, no event
    if (q.get("dryRun") === "All") return next;
    const key = storageKeyOf(def);
    if (next.metadata.deletionTimestamp && !(next.metadata.finalizers ?? []).length) {
      // The last finalizer gone: the real store deletes instead of writing, so watchers see
      // DELETED (with the last stored state) and no MODIFIED.
      return this.#finalizeDelete(def, old);
    }
    const stored = this.store.put(key, next);
    this.#afterWrite(def, stored);
    return stored;
  }

  #patch(
    req: ApiRequest,
    def: ResourceDef,
    namespace: string,
    name: string,
    statusOnly: boolean,
  ): KubeObject {
    const ct = (req.headers.get("content-type") ?? "").split(";")[0].trim();
    const q = req.url.searchParams;
    const text = new TextDecoder().decode(req.body);
    let patch: unknown;
    try {
      patch = ct === "application/apply-patch+yaml" ? parseYaml(text) : JSON.parse(text);
    } catch (err) {
      throw badRequest(`the body of the request could not be decoded: ${(err as Error).message}`);
    }
    const existing = this.store.get(storageKeyOf(def), def.namespaced ? namespace : "", name);
    if (!existing) {
      if (ct === "application/apply-patch+yaml" && !statusOnly) {
        const body = patch as KubeObject;
        body.metadata = { ...body.metadata, name };
        return this.#create(def, namespace, body, q);
      }
      throw notFound(def, name);
    }
    const current = this.#read(def, existing);
    let next: unknown;
    switch (ct) {
      case "application/merge-patch+json":
      case "application/apply-patch+yaml":
        next = mergePatch(current, patch);
        break;
      case "application/json-patch+json":
        next = jsonPatch(current, patch);
        break;
      case "application/strategic-merge-patch+json":
        if (def.crd) {
          throw new ApiError(
            415,
            "UnsupportedMediaType",
            `the body of the request was in an unknown format - accepted media types include: ` +
              `application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml`,
          );
        }
        next = strategicMergePatch(current, patch, "", atomicLists(def));
        break;
      default:
        throw new ApiError(
          415,
          "UnsupportedMediaType",
          `the body of the request was in an unknown format - accepted media types include: ` +
            `application/json-patch+json, application/merge-patch+json, ` +
            `application/apply-patch+yaml, application/strategic-merge-patch+json`,
        );
    }
    const obj = next as KubeObject;
    if (!obj || typeof obj !== "object" || !obj.metadata) {
      throw badRequest("patch produced an object without metadata");
    }
    if (obj.metadata.resourceVersion === undefined) {
      obj.metadata.resourceVersion = existing.metadata.resourceVersion;
    }
    return this.#update(def, namespace, name, obj, q, statusOnly);
  }

  #delete(
    def: ResourceDef,
    namespace: string,
    name: string,
    opts: Obj,
    q: URLSearchParams,
  ): KubeObject {
    const old = this.#mustGet(def, namespace, name);
    const pre = (opts.preconditions ?? {}) as Obj;
    const policy = propagationPolicy(opts, q);
    if (pre.resourceVersion && pre.resourceVersion !== old.metadata.resourceVersion) {
      throw new ApiError(
        409,
        "Conflict",
        `Operation cannot be fulfilled on ${def.plural} "${name}": the ResourceVersion in the ` +
          `precondition (${pre.resourceVersion}) does not match the ResourceVersion in record ` +
          `(${old.metadata.resourceVersion}). The object might have been modified`,
        { name, group: def.group, kind: def.plural },
      );
    }
    if (pre.uid && pre.uid !== old.metadata.uid) {
      throw new ApiError(
        409,
        "Conflict",
        `Operation cannot be fulfilled on ${def.plural} "${name}": Precondition failed: ` +
          `UID in precondition: ${pre.uid}, UID in object meta: ${old.metadata.uid}`,
        { name, group: def.group, kind: def.plural },
      );
    }
    if (q.get("dryRun") === "All") return old;
    const key = storageKeyOf(def);
    const finalizers = old.metadata.finalizers ?? [];
    // The garbage collector's finalizers (orphan, foregroundDeletion) as the policy asks.
    const wanted = deletionFinalizers(finalizers, policy);
    if (finalizers.length > 0 || (def.kind !== "Namespace" && wanted.length > 0)) {
      if (!wanted.length) return this.#finalizeDelete(def, old);
      const same = wanted.length === finalizers.length &&
        wanted.every((f) => finalizers.includes(f));
      if (old.metadata.deletionTimestamp && same) return old;
      const next = clone(old);
      if (!next.metadata.deletionTimestamp) {
        next.metadata.deletionTimestamp = timestamp();
        if (next.metadata.generation) next.metadata.generation++;
      }
      next.metadata.deletionGracePeriodSeconds = 0;
      next.metadata.finalizers = same ? finalizers : wanted;
      return this.store.put(key, next);
    }
    if (def.kind === "Namespace") {
      const terminating = clone(old);
      terminating.metadata.deletionTimestamp = timestamp();
      terminating.metadata.deletionGracePeriodSeconds = 0;
      (terminating as Obj).status = { phase: "Terminating" };
      const stored = this.store.put(key, terminating);
      this.#finalizeDelete(def, stored);
      return stored;
    }
    return this.#finalizeDelete(def, old);
  }

  /**
   * Remove an object for good, with the cascades the real control plane
   * performs (a Namespace's objects, a CRD's resources; dependents are the
   * garbage collector's, which sees the deletion).
   */
  #finalizeDelete(def: ResourceDef, obj: KubeObject): KubeObject {
    const name = obj.metadata.name!;
    if (def.kind === "Namespace" && def.group === "") {
      const seen = new Set<string>();
      for (const d of this.registry.all()) {
        const key = storageKeyOf(d);
        if (!d.namespaced || seen.has(key)) continue;
        seen.add(key);
        for (const o of this.store.list(key, name)) {
          this.store.remove(key, name, o.metadata.name!);
        }
      }
    }
    if (def.kind === "CustomResourceDefinition") {
      const defs = this.registry.all().filter((d) => d.crd === name);
      if (defs[0]) {
        const key = storageKeyOf(defs[0]);
        for (const o of this.store.list(key)) {
          this.store.remove(key, o.metadata.namespace ?? "", o.metadata.name!);
        }
      }
      this.registry.removeCrd(name);
    }
    return this.store.remove(storageKeyOf(def), obj.metadata.namespace ?? "", name) ?? obj;
  }

  #deleteCollection(req: ApiRequest, t: Target): ApiResponse {
    const match = this.#matcher(req, t);
    const opts = req.body.length ? this.#parseBody(req) as Obj : {};
    propagationPolicy(opts, req.url.searchParams);
    const key = storageKeyOf(t.def);
    const items: KubeObject[] = [];
    for (const o of this.store.list(key, t.def.namespaced ? t.namespace || undefined : undefined)) {
      if (!match(o)) continue;
      items.push(
        this.#delete(
          t.def,
          o.metadata.namespace ?? "",
          o.metadata.name!,
          opts,
          req.url.searchParams,
        ),
      );
    }
    return jsonResponse(200, {
      apiVersion: apiVersionOf(t.def),
      kind: t.def.listKind,
      metadata: { resourceVersion: String(this.store.revision) },
      items: items.map((o) => this.#read(t.def, o)) as unknown as JsonObject[],
    });
  }

  // ---- per-kind semantics -------------------------------------------------

  #beforeWrite(def: ResourceDef, obj: KubeObject, old: KubeObject | undefined): void {
    prepareWrite(
      {
        store: this.store,
        network: this.network,
        allowLoopbackEndpoints: !!this.opts.allowLoopbackEndpoints,
      },
      def,
      obj,
      old,
    );
  }

  #afterWrite(def: ResourceDef, obj: KubeObject): void {
    if (def.kind === "CustomResourceDefinition" && def.group === "apiextensions.k8s.io") {
      this.registry.setCrd(obj.metadata.name!, defsFromCrd(obj as JsonObject));
    }
  }

  // ---- logs ---------------------------------------------------------------

  #podLog(req: ApiRequest, t: Target): ApiResponse {
    const pod = this.#mustGet(t.def, t.namespace, t.name!);
    return podLogResponse(
      {
        logLineIntervalMs: this.logLineIntervalMs,
        opened: () => this.openLogStreams++,
        closed: () => {
          if (--this.openLogStreams === 0) { for (const fn of this.#logIdle.splice(0)) fn(); }
        },
      },
      req,
      pod,
    );
  }
}
