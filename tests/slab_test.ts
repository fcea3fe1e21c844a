/** Read slabs: slices handed out never overlap, slabs grow while reads fill them. */

import { Buffer } from "node:buffer";
import { assert, assertEquals } from "./helpers/assert.ts";
import { SlabReader } from "../lib/slab.ts";

Deno.test("SlabReader: slices never overlap; slabs grow while reads fill them", () => {
  const slab = new SlabReader(16 * 1024, 128 * 1024);
  const taken: Buffer[] = [];
  let rooms = 0;
  for (let i = 0; i < 40; i++) {
    const room = slab.room();
    rooms = Math.max(rooms, room.length);
    const n = room.length; // a read that fills all the room
    room.fill(i);
    taken.push(slab.take(n));
  }
  assertEquals(rooms, 128 * 1024, "room grows to the maximum");
  taken.forEach((b, i) => assert(b.every((x) => x === (i & 0xff)), `slice ${i} overwritten`));
  // Small reads share one slab.
  const small = new SlabReader(64 * 1024);
  const a = small.room();
  a[0] = 1;
  const ta = small.take(100);
  const b = small.room();
  assertEquals(b.byteOffset, ta.byteOffset + 100);
  assertEquals(b.buffer, ta.buffer);
});

Deno.test("SlabReader: a read limit caps the room (not below 16 KiB) and the next slab's size", () => {
  const slab = new SlabReader(64 * 1024, 256 * 1024);
  // Grow to full size with reads that fill their room.
  for (let i = 0; i < 10; i++) slab.take(slab.room().length);
  assertEquals(slab.room().length, 256 * 1024);
  slab.take(256 * 1024);
  const small = slab.room(16 * 1024);
  assertEquals(small.length, 16 * 1024);
  assert(small.buffer.byteLength <= 64 * 1024, `slab of ${small.buffer.byteLength} bytes`);
  assertEquals(slab.room(100).length, 16 * 1024, "never below the minimum read");
});

Deno.test("SlabReader: a full slab is reused once every slice of it is released, not before", () => {
  const slab = new SlabReader(64 * 1024, 64 * 1024);
  // Fill one slab with four 16 KiB reads; keep the slices.
  const first = slab.room();
  const slices = [16, 16, 16, 16].map(() => {
    slab.room();
    return slab.take(16 * 1024);
  });
  assertEquals(slices[0].buffer, first.buffer);
  // The slab is full: the next room is a new slab, whatever happens to the old one's slices.
  const second = slab.room();
  assert(second.buffer !== first.buffer);
  for (const s of slices.slice(0, 3)) slab.release(s);
  // One slice still out: after the second slab fills, the first is not handed out again.
  for (let i = 0; i < 4; i++) {
    slab.room();
    slab.release(slab.take(16 * 1024));
  }
  const third = slab.room();
  assert(third.buffer !== first.buffer, "reused while a slice was out");
  slab.release(slices[3]);
  slab.release(slices[3]); // a second release changes nothing
  // Now the first slab (and the second, released as it filled) are back in the pool.
  for (let i = 0; i < 4; i++) {
    slab.room();
    slab.release(slab.take(16 * 1024));
  }
  const seen = new Set<ArrayBufferLike>();
  for (let i = 0; i < 8; i++) {
    seen.add(slab.room().buffer);
    slab.release(slab.take(16 * 1024));
  }
  assert(seen.has(first.buffer) || seen.has(second.buffer), "a released slab came back");
});
