/**
 * Assemble the tunnel's WebAssembly modules (`lib/tunnel/*.wat`) into TypeScript modules holding
 * their bytes as base64 (`lib/tunnel/*_wasm.ts`), so the binaries need no assembler:
 * `deno run -A scripts/gen_wasm.ts`; `--check` only reports whether the generated files are
 * current (exit 1 if not).
 * @module
 */

import { Buffer } from "node:buffer";
import wabtInit from "wabt";

/** A module to assemble: its source, the generated file, and what the file says about it. */
interface WasmModule {
  wat: string;
  out: string;
  constName: string;
  doc: string;
}

const MODULES: WasmModule[] = [
  {
    wat: "poly1305.wat",
    out: "poly1305_wasm.ts",
    constName: "POLY1305_WASM_BASE64",
    doc:
      "Poly1305 for WebAssembly with SIMD, assembled from ./poly1305.wat by scripts/gen_wasm.ts\n" +
      " * (generated: do not edit). Exports `memory` and `mac(msg, len, key, out)`.",
  },
  {
    wat: "chacha20.wat",
    out: "chacha20_wasm.ts",
    constName: "CHACHA20_WASM_BASE64",
    doc:
      "ChaCha20 and SSH packet sealing for WebAssembly with SIMD, assembled from ./chacha20.wat by\n" +
      " * scripts/gen_wasm.ts (generated: do not edit). Imports poly1305.wat's `memory` and `mac`;\n" +
      " * exports `seal`, `open`, `check`, `length`, `xor` and the offsets `PKT`, `MAIN_KEY`, `LEN_KEY`.",
  },
];

const dir = new URL("../lib/tunnel/", import.meta.url);

/** The generated module's source text for `.wat` file `wat`'s current contents. */
export async function generate(wat: string): Promise<string> {
  const m = MODULES.find((x) => x.wat === wat);
  if (!m) throw new Error(`unknown module ${wat}`);
  const wabt = await wabtInit();
  const mod = wabt.parseWat(m.wat, await Deno.readTextFile(new URL(m.wat, dir)), {
    simd: true,
    bulk_memory: true,
  });
  try {
    mod.validate();
    const b64 = Buffer.from(mod.toBinary({}).buffer).toString("base64");
    const lines = b64.match(/.{1,96}/g)!.map((l) => `  "${l}"`).join(" +\n");
    return `/**
 * ${m.doc}
 * @module
 */

/** The module's bytes, base64. */
export const ${m.constName}: string =
${lines};
`;
  } finally {
    mod.destroy();
  }
}

if (import.meta.main) {
  let stale = false;
  for (const m of MODULES) {
    const text = await generate(m.wat);
    const out = new URL(m.out, dir);
    if (Deno.args.includes("--check")) {
      const current = await Deno.readTextFile(out).catch(() => "");
      if (current !== text) {
        console.error(`lib/tunnel/${m.out} is out of date: run scripts/gen_wasm.ts`);
        stale = true;
      }
    } else {
      await Deno.writeTextFile(out, text);
      console.log(`wrote ${out.pathname}`);
    }
  }
  if (stale) Deno.exit(1);
}
