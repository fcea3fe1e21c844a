import { assertEquals } from "../helpers/assert.ts";
import { WorkQueue } from "../../lib/controller/queue.ts";

Deno.test("WorkQueue: dedup, FIFO, re-add while processing runs again after done", async () => {
  const q = new WorkQueue();
  q.add("a");
  q.add("b");
  q.add("a");
  assertEquals(q.length, 2);
  assertEquals(await q.get(), "a");
  q.add("a"); // while processing: deferred
  assertEquals(q.length, 1);
  assertEquals(await q.get(), "b");
  q.done("b");
  q.done("a"); // re-queued now
  assertEquals(await q.get(), "a");
  q.done("a");
  assertEquals(q.isIdle(), true);
  await q.whenIdle();
  q.shutdown();
});

Deno.test("WorkQueue: get waits for work; shutdown wakes waiters with undefined", async () => {
  const q = new WorkQueue();
  const p = q.get();
  q.add("x");
  assertEquals(await p, "x");
  q.done("x");
  const w = q.get();
  q.shutdown();
  assertEquals(await w, undefined);
  q.add("y");
  assertEquals(await q.get(), undefined);
  q.reopen();
  q.add("y");
  assertEquals(await q.get(), "y");
  q.done("y");
  q.shutdown();
});

Deno.test("WorkQueue: rate-limited retries back off exponentially and are capped", async () => {
  const q = new WorkQueue({ retryInitialMs: 1, retryMaxMs: 4 });
  assertEquals(q.addRateLimited("k"), 1);
  assertEquals(q.isIdle(), false, "a pending retry is not idle");
  assertEquals(await q.get(), "k");
  q.done("k");
  assertEquals(q.addRateLimited("k"), 2);
  assertEquals(q.addRateLimited("k"), 4); // timer already pending: not queued twice
  assertEquals(q.addRateLimited("k"), 4);
  assertEquals(q.failures("k"), 4);
  assertEquals(await q.get(), "k");
  q.done("k");
  q.forget("k");
  assertEquals(q.failures("k"), 0);
  await q.whenIdle();
  // clear() drops pending timers.
  q.addAfter("z", 10_000);
  q.clear();
  assertEquals(q.isIdle(), true);
  q.shutdown();
});
