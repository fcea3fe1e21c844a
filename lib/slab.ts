/**
 * Read buffers for socket read loops: consecutive slices of a slab, so a small read does not
 * cost a fresh zero-filled buffer of the largest read size, and a slice handed out is never
 * reused while a consumer may hold it (ssh2 keeps a chunk until the peer's window opens). Once
 * every slice of a full slab has been given back ({@link SlabReader.release}), the slab goes
 * to the shared buffer pool for reuse instead of to the GC.
 * @module
 */

import { Buffer } from "node:buffer";
import { releaseBuffer, takeBuffer } from "./buffer_pool.ts";

/** Largest single read by default. */
const READ_MAX = 256 * 1024;
/** A read gets at least this much room; a fresh slab is taken below it. */
export const READ_MIN = 16 * 1024;

/**
 * Hands out read buffers as consecutive slices of a slab. A slice given out is
 * never handed out again; once less than {@link READ_MIN} is left a new slab is
 * taken, and the full one goes back to the buffer pool when every slice of it
 * has been released (slices never released leave it to the GC). Slabs start
 * small and double (up to `max`) while reads fill all the room they get, so an
 * idle or slow stream holds little memory and a bulk one reads in large pieces.
 */
export class SlabReader {
  #slab: Uint8Array<ArrayBuffer> = new Uint8Array(0);
  #pos = 0;
  /** Slices taken and not given back yet, by slab (the current one and full ones). */
  readonly #out = new Map<ArrayBufferLike, { slab: Uint8Array; count: number }>();
  #size: number;
  #lastRoom = 0;
  readonly #max: number;

  constructor(initial = 64 * 1024, max = READ_MAX) {
    // A slab of READ_MIN would be replaced after every read, however small.
    this.#size = Math.max(initial, 4 * READ_MIN);
    this.#max = Math.max(max, this.#size);
  }

  /**
   * Room for the next read: at most `max` bytes, and at most `limit` (not below
   * {@link READ_MIN}) when the caller is sharing a memory budget with other readers; a new slab
   * is then at most four times that, so a reader's slab shrinks with its share.
   */
  room(limit: number = this.#max): Uint8Array<ArrayBuffer> {
    const max = Math.max(READ_MIN, Math.min(this.#max, limit));
    if (this.#slab.length - this.#pos < READ_MIN) {
      // The full slab goes back to the pool now if no slice of it is out, else with the last.
      if (this.#slab.length > 0 && !this.#out.has(this.#slab.buffer)) releaseBuffer(this.#slab);
      const size = Math.min(this.#size, Math.max(4 * READ_MIN, 4 * max));
      this.#slab = takeBuffer(size) as Uint8Array<ArrayBuffer>;
      this.#pos = 0;
    }
    const room = this.#slab.subarray(this.#pos, this.#pos + max);
    this.#lastRoom = room.length;
    return room;
  }

  /** Claim the first `n` bytes of the last {@link room} as a Buffer of its own. */
  take(n: number): Buffer {
    if (n === this.#lastRoom && this.#size < this.#max) {
      this.#size = Math.min(this.#max, this.#size * 2);
    }
    const b = Buffer.from(this.#slab.buffer, this.#slab.byteOffset + this.#pos, n);
    this.#pos += n;
    const out = this.#out.get(this.#slab.buffer);
    if (out) out.count++;
    else this.#out.set(this.#slab.buffer, { slab: this.#slab, count: 1 });
    return b;
  }

  /**
   * A slice from {@link take} is no longer referenced anywhere (e.g. its bytes have been
   * copied into a packet). Call once per slice, and only then; other buffers are ignored.
   */
  release(slice: Uint8Array): void {
    const out = this.#out.get(slice.buffer);
    if (out === undefined || --out.count > 0) return;
    this.#out.delete(slice.buffer);
    if (out.slab !== this.#slab) releaseBuffer(out.slab);
  }
}
