/**
 * JSON ⇄ Kubernetes protobuf for the kinds the test API server speaks in
 * `application/vnd.kubernetes.protobuf`, with protobufjs over our `.proto`
 * subset (field numbers from the upstream generated files, see the `.proto`
 * files beside this one).
 *
 * Wire form of an object: the magic `k8s\0`, then a `runtime.Unknown`
 * {typeMeta{apiVersion, kind}, raw: the kind's message, contentEncoding,
 * contentType}. Watch streams: each event is a 4-byte big-endian length and a
 * `meta.v1.WatchEvent` {type, object: RawExtension{raw: the object's whole
 * encoding, magic included}}.
 *
 * JSON conventions (Go's `encoding/json` on the k8s.io/api types): zero
 * scalars are left out unless the field is marked `(keep_zero)`, empty lists
 * and maps always; `Time` is RFC 3339 in seconds, `MicroTime` with six
 * fractional digits, a zero time is left out; `IntOrString` is a number or a
 * string; bytes are base64; `FieldsV1` is inline JSON. Items of a list carry
 * no apiVersion/kind in protobuf (the Go types have an empty TypeMeta there).
 * @module
 */

import protobuf from "protobufjs";

type Obj = Record<string, unknown>;

/** The magic before every protobuf-encoded object. */
export const MAGIC = new Uint8Array([0x6b, 0x38, 0x73, 0x00]);

/** A body that is not a valid protobuf encoding of a known kind. */
export class ProtobufError extends Error {}

const PROTO_FILES = [
  "runtime",
  "intstr",
  "meta",
  "core",
  "coordination",
  "events",
  "discovery",
  "authorization",
];

const root = new protobuf.Root();
for (const f of PROTO_FILES) {
  const src = Deno.readTextFileSync(new URL(`./${f}.proto`, import.meta.url));
  protobuf.parse(src, root, { keepCase: true });
}
root.resolveAll();

const META = "k8s.io.apimachinery.pkg.apis.meta.v1";
const type = (name: string) => root.lookupType(name);
const UNKNOWN = type("k8s.io.apimachinery.pkg.runtime.Unknown");
const WATCH_EVENT = type(`${META}.WatchEvent`);

/** apiVersion → protobuf package and the kinds served from it. */
const SERVED: [string, string, string[]][] = [
  ["v1", "k8s.io.api.core.v1", [
    "Namespace",
    "ConfigMap",
    "Secret",
    "Service",
    "ServiceAccount",
    "Event",
  ]],
  ["coordination.k8s.io/v1", "k8s.io.api.coordination.v1", ["Lease"]],
  ["events.k8s.io/v1", "k8s.io.api.events.v1", ["Event"]],
  ["discovery.k8s.io/v1", "k8s.io.api.discovery.v1", ["EndpointSlice"]],
  ["authorization.k8s.io/v1", "k8s.io.api.authorization.v1", [
    "SelfSubjectAccessReview",
    "SubjectAccessReview",
    "LocalSubjectAccessReview",
    "SelfSubjectRulesReview",
  ]],
];

const KINDS = new Map<string, protobuf.Type>();
for (const [apiVersion, pkg, kinds] of SERVED) {
  for (const kind of kinds) {
    KINDS.set(`${apiVersion}/${kind}`, type(`${pkg}.${kind}`));
    const list = root.lookup(`${pkg}.${kind}List`);
    if (list instanceof protobuf.Type) KINDS.set(`${apiVersion}/${kind}List`, list);
  }
}

/** The message of `apiVersion`/`kind`, if spoken (Status and DeleteOptions for any group). */
export function messageFor(apiVersion: string, kind: string): protobuf.Type | undefined {
  if (kind === "Status" || kind === "DeleteOptions") return type(`${META}.${kind}`);
  return KINDS.get(`${apiVersion}/${kind}`);
}

/** Whether objects of `apiVersion`/`kind` have a protobuf form here. */
export function speaks(apiVersion: string, kind: string): boolean {
  return KINDS.has(`${apiVersion}/${kind}`);
}

// ---- JSON → protobufjs plain object -----------------------------------------

const TIME = new Set([`.${META}.Time`, `.${META}.MicroTime`]);
const INT_OR_STRING = ".k8s.io.apimachinery.pkg.util.intstr.IntOrString";
const FIELDS_V1 = `.${META}.FieldsV1`;
const RAW_EXTENSION = ".k8s.io.apimachinery.pkg.runtime.RawExtension";
const utf8 = new TextEncoder();

