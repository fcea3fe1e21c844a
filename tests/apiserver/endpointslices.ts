/**
 * discovery.k8s.io/v1 EndpointSlices as the real API server stores them:
 * the JSON decoder's type errors (400) and unknown fields (dropped, or 400
 * with `fieldValidation=Strict`), the v1 defaults (a port's `name` ""
 * and `protocol` TCP, `conditions` always present, `deprecatedTopology` not
 * writable through v1, empty `endpoints`/`ports` read back as null),
 * validation with the real messages (422: `addressType` required, one of
 * IPv4/IPv6/FQDN and immutable; at most 1000 endpoints of 1–100 addresses
 * valid for the type and not loopback, link-local or unspecified; hostnames
 * and port names DNS labels, port names unique, protocols TCP/UDP/SCTP,
 * `appProtocol` a qualified name, zone hints, node names), `generation`
 * bumped on label changes too, and kubectl's table cells.
 * @module
 */

import { isIP } from "node:net";
import {
  dns1123Label,
  dns1123Subdomain,
  duplicate,
  fqdn,
  invalidValue,
  labelValue,
  notSupported,
  qualifiedName,
  required,
  tooMany,
} from "./fielderrors.ts";
import {
  badRequest,
  type KubeObject,
  newInvalid,
  type ResourceDef,
  sameJson,
  type StatusCause,
} from "./types.ts";

type Obj = Record<string, unknown>;

/** Lists a strategic merge patch replaces whole (`+listType=atomic`). */
export const ATOMIC_LISTS = ["endpoints", "ports"];

const MAX_ENDPOINTS = 1000;
const MAX_ADDRESSES = 100;
const MAX_PORTS = 20000;
const MAX_ZONE_HINTS = 8;

/** Whether `def` is discovery.k8s.io EndpointSlices. */
export function isEndpointSlice(def: ResourceDef): boolean {
  return def.group === "discovery.k8s.io" && def.kind === "EndpointSlice";
}

/** A JSON value's kind as Go's decoder names it in type errors. */
function jsonKind(v: unknown): string {
  if (Array.isArray(v)) return "array";
  if (typeof v === "boolean") return "bool";
  return typeof v;
}

/** The JSON decoder's refusal of a value of the wrong type (400 BadRequest). */
function typeError(value: unknown, where: string, goType: string): never {
  // An out-of-range or fractional number for an integer is named with its value.
  const what = typeof value === "number" && goType.startsWith("int")
    ? `number ${value}`
    : jsonKind(value);
  throw badRequest(
    `EndpointSlice in version "v1" cannot be handled as a EndpointSlice: json: cannot ` +
      `unmarshal ${what} into Go struct field ${where} of type ${goType}`,
  );
}

const isObject = (v: unknown) => typeof v === "object" && v !== null && !Array.isArray(v);

function checkTypes(o: Obj): void {
  const isList = (v: unknown) => v === undefined || v === null || Array.isArray(v);
  if (o.addressType !== undefined && o.addressType !== null && typeof o.addressType !== "string") {
    typeError(o.addressType, "EndpointSlice.addressType", "v1.AddressType");
  }
  if (!isList(o.endpoints)) typeError(o.endpoints, "EndpointSlice.endpoints", "[]v1.Endpoint");
  if (!isList(o.ports)) typeError(o.ports, "EndpointSlice.ports", "[]v1.EndpointPort");
  for (const ep of (o.endpoints ?? []) as unknown[]) {
    if (ep === null) continue; // decodes as an empty endpoint
    if (!isObject(ep)) typeError(ep, "EndpointSlice.endpoints", "v1.Endpoint");
    const e = ep as Obj;
    if (!isList(e.addresses)) typeError(e.addresses, "Endpoint.endpoints.addresses", "[]string");
    for (const a of (e.addresses ?? []) as unknown[]) {
      if (typeof a !== "string") typeError(a, "Endpoint.endpoints.addresses", "string");
    }
    const c = e.conditions;
    if (c !== undefined && c !== null && !isObject(c)) {
      typeError(c, "Endpoint.endpoints.conditions", "v1.EndpointConditions");
    }
    for (const k of ["ready", "serving", "terminating"]) {
      const v = (c as Obj | null | undefined)?.[k];
      if (v !== undefined && v !== null && typeof v !== "boolean") {
        typeError(v, `EndpointConditions.endpoints.conditions.${k}`, "bool");
      }
    }
  }
  for (const p of (o.ports ?? []) as unknown[]) {
    if (p === null) continue;
    if (!isObject(p)) typeError(p, "EndpointSlice.ports", "v1.EndpointPort");
    const port = (p as Obj).port;
    if (
      port !== undefined && port !== null &&
      (typeof port !== "number" || !Number.isInteger(port) || Math.abs(port) > 2 ** 31 - 1)
    ) {
      typeError(port, "EndpointPort.ports.port", "int32");
    }
  }
}

