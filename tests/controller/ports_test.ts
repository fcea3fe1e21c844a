import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import { allocatePorts, FETCH_BLOCKED_PORTS, pairIsFree } from "../../lib/controller/ports.ts";

Deno.test("allocatePorts picks the lowest pair with neither port used", () => {
  assertEquals(allocatePorts(new Set()), { kubernetes: 6001, kubesphere: 16001 });
  assertEquals(allocatePorts(new Set([6001])), { kubernetes: 6002, kubesphere: 16002 });
  // A kubesphere port taken by someone else blocks the pair too.
  assertEquals(allocatePorts(new Set([16001, 16002])), { kubernetes: 6003, kubesphere: 16003 });
});

Deno.test("every free pair is handed out once, never a fetch-blocked port, then exhaustion", () => {
  const used = new Set<number>();
  const pairs = 1000 - FETCH_BLOCKED_PORTS.size;
  for (let i = 0; i < pairs; i++) {
    const p = allocatePorts(used);
    assert(!used.has(p.kubernetes) && !used.has(p.kubesphere));
    assert(!FETCH_BLOCKED_PORTS.has(p.kubernetes), `${p.kubernetes} is blocked by fetch`);
    used.add(p.kubernetes);
    used.add(p.kubesphere);
  }
  assertEquals(used.size, 2 * pairs);
  assertThrows(() => allocatePorts(used), Error, "no free port pair");
});

Deno.test("pairIsFree", () => {
  assertEquals(pairIsFree({ kubernetes: 6000, kubesphere: 16000 }, new Set()), true);
  assertEquals(pairIsFree({ kubernetes: 6000 }, new Set()), false);
  assertEquals(pairIsFree({ kubernetes: 6000, kubesphere: 16000 }, new Set([16000])), false);
});
