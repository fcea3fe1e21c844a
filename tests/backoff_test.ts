/**
 * lib/backoff.ts: delays grow by the factor up to the cap, jitter keeps each delay within
 * [d·(1 - jitter), d] (the agent's [d/2, d]) and spreads agents that start together, and the
 * sleep ends early on abort.
 * @module
 */

import { assert, assertEquals } from "./helpers/assert.ts";
import { Backoff, backoffDelay, sleep } from "../lib/backoff.ts";

/** A seeded linear congruential generator in [0, 1): repeatable "random" for tests. */
function seeded(seed: number): () => number {
  return () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
}

Deno.test("backoffDelay: grows by the factor, capped, the jitter's ends", () => {
  const o = { initialMs: 100, maxMs: 1000 };
  assertEquals(backoffDelay(0, { ...o, random: () => 0.999999 }), 100);
  assertEquals(backoffDelay(0, { ...o, random: () => 0 }), 50);
  assertEquals(backoffDelay(3, { ...o, random: () => 0.999999 }), 800);
  assertEquals(backoffDelay(10, { ...o, random: () => 0.999999 }), 1000);
  assertEquals(backoffDelay(100, { ...o, jitter: 0 }), 1000);
  assertEquals(backoffDelay(0, { initialMs: 1000, maxMs: 200, jitter: 0 }), 200, "cap wins");
  for (let i = 0; i < 50; i++) {
    const d = backoffDelay(i % 8, o);
    assert(d >= 0 && d <= 1000, String(d));
  }
});

Deno.test("Backoff: the agent's 1.4 factor up to the cap, and reset", () => {
  const b = new Backoff({ initialMs: 100, maxMs: 1000, factor: 1.4, jitter: 0 });
  const seq = Array.from({ length: 10 }, () => b.next());
  assertEquals(seq, [100, 140, 196, 274, 384, 538, 753, 1000, 1000, 1000]);
  assertEquals(b.attempts, 10);
  b.reset();
  assertEquals(b.attempts, 0);
  assertEquals(b.next(), 100);
  const k = new Backoff({ initialMs: 10, maxMs: 40, jitter: 0 });
  assertEquals([k.next(), k.next(), k.next(), k.next()], [10, 20, 40, 40], "default factor 2");
});

Deno.test("Backoff: default jitter keeps each delay within [d/2, d] and spreads agents", () => {
  const random = seeded(42);
  // A hundred agents losing the proxy at once, each with its own first delay of 1 s.
  const delays = Array.from(
    { length: 100 },
    () => new Backoff({ initialMs: 1000, maxMs: 120_000, factor: 1.4, random }).next(),
  );
  for (const d of delays) assert(d >= 500 && d <= 1000, `delay ${d}`);
  assert(new Set(delays).size > 50, "delays should differ between agents");
  // No 100 ms slot gets most of them.
  const slots = new Map<number, number>();
  for (const d of delays) slots.set(Math.floor(d / 100), (slots.get(Math.floor(d / 100)) ?? 0) + 1);
  assert(Math.max(...slots.values()) <= 50, `herd: ${JSON.stringify([...slots])}`);
  // Later attempts keep their jitter: attempt 3 of 1 s × 1.4 lies in [1372, 2744].
  const b = new Backoff({ initialMs: 1000, maxMs: 120_000, factor: 1.4, random: seeded(7) });
  for (let i = 0; i < 3; i++) b.next();
  const d3 = b.next();
  assert(d3 >= 1372 && d3 <= 2744, `attempt 3: ${d3}`);
});

Deno.test("sleep: resolves early and quietly on abort", async () => {
  // Which settles first: the sleep, or a timer due at once? A sleep that ignored the abort
  // would lose the race (and leave its hour-long timer behind for the sanitizer to report).
  const firstOf = (p: Promise<void>) =>
    Promise.race([
      p.then(() => "sleep"),
      new Promise<string>((resolve) => setTimeout(() => resolve("timer"), 0)),
    ]);
  const ac = new AbortController();
  const p = sleep(3_600_000, ac.signal);
  ac.abort();
  assertEquals(await firstOf(p), "sleep", "an aborted sleep resolves at once");
  assertEquals(await firstOf(sleep(3_600_000, ac.signal)), "sleep", "already aborted");
});
