/**
 * The protobuf codec: bodies the real kubectl encoded (Go's generated
 * marshalers, captured in testdata/kubectl_bodies.json) decode to the JSON
 * kubectl itself renders for the same object; every served kind round-trips
 * JSON → protobuf → JSON with the fields kubectl uses; a watch frame matches
 * bytes assembled by hand from the .proto facts; bad input is refused with a
 * clear error.
 * @module
 */

import { assert, assertEquals, assertThrows } from "../../helpers/assert.ts";
import {
  decodeObject,
  encodeObject,
  encodeWatchEvent,
  MAGIC,
  ProtobufError,
  protobufWatchEvents,
  readEnvelope,
} from "./codec.ts";

type Obj = Record<string, unknown>;

const fixtures = JSON.parse(
  await Deno.readTextFile(new URL("./testdata/kubectl_bodies.json", import.meta.url)),
) as { bodies: Record<string, { args: string[]; hex: string; json?: Obj }> };

const fromHex = (hex: string) => Uint8Array.from(hex.match(/../g) ?? [], (h) => parseInt(h, 16));

/** Go renders a zero metav1.Time as null; the codec leaves it out. */
function withoutNulls(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(withoutNulls);
  if (v && typeof v === "object") {
    return Object.fromEntries(
      Object.entries(v).filter(([, x]) => x !== null).map(([k, x]) => [k, withoutNulls(x)]),
    );
  }
  return v;
}

Deno.test("codec: kubectl's protobuf bodies decode to kubectl's own JSON of the object", () => {
  const withJson = Object.entries(fixtures.bodies).filter(([, f]) => f.json);
  assert(withJson.length >= 6, "fixtures for namespace, configmap, secret, services, sa");
  for (const [name, f] of withJson) {
    assertEquals(decodeObject(fromHex(f.hex)), withoutNulls(f.json), name);
  }
});

Deno.test("codec: kubectl's SelfSubjectAccessReview (auth can-i get secrets -n pb-ns)", () => {
  const review = decodeObject(fromHex(fixtures.bodies.selfSubjectAccessReview.hex));
  assertEquals(review, {
    apiVersion: "authorization.k8s.io/v1",
    kind: "SelfSubjectAccessReview",
    metadata: {},
    spec: { resourceAttributes: { namespace: "pb-ns", verb: "get", resource: "secrets" } },
    status: { allowed: false },
  });
});

Deno.test("codec: the envelope kubectl sent names the kind, no encoding", () => {
  const env = readEnvelope(fromHex(fixtures.bodies.configmap.hex));
  assertEquals([env.apiVersion, env.kind], ["v1", "ConfigMap"]);
});

const META = {
  name: "web",
  namespace: "demo",
  uid: "0b6c1c1e-7a42-4c1f-9d2e-3f4a5b6c7d8e",
  resourceVersion: "4242",
  generation: 3,
  creationTimestamp: "2024-05-06T07:08:09Z",
  deletionTimestamp: "2024-05-06T08:00:00Z",
  deletionGracePeriodSeconds: 0,
  labels: { app: "web", "app.kubernetes.io/part-of": "tower" },
  annotations: { note: "", "kubectl.kubernetes.io/last-applied-configuration": "{}\n" },
  ownerReferences: [{
    apiVersion: "apps/v1",
    kind: "Deployment",
    name: "web",
    uid: "11111111-2222-3333-4444-555555555555",
    controller: true,
    blockOwnerDeletion: false,
  }],
  finalizers: ["example.com/keep"],
  managedFields: [{
    manager: "kubectl-create",
    operation: "Update",
    apiVersion: "v1",
    time: "2024-05-06T07:08:09Z",
    fieldsType: "FieldsV1",
    fieldsV1: { "f:metadata": { "f:labels": { ".": {}, "f:app": {} } } },
  }],
};

const SERVICE = {
  apiVersion: "v1",
  kind: "Service",
  metadata: META,
  spec: {
    ports: [
      { name: "http", protocol: "TCP", port: 80, targetPort: 8080, nodePort: 31080 },
      { name: "https", protocol: "TCP", appProtocol: "https", port: 443, targetPort: "https" },
    ],
    selector: { app: "web" },
    clusterIP: "10.96.0.10",
    clusterIPs: ["10.96.0.10"],
    type: "LoadBalancer",
    externalIPs: ["192.0.2.7"],
    sessionAffinity: "ClientIP",
    sessionAffinityConfig: { clientIP: { timeoutSeconds: 10800 } },
    externalTrafficPolicy: "Local",
    healthCheckNodePort: 32000,
    ipFamilies: ["IPv4"],
    ipFamilyPolicy: "SingleStack",
    allocateLoadBalancerNodePorts: false,
    internalTrafficPolicy: "Cluster",
  },
  status: {
    loadBalancer: {
      ingress: [{
        ip: "203.0.113.9",
        ipMode: "VIP",
        ports: [{ port: 443, protocol: "TCP", error: "" }],
      }],
    },
    conditions: [{
      type: "Ready",
      status: "True",
      observedGeneration: 3,
      lastTransitionTime: "2024-05-06T07:08:10Z",
      reason: "Up",
      message: "",
    }],
  },
};

