/**
 * Port allocation: the lowest free pair, each pair once, never a port `fetch` refuses to dial,
 * then exhaustion.
 * @module
 */

import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import { allocatePorts, pairIsFree, parsePortRange } from "../../lib/controller/ports.ts";

/**
 * The Fetch standard's bad ports (https://fetch.spec.whatwg.org/#port-blocking), which browsers
 * and fetch-based clients (Deno's, Node's undici) refuse to connect to. Written out here from the
 * standard, not taken from the implementation, as of its 2025 revision (port 0 added).
 */
// deno-fmt-ignore
const FETCH_BAD_PORTS: ReadonlySet<number> = new Set([
  0, 1, 7, 9, 11, 13, 15, 17, 19, 20, 21, 22, 23, 25, 37, 42, 43, 53, 69, 77, 79, 87, 95, 101,
  102, 103, 104, 109, 110, 111, 113, 115, 117, 119, 123, 135, 137, 139, 143, 161, 179, 389, 427,
  465, 512, 513, 514, 515, 526, 530, 531, 532, 540, 548, 554, 556, 563, 587, 601, 636, 989, 990,
  993, 995, 1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060, 5061, 6000, 6566, 6665, 6666, 6667,
  6668, 6669, 6679, 6697, 10080,
]);

Deno.test("allocatePorts picks the lowest pair with neither port used", () => {
  assertEquals(allocatePorts(new Set()), { kubernetes: 6001, kubesphere: 16001 });
  assertEquals(allocatePorts(new Set([6001])), { kubernetes: 6002, kubesphere: 16002 });
  // A kubesphere port taken by someone else blocks the pair too.
  assertEquals(allocatePorts(new Set([16001, 16002])), { kubernetes: 6003, kubesphere: 16003 });
});

Deno.test("every free pair is handed out once, never a fetch-blocked or reserved port, then exhaustion", () => {
  // The ranges of the original tower: kubernetes 6000–6999, kubesphere that + 10000.
  const range = { min: 6000, max: 6999 };
  const reserved = new Set([6100, 16200]);
  const usable = (p: number) =>
    !FETCH_BAD_PORTS.has(p) && !FETCH_BAD_PORTS.has(p + 10_000) && !reserved.has(p) &&
    !reserved.has(p + 10_000);
  const pairs = Array.from({ length: 1000 }, (_, i) => 6000 + i).filter(usable).length;
  assertEquals(pairs, 1000 - 9 - 2, "6000, 6566, 6665–6669, 6679, 6697 and the reserved left out");
  const used = new Set<number>();
  for (let i = 0; i < pairs; i++) {
    const p = allocatePorts(used, range, reserved);
    assert(usable(p.kubernetes), `${p.kubernetes} is blocked or reserved`);
    assert(!used.has(p.kubernetes) && !used.has(p.kubesphere));
    assert(!FETCH_BAD_PORTS.has(p.kubernetes), `${p.kubernetes} is blocked by fetch`);
    assert(!FETCH_BAD_PORTS.has(p.kubesphere), `${p.kubesphere} is blocked by fetch`);
    assertEquals(p.kubesphere, p.kubernetes + 10_000);
    used.add(p.kubernetes);
    used.add(p.kubesphere);
  }
  assertEquals(used.size, 2 * pairs);
  assertThrows(() => allocatePorts(used, range, reserved), Error, "no free port pair");
});

Deno.test("the default range skips 10080 (fetch-blocked) and ends at 20080", () => {
  const used = new Set<number>();
  for (let p = 6000; p < 10080; p++) used.add(p);
  assertEquals(allocatePorts(used), { kubernetes: 10081, kubesphere: 20081 });
  for (let p = 6000; p <= 30080; p++) used.add(p);
  assertThrows(() => allocatePorts(used), Error, "no free port pair left in 6000-20080");
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
