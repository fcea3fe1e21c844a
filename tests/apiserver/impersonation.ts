/**
 * User impersonation (`Impersonate-User` / `Impersonate-Group` headers, what
 * `kubectl --as=… --as-group=…` sends), as the real server: the caller needs
 * the `impersonate` verb on `users` (or on `serviceaccounts` in the
 * account's namespace for `system:serviceaccount:<ns>:<name>`) and on each
 * `groups`; the request then runs as that identity (plus
 * `system:authenticated`, and the ServiceAccount groups when impersonating
 * an account without groups).
 * @module
 */

import { forbidden, type Identity, type RbacAuthorizer } from "./rbac.ts";
import type { RequestAttributes } from "./requestinfo.ts";
import type { ApiError } from "./types.ts";

function impersonateAttrs(resource: string, name: string, namespace = ""): RequestAttributes {
  return {
    resourceRequest: true,
    verb: "impersonate",
    path: "",
    group: "",
    version: "",
    resource,
    subresource: "",
    namespace,
    name,
  };
}

/**
 * The identity a request acts as: `user` itself without impersonation
 * headers, the impersonated one when allowed, or the 403 to answer.
 * `enforced` false allows every impersonation.
 */
export function impersonate(
  user: Identity,
  headers: Headers,
  authorizer: RbacAuthorizer,
  enforced: boolean,
): Identity | ApiError {
  const name = headers.get("impersonate-user");
  const groups = (headers.get("impersonate-group") ?? "").split(",").map((g) => g.trim())
    .filter((g) => g !== "");
  if (name === null) return user;
  const checks: RequestAttributes[] = [];
  const sa = /^system:serviceaccount:([^:]+):([^:]+)$/.exec(name);
  checks.push(
    sa ? impersonateAttrs("serviceaccounts", sa[2], sa[1]) : impersonateAttrs("users", name),
  );
  for (const g of groups) checks.push(impersonateAttrs("groups", g));
  if (enforced) {
    for (const c of checks) if (!authorizer.allowed(user, c)) return forbidden(user, c);
  }
  const out = [...groups];
  if (sa && groups.length === 0) {
    out.push("system:serviceaccounts", `system:serviceaccounts:${sa[1]}`);
  }
  if (!out.includes("system:authenticated")) out.push("system:authenticated");
  return { name, groups: out };
}
