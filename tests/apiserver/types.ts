/**
 * Shared shapes of the test API server: Kubernetes objects, resource
 * definitions (built-in or served from a CRD) and the `ApiError` that every
 * layer throws to produce a Kubernetes `Status` response.
 * @module
 */

/** JSON value. */
export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** A JSON object. */
export type JsonObject = { [k: string]: Json };

/** `metadata` of an object (the fields the server manages; the rest pass through). */
export interface ObjectMeta {
  name?: string;
  generateName?: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  generation?: number;
  creationTimestamp?: string;
  deletionTimestamp?: string;
  deletionGracePeriodSeconds?: number;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  finalizers?: string[];
  [k: string]: unknown;
}

/** A Kubernetes object as stored: plain JSON with `metadata`. */
export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta;
  [k: string]: unknown;
}

/** One `additionalPrinterColumns` entry (CRD shape). */
export interface PrinterColumn {
  name: string;
  type: string;
  jsonPath: string;
  description?: string;
  format?: string;
  priority?: number;
}

/** A served resource: where it lives and how it behaves. */
export interface ResourceDef {
  group: string;
  version: string;
  /** Plural resource name as in the URL, e.g. `services`. */
  plural: string;
  singular: string;
  kind: string;
  listKind: string;
  namespaced: boolean;
  shortNames: string[];
  categories: string[];
  /** Whether `<plural>/status` is a separate subresource. */
  statusSubresource: boolean;
  /** Other subresources served (e.g. `exec`, `log`, `portforward` for pods). */
  subresources: string[];
  /** Server-side printing columns (besides Name). */
  printerColumns: PrinterColumn[];
  /** OpenAPI v3 schema of the object for a CRD version (pruning, validation). */
  schema?: JsonObject;
  /** Name of the CRD serving this resource, if any. */
  crd?: string;
  /**
   * Whether `metadata.generation` is kept (bumped on changes outside metadata
   * and the status subresource), as for Deployments; CRs and CRDs always do.
   */
  generation?: boolean;
  /** Verbs listed in discovery (default: all eight); e.g. only `create` for access reviews. */
  verbs?: string[];
  /**
   * Storage key shared by several API versions/groups of one resource (e.g.
   * `events` in core/v1 and events.k8s.io/v1); defaults to `group/plural`.
   */
  storageKey?: string;
}

/** `group/version` string as in `apiVersion` (`v1` for the core group). */
export function apiVersionOf(def: { group: string; version: string }): string {
  return def.group ? `${def.group}/${def.version}` : def.version;
}

/** Storage key of a resource (shared by aliases such as the two event APIs). */
export function storageKeyOf(def: ResourceDef): string {
  return def.storageKey ?? `${def.group}/${def.plural}`;
}

/** `plural.group` (or plural for the core group), as used in error messages. */
export function qualifiedName(def: ResourceDef): string {
  return def.group ? `${def.plural}.${def.group}` : def.plural;
}

/** `Status.details.causes[]` entry. */
export interface StatusCause {
  reason?: string;
  message?: string;
  field?: string;
}

/** An error that becomes a Kubernetes `Status` response. */
export class ApiError extends Error {
  constructor(
    readonly code: number,
    readonly reason: string,
    message: string,
    readonly details?: {
      name?: string;
      group?: string;
      kind?: string;
      causes?: StatusCause[];
      retryAfterSeconds?: number;
    },
  ) {
    super(message);
    this.name = "ApiError";
  }

  /** The `Status` object for the body. */
  toStatus(): JsonObject {
    const s: JsonObject = {
      kind: "Status",
      apiVersion: "v1",
      metadata: {},
      status: "Failure",
      message: this.message,
      reason: this.reason,
      code: this.code,
    };
    if (this.details) s.details = JSON.parse(JSON.stringify(this.details));
    return s;
  }
}

/** 404 NotFound for `plural.group "name"`. */
export function notFound(def: ResourceDef, name: string): ApiError {
  return new ApiError(404, "NotFound", `${qualifiedName(def)} "${name}" not found`, {
    name,
    group: def.group,
    kind: def.plural,
  });
}

/** 409 AlreadyExists. */
export function alreadyExists(def: ResourceDef, name: string): ApiError {
  return new ApiError(409, "AlreadyExists", `${qualifiedName(def)} "${name}" already exists`, {
    name,
    group: def.group,
    kind: def.plural,
  });
}

/** 409 Conflict for a stale resourceVersion. */
export function conflict(def: ResourceDef, name: string): ApiError {
  return new ApiError(
    409,
    "Conflict",
    `Operation cannot be fulfilled on ${qualifiedName(def)} "${name}": the object has been ` +
      `modified; please apply your changes to the latest version and try again`,
    { name, group: def.group, kind: def.plural },
  );
}

/** 422 Invalid with field causes. */
export function invalid(def: ResourceDef, name: string, causes: StatusCause[]): ApiError {
  const what = causes.map((c) => `${c.field}: ${c.message}`).join(", ");
  return new ApiError(422, "Invalid", `${def.kind} "${name}" is invalid: ${what}`, {
    name,
    group: def.group,
    kind: def.kind,
    causes: causes.map((c) => ({ reason: c.reason ?? "FieldValueInvalid", ...c })),
  });
}

/** 400 BadRequest. */
export function badRequest(message: string): ApiError {
  return new ApiError(400, "BadRequest", message);
}

/** Deep copy of a JSON-compatible value. */
export function clone<T>(v: T): T {
  return structuredClone(v);
}

/** The current time as the API server writes timestamps (RFC 3339, whole seconds). */
export function timestamp(): string {
  return new Date().toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** Deep equality of JSON values, independent of key order (`undefined` members ignored). */
export function sameJson(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ao = a as Record<string, unknown>;
  const bo = b as Record<string, unknown>;
  const ak = Object.keys(ao).filter((k) => ao[k] !== undefined);
  const bk = Object.keys(bo).filter((k) => bo[k] !== undefined);
  if (ak.length !== bk.length) return false;
  return ak.every((k) => sameJson(ao[k], bo[k]));
}

/**
 * 422 Invalid as `errors.NewInvalid` builds it: `<Kind>[.<group>] "<name>" is
 * invalid: <field>: <error>` (several errors bracketed and comma-separated,
 * repeated messages once), `details.causes` with each field and error body.
 */
export function newInvalid(
  def: { group: string; kind: string },
  name: string,
  causes: StatusCause[],
): ApiError {
  const qualified = def.group ? `${def.kind}.${def.group}` : def.kind;
  const msgs = [...new Set(causes.map((c) => `${c.field ?? ""}: ${c.message ?? ""}`))];
  const what = msgs.length === 1 ? msgs[0] : `[${msgs.join(", ")}]`;
  return new ApiError(422, "Invalid", `${qualified} "${name}" is invalid: ${what}`, {
    name,
    group: def.group,
    kind: def.kind,
    causes: causes.map((c) => ({ reason: c.reason ?? "FieldValueInvalid", ...c })),
  });
}
