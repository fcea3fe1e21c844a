/**
 * Lease leader election against the test API server, with small durations:
 * one leader among candidates, hand-over on release, take-over only after
 * the lease expires when the leader dies, prompt step-down when renewing
 * fails, and never two leaders at once.
 * @module
 */

import nodeAssert from "node:assert/strict";
import {
  type KubeClient,
  LeaderElector,
  type LeaderElectorOptions,
  type Lease,
  LEASES,
} from "../../lib/kube/mod.ts";
import { startEnv } from "./helpers.ts";
import { deadline } from "../helpers/deadline.ts";

const LEASE_PATH = "/apis/coordination.k8s.io/v1/namespaces/default/leases/tower";

interface Candidate {
  elector: LeaderElector;
  started: number;
  stopped: number;
  lastSignal?: AbortSignal;
  stoppedLeading: Promise<void>;
  observed: string[];
  sawLeader(id: string): Promise<void>;
}

function candidate(
  client: KubeClient,
  identity: string,
  extra: Partial<LeaderElectorOptions> = {},
  onChange?: () => void,
): Candidate {
  let stoppedLeading = Promise.withResolvers<void>();
  const waiters = new Map<string, () => void>();
  const c: Candidate = {
    started: 0,
    stopped: 0,
    observed: [],
    get stoppedLeading() {
      return stoppedLeading.promise;
    },
    sawLeader(id: string) {
      if (c.observed.includes(id)) return Promise.resolve();
      const d = Promise.withResolvers<void>();
      waiters.set(id, d.resolve);
      return d.promise;
    },
    elector: new LeaderElector({
      client,
      identity,
      namespace: "default",
      leaseDurationMs: 1000,
      renewDeadlineMs: 300,
      retryPeriodMs: 50,
      onStartedLeading: (signal) => {
        c.started++;
        c.lastSignal = signal;
        onChange?.();
      },
      onStoppedLeading: () => {
        c.stopped++;
        stoppedLeading.resolve();
        stoppedLeading = Promise.withResolvers<void>();
        onChange?.();
      },
      onNewLeader: (id) => {
        c.observed.push(id);
        waiters.get(id)?.();
      },
      ...extra,
    }),
  };
  return c;
}

Deno.test("LeaderElector: options are validated", async () => {
  const env = await startEnv();
  try {
    nodeAssert.throws(
      () => new LeaderElector({ client: env.client, identity: "" }),
      /identity required/,
    );
    nodeAssert.throws(
      () =>
        new LeaderElector({
          client: env.client,
          identity: "a",
          leaseDurationMs: 10,
          renewDeadlineMs: 10,
        }),
      /lease duration must be greater/,
    );
  } finally {
    await env.close();
  }
});

/** When the lease as stored now expires (its holder's last renewal plus its duration). */
async function leaseExpiry(client: KubeClient): Promise<number> {
  const lease = await client.get<Lease>(LEASES, "tower", { namespace: "default" });
  return Date.parse(String(lease.spec?.renewTime)) + (lease.spec?.leaseDurationSeconds ?? 0) * 1000;
}

/** Long enough that a hand-over before expiry cannot be the expiry itself on a loaded machine. */
const LONG_LEASE = { leaseDurationMs: 10_000, renewDeadlineMs: 300, retryPeriodMs: 50 };

