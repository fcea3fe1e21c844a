/**
 * What the test API server does to a CustomResourceDefinition before storing
 * it: required names, scope and exactly one storage version, schemas
 * present, `metadata.name` = plural.group, an immutable group, defaults
 * (singular, listKind, conversion) and the status conditions the real
 * apiextensions server sets once names are accepted.
 * @module
 */

import { clone, invalid, type KubeObject, type ResourceDef, sameJson, timestamp } from "./types.ts";

type Obj = Record<string, unknown>;

/** Validate and complete a CRD being created (`old` undefined) or updated. */
export function prepareCrd(def: ResourceDef, obj: KubeObject, old: KubeObject | undefined): void {
  const o = obj as Obj;
  const spec = (o.spec ?? {}) as Obj;
  const names = (spec.names ?? {}) as Obj;
  const name = obj.metadata.name!;
  const causes = [];
  if (!spec.group) causes.push({ field: "spec.group", message: "Required value" });
  if (!names.plural) causes.push({ field: "spec.names.plural", message: "Required value" });
  if (!names.kind) causes.push({ field: "spec.names.kind", message: "Required value" });
  if (spec.scope !== "Cluster" && spec.scope !== "Namespaced") {
    causes.push({
      field: "spec.scope",
      message: `Unsupported value: ${
        JSON.stringify(spec.scope)
      }: supported values: "Cluster", "Namespaced"`,
    });
  }
  const versions = (spec.versions ?? []) as Obj[];
  if (!versions.length) {
    causes.push({
      field: "spec.versions",
      message: "Invalid value: must have exactly one version marked as storage version",
    });
  }
  if (versions.filter((v) => v.storage).length !== 1) {
    causes.push({
      field: "spec.versions",
      message: "Invalid value: must have exactly one version marked as storage version",
    });
  }
  for (const [i, v] of versions.entries()) {
    if (!(v.schema as Obj | undefined)?.openAPIV3Schema) {
      causes.push({
        field: `spec.versions[${i}].schema.openAPIV3Schema`,
        message: "Required value: schemas are required",
      });
    }
  }
  if (names.plural && spec.group && name !== `${names.plural}.${spec.group}`) {
    causes.push({
      field: "metadata.name",
      message: `Invalid value: ${JSON.stringify(name)}: must be spec.names.plural+"."+spec.group`,
    });
  }
  if (causes.length) throw invalid(def, name, causes);
  if (old && (old.spec as Obj).group !== spec.group) {
    throw invalid(def, name, [{
      field: "spec.group",
      message: "Invalid value: field is immutable",
    }]);
  }
  names.singular ??= String(names.kind).toLowerCase();
  names.listKind ??= `${names.kind}List`;
  spec.conversion ??= { strategy: "None" };
  const ts = timestamp();
  const storage = versions.find((v) => v.storage)?.name;
  const prevStored = ((old?.status as Obj | undefined)?.storedVersions ?? []) as string[];
  o.status = {
    conditions: [
      {
        type: "NamesAccepted",
        status: "True",
        lastTransitionTime: ts,
        reason: "NoConflicts",
        message: "no conflicts found",
      },
      {
        type: "Established",
        status: "True",
        lastTransitionTime: ts,
        reason: "InitialNamesAccepted",
        message: "the initial names have been accepted",
      },
    ],
    acceptedNames: clone(names),
    storedVersions: [...new Set([...prevStored, String(storage)])],
  };
  if (old && sameJson((old.status as Obj | undefined)?.acceptedNames, names)) {
    o.status = old.status;
    (o.status as Obj).storedVersions = [...new Set([...prevStored, String(storage)])];
  }
}
