import { Buffer } from "node:buffer";
import { PassThrough, Writable } from "node:stream";
import { HttpParseError } from "../../../lib/proxy/http/head.ts";
import { pumpBody, readHead, Wire, WireClosedError } from "../../../lib/proxy/http/wire.ts";
import { Deadlines } from "../../../lib/proxy/http/deadlines.ts";
import { assert, assertEquals, assertRejects } from "../../helpers/assert.ts";
import { once } from "./helpers.ts";

function collector(): Writable & { data: () => string } {
  const parts: Buffer[] = [];
  const w = new Writable({
    write(chunk: Buffer, _enc, cb) {
      parts.push(chunk);
      cb();
    },
  });
  return Object.assign(w, { data: () => Buffer.concat(parts).toString("latin1") });
}

Deno.test("readHead: a head split byte by byte, bytes after it kept for the next reader", async () => {
  const s = new PassThrough();
  const wire = new Wire(s);
  const text = "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET";
  const p = readHead(wire);
  for (const ch of text) s.write(ch);
  const got = await p;
  assert(got !== null);
  assertEquals(got.buf.toString("latin1", 0, got.end), text.slice(0, text.length - 6));
  const out = collector();
  await pumpBody(wire, { kind: "length", length: 3 }, out, { bytes: 0 });
  assertEquals(out.data(), "abc");
  assertEquals(wire.buffered, 3);
  s.end();
  await assertRejects(readHead(wire), WireClosedError); // "GET" then EOF: a cut head
});

Deno.test("readHead: clean EOF is null; too large is 431; idle limit", async () => {
  const s = new PassThrough();
  const wire = new Wire(s);
  const p = readHead(wire);
  s.end();
  assertEquals(await p, null);

  const s2 = new PassThrough();
  const w2 = new Wire(s2);
  const big = readHead(w2, { maxBytes: 64 });
  s2.write("GET / HTTP/1.1\r\n" + "A: b\r\n".repeat(20));
  const err = await assertRejects(big, HttpParseError);
  assertEquals((err as HttpParseError).status, 431);
  s2.destroy();

  const s3 = new PassThrough();
  const deadlines = new Deadlines(1);
  const idle = readHead(new Wire(s3), { idle: { ms: 20, deadlines } });
  await assertRejects(idle, WireClosedError, "no complete head within 20 ms");
  s3.destroy();
  deadlines.close();
});

Deno.test("pumpBody: backpressure pauses the source until the destination drains", async () => {
  const s = new PassThrough();
  const wire = new Wire(s);
  const pending: (() => void)[] = [];
  let open = false;
  const slow = new Writable({
    highWaterMark: 1024,
    write(_chunk: Buffer, _enc, cb) {
      if (open) queueMicrotask(cb);
      else pending.push(cb);
    },
  });
  const counter = { bytes: 0 };
  const done = pumpBody(wire, { kind: "length", length: 64 * 1024 }, slow, counter);
  const paused = once(s, "pause");
  for (let i = 0; i < 16; i++) s.write(Buffer.alloc(4096));
  await paused;
  assertEquals(counter.bytes, 4096, "nothing more taken while the destination is full");
  open = true;
  for (const cb of pending.splice(0)) cb();
  await done;
  assertEquals(counter.bytes, 64 * 1024);
  s.destroy();
});

Deno.test("pumpBody: close-delimited re-chunked; chunked de-chunked; early EOF fails", async () => {
  const s = new PassThrough();
  const out = collector();
  const p = pumpBody(new Wire(s), { kind: "close" }, out, { bytes: 0 }, { mode: "chunk" });
  s.write("hello");
  s.end(" world");
  await p;
  assertEquals(out.data(), "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");

  const s2 = new PassThrough();
  const out2 = collector();
  const p2 = pumpBody(new Wire(s2), { kind: "chunked" }, out2, { bytes: 0 }, { mode: "dechunk" });
  s2.write("5\r\nhel");
  s2.write("lo\r\n0\r\n\r\n");
  await p2;
  assertEquals(out2.data(), "hello");

  const s3 = new PassThrough();
  const p3 = pumpBody(new Wire(s3), { kind: "length", length: 10 }, collector(), { bytes: 0 });
  s3.end("short");
  await assertRejects(p3, WireClosedError);
});

Deno.test("pumpBody: a destination that ends stops only the writing; the source is read to its end", async () => {
  // A destination that takes a chunk at a time and then ends (its peer closed it), as an SSH
  // channel does at the agent's CLOSE; Node would destroy it on a write after that.
  const parts: Buffer[] = [];
  const dest = new Writable({
    highWaterMark: 4,
    write(chunk: Buffer, _enc, cb) {
      parts.push(chunk);
      setTimeout(cb, 1);
    },
  });
  const errors: Error[] = [];
  dest.on("error", (e) => errors.push(e));
  const s = new PassThrough();
  const counter = { bytes: 0 };
  const p = pumpBody(new Wire(s), { kind: "close" }, dest, counter, { endDest: true });
  s.write("first");
  await once(dest, "drain");
  dest.end();
  s.write("second"); // into an ended destination: dropped, not a failure
  s.end("third");
  await p;
  assertEquals(Buffer.concat(parts).toString(), "first");
  assertEquals(errors, [], "no write after end");
  assertEquals(counter.bytes, "firstsecondthird".length);
});
