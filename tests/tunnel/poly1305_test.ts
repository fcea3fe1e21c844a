/**
 * Our Poly1305 builds (SIMD, and ssh2's scalar one) against RFC 8439's vectors (§2.5.2 and all
 * of Appendix A.3) and against references that share no code with them: a BigInt Poly1305
 * written here from the RFC's definition, the tag of `node:crypto`'s chacha20-poly1305 AEAD,
 * and OpenSSL's own Poly1305 (`openssl mac`). Lengths cover multiples of 16 and 32 bytes (the
 * SIMD build takes blocks in pairs), with all-0xff blocks and keys whose r sits at the clamping
 * limits. Also: the assembled module checked in is the one poly1305.wat assembles to.
 */

import { Buffer } from "node:buffer";
import { createCipheriv, randomBytes } from "node:crypto";
import fc from "fast-check";
import { assertEquals } from "../helpers/assert.ts";
import { commandWorks, requireTools } from "../helpers/tools.ts";
import { loadPoly1305 } from "../../lib/tunnel/poly1305.ts";
import { generate } from "../../scripts/gen_wasm.ts";
import { hex, POLY1305_VECTORS, unhex } from "./rfc8439_vectors.ts";

const MAX = 300 * 1024;
const simd = await loadPoly1305(MAX);
const scalar = await loadPoly1305(MAX, "scalar");
const BUILDS = [simd, scalar];

/** The tag of `msg` (at least 4 bytes: the implementations take a length field and a body). */
function tag(p: typeof simd, msg: Uint8Array, key: Uint8Array): string {
  const out = new Uint8Array(16);
  p.poly1305(msg.subarray(0, 4), msg.subarray(4), key, out, 0);
  return hex(out);
}

/** Little-endian bytes as a BigInt. */
function le(b: Uint8Array): bigint {
  let n = 0n;
  for (let i = b.length - 1; i >= 0; i--) n = (n << 8n) | BigInt(b[i]);
  return n;
}

const P = (1n << 130n) - 5n;
const CLAMP = 0x0ffffffc0ffffffc0ffffffc0fffffffn;

/** Poly1305 straight from RFC 8439 §2.5.1, in BigInt arithmetic. */
function reference(key: Uint8Array, msg: Uint8Array): string {
  const r = le(key.subarray(0, 16)) & CLAMP;
  const s = le(key.subarray(16, 32));
  let acc = 0n;
  for (let i = 0; i < msg.length; i += 16) {
    const block = msg.subarray(i, Math.min(msg.length, i + 16));
    acc = ((acc + le(block) + (1n << BigInt(8 * block.length))) * r) % P;
  }
  acc = (acc + s) & ((1n << 128n) - 1n);
  const out = new Uint8Array(16);
  for (let i = 0; i < 16; i++, acc >>= 8n) out[i] = Number(acc & 0xffn);
  return hex(out);
}

/** Edge keys: r at the clamping limits (every r bit the clamp allows set, or none), s all ones. */
const EDGE_KEYS: Record<string, Uint8Array> = {
  "all 0xff (largest r, s = 2^128-1)": new Uint8Array(32).fill(0xff),
  "r = 0": Uint8Array.from({ length: 32 }, (_, i) => (i < 16 ? 0 : 0xff)),
  "r = 1": Uint8Array.from({ length: 32 }, (_, i) => (i === 0 ? 1 : i < 16 ? 0 : 0x5a)),
  "largest r limbs, s = 0": Uint8Array.from({ length: 32 }, (_, i) => (i < 16 ? 0xff : 0)),
  "r bits just above the clamp": Uint8Array.from(
    { length: 32 },
    (_, i) => ([3, 7, 11, 15].includes(i) ? 0xf0 : [4, 8, 12].includes(i) ? 0x03 : 0),
  ),
};

function message(len: number, fill: "random" | "ones" | "zeros"): Uint8Array {
  const msg = new Uint8Array(len);
  if (fill === "ones") msg.fill(0xff);
  else if (fill === "random") {
    for (let o = 0; o < len; o += 65536) {
      crypto.getRandomValues(msg.subarray(o, Math.min(len, o + 65536)));
    }
  }
  return msg;
}

/** Lengths ≥ 4: multiples of 16 and 32 (and one either side), small and up to a 256 KiB packet. */
const LENGTHS = fc.oneof(
  fc.integer({ min: 1, max: 64 }).map((n) => 32 * n),
  fc.integer({ min: 1, max: 64 }).map((n) => 16 * n),
  fc.tuple(fc.integer({ min: 1, max: 300 }), fc.constantFrom(-1, 1)).map(([n, d]) => 16 * n + d),
  fc.integer({ min: 4, max: 5000 }),
  fc.constantFrom(4, 32, 64, 96, 4096, 65536, 256 * 1024, 256 * 1024 + 32, 4 + 256 * 1024 + 1020),
);

Deno.test("poly1305: the SIMD build is the one in use here", () => {
  assertEquals(simd.kind, "simd");
  assertEquals(scalar.kind, "scalar");
});

Deno.test("poly1305: RFC 8439 §2.5.2 and every Appendix A.3 vector, both builds", () => {
  for (const v of POLY1305_VECTORS) {
    assertEquals(reference(unhex(v.key), unhex(v.msg)), v.tag, `${v.name}: BigInt reference`);
    for (const b of BUILDS) assertEquals(tag(b, unhex(v.msg), unhex(v.key)), v.tag, v.name);
  }
});

