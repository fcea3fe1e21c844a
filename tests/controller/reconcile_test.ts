import fc from "fast-check";
import { portViewFromSet } from "../../lib/controller/ports.ts";
import { assert, assertEquals, assertStringIncludes, assertThrows } from "../helpers/assert.ts";
import {
  desiredService,
  findCondition,
  kubeTime,
  lbAnnotations,
  portClaim,
  portsUsedByOthers,
  reconcileCluster,
  type ReconcileInput,
  setCondition,
} from "../../lib/controller/reconcile.ts";
import {
  AGENT_CONNECTED_MESSAGE,
  AGENT_NOT_CONNECTED_MESSAGE,
  type ClusterObject,
  LB_ANNOTATIONS_KEY,
  MANAGED_ANNOTATIONS_KEY,
  type ServiceObject,
} from "../../lib/controller/types.ts";

const T0 = new Date("2026-11-23T07:00:00.123Z");
const T1 = new Date("2026-11-23T08:00:00Z");
const TOKEN = "ab".repeat(32);

function cluster(over: Partial<ClusterObject["spec"]> = {}, name = "alpha"): ClusterObject {
  return {
    apiVersion: "cluster.kubesphere.io/v1alpha1",
    kind: "Cluster",
    metadata: { name, resourceVersion: "7", uid: "u-1" },
    spec: { joinFederation: true, connection: { type: "proxy", token: "" }, ...over },
  };
}

function input(over: Partial<ReconcileInput> = {}): ReconcileInput {
  return {
    name: "alpha",
    cluster: cluster(),
    service: undefined,
    portsUsedByOthers: new Set(),
    agent: "unknown",
    now: T0,
    newToken: () => TOKEN,
    ...over,
  };
}

/** Apply a plan the way the API server would: Service gets a ClusterIP. */
function created(svc: ServiceObject, ip = "10.96.0.42"): ServiceObject {
  return {
    ...svc,
    metadata: { ...svc.metadata, resourceVersion: "1", uid: "s-1" },
    spec: { ...svc.spec, clusterIP: ip, sessionAffinity: "None" },
  };
}

/** Run reconcile to a fixed point: apply Service then Cluster changes, return the final state. */
function converge(start: ReconcileInput): { cluster: ClusterObject; service?: ServiceObject } {
  let inp = start;
  for (let i = 0; i < 10; i++) {
    const plan = reconcileCluster(inp);
    let svc = inp.service;
    if (plan.service.kind === "create") svc = created(plan.service.service);
    else if (plan.service.kind === "update") svc = plan.service.service;
    else if (plan.service.kind === "delete") svc = undefined;
    const cl = plan.cluster ?? inp.cluster;
    if (plan.service.kind === "none" && !plan.cluster) {
      return { cluster: cl!, service: svc };
    }
    inp = { ...inp, cluster: cl, service: svc };
  }
  throw new Error("did not converge");
}

Deno.test("kubeTime has second precision", () => {
  assertEquals(kubeTime(T0), "2026-11-23T07:00:00Z");
});

