/**
 * Assemble lib/tunnel/poly1305.wat into lib/tunnel/poly1305_wasm.ts (the module as base64), so
 * the binaries need no assembler. `deno run -A scripts/gen_poly1305.ts`; `--check` only reports
 * whether the generated file is current (exit 1 if not).
 * @module
 */

import { Buffer } from "node:buffer";
import wabtInit from "wabt";

const WAT = new URL("../lib/tunnel/poly1305.wat", import.meta.url);
const OUT = new URL("../lib/tunnel/poly1305_wasm.ts", import.meta.url);

/** The generated module's source text for the `.wat` file's current contents. */
export async function generate(): Promise<string> {
  const wabt = await wabtInit();
  const mod = wabt.parseWat("poly1305.wat", await Deno.readTextFile(WAT), {
    simd: true,
    bulk_memory: true,
  });
  try {
    mod.validate();
    const b64 = Buffer.from(mod.toBinary({}).buffer).toString("base64");
    const lines = b64.match(/.{1,96}/g)!.map((l) => `  "${l}"`).join(" +\n");
    return `/**
 * Poly1305 for WebAssembly with SIMD, assembled from ./poly1305.wat by scripts/gen_poly1305.ts
 * (generated: do not edit). Exports \`memory\` and \`mac(msg, len, key, out)\`.
 * @module
 */

/** The module's bytes, base64. */
export const POLY1305_WASM_BASE64: string =
${lines};
`;
  } finally {
    mod.destroy();
  }
}

if (import.meta.main) {
  const text = await generate();
  if (Deno.args.includes("--check")) {
    const current = await Deno.readTextFile(OUT).catch(() => "");
    if (current !== text) {
      console.error("lib/tunnel/poly1305_wasm.ts is out of date: run scripts/gen_poly1305.ts");
      Deno.exit(1);
    }
  } else {
    await Deno.writeTextFile(OUT, text);
    console.log(`wrote ${OUT.pathname}`);
  }
}
