/**
 * Discovery documents: `/version`, `/api`, `/apis`, `/api/v1`,
 * `/apis/<group>/<version>` (legacy, unaggregated JSON — clients that ask for
 * aggregated discovery fall back to it), and `/openapi/v2`, `/openapi/v3`
 * with just enough for kubectl: per group-version documents listing each
 * resource's PATCH operation with its `fieldValidation` parameter (so kubectl
 * uses server-side validation) and the CRDs' schemas.
 * @module
 */

import type { Registry } from "./registry.ts";
import { apiVersionOf, type JsonObject, type ResourceDef } from "./types.ts";

/** `/version` body. */
export function versionInfo(): JsonObject {
  return {
    major: "1",
    minor: "32",
    gitVersion: "v1.32.0",
    gitCommit: "70d3cc986aa8221cd1dfb1121852688902d3bf53",
    gitTreeState: "clean",
    buildDate: "2024-12-11T17:57:43Z",
    goVersion: "go1.23.3",
    compiler: "gc",
    platform: "linux/amd64",
  };
}

/** `/api` body. */
export function coreVersions(serverAddress: string): JsonObject {
  return {
    kind: "APIVersions",
    versions: ["v1"],
    serverAddressByClientCIDRs: [{ clientCIDR: "0.0.0.0/0", serverAddress }],
  };
}

/** `/apis` body. */
export function groupList(reg: Registry): JsonObject {
  const groups = reg.groups().filter((g) => g.group !== "").map((g) => ({
    name: g.group,
    versions: g.versions.map((v) => ({ groupVersion: `${g.group}/${v}`, version: v })),
    preferredVersion: { groupVersion: `${g.group}/${g.versions[0]}`, version: g.versions[0] },
  }));
  return { kind: "APIGroupList", apiVersion: "v1", groups };
}

/** `/apis/<group>` body, or undefined if the group is not served. */
export function group(reg: Registry, name: string): JsonObject | undefined {
  const g = reg.groups().find((x) => x.group === name && name !== "");
  if (!g) return undefined;
  return {
    kind: "APIGroup",
    apiVersion: "v1",
    name,
    versions: g.versions.map((v) => ({ groupVersion: `${name}/${v}`, version: v })),
    preferredVersion: { groupVersion: `${name}/${g.versions[0]}`, version: g.versions[0] },
  };
}

const VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

const SUB_KINDS: Record<string, [string, string[]]> = {
  exec: ["PodExecOptions", ["create", "get"]],
  attach: ["PodAttachOptions", ["create", "get"]],
  portforward: ["PodPortForwardOptions", ["create", "get"]],
  log: ["Pod", ["get"]],
  proxy: ["", ["create", "delete", "get", "patch", "update"]],
  finalize: ["Namespace", ["update"]],
  scale: ["Scale", ["get", "patch", "update"]],
};

/** `/api/v1` or `/apis/<g>/<v>` body, or undefined if not served. */
export function resourceList(reg: Registry, g: string, v: string): JsonObject | undefined {
  const defs = reg.inGroupVersion(g, v);
  if (defs.length === 0) return undefined;
  const resources: JsonObject[] = [];
  for (const d of defs) {
    const r: JsonObject = {
      name: d.plural,
      singularName: d.singular,
      namespaced: d.namespaced,
      kind: d.kind,
      verbs: d.verbs ?? VERBS,
    };
    if (d.shortNames.length) r.shortNames = d.shortNames;
    if (d.categories.length) r.categories = d.categories;
    resources.push(r);
    if (d.statusSubresource) {
      resources.push({
        name: `${d.plural}/status`,
        singularName: "",
        namespaced: d.namespaced,
        kind: d.kind,
        verbs: ["get", "patch", "update"],
      });
    }
    for (const s of d.subresources) {
      const [kind, verbs] = SUB_KINDS[s] ?? [d.kind, ["get"]];
      resources.push({
        name: `${d.plural}/${s}`,
        singularName: "",
        namespaced: d.namespaced,
        kind: kind || d.kind,
        verbs,
      });
    }
  }
  return {
    kind: "APIResourceList",
    apiVersion: "v1",
    groupVersion: g ? `${g}/${v}` : v,
    resources,
  };
}

