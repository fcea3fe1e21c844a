/**
 * The README documents every flag the binaries accept, and the two commands it
 * opens with are the ones that exist.
 */

import { assert, assertStringIncludes } from "./helpers/assert.ts";
import { AGENT_FLAGS } from "../agent.ts";
import { JOIN_FLAGS, PROXY_FLAGS } from "../proxy.ts";

const readme = await Deno.readTextFile(new URL("../README.md", import.meta.url));

Deno.test("README lists every proxy, agent and join flag", () => {
  for (
    const [bin, flags] of [["proxy", PROXY_FLAGS], ["agent", AGENT_FLAGS], [
      "join",
      JOIN_FLAGS,
    ]] as const
  ) {
    for (const name of Object.keys(flags)) {
      if (name === "version") continue;
      assertStringIncludes(readme, `\`--${name}`, `${bin} flag --${name} is not documented`);
    }
  }
});

Deno.test("README opens with the demo and test commands, which are tasks", async () => {
  const deno = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));
  const head = readme.split("\n").slice(0, 15).join("\n");
  assertStringIncludes(head, "deno task demo");
  assertStringIncludes(head, "deno task test");
  assert(deno.tasks.demo && deno.tasks.test);
});
