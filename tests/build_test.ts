/**
 * The build: `deno compile` arguments give each binary the permissions it
 * needs, and both entry points run under exactly those permissions (the
 * static module graph is complete: no dynamic imports to miss at compile time).
 */

import { assert, assertEquals, assertStringIncludes } from "./helpers/assert.ts";
import { run } from "./helpers/proc.ts";
import { compileArgs, TARGETS } from "../scripts/build.ts";

Deno.test("compile arguments: output in bin/, entry last, DENORT-independent flags", () => {
  for (const t of TARGETS) {
    const args = compileArgs(t);
    assertEquals(args[0], "compile");
    assertEquals(args.at(-1), t.entry);
    assert(args.includes(`bin/${t.name}`));
    assert(!args.includes("-A") && !args.includes("--allow-all"), "least privilege: no -A");
  }
});

Deno.test("entry points run with only the permissions the binaries get", async () => {
  for (const t of TARGETS) {
    const r = await run(Deno.execPath(), ["run", "--quiet", ...t.perms, t.entry, "--version"]);
    assertEquals(r.code, 0, r.stderr);
    assertStringIncludes(r.stdout, "v0.1.0");
  }
});

Deno.test("no dynamic import in the binaries' module graph", async () => {
  for (const t of TARGETS) {
    const info = await run(Deno.execPath(), ["info", "--json", t.entry]);
    assertEquals(info.code, 0, info.stderr);
    const graph = JSON.parse(info.stdout);
    const local = graph.modules.filter((m: { specifier: string }) =>
      m.specifier.startsWith("file:")
    );
    for (const m of local) {
      const src = await Deno.readTextFile(new URL(m.specifier));
      assert(!/\bimport\s*\(/.test(src), `dynamic import in ${m.specifier}`);
    }
  }
});