Deno.test("new Cluster: Service first, then ports, token, endpoints, Initialized", () => {
  const plan = reconcileCluster(input());
  assertEquals(plan.service.kind, "create");
  if (plan.service.kind !== "create") throw new Error();
  const svc = plan.service.service;
  assertEquals(svc.metadata, {
    name: "mc-alpha",
    namespace: "kubesphere-system",
    labels: { app: "mc-alpha", "app.kubernetes.io/name": "mc-alpha" },
  });
  // No selector: each replica serving the cluster publishes an EndpointSlice for it.
  assertEquals(svc.spec, {
    type: "ClusterIP",
    ports: [
      { name: "kubernetes", protocol: "TCP", port: 6443, targetPort: 6001 },
      { name: "kubesphere", protocol: "TCP", port: 80, targetPort: 16001 },
    ],
  });
  // No address yet: ports and token, no endpoints, not Initialized.
  const c = plan.cluster!;
  assertEquals(c.spec!.connection!.kubernetesAPIServerPort, 6001);
  assertEquals(c.spec!.connection!.kubesphereAPIServerPort, 16001);
  assertEquals(c.spec!.connection!.token, TOKEN);
  assertEquals(c.spec!.connection!.kubernetesAPIEndpoint, undefined);
  assertEquals(findCondition(c, "Initialized"), undefined);
  assertEquals(plan.events.map((e) => e.reason), ["PortsAllocated", "TokenGenerated"]);
  assert(!plan.events.some((e) => e.message.includes(TOKEN)), "events never carry the token");

  // With the created Service: endpoints from the ClusterIP and Initialized.
  const plan2 = reconcileCluster(input({ service: created(svc) }));
  assertEquals(plan2.service.kind, "none");
  const c2 = plan2.cluster!;
  assertEquals(c2.spec!.connection!.kubernetesAPIEndpoint, "https://10.96.0.42:6443");
  assertEquals(c2.spec!.connection!.kubesphereAPIEndpoint, "http://10.96.0.42:80");
  assertEquals(c2.metadata.resourceVersion, "7");
  assertEquals(findCondition(c2, "Initialized"), {
    type: "Initialized",
    status: "True",
    reason: "Initialized",
    message: "Cluster has been initialized",
    lastUpdateTime: "2026-11-23T07:00:00Z",
    lastTransitionTime: "2026-11-23T07:00:00Z",
  });
  assert(plan2.events.some((e) => e.reason === "Initialized"));
});

Deno.test("the default token is 64 hex chars from the CSPRNG", () => {
  const a = reconcileCluster(input({ newToken: undefined })).cluster!.spec!.connection!.token!;
  const b = reconcileCluster(input({ newToken: undefined })).cluster!.spec!.connection!.token!;
  assert(/^[0-9a-f]{64}$/.test(a), a);
  assert(a !== b);
});

Deno.test("an existing token is kept", () => {
  const c = cluster({ connection: { type: "proxy", token: "given" } });
  const plan = reconcileCluster(input({ cluster: c }));
  assertEquals(plan.cluster!.spec!.connection!.token, "given");
  assert(!plan.events.some((e) => e.reason === "TokenGenerated"));
});

Deno.test("converged: a second reconcile writes nothing (no hot loop)", () => {
  const end = converge(input());
  const again = reconcileCluster(input({ cluster: end.cluster, service: end.service, now: T1 }));
  assertEquals(again.cluster, undefined);
  assertEquals(again.service, { kind: "none" });
  assertEquals(again.events, []);
});

Deno.test("--publish-service-address: endpoints use it and the allocated ports", () => {
  const end = converge(input({ publishAddress: "192.168.100.3" }));
  const conn = end.cluster.spec!.connection!;
  assertEquals(conn.kubernetesAPIEndpoint, "https://192.168.100.3:6001");
  assertEquals(conn.kubesphereAPIEndpoint, "http://192.168.100.3:16001");
  const v6 = converge(input({ publishAddress: "fd00::1" }));
  assertEquals(v6.cluster.spec!.connection!.kubernetesAPIEndpoint, "https://[fd00::1]:6001");
  // The Service is still created.
  assert(end.service);
});

