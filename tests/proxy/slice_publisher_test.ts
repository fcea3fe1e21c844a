/**
 * The slice publisher against the test API server (over HTTPS, with its own informer): a cluster
 * this replica serves gets the documented EndpointSlice (labels, the Pod as owner by uid, the
 * ports by name, one ready endpoint at the pod IP); it is deleted when the last session ends;
 * stale slices of this replica go at start while other replicas' stay; a port change is an
 * update of the same object; a slice deleted by hand comes back at the resync; `withdraw()`
 * removes everything and nothing is published after it.
 */

import { assert, assertEquals } from "../helpers/assert.ts";
import { Informer, type KubeClient, type KubeObject } from "../../lib/kube/mod.ts";
import { ENDPOINT_SLICES, PODS } from "../../lib/kube/types.ts";
import {
  desiredSlice,
  type EndpointSliceObject,
  type ReplicaIdentity,
  type ServedCluster,
  sliceName,
  TOWER_SLICES_SELECTOR,
} from "../../lib/controller/slices.ts";
import { SlicePublisher } from "../../lib/proxy/slice_publisher.ts";
import { type Env, startEnv, Watcher } from "../controller/helpers.ts";

const NS = "kubesphere-system";

interface Fixture {
  env: Env;
  me: ReplicaIdentity;
  /** What this replica serves (the publisher's `served`). */
  served: Map<string, ServedCluster>;
  /** Tower's slices as an independent watcher sees them. */
  seen: Watcher<EndpointSliceObject>;
  publisher: SlicePublisher;
  close(): Promise<void>;
}

async function createPod(env: Env, name: string): Promise<string> {
  const pod = await env.client.create<KubeObject>(PODS, {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name, namespace: NS },
    spec: { containers: [{ name: "proxy", image: "kubesphere/tower" }] },
  }, { namespace: NS });
  return pod.metadata.uid!;
}

/** A publisher for Pod `tower-0` (created first); `before` runs before it starts. */
async function setup(
  opts: {
    resyncMs?: number;
    before?: (env: Env) => Promise<void>;
    /** The client the publisher writes with, given the real one and the publisher's informer. */
    client?: (real: KubeClient, slices: Informer<EndpointSliceObject>) => KubeClient;
  } = {},
): Promise<Fixture> {
  const env = await startEnv();
  const me: ReplicaIdentity = {
    name: "tower-0",
    namespace: NS,
    ip: "10.0.1.5",
    uid: await createPod(env, "tower-0"),
  };
  await opts.before?.(env);
  const fast = { backoffInitialMs: 10, backoffMaxMs: 100 };
  const watchClient = await env.newClient();
  const seenInformer = new Informer<EndpointSliceObject>(watchClient, ENDPOINT_SLICES, {
    ...fast,
    namespace: NS,
  });
  const seen = new Watcher(watchClient, seenInformer);
  seenInformer.start();
  const slices = new Informer<EndpointSliceObject>(env.client, ENDPOINT_SLICES, {
    ...fast,
    namespace: NS,
    labelSelector: TOWER_SLICES_SELECTOR,
  });
  slices.start();
  const served = new Map<string, ServedCluster>();
  const publisher = new SlicePublisher({
    client: opts.client?.(env.client, slices) ?? env.client,
    slices,
    replica: me,
    served: (c) => served.get(c),
    clusters: () => served.keys(),
    resyncMs: opts.resyncMs ?? 0,
    retryInitialMs: 10,
  });
  await publisher.start();
  return {
    env,
    me,
    served,
    seen,
    publisher,
    async close() {
      await publisher.stop();
      await Promise.all([slices.stop(), seenInformer.stop()]);
      await env.close();
    },
  };
}

const alpha = (port = 6001): ServedCluster => ({
  cluster: "alpha",
  kubernetesPort: port,
  kubespherePort: port + 10000,
});

Deno.test("slice publisher: a served cluster gets its slice, removed when the last session ends", async () => {
  const f = await setup();
  try {
    const name = sliceName("alpha", "tower-0");
    f.served.set("alpha", alpha());
    f.publisher.changed("alpha");
    const s = (await f.seen.until(name, (s) => !!s, "alpha's slice", { namespace: NS }))!;
    assertEquals(s.metadata.labels?.["kubernetes.io/service-name"], "mc-alpha");
    assertEquals(
      s.metadata.labels?.["endpointslice.kubernetes.io/managed-by"],
      "tower.kubesphere.io",
    );
    assertEquals(s.metadata.labels?.["tower.kubesphere.io/replica"], "tower-0");
    assertEquals(s.metadata.ownerReferences?.map((o) => [o.kind, o.name, o.uid]), [
      ["Pod", "tower-0", f.me.uid],
    ]);
    assertEquals(s.addressType, "IPv4");
    assertEquals(s.endpoints?.map((e) => [e.addresses, e.conditions?.ready]), [
      [["10.0.1.5"], true],
    ]);
    assertEquals(s.ports?.map((p) => [p.name, p.port]).sort(), [
      ["kubernetes", 6001],
      ["kubesphere", 16001],
    ]);
    // The session ends: nothing served, the slice goes.
    f.served.delete("alpha");
    f.publisher.changed("alpha");
    await f.seen.until(name, (s) => !s, "alpha's slice deleted", { namespace: NS });
    assertEquals(f.publisher.published(), []);
  } finally {
    await f.close();
  }
});

