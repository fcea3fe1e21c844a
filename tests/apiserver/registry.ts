/**
 * Which resources the test API server serves: the built-in ones (core/v1,
 * events, leases, endpointslices, serviceaccounts, deployments, PDBs, RBAC,
 * CRDs) and those added by
 * `CustomResourceDefinition` objects, looked up by group/version/plural.
 * @module
 */

import { type JsonObject, type PrinterColumn, type ResourceDef } from "./types.ts";

const AGE: PrinterColumn = { name: "Age", type: "date", jsonPath: ".metadata.creationTimestamp" };

function def(
  group: string,
  version: string,
  plural: string,
  kind: string,
  namespaced: boolean,
  extra: Partial<ResourceDef> = {},
): ResourceDef {
  return {
    group,
    version,
    plural,
    singular: kind.toLowerCase(),
    kind,
    listKind: `${kind}List`,
    namespaced,
    shortNames: [],
    categories: [],
    statusSubresource: false,
    subresources: [],
    printerColumns: [AGE],
    ...extra,
  };
}

/** The resources every server serves from the start. */
export function builtinResources(): ResourceDef[] {
  return [
    def("", "v1", "namespaces", "Namespace", false, {
      shortNames: ["ns"],
      statusSubresource: true,
      subresources: ["finalize"],
      printerColumns: [{ name: "Status", type: "string", jsonPath: ".status.phase" }, AGE],
    }),
    def("", "v1", "services", "Service", true, {
      shortNames: ["svc"],
      categories: ["all"],
      statusSubresource: true,
      subresources: ["proxy"],
      printerColumns: [
        { name: "Type", type: "string", jsonPath: ".spec.type" },
        { name: "Cluster-IP", type: "string", jsonPath: ".spec.clusterIP" },
        { name: "External-IP", type: "string", jsonPath: "#externalIPs" },
        { name: "Port(s)", type: "string", jsonPath: "#servicePorts" },
        AGE,
      ],
    }),
    def("", "v1", "secrets", "Secret", true, {
      printerColumns: [
        { name: "Type", type: "string", jsonPath: ".type" },
        { name: "Data", type: "string", jsonPath: "#dataCount" },
        AGE,
      ],
    }),
    def("", "v1", "configmaps", "ConfigMap", true, {
      shortNames: ["cm"],
      printerColumns: [{ name: "Data", type: "string", jsonPath: "#dataCount" }, AGE],
    }),
    def("", "v1", "events", "Event", true, {
      shortNames: ["ev"],
      storageKey: "events",
      printerColumns: [
        { name: "Type", type: "string", jsonPath: ".type" },
        { name: "Reason", type: "string", jsonPath: ".reason" },
        { name: "Object", type: "string", jsonPath: "#involvedObject" },
        { name: "Message", type: "string", jsonPath: ".message" },
      ],
    }),
    def("", "v1", "nodes", "Node", false, {
      shortNames: ["no"],
      statusSubresource: true,
      subresources: ["proxy"],
      printerColumns: [
        { name: "Status", type: "string", jsonPath: "#nodeReady" },
        { name: "Roles", type: "string", jsonPath: "#nodeRoles" },
        AGE,
        { name: "Version", type: "string", jsonPath: ".status.nodeInfo.kubeletVersion" },
      ],
    }),
    def("", "v1", "pods", "Pod", true, {
      shortNames: ["po"],
      categories: ["all"],
      statusSubresource: true,
      subresources: ["exec", "attach", "log", "portforward", "proxy"],
      printerColumns: [
        { name: "Ready", type: "string", jsonPath: "#podReady" },
        { name: "Status", type: "string", jsonPath: ".status.phase" },
        { name: "Restarts", type: "integer", jsonPath: "#podRestarts" },
        AGE,
      ],
    }),
    def("events.k8s.io", "v1", "events", "Event", true, {
      shortNames: ["ev"],
      storageKey: "events",
      printerColumns: [
        { name: "Type", type: "string", jsonPath: ".type" },
        { name: "Reason", type: "string", jsonPath: ".reason" },
        { name: "Note", type: "string", jsonPath: ".note" },
      ],
    }),
    def("coordination.k8s.io", "v1", "leases", "Lease", true, {
      printerColumns: [
        { name: "Holder", type: "string", jsonPath: ".spec.holderIdentity" },
        AGE,
      ],
    }),
    def("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", true, {
      generation: true,
      printerColumns: [
        { name: "AddressType", type: "string", jsonPath: ".addressType" },
        { name: "Ports", type: "string", jsonPath: "#slicePorts" },
        { name: "Endpoints", type: "string", jsonPath: "#sliceEndpoints" },
        AGE,
      ],
    }),
    def("", "v1", "serviceaccounts", "ServiceAccount", true, {
      shortNames: ["sa"],
      printerColumns: [{ name: "Secrets", type: "string", jsonPath: "#secretCount" }, AGE],
    }),
    def("apps", "v1", "deployments", "Deployment", true, {
      shortNames: ["deploy"],
      categories: ["all"],
      statusSubresource: true,
      subresources: ["scale"],
      generation: true,
      printerColumns: [
        { name: "Ready", type: "string", jsonPath: "#deploymentReady" },
        { name: "Up-to-date", type: "integer", jsonPath: "#deploymentUpdated" },
        { name: "Available", type: "integer", jsonPath: "#deploymentAvailable" },
        AGE,
      ],
    }),
    def("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", true, {
      shortNames: ["pdb"],
      statusSubresource: true,
      generation: true,
      printerColumns: [
        { name: "Min Available", type: "string", jsonPath: "#pdbMinAvailable" },
        { name: "Max Unavailable", type: "string", jsonPath: "#pdbMaxUnavailable" },
        { name: "Allowed Disruptions", type: "integer", jsonPath: "#pdbAllowed" },
        AGE,
      ],
    }),
    ...rbacResources(),
    ...["SelfSubjectAccessReview", "SubjectAccessReview", "SelfSubjectRulesReview"].map((k) =>
      def("authorization.k8s.io", "v1", `${k.toLowerCase()}s`, k, false, { verbs: ["create"] })
    ),
    def(
      "authorization.k8s.io",
      "v1",
      "localsubjectaccessreviews",
      "LocalSubjectAccessReview",
      true,
      { verbs: ["create"] },
    ),
    def(
      "apiextensions.k8s.io",
      "v1",
      "customresourcedefinitions",
      "CustomResourceDefinition",
      false,
      {
        shortNames: ["crd", "crds"],
        categories: ["api-extensions"],
        statusSubresource: true,
        printerColumns: [{
          name: "Created At",
          type: "date",
          jsonPath: ".metadata.creationTimestamp",
        }],
      },
    ),
  ];
}