Deno.test("ports: existing free pair kept, colliding pair reallocated, used ports skipped", () => {
  const own = cluster({
    connection: {
      type: "proxy",
      token: "t",
      kubernetesAPIServerPort: 6500,
      kubesphereAPIServerPort: 16500,
    },
  });
  const kept = reconcileCluster(input({ cluster: own }));
  assertEquals(kept.cluster, undefined, "nothing to change in the Cluster yet");
  if (kept.service.kind !== "create") throw new Error("want create");
  assertEquals(kept.service.service.spec!.ports!.map((p) => p.targetPort), [6500, 16500]);
  const clash = reconcileCluster(
    input({ cluster: own, portsUsedByOthers: new Set([16500, 6000, 16001]) }),
  );
  assertEquals(clash.cluster!.spec!.connection!.kubernetesAPIServerPort, 6002);
  assertEquals(clash.cluster!.spec!.connection!.kubesphereAPIServerPort, 16002);
  // Half a pair, or nonsense values, get a fresh pair.
  for (
    const bad of [
      { kubernetesAPIServerPort: 6500 },
      { kubernetesAPIServerPort: 0, kubesphereAPIServerPort: 0 },
      { kubernetesAPIServerPort: 70000, kubesphereAPIServerPort: 16500 },
      { kubernetesAPIServerPort: 6500, kubesphereAPIServerPort: 6500 },
    ]
  ) {
    const c = cluster({ connection: { type: "proxy", token: "t", ...bad } });
    const p = reconcileCluster(input({ cluster: c })).cluster!.spec!.connection!;
    assertEquals([p.kubernetesAPIServerPort, p.kubesphereAPIServerPort], [6001, 16001]);
  }
});

Deno.test("ports exhausted: error names the cluster", () => {
  const used = new Set<number>();
  for (let p = 6000; p < 7000; p++) used.add(p);
  assertThrows(
    () => reconcileCluster(input({ ports: portViewFromSet(used, { min: 6000, max: 6999 }) })),
    Error,
    "cluster alpha: allocate ports",
  );
});

Deno.test("property: sequential reconciles of many clusters never collide", () => {
  fc.assert(
    fc.property(
      fc.array(
        fc.record({
          k: fc.option(fc.integer({ min: 5990, max: 7010 }), { nil: undefined }),
          s: fc.option(fc.integer({ min: 15990, max: 17010 }), { nil: undefined }),
        }),
        { maxLength: 40 },
      ),
      (specs) => {
        const used = new Set<number>();
        for (const [i, sp] of specs.entries()) {
          const c = cluster({
            connection: {
              type: "proxy",
              token: "t",
              kubernetesAPIServerPort: sp.k,
              kubesphereAPIServerPort: sp.s,
            },
          }, `c${i}`);
          const plan = reconcileCluster(
            input({ name: `c${i}`, cluster: c, portsUsedByOthers: used }),
          );
          const conn = (plan.cluster ?? c).spec!.connection!;
          const k = conn.kubernetesAPIServerPort!;
          const s = conn.kubesphereAPIServerPort!;
          if (used.has(k) || used.has(s) || k === s) return false;
          used.add(k);
          used.add(s);
        }
        return true;
      },
    ),
  );
});

Deno.test("AgentAvailable: True/False with the exact messages; unknown leaves it alone", () => {
  const base = converge(input());
  const up = reconcileCluster(input({ ...base, agent: "connected", now: T1 }));
  const cond = findCondition(up.cluster, "AgentAvailable")!;
  assertEquals(cond.status, "True");
  assertEquals(cond.message, AGENT_CONNECTED_MESSAGE);
  assertEquals(cond.lastTransitionTime, kubeTime(T1));
  assertEquals(up.events.map((e) => e.reason), ["AgentConnected"]);
  assertEquals(up.service.kind, "none");

  const T2 = new Date("2026-11-23T09:00:00Z");
  const down = reconcileCluster(
    input({ cluster: up.cluster, service: base.service, agent: "disconnected", now: T2 }),
  );
  const dc = findCondition(down.cluster, "AgentAvailable")!;
  assertEquals(dc.status, "False");
  assertEquals(dc.message, AGENT_NOT_CONNECTED_MESSAGE);
  assertEquals(dc.lastTransitionTime, kubeTime(T2));
  assertEquals(down.events.map((e) => e.reason), ["AgentDisconnected"]);

  // Same state again: nothing to write.
  const same = reconcileCluster(
    input({ cluster: down.cluster, service: base.service, agent: "disconnected", now: T1 }),
  );
  assertEquals(same.cluster, undefined);
  // Unknown: untouched.
  const unk = reconcileCluster(input({ cluster: up.cluster, service: base.service }));
  assertEquals(unk.cluster, undefined);
  // Disconnected with no condition yet: False is written, but no "disconnected" event.
  const fresh = reconcileCluster(input({ ...base, agent: "disconnected" }));
  assertEquals(findCondition(fresh.cluster, "AgentAvailable")!.status, "False");
  assertEquals(fresh.events, []);
});

