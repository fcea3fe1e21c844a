/** The concurrency limit: never more than n at once, FIFO, errors free the slot. */

import { assert, assertEquals, assertRejects, assertThrows } from "./helpers/assert.ts";
import { Slots } from "../lib/slots.ts";

Deno.test("Slots: at most n run at once, the rest in arrival order", async () => {
  const slots = new Slots(2);
  let running = 0;
  let most = 0;
  const started: number[] = [];
  const gates = Array.from({ length: 6 }, () => Promise.withResolvers<void>());
  const done = gates.map((g, i) =>
    slots.run(async () => {
      started.push(i);
      running++;
      most = Math.max(most, running);
      await g.promise;
      running--;
      return i;
    })
  );
  await Promise.resolve();
  assertEquals(started, [0, 1]);
  assertEquals(slots.waiting, 4);
  // Finish out of order: the next waiting task takes each freed slot.
  gates[1].resolve();
  await done[1];
  await Promise.resolve();
  assertEquals(started, [0, 1, 2]);
  for (const g of gates) g.resolve();
  assertEquals(await Promise.all(done), [0, 1, 2, 3, 4, 5]);
  assertEquals(started, [0, 1, 2, 3, 4, 5]);
  assertEquals(most, 2);
  assertEquals(slots.waiting, 0);
});

Deno.test("Slots: a failing task rejects and still frees its slot", async () => {
  const slots = new Slots(1);
  await assertRejects(() => slots.run(() => Promise.reject(new Error("boom"))), Error, "boom");
  assertEquals(await slots.run(() => Promise.resolve(7)), 7);
  assertThrows(() => new Slots(0), Error, "positive");
  assert(slots.waiting === 0);
});
