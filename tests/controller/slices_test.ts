/**
 * The EndpointSlice a replica publishes for a cluster it serves, and the writes that bring what
 * the API shows to it — on in-memory objects. Expected shapes are the documented ones (README,
 * "Replicas"): name `mc-<cluster>-<10 hex of sha256(pod name)>`, the Service, manager and replica
 * labels, the pod IP as one ready endpoint pointing at the Pod, the ports `kubernetes` and
 * `kubesphere` by name, owned by the Pod (not as its controller).
 */

import { createHash } from "node:crypto";
import { assert, assertEquals } from "../helpers/assert.ts";
import {
  clusterOfSlice,
  desiredSlice,
  type EndpointSliceObject,
  type ReplicaIdentity,
  replicaOfSlice,
  sliceActions,
  sliceName,
  sliceReady,
} from "../../lib/controller/slices.ts";

const POD: ReplicaIdentity = {
  name: "tower-7d9f-abcde",
  namespace: "kubesphere-system",
  ip: "10.0.1.5",
  uid: "0b7c3d1e-1111-2222-3333-444455556666",
};
const ALPHA = { cluster: "alpha", kubernetesPort: 6001, kubespherePort: 16001 };

const hex10 = (s: string) => createHash("sha256").update(s).digest("hex").slice(0, 10);
/** A DNS subdomain (RFC 1123), as object names must be. */
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

/** `s` as the API server returns it: uid, resourceVersion, defaults and fields of others added. */
function asStored(s: EndpointSliceObject, rv = "41"): EndpointSliceObject {
  const copy = structuredClone(s);
  copy.metadata.uid = "slice-uid-1";
  copy.metadata.resourceVersion = rv;
  copy.metadata.generation = 1;
  copy.metadata.creationTimestamp = "2026-01-01T00:00:00Z";
  copy.metadata.managedFields = [{ manager: "tower" }];
  return copy;
}

Deno.test("desiredSlice: the documented shape for the cluster's Service, the pod IP and ports", () => {
  const s = desiredSlice(ALPHA, { ...POD, nodeName: "node-a" });
  assertEquals(s.apiVersion, "discovery.k8s.io/v1");
  assertEquals(s.kind, "EndpointSlice");
  assertEquals(s.metadata.name, `mc-alpha-${hex10(POD.name)}`);
  assertEquals(s.metadata.namespace, "kubesphere-system");
  assertEquals(s.metadata.labels, {
    "kubernetes.io/service-name": "mc-alpha",
    "endpointslice.kubernetes.io/managed-by": "tower.kubesphere.io",
    "tower.kubesphere.io/replica": POD.name,
  });
  assertEquals(s.addressType, "IPv4");
  assertEquals(s.endpoints, [{
    addresses: ["10.0.1.5"],
    conditions: { ready: true, serving: true, terminating: false },
    targetRef: { kind: "Pod", name: POD.name, namespace: POD.namespace, uid: POD.uid },
    nodeName: "node-a",
  }]);
  assertEquals(s.ports, [
    { name: "kubernetes", port: 6001, protocol: "TCP" },
    { name: "kubesphere", port: 16001, protocol: "TCP" },
  ]);
  assertEquals(s.metadata.ownerReferences, [{
    apiVersion: "v1",
    kind: "Pod",
    name: POD.name,
    uid: POD.uid,
    controller: false,
  }]);
  assert(sliceReady(s), "a published slice is ready");
  assertEquals(clusterOfSlice(s), "alpha");
  assertEquals(replicaOfSlice(s), POD.name);
});

Deno.test("desiredSlice: an IPv6 pod IP makes an IPv6 slice; each replica has its own name", () => {
  const v6 = desiredSlice(ALPHA, { ...POD, ip: "fd00::5" });
  assertEquals(v6.addressType, "IPv6");
  assertEquals(v6.endpoints![0].addresses, ["fd00::5"]);
  const other = desiredSlice(ALPHA, { ...POD, name: "tower-7d9f-fghij", ip: "10.0.2.7" });
  assert(other.metadata.name !== v6.metadata.name, "two replicas' slices of a cluster coexist");
  assertEquals(other.metadata.labels!["kubernetes.io/service-name"], "mc-alpha");
  // Without a known Pod uid nothing can own the slice (an ownerReference needs the uid).
  const { uid: _, ...noUid } = POD;
  assertEquals(desiredSlice(ALPHA, noUid).metadata.ownerReferences, undefined);
});

Deno.test("sliceName: stays a valid name of at most 253 characters for the longest cluster names", () => {
  // A Cluster name may be 253 characters itself; `mc-` and the hash must still fit.
  const long = "c".repeat(200) + ".example." + "d".repeat(44);
  assertEquals(long.length, 253);
  const a = sliceName(long, POD.name);
  const b = sliceName(long.slice(0, -1) + "e", POD.name);
  for (const n of [a, b]) {
    assert(n.length <= 253, `${n.length} characters`);
    assert(DNS_SUBDOMAIN.test(n), `not a DNS subdomain: ${n}`);
    assert(n.startsWith("mc-ccc"), n);
  }
  assert(a !== b, "two long names with a common prefix must not share a slice");
  assert(sliceName(long, "tower-0") !== sliceName(long, "tower-1"), "nor two replicas");
  // A cut that ends on a dot must not leave `.-` in the name.
  const dotted = "a".repeat(238) + "." + "b".repeat(14);
  assert(DNS_SUBDOMAIN.test(sliceName(dotted, POD.name)), sliceName(dotted, POD.name));
});