Deno.test("other conditions and status fields are preserved, in place", () => {
  const base = converge(input());
  const foreign = {
    type: "Ready",
    status: "True" as const,
    reason: "X",
    message: "by someone else",
    lastUpdateTime: "2020-01-01T00:00:00Z",
    lastTransitionTime: "2020-01-01T00:00:00Z",
    extra: 1,
  };
  const c = structuredClone(base.cluster);
  c.status!.conditions = [foreign, ...c.status!.conditions!];
  c.status!.kubernetesVersion = "v1.30.0";
  c.status!.nodeCount = 3;
  c.spec!.provider = "aws";
  c.metadata.labels = { x: "y" };
  const plan = reconcileCluster(input({ cluster: c, service: base.service, agent: "connected" }));
  const out = plan.cluster!;
  assertEquals(out.status!.conditions![0], foreign);
  assertEquals(out.status!.conditions!.map((x) => x.type), [
    "Ready",
    "Initialized",
    "AgentAvailable",
  ]);
  assertEquals(out.status!.kubernetesVersion, "v1.30.0");
  assertEquals(out.status!.nodeCount, 3);
  assertEquals(out.spec!.provider, "aws");
  assertEquals(out.metadata.labels, { x: "y" });
});

Deno.test("setCondition: transition time moves only on a status flip", () => {
  const start = setCondition(undefined, {
    type: "A",
    status: "False",
    reason: "r",
    message: "m",
  }, T0).conditions;
  const same = setCondition(start, { type: "A", status: "False", reason: "r", message: "m" }, T1);
  assertEquals(same.changed, false);
  assert(same.conditions === start);
  const msg = setCondition(start, { type: "A", status: "False", reason: "r", message: "m2" }, T1);
  assertEquals(msg.changed, true);
  assertEquals(msg.flipped, false);
  assertEquals(msg.conditions[0].lastTransitionTime, kubeTime(T0));
  assertEquals(msg.conditions[0].lastUpdateTime, kubeTime(T1));
  const flip = setCondition(start, { type: "A", status: "True", reason: "r", message: "m" }, T1);
  assertEquals(flip.flipped, true);
  assertEquals(flip.conditions[0].lastTransitionTime, kubeTime(T1));
});

