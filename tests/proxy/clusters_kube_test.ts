import { assert, assertEquals } from "../helpers/assert.ts";
import { CLUSTERS, EVENTS } from "../../lib/kube/mod.ts";
import {
  KubeClusterSource,
  type KubeClusterSourceOptions,
  recordFromCluster,
} from "../../lib/proxy/clusters_kube.ts";
import type { ClusterObject } from "../../lib/controller/types.ts";
import type { ClusterRecord } from "../../lib/proxy/clusters.ts";
import { parseClustersFile } from "../../lib/proxy/clusters_file.ts";
import { clusterManifest, cond, type Env, startEnv } from "../controller/helpers.ts";

const initialized = (c: ClusterObject | undefined) => cond(c, "Initialized")?.status === "True";

function source(env: Env, over: Partial<KubeClusterSourceOptions> = {}): KubeClusterSource {
  return new KubeClusterSource({
    client: env.client,
    controller: { agentGraceMs: 600_000, retryInitialMs: 10, retryMaxMs: 200 },
    informer: { backoffInitialMs: 10, backoffMaxMs: 100 },
    ...over,
  });
}

Deno.test("recordFromCluster: token, enabled, ports, SAN hosts, endpoint", () => {
  const c = clusterManifest("alpha", {
    externalKubeAPIEnabled: true,
    connection: {
      type: "proxy",
      token: "tok",
      kubernetesAPIServerPort: 6001,
      kubesphereAPIServerPort: 16001,
      kubernetesAPIEndpoint: "https://10.96.0.9:6443",
      kubesphereAPIEndpoint: "http://10.96.0.9:80",
      externalKubernetesAPIEndpoint: "https://lb.example.com:6443",
    },
  });
  assertEquals(recordFromCluster(c), {
    name: "alpha",
    token: "tok",
    enabled: true,
    kubernetesPort: 6001,
    kubespherePort: 16001,
    endpointHosts: [
      "10.96.0.9",
      "lb.example.com",
      "mc-alpha",
      "mc-alpha.kubesphere-system",
      "mc-alpha.kubesphere-system.svc",
    ],
    kubernetesEndpoint: "https://10.96.0.9:6443",
  });
  // External host only while external access is on; IPv6 without brackets.
  const v6 = clusterManifest("b", {
    connection: {
      type: "proxy",
      kubernetesAPIEndpoint: "https://[fd00::1]:6000",
      externalKubernetesAPIEndpoint: "https://lb.example.com:6443",
    },
  });
  const r = recordFromCluster(v6);
  assertEquals(r.endpointHosts.slice(0, 2), ["fd00::1", "mc-b"]);
  assertEquals(r.token, "");
  assertEquals(r.kubernetesPort, undefined);
  // Not served: direct, joinFederation false, being deleted.
  assertEquals(
    recordFromCluster(clusterManifest("d", { connection: { type: "direct" } })).enabled,
    false,
  );
  assertEquals(recordFromCluster(clusterManifest("j", { joinFederation: false })).enabled, false);
  const del = clusterManifest("x");
  del.metadata.deletionTimestamp = "2026-01-01T00:00:00Z";
  assertEquals(recordFromCluster(del).enabled, false);
});

Deno.test("token rotation by a user reaches subscribers; unrelated writes do not notify", async () => {
  const env = await startEnv();
  const src = source(env);
  const seen: (ClusterRecord | undefined)[] = [];
  src.subscribe((_n, rec) => seen.push(rec));
  try {
    await env.client.create(CLUSTERS, clusterManifest("alpha"));
    const c = await env.clusters.until("alpha", initialized, "Initialized");
    await src.controller.whenIdle();
    const oldToken = c!.spec!.connection!.token!;
    await env.client.updateWithRetry<ClusterObject>(CLUSTERS, "alpha", (o) => {
      o.spec!.connection!.token = "f".repeat(64);
      return o;
    });
    await env.clusters.until(
      "alpha",
      () => src.lookup("alpha")?.token === "f".repeat(64),
      "source sees the new token",
    );
    const tokens = seen.map((r) => r?.token);
    assert(tokens.includes(oldToken) && tokens.at(-1) === "f".repeat(64), tokens.join());
    // A label change alone changes no record: no notification.
    const n = seen.length;
    await env.client.updateWithRetry<ClusterObject>(CLUSTERS, "alpha", (o) => {
      o.metadata.labels = { team: "x" };
      return o;
    });
    await env.clusters.until("alpha", (o) => o?.metadata.labels?.team === "x", "label");
    await src.controller.whenIdle();
    assertEquals(seen.length, n);
  } finally {
    await src.close();
    await env.close();
  }
});

Deno.test("after the agent grace period a cluster with no agent is AgentAvailable=False", async () => {
  const env = await startEnv();
  const src = source(env, {
    controller: { agentGraceMs: 0, retryInitialMs: 10, retryMaxMs: 200 },
  });
  try {
    await env.client.create(CLUSTERS, clusterManifest("alpha"));
    const c = await env.clusters.until(
      "alpha",
      (c) => initialized(c) && cond(c, "AgentAvailable")?.status === "False",
      "AgentAvailable False",
    );
    assertEquals(cond(c, "AgentAvailable")!.message, "Agent has not connected to proxy.");
    await src.controller.whenIdle();
  } finally {
    await src.close();
  }
  // Never connected: no "disconnected" Event.
  const evs = await env.client.list<{ metadata: { name?: string }; reason: string }>(EVENTS, {
    namespace: "default",
  });
  assert(!evs.items.some((e) => e.reason === "AgentDisconnected"));
  await env.close();
});

Deno.test("a CRD with a status subresource: conditions are written through /status", async () => {
  const env = await startEnv({ statusSubresource: true });
  const src = source(env);
  try {
    await env.client.create(CLUSTERS, clusterManifest("alpha"));
    const c = await env.clusters.until("alpha", initialized, "Initialized via /status");
    assert(/^[0-9a-f]{64}$/.test(c!.spec!.connection!.token!));
    await src.agentConnected("alpha", {
      Version: "v0.1.0",
      Name: "alpha",
      Token: "",
      KubernetesSvcHost: "10.96.0.1:443",
      KubeSphereSvcHost: "ks:80",
    });
    await env.clusters.until(
      "alpha",
      (c) => cond(c, "AgentAvailable")?.status === "True",
      "AgentAvailable via /status",
    );
    await src.controller.whenIdle();
  } finally {
    await src.close();
    await env.close();
  }
});

Deno.test("the API server restarting (state lost or kept) is survived", async () => {
  const env = await startEnv();
  const src = source(env);
  try {
    await src.ready();
    await env.server.restart({ keepState: true });
    await env.client.create(CLUSTERS, clusterManifest("alpha"));
    await env.clusters.until("alpha", initialized, "Initialized after a restart");
    await src.controller.whenIdle();
    // The API server is down for a while: the source keeps serving from its cache.
    assertEquals(src.lookup("alpha")?.enabled, true);
  } finally {
    await src.close();
    await env.close();
  }
});

Deno.test("recordFromCluster and the clusters file: the credential generation annotation", () => {
  const c = clusterManifest("alpha", { connection: { type: "proxy", token: "tok" } });
  assertEquals(recordFromCluster(c).credentialGeneration, undefined);
  c.metadata.annotations = { "tower.kubesphere.io/credential-generation": "2026-12-07" };
  assertEquals(recordFromCluster(c).credentialGeneration, "2026-12-07");
  const [entry] = parseClustersFile(JSON.stringify([c]));
  assertEquals(entry.credentialGeneration, "2026-12-07");
});