function parseTime(s: unknown, field: string): Obj {
  const m = typeof s === "string"
    ? /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$/.exec(s)
    : null;
  const ms = m ? Date.parse(`${m[1]}${m[3]}`) : NaN;
  if (!m || Number.isNaN(ms)) throw new ProtobufError(`${field}: not an RFC 3339 time: ${s}`);
  return { seconds: ms / 1000, nanos: Number((m[2] ?? "").padEnd(9, "0")) };
}

function valueToPlain(f: protobuf.Field, v: unknown): unknown {
  const t = f.resolvedType;
  if (!(t instanceof protobuf.Type)) return v;
  if (TIME.has(t.fullName)) return parseTime(v, f.name);
  if (t.fullName === INT_OR_STRING) {
    return typeof v === "number" ? { type: 0, intVal: v } : { type: 1, strVal: String(v) };
  }
  if (t.fullName === FIELDS_V1) return { Raw: utf8.encode(JSON.stringify(v)) };
  if (t.fullName === RAW_EXTENSION) return { raw: utf8.encode(JSON.stringify(v)) };
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new ProtobufError(`${f.name}: expected an object, got ${JSON.stringify(v)}`);
  }
  return toPlain(t, v as Obj);
}

function toPlain(t: protobuf.Type, json: Obj): Obj {
  const out: Obj = {};
  for (const f of t.fieldsArray) {
    const v = json[f.name];
    if (v === undefined || v === null) continue;
    if (f.map) {
      out[f.name] = Object.fromEntries(
        Object.entries(v as Obj).map(([k, e]) => [k, valueToPlain(f, e)]),
      );
    } else if (f.repeated) {
      if (!Array.isArray(v)) throw new ProtobufError(`${f.name}: expected a list`);
      out[f.name] = v.map((e) => valueToPlain(f, e));
    } else out[f.name] = valueToPlain(f, v);
  }
  return out;
}

// ---- protobufjs plain object → JSON -----------------------------------------

const utf8Decoder = new TextDecoder();

function formatTime(p: Obj, micro: boolean): string | undefined {
  const seconds = Number(p.seconds ?? 0);
  const nanos = Number(p.nanos ?? 0);
  if (seconds === 0 && nanos === 0) return undefined;
  const base = new Date(seconds * 1000).toISOString().slice(0, 19);
  if (!micro) return `${base}Z`;
  return `${base}.${String(Math.floor(nanos / 1000)).padStart(6, "0")}Z`;
}

function rawJson(b64: unknown): unknown {
  const bytes = Uint8Array.from(atob(String(b64 ?? "")), (c) => c.charCodeAt(0));
  if (!bytes.length) return undefined;
  return JSON.parse(utf8Decoder.decode(bytes));
}

function valueFromPlain(f: protobuf.Field, v: unknown): unknown {
  const t = f.resolvedType;
  if (!(t instanceof protobuf.Type)) return v;
  const p = v as Obj;
  if (TIME.has(t.fullName)) return formatTime(p, t.name === "MicroTime");
  if (t.fullName === INT_OR_STRING) {
    if (Number(p.type ?? 0) === 1) return String(p.strVal ?? "");
    return p.intVal === undefined || p.intVal === 0 ? undefined : Number(p.intVal);
  }
  if (t.fullName === FIELDS_V1) return rawJson(p.Raw);
  if (t.fullName === RAW_EXTENSION) return rawJson(p.raw);
  return fromPlain(t, p);
}

const isZero = (v: unknown) => v === "" || v === 0 || v === false;

function fromPlain(t: protobuf.Type, plain: Obj): Obj {
  const out: Obj = {};
  for (const f of t.fieldsArray) {
    if (!(f.name in plain)) continue;
    const v = plain[f.name];
    if (f.map) {
      const entries = Object.entries(v as Obj);
      if (entries.length) {
        out[f.name] = Object.fromEntries(entries.map(([k, e]) => [k, valueFromPlain(f, e)]));
      }
    } else if (f.repeated) {
      const list = v as unknown[];
      if (list.length) out[f.name] = list.map((e) => valueFromPlain(f, e));
    } else {
      const x = valueFromPlain(f, v);
      const keep = f.options?.["(keep_zero)"] === true;
      if (x !== undefined && (keep || !isZero(x))) out[f.name] = x;
    }
  }
  return out;
}

// ---- messages and envelopes -------------------------------------------------

const TO_OBJECT = { longs: Number, bytes: String, defaults: false } as const;

/** Encode the JSON `obj` as message `t` (no envelope). */
export function toMessage(t: protobuf.Type, obj: Obj): Uint8Array {
  // Only the message's fields are taken: apiVersion/kind (here and in list
  // items) travel in the envelope, or not at all.
  return t.encode(t.fromObject(toPlain(t, obj))).finish();
}

