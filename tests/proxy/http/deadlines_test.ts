/**
 * Timeouts on one timer: each fires once, not early, in deadline order; cancelled ones never
 * fire; a thousand add/cancel pairs arm no further timer; close drops everything.
 */

import { assert, assertEquals } from "../../helpers/assert.ts";
import { Deadlines } from "../../../lib/proxy/http/deadlines.ts";
import { countTimers } from "../../helpers/timers.ts";

Deno.test("deadlines: fire once, not early, in order; cancelled ones never", async () => {
  const dl = new Deadlines(5);
  try {
    const fired: string[] = [];
    const start = performance.now();
    const at: Record<string, number> = {};
    const last = Promise.withResolvers<void>();
    const mark = (name: string) => () => {
      fired.push(name);
      at[name] = performance.now() - start;
      if (name === "c") last.resolve();
    };
    dl.add(60, mark("c"));
    dl.add(20, mark("a"));
    const gone = dl.add(30, mark("cancelled"));
    dl.add(40, mark("b"));
    dl.cancel(gone);
    assertEquals(dl.size, 3);
    await last.promise;
    assertEquals(fired, ["a", "b", "c"]);
    assert(at.a >= 20 && at.b >= 40 && at.c >= 60, JSON.stringify(at));
    assertEquals(dl.size, 0);
    assert(!dl.armed, "nothing pending: no timer");
  } finally {
    dl.close();
  }
});

Deno.test("deadlines: a thousand add/cancel pairs arm one timer", () => {
  const dl = new Deadlines();
  try {
    const timers = countTimers(() => {
      for (let i = 0; i < 1000; i++) dl.cancel(dl.add(60_000, () => {}));
    });
    assertEquals(timers, 1);
    assert(dl.armed);
    assertEquals(dl.size, 0);
  } finally {
    dl.close();
  }
  assert(!dl.armed, "close stops the timer");
});

Deno.test("deadlines: close drops pending timeouts and arms nothing after it", () => {
  const dl = new Deadlines(1);
  dl.add(5, () => {
    throw new Error("fired after close");
  });
  dl.close();
  assertEquals(dl.size, 0);
  assert(!dl.armed, "the pending timer is cleared");
  // No timer exists, so nothing can fire (a leaked one would also fail the test's sanitizer).
  const timers = countTimers(() => dl.add(0, () => {}));
  assertEquals(timers, 0);
  assertEquals(dl.size, 0);
  assert(!dl.armed);
});

Deno.test("deadlines: a throwing callback surfaces as an uncaught error; the rest still fire", async () => {
  const dl = new Deadlines(1);
  const errors: unknown[] = [];
  const onError = (e: ErrorEvent) => {
    e.preventDefault();
    errors.push(e.error);
  };
  globalThis.addEventListener("error", onError);
  try {
    const second = Promise.withResolvers<void>();
    dl.add(10, () => {
      throw new Error("boom");
    });
    dl.add(10, second.resolve);
    await second.promise;
    // The error is rethrown from a microtask queued before the second callback ran.
    await Promise.resolve();
    assertEquals(errors.map((e) => (e as Error).message), ["boom"]);
  } finally {
    globalThis.removeEventListener("error", onError);
    dl.close();
  }
});
