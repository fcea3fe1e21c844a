/**
 * Structural-schema handling of custom resources, as the real API server does
 * it: unknown fields are pruned (or refused with `fieldValidation=Strict`),
 * values are checked against `type`, `enum`, `required` and `format: byte`.
 * @module
 */

import type { StatusCause } from "./types.ts";

type Obj = Record<string, unknown>;

const DATE_TIME = /^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)$/;
type Schema = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

/** Result of {@link pruneAndValidate}. */
export interface SchemaResult {
  /** The pruned object. */
  object: Obj;
  /** Paths of fields not in the schema (pruned). */
  unknownFields: string[];
  /** Type/enum/required violations. */
  errors: StatusCause[];
}

/**
 * Prune `obj` to `schema` and validate it. `apiVersion`, `kind` and
 * `metadata` are never pruned at the top level.
 */
export function pruneAndValidate(obj: Obj, schema: Schema | undefined): SchemaResult {
  const unknownFields: string[] = [];
  const errors: StatusCause[] = [];
  if (!schema) return { object: obj, unknownFields, errors };
  const out = walk(obj, schema, "", unknownFields, errors, true) as Obj;
  return { object: out, unknownFields, errors };
}

function typeOk(v: unknown, s: Schema): boolean {
  if (v === null) return s.nullable === true;
  if (s["x-kubernetes-int-or-string"]) return typeof v === "string" || Number.isInteger(v);
  switch (s.type) {
    case "string":
      return typeof v === "string";
    case "integer":
      return typeof v === "number" && Number.isInteger(v);
    case "number":
      return typeof v === "number";
    case "boolean":
      return typeof v === "boolean";
    case "object":
      return isObj(v);
    case "array":
      return Array.isArray(v);
    default:
      return true;
  }
}

function walk(
  v: unknown,
  s: Schema,
  path: string,
  unknown: string[],
  errors: StatusCause[],
  top = false,
): unknown {
  const field = path || "<root>";
  if (!typeOk(v, s)) {
    errors.push({
      reason: "FieldValueTypeInvalid",
      field,
      message: `Invalid value: ${JSON.stringify(v)}: ${field} in body must be of type ${s.type}`,
    });
    return v;
  }
  if (v === null) return v;
  if (Array.isArray(s.enum) && !s.enum.some((e) => JSON.stringify(e) === JSON.stringify(v))) {
    errors.push({
      reason: "FieldValueNotSupported",
      field,
      message: `Unsupported value: ${JSON.stringify(v)}: supported values: ${
        s.enum.map((e) => JSON.stringify(e)).join(", ")
      }`,
    });
  }
  if (s.format === "byte" && typeof v === "string") {
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(v) || v.length % 4 !== 0) {
      errors.push({
        reason: "FieldValueInvalid",
        field,
        message: `Invalid value: ${JSON.stringify(v.slice(0, 40))}: ${field} in body must be of ` +
          `type byte`,
      });
    }
  }
  if (s.format === "date-time" && typeof v === "string" && !DATE_TIME.test(v)) {
    errors.push({
      reason: "FieldValueInvalid",
      field,
      message: `Invalid value: ${JSON.stringify(v)}: ${field} in body must be of type ` +
        `date-time: ${JSON.stringify(v)}`,
    });
  }
  if (Array.isArray(v)) {
    const items = s.items as Schema | undefined;
    return items ? v.map((x, i) => walk(x, items, `${path}[${i}]`, unknown, errors)) : v;
  }
  if (!isObj(v)) return v;
  for (const r of (s.required ?? []) as string[]) {
    if (!(r in v)) {
      errors.push({
        reason: "FieldValueRequired",
        field: path ? `${path}.${r}` : r,
        message: "Required value",
      });
    }
  }
  const props = s.properties as Record<string, Schema> | undefined;
  const additional = s.additionalProperties;
  const preserve = s["x-kubernetes-preserve-unknown-fields"] === true;
  const out: Obj = {};
  for (const [k, x] of Object.entries(v)) {
    const sub = path ? `${path}.${k}` : k;
    if (top && (k === "apiVersion" || k === "kind" || k === "metadata")) {
      out[k] = x;
    } else if (props && k in props) {
      out[k] = walk(x, props[k], sub, unknown, errors);
    } else if (isObj(additional)) {
      out[k] = walk(x, additional as Schema, sub, unknown, errors);
    } else if (additional === true || preserve || (!props && s.type !== "object")) {
      out[k] = x;
    } else {
      unknown.push(sub);
    }
  }
  return out;
}