Deno.test("LeaderElector: one leader; release hands over at once; crash hands over after expiry", async (t) => {
  const env = await startEnv();
  const a = candidate(await env.newClient(), "a", LONG_LEASE);
  const b = candidate(await env.newClient(), "b", LONG_LEASE);
  try {
    await t.step("first candidate acquires; the second observes it and waits", async () => {
      a.elector.start();
      await deadline(a.elector.waitForLeadership(), 5000, "a leads");
      b.elector.start();
      await deadline(b.sawLeader("a"), 5000, "b observes a");
      nodeAssert.equal(b.elector.isLeader(), false);
      nodeAssert.equal(a.started, 1);
      const lease = await env.client.get<Lease>(LEASES, "tower", { namespace: "default" });
      nodeAssert.equal(lease.spec?.holderIdentity, "a");
      nodeAssert.equal(lease.spec?.leaseTransitions, 0);
      nodeAssert.match(String(lease.spec?.renewTime), /\.\d{6}Z$/);
    });

    await t.step(
      "stop releases: the standby takes over before a's lease would expire",
      async () => {
        const expiry = await leaseExpiry(env.client);
        await a.elector.stop();
        nodeAssert.equal(a.stopped, 1);
        nodeAssert.equal(a.lastSignal?.aborted, true);
        await deadline(b.elector.waitForLeadership(), 30_000, "b leads");
        // Before the 10 s lease ran out: only the release can have let b in.
        nodeAssert.ok(Date.now() < expiry, "b took over only once a's lease had expired");
        const lease = await env.client.get<Lease>(LEASES, "tower", { namespace: "default" });
        nodeAssert.equal(lease.spec?.holderIdentity, "b");
        nodeAssert.equal(lease.spec?.leaseTransitions, 1);
      },
    );

    await t.step(
      "a crashed leader (no release) is replaced only after the lease expires",
      async () => {
        await b.elector.stop();
        // A one-second lease this time: the take-over waits for it.
        const c = candidate(await env.newClient(), "c");
        const d = candidate(await env.newClient(), "d");
        c.elector.start();
        await deadline(c.elector.waitForLeadership(), 5000, "c leads");
        d.elector.start();
        try {
          await deadline(d.sawLeader("c"), 5000, "d observes c");
          const t0 = Date.now();
          await c.elector.stop({ release: false });
          await deadline(d.elector.waitForLeadership(), 5000, "d leads");
          const took = Date.now() - t0;
          nodeAssert.ok(took >= 700, `took over after ${took} ms, before the lease expired`);
          const lease = await env.client.get<Lease>(LEASES, "tower", { namespace: "default" });
          nodeAssert.equal(lease.spec?.holderIdentity, "d");
          nodeAssert.equal(lease.spec?.leaseTransitions, 3);
        } finally {
          await d.elector.stop();
        }
      },
    );
  } finally {
    await a.elector.stop();
    await b.elector.stop();
    await env.close();
  }
});

Deno.test("LeaderElector: renew failures make the leader step down before its lease could expire", async () => {
  const env = await startEnv();
  const a = candidate(await env.newClient(), "a", LONG_LEASE);
  try {
    a.elector.start();
    await deadline(a.elector.waitForLeadership(), 5000, "a leads");
    const expiry = await leaseExpiry(env.client);
    env.server.faults.failNext(1_000_000, 500, (m, p) => m === "PUT" && p === LEASE_PATH);
    await deadline(a.stoppedLeading, 30_000, "a steps down");
    // Another candidate may take the lease once it expires: a must have let go before.
    nodeAssert.ok(Date.now() < expiry, "stepped down only after the lease could have expired");
    nodeAssert.equal(a.elector.isLeader(), false);
    nodeAssert.equal(a.lastSignal?.aborted, true);
    env.server.faults.reset();
    await deadline(a.elector.waitForLeadership(), 30_000, "a leads again once the server recovers");
    nodeAssert.equal(a.started, 2);
  } finally {
    await a.elector.stop();
    await env.close();
  }
});

Deno.test("LeaderElector: never two leaders while leaders keep stopping", async () => {
  const env = await startEnv();
  let maxLeading = 0;
  const all: Candidate[] = [];
  const onChange = () => {
    maxLeading = Math.max(maxLeading, all.filter((c) => c.elector.isLeader()).length);
  };
  for (const id of ["x", "y", "z"]) all.push(candidate(await env.newClient(), id, {}, onChange));
  const running = [...all];
  try {
    for (const c of running) c.elector.start();
    const leaders: string[] = [];
    for (let round = 0; round < 3; round++) {
      const leader = await deadline(
        Promise.race(running.map((c) => c.elector.waitForLeadership().then(() => c))),
        5000,
        `a leader in round ${round}`,
      );
      nodeAssert.equal(all.filter((c) => c.elector.isLeader()).length, 1);
      leaders.push(leader.elector.leader);
      await leader.elector.stop();
      running.splice(running.indexOf(leader), 1);
    }
    nodeAssert.equal(maxLeading, 1);
    nodeAssert.deepEqual([...leaders].sort(), ["x", "y", "z"]);
  } finally {
    for (const c of all) await c.elector.stop();
    await env.close();
  }
});
