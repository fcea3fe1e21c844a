/**
 * Admission slots: free slots for anyone, and when full a newcomer from a
 * less busy source takes the busiest source's oldest slot; sources group
 * IPv6 addresses by /64.
 */

import { assert, assertEquals } from "../helpers/assert.ts";
import { AdmissionSlots, sourceKey } from "../../lib/proxy/admission.ts";

Deno.test("sourceKey: IPv4 as is, IPv4-mapped IPv6 as IPv4, IPv6 by /64", () => {
  assertEquals(sourceKey("10.1.2.3"), "10.1.2.3");
  assertEquals(sourceKey("::ffff:10.1.2.3"), "10.1.2.3");
  assertEquals(sourceKey("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
  assertEquals(sourceKey("[2001:0db8:1:2:bbbb:cccc:dddd:eeee]"), "2001:db8:1:2::/64");
  assertEquals(sourceKey("2001:db8::1"), "2001:db8:0:0::/64");
  assertEquals(sourceKey("fe80::1%eth0"), "fe80:0:0:0::/64");
  assertEquals(sourceKey("::1"), "0:0:0:0::/64");
});

Deno.test("one source may use every free slot; when full, others take its oldest, one each", () => {
  const slots = new AdmissionSlots(4);
  const evicted: string[] = [];
  const flood = [0, 1, 2, 3].map((i) => slots.take("10.0.0.2", () => evicted.push(`f${i}`)));
  assert(flood.every(Boolean), "free slots are anyone's");
  assertEquals(slots.take("10.0.0.2", () => {}), undefined, "a full table refuses the busiest");
  // Another source gets in at the flooder's expense, oldest first.
  const a = slots.take("10.0.0.3", () => evicted.push("a"));
  assert(a);
  assertEquals(evicted, ["f0"]);
  const b = slots.take("10.0.0.4", () => evicted.push("b"));
  assert(b);
  assertEquals(evicted, ["f0", "f1"]);
  // Now 2/1/1: a source holding one may not evict one holding two (it would only swap).
  assertEquals(slots.take("10.0.0.3", () => {}), undefined);
  assertEquals(slots.held("10.0.0.2"), 2);
  // An IPv6 neighbour in the same /64 counts as the same source.
  const v6 = [slots.take("2001:db8::5", () => evicted.push("v6"))];
  assert(v6[0], "a new source evicts from the busiest (10.0.0.2)");
  assertEquals(slots.take("2001:db8::6", () => {}), undefined, "same /64: holds one already");
  // Released slots are free again; a second release changes nothing.
  a!.release();
  a!.release();
  assertEquals(slots.size, 3);
  assert(slots.take("10.0.0.9", () => {}));
  assertEquals(slots.size, 4);
});
