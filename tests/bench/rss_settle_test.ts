/**
 * The rule behind the `rss` figure's `*_after_load_settled` rows (scripts/bench/rss.ts), on
 * made-up RSS series under a simulated clock: the plateau that V8's memory reducer ends ~20 s
 * after a load is not taken for the floor, a fall that never stops ends at the bound (and says
 * so), and each role settles on its own.
 */

import { assert, assertEquals } from "../helpers/assert.ts";
import { SETTLE_RULE, type SettleClock, settleRss } from "../../scripts/bench/rss.ts";

/** A clock whose sleeps advance it, and a sampler reading `series` (MiB per role at t ms). */
function simulated(series: Record<string, (tMs: number) => number>) {
  let now = 0;
  let samples = 0;
  const clock: SettleClock = {
    now: () => now,
    sleep: (ms) => {
      now += ms;
      return Promise.resolve();
    },
  };
  const sample = () => {
    samples++;
    return Object.fromEntries(Object.entries(series).map(([role, f]) => [role, f(now)]));
  };
  return { clock, sample, samples: () => samples, now: () => now };
}

Deno.test("settleRss: a flat plateau that falls after 22 s settles on the fall, not the plateau", async () => {
  const sim = simulated({ proxy: (t) => t < 22_000 ? 165.6 : 98.9 });
  const { proxy } = await settleRss(sim.sample, SETTLE_RULE, sim.clock);
  assertEquals(proxy.mib, 98.9);
  assertEquals(proxy.bounded, false);
  assertEquals(proxy.seconds, 22);
  // Watched 10 s past the fall before calling it settled, and no longer than that.
  assert(sim.now() >= 32_000 && sim.now() <= 32_500, `stopped at ${sim.now()} ms`);
});

Deno.test("settleRss: a flat series is watched for the minimum, then settles at once", async () => {
  const sim = simulated({ ssh: () => 10.2 });
  const { ssh } = await settleRss(sim.sample, SETTLE_RULE, sim.clock);
  assertEquals(ssh, { mib: 10.2, seconds: 0, bounded: false });
  assertEquals(sim.now(), SETTLE_RULE.minMs);
});

Deno.test("settleRss: jitter below 1 MiB does not hold it up; 2 MiB every 5 s does", async () => {
  const jitter = simulated({ agent: (t) => 85 + ((t / 500) % 2) * 0.8 });
  const a = await settleRss(jitter.sample, SETTLE_RULE, jitter.clock);
  assertEquals(a.agent.bounded, false);
  assertEquals(jitter.now(), SETTLE_RULE.minMs);

  const creep = simulated({ agent: (t) => 200 - 2 * Math.floor(t / 5_000) });
  const c = await settleRss(creep.sample, SETTLE_RULE, creep.clock);
  assertEquals(c.agent, { mib: 200 - 2 * 12, seconds: 60, bounded: true });
  assertEquals(creep.now(), SETTLE_RULE.boundMs);
  // Sampled every 500 ms over the 60 s bound: bounded in count, not only in time.
  assertEquals(creep.samples(), 121);
});

Deno.test("settleRss: each role settles on its own; the wait ends with the last", async () => {
  // The agent, settled at the minimum watch, is read no more while the proxy is watched on.
  const sim = simulated({
    proxy: (t) => t < 26_000 ? 160 : 95,
    agent: (t) => t <= 30_000 ? 70 : 75,
  });
  const r = await settleRss(sim.sample, SETTLE_RULE, sim.clock);
  assertEquals(r.agent, { mib: 70, seconds: 0, bounded: false });
  assertEquals(r.proxy, { mib: 95, seconds: 26, bounded: false });
  assertEquals(sim.now(), 36_000);
});

Deno.test("settleRss: a bound below the minimum watch (the smoke test's 1 s) ends it there", async () => {
  const sim = simulated({ proxy: () => 120 });
  const { proxy } = await settleRss(sim.sample, { ...SETTLE_RULE, boundMs: 1_000 }, sim.clock);
  assertEquals(proxy, { mib: 120, seconds: 1, bounded: true });
  assertEquals(sim.now(), 1_000);
});