const ROUND_TRIPS: Obj[] = [
  {
    apiVersion: "v1",
    kind: "Namespace",
    metadata: { ...META, namespace: undefined },
    spec: { finalizers: ["kubernetes"] },
    status: {
      phase: "Terminating",
      conditions: [{
        type: "NamespaceDeletionContentFailure",
        status: "False",
        lastTransitionTime: "2024-05-06T07:08:09Z",
        reason: "ContentDeleted",
        message: "All content successfully deleted",
      }],
    },
  },
  {
    apiVersion: "v1",
    kind: "ConfigMap",
    metadata: META,
    immutable: false,
    data: { "app.conf": "listen 80\n", empty: "" },
    binaryData: { "logo.png": "iVBORw0KGgo=" },
  },
  {
    apiVersion: "v1",
    kind: "Secret",
    metadata: META,
    immutable: true,
    data: { "tls.crt": "LS0tLS1CRUdJTg==", blank: "" },
    stringData: { extra: "plain" },
    type: "kubernetes.io/tls",
  },
  SERVICE,
  {
    apiVersion: "v1",
    kind: "ServiceAccount",
    metadata: META,
    secrets: [{ name: "web-token", namespace: "demo" }],
    imagePullSecrets: [{ name: "registry" }],
    automountServiceAccountToken: false,
  },
  {
    apiVersion: "coordination.k8s.io/v1",
    kind: "Lease",
    metadata: META,
    spec: {
      holderIdentity: "",
      leaseDurationSeconds: 0,
      acquireTime: "2024-05-06T07:08:09.000000Z",
      renewTime: "2024-05-06T07:08:39.123456Z",
      leaseTransitions: 0,
    },
  },
  {
    apiVersion: "v1",
    kind: "Event",
    metadata: META,
    involvedObject: {
      kind: "Cluster",
      namespace: "default",
      name: "member-1",
      uid: "99999999-8888-7777-6666-555555555555",
      apiVersion: "cluster.kubesphere.io/v1alpha1",
      resourceVersion: "12",
      fieldPath: "spec.connection",
    },
    reason: "AgentConnected",
    message: "agent connected",
    source: { component: "tower", host: "node-1" },
    firstTimestamp: "2024-05-06T07:08:09Z",
    lastTimestamp: "2024-05-06T07:09:09Z",
    count: 2,
    type: "Normal",
    eventTime: "2024-05-06T07:08:09.654321Z",
    series: { count: 2, lastObservedTime: "2024-05-06T07:09:09.000001Z" },
    action: "Connect",
    related: { kind: "Pod", name: "agent-0" },
    reportingComponent: "tower",
    reportingInstance: "",
  },
  {
    apiVersion: "events.k8s.io/v1",
    kind: "Event",
    metadata: META,
    eventTime: "2024-05-06T07:08:09.100000Z",
    series: { count: 0, lastObservedTime: "2024-05-06T07:08:09.200000Z" },
    reportingController: "tower",
    reportingInstance: "tower-0",
    action: "Connect",
    reason: "AgentConnected",
    regarding: { kind: "Cluster", name: "member-1" },
    note: "agent connected",
    type: "Warning",
    deprecatedSource: { component: "tower" },
    deprecatedFirstTimestamp: "2024-05-06T07:08:09Z",
    deprecatedCount: 1,
  },
  {
    apiVersion: "v1",
    kind: "Status",
    metadata: { resourceVersion: "7" },
    status: "Failure",
    message: 'configmaps "x" is invalid',
    reason: "Invalid",
    details: {
      name: "x",
      group: "apps",
      kind: "configmaps",
      uid: "u-1",
      causes: [{ reason: "FieldValueInvalid", message: "bad", field: "data[a b]" }],
      retryAfterSeconds: 1,
    },
    code: 422,
  },
  {
    apiVersion: "v1",
    kind: "DeleteOptions",
    gracePeriodSeconds: 0,
    preconditions: { uid: "u-1", resourceVersion: "41" },
    orphanDependents: false,
    propagationPolicy: "Orphan",
    dryRun: ["All"],
  },
  {
    apiVersion: "authorization.k8s.io/v1",
    kind: "SelfSubjectRulesReview",
    metadata: {},
    spec: { namespace: "demo" },
    status: {
      resourceRules: [{ verbs: ["get"], apiGroups: [""], resources: ["configmaps"] }],
      incomplete: false,
    },
  },
];

Deno.test("codec: every served kind round-trips JSON → protobuf → JSON", () => {
  for (const obj of ROUND_TRIPS) {
    const json = JSON.parse(JSON.stringify(obj));
    const bytes = encodeObject(json);
    assertEquals([...bytes.subarray(0, 4)], [...MAGIC], `${obj.kind}: magic`);
    assertEquals(decodeObject(bytes), json, `${obj.apiVersion}/${obj.kind}`);
  }
});

