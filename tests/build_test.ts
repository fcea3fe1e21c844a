/**
 * The build: `deno compile` arguments give each binary the permissions it
 * needs, and both entry points run under exactly those permissions (the
 * static module graph is complete: a dynamic import names a literal module that
 * `deno compile` bundles).
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

Deno.test("the binaries' module graph is static: dynamic imports only of literal specifiers it holds", async () => {
  for (const t of TARGETS) {
    const info = await run(Deno.execPath(), ["info", "--json", t.entry]);
    assertEquals(info.code, 0, info.stderr);
    const graph = JSON.parse(info.stdout);
    const local = graph.modules.filter((m: { specifier: string }) =>
      m.specifier.startsWith("file:")
    );
    for (const m of local) {
      const src = await Deno.readTextFile(new URL(m.specifier));
      // `import(x)` with a computed specifier would be missed by `deno compile`.
      assert(!/\bimport\s*\(\s*[^"'\s]/.test(src), `computed dynamic import in ${m.specifier}`);
      const literals = [...src.matchAll(/\bimport\s*\(\s*["']([^"']+)["']\s*\)/g)].map((x) => x[1]);
      const deps: { specifier: string; isDynamic?: boolean; code?: { specifier: string } }[] =
        m.dependencies ?? [];
      for (const spec of literals) {
        const dep = deps.find((d) => d.specifier === spec && d.isDynamic);
        assert(dep?.code?.specifier, `${m.specifier}: import("${spec}") not resolved in the graph`);
      }
    }
  }
});
