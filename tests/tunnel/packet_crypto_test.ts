/**
 * The WebAssembly ChaCha20 and packet code (lib/tunnel/chacha20.wat via packet_crypto.ts)
 * against references that share no code with it: `node:crypto`'s ChaCha20 keystream, RFC 8439's
 * A.2 vectors, and packets sealed from those pieces with ssh2's own (scalar) Poly1305. Lengths
 * cover every remainder around the four-block groups; a packet larger than the module's first
 * memory makes it grow. A wrong MAC is refused with nothing decrypted. And the assembled module
 * checked in is the one chacha20.wat assembles to.
 */

import { Buffer } from "node:buffer";
import { createCipheriv } from "node:crypto";
import fc from "fast-check";
import { assert, assertEquals } from "../helpers/assert.ts";
import { keyWords, seqnoBlock } from "../../lib/tunnel/chacha20.ts";
import { loadPacketCrypto } from "../../lib/tunnel/packet_crypto.ts";
import { loadPoly1305 } from "../../lib/tunnel/poly1305.ts";
import { generate } from "../../scripts/gen_wasm.ts";
import { CHACHA20_ENCRYPTIONS, hex, unhex } from "./rfc8439_vectors.ts";

const pc = (await loadPacketCrypto())!;
const BIG = 600 * 1024;
const { poly1305: scalarPoly } = await loadPoly1305(BIG, "scalar");

/** `node:crypto` keystream XOR for SSH packet `seqno` from block `counter`. */
function nodeXor(key: Uint8Array, seqno: number, counter: number, data: Uint8Array): Uint8Array {
  const iv = new Uint8Array(16);
  new DataView(iv.buffer).setUint32(0, counter, true);
  new DataView(iv.buffer).setUint32(12, seqno, false);
  return new Uint8Array(createCipheriv("chacha20", key, iv).update(data));
}

/**
 * A packet sealed from reference pieces: length field under the length key's block 0, body
 * under `node:crypto` from block 1, Poly1305 (ssh2's scalar build) keyed by the main key's
 * block 0 over both.
 */
function referenceSeal(
  main: Uint8Array,
  lenKey: Uint8Array,
  seqno: number,
  lenField: Uint8Array,
  body: Uint8Array,
): Uint8Array {
  const out = new Uint8Array(4 + body.length + 16);
  const block = new Uint32Array(16);
  seqnoBlock(keyWords(lenKey), 0, seqno, block);
  const lb = new Uint8Array(block.buffer);
  for (let i = 0; i < 4; i++) out[i] = lenField[i] ^ lb[i];
  out.set(nodeXor(main, seqno, 1, body), 4);
  seqnoBlock(keyWords(main), 0, seqno, block);
  scalarPoly(out.subarray(0, 4), out.subarray(4, 4 + body.length), lb, out, 4 + body.length);
  return out;
}

Deno.test("packet crypto: lib/tunnel/chacha20_wasm.ts is what chacha20.wat assembles to", async () => {
  const checkedIn = await Deno.readTextFile(
    new URL("../../lib/tunnel/chacha20_wasm.ts", import.meta.url),
  );
  assertEquals(checkedIn, await generate("chacha20.wat"));
});

Deno.test("packet crypto: the keystream is node:crypto's at any length, counter and seqno", () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 32, maxLength: 32 }),
      fc.nat({ max: 0xffffffff }),
      fc.nat({ max: 9 }),
      fc.oneof(fc.nat({ max: 1100 }), fc.constantFrom(255, 256, 257, 65536, 262_153)),
      (key, seqno, counter, len) => {
        const data = crypto.getRandomValues(new Uint8Array(Math.min(len, 65536)));
        const full = new Uint8Array(len);
        full.set(data);
        const want = nodeXor(key, seqno, counter, full);
        const got = full.slice();
        pc.xor(got, counter, seqno, key);
        assert(Buffer.compare(got, want) === 0, `keystream differs at length ${len}`);
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("packet crypto: RFC 8439 Appendix A.2 encryption vectors", () => {
  for (const [i, v] of CHACHA20_ENCRYPTIONS.entries()) {
    const buf = unhex(v.plain);
    pc.xor(buf, v.counter, new DataView(unhex(v.nonce).buffer).getUint32(8), unhex(v.key));
    assertEquals(hex(buf), v.cipher, `A.2 #${i + 1}`);
  }
});

Deno.test("packet crypto: seal and open agree with the reference, any body length", () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 32, maxLength: 32 }),
      fc.uint8Array({ minLength: 32, maxLength: 32 }),
      fc.nat({ max: 0xffffffff }),
      fc.oneof(
        fc.nat({ max: 300 }).map((n) => 8 * n + 8),
        fc.constantFrom(32_768, 65_536, 262_168),
      ),
      (main, lenKey, seqno, bodyLen) => {
        const packet = new Uint8Array(4 + bodyLen + 16);
        new DataView(packet.buffer).setUint32(0, bodyLen);
        packet[4] = 4; // padding length
        crypto.getRandomValues(packet.subarray(5, Math.min(4 + bodyLen, 65536)));
        const plainBody = packet.slice(4, 4 + bodyLen);
        const want = referenceSeal(main, lenKey, seqno, packet.subarray(0, 4), plainBody);
        pc.seal(packet, seqno, main, lenKey);
        assert(Buffer.compare(packet, want) === 0, `sealed ${bodyLen}-byte body differs`);
        assertEquals(pc.length(packet.subarray(0, 4), seqno, main, lenKey), bodyLen);
        const opened = pc.open(packet.subarray(0, 4), packet.subarray(4), seqno, main, lenKey);
        assert(opened !== undefined, "opened");
        assert(Buffer.compare(opened, plainBody) === 0, `opened ${bodyLen}-byte body differs`);
      },
    ),
    { numRuns: 120 },
  );
});

Deno.test("packet crypto: a packet larger than the first memory grows it, then all still works", () => {
  const main = crypto.getRandomValues(new Uint8Array(32));
  const lenKey = crypto.getRandomValues(new Uint8Array(32));
  for (const bodyLen of [BIG - 64, 1024, 520 * 1024]) {
    const packet = new Uint8Array(4 + bodyLen + 16);
    new DataView(packet.buffer).setUint32(0, bodyLen);
    const plain = packet.slice(4, 4 + bodyLen);
    const want = referenceSeal(main, lenKey, 77, packet.subarray(0, 4), plain);
    pc.seal(packet, 77, main, lenKey);
    assertEquals(Buffer.compare(packet, want), 0, `${bodyLen}-byte body`);
  }
});

Deno.test("packet crypto: a wrong MAC, length field or sequence number is refused, nothing opened", () => {
  const main = crypto.getRandomValues(new Uint8Array(32));
  const lenKey = crypto.getRandomValues(new Uint8Array(32));
  const packet = new Uint8Array(4 + 64 + 16);
  new DataView(packet.buffer).setUint32(0, 64);
  pc.seal(packet, 5, main, lenKey);
  const open = (p: Uint8Array, seqno = 5) =>
    pc.open(p.subarray(0, 4), p.subarray(4), seqno, main, lenKey);
  assert(open(packet) !== undefined, "the packet itself opens");
  for (const at of [0, 3, 4, 40, 67, 68, 83]) {
    const bad = packet.slice();
    bad[at] ^= 1;
    assertEquals(open(bad), undefined, `byte ${at} flipped`);
  }
  assertEquals(open(packet, 6), undefined, "another sequence number");
});
