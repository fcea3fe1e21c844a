/**
 * The three patch formats of the API server: JSON merge patch (RFC 7386),
 * JSON patch (RFC 6902) and strategic merge patch (merge patch plus the
 * directives and list merge keys that `kubectl apply` sends for built-ins).
 * @module
 */

import { ApiError, badRequest, clone } from "./types.ts";

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

/** RFC 7386 JSON merge patch. */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isObj(patch)) return clone(patch);
  const out: Obj = isObj(target) ? clone(target) : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

function unescape(tok: string): string {
  return tok.replaceAll("~1", "/").replaceAll("~0", "~");
}

function parsePointer(ptr: string): string[] {
  if (ptr === "") return [];
  if (!ptr.startsWith("/")) throw badRequest(`json patch: invalid pointer ${JSON.stringify(ptr)}`);
  return ptr.slice(1).split("/").map(unescape);
}

function getAt(doc: unknown, path: string[]): unknown {
  let cur = doc;
  for (const p of path) {
    if (Array.isArray(cur)) cur = cur[Number(p)];
    else if (isObj(cur)) cur = cur[p];
    else return undefined;
  }
  return cur;
}

/** RFC 6902 JSON patch (add, remove, replace, move, copy, test). */
export function jsonPatch(doc: unknown, ops: unknown): unknown {
  if (!Array.isArray(ops)) throw badRequest("json patch: body must be an array of operations");
  let root = clone(doc);
  for (const raw of ops) {
    if (!isObj(raw)) throw badRequest("json patch: operation must be an object");
    const op = String(raw.op);
    const path = parsePointer(String(raw.path ?? ""));
    const fail = (why: string) => badRequest(`json patch ${op} ${raw.path}: ${why}`);
    const parentOf = (p: string[]) => {
      const parent = getAt(root, p.slice(0, -1));
      if (!isObj(parent) && !Array.isArray(parent)) throw fail("parent does not exist");
      return parent;
    };
    const remove = (p: string[]): unknown => {
      const parent = parentOf(p);
      const last = p[p.length - 1];
      if (Array.isArray(parent)) {
        const i = Number(last);
        if (!(i >= 0 && i < parent.length)) throw fail("index out of range");
        return parent.splice(i, 1)[0];
      }
      if (!(last in parent)) throw fail("path does not exist");
      const v = parent[last];
      delete parent[last];
      return v;
    };
    const add = (p: string[], value: unknown) => {
      if (p.length === 0) {
        root = clone(value);
        return;
      }
      const parent = parentOf(p);
      const last = p[p.length - 1];
      if (Array.isArray(parent)) {
        const i = last === "-" ? parent.length : Number(last);
        if (!(i >= 0 && i <= parent.length)) throw fail("index out of range");
        parent.splice(i, 0, clone(value));
      } else parent[last] = clone(value);
    };
    switch (op) {
      case "add":
        add(path, raw.value);
        break;
      case "remove":
        remove(path);
        break;
      case "replace":
        if (path.length === 0) root = clone(raw.value);
        else {
          remove(path);
          add(path, raw.value);
        }
        break;
      case "move": {
        const from = parsePointer(String(raw.from ?? ""));
        add(path, remove(from));
        break;
      }
      case "copy": {
        const from = parsePointer(String(raw.from ?? ""));
        add(path, getAt(root, from));
        break;
      }
      case "test":
        if (JSON.stringify(getAt(root, path)) !== JSON.stringify(raw.value)) {
          throw new ApiError(422, "Invalid", `json patch test ${raw.path}: value differs`);
        }
        break;
      default:
        throw fail("unknown operation");
    }
  }
  return root;
}

/** List merge keys of built-in types, by field name (enough for what kubectl apply sends). */
const MERGE_KEYS: Record<string, string> = {
  containers: "name",
  initContainers: "name",
  ephemeralContainers: "name",
  volumes: "name",
  volumeMounts: "mountPath",
  env: "name",
  ports: "port",
  conditions: "type",
  imagePullSecrets: "name",
  tolerations: "key",
  hostAliases: "ip",
  ownerReferences: "uid",
};

/**
 * Strategic merge patch for built-in types (see `MERGE_KEYS`); `atomic` names
 * top-level lists replaced whole (`+listType=atomic` in the Go type).
 */
export function strategicMergePatch(
  target: unknown,
  patch: unknown,
  field = "",
  atomic: string[] = [],
): unknown {
  if (!isObj(patch)) return clone(patch);
  if (patch.$patch === "replace") {
    const rest = clone(patch);
    delete rest.$patch;
    return rest;
  }
  if (patch.$patch === "delete") return undefined;
  const out: Obj = isObj(target) ? clone(target) : {};
  const retain = Array.isArray(patch.$retainKeys) ? patch.$retainKeys as string[] : undefined;
  for (const [k, v] of Object.entries(patch)) {
    if (k === "$retainKeys" || k === "$patch" || k.startsWith("$setElementOrder/")) continue;
    if (k.startsWith("$deleteFromPrimitiveList/")) {
      const name = k.slice("$deleteFromPrimitiveList/".length);
      if (Array.isArray(out[name]) && Array.isArray(v)) {
        out[name] = (out[name] as unknown[]).filter((x) => !v.includes(x));
      }
      continue;
    }
    if (v === null) {
      delete out[k];
      continue;
    }
    if (
      Array.isArray(v) && MERGE_KEYS[k] && Array.isArray(out[k]) && field !== "metadata" &&
      !atomic.includes(k)
    ) {
      // Container ports merge by containerPort, Service ports by port.
      const key = k === "ports" && v.some((p) => isObj(p) && "containerPort" in p)
        ? "containerPort"
        : MERGE_KEYS[k];
      out[k] = mergeList(out[k] as unknown[], v, key, k);
      continue;
    }
    const merged = strategicMergePatch(out[k], v, k);
    if (merged === undefined) delete out[k];
    else out[k] = merged;
  }
  if (retain) { for (const k of Object.keys(out)) if (!retain.includes(k)) delete out[k]; }
  return out;
}

function mergeList(target: unknown[], patch: unknown[], key: string, field: string): unknown[] {
  if (patch.some((p) => isObj(p) && p.$patch === "replace")) {
    return patch.filter((p) => !(isObj(p) && p.$patch === "replace")).map((p) => clone(p));
  }
  const out = target.map((t) => clone(t));
  for (const p of patch) {
    if (!isObj(p) || !(key in p)) {
      out.push(clone(p));
      continue;
    }
    const i = out.findIndex((t) => isObj(t) && t[key] === p[key]);
    if (p.$patch === "delete") {
      if (i >= 0) out.splice(i, 1);
      continue;
    }
    if (i >= 0) out[i] = strategicMergePatch(out[i], p, field);
    else {
      const item = clone(p);
      delete item.$patch;
      out.push(item);
    }
  }
  return out;
}
