/** Label and field selectors of the test API server. */

import { assertEquals, assertThrows } from "../helpers/assert.ts";
import { parseFieldSelector, parseLabelSelector, selectableFields } from "./selectors.ts";
import { ApiError, type KubeObject } from "./types.ts";

const obj = (labels: Record<string, string>, extra: Record<string, unknown> = {}): KubeObject => ({
  metadata: { name: "n1", namespace: "ns", labels },
  ...extra,
});

Deno.test("label selectors: equality, sets, existence", () => {
  const o = obj({ app: "web", tier: "fe" });
  const cases: [string, boolean][] = [
    ["app=web", true],
    ["app==web,tier=fe", true],
    ["app!=web", false],
    ["app in (db, web)", true],
    ["app notin (web)", false],
    ["missing notin (x)", true],
    ["app", true],
    ["!app", false],
    ["!missing", true],
    ["app=web,tier=be", false],
  ];
  for (const [sel, want] of cases) assertEquals(parseLabelSelector(sel)(o), want, sel);
  assertThrows(() => parseLabelSelector("app=(x"), ApiError);
});

Deno.test("field selectors: allowed fields only, as the real server", () => {
  const allowed = selectableFields({ group: "", plural: "secrets" });
  const o = obj({}, { type: "Opaque" });
  assertEquals(parseFieldSelector("metadata.name=n1,type=Opaque", allowed)(o), true);
  assertEquals(parseFieldSelector("metadata.namespace!=ns", allowed)(o), false);
  const err = assertThrows(() => parseFieldSelector("spec.foo=x", allowed), ApiError);
  assertEquals((err as ApiError).message, "field label not supported: spec.foo");
});
