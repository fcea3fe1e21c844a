import { Buffer } from "node:buffer";
import { assert, assertEquals } from "../helpers/assert.ts";
import { CLUSTERS, EVENTS, SERVICES } from "../../lib/kube/mod.ts";
import type { ClusterCondition, ClusterObject, ServiceObject } from "../../lib/controller/types.ts";
import { KubeClusterSource, type KubeClusterSourceOptions } from "../../lib/proxy/clusters_kube.ts";
import type { AgentConfig } from "../../lib/tunnel/handshake.ts";
import { clusterManifest, cond, type Env, startEnv } from "./helpers.ts";

const NS = "kubesphere-system";
const AGENT: AgentConfig = {
  Version: "v0.1.0",
  Name: "alpha",
  Token: "",
  KubernetesSvcHost: "10.96.0.1:443",
  KubeSphereSvcHost: "ks-apiserver.kubesphere-system.svc:80",
};

function source(env: Env, over: Partial<KubeClusterSourceOptions> = {}): KubeClusterSource {
  return new KubeClusterSource({
    client: env.client,
    controller: { agentGraceMs: 600_000, retryInitialMs: 10, retryMaxMs: 200 },
    informer: { backoffInitialMs: 10, backoffMaxMs: 100 },
    ...over,
  });
}

const initialized = (c: ClusterObject | undefined) => cond(c, "Initialized")?.status === "True";

async function withEnv(fn: (env: Env) => Promise<void>): Promise<void> {
  const env = await startEnv();
  try {
    await fn(env);
  } finally {
    await env.close();
  }
}

async function events(env: Env): Promise<{ reason: string; name: string; type: string }[]> {
  const l = await env.client.list<
    { metadata: { name?: string }; reason: string; type: string; involvedObject: { name: string } }
  >(EVENTS, { namespace: "default" });
  return l.items.map((e) => ({ reason: e.reason, name: e.involvedObject.name, type: e.type }));
}

Deno.test("walkthrough: token, ports, endpoints, Initialized, Service, AgentAvailable, kubeconfig, Events", async () => {
  await withEnv(async (env) => {
    const src = source(env);
    const seen: string[] = [];
    src.subscribe((name, rec) => seen.push(`${name}:${rec?.token ? "token" : "none"}`));
    try {
      await src.ready();
      assertEquals(src.list(), []);
      await env.client.create(CLUSTERS, clusterManifest("alpha"));
      const c = (await env.clusters.until("alpha", initialized, "alpha Initialized"))!;
      const conn = c.spec!.connection!;
      assert(/^[0-9a-f]{64}$/.test(conn.token!), `token ${conn.token}`);
      assertEquals([conn.kubernetesAPIServerPort, conn.kubesphereAPIServerPort], [6001, 16001]);
      const svc = (await env.services.until("mc-alpha", (s) => !!s, "Service mc-alpha", {
        namespace: NS,
      }))!;
      const ip = svc.spec!.clusterIP!;
      assert(/^10\.\d+\.\d+\.\d+$/.test(ip), ip);
      assertEquals(conn.kubernetesAPIEndpoint, `https://${ip}:6443`);
      assertEquals(conn.kubesphereAPIEndpoint, `http://${ip}:80`);
      assertEquals(svc.spec!.type, "ClusterIP");
      assertEquals(svc.spec!.selector, undefined, "selects no pods: replicas publish slices");
      assertEquals(
        svc.spec!.ports!.map((p) => [p.name, p.port, p.targetPort]),
        [["kubernetes", 6443, 6001], ["kubesphere", 80, 16001]],
      );
      assertEquals(svc.metadata.labels, { app: "mc-alpha", "app.kubernetes.io/name": "mc-alpha" });

      // The source's cache has it, no I/O.
      await env.clusters.until("alpha", () => src.lookup("alpha")?.token === conn.token, "source");
      const rec = src.lookup("alpha")!;
      assertEquals(rec.enabled, true);
      assertEquals(rec.kubernetesPort, 6001);
      assertEquals(rec.kubernetesEndpoint, `https://${ip}:6443`);
      assert(rec.endpointHosts.includes(ip));
      assert(rec.endpointHosts.includes("mc-alpha.kubesphere-system.svc"));
      assert(seen.includes("alpha:token"), seen.join());

      // Agent up / down.
      await src.agentConnected("alpha", AGENT);
      const up = await env.clusters.until(
        "alpha",
        (c) => cond(c, "AgentAvailable")?.status === "True",
        "AgentAvailable True",
      );
      assertEquals(
        cond(up, "AgentAvailable")!.message,
        "Agent has connected to proxy successfully.",
      );
      await src.agentDisconnected("alpha");
      const down = await env.clusters.until(
        "alpha",
        (c) => cond(c, "AgentAvailable")?.status === "False",
        "AgentAvailable False",
      );
      assertEquals(cond(down, "AgentAvailable")!.message, "Agent has not connected to proxy.");
      assertEquals(cond(down, "Initialized")!.status, "True");

      // Kubeconfig, written once (idempotent).
      const kc = "apiVersion: v1\nkind: Config\nclusters: []\n";
      await src.publishKubeconfig("alpha", kc);
      const withKc = (await env.clusters.until(
        "alpha",
        (c) => !!c?.spec?.connection?.kubeconfig,
        "kubeconfig",
      ))!;
      assertEquals(
        Buffer.from(withKc.spec!.connection!.kubeconfig!, "base64").toString("utf8"),
        kc,
      );
      const rv = (await env.client.get<ClusterObject>(CLUSTERS, "alpha")).metadata.resourceVersion;
      await src.publishKubeconfig("alpha", kc);
      assertEquals(
        (await env.client.get<ClusterObject>(CLUSTERS, "alpha")).metadata.resourceVersion,
        rv,
      );
      // Nothing else changed and no hot loop: the controller is idle and wrote nothing more.
      await src.controller.whenIdle();
      const writes = src.controller.stats.clusterWrites;
      src.controller.enqueue("alpha");
      await src.controller.whenIdle();
      assertEquals(src.controller.stats.clusterWrites, writes);
    } finally {
      await src.close();
    }
    const evs = (await events(env)).filter((e) => e.name === "alpha").map((e) => e.reason);
    for (const r of ["TokenGenerated", "Initialized", "AgentConnected", "AgentDisconnected"]) {
      assert(evs.includes(r), `event ${r} in ${evs.join()}`);
    }
  });
});

