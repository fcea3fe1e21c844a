/**
 * Server-side printing: `meta.k8s.io/v1` `Table` responses for `kubectl get`
 * (CRD `additionalPrinterColumns` evaluated with a JSONPath subset, a few
 * computed columns for built-ins), and `PartialObjectMetadata`.
 * @module
 */

import { endpointsCell, portsCell } from "./endpointslices.ts";
import {
  apiVersionOf,
  type JsonObject,
  type KubeObject,
  type PrinterColumn,
  type ResourceDef,
} from "./types.ts";

type Obj = Record<string, unknown>;

/**
 * Evaluate a JSONPath of the subset printer columns use: `.a.b`, `.a[0].b`,
 * `.a[*].b`, `.a[?(@.k=="v")].b`. Returns every match.
 */
export function jsonPath(obj: unknown, path: string): unknown[] {
  let p = path.trim();
  if (p.startsWith("{") && p.endsWith("}")) p = p.slice(1, -1);
  if (p.startsWith("$")) p = p.slice(1);
  const tokens: string[] = [];
  const re = /\.([^.[\]]+)|\[([^\]]*)\]/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(p)) !== null) tokens.push(m[1] !== undefined ? `.${m[1]}` : `[${m[2]}]`);
  let cur: unknown[] = [obj];
  for (const t of tokens) {
    const next: unknown[] = [];
    for (const c of cur) {
      if (c === null || c === undefined) continue;
      if (t.startsWith(".")) {
        if (typeof c === "object" && !Array.isArray(c)) next.push((c as Obj)[t.slice(1)]);
        continue;
      }
      if (!Array.isArray(c)) continue;
      const inner = t.slice(1, -1);
      const f = /^\?\(@\.([\w.]+)\s*==\s*["']?([^"']*)["']?\)$/.exec(inner);
      if (inner === "*") next.push(...c);
      else if (f) {
        next.push(...c.filter((x) => String(jsonPath(x, `.${f[1]}`)[0]) === f[2]));
      } else if (/^-?\d+$/.test(inner)) {
        const i = Number(inner);
        next.push(c[i < 0 ? c.length + i : i]);
      }
    }
    cur = next.filter((x) => x !== undefined);
  }
  return cur;
}