Deno.test("LoadBalancer flow: annotations, pending, ingress IP/hostname, ExternalAccessReady", () => {
  const ann = { "eip.porter.kubesphere.io/v1alpha2": "porter-bgp-eip", "lb.x/y": "porter" };
  const c = cluster({ externalKubeAPIEnabled: true });
  c.metadata.annotations = { [LB_ANNOTATIONS_KEY]: JSON.stringify(ann) };
  const plan = reconcileCluster(input({ cluster: c }));
  if (plan.service.kind !== "create") throw new Error("want create");
  assertEquals(plan.service.service.spec!.type, "LoadBalancer");
  assertEquals(plan.service.service.metadata.annotations, {
    ...ann,
    [MANAGED_ANNOTATIONS_KEY]: JSON.stringify(Object.keys(ann).sort()),
  });

  const mid = converge(input({ cluster: c }));
  const pending = findCondition(mid.cluster, "ExternalAccessReady")!;
  assertEquals(pending.status, "False");
  assertEquals(mid.cluster.spec!.connection!.externalKubernetesAPIEndpoint, undefined);

  // Ingress appears on the Service status.
  const svc = structuredClone(mid.service!);
  svc.status = { loadBalancer: { ingress: [{ ip: "203.0.113.7" }] } };
  const ready = reconcileCluster(input({ cluster: mid.cluster, service: svc, now: T1 }));
  assertEquals(ready.service.kind, "none");
  assertEquals(
    ready.cluster!.spec!.connection!.externalKubernetesAPIEndpoint,
    "https://203.0.113.7:6443",
  );
  const cond = findCondition(ready.cluster, "ExternalAccessReady")!;
  assertEquals(cond.status, "True");
  assertEquals(cond.lastTransitionTime, kubeTime(T1));
  assertEquals(ready.events.map((e) => e.reason), ["ExternalEndpointReady"]);

  // Hostname when there is no IP.
  svc.status = { loadBalancer: { ingress: [{ hostname: "lb.example.com" }] } };
  const host = reconcileCluster(input({ cluster: mid.cluster, service: svc }));
  assertEquals(
    host.cluster!.spec!.connection!.externalKubernetesAPIEndpoint,
    "https://lb.example.com:6443",
  );

  // Disabling: back to ClusterIP, Tower's annotations removed, others kept, endpoint cleared.
  const off = structuredClone(ready.cluster!);
  off.spec!.externalKubeAPIEnabled = false;
  const lbSvc = structuredClone(svc);
  lbSvc.metadata.annotations = { ...lbSvc.metadata.annotations, "other/key": "v" };
  lbSvc.spec!.externalTrafficPolicy = "Cluster";
  lbSvc.spec!.ports = lbSvc.spec!.ports!.map((p, i) => ({ ...p, nodePort: 30000 + i }));
  const offPlan = reconcileCluster(input({ cluster: off, service: lbSvc }));
  if (offPlan.service.kind !== "update") throw new Error("want update");
  const s2 = offPlan.service.service;
  assertEquals(s2.spec!.type, "ClusterIP");
  assertEquals(s2.metadata.annotations, { "other/key": "v" });
  assertEquals(s2.spec!.externalTrafficPolicy, undefined);
  assert(s2.spec!.ports!.every((p) => p.nodePort === undefined));
  assertEquals(s2.spec!.clusterIP, "10.96.0.42");
  assertEquals(offPlan.cluster!.spec!.connection!.externalKubernetesAPIEndpoint, undefined);
  assertEquals(findCondition(offPlan.cluster, "ExternalAccessReady")!.status, "False");
});

Deno.test("LoadBalancer: node ports kept; annotation changes applied; bad JSON warns", () => {
  const c = cluster({ externalKubeAPIEnabled: true });
  c.metadata.annotations = { [LB_ANNOTATIONS_KEY]: '{"a":"1","b":"2"}' };
  const end = converge(input({ cluster: c }));
  const svc = structuredClone(end.service!);
  svc.spec!.ports = svc.spec!.ports!.map((p, i) => ({ ...p, nodePort: 31000 + i }));
  // Same state with API-assigned node ports: nothing to do.
  assertEquals(reconcileCluster(input({ cluster: end.cluster, service: svc })).service, {
    kind: "none",
  });
  // Drop b, change a: b removed, a updated, node ports kept.
  const c2 = structuredClone(end.cluster);
  c2.metadata.annotations = { [LB_ANNOTATIONS_KEY]: '{"a":"9","n":3}' };
  const plan = reconcileCluster(input({ cluster: c2, service: svc }));
  if (plan.service.kind !== "update") throw new Error("want update");
  assertEquals(plan.service.service.metadata.annotations, {
    a: "9",
    n: "3",
    [MANAGED_ANNOTATIONS_KEY]: '["a","n"]',
  });
  assertEquals(plan.service.service.spec!.ports!.map((p) => p.nodePort), [31000, 31001]);

  const bad = structuredClone(end.cluster);
  bad.metadata.annotations = { [LB_ANNOTATIONS_KEY]: "{nope" };
  assert(lbAnnotations(bad).error?.includes("invalid JSON"));
  const badPlan = reconcileCluster(input({ cluster: bad, service: svc }));
  assert(badPlan.events.some((e) => e.type === "Warning" && e.reason === "InvalidAnnotation"));
  assertEquals(lbAnnotations(cluster()).annotations, {});
});