Deno.test("--publish-service-address: endpoints use it and the allocated ports", async () => {
  await withEnv(async (env) => {
    const src = source(env, { publishAddress: "192.168.100.3" });
    try {
      await env.client.create(CLUSTERS, clusterManifest("alpha"));
      const c = (await env.clusters.until("alpha", initialized, "alpha Initialized"))!;
      assertEquals(c.spec!.connection!.kubernetesAPIEndpoint, "https://192.168.100.3:6001");
      assertEquals(c.spec!.connection!.kubesphereAPIEndpoint, "http://192.168.100.3:16001");
    } finally {
      await src.close();
    }
  });
});

Deno.test("LoadBalancer flow: annotations, ingress → external endpoint and ExternalAccessReady", async () => {
  await withEnv(async (env) => {
    const src = source(env);
    try {
      const ann = {
        "eip.porter.kubesphere.io/v1alpha2": "porter-bgp-eip",
        "lb.kubesphere.io/v1alpha1": "porter",
      };
      await env.client.create(
        CLUSTERS,
        clusterManifest("kind-test", { externalKubeAPIEnabled: true }, {
          "tower.kubesphere.io/external-lb-service-annoations": JSON.stringify(ann),
        }),
      );
      await env.clusters.until("kind-test", initialized, "Initialized");
      const svc = (await env.services.until(
        "mc-kind-test",
        (s) => s?.spec?.type === "LoadBalancer",
        "LB Service",
        { namespace: NS },
      ))!;
      for (const [k, v] of Object.entries(ann)) assertEquals(svc.metadata.annotations?.[k], v);
      const pending = await env.clusters.until(
        "kind-test",
        (c) => cond(c, "ExternalAccessReady")?.status === "False",
        "ExternalAccessReady False while pending",
      );
      assertEquals(pending!.spec!.connection!.externalKubernetesAPIEndpoint, undefined);

      // The cloud controller sets the ingress on the Service status.
      const live = await env.client.get<ServiceObject>(SERVICES, "mc-kind-test", { namespace: NS });
      live.status = { loadBalancer: { ingress: [{ ip: "203.0.113.7" }] } };
      await env.client.update(SERVICES, live, { namespace: NS, subresource: "status" });
      const ready = (await env.clusters.until(
        "kind-test",
        (c) => cond(c, "ExternalAccessReady")?.status === "True",
        "ExternalAccessReady True",
      ))!;
      assertEquals(
        ready.spec!.connection!.externalKubernetesAPIEndpoint,
        "https://203.0.113.7:6443",
      );
      await env.clusters.until(
        "kind-test",
        () => !!src.lookup("kind-test")?.endpointHosts.includes("203.0.113.7"),
        "external host in the record's SANs",
      );
      // Let the reconcile that wrote it finish (it records the Event after the write).
      await src.controller.whenIdle();
    } finally {
      await src.close();
    }
    const evs = (await events(env)).map((e) => e.reason);
    assert(evs.includes("ExternalEndpointReady"), evs.join());
  });
});

