/**
 * The replica view on in-memory informers, a fake clock and an in-memory API: a cluster is served
 * (`AgentAvailable`) while any live replica publishes a ready slice for it, and not once every
 * such slice is gone, not ready, or of a replica whose Lease stopped moving; a replica's Lease
 * renewals keep it alive past one duration; and the reaper removes a dead replica's slices and
 * Lease — but never a replica whose Lease moved when read again.
 */

import { assert, assertEquals } from "../helpers/assert.ts";
import type { KubeClient } from "../../lib/kube/client.ts";
import type { Informer, InformerHandlers } from "../../lib/kube/informer.ts";
import type { Lease } from "../../lib/kube/leader.ts";
import type { KubeObject } from "../../lib/kube/types.ts";
import { replicaLeaseName, ReplicaView } from "../../lib/controller/replicas.ts";
import { desiredSlice, type EndpointSliceObject } from "../../lib/controller/slices.ts";

const NS = "kubesphere-system";

/** An informer's surface over a map the test writes to (handlers called as a watch would). */
class MemoryInformer<T extends KubeObject> {
  readonly objects = new Map<string, T>();
  readonly #handlers: InformerHandlers<T>[] = [];
  addHandlers(h: InformerHandlers<T>): void {
    this.#handlers.push(h);
  }
  waitForSync(): Promise<boolean> {
    return Promise.resolve(true);
  }
  get(name: string, _ns?: string): T | undefined {
    return this.objects.get(name);
  }
  list(): T[] {
    return [...this.objects.values()];
  }
  put(obj: T): void {
    const old = this.objects.get(obj.metadata.name!);
    this.objects.set(obj.metadata.name!, obj);
    for (const h of this.#handlers) old ? h.onUpdate?.(old, obj) : h.onAdd?.(obj);
  }
  remove(name: string): void {
    const old = this.objects.get(name);
    if (!old) return;
    this.objects.delete(name);
    for (const h of this.#handlers) h.onDelete?.(old);
  }
  as(): Informer<T> {
    return this as unknown as Informer<T>;
  }
}

function slice(cluster: string, replica: string, ready = true, uid = `${cluster}-${replica}`) {
  const s = desiredSlice(
    { cluster, kubernetesPort: 6001, kubespherePort: 16001 },
    { name: replica, namespace: NS, ip: "10.0.0.1", uid: `pod-${replica}` },
  );
  s.endpoints![0].conditions!.ready = ready;
  s.metadata.uid = uid;
  return s;
}

function lease(replica: string, renew: string, seconds = 2, rv = "1"): Lease {
  return {
    apiVersion: "coordination.k8s.io/v1",
    kind: "Lease",
    metadata: {
      name: replicaLeaseName(replica),
      namespace: NS,
      labels: { "tower.kubesphere.io/replica": replica },
      resourceVersion: rv,
    },
    spec: { holderIdentity: replica, leaseDurationSeconds: seconds, renewTime: renew },
  };
}

interface Deleted {
  kind: string;
  name: string;
  preconditions?: { uid?: string; resourceVersion?: string };
}

/** A view on memory informers; `api` is what a fresh GET of a Lease returns. */
function setup(self?: string, mayJudge?: () => boolean) {
  const slices = new MemoryInformer<EndpointSliceObject>();
  const leases = new MemoryInformer<Lease>();
  const api = new Map<string, Lease>();
  const deleted: Deleted[] = [];
  let now = 1_000_000;
  const client = {
    tryGet: (_res: unknown, name: string) => Promise.resolve(api.get(name)),
    delete: (
      res: { kind: string },
      name: string,
      o: { preconditions?: Deleted["preconditions"] },
    ) => {
      deleted.push({ kind: res.kind, name, preconditions: o.preconditions });
      if (res.kind === "EndpointSlice") slices.remove(name);
      else {
        api.delete(name);
        leases.remove(name);
      }
      return Promise.resolve();
    },
  } as unknown as KubeClient;
  const view = new ReplicaView({
    client,
    namespace: NS,
    slices: slices.as(),
    leases: leases.as(),
    self,
    now: () => now,
    mayJudge,
  });
  const changed: string[] = [];
  view.listen((c) => changed.push(c));
  return {
    view,
    slices,
    leases,
    api,
    deleted,
    changed,
    advance: (ms: number) => now += ms,
    /** A Lease as both the watch and a fresh read show it. */
    renew(l: Lease) {
      api.set(l.metadata.name!, l);
      leases.put(l);
    },
  };
}

Deno.test("replica view: served while any live replica's slice is ready, not once all are gone", () => {
  const t = setup();
  t.renew(lease("tower-0", "t0"));
  t.renew(lease("tower-1", "t0"));
  assert(!t.view.served("alpha"), "no slice yet");
  t.slices.put(slice("alpha", "tower-0", false));
  assert(!t.view.served("alpha"), "a slice whose endpoint is not ready serves nothing");
  t.slices.put(slice("alpha", "tower-1"));
  assert(t.view.served("alpha"), "tower-1's ready slice");
  assert(!t.view.served("beta"), "another cluster is not served by it");
  assertEquals(t.view.replicasOf("alpha").sort(), ["tower-0", "tower-1"]);
  t.slices.put(slice("alpha", "tower-0", true));
  t.slices.remove(slice("alpha", "tower-1").metadata.name!);
  assert(t.view.served("alpha"), "tower-0's slice turned ready");
  assert(!t.view.served("alpha", { except: "tower-0" }), "but nobody except tower-0 serves it");
  t.slices.remove(slice("alpha", "tower-0").metadata.name!);
  assert(!t.view.served("alpha"), "every slice gone");
  assert(t.changed.includes("alpha") && !t.changed.includes("beta"), "listeners told of alpha");
});

Deno.test("replica view: a replica whose Lease stops moving stops serving; renewals keep it live", () => {
  const t = setup();
  t.renew(lease("tower-0", "t0", 2));
  t.renew(lease("tower-1", "t0", 2));
  t.slices.put(slice("alpha", "tower-0"));
  t.slices.put(slice("alpha", "tower-1"));
  // tower-1 renews every second; tower-0 never again.
  for (let i = 1; i <= 3; i++) {
    t.advance(1_000);
    t.renew(lease("tower-1", `t${i}`, 2, String(i + 1)));
  }
  assert(!t.view.isLive("tower-0"), "3 s without a renewal of a 2 s Lease");
  assert(t.view.isLive("tower-1"), "renewed within its duration");
  assert(t.view.served("alpha"), "tower-1 still serves alpha");
  t.advance(2_001);
  assert(!t.view.isLive("tower-1"));
  assert(!t.view.served("alpha"), "both Leases expired: alpha is served by nobody");
  // The same record again (a resync replaying the object) is no renewal.
  t.leases.put(lease("tower-1", "t3", 2, "9"));
  assert(!t.view.isLive("tower-1"), "an unchanged renewTime does not revive a replica");
  t.renew(lease("tower-1", "t4", 2, "10"));
  assert(t.view.served("alpha"), "a real renewal does");
});

Deno.test("replica view: this process is live without a Lease; a replica seen only by slices is not for long", () => {
  const t = setup("tower-0");
  t.slices.put(slice("alpha", "tower-0"));
  t.slices.put(slice("beta", "tower-9"));
  assert(t.view.served("beta"), "a replica first seen by its slice gets a Lease's time to show it");
  t.advance(60_000);
  assert(t.view.served("alpha"), "this replica's own slice counts without any Lease");
  assert(!t.view.served("beta"), "tower-9 never showed a Lease");
});

Deno.test("reap: a dead replica's slices and Lease are deleted; a live one's stay", async () => {
  const t = setup("tower-2");
  t.renew(lease("tower-0", "t0", 2, "5"));
  t.renew(lease("tower-1", "t0", 2, "5"));
  t.slices.put(slice("alpha", "tower-0"));
  t.slices.put(slice("beta", "tower-0"));
  t.slices.put(slice("alpha", "tower-1"));
  t.advance(1_500);
  t.renew(lease("tower-1", "t1", 2, "6"));
  t.advance(1_500); // tower-0: 3 s since its last renewal; tower-1: 1.5 s
  const ac = new AbortController();
  const reaping = t.view.reap(ac.signal, 5);
  try {
    while (t.deleted.length < 3) await new Promise((r) => setTimeout(r, 5));
  } finally {
    ac.abort();
    await reaping;
  }
  const names = (kind: string) => t.deleted.filter((d) => d.kind === kind).map((d) => d.name);
  assertEquals(
    names("EndpointSlice").sort(),
    [slice("alpha", "tower-0").metadata.name!, slice("beta", "tower-0").metadata.name!].sort(),
  );
  assertEquals(names("Lease"), [replicaLeaseName("tower-0")]);
  // Deletes are conditional: the slice that was seen, the Lease as read just before.
  for (const d of t.deleted.filter((d) => d.kind === "EndpointSlice")) {
    assert(d.preconditions?.uid?.endsWith("-tower-0"), JSON.stringify(d));
  }
  assertEquals(t.deleted.find((d) => d.kind === "Lease")!.preconditions, { resourceVersion: "5" });
  assert(t.view.served("alpha"), "alpha is still served by tower-1");
  assert(!t.view.served("beta"));
  assertEquals(t.view.replicasOf("alpha"), ["tower-1"]);
});

Deno.test("reap: a Lease that moved when read again (a lagging watch) saves the replica", async () => {
  const t = setup("tower-2");
  t.renew(lease("tower-0", "t0", 2, "5"));
  t.slices.put(slice("alpha", "tower-0"));
  t.advance(3_000);
  assert(!t.view.isLive("tower-0"), "the watch shows no renewal for 3 s");
  // The API has a newer renewal that the watch has not delivered.
  t.api.set(replicaLeaseName("tower-0"), lease("tower-0", "t1", 2, "6"));
  const ac = new AbortController();
  const reaping = t.view.reap(ac.signal, 5);
  // Several rounds: the fresh read keeps it alive within the renewal's duration.
  for (let i = 0; i < 10; i++) await new Promise((r) => setTimeout(r, 5));
  ac.abort();
  await reaping;
  assertEquals(t.deleted, []);
  assert(t.view.served("alpha"), "tower-0 lives and serves alpha");
});

Deno.test("reap: while this replica's own renewals lag it judges nobody dead and reaps nobody; once they get through, the dead one goes", async () => {
  // A slow API server delays every replica's renewals alike: judged by Leases alone, the
  // replicas would reap each other's slices and turn AgentAvailable False.
  let ownRenewalsInTime = false;
  let asked = 0;
  const t = setup("tower-2", () => {
    asked++;
    return ownRenewalsInTime;
  });
  t.renew(lease("tower-0", "t0", 2, "5"));
  t.slices.put(slice("alpha", "tower-0"));
  t.advance(3_000);
  assert(t.view.isLive("tower-0"), "judged dead while this replica's own heartbeat lags");
  assert(t.view.served("alpha"), "alpha unserved while this replica's own heartbeat lags");
  const ac = new AbortController();
  const reaping = t.view.reap(ac.signal, 1);
  try {
    // The reaper asks before each round: ten rounds asked and answered "no".
    const from = asked;
    for (let i = 0; asked - from < 10 && i < 2_000; i++) {
      await new Promise((r) => setTimeout(r, 1)); // lets the reaper's rounds run, bounded
    }
    assert(asked - from >= 10, `the reaper asked ${asked - from} times`);
    assertEquals(t.deleted, [], "reaped while its own heartbeat lagged");
    ownRenewalsInTime = true;
    assert(!t.view.isLive("tower-0"), "no renewal of tower-0 for 3 s, and this replica can judge");
    for (let i = 0; t.deleted.length < 2 && i < 2_000; i++) {
      await new Promise((r) => setTimeout(r, 5)); // reaper rounds, bounded
    }
  } finally {
    ac.abort();
    await reaping;
  }
  assertEquals(t.deleted.map((d) => d.kind).sort(), ["EndpointSlice", "Lease"]);
  assert(!t.view.served("alpha"));
});