Deno.test("poly1305: both builds equal the BigInt reference at any length, extreme limbs", () => {
  fc.assert(
    fc.property(
      fc.oneof(
        fc.uint8Array({ minLength: 32, maxLength: 32 }),
        fc.constantFrom(...Object.values(EDGE_KEYS)),
      ),
      LENGTHS,
      fc.constantFrom("random", "ones", "zeros") as fc.Arbitrary<"random" | "ones" | "zeros">,
      (key, len, fill) => {
        const msg = message(Math.max(4, len), fill);
        const want = reference(key, msg);
        for (const b of BUILDS) {
          assertEquals(tag(b, msg, key), want, `${b.kind}, length ${msg.length}, ${fill}`);
        }
      },
    ),
    { numRuns: 250 },
  );
});

Deno.test("poly1305: every edge key × all-0xff and zero messages at multiples of 16 and 32", () => {
  for (const [name, key] of Object.entries(EDGE_KEYS)) {
    for (const len of [16, 32, 48, 64, 96, 128, 160, 1024, 4096, 32 * 1024 + 32]) {
      for (const fill of ["ones", "zeros"] as const) {
        const msg = message(len, fill);
        const want = reference(key, msg);
        for (const b of BUILDS) assertEquals(tag(b, msg, key), want, `${b.kind} ${name} ${len}`);
      }
    }
  }
});

/**
 * The tag `node:crypto`'s chacha20-poly1305 gives `plain` under `key`/`nonce`, and the message
 * and one-time key it authenticated (RFC 8439 §2.8: ciphertext, padding, the two lengths).
 */
function aead(key: Uint8Array, nonce: Uint8Array, plain: Uint8Array) {
  const c = createCipheriv("chacha20-poly1305", key, nonce, { authTagLength: 16 });
  const ct = Buffer.concat([c.update(plain), c.final()]);
  const pad = (16 - (ct.length % 16)) % 16;
  const msg = Buffer.alloc(ct.length + pad + 16);
  ct.copy(msg, 0);
  msg.writeBigUInt64LE(BigInt(ct.length), ct.length + pad + 8); // aad length 0 before it
  const iv = Buffer.concat([Buffer.alloc(4), nonce]); // block counter 0
  const otk = createCipheriv("chacha20", key, iv).update(Buffer.alloc(32));
  return {
    tag: c.getAuthTag().toString("hex"),
    msg: new Uint8Array(msg),
    otk: new Uint8Array(otk),
  };
}

Deno.test("poly1305: both builds give node:crypto's chacha20-poly1305 tags", () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 32, maxLength: 32 }),
      fc.uint8Array({ minLength: 12, maxLength: 12 }),
      // Plaintext lengths 32k + 16 make the MAC input a multiple of 32 bytes.
      fc.oneof(fc.integer({ min: 0, max: 200 }).map((n) => 32 * n + 16), fc.nat(3000)),
      fc.boolean(),
      (key, nonce, len, ones) => {
        const plain = ones ? new Uint8Array(len).fill(0xff) : new Uint8Array(randomBytes(len));
        const { tag: want, msg, otk } = aead(key, nonce, plain);
        for (const b of BUILDS) assertEquals(tag(b, msg, otk), want, `${b.kind}, length ${len}`);
      },
    ),
    { numRuns: 200 },
  );
});

const openssl = await requireTools(
  "OpenSSL Poly1305",
  commandWorks("openssl", ["mac", "-macopt", `hexkey:${"00".repeat(32)}`, "POLY1305"]),
  "apt-get install -y openssl",
);

/** OpenSSL's tag for `msg` under `key`. */
async function opensslTag(key: Uint8Array, msg: Uint8Array): Promise<string> {
  const p = new Deno.Command("openssl", {
    args: ["mac", "-macopt", `hexkey:${hex(key)}`, "POLY1305"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const w = p.stdin.getWriter();
  await w.write(msg);
  await w.close();
  const out = await p.output();
  if (!out.success) throw new Error(`openssl mac: ${new TextDecoder().decode(out.stderr)}`);
  return new TextDecoder().decode(out.stdout).trim().toLowerCase();
}

Deno.test({
  name: "poly1305: both builds give OpenSSL's tags (RFC vectors, edge keys, random keys)",
  ignore: openssl.ignore,
  fn: async () => {
    openssl.check();
    const cases: { key: Uint8Array; msg: Uint8Array; what: string }[] = POLY1305_VECTORS.map(
      (v) => ({ key: unhex(v.key), msg: unhex(v.msg), what: v.name }),
    );
    for (const [name, key] of Object.entries(EDGE_KEYS)) {
      for (const len of [32, 64, 4096]) {
        cases.push({ key, msg: message(len, "ones"), what: `${name}, ${len} × 0xff` });
      }
    }
    for (const len of [4, 17, 32, 48, 64, 96, 1000, 1024, 65536, 256 * 1024]) {
      cases.push({
        key: new Uint8Array(randomBytes(32)),
        msg: message(len, "random"),
        what: `random, ${len}`,
      });
    }
    for (const c of cases) {
      const want = await opensslTag(c.key, c.msg);
      for (const b of BUILDS) assertEquals(tag(b, c.msg, c.key), want, `${b.kind}: ${c.what}`);
    }
  },
});

Deno.test("poly1305: lib/tunnel/poly1305_wasm.ts is what poly1305.wat assembles to", async () => {
  const checkedIn = await Deno.readTextFile(
    new URL("../../lib/tunnel/poly1305_wasm.ts", import.meta.url),
  );
  assertEquals(checkedIn, await generate("poly1305.wat"));
});
