/**
 * The shared buffer pool: large buffers given back are reused by size class; small ones,
 * foreign ones, views into the middle and second releases are ignored; the free total is
 * capped.
 */

import { Buffer } from "node:buffer";
import { assert, assertEquals } from "./helpers/assert.ts";
import {
  freeBufferBytes,
  MAX_FREE_BYTES,
  MIN_POOLED,
  releaseBuffer,
  releaseOrderLength,
  takeBuffer,
} from "../lib/buffer_pool.ts";

Deno.test("buffer pool: a released buffer serves the next request of its size class", () => {
  const a = takeBuffer(100_000);
  assertEquals(a.length, 100_000);
  assertEquals(a.byteOffset, 0);
  const before = freeBufferBytes();
  releaseBuffer(a);
  assertEquals(freeBufferBytes(), before + a.buffer.byteLength);
  // A nearby length rounds to the same class and gets the same memory.
  const b = takeBuffer(99_000);
  assertEquals(b.buffer, a.buffer);
  assertEquals(b.length, 99_000);
  assertEquals(freeBufferBytes(), before);
  // Another class does not, and lengths past the largest class are not pooled.
  const c = takeBuffer(300_000);
  assert(c.buffer !== a.buffer);
  const huge = takeBuffer(600_000);
  releaseBuffer(huge);
  assertEquals(freeBufferBytes(), before);
});

Deno.test("buffer pool: small, foreign, partial and repeated releases are ignored", () => {
  const before = freeBufferBytes();
  const small = takeBuffer(MIN_POOLED - 1);
  assertEquals(small.length, MIN_POOLED - 1);
  releaseBuffer(small);
  releaseBuffer(Buffer.alloc(64 * 1024)); // not made by the pool
  const big = takeBuffer(64 * 1024);
  releaseBuffer(big.subarray(16)); // a view into the middle
  releaseBuffer(big.subarray(0, 1000)); // a slice at its start (a slab's first read, say)
  assertEquals(freeBufferBytes(), before);
  releaseBuffer(big);
  releaseBuffer(big); // a second release while free
  assertEquals(freeBufferBytes(), before + big.buffer.byteLength);
  const x = takeBuffer(64 * 1024);
  const y = takeBuffer(64 * 1024);
  assertEquals(x.buffer, big.buffer);
  assert(y.buffer !== big.buffer, "handed out once only");
});

Deno.test("buffer pool: at most MAX_FREE_BYTES wait free; the longest free go first", () => {
  const size = 512 * 1024;
  const bufs = Array.from({ length: MAX_FREE_BYTES / size + 4 }, () => takeBuffer(size));
  for (const b of bufs) releaseBuffer(b);
  assert(freeBufferBytes() <= MAX_FREE_BYTES, `${freeBufferBytes()} bytes free`);
  assert(freeBufferBytes() > MAX_FREE_BYTES - 2 * size, "filled up to the cap");
  // Another size still finds room: the oldest free buffers make way for it.
  const other = takeBuffer(48 * 1024);
  releaseBuffer(other);
  assertEquals(takeBuffer(48 * 1024).buffer, other.buffer);
  // The most recently freed of the first size are the ones kept.
  assertEquals(takeBuffer(size).buffer, bufs.at(-1)!.buffer);
});

Deno.test("buffer pool: a buffer taken and given back again and again keeps its bookkeeping small", () => {
  // A stream's read buffer: taken, released, taken again, tens of thousands of times.
  let prev = takeBuffer(256 * 1024);
  for (let i = 0; i < 20_000; i++) {
    const b = takeBuffer(256 * 1024);
    releaseBuffer(prev);
    prev = b;
  }
  releaseBuffer(prev);
  assert(releaseOrderLength() <= 4 * 64 + 64, `${releaseOrderLength()} release-order entries`);
  // Eviction still goes oldest first once the cap is passed.
  const size = 512 * 1024;
  const bufs = Array.from({ length: MAX_FREE_BYTES / size + 2 }, () => takeBuffer(size));
  for (const b of bufs) releaseBuffer(b);
  assert(freeBufferBytes() <= MAX_FREE_BYTES);
  assertEquals(takeBuffer(size).buffer, bufs.at(-1)!.buffer);
});