Deno.test("slice publisher: at start this replica's stale slices go, another replica's stay", async () => {
  const other: ReplicaIdentity = { name: "tower-1", namespace: NS, ip: "10.0.2.7" };
  const f = await setup({
    before: async (env) => {
      const uid = await createPod(env, "tower-1");
      // What a previous container of tower-0 left, and tower-1's live slice of the same cluster.
      const stale = desiredSlice(alpha(), { name: "tower-0", namespace: NS, ip: "10.0.1.5" });
      await env.client.create(ENDPOINT_SLICES, stale, { namespace: NS });
      await env.client.create(ENDPOINT_SLICES, desiredSlice(alpha(), { ...other, uid }), {
        namespace: NS,
      });
    },
  });
  try {
    await f.seen.until(sliceName("alpha", "tower-0"), (s) => !s, "stale slice deleted", {
      namespace: NS,
    });
    await f.publisher.whenIdle();
    assert(
      f.seen.get(sliceName("alpha", "tower-1"), NS),
      "tower-1's slice is not this replica's to delete",
    );
  } finally {
    await f.close();
  }
});

Deno.test("slice publisher: a port change updates the same slice; a slice deleted by hand comes back", async () => {
  const f = await setup({ resyncMs: 100 });
  try {
    const name = sliceName("alpha", "tower-0");
    f.served.set("alpha", alpha(6001));
    f.publisher.changed("alpha");
    const first = (await f.seen.until(name, (s) => !!s, "alpha's slice", { namespace: NS }))!;
    f.served.set("alpha", alpha(6005));
    f.publisher.changed("alpha");
    const moved = (await f.seen.until(
      name,
      (s) => s?.ports?.some((p) => p.name === "kubernetes" && p.port === 6005) ?? false,
      "the new port",
      { namespace: NS },
    ))!;
    assertEquals(moved.metadata.uid, first.metadata.uid, "updated, not recreated");
    assertEquals(moved.ports?.find((p) => p.name === "kubesphere")?.port, 16005);
    // Someone deletes it; nothing tells the publisher but its resync.
    await f.env.client.delete(ENDPOINT_SLICES, name, { namespace: NS });
    await f.seen.until(name, (s) => !!s && s.metadata.uid !== first.metadata.uid, "re-created", {
      namespace: NS,
    });
  } finally {
    await f.close();
  }
});

Deno.test("slice publisher: withdraw() deletes every slice, and nothing is published after it", async () => {
  const f = await setup();
  try {
    for (const [i, c] of ["alpha", "beta", "gamma"].entries()) {
      f.served.set(c, { cluster: c, kubernetesPort: 6001 + i, kubespherePort: 16001 + i });
      f.publisher.changed(c);
    }
    for (const c of ["alpha", "beta", "gamma"]) {
      await f.seen.until(sliceName(c, "tower-0"), (s) => !!s, `${c}'s slice`, { namespace: NS });
    }
    await f.publisher.withdraw(10_000);
    const left = (await f.env.client.list<EndpointSliceObject>(ENDPOINT_SLICES, {
      namespace: NS,
    })).items.map((s) => s.metadata.name);
    assertEquals(left, [], "withdraw resolves once the API shows no slice of ours");
    // Still "served" (sessions are closed only later), yet nothing comes back.
    f.publisher.changed("alpha");
    await f.publisher.whenIdle();
    assertEquals(f.seen.get(sliceName("alpha", "tower-0"), NS), undefined);
  } finally {
    await f.close();
  }
});

Deno.test("slice publisher: a slice reaped before its create was answered is created again", async () => {
  // The create is answered only after the slice was deleted (a reaper that thought this replica
  // dead) and this replica's informer showed the deletion: the answer must not be taken as the
  // slice's current state, or the cluster stays without one.
  let firstUid: string | undefined;
  const f = await setup({
    client: (real, slices) => {
      let first = true;
      return {
        create: async (...a: Parameters<KubeClient["create"]>) => {
          const made = await real.create(...a);
          if (!first) return made;
          first = false;
          firstUid = made.metadata.uid;
          const shown = new Promise<void>((resolve) =>
            slices.addHandlers({
              onDelete: (s) => {
                if (s.metadata.uid === firstUid) resolve();
              },
            })
          );
          await real.delete(ENDPOINT_SLICES, made.metadata.name!, { namespace: NS });
          await shown;
          return made;
        },
        update: (...a: Parameters<KubeClient["update"]>) => real.update(...a),
        delete: (...a: Parameters<KubeClient["delete"]>) => real.delete(...a),
        tryGet: (...a: Parameters<KubeClient["tryGet"]>) => real.tryGet(...a),
      } as unknown as KubeClient;
    },
  });
  try {
    const name = sliceName("alpha", "tower-0");
    f.served.set("alpha", alpha());
    f.publisher.changed("alpha");
    const again = await f.seen.until(
      name,
      (s) => !!s && !!firstUid && s.metadata.uid !== firstUid,
      "alpha's slice created again (no resync in this test)",
      { namespace: NS },
    );
    assertEquals(again!.endpoints?.[0].addresses, ["10.0.1.5"]);
  } finally {
    await f.close();
  }
});
