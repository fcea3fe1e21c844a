import { assert, assertEquals } from "../helpers/assert.ts";
import { Backoff } from "../../lib/agent/backoff.ts";

Deno.test("backoff grows by 1.4 up to the cap, and resets", () => {
  const b = new Backoff({ minMs: 100, maxMs: 1000, jitter: false });
  const seq = Array.from({ length: 10 }, () => Math.round(b.next()));
  assertEquals(seq, [100, 140, 196, 274, 384, 538, 753, 1000, 1000, 1000]);
  b.reset();
  assertEquals(b.next(), 100);
});

Deno.test("jitter keeps each delay within [d/2, d] and spreads agents", () => {
  let seed = 42;
  const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  const delays = Array.from({ length: 100 }, () => new Backoff({ minMs: 1000, random }).next());
  for (const d of delays) assert(d >= 500 && d <= 1000, `delay ${d}`);
  assert(new Set(delays.map(Math.round)).size > 50, "delays should differ between agents");
});
