/**
 * lib/within.ts: a value in time passes through; the deadline, an abort or the promise's own
 * failure reject with `what` and the reason; a value that arrives too late goes to `late`.
 * @module
 */

import { assertEquals, assertRejects } from "./helpers/assert.ts";
import { within } from "../lib/within.ts";

Deno.test("within: the value when it comes first", async () => {
  assertEquals(await within(Promise.resolve(7), 60_000, { what: "seven" }), 7);
});

Deno.test("within: the deadline rejects, and a late value is handed over", async () => {
  const late = Promise.withResolvers<string>();
  const value = Promise.withResolvers<string>();
  const p = within(value.promise, 1, { what: "dial x", late: late.resolve });
  await assertRejects(() => p, Error, "dial x: no answer within 1 ms");
  value.resolve("stream");
  assertEquals(await late.promise, "stream");
});

Deno.test("within: an abort rejects with its reason, also when already aborted", async () => {
  const ac = new AbortController();
  const never = new Promise<never>(() => {});
  const p = within(never, 3_600_000, { what: "open t", signal: ac.signal, aborted: "gone" });
  ac.abort();
  await assertRejects(() => p, Error, "open t: gone");
  await assertRejects(
    () => within(never, 3_600_000, { what: "open t", signal: ac.signal }),
    Error,
    "open t: aborted",
  );
});

Deno.test("within: the promise's failure, with its cause, through the error factory", async () => {
  class Full extends Error {}
  const cause = new Full("session full");
  const err = await within(Promise.reject(cause), 3_600_000, {
    what: "open t",
    error: (message, c) => c instanceof Full ? new Full(message) : new Error(message),
  }).catch((e) => e);
  assertEquals(err instanceof Full, true);
  assertEquals(err.message, "open t: session full");
  const plain = await within(Promise.reject(cause), 3_600_000, { what: "w" }).catch((e) => e);
  assertEquals(plain.cause, cause);
});
