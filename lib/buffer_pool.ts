/**
 * Reusable buffers: outbound SSH packets, the agent's read buffers, gathered inbound packets.
 *
 * Above 4 KiB `Buffer`'s own pool does not serve an allocation, so each sealed packet and each
 * read buffer was an ArrayBuffer of its own: a busy agent sending 100 MB/s made about twice that
 * in garbage buffers, which V8 collected only every few seconds (300–450 MB dead at a time, and
 * an RSS glibc never handed back). Whoever knows a buffer is no longer referenced gives it back
 * ({@link releaseBuffer}): the agent's WebSocket framing once it has copied a packet into its
 * frame, a read buffer once the channel has taken the chunk read into it. The next request of
 * that size class reuses it.
 *
 * Only buffers made here are taken back, only whole (offset 0), only once while free. At most
 * {@link MAX_FREE_BYTES} wait in all: past that the buffers free the longest go to the GC, so
 * sizes no longer asked for (a bulk transfer's large packets, once a thousand streams share
 * the reads) do not hold the room that the sizes in use need.
 * @module
 */

import { Buffer } from "node:buffer";

/**
 * Smaller requests come from `Buffer`'s own pool (8 KiB slabs it hands out in slices, below 4
 * KiB). Between 4 and 16 KiB (the packets of partial reads) each was an allocation of its own:
 * 214 MiB of garbage on the agent in three passes of the 1,000-stream figure.
 */
export const MIN_POOLED = 4 * 1024;
/**
 * Size classes (KiB): two an octave, so a class serves lengths up to a third apart, plus one
 * for the largest channel-data packet (256 KiB and its framing). Longer requests are not pooled.
 */
const CLASSES = [4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 272, 384, 512].map((k) => k * 1024);
/** Most bytes kept free at once, all classes together. */
export const MAX_FREE_BYTES = 16 * 1024 * 1024;

/** Free buffers by size class; the last freed is reused first. */
const free = new Map<number, ArrayBuffer[]>();
/**
 * Release order, oldest first from `orderHead`, for eviction: each release appends the buffer
 * with a new sequence number, and an entry counts only while it is the buffer's latest release
 * and the buffer is still free (`freeSince`). Entries that no longer count are skipped, and
 * dropped when they outnumber the free buffers. (Before, a buffer taken and given back again
 * and again, a stream's read buffer, was appended each time and every copy looked valid: the
 * list grew by one per release and was filtered whole at every release, ~19% of the agent's
 * CPU in the sequential small-GET figure.)
 */
let orderBufs: ArrayBuffer[] = [];
let orderSeqs: number[] = [];
let orderHead = 0;
let seq = 0;
let freeCount = 0;
/**
 * Buffers lent out, with the length of the view lent: only that exact view is taken back, once
 * (a slice of it, e.g. the chunk a read filled part of, is not the whole buffer's release).
 */
const lent = new WeakMap<ArrayBuffer, number>();
/** Free buffers, with the sequence number of their release. */
const freeSince = new WeakMap<ArrayBuffer, number>();
let freeBytes = 0;

/** A buffer of exactly `len` bytes, contents undefined. */
export function takeBuffer(len: number): Buffer {
  if (len < MIN_POOLED) return Buffer.allocUnsafe(len);
  const size = CLASSES.find((c) => c >= len);
  if (size === undefined) return Buffer.allocUnsafe(len);
  let ab = free.get(size)?.pop();
  if (ab !== undefined) {
    freeSince.delete(ab);
    freeBytes -= size;
    freeCount--;
  } else ab = new ArrayBuffer(size);
  lent.set(ab, len);
  return Buffer.from(ab, 0, len);
}

/**
 * `buf` (as {@link takeBuffer} returned it) is no longer referenced anywhere: its memory may
 * serve a later request. Anything else (a buffer not lent here, a slice of one, a second
 * release) is ignored.
 */
export function releaseBuffer(buf: Uint8Array): void {
  const ab = buf.buffer as ArrayBuffer;
  if (buf.byteOffset !== 0 || lent.get(ab) !== buf.length) return;
  lent.delete(ab);
  let list = free.get(ab.byteLength);
  if (list === undefined) free.set(ab.byteLength, list = []);
  list.push(ab);
  freeSince.set(ab, ++seq);
  freeBytes += ab.byteLength;
  freeCount++;
  orderBufs.push(ab);
  orderSeqs.push(seq);
  while (freeBytes > MAX_FREE_BYTES && evictOldest());
  if (orderBufs.length - orderHead > 4 * freeCount + 64) compactOrder();
}

/** Whether release-order entry `i` still counts. */
function current(i: number): boolean {
  return freeSince.get(orderBufs[i]) === orderSeqs[i];
}

/** Leave the buffer free the longest to the GC; false if there was none. */
function evictOldest(): boolean {
  while (orderHead < orderBufs.length) {
    const i = orderHead++;
    if (!current(i)) continue; // taken since, or released again later
    const ab = orderBufs[i];
    const list = free.get(ab.byteLength)!;
    list.splice(list.indexOf(ab), 1);
    freeSince.delete(ab);
    freeBytes -= ab.byteLength;
    freeCount--;
    return true;
  }
  return false;
}

/** Keep only the entries that count (one per free buffer), oldest first. */
function compactOrder(): void {
  const bufs: ArrayBuffer[] = [];
  const seqs: number[] = [];
  for (let i = orderHead; i < orderBufs.length; i++) {
    if (!current(i)) continue;
    bufs.push(orderBufs[i]);
    seqs.push(orderSeqs[i]);
  }
  orderBufs = bufs;
  orderSeqs = seqs;
  orderHead = 0;
}

/** Entries in the release order (for tests: bounded by the free buffers). */
export function releaseOrderLength(): number {
  return orderBufs.length - orderHead;
}

/** Bytes waiting on the free lists (for tests). */
export function freeBufferBytes(): number {
  return freeBytes;
}
