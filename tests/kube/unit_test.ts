/**
 * Pure parts of lib/kube: paths, JSON equality, error parsing,
 * MicroTime, cache keys.
 * @module
 */

import nodeAssert from "node:assert/strict";
import {
  CLUSTERS,
  jsonEqual,
  KubeApiError,
  LEASES,
  microTime,
  NAMESPACES,
  objectKey,
  resourcePath,
  SERVICES,
} from "../../lib/kube/mod.ts";

Deno.test("resourcePath: core, group, namespaced, cluster-scoped, subresource, escaping", () => {
  nodeAssert.equal(resourcePath(SERVICES, "ns"), "/api/v1/namespaces/ns/services");
  nodeAssert.equal(resourcePath(SERVICES), "/api/v1/services");
  nodeAssert.equal(resourcePath(SERVICES, "ns", "mc-a"), "/api/v1/namespaces/ns/services/mc-a");
  nodeAssert.equal(
    resourcePath(CLUSTERS, "ignored", "alpha", "status"),
    "/apis/cluster.kubesphere.io/v1alpha1/clusters/alpha/status",
  );
  nodeAssert.equal(resourcePath(NAMESPACES, undefined, "a b"), "/api/v1/namespaces/a%20b");
  nodeAssert.equal(
    resourcePath(LEASES, "kubesphere-system", "tower"),
    "/apis/coordination.k8s.io/v1/namespaces/kubesphere-system/leases/tower",
  );
  nodeAssert.throws(() => resourcePath(SERVICES, "ns", ""), /empty object name/);
});

Deno.test("jsonEqual: deep, key order and undefined members ignored", () => {
  nodeAssert.ok(jsonEqual({ a: 1, b: [1, { c: "x" }] }, { b: [1, { c: "x" }], a: 1 }));
  nodeAssert.ok(jsonEqual({ a: 1, u: undefined }, { a: 1 }));
  nodeAssert.ok(!jsonEqual({ a: 1 }, { a: 2 }));
  nodeAssert.ok(!jsonEqual([1, 2], [2, 1]));
  nodeAssert.ok(!jsonEqual({ a: [] }, { a: {} }));
  nodeAssert.ok(!jsonEqual(null, {}));
  nodeAssert.ok(!jsonEqual({ a: 1 }, { a: 1, b: 2 }));
});

Deno.test("KubeApiError: Status body, predicates, Retry-After, non-JSON bodies", () => {
  const e = KubeApiError.fromResponse(
    "PUT",
    "/api/v1/x",
    409,
    JSON.stringify({ kind: "Status", reason: "Conflict", message: "the object has been modified" }),
  );
  nodeAssert.equal(e.status, 409);
  nodeAssert.equal(e.reason, "Conflict");
  nodeAssert.ok(e.isConflict && !e.isAlreadyExists && !e.isNotFound && !e.isGone);
  nodeAssert.match(e.message, /PUT \/api\/v1\/x: 409 Conflict: the object has been modified/);
  const a = KubeApiError.fromResponse(
    "POST",
    "/p",
    409,
    JSON.stringify({ reason: "AlreadyExists" }),
  );
  nodeAssert.ok(a.isAlreadyExists && !a.isConflict);
  const t = KubeApiError.fromResponse("GET", "/p", 429, "slow down", "3");
  nodeAssert.equal(t.reason, "TooManyRequests");
  nodeAssert.equal(t.retryAfterSeconds, 3);
  nodeAssert.ok(t.isRetryable);
  nodeAssert.match(t.message, /slow down/);
  nodeAssert.ok(KubeApiError.fromResponse("GET", "/p", 404, "").isNotFound);
  nodeAssert.ok(!KubeApiError.fromResponse("GET", "/p", 501, "").isRetryable);
  const g = KubeApiError.fromStatus("watch x", {
    code: 410,
    reason: "Expired",
    message: "too old",
  });
  nodeAssert.ok(g.isGone);
  nodeAssert.equal(g.status, 410);
});

Deno.test("microTime and objectKey", () => {
  nodeAssert.equal(
    microTime(new Date("2026-01-02T03:04:05.678Z")),
    "2026-01-02T03:04:05.678000Z",
  );
  nodeAssert.equal(objectKey({ metadata: { name: "a", namespace: "n" } }), "n/a");
  nodeAssert.equal(objectKey({ metadata: { name: "a" } }), "a");
});
