import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import { allocatePorts, pairIsFree } from "../../lib/controller/ports.ts";

Deno.test("allocatePorts picks the lowest pair with neither port used", () => {
  assertEquals(allocatePorts(new Set()), { kubernetes: 6000, kubesphere: 16000 });
  assertEquals(allocatePorts(new Set([6000])), { kubernetes: 6001, kubesphere: 16001 });
  // A kubesphere port taken by someone else blocks the pair too.
  assertEquals(allocatePorts(new Set([16000, 16001])), { kubernetes: 6002, kubesphere: 16002 });
});

Deno.test("1000 sequential allocations never collide, then the range is exhausted", () => {
  const used = new Set<number>();
  for (let i = 0; i < 1000; i++) {
    const p = allocatePorts(used);
    assert(!used.has(p.kubernetes) && !used.has(p.kubesphere));
    used.add(p.kubernetes);
    used.add(p.kubesphere);
  }
  assertEquals(used.size, 2000);
  assertThrows(() => allocatePorts(used), Error, "no free port pair");
});

Deno.test("pairIsFree", () => {
  assertEquals(pairIsFree({ kubernetes: 6000, kubesphere: 16000 }, new Set()), true);
  assertEquals(pairIsFree({ kubernetes: 6000 }, new Set()), false);
  assertEquals(pairIsFree({ kubernetes: 6000, kubesphere: 16000 }, new Set([16000])), false);
});