/** The fields of each part of an EndpointSlice (the decoder drops any other). */
const FIELDS: Record<string, string[]> = {
  slice: ["apiVersion", "kind", "metadata", "addressType", "endpoints", "ports"],
  endpoint: [
    "addresses",
    "conditions",
    "hostname",
    "targetRef",
    "deprecatedTopology",
    "nodeName",
    "zone",
    "hints",
  ],
  conditions: ["ready", "serving", "terminating"],
  targetRef: ["kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath"],
  hints: ["forZones"],
  forZone: ["name"],
  port: ["name", "protocol", "port", "appProtocol"],
};

/** Drop the fields `part` does not have from `o`, noting their paths. */
function prune(o: unknown, part: string, path: string, unknown: string[]): void {
  if (!isObject(o)) return;
  for (const k of Object.keys(o as Obj)) {
    if (FIELDS[part].includes(k)) continue;
    unknown.push(`${path}${k}`);
    delete (o as Obj)[k];
  }
}

function pruneSlice(o: Obj): string[] {
  const unknown: string[] = [];
  prune(o, "slice", "", unknown);
  ((o.endpoints ?? []) as unknown[]).forEach((e, i) => {
    const at = `endpoints[${i}].`;
    prune(e, "endpoint", at, unknown);
    if (!isObject(e)) return;
    const ep = e as Obj;
    prune(ep.conditions, "conditions", `${at}conditions.`, unknown);
    prune(ep.targetRef, "targetRef", `${at}targetRef.`, unknown);
    prune(ep.hints, "hints", `${at}hints.`, unknown);
    const zones = ((ep.hints as Obj | undefined)?.forZones ?? []) as unknown[];
    zones.forEach((z, j) => prune(z, "forZone", `${at}hints.forZones[${j}].`, unknown));
  });
  ((o.ports ?? []) as unknown[]).forEach((p, i) => prune(p, "port", `ports[${i}].`, unknown));
  return unknown;
}

/**
 * Decode checks and v1 defaults, in place (before the write is compared with
 * the stored object, as the real server defaults while decoding). Unknown
 * fields are dropped, or refused (400) with `fieldValidation=Strict`.
 */
export function defaultEndpointSlice(obj: KubeObject, strict: boolean): void {
  const o = obj as Obj;
  checkTypes(o);
  const unknown = pruneSlice(o);
  if (strict && unknown.length) {
    throw badRequest(
      `EndpointSlice in version "v1" cannot be handled as a EndpointSlice: strict decoding ` +
        `error: ${unknown.map((f) => `unknown field ${JSON.stringify(f)}`).join(", ")}`,
    );
  }
  const endpoints = ((o.endpoints ?? []) as (Obj | null)[]).map((e) => e ?? {});
  for (const e of endpoints) {
    if (e.conditions === undefined || e.conditions === null) e.conditions = {};
    delete e.deprecatedTopology; // not writable through v1
  }
  const ports = ((o.ports ?? []) as (Obj | null)[]).map((p) => p ?? {});
  for (const p of ports) {
    if (p.name === undefined || p.name === null) p.name = "";
    if (p.protocol === undefined || p.protocol === null) p.protocol = "TCP";
  }
  // Stored as protobuf: an empty list reads back as null.
  o.endpoints = endpoints.length ? endpoints : null;
  o.ports = ports.length ? ports : null;
}

/** `ValidateEndpointIP`: addresses that make no sense as endpoints. */
function endpointIp(field: string, address: string, allowLoopback: boolean): StatusCause[] {
  const family = isIP(address);
  if (!family) return [invalidValue(field, address, "must be a valid IP address")];
  const out: StatusCause[] = [];
  const v4 = family === 4 ? address.split(".").map(Number) : undefined;
  const v6 = family === 6 ? address.toLowerCase() : "";
  if (v4 ? v4.every((b) => b === 0) : /^[0:]+$/.test(v6)) {
    out.push(invalidValue(field, address, `may not be unspecified (${address})`));
  }
  if (!allowLoopback && (v4 ? v4[0] === 127 : /^[0:]+1$/.test(v6))) {
    out.push(
      invalidValue(field, address, "may not be in the loopback range (127.0.0.0/8, ::1/128)"),
    );
  }
  if (v4 ? v4[0] === 169 && v4[1] === 254 : /^fe[89ab]/.test(v6)) {
    out.push(
      invalidValue(
        field,
        address,
        "may not be in the link-local range (169.254.0.0/16, fe80::/10)",
      ),
    );
  }
  if (v4 ? v4[0] === 224 && v4[1] === 0 && v4[2] === 0 : /^ff02:/.test(v6)) {
    out.push(
      invalidValue(
        field,
        address,
        "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)",
      ),
    );
  }
  return out;
}

function validateAddress(
  field: string,
  type: unknown,
  address: string,
  allowLoopback: boolean,
): StatusCause[] {
  switch (type) {
    case "IPv4":
    case "IPv6": {
      const want = type === "IPv4" ? 4 : 6;
      const out = isIP(address) === want
        ? []
        : [invalidValue(field, address, `must be a valid ${type} address`)];
      return [...out, ...endpointIp(field, address, allowLoopback)];
    }
    case "FQDN":
      return fqdn(field, address);
  }
  return []; // unknown types are refused at addressType
}

