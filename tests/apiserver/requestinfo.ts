/**
 * What a request asks for, in authorization terms, as the real server's
 * `RequestInfoFactory` derives it from the method and path: the Kubernetes
 * verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
 * `deletecollection`), API group and version, resource, subresource,
 * namespace and name; or a non-resource path (`/version`, `/apis`, …).
 * @module
 */

/** Authorization attributes of one request. */
export interface RequestAttributes {
  /** Whether the path is a resource path (`/api/v1/…`, `/apis/<g>/<v>/…`). */
  resourceRequest: boolean;
  /** Kubernetes verb for resources; the lowercase HTTP method for other paths. */
  verb: string;
  /** The path (for non-resource requests and logs). */
  path: string;
  group: string;
  version: string;
  /** Plural resource (`""` for non-resource requests). */
  resource: string;
  subresource: string;
  namespace: string;
  /** Object name; for list/watch the `metadata.name` of a field selector, as the real server. */
  name: string;
}

/** Namespace subresources (`/api/v1/namespaces/<n>/status`), not namespaced resources. */
const NAMESPACE_SUBRESOURCES = new Set(["status", "finalize"]);

/** Derive the attributes of a request from its method and URL. */
export function requestAttributes(method: string, url: URL): RequestAttributes {
  const path = url.pathname;
  const m = method.toUpperCase();
  const out: RequestAttributes = {
    resourceRequest: false,
    verb: m.toLowerCase(),
    path,
    group: "",
    version: "",
    resource: "",
    subresource: "",
    namespace: "",
    name: "",
  };
  let parts = path.split("/").filter((s) => s !== "").map((s) => {
    try {
      return decodeURIComponent(s);
    } catch {
      return s;
    }
  });
  if (parts[0] === "api" && parts.length >= 3) {
    out.version = parts[1];
    parts = parts.slice(2);
  } else if (parts[0] === "apis" && parts.length >= 4) {
    out.group = parts[1];
    out.version = parts[2];
    parts = parts.slice(3);
  } else {
    return out;
  }
  out.resourceRequest = true;
  switch (m) {
    case "POST":
      out.verb = "create";
      break;
    case "GET":
    case "HEAD":
      out.verb = "get";
      break;
    case "PUT":
      out.verb = "update";
      break;
    case "PATCH":
      out.verb = "patch";
      break;
    case "DELETE":
      out.verb = "delete";
      break;
    default:
      out.verb = "";
  }
  // The deprecated /watch/ prefix.
  if (parts[0] === "watch" && parts.length > 1) {
    out.verb = "watch";
    parts = parts.slice(1);
  }
  if (parts[0] === "namespaces" && parts.length > 1) {
    out.namespace = parts[1];
    if (parts.length > 2 && !NAMESPACE_SUBRESOURCES.has(parts[2])) parts = parts.slice(2);
  }
  out.resource = parts[0] ?? "";
  out.name = parts[1] ?? "";
  out.subresource = parts[2] ?? "";
  if (!out.name && out.verb === "get") {
    const w = url.searchParams.get("watch");
    out.verb = w === "true" || w === "1" ? "watch" : "list";
  }
  if (!out.name && out.verb === "delete") out.verb = "deletecollection";
  if (!out.name && (out.verb === "list" || out.verb === "watch")) {
    for (const term of (url.searchParams.get("fieldSelector") ?? "").split(",")) {
      const fm = /^\s*metadata\.name\s*==?\s*(.+?)\s*$/.exec(term);
      if (fm) out.name = fm[1];
    }
  }
  return out;
}
