/**
 * Validation the real API server applies before storing, for the parts code
 * under test could get wrong: object names (DNS subdomain, or DNS label for
 * Namespaces and Services), label keys and values, Secret data (base64;
 * `stringData` folded into `data`), Service ports, Events, RBAC objects.
 * @module
 */

import { Buffer } from "node:buffer";
import { invalidValue } from "./fielderrors.ts";
import { type KubeObject, type ResourceDef, type StatusCause } from "./types.ts";

type Obj = Record<string, unknown>;

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS1035_LABEL = /^[a-z]([-a-z0-9]*[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const LABEL_NAME = /^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$/;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Check the object's name for its kind; returns the causes (empty when valid). */
export function validateName(def: ResourceDef, name: string): StatusCause[] {
  const field = "metadata.name";
  if (def.group === "" && def.kind === "Service") {
    if (!DNS1035_LABEL.test(name) || name.length > 63) {
      return [{
        field,
        message: `Invalid value: ${JSON.stringify(name)}: a DNS-1035 label must consist of lower ` +
          `case alphanumeric characters or '-', start with an alphabetic character, and end ` +
          `with an alphanumeric character`,
      }];
    }
    return [];
  }
  if (def.group === "" && def.kind === "Namespace") {
    if (!DNS_LABEL.test(name) || name.length > 63) {
      return [{
        field,
        message: `Invalid value: ${JSON.stringify(name)}: a lowercase RFC 1123 label must ` +
          `consist of lower case alphanumeric characters or '-', and must start and end with ` +
          `an alphanumeric character`,
      }];
    }
    return [];
  }
  if (def.group === "rbac.authorization.k8s.io") {
    // RBAC objects only need a valid path segment (`system:discovery` is fine).
    if (name === "." || name === ".." || /[/%]/.test(name)) {
      return [{
        field,
        message: `Invalid value: ${JSON.stringify(name)}: may not be '.' or '..' and may not ` +
          `contain '/' or '%'`,
      }];
    }
    return [];
  }
  if (!DNS_SUBDOMAIN.test(name) || name.length > 253) {
    return [{
      field,
      message: `Invalid value: ${JSON.stringify(name)}: a lowercase RFC 1123 subdomain must ` +
        `consist of lower case alphanumeric characters, '-' or '.', and must start and end ` +
        `with an alphanumeric character`,
    }];
  }
  return [];
}

function validLabelKey(key: string): boolean {
  const i = key.lastIndexOf("/");
  const [prefix, name] = i >= 0 ? [key.slice(0, i), key.slice(i + 1)] : ["", key];
  if (i >= 0 && (!DNS_SUBDOMAIN.test(prefix) || prefix.length > 253)) return false;
  return LABEL_NAME.test(name) && name.length <= 63;
}

/** Check labels and annotations keys/values. */
export function validateMetadata(obj: KubeObject): StatusCause[] {
  const causes: StatusCause[] = [];
  for (const [k, v] of Object.entries(obj.metadata.labels ?? {})) {
    if (!validLabelKey(k)) {
      causes.push({
        field: "metadata.labels",
        message: `Invalid value: ${
          JSON.stringify(k)
        }: name part must be no more than 63 characters and consist of alphanumeric characters, '-', '_' or '.'`,
      });
    }
    if (typeof v !== "string" || (v !== "" && (!LABEL_NAME.test(v) || v.length > 63))) {
      causes.push({
        field: "metadata.labels",
        message: `Invalid value: ${
          JSON.stringify(v)
        }: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character, at most 63 characters`,
      });
    }
  }
  for (const [k, v] of Object.entries(obj.metadata.annotations ?? {})) {
    if (!validLabelKey(k)) {
      causes.push({
        field: "metadata.annotations",
        message: `Invalid value: ${
          JSON.stringify(k)
        }: name part must consist of alphanumeric characters, '-', '_' or '.'`,
      });
    }
    if (typeof v !== "string") {
      causes.push({
        field: `metadata.annotations[${k}]`,
        message: "Invalid value: must be a string",
      });
    }
  }
  return causes;
}

/**
 * Secrets: fold `stringData` into `data` (base64), check `data` is base64,
 * default `type` to Opaque. Returns a decode error message, if any.
 */
export function prepareSecret(secret: KubeObject): string | undefined {
  const o = secret as Obj;
  const data = (o.data ?? {}) as Record<string, unknown>;
  for (const [k, v] of Object.entries(data)) {
    if (typeof v !== "string" || !BASE64.test(v)) {
      return `Secret in version "v1" cannot be handled as a Secret: illegal base64 data at ` +
        `input byte 0 (data[${JSON.stringify(k)}])`;
    }
  }
  const stringData = (o.stringData ?? {}) as Record<string, unknown>;
  for (const [k, v] of Object.entries(stringData)) {
    data[k] = Buffer.from(String(v), "utf8").toString("base64");
  }
  delete o.stringData;
  if (Object.keys(data).length > 0) o.data = data;
  o.type ??= "Opaque";
  return undefined;
}

/** Service ports: `port` in range, names required (and unique DNS labels) with several ports. */
export function validateServicePorts(svc: KubeObject): StatusCause[] {
  const spec = (svc.spec ?? {}) as Obj;
  const ports = (spec.ports ?? []) as Obj[];
  const causes: StatusCause[] = [];
  const names = new Set<string>();
  if (ports.length === 0 && spec.type !== "ExternalName" && spec.clusterIP !== "None") {
    causes.push({ reason: "FieldValueRequired", field: "spec.ports", message: "Required value" });
  }
  ports.forEach((p, i) => {
    const port = Number(p.port);
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      causes.push({
        field: `spec.ports[${i}].port`,
        message: `Invalid value: ${JSON.stringify(p.port)}: must be between 1 and 65535, inclusive`,
      });
    }
    if (ports.length > 1 && !p.name) {
      causes.push({
        reason: "FieldValueRequired",
        field: `spec.ports[${i}].name`,
        message: "Required value",
      });
    }
    if (p.name !== undefined) {
      const n = String(p.name);
      if (!DNS_LABEL.test(n) || n.length > 15) {
        causes.push({
          field: `spec.ports[${i}].name`,
          message: `Invalid value: ${JSON.stringify(n)}: a DNS-1123 label of at most 15 characters`,
        });
      }
      if (names.has(n)) {
        causes.push({
          reason: "FieldValueDuplicate",
          field: `spec.ports[${i}].name`,
          message: `Duplicate value: ${JSON.stringify(n)}`,
        });
      }
      names.add(n);
    }
  });
  return causes;
}

/**
 * Events (stored core/v1 shape): the involved object's namespace must match
 * the Event's (`default` for cluster-scoped objects); events.k8s.io/v1
 * creates also need eventTime, reportingController, reportingInstance,
 * action and reason, and a type of Normal or Warning.
 */
export function validateEvent(ev: KubeObject, viaEventsV1: boolean): StatusCause[] {
  const o = ev as Obj;
  const causes: StatusCause[] = [];
  const involved = (o.involvedObject ?? {}) as Obj;
  const ns = ev.metadata.namespace ?? "";
  const path = viaEventsV1 ? "regarding.namespace" : "involvedObject.namespace";
  if (!involved.namespace) {
    if (ns !== "" && ns !== "default") {
      causes.push({ field: path, message: `Invalid value: "": does not match event.namespace` });
    }
  } else if (involved.namespace !== ns) {
    causes.push({
      field: path,
      message: `Invalid value: ${
        JSON.stringify(involved.namespace)
      }: does not match event.namespace`,
    });
  }
  if (viaEventsV1) {
    const required: [string, string][] = [
      ["eventTime", "eventTime"],
      ["reportingComponent", "reportingController"],
      ["reportingInstance", "reportingInstance"],
      ["action", "action"],
      ["reason", "reason"],
    ];
    for (const [stored, field] of required) {
      if (!o[stored]) {
        causes.push({ reason: "FieldValueRequired", field, message: "Required value" });
      }
    }
    if (o.type !== "Normal" && o.type !== "Warning") {
      causes.push({
        reason: "FieldValueNotSupported",
        field: "type",
        message: `Unsupported value: ${
          JSON.stringify(o.type)
        }: supported values: "Normal", "Warning"`,
      });
    }
  }
  return causes;
}

/**
 * RBAC objects: every rule has verbs and either (apiGroups and resources) or
 * nonResourceURLs (those only in ClusterRoles); a binding's `roleRef` names a
 * Role or ClusterRole (ClusterRole only for ClusterRoleBindings), its
 * subjects have a known kind, and `roleRef` cannot change.
 */
export function validateRbac(
  kind: string,
  obj: KubeObject,
  old: KubeObject | undefined,
): StatusCause[] {
  const o = obj as Obj;
  const causes: StatusCause[] = [];
  if (kind === "Role" || kind === "ClusterRole") {
    const rules = (o.rules ?? []) as Obj[];
    rules.forEach((r, i) => {
      const has = (k: string) => Array.isArray(r[k]) && (r[k] as unknown[]).length > 0;
      if (!has("verbs")) {
        causes.push({
          reason: "FieldValueRequired",
          field: `rules[${i}].verbs`,
          message: "Required value: verbs must contain at least one value",
        });
      }
      if (has("nonResourceURLs")) {
        if (kind === "Role") {
          causes.push({
            field: `rules[${i}].nonResourceURLs`,
            message:
              "Invalid value: []string{...}: namespaced rules cannot apply to non-resource URLs",
          });
        }
        if (has("apiGroups") || has("resources")) {
          causes.push({
            field: `rules[${i}].nonResourceURLs`,
            message:
              "Invalid value: []string{...}: rules cannot apply to both regular resources and non-resource URLs",
          });
        }
      } else {
        if (!has("apiGroups")) {
          causes.push({
            reason: "FieldValueRequired",
            field: `rules[${i}].apiGroups`,
            message: "Required value: resource rules must supply at least one api group",
          });
        }
        if (!has("resources")) {
          causes.push({
            reason: "FieldValueRequired",
            field: `rules[${i}].resources`,
            message: "Required value: resource rules must supply at least one resource",
          });
        }
      }
    });
    return causes;
  }
  const ref = (o.roleRef ?? {}) as Obj;
  const kinds = kind === "ClusterRoleBinding" ? ["ClusterRole"] : ["Role", "ClusterRole"];
  if (!kinds.includes(String(ref.kind ?? ""))) {
    causes.push({
      reason: "FieldValueNotSupported",
      field: "roleRef.kind",
      message: `Unsupported value: ${JSON.stringify(ref.kind ?? "")}: supported values: ${
        kinds.map((k) => JSON.stringify(k)).join(", ")
      }`,
    });
  }
  if (!ref.name) {
    causes.push({ reason: "FieldValueRequired", field: "roleRef.name", message: "Required value" });
  }
  if (ref.apiGroup !== "rbac.authorization.k8s.io") {
    causes.push({
      reason: "FieldValueNotSupported",
      field: "roleRef.apiGroup",
      message: `Unsupported value: ${
        JSON.stringify(ref.apiGroup ?? "")
      }: supported values: "rbac.authorization.k8s.io"`,
    });
  }
  ((o.subjects ?? []) as Obj[]).forEach((s, i) => {
    if (!["User", "Group", "ServiceAccount"].includes(String(s.kind))) {
      causes.push({
        reason: "FieldValueNotSupported",
        field: `subjects[${i}].kind`,
        message: `Unsupported value: ${
          JSON.stringify(s.kind ?? "")
        }: supported values: "ServiceAccount", "User", "Group"`,
      });
    }
    if (!s.name) {
      causes.push({
        reason: "FieldValueRequired",
        field: `subjects[${i}].name`,
        message: "Required value",
      });
    }
    if (s.kind === "ServiceAccount" && kind === "ClusterRoleBinding" && !s.namespace) {
      causes.push({
        reason: "FieldValueRequired",
        field: `subjects[${i}].namespace`,
        message: "Required value",
      });
    }
  });
  if (old && JSON.stringify((old as Obj).roleRef) !== JSON.stringify(o.roleRef)) {
    causes.push({
      field: "roleRef",
      message: `Invalid value: ${JSON.stringify(o.roleRef)}: cannot change roleRef`,
    });
  }
  return causes;
}

/**
 * `metadata.ownerReferences`: apiVersion, kind, name and uid set, no Event
 * owners, at most one controller reference.
 */
export function validateOwnerReferences(obj: KubeObject): StatusCause[] {
  const refs = obj.metadata.ownerReferences;
  if (refs === undefined || refs === null) return [];
  const field = "metadata.ownerReferences";
  if (!Array.isArray(refs)) return [invalidValue(field, "", "must be a list")];
  const causes: StatusCause[] = [];
  let controller = "";
  for (const r of refs as Obj[]) {
    const [group, version] = String(r.apiVersion ?? "").includes("/")
      ? String(r.apiVersion).split("/", 2)
      : ["", String(r.apiVersion ?? "")];
    if (!version) {
      causes.push(
        invalidValue(`${field}.apiVersion`, r.apiVersion ?? "", "version must not be empty"),
      );
    }
    if (!r.kind) causes.push(invalidValue(`${field}.kind`, r.kind ?? "", "kind must not be empty"));
    if (!r.name) causes.push(invalidValue(`${field}.name`, r.name ?? "", "name must not be empty"));
    if (!r.uid) causes.push(invalidValue(`${field}.uid`, r.uid ?? "", "uid must not be empty"));
    if (group === "" && version === "v1" && r.kind === "Event") {
      causes.push({
        field,
        message: `Invalid value: ${
          JSON.stringify(r)
        }: /v1, Kind=Event is disallowed from being an owner`,
      });
    }
    if (r.controller === true) {
      const name = `${r.kind}/${r.name}`;
      if (controller) {
        causes.push({
          field,
          message: `Invalid value: []v1.OwnerReference{...}: Only one reference can have ` +
            `Controller set to true. Found "true" in references for ${controller} and ${name}`,
        });
      } else controller = name;
    }
  }
  return causes;
}