function validateEndpoint(
  e: Obj,
  path: string,
  type: unknown,
  allowLoopback: boolean,
): StatusCause[] {
  const causes: StatusCause[] = [];
  const addresses = (e.addresses ?? []) as string[];
  if (!addresses.length) {
    causes.push(required(`${path}.addresses`, "must contain at least 1 address"));
  } else if (addresses.length > MAX_ADDRESSES) {
    causes.push(tooMany(`${path}.addresses`, addresses.length, MAX_ADDRESSES));
  }
  addresses.forEach((a, j) => {
    causes.push(...validateAddress(`${path}.addresses[${j}]`, type, a, allowLoopback));
  });
  if (typeof e.nodeName === "string") {
    for (const m of dns1123Subdomain(e.nodeName)) {
      causes.push(invalidValue(`${path}.nodeName`, e.nodeName, m));
    }
  }
  if (typeof e.hostname === "string") {
    for (const m of dns1123Label(e.hostname)) {
      causes.push(invalidValue(`${path}.hostname`, e.hostname, m));
    }
  }
  const zones = (((e.hints ?? {}) as Obj).forZones ?? []) as Obj[];
  if (zones.length > MAX_ZONE_HINTS) {
    causes.push(tooMany(`${path}.hints.forZones`, zones.length, MAX_ZONE_HINTS));
  } else {
    const seen = new Set<string>();
    zones.forEach((z, k) => {
      const field = `${path}.hints.forZones[${k}].name`;
      const name = String(z.name ?? "");
      if (seen.has(name)) causes.push(duplicate(field, name));
      seen.add(name);
      for (const m of labelValue(name)) causes.push(invalidValue(field, name, m));
    });
  }
  return causes;
}

function validatePorts(ports: Obj[]): StatusCause[] {
  if (ports.length > MAX_PORTS) return [tooMany("ports", ports.length, MAX_PORTS)];
  const causes: StatusCause[] = [];
  const names = new Set<string>();
  ports.forEach((p, i) => {
    const name = String(p.name ?? "");
    if (name) {
      for (const m of dns1123Label(name)) causes.push(invalidValue(`ports[${i}].name`, name, m));
    }
    if (names.has(name)) causes.push(duplicate(`ports[${i}].name`, name));
    names.add(name);
    if (!["SCTP", "TCP", "UDP"].includes(String(p.protocol))) {
      causes.push(notSupported(`ports[${i}].protocol`, p.protocol, ["SCTP", "TCP", "UDP"]));
    }
    if (typeof p.appProtocol === "string") {
      for (const m of qualifiedName(p.appProtocol)) {
        causes.push(invalidValue(`ports[${i}].appProtocol`, p.appProtocol, m));
      }
    }
  });
  return causes;
}

/**
 * Validate a defaulted EndpointSlice (`old` set on update) and keep its
 * generation as the real strategy does; throws 422 Invalid.
 */
export function validateEndpointSlice(
  def: ResourceDef,
  obj: KubeObject,
  old: KubeObject | undefined,
  allowLoopback: boolean,
): void {
  const o = obj as Obj;
  const causes: StatusCause[] = [];
  const type = o.addressType;
  if (type === undefined || type === null || type === "") causes.push(required("addressType"));
  else if (!["FQDN", "IPv4", "IPv6"].includes(String(type))) {
    causes.push(notSupported("addressType", type, ["FQDN", "IPv4", "IPv6"]));
  }
  const endpoints = (o.endpoints ?? []) as Obj[];
  if (endpoints.length > MAX_ENDPOINTS) {
    causes.push(tooMany("endpoints", endpoints.length, MAX_ENDPOINTS));
  } else {
    endpoints.forEach((e, i) => {
      causes.push(...validateEndpoint(e, `endpoints[${i}]`, type, allowLoopback));
    });
  }
  causes.push(...validatePorts((o.ports ?? []) as Obj[]));
  if (old && (old as Obj).addressType !== type) {
    causes.push(invalidValue("addressType", type ?? "", "field is immutable"));
  }
  if (causes.length) throw newInvalid(def, obj.metadata.name ?? "", causes);
  // The generation also counts label changes.
  const m = obj.metadata;
  if (old && m.generation === old.metadata.generation && !sameJson(m.labels, old.metadata.labels)) {
    m.generation = (old.metadata.generation ?? 0) + 1;
  }
}

/** List cells as kubectl prints them: three items, then `+ N more...`; `<unset>` when empty. */
function listCell(items: string[]): string {
  const shown = items.slice(0, 3).join(",");
  if (items.length > 3) return `${shown} + ${items.length - 3} more...`;
  return shown || "<unset>";
}

/** The `Ports` cell of `kubectl get endpointslices`. */
export function portsCell(obj: KubeObject): string {
  const ports = ((obj as Obj).ports ?? []) as Obj[];
  return listCell(
    ports.map((p) => typeof p.port === "number" ? String(p.port) : String(p.name ?? "*")),
  );
}

/** The `Endpoints` cell of `kubectl get endpointslices`. */
export function endpointsCell(obj: KubeObject): string {
  const eps = ((obj as Obj).endpoints ?? []) as Obj[];
  return listCell(eps.flatMap((e) => (e.addresses ?? []) as string[]));
}
