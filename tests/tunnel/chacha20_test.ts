/**
 * The TypeScript ChaCha20 keystream: RFC 8439's block test vector (§2.3.2), every Appendix A.1
 * block and A.2 encryption vector, and the same bytes as `node:crypto`'s ChaCha20 for any key,
 * counter, sequence number, length and offsets.
 */

import { createCipheriv } from "node:crypto";
import fc from "fast-check";
import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import {
  chachaBlock,
  keyWords,
  LITTLE_ENDIAN,
  seqnoBlock,
  xorKeystream,
} from "../../lib/tunnel/chacha20.ts";

import { CHACHA20_BLOCKS, CHACHA20_ENCRYPTIONS, hex, unhex } from "./rfc8439_vectors.ts";

/** RFC 8439 keystream (32-bit block counter, 96-bit nonce) from `counter`, `len` bytes. */
function rfcKeystream(key: string, nonce: string, counter: number, len: number): Uint8Array {
  const k = keyWords(unhex(key));
  const n = new DataView(unhex(nonce).buffer);
  const out = new Uint8Array(Math.ceil(len / 64) * 64);
  const block = new Uint32Array(16);
  for (let i = 0; i * 64 < len; i++) {
    chachaBlock(
      k,
      counter + i,
      n.getUint32(0, true),
      n.getUint32(4, true),
      n.getUint32(8, true),
      block,
    );
    const dv = new DataView(out.buffer, i * 64, 64);
    for (let w = 0; w < 16; w++) dv.setUint32(4 * w, block[w], true);
  }
  return out.subarray(0, len);
}

/** `node:crypto` keystream for SSH packet `seqno` from block `counter` (its IV: LE counter, nonce). */
function nodeKeystream(key: Uint8Array, seqno: number, counter: number, len: number): Uint8Array {
  const iv = new Uint8Array(16);
  new DataView(iv.buffer).setUint32(0, counter, true);
  new DataView(iv.buffer).setUint32(12, seqno, false);
  return new Uint8Array(createCipheriv("chacha20", key, iv).update(new Uint8Array(len)));
}

Deno.test("chacha20: RFC 8439 §2.3.2 block function test vector", () => {
  const key = Uint8Array.from({ length: 32 }, (_, i) => i);
  const out = new Uint32Array(16);
  // Counter 1, nonce 00:00:00:09:00:00:00:4a:00:00:00:00 as little-endian words.
  chachaBlock(keyWords(key), 1, 0x09000000, 0x4a000000, 0, out);
  assertEquals(out[0], 0xe4e7f110);
  assertEquals(out[15], 0x4e3c50a2);
  if (LITTLE_ENDIAN) {
    assertEquals(
      hex(new Uint8Array(out.buffer)),
      "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e" +
        "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e",
    );
  }
});

Deno.test("chacha20: RFC 8439 Appendix A.1 block vectors", () => {
  for (const [i, v] of CHACHA20_BLOCKS.entries()) {
    assertEquals(hex(rfcKeystream(v.key, v.nonce, v.counter, 64)), v.block, `A.1 #${i + 1}`);
  }
});

Deno.test("chacha20: RFC 8439 Appendix A.2 encryption vectors", () => {
  for (const [i, v] of CHACHA20_ENCRYPTIONS.entries()) {
    const plain = unhex(v.plain);
    const ks = rfcKeystream(v.key, v.nonce, v.counter, plain.length);
    assertEquals(hex(plain.map((b, j) => b ^ ks[j])), v.cipher, `A.2 #${i + 1}`);
    // Every A.2 nonce is 0…0‖n: the original ChaCha20 with SSH sequence number n, as the
    // packet code calls it.
    const n = new DataView(unhex(v.nonce).buffer);
    assertEquals(n.getUint32(0) + n.getUint32(4), 0);
    const buf = plain.slice();
    xorKeystream(keyWords(unhex(v.key)), n.getUint32(8), v.counter, buf, 0, buf.length);
    assertEquals(hex(buf), v.cipher, `A.2 #${i + 1} through xorKeystream`);
  }
});

Deno.test("chacha20: keyWords refuses a short key", () => {
  assertThrows(() => keyWords(new Uint8Array(31)), Error, "31 bytes");
});

Deno.test("chacha20: seqnoBlock is node:crypto's keystream block for that SSH packet", () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 32, maxLength: 32 }),
      fc.nat({ max: 0xffffffff }),
      fc.nat({ max: 5000 }),
      (key, seqno, counter) => {
        const out = new Uint32Array(16);
        seqnoBlock(keyWords(key), counter, seqno, out);
        const want = nodeKeystream(key, seqno, counter, 64);
        const dv = new DataView(want.buffer);
        for (let i = 0; i < 16; i++) assertEquals(out[i], dv.getUint32(4 * i, true));
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("chacha20: xorKeystream matches node:crypto at any length and alignment", () => {
  assert(LITTLE_ENDIAN, "the fast path is only used on little-endian platforms");
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 32, maxLength: 32 }),
      fc.nat({ max: 0xffffffff }),
      fc.nat({ max: 3 }),
      fc.uint8Array({ maxLength: 1500 }),
      fc.nat({ max: 9 }),
      fc.nat({ max: 7 }),
      (key, seqno, counter, data, off, viewOff) => {
        const want = nodeKeystream(key, seqno, counter, data.length).map((b, i) => b ^ data[i]);
        // The range starts at viewOff + off in its ArrayBuffer: aligned or not.
        const buf = new Uint8Array(new ArrayBuffer(viewOff + off + data.length + 3), viewOff);
        buf.set(data, off);
        xorKeystream(keyWords(key), seqno, counter, buf, off, data.length);
        assertEquals(hex(buf.subarray(off, off + data.length)), hex(want));
        // Nothing around the range is touched.
        assert(buf.subarray(0, off).every((b) => b === 0), "bytes before the range");
        assertEquals(Array.from(buf.subarray(off + data.length)), [0, 0, 0]);
      },
    ),
    { numRuns: 400 },
  );
});
