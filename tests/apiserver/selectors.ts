/**
 * Label selectors (`a=b,c!=d,e in (x,y),f notin (z),g,!h`) and field
 * selectors (`metadata.name=x,spec.type!=y`) as the API server parses them.
 * @module
 */

import { badRequest, type KubeObject } from "./types.ts";

/** A compiled selector: true when the object matches. */
export type Matcher = (obj: KubeObject) => boolean;

function splitTerms(sel: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let cur = "";
  for (const ch of sel) {
    if (ch === "(") depth++;
    if (ch === ")") depth--;
    if (ch === "," && depth === 0) {
      out.push(cur);
      cur = "";
    } else cur += ch;
  }
  out.push(cur);
  return out.map((t) => t.trim()).filter((t) => t !== "");
}

/** Compile a `labelSelector` query value. */
export function parseLabelSelector(sel: string | null): Matcher {
  if (!sel) return () => true;
  const tests = splitTerms(sel).map((term): (l: Record<string, string>) => boolean => {
    let m = /^([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)$/.exec(term);
    if (m) {
      const [, key, op, raw] = m;
      const vals = raw.split(",").map((v) => v.trim());
      return op === "in"
        ? (l) => key in l && vals.includes(l[key])
        : (l) => !(key in l) || !vals.includes(l[key]);
    }
    m = /^([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)$/.exec(term);
    if (m) {
      const [, key, op, val] = m;
      return op === "!=" ? (l) => l[key] !== val : (l) => key in l && l[key] === val;
    }
    m = /^(!?)([\w./-]+)$/.exec(term);
    if (m) {
      const [, not, key] = m;
      return not ? (l) => !(key in l) : (l) => key in l;
    }
    throw badRequest(
      `unable to parse requirement: invalid label selector term ${JSON.stringify(term)}`,
    );
  });
  return (obj) => {
    const labels = obj.metadata.labels ?? {};
    return tests.every((t) => t(labels));
  };
}

function fieldValue(obj: KubeObject, path: string): string {
  let cur: unknown = obj;
  for (const part of path.split(".")) {
    if (cur === null || typeof cur !== "object") return "";
    cur = (cur as Record<string, unknown>)[part];
  }
  return cur === undefined || cur === null ? "" : String(cur);
}

const SELECTABLE: Record<string, string[]> = {
  "/pods": [
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
  ],
  "/secrets": ["type"],
  "/namespaces": ["status.phase"],
  "/nodes": ["spec.unschedulable"],
  "events": [
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
    "regarding.kind",
    "regarding.namespace",
    "regarding.name",
    "regarding.uid",
    "regarding.apiVersion",
    "regarding.resourceVersion",
    "regarding.fieldPath",
    "reportingController",
    "deprecatedSource",
  ],
};

/** Fields a resource accepts in `fieldSelector` (as the real server, which refuses others). */
export function selectableFields(
  def: { storageKey?: string; group: string; plural: string },
): string[] {
  const key = def.storageKey ?? `${def.group}/${def.plural}`;
  return ["metadata.name", "metadata.namespace", ...(SELECTABLE[key] ?? [])];
}

/**
 * Compile a `fieldSelector` query value (`=`, `==`, `!=`); with `allowed`,
 * other fields are refused with 400 as the real server does.
 */
export function parseFieldSelector(sel: string | null, allowed?: string[]): Matcher {
  if (!sel) return () => true;
  const tests = splitTerms(sel).map((term): Matcher => {
    const m = /^([\w.]+)\s*(==|=|!=)\s*(.*)$/.exec(term);
    if (!m) throw badRequest(`invalid field selector: ${JSON.stringify(term)}`);
    const [, path, op, val] = m;
    if (allowed && !allowed.includes(path)) {
      throw badRequest(`field label not supported: ${path}`);
    }
    return op === "!=" ? (o) => fieldValue(o, path) !== val : (o) => fieldValue(o, path) === val;
  });
  return (obj) => tests.every((t) => t(obj));
}
