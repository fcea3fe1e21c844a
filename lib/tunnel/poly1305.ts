/**
 * Poly1305 for the tunnel's ChaCha20-Poly1305: our SIMD WebAssembly build (./poly1305.wat, ~1.8x
 * ssh2's scalar Emscripten build on large packets), or ssh2's scalar build where WebAssembly
 * SIMD is missing (a warning says why). Both are wrapped as one function over a reused region
 * of the module's memory. Where SIMD works the link's packets go through ./packet_crypto.ts,
 * which calls the SIMD module's `mac` from WebAssembly; this wrapper serves the scalar path and
 * the tests that hold both builds to the references.
 * @module
 */

import { Buffer } from "node:buffer";
import createSsh2Poly1305 from "ssh2/lib/protocol/crypto/poly1305.js";
import { logger } from "../log.ts";
import { POLY1305_WASM_BASE64 } from "./poly1305_wasm.ts";

const log = logger("poly1305");

/**
 * Write Poly1305 of `lenField[0..4] ‖ body` under `key[0..32]` to `out[outOff..+16]`.
 * `body` is at most the `maxBody` given to {@link loadPoly1305}.
 */
export type Poly1305 = (
  lenField: Uint8Array,
  body: Uint8Array,
  key: Uint8Array,
  out: Uint8Array,
  outOff: number,
) => void;

/** Which implementation {@link loadPoly1305} chose: ours (SIMD) or ssh2's scalar build. */
export type Poly1305Kind = "simd" | "scalar";

interface Ssh2Poly1305 {
  HEAPU8: Uint8Array;
  _malloc(n: number): number;
  _poly1305_auth(
    out: number,
    m1: number,
    m1Len: number,
    m2: number,
    m2Len: number,
    key: number,
  ): void;
}

/** Offsets in our module's memory (see the layout in poly1305.wat). */
const KEY = 0;
const OUT = 32;
const MSG = 64;

async function loadSimd(maxBody: number): Promise<Poly1305 | undefined> {
  let instance: WebAssembly.Instance;
  try {
    ({ instance } = await WebAssembly.instantiate(Buffer.from(POLY1305_WASM_BASE64, "base64")));
  } catch (err) {
    log.warn("WebAssembly SIMD Poly1305 unavailable; using ssh2's scalar build (slower)", {
      error: String(err),
    });
    return undefined;
  }
  const { memory, mac } = instance.exports as {
    memory: WebAssembly.Memory;
    mac: (msg: number, len: number, key: number, out: number) => void;
  };
  if (MSG + 4 + maxBody > memory.buffer.byteLength) {
    log.warn("SIMD Poly1305 memory too small for the packet size; using ssh2's scalar build", {
      maxBody,
      memory: memory.buffer.byteLength,
    });
    return undefined;
  }
  const heap = new Uint8Array(memory.buffer); // the memory never grows
  return (lenField, body, key, out, outOff) => {
    heap.set(key.subarray(0, 32), KEY);
    heap.set(lenField.subarray(0, 4), MSG);
    heap.set(body, MSG + 4);
    mac(MSG, 4 + body.length, KEY, OUT);
    out.set(heap.subarray(OUT, OUT + 16), outOff);
  };
}

async function loadSsh2(maxBody: number): Promise<Poly1305> {
  const m = await (createSsh2Poly1305 as unknown as () => Promise<Ssh2Poly1305>)();
  const pOut = m._malloc(16);
  const pKey = m._malloc(32);
  const pMsg = m._malloc(4 + maxBody);
  return (lenField, body, key, out, outOff) => {
    const heap = m.HEAPU8; // read each time: Emscripten replaces the view if memory grows
    heap.set(lenField.subarray(0, 4), pMsg);
    heap.set(body, pMsg + 4);
    heap.set(key.subarray(0, 32), pKey);
    m._poly1305_auth(pOut, pMsg, 4, pMsg + 4, body.length, pKey);
    out.set(heap.subarray(pOut, pOut + 16), outOff);
  };
}

/**
 * The fastest Poly1305 available for bodies up to `maxBody` bytes: ours with SIMD, else
 * ssh2's scalar build (`prefer: "scalar"` forces that one).
 */
export async function loadPoly1305(
  maxBody: number,
  prefer?: Poly1305Kind,
): Promise<{ poly1305: Poly1305; kind: Poly1305Kind }> {
  if (prefer !== "scalar") {
    const simd = await loadSimd(maxBody);
    if (simd) return { poly1305: simd, kind: "simd" };
  }
  return { poly1305: await loadSsh2(maxBody), kind: "scalar" };
}