Deno.test("Service drift is repaired: ports, selector, type, labels", () => {
  const end = converge(input());
  const drifted = structuredClone(end.service!);
  // The old layout's selector (every proxy pod) goes: the replicas' EndpointSlices route.
  drifted.spec!.selector = { app: "tower", "app.kubernetes.io/name": "tower" };
  drifted.spec!.ports![0].targetPort = 1234;
  drifted.metadata.labels = { team: "x" };
  const plan = reconcileCluster(input({ cluster: end.cluster, service: drifted }));
  if (plan.service.kind !== "update") throw new Error("want update");
  const s = plan.service.service;
  assertEquals(s.spec!.selector, undefined);
  assertEquals(s.spec!.clusterIP, drifted.spec!.clusterIP);
  // A proxy publishing no slices (in the cluster without a pod IP) keeps selecting its pods.
  const legacy = reconcileCluster(
    input({ cluster: end.cluster, service: drifted, selectPods: true }),
  );
  if (legacy.service.kind !== "update") throw new Error("want update (ports, labels)");
  assertEquals(legacy.service.service.spec!.selector, {
    app: "tower",
    "app.kubernetes.io/name": "tower",
  });
  assertEquals(s.spec!.ports![0].targetPort, 6001);
  assertEquals(s.metadata.labels, {
    team: "x",
    app: "mc-alpha",
    "app.kubernetes.io/name": "mc-alpha",
  });
  assertEquals(s.metadata.resourceVersion, "1");
  assertEquals(plan.cluster, undefined);
  // A recreated Service with a new ClusterIP moves the endpoints.
  const moved = reconcileCluster(
    input({ cluster: end.cluster, service: created(end.service!, "10.96.9.9") }),
  );
  assertEquals(moved.cluster!.spec!.connection!.kubernetesAPIEndpoint, "https://10.96.9.9:6443");
  // Service defaults the API server adds (protocol omitted, string targetPort) are not drift.
  const defaults = structuredClone(end.service!);
  defaults.spec!.ports = defaults.spec!.ports!.map((p) => ({
    name: p.name,
    port: p.port,
    targetPort: String(p.targetPort),
  }));
  assertEquals(reconcileCluster(input({ cluster: end.cluster, service: defaults })).service, {
    kind: "none",
  });
});

Deno.test("deleted, deleting, joinFederation false, not proxy: delete the Service only", () => {
  const end = converge(input());
  const cases: (ClusterObject | undefined)[] = [
    undefined,
    {
      ...end.cluster,
      metadata: { ...end.cluster.metadata, deletionTimestamp: "2026-01-01T00:00:00Z" },
    },
    { ...end.cluster, spec: { ...end.cluster.spec, joinFederation: false } },
    { ...end.cluster, spec: { ...end.cluster.spec, joinFederation: undefined } },
    {
      ...end.cluster,
      spec: {
        ...end.cluster.spec,
        connection: { ...end.cluster.spec!.connection, type: "direct" },
      },
    },
  ];
  for (const c of cases) {
    const plan = reconcileCluster(input({ cluster: c, service: end.service }));
    assertEquals(plan.service, {
      kind: "delete",
      name: "mc-alpha",
      namespace: "kubesphere-system",
    });
    assertEquals(plan.cluster, undefined);
    // Already gone: nothing at all.
    const none = reconcileCluster(input({ cluster: c, service: undefined }));
    assertEquals(none.service, { kind: "none" });
    assertEquals(none.cluster, undefined);
  }
});

