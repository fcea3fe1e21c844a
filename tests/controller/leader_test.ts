import { assert, assertEquals } from "../helpers/assert.ts";
import { CLUSTERS, type Lease, LEASES, microTime } from "../../lib/kube/mod.ts";
import { KubeClusterSource } from "../../lib/proxy/clusters_kube.ts";
import type { ClusterObject } from "../../lib/controller/types.ts";
import { clusterManifest, cond, type Env, startEnv } from "./helpers.ts";

const initialized = (c: ClusterObject | undefined) => cond(c, "Initialized")?.status === "True";

/** A replica with fast leader election; `changes` records its leadership transitions. */
async function replica(env: Env, identity: string) {
  const changes: boolean[] = [];
  const waiters: { want: boolean; resolve: () => void }[] = [];
  const src = new KubeClusterSource({
    client: await env.newClient(),
    controller: { agentGraceMs: 600_000, retryInitialMs: 10, retryMaxMs: 200 },
    informer: { backoffInitialMs: 10, backoffMaxMs: 100 },
    leaderElection: {
      identity,
      leaseDurationMs: 4000,
      renewDeadlineMs: 3000,
      retryPeriodMs: 250,
      onChange: (leading) => {
        changes.push(leading);
        for (const w of waiters.filter((w) => w.want === leading)) w.resolve();
      },
    },
  });
  /** Resolves when leadership next becomes `want` (or already is). */
  const when = (want: boolean) =>
    src.isLeader() === want
      ? Promise.resolve()
      : new Promise<void>((resolve) => waiters.push({ want, resolve }));
  return { src, changes, when, identity };
}

Deno.test("two replicas with --leader-elect: one reconciles; the other takes over after a crash", async () => {
  const env = await startEnv();
  const a = await replica(env, "replica-a");
  const b = await replica(env, "replica-b");
  try {
    const first = await Promise.race([
      a.when(true).then(() => a),
      b.when(true).then(() => b),
    ]);
    const second = first === a ? b : a;
    await env.client.create(CLUSTERS, clusterManifest("alpha"));
    await env.clusters.until("alpha", initialized, "alpha Initialized");
    await first.src.controller.whenIdle();
    assert(first.src.controller.stats.reconciles > 0);
    assertEquals(second.src.controller.stats.reconciles, 0);
    assertEquals(second.src.controller.running, false);
    assertEquals(second.src.isLeader(), false);
    // The standby still serves from its cache.
    await env.clusters.until(
      "alpha",
      (c) => second.src.lookup("alpha")?.token === c?.spec?.connection?.token,
      "standby cache",
    );
    // A standby does not write kubeconfigs.
    await second.src.publishKubeconfig("alpha", "standby");
    assertEquals(
      (await env.client.get<ClusterObject>(CLUSTERS, "alpha")).spec!.connection!.kubeconfig,
      undefined,
    );

    // The leader crashes (lease not released): the standby takes over within the lease duration.
    await first.src.runner!.stop({ release: false });
    assertEquals(first.src.controller.running, false);
    await second.when(true);
    await env.client.create(CLUSTERS, clusterManifest("beta"));
    const beta = await env.clusters.until(
      "beta",
      initialized,
      "beta Initialized by the new leader",
    );
    assertEquals(beta!.spec!.connection!.kubernetesAPIServerPort, 6002);
    assert(second.src.controller.stats.reconciles > 0);
  } finally {
    await a.src.close();
    await b.src.close();
    await env.close();
  }
});

Deno.test("losing the lease stops reconciling promptly", async () => {
  const env = await startEnv();
  const a = await replica(env, "replica-a");
  try {
    await a.when(true);
    await env.client.create(CLUSTERS, clusterManifest("alpha"));
    await env.clusters.until("alpha", initialized, "alpha Initialized");
    // Someone else takes the lease.
    const lease = await env.client.get<Lease>(LEASES, "tower", { namespace: "kubesphere-system" });
    lease.spec = {
      ...lease.spec,
      holderIdentity: "intruder",
      renewTime: microTime(new Date()),
      leaseDurationSeconds: 60,
    };
    await env.client.update(LEASES, lease, { namespace: "kubesphere-system" });
    await a.when(false);
    await a.src.runner!.settled();
    assertEquals(a.src.controller.running, false);
    assertEquals(a.changes, [true, false]);
    const before = a.src.controller.stats.reconciles;
    a.src.controller.enqueue("alpha");
    assertEquals(a.src.controller.stats.reconciles, before);
  } finally {
    await a.src.close();
    await env.close();
  }
});
