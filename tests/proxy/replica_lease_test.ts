/**
 * ReplicaLease.renewedInTime: whether this replica's heartbeat gets through briskly enough for it
 * to judge other replicas dead (lib/controller/replicas.ts `mayJudge`). A stub API answers the
 * Lease writes, at once or only after a delay.
 */

import { assert } from "../helpers/assert.ts";
import type { KubeClient } from "../../lib/kube/client.ts";
import type { Lease } from "../../lib/kube/leader.ts";
import { ReplicaLease } from "../../lib/proxy/replica_lease.ts";

/** A client whose Lease create/update answer after `delayMs` (0: in the same turn). */
function leaseApi(delayMs: number): KubeClient {
  let rv = 0;
  const answer = (l: Lease) =>
    new Promise<Lease>((resolve) => {
      const done = () =>
        resolve({ ...l, metadata: { ...l.metadata, uid: "u1", resourceVersion: String(++rv) } });
      if (delayMs > 0) setTimeout(done, delayMs);
      else done();
    });
  return {
    create: (_r: unknown, l: Lease) => answer(l),
    update: (_r: unknown, l: Lease) => answer(l),
    delete: () => Promise.resolve(),
    tryGet: () => Promise.resolve(undefined),
  } as unknown as KubeClient;
}

Deno.test("replica lease: not in time before its first renewal is answered", () => {
  const lease = new ReplicaLease({ client: leaseApi(0), namespace: "ns", replica: "tower-0" });
  assert(!lease.renewedInTime());
});

Deno.test("replica lease: a renewal answered promptly is in time", async () => {
  // A duration of a minute: the stub's immediate answer is well within a quarter of it.
  const lease = new ReplicaLease({
    client: leaseApi(0),
    namespace: "ns",
    replica: "tower-0",
    durationMs: 60_000,
    renewMs: 60_000,
  });
  await lease.start();
  try {
    assert(lease.renewedInTime());
  } finally {
    await lease.stop({ release: false });
  }
});

Deno.test("replica lease: renewals that take more than a quarter of the duration are not in time, though answered", async () => {
  // 250 ms per answer at least, against a quarter of 400 ms: a slow API server, not a dead one.
  const lease = new ReplicaLease({
    client: leaseApi(250),
    namespace: "ns",
    replica: "tower-0",
    durationMs: 400,
    renewMs: 60_000,
  });
  await lease.start();
  try {
    assert(lease.renewals >= 1, "the first renewal was answered");
    assert(!lease.renewedInTime(), "a slow heartbeat counted as in time");
  } finally {
    await lease.stop({ release: false });
  }
});