Deno.test("codec: lists carry ListMeta and items (items without apiVersion/kind)", () => {
  const { apiVersion: _a, kind: _k, ...item } = SERVICE;
  const list = {
    apiVersion: "v1",
    kind: "ServiceList",
    metadata: { resourceVersion: "99", continue: "eyJ9", remainingItemCount: 0 },
    items: [{ apiVersion: "v1", kind: "Service", ...item }, item],
  };
  assertEquals(decodeObject(encodeObject(list)), {
    apiVersion: "v1",
    kind: "ServiceList",
    metadata: list.metadata,
    items: [item, item],
  });
  assertEquals(
    decodeObject(encodeObject({ apiVersion: "v1", kind: "ConfigMapList", metadata: {} })),
    { apiVersion: "v1", kind: "ConfigMapList", metadata: {} },
  );
});

Deno.test("codec: zero values follow Go's omitempty, pointers keep theirs", () => {
  const got = decodeObject(encodeObject({
    apiVersion: "v1",
    kind: "Service",
    metadata: { name: "s", namespace: "", generation: 0, labels: {} },
    spec: { ports: [{ port: 80, targetPort: 0, nodePort: 0 }], clusterIP: "", type: "" },
  }));
  assertEquals(got, {
    apiVersion: "v1",
    kind: "Service",
    metadata: { name: "s" },
    spec: { ports: [{ port: 80 }] },
  });
});

/** Length-delimited protobuf field: tag (field << 3 | 2), varint length (< 128 here), bytes. */
function ld(field: number, body: number[] | string): number[] {
  const b = typeof body === "string" ? [...new TextEncoder().encode(body)] : body;
  assert(b.length < 128, "short fields only");
  return [(field << 3) | 2, b.length, ...b];
}

Deno.test("codec: a watch frame matches bytes assembled from the .proto facts", () => {
  const status = {
    apiVersion: "v1",
    kind: "Status",
    metadata: {},
    status: "Failure",
    reason: "Expired",
    code: 410,
  };
  // meta.v1.Status: metadata=1 (empty ListMeta), status=2, reason=4, code=6 (varint 410 = 9a 03).
  const statusMsg = [...ld(1, []), ...ld(2, "Failure"), ...ld(4, "Expired"), 0x30, 0x9a, 0x03];
  // runtime.Unknown: typeMeta=1 {apiVersion=1, kind=2}, raw=2, contentEncoding=3, contentType=4.
  const unknown = [
    ...ld(1, [...ld(1, "v1"), ...ld(2, "Status")]),
    ...ld(2, statusMsg),
    ...ld(3, ""),
    ...ld(4, ""),
  ];
  const object = [0x6b, 0x38, 0x73, 0x00, ...unknown];
  // meta.v1.WatchEvent: type=1, object=2 (RawExtension {raw=1}).
  const event = [...ld(1, "ERROR"), ...ld(2, ld(1, object))];
  const expected = [0, 0, 0, event.length, ...event];
  assertEquals([...encodeWatchEvent("ERROR", status)], expected);
});

Deno.test("codec: watch frames are read across chunk boundaries", async () => {
  const a = encodeWatchEvent("ADDED", ROUND_TRIPS[1]);
  const b = encodeWatchEvent("DELETED", ROUND_TRIPS[1]);
  const all = new Uint8Array([...a, ...b]);
  const cuts = [0, 2, 5, a.length + 1, all.length];
  const body = new ReadableStream<Uint8Array>({
    start(ctl) {
      for (let i = 1; i < cuts.length; i++) ctl.enqueue(all.slice(cuts[i - 1], cuts[i]));
      ctl.close();
    },
  });
  const seen = [];
  for await (const ev of protobufWatchEvents(body)) seen.push([ev.type, ev.object.kind]);
  assertEquals(seen, [["ADDED", "ConfigMap"], ["DELETED", "ConfigMap"]]);
});

Deno.test("codec: bad input is refused with a ProtobufError", () => {
  const good = encodeObject(ROUND_TRIPS[1]);
  assertThrows(
    () => decodeObject(new TextEncoder().encode('{"kind":"ConfigMap"}')),
    ProtobufError,
    "expected prefix",
  );
  assertThrows(() => decodeObject(good.subarray(0, good.length - 5)), ProtobufError);
  assertThrows(
    () => encodeObject({ apiVersion: "cluster.kubesphere.io/v1alpha1", kind: "Cluster" }),
    ProtobufError,
    "no protobuf form",
  );
  const pod = encodeObject({ apiVersion: "v1", kind: "ConfigMap", metadata: { name: "p" } });
  pod[pod.indexOf(0x43)] = 0x50; // "ConfigMap" → "PonfigMap": a kind without a message here
  assertThrows(() => decodeObject(pod), ProtobufError, "no protobuf form for v1/PonfigMap");
  assertThrows(
    () =>
      encodeObject({ apiVersion: "v1", kind: "ConfigMap", metadata: { creationTimestamp: "x" } }),
    ProtobufError,
    "not an RFC 3339 time",
  );
});
