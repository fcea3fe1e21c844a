/**
 * The session registry's choices: round-robin over live sessions, those whose
 * channel opens failed lately last, `skip` honoured; and at the per-cluster
 * cap, which session a new one replaces.
 */

import { assert, assertEquals } from "../helpers/assert.ts";
import { type AgentSession, SessionRegistry } from "../../lib/proxy/registry.ts";

/** A session stand-in: only what the registry looks at. */
function fake(id: string): AgentSession & { closedFor?: string } {
  const s = {
    id,
    cluster: "c",
    token: "t",
    config: {} as AgentSession["config"],
    remoteAddress: "x",
    alive: true,
    channels: 0,
    closedFor: undefined as string | undefined,
    openStream: () => Promise.reject(new Error("unused")),
    close(reason: string) {
      s.closedFor = reason;
      s.alive = false;
    },
  };
  return s;
}

Deno.test("pick: round-robin, skipping dead and skipped sessions", () => {
  const reg = new SessionRegistry();
  const [a, b, c] = ["a", "b", "c"].map(fake);
  for (const s of [a, b, c]) reg.add(s);
  assertEquals([1, 2, 3, 4].map(() => reg.pick("c")!.id), ["a", "b", "c", "a"]);
  (b as { alive: boolean }).alive = false;
  assertEquals([1, 2, 3].map(() => reg.pick("c")!.id), ["c", "a", "c"]);
  assertEquals(reg.pick("c", new Set(["a", "c"])), undefined);
  assertEquals(reg.pick("other"), undefined);
});

Deno.test("pick: sessions whose opens failed come after the others, the fewest failures first", () => {
  const reg = new SessionRegistry();
  const [a, b, c] = ["a", "b", "c"].map(fake);
  for (const s of [a, b, c]) reg.add(s);
  reg.reportOpen(a, false);
  reg.reportOpen(b, false);
  reg.reportOpen(b, false);
  assertEquals([1, 2, 3].map(() => reg.pick("c")!.id), ["c", "c", "c"]);
  // With the healthy one tried (skipped), the one that failed least.
  assertEquals(reg.pick("c", new Set(["c"]))!.id, "a");
  assertEquals(reg.pick("c", new Set(["c", "a"]))!.id, "b");
  // A success clears a session's record.
  reg.reportOpen(b, true);
  const picks = new Set([1, 2, 3, 4].map(() => reg.pick("c")!.id));
  assertEquals(picks, new Set(["b", "c"]));
});

Deno.test("the cap: a new session closes the oldest failing one, or else the oldest", () => {
  const reg = new SessionRegistry({ maxPerCluster: 2 });
  const downs: string[] = [];
  reg.listen({ clusterDown: (c) => downs.push(c) });
  const [a, b, c, d] = ["a", "b", "c", "d"].map(fake);
  reg.add(a);
  reg.add(b);
  reg.add(c); // none failing: the oldest goes
  assert(a.closedFor?.includes("more than 2 sessions"), a.closedFor);
  assertEquals(reg.sessions("c").map((s) => s.id), ["b", "c"]);
  reg.reportOpen(c, false);
  reg.add(d); // c is failing: it goes before the older b
  assertEquals(c.closedFor !== undefined, true);
  assertEquals(b.closedFor, undefined);
  assertEquals(reg.sessions("c").map((s) => s.id), ["b", "d"]);
  assertEquals(downs, [], "the cluster never looked down while sessions were replaced");
  // Removal of a closed session later (its connection ends) changes nothing.
  reg.remove(a);
  assertEquals(reg.size, 2);
});