function hashOf(s: string): string {
  let h1 = 0x811c9dc5;
  let h2 = 0x01000193;
  for (let i = 0; i < s.length; i++) {
    h1 = Math.imul(h1 ^ s.charCodeAt(i), 16777619);
    h2 = Math.imul(h2 ^ s.charCodeAt(i), 2246822507);
  }
  return (h1 >>> 0).toString(16).padStart(8, "0") + (h2 >>> 0).toString(16).padStart(8, "0");
}

function gvPath(g: string, v: string): string {
  return g ? `apis/${g}/${v}` : `api/${v}`;
}

/** `/openapi/v3` root: one entry a group-version, with a content hash. */
export function openApiV3Root(reg: Registry): JsonObject {
  const paths: JsonObject = {};
  for (const g of reg.groups()) {
    for (const v of g.versions) {
      const doc = JSON.stringify(openApiV3GroupVersion(reg, g.group, v));
      paths[gvPath(g.group, v)] = {
        serverRelativeURL: `/openapi/v3/${gvPath(g.group, v)}?hash=${hashOf(doc).toUpperCase()}`,
      };
    }
  }
  return { paths };
}

function gvkExt(d: ResourceDef): JsonObject[] {
  return [{ group: d.group, version: d.version, kind: d.kind }];
}

const PATCH_PARAMS: JsonObject[] = ["dryRun", "fieldManager", "fieldValidation", "force"].map((
  name,
) => ({ name, in: "query", schema: { type: name === "force" ? "boolean" : "string" } }));

/** `/openapi/v3/<api/v1 | apis/g/v>` document, or undefined if not served. */
export function openApiV3GroupVersion(reg: Registry, g: string, v: string): JsonObject | undefined {
  const defs = reg.inGroupVersion(g, v);
  if (defs.length === 0) return undefined;
  const paths: JsonObject = {};
  const schemas: JsonObject = {};
  for (const d of defs) {
    const base = `/${gvPath(g, v)}${d.namespaced ? "/namespaces/{namespace}" : ""}/${d.plural}`;
    const ref = `${g || "core"}.${v}.${d.kind}`;
    const op = (verb: string): JsonObject => ({
      operationId: `${verb}${d.kind}`,
      "x-kubernetes-action": verb,
      "x-kubernetes-group-version-kind": gvkExt(d)[0],
      responses: { "200": { description: "OK" } },
    });
    paths[base] = {
      get: op("list"),
      post: { ...op("post"), parameters: PATCH_PARAMS },
    };
    paths[`${base}/{name}`] = {
      get: op("get"),
      put: { ...op("put"), parameters: PATCH_PARAMS },
      patch: { ...op("patch"), parameters: PATCH_PARAMS },
      delete: op("delete"),
    };
    if (d.statusSubresource) {
      paths[`${base}/{name}/status`] = {
        get: op("get"),
        put: { ...op("put"), parameters: PATCH_PARAMS },
        patch: { ...op("patch"), parameters: PATCH_PARAMS },
      };
    }
    if (d.schema) {
      schemas[ref] = { ...d.schema, "x-kubernetes-group-version-kind": gvkExt(d) };
    }
  }
  return {
    openapi: "3.0.0",
    info: { title: "Kubernetes", version: "v1.32.0" },
    paths,
    components: { schemas },
  };
}

/** Kinds in one API version, for error messages. */
export function kindsOf(reg: Registry, apiVersion: string): string[] {
  return reg.all().filter((d) => apiVersionOf(d) === apiVersion).map((d) => d.kind);
}