function age(ts: unknown): string {
  if (typeof ts !== "string") return "<unknown>";
  const s = Math.max(0, Math.floor((Date.now() - Date.parse(ts)) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

function computed(obj: KubeObject, name: string): unknown {
  const o = obj as Obj;
  const spec = (o.spec ?? {}) as Obj;
  const status = (o.status ?? {}) as Obj;
  switch (name) {
    case "#externalIPs": {
      const ing = ((status.loadBalancer as Obj | undefined)?.ingress ?? []) as Obj[];
      const ips = [
        ...ing.map((i) => i.ip ?? i.hostname),
        ...((spec.externalIPs ?? []) as string[]),
      ];
      if (ips.length) return ips.join(",");
      return spec.type === "LoadBalancer" ? "<pending>" : "<none>";
    }
    case "#servicePorts":
      return ((spec.ports ?? []) as Obj[]).map((p) =>
        `${p.port}${p.nodePort ? `:${p.nodePort}` : ""}/${p.protocol ?? "TCP"}`
      ).join(",") || "<none>";
    case "#dataCount":
      return Object.keys((o.data ?? {}) as Obj).length +
        Object.keys((o.binaryData ?? {}) as Obj).length;
    case "#involvedObject": {
      const io = (o.involvedObject ?? {}) as Obj;
      return `${String(io.kind ?? "").toLowerCase()}/${io.name ?? ""}`;
    }
    case "#nodeReady": {
      const c = ((status.conditions ?? []) as Obj[]).find((x) => x.type === "Ready");
      return c?.status === "True" ? "Ready" : "NotReady";
    }
    case "#nodeRoles": {
      const roles = Object.keys(obj.metadata.labels ?? {})
        .filter((l) => l.startsWith("node-role.kubernetes.io/"))
        .map((l) => l.slice("node-role.kubernetes.io/".length));
      return roles.join(",") || "<none>";
    }
    case "#podReady": {
      const cs = (status.containerStatuses ?? []) as Obj[];
      const total = ((spec.containers ?? []) as Obj[]).length;
      return `${cs.filter((c) => c.ready).length}/${total}`;
    }
    case "#podRestarts":
      return ((status.containerStatuses ?? []) as Obj[])
        .reduce((n, c) => n + Number(c.restartCount ?? 0), 0);
    case "#secretCount":
      return ((o.secrets ?? []) as unknown[]).length;
    case "#deploymentReady":
      return `${status.readyReplicas ?? 0}/${spec.replicas ?? 1}`;
    case "#deploymentUpdated":
      return Number(status.updatedReplicas ?? 0);
    case "#deploymentAvailable":
      return Number(status.availableReplicas ?? 0);
    case "#pdbMinAvailable":
      return spec.minAvailable === undefined ? "N/A" : String(spec.minAvailable);
    case "#pdbMaxUnavailable":
      return spec.maxUnavailable === undefined ? "N/A" : String(spec.maxUnavailable);
    case "#pdbAllowed":
      return Number(status.disruptionsAllowed ?? 0);
    case "#slicePorts":
      return portsCell(obj);
    case "#sliceEndpoints":
      return endpointsCell(obj);
    case "#roleRef": {
      const ref = (o.roleRef ?? {}) as Obj;
      return `${ref.kind}/${ref.name}`;
    }
    case "#subjectsUser":
    case "#subjectsGroup":
    case "#subjectsServiceAccount": {
      const kind = name.slice("#subjects".length);
      const subjects = ((o.subjects ?? []) as Obj[]).filter((x) => x.kind === kind);
      return subjects.map((x) =>
        kind === "ServiceAccount" ? `${x.namespace ?? ""}/${x.name}` : String(x.name)
      ).join(", ");
    }
  }
  return undefined;
}

function cell(obj: KubeObject, col: PrinterColumn): unknown {
  const v = col.jsonPath.startsWith("#")
    ? computed(obj, col.jsonPath)
    : jsonPath(obj, col.jsonPath)[0];
  if (col.type === "date") return v === undefined ? "<unknown>" : age(v);
  if (v === undefined || v === null) return null;
  if (typeof v === "object") return JSON.stringify(v);
  return v;
}

/** `PartialObjectMetadata` of an object. */
export function partialMetadata(obj: KubeObject): JsonObject {
  return {
    kind: "PartialObjectMetadata",
    apiVersion: "meta.k8s.io/v1",
    metadata: JSON.parse(JSON.stringify(obj.metadata)),
  };
}

/** A `Table` with one row an object. */
export function toTable(
  def: ResourceDef,
  objs: KubeObject[],
  listMeta: JsonObject,
  includeObject: string,
  noHeaders = false,
): JsonObject {
  const cols = def.printerColumns;
  const columnDefinitions = noHeaders ? [] : [
    {
      name: "Name",
      type: "string",
      format: "name",
      description: "Name must be unique within a namespace.",
      priority: 0,
    },
    ...cols.map((c) => ({
      name: c.name,
      type: c.type === "date" ? "string" : c.type,
      format: c.format ?? "",
      description: c.description ?? "",
      priority: c.priority ?? 0,
    })),
  ];
  const rows = objs.map((o) => {
    const row: JsonObject = {
      cells: [o.metadata.name ?? "", ...cols.map((c) => cell(o, c))] as JsonObject[],
    };
    if (includeObject === "Object") {
      row.object = JSON.parse(JSON.stringify({
        ...o,
        apiVersion: apiVersionOf(def),
        kind: def.kind,
      }));
    } else if (includeObject !== "None") row.object = partialMetadata(o);
    return row;
  });
  return {
    kind: "Table",
    apiVersion: "meta.k8s.io/v1",
    metadata: listMeta,
    columnDefinitions,
    rows,
  };
}
