/**
 * The CPU-profile summary: self and inclusive time, idle left out, `--under` filtering and the
 * callers of the matching frame.
 */

import { assertEquals } from "../helpers/assert.ts";
import { type CpuProfile, summarise } from "../../scripts/bench/profile.ts";

const frame = (functionName: string, url = "") => ({ functionName, url, lineNumber: 0 });

// (root) → a → b, and (root) → (idle); recursion a → a counts once inclusively.
const profile: CpuProfile = {
  nodes: [
    { id: 1, callFrame: frame("(root)"), children: [2, 4] },
    { id: 2, callFrame: frame("a", "file:///x/lib/a.ts"), children: [3, 5] },
    { id: 3, callFrame: frame("b", "file:///x/lib/b.ts") },
    { id: 4, callFrame: frame("(idle)") },
    { id: 5, callFrame: frame("a", "file:///x/lib/a.ts") },
  ],
  samples: [3, 3, 2, 4, 4, 4, 5],
  timeDeltas: [10, 10, 5, 100, 100, 100, 7],
};

Deno.test("profile summary: self and inclusive time of busy samples", () => {
  const s = summarise(profile);
  assertEquals(s.totalUs, 332);
  assertEquals(s.busyUs, 32);
  assertEquals(s.self.map((r) => [r.name, r.us]), [["b lib/b.ts:1", 20], ["a lib/a.ts:1", 12]]);
  assertEquals(s.inclusive.map((r) => [r.name, r.us]), [["a lib/a.ts:1", 32], [
    "b lib/b.ts:1",
    20,
  ]]);
  assertEquals(s.inclusive[0].share, 1);
});

Deno.test("profile summary: --under keeps only stacks through a matching frame", () => {
  const s = summarise(profile, /^b /);
  assertEquals(s.busyUs, 20);
  assertEquals(s.self.map((r) => r.name), ["b lib/b.ts:1"]);
  assertEquals(s.callers.map((r) => [r.name, r.us]), [["a lib/a.ts:1", 20]]);
});

Deno.test("profile summary: callers are those of the outermost matching frame", () => {
  // a → b and a → a: for /^a /, the outermost a's caller is the root either way.
  const s = summarise(profile, /^a /);
  assertEquals(s.busyUs, 32);
  assertEquals(s.callers.map((r) => [r.name, r.us]), [["(top level)", 32]]);
  assertEquals(summarise(profile).callers, []);
});
