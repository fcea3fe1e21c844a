import { assert, assertEquals } from "../helpers/assert.ts";
import { CLUSTERS } from "../../lib/kube/mod.ts";
import { KubeClusterSource } from "../../lib/proxy/clusters_kube.ts";
import type { ClusterObject } from "../../lib/controller/types.ts";
import { clusterManifest, cond, startEnv } from "./helpers.ts";

const initialized = (c: ClusterObject | undefined) => cond(c, "Initialized")?.status === "True";

Deno.test("200 Clusters (half before start, half during) reconcile with no port collision", async () => {
  const env = await startEnv();
  const names = Array.from({ length: 200 }, (_, i) => `c${String(i).padStart(3, "0")}`);
  // Two pre-existing clusters hold the same hand-set pair: the older keeps it.
  for (const [i, name] of names.slice(0, 100).entries()) {
    const m = clusterManifest(name);
    if (i < 2) {
      m.spec!.connection = {
        type: "proxy",
        token: "t",
        kubernetesAPIServerPort: 6500,
        kubesphereAPIServerPort: 16500,
      };
    }
    const r = await env.server.request("POST", "/apis/cluster.kubesphere.io/v1alpha1/clusters", m);
    assertEquals(r.status, 201);
  }
  const src = new KubeClusterSource({
    client: env.client,
    events: false,
    controller: { agentGraceMs: 600_000, retryInitialMs: 10, retryMaxMs: 200 },
    informer: { backoffInitialMs: 10, backoffMaxMs: 100 },
  });
  try {
    await Promise.all(
      names.slice(100).map((n) => env.client.create(CLUSTERS, clusterManifest(n))),
    );
    await Promise.all(
      names.map((n) => env.clusters.until(n, initialized, `${n} Initialized`, { ms: 50_000 })),
    );
    await src.controller.whenIdle();
    const all = (await env.client.list<ClusterObject>(CLUSTERS)).items;
    assertEquals(all.length, 200);
    const ports = new Set<number>();
    for (const c of all) {
      const k = c.spec!.connection!.kubernetesAPIServerPort!;
      const s = c.spec!.connection!.kubesphereAPIServerPort!;
      assert(!ports.has(k) && !ports.has(s), `${c.metadata.name}: ${k}/${s} collides`);
      ports.add(k);
      ports.add(s);
    }
    const c0 = all.find((c) => c.metadata.name === "c000")!;
    assertEquals(c0.spec!.connection!.kubernetesAPIServerPort, 6500);
    const svcs = (await env.client.list(
      { group: "", version: "v1", plural: "services", namespaced: true },
      { namespace: "kubesphere-system" },
    )).items;
    assertEquals(svcs.length, 200);
    // Every Service's target ports match its Cluster.
    const byName = new Map(all.map((c) => [`mc-${c.metadata.name}`, c]));
    for (
      const s of svcs as { metadata: { name: string }; spec: { ports: { targetPort: number }[] } }[]
    ) {
      const c = byName.get(s.metadata.name)!;
      assertEquals(
        s.spec.ports.map((p) => p.targetPort),
        [c.spec!.connection!.kubernetesAPIServerPort, c.spec!.connection!.kubesphereAPIServerPort],
      );
    }
  } finally {
    await src.close();
    await env.close();
  }
});