Deno.test("desiredService honours a custom namespace", () => {
  const a = desiredService({
    name: "x",
    namespace: "tower-test",
    kubernetesPort: 6001,
    kubespherePort: 16001,
    loadBalancer: false,
    annotations: { ignored: "because not LB" },
    existing: undefined,
  });
  if (a.kind !== "create") throw new Error();
  assertEquals(a.service.metadata.namespace, "tower-test");
  assertEquals(a.service.metadata.annotations, undefined);
});

Deno.test("the observed object is never mutated", () => {
  const c = cluster();
  const frozen = JSON.stringify(c);
  reconcileCluster(input({ cluster: c, agent: "connected" }));
  assertEquals(JSON.stringify(c), frozen);
});

Deno.test("portsUsedByOthers: the older (then lower-named) cluster keeps a shared pair", () => {
  const a = {
    name: "a",
    created: "2026-01-01T00:00:00Z",
    kubernetesPort: 6000,
    kubespherePort: 16000,
  };
  const b = {
    name: "b",
    created: "2026-01-02T00:00:00Z",
    kubernetesPort: 6000,
    kubespherePort: 16000,
  };
  const c = {
    name: "c",
    created: "2026-01-03T00:00:00Z",
    kubernetesPort: 6001,
    kubespherePort: 16001,
  };
  assertEquals([...portsUsedByOthers(a, [a, b, c])].sort(), [16001, 6001].sort());
  assertEquals([...portsUsedByOthers(b, [a, b, c])].sort(), [16000, 16001, 6000, 6001].sort());
  // Same timestamp: name decides; no timestamp loses.
  const b2 = { ...b, created: a.created };
  assertEquals(portsUsedByOthers(a, [a, b2]).size, 0);
  assertEquals(portsUsedByOthers(b2, [a, b2]).size, 2);
  const old = { ...b, created: undefined };
  assertEquals(portsUsedByOthers(a, [a, old]).size, 0);
  // Invalid values are ignored.
  assertEquals(
    portsUsedByOthers({ name: "z" }, [{ name: "y", kubernetesPort: 0, kubespherePort: -1 }]).size,
    0,
  );
  // A converged pair of colliding clusters: the loser moves, the winner stays put.
  const clash = (name: string, created: string) => {
    const c = cluster({
      connection: {
        type: "proxy",
        token: "t",
        kubernetesAPIServerPort: 6000,
        kubesphereAPIServerPort: 16000,
      },
    }, name);
    c.metadata.creationTimestamp = created;
    return c;
  };
  const ca = clash("a", "2026-01-01T00:00:00Z");
  const cb = clash("b", "2026-01-02T00:00:00Z");
  const claims = [portClaim(ca), portClaim(cb)];
  const pa = reconcileCluster(
    input({ name: "a", cluster: ca, portsUsedByOthers: portsUsedByOthers(claims[0], claims) }),
  );
  const pb = reconcileCluster(
    input({ name: "b", cluster: cb, portsUsedByOthers: portsUsedByOthers(claims[1], claims) }),
  );
  assertEquals(pa.cluster, undefined);
  assertEquals(pb.cluster!.spec!.connection!.kubernetesAPIServerPort, 6001);
});

