import fc from "fast-check";
import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import { type PortClaim, portsUsedByOthers } from "../../lib/controller/claims.ts";
import { PortIndex } from "../../lib/controller/port_index.ts";
import { allocatePorts, DEFAULT_PORT_RANGE } from "../../lib/controller/ports.ts";

/** What the linear functions answer for `self` among `claims`, or the error. */
function linear(self: PortClaim, claims: PortClaim[], range: { min: number; max: number }) {
  const used = portsUsedByOthers(self, claims);
  try {
    return { used, pair: allocatePorts(used, range, new Set([6003])) };
  } catch (err) {
    return { used, error: (err as Error).message };
  }
}

Deno.test("property: the index answers exactly what a scan of every claim answers, through adds, moves and deletes", () => {
  const range = { min: 6000, max: 6015 };
  const port = fc.option(
    fc.integer({ min: 5998, max: 6017 }).chain((p) => fc.constantFrom(p, p + 10000)),
    { nil: undefined },
  );
  const op = fc.record({
    name: fc.constantFrom("a", "b", "c", "d", "e", "f"),
    created: fc.option(fc.constantFrom("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"), {
      nil: undefined,
    }),
    k: port,
    s: port,
    del: fc.boolean(),
  });
  fc.assert(
    fc.property(fc.array(op, { maxLength: 60 }), (ops) => {
      const index = new PortIndex(range, new Set([6003]));
      const claims = new Map<string, PortClaim>();
      for (const o of ops) {
        if (o.del) {
          index.delete(o.name);
          claims.delete(o.name);
        } else {
          const c = { name: o.name, created: o.created, kubernetesPort: o.k, kubespherePort: o.s };
          index.set(o.name, c);
          claims.set(o.name, c);
        }
        for (const self of [...claims.values(), { name: "new" }]) {
          const want = linear(self, [...claims.values()], range);
          const view = index.viewFor(self);
          for (let p = 5998; p <= 16017; p = p === 6017 ? 15998 : p + 1) {
            if (view.usedByOthers(p) !== want.used.has(p)) return false;
          }
          let got;
          try {
            got = view.lowestFreePair();
          } catch (err) {
            if (!("error" in want) || (err as Error).message !== want.error) return false;
            continue;
          }
          if (!("pair" in want) || JSON.stringify(got) !== JSON.stringify(want.pair)) return false;
        }
      }
      return true;
    }),
    { numRuns: 300 },
  );
});

Deno.test("the default range holds 10,000 clusters (issue 19) beside the agent and metrics ports, each pair once, then exhaustion", () => {
  const index = new PortIndex(DEFAULT_PORT_RANGE, new Set([8080, 9090]));
  const kubesphere = new Set<number>();
  const seen = new Set<number>();
  let n = 0;
  for (;;) {
    let pair;
    try {
      pair = index.viewFor({ name: `c${n}` }).lowestFreePair();
    } catch (err) {
      assert((err as Error).message.includes("no free port pair left in 6000-20080"));
      break;
    }
    assert(!seen.has(pair.kubernetes), `${pair.kubernetes} handed out twice`);
    assert(![6000, 10080, 8080, 9090].includes(pair.kubernetes), `${pair.kubernetes} is excluded`);
    assert(!kubesphere.has(pair.kubernetes), `${pair.kubernetes} is another's kubesphere port`);
    assert(!seen.has(pair.kubesphere), `${pair.kubesphere} is another's kubernetes port`);
    assert(pair.kubesphere < 32768, `${pair.kubesphere} is in Linux's ephemeral range`);
    seen.add(pair.kubernetes);
    kubesphere.add(pair.kubesphere);
    index.set(`c${n}`, {
      name: `c${n}`,
      ...{ kubernetesPort: pair.kubernetes, kubespherePort: pair.kubesphere },
    });
    n++;
  }
  assertEquals(n, 10_000);
  // A released pair is the next one handed out.
  index.delete("c500");
  const again = index.viewFor({ name: "late" }).lowestFreePair();
  assertEquals(index.isTaken(again.kubernetes), false);
  assert(again.kubernetes < 6600, `the lowest free pair, got ${again.kubernetes}`);
  index.set("late", {
    name: "late",
    kubernetesPort: again.kubernetes,
    kubespherePort: again.kubesphere,
  });
  assertThrows(() => index.viewFor({ name: "x" }).lowestFreePair(), Error, "no free port pair");
});
