/**
 * Kubernetes RBAC over the stored Roles, ClusterRoles and bindings, with the
 * real authorizer's semantics: `system:masters` may do anything; otherwise a
 * request is allowed when a rule of a role bound to the caller (a
 * ClusterRoleBinding anywhere, a RoleBinding in the request's namespace)
 * matches its verb, API group, resource (`resource/subresource`, `*`,
 * `*‍/sub`, `resource/*`), `resourceNames` (never for list/watch/create/
 * deletecollection without a name) or non-resource URL (`/path`,
 * `/prefix/*`). Subjects: User, Group, and ServiceAccount (user
 * `system:serviceaccount:<ns>:<name>`). Denials become the real `Forbidden`
 * Status.
 * @module
 */

import type { RequestAttributes } from "./requestinfo.ts";
import type { Store } from "./store.ts";
import { ApiError, type KubeObject } from "./types.ts";

type Obj = Record<string, unknown>;

/** Who is calling. */
export interface Identity {
  name: string;
  groups: string[];
}

/** One policy rule of a Role or ClusterRole. */
export interface PolicyRule {
  verbs?: string[];
  apiGroups?: string[];
  resources?: string[];
  resourceNames?: string[];
  nonResourceURLs?: string[];
}

interface Subject {
  kind?: string;
  name?: string;
  namespace?: string;
}

const RBAC = "rbac.authorization.k8s.io";
const STORE_KEYS = {
  roles: `${RBAC}/roles`,
  rolebindings: `${RBAC}/rolebindings`,
  clusterroles: `${RBAC}/clusterroles`,
  clusterrolebindings: `${RBAC}/clusterrolebindings`,
};

/** The user name of a ServiceAccount. */
export function serviceAccountUser(namespace: string, name: string): string {
  return `system:serviceaccount:${namespace}:${name}`;
}

/** The identity a ServiceAccount token carries (user and groups, as the real server). */
export function serviceAccountIdentity(namespace: string, name: string): Identity {
  return {
    name: serviceAccountUser(namespace, name),
    groups: ["system:serviceaccounts", `system:serviceaccounts:${namespace}`],
  };
}

/** Whether `subject` (of a binding in `bindingNamespace`) names the caller. */
export function subjectMatches(
  user: Identity,
  subject: Subject,
  bindingNamespace: string,
): boolean {
  switch (subject.kind) {
    case "User":
      return user.name === subject.name;
    case "Group":
      return user.groups.includes(String(subject.name));
    case "ServiceAccount": {
      const ns = subject.namespace || bindingNamespace;
      return user.name === serviceAccountUser(ns, String(subject.name));
    }
  }
  return false;
}

function has(list: string[] | undefined, v: string): boolean {
  return !!list && (list.includes("*") || list.includes(v));
}

function resourceMatches(rule: PolicyRule, resource: string, sub: string): boolean {
  const wanted = sub ? `${resource}/${sub}` : resource;
  for (const r of rule.resources ?? []) {
    if (r === "*" || r === wanted) return true;
    if (sub && (r === `*/${sub}` || r === `${resource}/*`)) return true;
  }
  return false;
}

function urlMatches(rule: PolicyRule, path: string): boolean {
  for (const u of rule.nonResourceURLs ?? []) {
    if (u === "*" || u === path) return true;
    if (u.endsWith("*") && path.startsWith(u.slice(0, -1))) return true;
  }
  return false;
}

/** Whether one rule allows the request. */
export function ruleAllows(rule: PolicyRule, a: RequestAttributes): boolean {
  if (!has(rule.verbs, a.verb)) return false;
  if (!a.resourceRequest) return urlMatches(rule, a.path);
  if (!has(rule.apiGroups, a.group)) return false;
  if (!resourceMatches(rule, a.resource, a.subresource)) return false;
  const names = rule.resourceNames ?? [];
  return names.length === 0 || (a.name !== "" && names.includes(a.name));
}

/** The RBAC authorizer over a store's RBAC objects. */
export class RbacAuthorizer {
  constructor(readonly store: Store) {}

  #rulesOf(ref: Obj, namespace: string): PolicyRule[] {
    const name = String(ref.name ?? "");
    const role = ref.kind === "ClusterRole"
      ? this.store.get(STORE_KEYS.clusterroles, "", name)
      : ref.kind === "Role" && namespace
      ? this.store.get(STORE_KEYS.roles, namespace, name)
      : undefined;
    return ((role as Obj | undefined)?.rules ?? []) as PolicyRule[];
  }

  /** Every rule that applies to `user` in `namespace` (`""`: cluster-wide rules only). */
  rulesFor(user: Identity, namespace: string): PolicyRule[] {
    const rules: PolicyRule[] = [];
    const bound = (b: KubeObject) =>
      (((b as Obj).subjects ?? []) as Subject[]).some((s) =>
        subjectMatches(user, s, b.metadata.namespace ?? "")
      );
    for (const b of this.store.list(STORE_KEYS.clusterrolebindings)) {
      if (bound(b)) rules.push(...this.#rulesOf((b as Obj).roleRef as Obj, ""));
    }
    if (namespace) {
      for (const b of this.store.list(STORE_KEYS.rolebindings, namespace)) {
        if (bound(b)) rules.push(...this.#rulesOf((b as Obj).roleRef as Obj, namespace));
      }
    }
    return rules;
  }

  /** Whether `user` may make the request. */
  allowed(user: Identity, a: RequestAttributes): boolean {
    if (user.groups.includes("system:masters")) return true;
    return this.rulesFor(user, a.resourceRequest ? a.namespace : "").some((r) => ruleAllows(r, a));
  }

  /** Throw the real server's 403 `Forbidden` when `user` may not make the request. */
  authorize(user: Identity, a: RequestAttributes): void {
    if (!this.allowed(user, a)) throw forbidden(user, a);
  }
}

/** The 403 `Status` the real server returns for a denied request. */
export function forbidden(user: Identity, a: RequestAttributes): ApiError {
  if (!a.resourceRequest) {
    return new ApiError(
      403,
      "Forbidden",
      `forbidden: User "${user.name}" cannot ${a.verb} path "${a.path}"`,
      {},
    );
  }
  const res = a.subresource ? `${a.resource}/${a.subresource}` : a.resource;
  const scope = a.namespace ? `in the namespace "${a.namespace}"` : "at the cluster scope";
  const why = `User "${user.name}" cannot ${a.verb} resource "${res}" in API group ` +
    `"${a.group}" ${scope}`;
  const qualified = a.group ? `${a.resource}.${a.group}` : a.resource;
  const message = a.name
    ? `${qualified} "${a.name}" is forbidden: ${why}`
    : `${qualified} is forbidden: ${why}`;
  const details: { name?: string; group?: string; kind: string } = { kind: a.resource };
  if (a.name) details.name = a.name;
  if (a.group) details.group = a.group;
  return new ApiError(403, "Forbidden", message, details);
}
