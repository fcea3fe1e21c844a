/**
 * Just enough of the Kubernetes protobuf encoding to read the access reviews
 * typed clients (`kubectl auth can-i`) send as
 * `application/vnd.kubernetes.protobuf`: the `k8s\0` envelope
 * (`runtime.Unknown`) and the review messages, turned into their JSON shape.
 * Everything else is answered as JSON only.
 * @module
 */

type Obj = Record<string, unknown>;

/** One decoded field: its number and raw value (varint or bytes). */
interface Field {
  no: number;
  varint?: number;
  bytes?: Uint8Array;
}

function fields(buf: Uint8Array): Field[] {
  const out: Field[] = [];
  let i = 0;
  const varint = (): number => {
    let v = 0;
    let mul = 1;
    for (let n = 0; n < 10; n++) {
      if (i >= buf.length) throw new Error("protobuf: truncated varint");
      const b = buf[i++];
      v += (b & 0x7f) * mul;
      if (!(b & 0x80)) return v;
      mul *= 128;
    }
    throw new Error("protobuf: varint too long");
  };
  while (i < buf.length) {
    const key = varint();
    const no = Math.floor(key / 8);
    switch (key & 7) {
      case 0:
        out.push({ no, varint: varint() });
        break;
      case 2: {
        const len = varint();
        if (i + len > buf.length) throw new Error("protobuf: truncated field");
        out.push({ no, bytes: buf.subarray(i, i + len) });
        i += len;
        break;
      }
      case 1:
        i += 8;
        break;
      case 5:
        i += 4;
        break;
      default:
        throw new Error(`protobuf: unsupported wire type ${key & 7}`);
    }
  }
  return out;
}

const text = (b: Uint8Array | undefined): string => new TextDecoder().decode(b);

/** Decode a message whose fields are strings (field number → JSON name). */
function strings(buf: Uint8Array, names: Record<number, string>): Obj {
  const o: Obj = {};
  for (const f of fields(buf)) if (names[f.no] && f.bytes) o[names[f.no]] = text(f.bytes);
  return o;
}

const RESOURCE_ATTRIBUTES = {
  1: "namespace",
  2: "verb",
  3: "group",
  4: "version",
  5: "resource",
  6: "subresource",
  7: "name",
};
const NON_RESOURCE_ATTRIBUTES = { 1: "path", 2: "verb" };
const OBJECT_META = { 1: "name", 2: "generateName", 3: "namespace" };

function reviewSpec(kind: string, buf: Uint8Array): Obj {
  const spec: Obj = {};
  for (const f of fields(buf)) {
    if (!f.bytes) continue;
    if (kind === "SelfSubjectRulesReview") {
      if (f.no === 1) spec.namespace = text(f.bytes);
      continue;
    }
    if (f.no === 1) spec.resourceAttributes = strings(f.bytes, RESOURCE_ATTRIBUTES);
    else if (f.no === 2) spec.nonResourceAttributes = strings(f.bytes, NON_RESOURCE_ATTRIBUTES);
    else if (kind !== "SelfSubjectAccessReview" && f.no === 3) spec.user = text(f.bytes);
    else if (kind !== "SelfSubjectAccessReview" && f.no === 4) {
      spec.groups = [...(spec.groups as string[] ?? []), text(f.bytes)];
    }
  }
  return spec;
}

/**
 * Decode a protobuf-encoded access review (`k8s\0` + `runtime.Unknown`) into
 * its JSON shape (`apiVersion`, `kind`, `metadata`, `spec`).
 */
export function decodeReview(body: Uint8Array): Obj {
  const magic = [0x6b, 0x38, 0x73, 0x00];
  if (body.length < 4 || magic.some((b, i) => body[i] !== b)) {
    throw new Error("protobuf: missing the k8s envelope");
  }
  let typeMeta: Obj = {};
  let raw: Uint8Array = new Uint8Array();
  for (const f of fields(body.subarray(4))) {
    if (f.no === 1 && f.bytes) typeMeta = strings(f.bytes, { 1: "apiVersion", 2: "kind" });
    if (f.no === 2 && f.bytes) raw = f.bytes;
  }
  const kind = String(typeMeta.kind ?? "");
  const out: Obj = { apiVersion: typeMeta.apiVersion, kind, metadata: {} };
  for (const f of fields(raw)) {
    if (f.no === 1 && f.bytes) out.metadata = strings(f.bytes, OBJECT_META);
    if (f.no === 2 && f.bytes) out.spec = reviewSpec(kind, f.bytes);
  }
  return out;
}