Deno.test("sliceReady: as kube-proxy reads it", () => {
  const base = desiredSlice(ALPHA, POD);
  const withEndpoints = (endpoints: EndpointSliceObject["endpoints"]) => ({ ...base, endpoints });
  assert(!sliceReady(withEndpoints([])), "no endpoint");
  assert(!sliceReady(withEndpoints(null)), "endpoints null");
  assert(
    !sliceReady(withEndpoints([{ addresses: ["10.0.1.5"], conditions: { ready: false } }])),
    "ready: false",
  );
  assert(sliceReady(withEndpoints([{ addresses: ["10.0.1.5"] }])), "no conditions: ready");
  assert(sliceReady(withEndpoints([{ addresses: ["10.0.1.5"], conditions: {} }])), "ready unset");
  assert(
    sliceReady(withEndpoints([
      { addresses: ["10.0.1.6"], conditions: { ready: false } },
      { addresses: ["10.0.1.5"], conditions: { ready: true } },
    ])),
    "one ready endpoint of two",
  );
});

Deno.test("clusterOfSlice, replicaOfSlice: only Tower's slices of mc-* Services count", () => {
  const s = desiredSlice(ALPHA, POD);
  const relabel = (labels: Record<string, string>) => ({
    ...s,
    metadata: { ...s.metadata, labels: { ...s.metadata.labels, ...labels } },
  });
  assertEquals(clusterOfSlice(relabel({ "kubernetes.io/service-name": "kubernetes" })), undefined);
  assertEquals(clusterOfSlice(relabel({ "kubernetes.io/service-name": "mc-" })), undefined);
  const foreign = relabel({ "endpointslice.kubernetes.io/managed-by": "someone-else" });
  assertEquals(replicaOfSlice(foreign), undefined, "a slice someone else manages is not ours");
});

Deno.test("sliceActions: create when missing, nothing when the stored one says the same", () => {
  const want = desiredSlice(ALPHA, POD);
  assertEquals(sliceActions(want, []), [{ kind: "create", slice: want }]);
  // What the server adds (uid, resourceVersion, defaults) is no reason to write.
  assertEquals(sliceActions(want, [asStored(want)]), []);
  // Nothing wanted and nothing there: nothing to do.
  assertEquals(sliceActions(undefined, []), []);
});

Deno.test("sliceActions: the last session gone, the slice is deleted (by uid)", () => {
  const stored = asStored(desiredSlice(ALPHA, POD));
  assertEquals(sliceActions(undefined, [stored]), [
    { kind: "delete", name: stored.metadata.name!, uid: "slice-uid-1" },
  ]);
});

Deno.test("sliceActions: other ports, a not-ready endpoint or a lost label are updated in place", () => {
  const want = desiredSlice(ALPHA, POD);
  const cases: [string, (s: EndpointSliceObject) => void][] = [
    ["port moved", (s) => s.ports![0].port = 6999],
    ["not ready", (s) => s.endpoints![0].conditions = { ready: false, terminating: true }],
    ["other address", (s) => s.endpoints![0].addresses = ["10.0.9.9"]],
    ["label lost", (s) => delete s.metadata.labels!["kubernetes.io/service-name"]],
    ["owner lost", (s) => delete s.metadata.ownerReferences],
  ];
  for (const [what, spoil] of cases) {
    const stored = asStored(want, "77");
    spoil(stored);
    stored.metadata.labels!["team"] = "infra";
    stored.metadata.annotations = { "note": "kept" };
    const actions = sliceActions(want, [stored]);
    assertEquals(actions.length, 1, what);
    const a = actions[0];
    assert(a.kind === "update", `${what}: ${a.kind}`);
    // A conditional write of the stored object: its resourceVersion and uid, our fields.
    assertEquals(a.slice.metadata.resourceVersion, "77", what);
    assertEquals(a.slice.metadata.uid, "slice-uid-1", what);
    assertEquals(a.slice.ports, want.ports, what);
    assertEquals(a.slice.endpoints, want.endpoints, what);
    assertEquals(a.slice.metadata.ownerReferences, want.metadata.ownerReferences, what);
    assertEquals(a.slice.metadata.labels!["kubernetes.io/service-name"], "mc-alpha", what);
    // Someone else's label and annotation stay.
    assertEquals(a.slice.metadata.labels!["team"], "infra", what);
    assertEquals(a.slice.metadata.annotations, { note: "kept" }, what);
  }
});

Deno.test("sliceActions: a slice of this replica under another name goes, the wanted one stays", () => {
  const want = desiredSlice(ALPHA, POD);
  const stray = asStored({
    ...want,
    metadata: { ...want.metadata, name: "mc-alpha-0123456789" },
  });
  stray.metadata.uid = "stray-uid";
  assertEquals(sliceActions(want, [stray, asStored(want)]), [
    { kind: "delete", name: "mc-alpha-0123456789", uid: "stray-uid" },
  ]);
  assertEquals(sliceActions(want, [stray]), [
    { kind: "delete", name: "mc-alpha-0123456789", uid: "stray-uid" },
    { kind: "create", slice: want },
  ]);
});
