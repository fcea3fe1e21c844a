import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import {
  allocatePorts,
  FETCH_BLOCKED_PORTS,
  pairIsFree,
  parsePortRange,
} from "../../lib/controller/ports.ts";

Deno.test("allocatePorts picks the lowest pair with neither port used", () => {
  assertEquals(allocatePorts(new Set()), { kubernetes: 6001, kubesphere: 16001 });
  assertEquals(allocatePorts(new Set([6001])), { kubernetes: 6002, kubesphere: 16002 });
  // A kubesphere port taken by someone else blocks the pair too.
  assertEquals(allocatePorts(new Set([16001, 16002])), { kubernetes: 6003, kubesphere: 16003 });
});

Deno.test("every free pair is handed out once, never a fetch-blocked or reserved port, then exhaustion", () => {
  const used = new Set<number>();
  const range = { min: 6000, max: 6999 };
  const reserved = new Set([6100, 16200]);
  const blocked = [...FETCH_BLOCKED_PORTS].filter((p) => p >= 6000 && p <= 6999).length;
  const pairs = 1000 - blocked - reserved.size;
  for (let i = 0; i < pairs; i++) {
    const p = allocatePorts(used, range, reserved);
    assert(![6100, 6200].includes(p.kubernetes), `${p.kubernetes} is reserved`);
    assert(!used.has(p.kubernetes) && !used.has(p.kubesphere));
    assert(!FETCH_BLOCKED_PORTS.has(p.kubernetes), `${p.kubernetes} is blocked by fetch`);
    used.add(p.kubernetes);
    used.add(p.kubesphere);
  }
  assertEquals(used.size, 2 * pairs);
  assertThrows(() => allocatePorts(used, range, reserved), Error, "no free port pair");
});

Deno.test("the default range holds 10,000 pairs less the blocked ones; 10080 (fetch-blocked) is skipped", () => {
  const used = new Set<number>();
  for (let p = 6000; p < 10080; p++) used.add(p);
  assertEquals(allocatePorts(used), { kubernetes: 10081, kubesphere: 20081 });
  used.add(10081);
  used.add(15999);
  for (let p = 10082; p < 15999; p++) used.add(p);
  assertThrows(() => allocatePorts(used), Error, "no free port pair left in 6000-15999");
});

Deno.test("parsePortRange", () => {
  assertEquals(parsePortRange("6000-15999"), { min: 6000, max: 15999 });
  assertEquals(parsePortRange(" 7000 - 7001 "), { min: 7000, max: 7001 });
  assertThrows(() => parsePortRange("6000"), Error, "want MIN-MAX");
  assertThrows(() => parsePortRange("80-90"), Error, "from 1024 up");
  assertThrows(() => parsePortRange("7000-6000"), Error, "above");
  assertThrows(() => parsePortRange("6000-55536"), Error, "above 65535");
});

Deno.test("pairIsFree", () => {
  assertEquals(pairIsFree({ kubernetes: 6000, kubesphere: 16000 }, new Set()), true);
  assertEquals(pairIsFree({ kubernetes: 6000 }, new Set()), false);
  assertEquals(pairIsFree({ kubernetes: 6000, kubesphere: 16000 }, new Set([16000])), false);
});
