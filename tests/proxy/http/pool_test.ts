import { PassThrough } from "node:stream";
import { UpstreamConn } from "../../../lib/proxy/http/conn.ts";
import { UpstreamPool } from "../../../lib/proxy/http/pool.ts";
import { assert, assertEquals } from "../../helpers/assert.ts";
import { once } from "./helpers.ts";
import { countTimers } from "../../helpers/timers.ts";

/** A connection over a PassThrough: what is written to it comes back as "received" bytes. */
function conn(key = "s1"): UpstreamConn {
  const s = new PassThrough();
  return new UpstreamConn(key, {}, s, s);
}

Deno.test("pool: most recently idled first; bounded; dead ones skipped", async () => {
  const pool = new UpstreamPool({ maxIdle: 2 });
  const [a, b, c] = [conn(), conn(), conn()];
  assert(pool.put(a));
  assert(pool.put(b));
  const aClosed = once(a.stream, "close");
  assert(pool.put(c)); // a (the oldest) is closed to make room
  await aClosed;
  assertEquals(pool.size, 2);
  assertEquals(pool.take(), c);
  b.stream.destroy();
  await once(b.stream, "close");
  assertEquals(pool.size, 0, "evicted on close");
  assertEquals(pool.take(), undefined);
  c.destroy();
  pool.clear(); // stops the expiry timer
});

Deno.test("pool: unsolicited bytes or EOF evict; isLive and dropKey filter by session", async () => {
  const pool = new UpstreamPool();
  const a = conn("s1");
  pool.put(a);
  a.stream.write("HTTP/1.1 200 OK\r\n"); // echoed back: bytes while idle
  await once(a.stream, "close");
  assertEquals(pool.size, 0);

  const b = conn("s1");
  const d = conn("s2");
  pool.put(b);
  pool.put(d);
  const dClosed = once(d.stream, "close");
  assertEquals(pool.take((k) => k !== "s2"), b); // d's session is gone: destroyed on the way
  await dClosed;
  b.destroy();

  const e = conn("s3");
  const f = conn("s4");
  pool.put(e);
  pool.put(f);
  const eClosed = once(e.stream, "close");
  pool.dropKey("s3");
  await eClosed;
  assertEquals(pool.size, 1);
  pool.clear();
  await once(f.stream, "close");
  assertEquals(pool.size, 0);
});

Deno.test("pool: idle connections expire", async () => {
  const pool = new UpstreamPool({ idleTimeoutMs: 30 });
  const a = conn();
  pool.put(a);
  await once(a.stream, "close", 5_000);
  assertEquals(pool.size, 0);
  // A put after expiry schedules again.
  const b = conn();
  pool.put(b);
  await once(b.stream, "close", 5_000);
  assertEquals(pool.size, 0);
});

Deno.test("pool: reuse alternates over sessions when several have idle connections", () => {
  const pool = new UpstreamPool();
  const a1 = conn("a");
  const a2 = conn("a");
  const b1 = conn("b");
  for (const c of [b1, a1, a2]) pool.put(c);
  const first = pool.take()!;
  assertEquals(first, a2, "newest first");
  const second = pool.take()!;
  assertEquals(second.key, "b", "then another session's, though a1 is newer");
  pool.put(first);
  pool.put(second);
  assertEquals(pool.take()!.key, "a");
  assertEquals(pool.take()!.key, "b");
  assertEquals(pool.take()!.key, "a");
  pool.clear();
  for (const c of [a1, a2, b1]) c.destroy();
});

Deno.test("pool: emptying and refilling a thousand times arms one expiry timer", () => {
  const pool = new UpstreamPool();
  const c = conn();
  const timers = countTimers(() => {
    for (let i = 0; i < 1000; i++) {
      assert(pool.put(c));
      assertEquals(pool.take(), c);
    }
  });
  assertEquals(timers, 1);
  pool.clear();
  c.destroy();
});

Deno.test("pool: dropOldest closes the session's connection idle longest, and only that", async () => {
  const pool = new UpstreamPool();
  const [a1, b1, a2] = [conn("a"), conn("b"), conn("a")];
  pool.put(a1);
  pool.put(b1);
  pool.put(a2);
  const a1Closed = once(a1.stream, "close");
  assert(pool.dropOldest("a"));
  await a1Closed;
  assertEquals(pool.size, 2);
  assert(!a2.dead && !b1.dead);
  assert(pool.dropOldest("a"));
  assert(!pool.dropOldest("a"), "none of session a left");
  assertEquals(pool.take(), b1);
  b1.destroy();
  pool.clear();
});