Deno.test("property: any Cluster converges within a few steps, then reconcile is a no-op", () => {
  const cond = fc.record({
    type: fc.constantFrom("Ready", "Initialized", "AgentAvailable", "ExternalAccessReady", "X"),
    status: fc.constantFrom("True" as const, "False" as const, "Unknown" as const),
    reason: fc.string({ maxLength: 5 }),
    message: fc.string({ maxLength: 5 }),
  });
  fc.assert(
    fc.property(
      fc.record({
        external: fc.boolean(),
        annotations: fc.option(fc.dictionary(fc.string({ maxLength: 4 }), fc.string()), {
          nil: undefined,
        }),
        token: fc.option(fc.string({ maxLength: 8 }), { nil: undefined }),
        k: fc.option(fc.integer({ min: 0, max: 70000 }), { nil: undefined }),
        s: fc.option(fc.integer({ min: 0, max: 70000 }), { nil: undefined }),
        conditions: fc.uniqueArray(cond, { selector: (c) => c.type, maxLength: 4 }),
        publish: fc.option(fc.constantFrom("192.0.2.1", "fd00::2"), { nil: undefined }),
        agent: fc.constantFrom("connected" as const, "disconnected" as const, "unknown" as const),
        ingress: fc.option(fc.constantFrom({ ip: "203.0.113.1" }, { hostname: "lb.example" }), {
          nil: undefined,
        }),
        used: fc.array(fc.integer({ min: 6000, max: 6010 }), { maxLength: 5 }),
      }),
      (g) => {
        const c = cluster({
          externalKubeAPIEnabled: g.external,
          connection: {
            type: "proxy",
            token: g.token,
            kubernetesAPIServerPort: g.k,
            kubesphereAPIServerPort: g.s,
          },
        });
        if (g.annotations) {
          c.metadata.annotations = { [LB_ANNOTATIONS_KEY]: JSON.stringify(g.annotations) };
        }
        c.status = { conditions: g.conditions, other: 1 };
        const used = new Set(g.used.flatMap((p) => [p, p + 10000]));
        const start = input({
          cluster: c,
          agent: g.agent,
          publishAddress: g.publish,
          portsUsedByOthers: used,
        });
        let end = converge(start);
        if (g.ingress && end.service) {
          end = converge({
            ...start,
            cluster: end.cluster,
            service: { ...end.service, status: { loadBalancer: { ingress: [g.ingress] } } },
          });
        }
        const again = reconcileCluster({ ...start, ...end, now: T1 });
        if (again.cluster || again.service.kind !== "none") return false;
        // Foreign conditions and fields survive, untouched.
        const x = g.conditions.find((k) => k.type === "Ready" || k.type === "X");
        if (x && JSON.stringify(findCondition(end.cluster, x.type)) !== JSON.stringify(x)) {
          return false;
        }
        const conn = end.cluster.spec!.connection!;
        return end.cluster.status!.other === 1 && !used.has(conn.kubernetesAPIServerPort!) &&
          initializedTrue(end.cluster);
      },
    ),
    { numRuns: 300 },
  );
});

function initializedTrue(c: ClusterObject): boolean {
  return findCondition(c, "Initialized")?.status === "True";
}

Deno.test("an agent whose endpoints cannot be served shows AgentAvailable=False with the cause", () => {
  const base = {
    name: "alpha",
    service: undefined,
    portsUsedByOthers: new Set<number>(),
    now: new Date("2026-01-01T00:00:00Z"),
    newToken: () => "ab".repeat(32),
  };
  const first = reconcileCluster({
    ...base,
    cluster: {
      apiVersion: "cluster.kubesphere.io/v1alpha1",
      kind: "Cluster",
      metadata: { name: "alpha" },
      spec: { joinFederation: true, connection: { type: "proxy", token: "" } },
    },
    agent: "connected",
  });
  const initialised = first.cluster!;
  const blocked = reconcileCluster({
    ...base,
    cluster: initialised,
    agent: "connected",
    endpointError: "listen :6000: address in use",
  });
  const cond = blocked.cluster!.status!.conditions!.find((c) => c.type === "AgentAvailable")!;
  assertEquals([cond.status, cond.reason], ["False", "EndpointUnavailable"]);
  assertStringIncludes(cond.message!, "address in use");
  const healed = reconcileCluster({ ...base, cluster: blocked.cluster!, agent: "connected" });
  const again = healed.cluster!.status!.conditions!.find((c) => c.type === "AgentAvailable")!;
  assertEquals(again.status, "True");
});