Deno.test("deletion and joinFederation false remove the Service; the source reports it", async () => {
  await withEnv(async (env) => {
    const src = source(env);
    const changes: string[] = [];
    src.subscribe((name, rec) => changes.push(`${name}:${rec ? rec.enabled : "gone"}`));
    try {
      await env.client.create(CLUSTERS, clusterManifest("a"));
      await env.client.create(CLUSTERS, clusterManifest("b"));
      await env.clusters.until("a", initialized, "a Initialized");
      await env.clusters.until("b", initialized, "b Initialized");
      await env.services.until("mc-a", (s) => !!s, "mc-a", { namespace: NS });
      await env.services.until("mc-b", (s) => !!s, "mc-b", { namespace: NS });

      await env.client.delete(CLUSTERS, "a");
      await env.services.until("mc-a", (s) => !s, "mc-a deleted", { namespace: NS });
      await env.clusters.until("a", () => src.lookup("a") === undefined, "a gone from source");
      assert(changes.includes("a:gone"));

      await env.client.updateWithRetry<ClusterObject>(CLUSTERS, "b", (c) => {
        c.spec!.joinFederation = false;
        return c;
      });
      await env.services.until("mc-b", (s) => !s, "mc-b deleted", { namespace: NS });
      assertEquals(src.lookup("b")?.enabled, false);
      assert(changes.includes("b:false"));

      // Back on: the Service comes back with the same ports.
      await env.client.updateWithRetry<ClusterObject>(CLUSTERS, "b", (c) => {
        c.spec!.joinFederation = true;
        return c;
      });
      const svc = await env.services.until("mc-b", (s) => !!s, "mc-b recreated", {
        namespace: NS,
      });
      assertEquals(svc!.spec!.ports!.map((p) => p.targetPort), [6002, 16002]);

      // A stray mc-* Service with no Cluster is removed.
      await env.client.create<ServiceObject>(SERVICES, {
        metadata: { name: "mc-ghost", namespace: NS },
        spec: { ports: [{ name: "x", port: 1 }] },
      }, { namespace: NS });
      await env.services.until("mc-ghost", (s) => !s, "stray Service deleted", { namespace: NS });
    } finally {
      await src.close();
    }
  });
});

Deno.test("faults: 409 storms, 500s and dropped watches: one Service, no lost condition", async () => {
  await withEnv(async (env) => {
    // Another client's condition, written before Tower touches the Cluster.
    const foreign: ClusterCondition = {
      type: "Ready",
      status: "True",
      reason: "Probe",
      message: "member API reachable",
      lastUpdateTime: "2026-01-01T00:00:00Z",
      lastTransitionTime: "2026-01-01T00:00:00Z",
    };
    const m = clusterManifest("alpha");
    m.status = { conditions: [foreign], kubernetesVersion: "v1.30.0" };
    // In-process create: not subject to the faults.
    const r = await env.server.request("POST", "/apis/cluster.kubesphere.io/v1alpha1/clusters", m);
    assertEquals(r.status, 201);
    env.server.faults.failNext(8, 409, (method) => method !== "GET");
    env.server.faults.failNext(6, 500);
    const src = source(env);
    try {
      env.server.faults.dropWatches();
      await env.clusters.until("alpha", initialized, "Initialized despite faults", {
        ms: 20_000,
      });
      // Another client writes a condition while Tower also writes.
      await src.agentConnected("alpha", AGENT);
      env.server.faults.failNext(5, 409, (method) => method === "PUT");
      await env.client.updateWithRetry<ClusterObject>(CLUSTERS, "alpha", (c) => {
        c.status!.conditions!.push({
          type: "Schedulable",
          status: "True",
          reason: "Other",
          message: "x",
        });
        return c;
      }, { attempts: 20 });
      env.server.faults.dropWatches();
      const c = (await env.clusters.until(
        "alpha",
        (c) =>
          cond(c, "AgentAvailable")?.status === "True" && !!cond(c, "Schedulable") &&
          !!cond(c, "Ready"),
        "AgentAvailable True with the other conditions",
        { ms: 20_000 },
      ))!;
      assertEquals(cond(c, "Ready"), foreign);
      assertEquals(c.status!.kubernetesVersion, "v1.30.0");
      assertEquals(cond(c, "Initialized")!.status, "True");
      const svcs = await env.client.list<ServiceObject>(SERVICES, { namespace: NS });
      assertEquals(svcs.items.filter((s) => s.metadata.name.startsWith("mc-")).length, 1);
      assert(env.server.faults.failed > 0);
    } finally {
      await src.close();
    }
  });
});
