/**
 * authorization.k8s.io/v1 access reviews, answered by the RBAC authorizer
 * (or "allowed" when RBAC is not enforced), so `kubectl auth can-i [--list]`
 * works: SelfSubjectAccessReview, SubjectAccessReview,
 * LocalSubjectAccessReview, SelfSubjectRulesReview. Nothing is stored.
 * @module
 */

import type { Identity, RbacAuthorizer } from "./rbac.ts";
import type { RequestAttributes } from "./requestinfo.ts";
import { ApiError, type JsonObject } from "./types.ts";

type Obj = Record<string, unknown>;

/** The attributes a review's `spec` asks about. */
function specAttributes(spec: Obj): RequestAttributes {
  const ra = spec.resourceAttributes as Obj | undefined;
  const nra = spec.nonResourceAttributes as Obj | undefined;
  if (ra) {
    return {
      resourceRequest: true,
      verb: String(ra.verb ?? ""),
      path: "",
      group: String(ra.group ?? ""),
      version: String(ra.version ?? ""),
      resource: String(ra.resource ?? ""),
      subresource: String(ra.subresource ?? ""),
      namespace: String(ra.namespace ?? ""),
      name: String(ra.name ?? ""),
    };
  }
  if (nra) {
    return {
      resourceRequest: false,
      verb: String(nra.verb ?? ""),
      path: String(nra.path ?? ""),
      group: "",
      version: "",
      resource: "",
      subresource: "",
      namespace: "",
      name: "",
    };
  }
  throw new ApiError(
    422,
    "Invalid",
    "exactly one of nonResourceAttributes or resourceAttributes must be specified",
  );
}

/**
 * Answer the review `body` of kind `kind` (the `create` in `a`) for
 * `requester`; `enforced` false means every request is allowed.
 */
export function answerReview(
  kind: string,
  body: Obj,
  a: RequestAttributes,
  requester: Identity,
  authorizer: RbacAuthorizer,
  enforced: boolean,
): JsonObject {
  const spec = (body.spec ?? {}) as Obj;
  const out: Obj = {
    ...body,
    apiVersion: "authorization.k8s.io/v1",
    kind,
    metadata: { ...(body.metadata as Obj | undefined), creationTimestamp: null },
  };
  if (kind === "SelfSubjectRulesReview") {
    const ns = String(spec.namespace ?? "");
    const rules = enforced && !requester.groups.includes("system:masters")
      ? authorizer.rulesFor(requester, ns)
      : [{ verbs: ["*"], apiGroups: ["*"], resources: ["*"] }, {
        verbs: ["*"],
        nonResourceURLs: ["*"],
      }];
    out.status = {
      resourceRules: rules.filter((r) => !r.nonResourceURLs?.length).map((r) => ({
        verbs: r.verbs ?? [],
        apiGroups: r.apiGroups ?? [],
        resources: r.resources ?? [],
        ...(r.resourceNames?.length ? { resourceNames: r.resourceNames } : {}),
      })),
      nonResourceRules: rules.filter((r) => r.nonResourceURLs?.length).map((r) => ({
        verbs: r.verbs ?? [],
        nonResourceURLs: r.nonResourceURLs ?? [],
      })),
      incomplete: false,
    };
    return JSON.parse(JSON.stringify(out));
  }
  const asked = specAttributes(spec);
  let who = requester;
  if (kind === "SubjectAccessReview" || kind === "LocalSubjectAccessReview") {
    who = { name: String(spec.user ?? ""), groups: (spec.groups ?? []) as string[] };
  }
  if (kind === "LocalSubjectAccessReview" && asked.namespace !== a.namespace) {
    throw new ApiError(
      400,
      "BadRequest",
      `spec.resourceAttributes.namespace must match namespace: ${a.namespace}`,
    );
  }
  const allowed = !enforced || authorizer.allowed(who, asked);
  out.status = allowed ? { allowed: true, reason: enforced ? "RBAC: allowed" : "" } : {
    allowed: false,
  };
  return JSON.parse(JSON.stringify(out));
}
