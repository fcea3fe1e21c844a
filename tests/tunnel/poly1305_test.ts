/**
 * Our SIMD Poly1305: RFC 8439's test vector, the same tags as ssh2's scalar build for any
 * length (block pairs, a leftover full block, a partial block, all-ones limbs), and the
 * assembled module checked in is the one poly1305.wat assembles to.
 */

import fc from "fast-check";
import { assertEquals } from "../helpers/assert.ts";
import { loadPoly1305 } from "../../lib/tunnel/poly1305.ts";
import { generate } from "../../scripts/gen_poly1305.ts";

const MAX = 300 * 1024;
const simd = await loadPoly1305(MAX);
const ssh2 = await loadPoly1305(MAX, "ssh2");

function hex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/** The tag of `msg` (at least 4 bytes: the implementations take a length field and a body). */
function tag(p: typeof simd, msg: Uint8Array, key: Uint8Array): string {
  const out = new Uint8Array(16);
  p.poly1305(msg.subarray(0, 4), msg.subarray(4), key, out, 0);
  return hex(out);
}

Deno.test("poly1305: the SIMD build is the one in use here", () => {
  assertEquals(simd.kind, "simd");
  assertEquals(ssh2.kind, "ssh2");
});

Deno.test("poly1305: RFC 8439 §2.5.2 test vector, both builds", () => {
  const key = Uint8Array.from(
    "85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b".match(/../g)!,
    (h) => parseInt(h, 16),
  );
  const msg = new TextEncoder().encode("Cryptographic Forum Research Group");
  assertEquals(tag(simd, msg, key), "a8061dc1305136c6c22b8baf0c0127a9");
  assertEquals(tag(ssh2, msg, key), "a8061dc1305136c6c22b8baf0c0127a9");
});

Deno.test("poly1305: SIMD and ssh2's builds agree at any length, with extreme limbs", () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 32, maxLength: 32 }),
      fc.oneof(
        fc.integer({ min: 4, max: 200 }),
        fc.integer({ min: 4, max: 5000 }),
        fc.constantFrom(4, 35, 36, 51, 52, 67, 68, 4 + 256 * 1024 + 1020),
      ),
      fc.constantFrom("random", "ones", "zeros"),
      fc.boolean(),
      (key, len, fill, onesKey) => {
        const msg = new Uint8Array(len);
        if (fill === "random") {
          for (let o = 0; o < len; o += 65536) {
            crypto.getRandomValues(msg.subarray(o, Math.min(len, o + 65536)));
          }
        } else if (fill === "ones") msg.fill(0xff);
        if (onesKey) key.fill(0xff);
        assertEquals(tag(simd, msg, key), tag(ssh2, msg, key), `length ${len}, ${fill}`);
      },
    ),
    { numRuns: 400 },
  );
});

Deno.test("poly1305: lib/tunnel/poly1305_wasm.ts is what poly1305.wat assembles to", async () => {
  const checkedIn = await Deno.readTextFile(
    new URL("../../lib/tunnel/poly1305_wasm.ts", import.meta.url),
  );
  assertEquals(checkedIn, await generate());
});