/** rbac.authorization.k8s.io/v1: Roles, ClusterRoles and their bindings. */
function rbacResources(): ResourceDef[] {
  const g = "rbac.authorization.k8s.io";
  const createdAt: PrinterColumn = {
    name: "Created At",
    type: "string",
    jsonPath: ".metadata.creationTimestamp",
  };
  const binding: PrinterColumn[] = [
    { name: "Role", type: "string", jsonPath: "#roleRef" },
    AGE,
    { name: "Users", type: "string", jsonPath: "#subjectsUser", priority: 1 },
    { name: "Groups", type: "string", jsonPath: "#subjectsGroup", priority: 1 },
    { name: "ServiceAccounts", type: "string", jsonPath: "#subjectsServiceAccount", priority: 1 },
  ];
  return [
    def(g, "v1", "roles", "Role", true, { printerColumns: [createdAt] }),
    def(g, "v1", "rolebindings", "RoleBinding", true, { printerColumns: binding }),
    def(g, "v1", "clusterroles", "ClusterRole", false, { printerColumns: [createdAt] }),
    def(g, "v1", "clusterrolebindings", "ClusterRoleBinding", false, {
      printerColumns: binding,
    }),
  ];
}

/** The set of served resources; CRDs add and remove theirs. */
export class Registry {
  #defs: ResourceDef[] = builtinResources();

  /** All served resources. */
  all(): ResourceDef[] {
    return [...this.#defs];
  }

  /** The resource at `group/version/plural`, if served. */
  find(group: string, version: string, plural: string): ResourceDef | undefined {
    return this.#defs.find((d) =>
      d.group === group && d.version === version && d.plural === plural
    );
  }

  /** Served API groups in order (core `""` first), with their versions. */
  groups(): { group: string; versions: string[] }[] {
    const out: { group: string; versions: string[] }[] = [];
    for (const d of this.#defs) {
      let g = out.find((x) => x.group === d.group);
      if (!g) out.push(g = { group: d.group, versions: [] });
      if (!g.versions.includes(d.version)) g.versions.push(d.version);
    }
    return out;
  }

  /** Resources of one group/version. */
  inGroupVersion(group: string, version: string): ResourceDef[] {
    return this.#defs.filter((d) => d.group === group && d.version === version);
  }

  /** Replace the resources served by CRD `crdName` with `defs`. */
  setCrd(crdName: string, defs: ResourceDef[]): void {
    this.#defs = this.#defs.filter((d) => d.crd !== crdName).concat(defs);
  }

  /** Stop serving CRD `crdName`'s resources. */
  removeCrd(crdName: string): void {
    this.#defs = this.#defs.filter((d) => d.crd !== crdName);
  }
}

/** Resource definitions served by a CRD object (one per served version). */
export function defsFromCrd(crd: JsonObject): ResourceDef[] {
  const name = String((crd.metadata as JsonObject).name);
  const spec = crd.spec as JsonObject;
  const names = spec.names as JsonObject;
  const kind = String(names.kind);
  const versions = (spec.versions ?? []) as JsonObject[];
  return versions.filter((v) => v.served !== false).map((v) => {
    const sub = (v.subresources ?? {}) as JsonObject;
    const cols = (v.additionalPrinterColumns ?? []) as unknown as PrinterColumn[];
    const schema = (v.schema as JsonObject | undefined)?.openAPIV3Schema as JsonObject | undefined;
    return {
      group: String(spec.group),
      version: String(v.name),
      plural: String(names.plural),
      singular: String(names.singular ?? kind.toLowerCase()),
      kind,
      listKind: String(names.listKind ?? `${kind}List`),
      namespaced: spec.scope === "Namespaced",
      shortNames: (names.shortNames ?? []) as string[],
      categories: (names.categories ?? []) as string[],
      statusSubresource: "status" in sub,
      subresources: "scale" in sub ? ["scale"] : [],
      printerColumns: v.additionalPrinterColumns ? cols : [AGE],
      schema,
      crd: name,
    };
  });
}