/** Decode message `t` (no envelope) into its JSON shape. */
export function fromMessage(t: protobuf.Type, bytes: Uint8Array): Obj {
  let msg: protobuf.Message;
  try {
    msg = t.decode(bytes);
  } catch (err) {
    throw new ProtobufError(`${t.name}: ${(err as Error).message}`);
  }
  return fromPlain(t, t.toObject(msg, TO_OBJECT));
}

/** The `k8s\0` + Unknown encoding of a JSON object whose apiVersion/kind is spoken. */
export function encodeObject(obj: Obj): Uint8Array<ArrayBuffer> {
  const apiVersion = String(obj.apiVersion ?? "");
  const kind = String(obj.kind ?? "");
  const t = messageFor(apiVersion, kind);
  if (!t) throw new ProtobufError(`no protobuf form for ${apiVersion}/${kind}`);
  const unknown = UNKNOWN.encode(UNKNOWN.fromObject({
    typeMeta: { apiVersion, kind },
    raw: toMessage(t, obj),
    contentEncoding: "",
    contentType: "",
  })).finish();
  const out = new Uint8Array(MAGIC.length + unknown.length);
  out.set(MAGIC);
  out.set(unknown, MAGIC.length);
  return out;
}

/** The envelope's type and payload, checked. */
export function readEnvelope(
  body: Uint8Array,
): { apiVersion: string; kind: string; raw: Uint8Array } {
  if (body.length < MAGIC.length || MAGIC.some((b, i) => body[i] !== b)) {
    throw new ProtobufError(
      "provided data does not appear to be a protobuf message, expected prefix [107 56 115 0]",
    );
  }
  let u: Obj;
  try {
    u = UNKNOWN.toObject(UNKNOWN.decode(body.subarray(MAGIC.length)), { bytes: Array });
  } catch (err) {
    throw new ProtobufError(`runtime.Unknown: ${(err as Error).message}`);
  }
  if (u.contentEncoding) {
    throw new ProtobufError(`unsupported content encoding ${JSON.stringify(u.contentEncoding)}`);
  }
  const tm = (u.typeMeta ?? {}) as Obj;
  return {
    apiVersion: String(tm.apiVersion ?? ""),
    kind: String(tm.kind ?? ""),
    raw: Uint8Array.from((u.raw ?? []) as number[]),
  };
}

/** Decode a `k8s\0` + Unknown body into its JSON shape (apiVersion/kind from the envelope). */
export function decodeObject(body: Uint8Array): Obj {
  const { apiVersion, kind, raw } = readEnvelope(body);
  const t = messageFor(apiVersion, kind);
  if (!t) throw new ProtobufError(`no protobuf form for ${apiVersion}/${kind}`);
  const obj = fromMessage(t, raw);
  return { ...(apiVersion ? { apiVersion } : {}), ...(kind ? { kind } : {}), ...obj };
}

/** One framed protobuf watch event (length prefix included). */
export function encodeWatchEvent(eventType: string, object: Obj): Uint8Array<ArrayBuffer> {
  const ev = WATCH_EVENT.encode(WATCH_EVENT.fromObject({
    type: eventType,
    object: { raw: encodeObject(object) },
  })).finish();
  const out = new Uint8Array(4 + ev.length);
  new DataView(out.buffer).setUint32(0, ev.length);
  out.set(ev, 4);
  return out;
}

/** Decode one WatchEvent message (without its length prefix). */
export function decodeWatchEvent(frame: Uint8Array): { type: string; object: Obj } {
  const ev = WATCH_EVENT.toObject(WATCH_EVENT.decode(frame), { bytes: Array });
  const raw = Uint8Array.from(((ev.object as Obj | undefined)?.raw ?? []) as number[]);
  return { type: String(ev.type ?? ""), object: decodeObject(raw) };
}

/** Read a protobuf watch stream: length-prefixed WatchEvents, decoded. */
export async function* protobufWatchEvents(
  body: ReadableStream<Uint8Array>,
): AsyncGenerator<{ type: string; object: Obj }> {
  let buf = new Uint8Array(0);
  for await (const chunk of body) {
    const next = new Uint8Array(buf.length + chunk.length);
    next.set(buf);
    next.set(chunk, buf.length);
    buf = next;
    while (buf.length >= 4) {
      const len = new DataView(buf.buffer, buf.byteOffset).getUint32(0);
      if (buf.length < 4 + len) break;
      yield decodeWatchEvent(buf.subarray(4, 4 + len));
      buf = buf.slice(4 + len);
    }
  }
}
