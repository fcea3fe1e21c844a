/** Merge, JSON and strategic merge patches of the test API server. */

import { assertEquals, assertThrows } from "../helpers/assert.ts";
import { jsonPatch, mergePatch, strategicMergePatch } from "./patch.ts";
import { ApiError } from "./types.ts";

Deno.test("merge patch: objects merge, null deletes, arrays replace", () => {
  assertEquals(
    mergePatch({ a: { b: 1, c: 2 }, l: [1, 2], k: 1 }, { a: { b: null, d: 3 }, l: [3], k: null }),
    { a: { c: 2, d: 3 }, l: [3] },
  );
});

Deno.test("JSON patch: add/remove/replace/move/copy/test", () => {
  const doc = { a: [1, 2], b: { c: "x" } };
  assertEquals(
    jsonPatch(doc, [
      { op: "add", path: "/a/-", value: 3 },
      { op: "remove", path: "/a/0" },
      { op: "replace", path: "/b/c", value: "y" },
      { op: "copy", from: "/b/c", path: "/d" },
      { op: "move", from: "/d", path: "/e~1f" },
      { op: "test", path: "/e~1f", value: "y" },
    ]),
    { a: [2, 3], b: { c: "y" }, "e/f": "y" },
  );
  assertEquals(doc, { a: [1, 2], b: { c: "x" } }, "input untouched");
  const err = assertThrows(
    () => jsonPatch(doc, [{ op: "test", path: "/a/0", value: 9 }]),
    ApiError,
  );
  assertEquals((err as ApiError).code, 422);
  assertEquals(
    (assertThrows(() => jsonPatch(doc, [{ op: "remove", path: "/nope" }]), ApiError) as ApiError)
      .code,
    400,
  );
});

Deno.test("strategic merge patch: merge keys and directives", () => {
  const svc = {
    spec: {
      ports: [{ port: 80, name: "a" }, { port: 81, name: "b" }],
      selector: { app: "x", tier: "y" },
    },
    metadata: { finalizers: ["f1", "f2"] },
  };
  assertEquals(
    strategicMergePatch(svc, {
      spec: {
        ports: [{ port: 81, $patch: "delete" }, { port: 82, name: "c" }],
        "$setElementOrder/ports": [{ port: 80 }, { port: 82 }],
        selector: { tier: null },
      },
      metadata: { "$deleteFromPrimitiveList/finalizers": ["f1"] },
    }),
    {
      spec: { ports: [{ port: 80, name: "a" }, { port: 82, name: "c" }], selector: { app: "x" } },
      metadata: { finalizers: ["f2"] },
    },
  );
  assertEquals(
    strategicMergePatch({ spec: { a: 1, b: 2 } }, { spec: { $patch: "replace", c: 3 } }),
    { spec: { c: 3 } },
  );
  assertEquals(
    strategicMergePatch({ spec: { a: 1, b: 2 } }, { spec: { $retainKeys: ["b"], b: 5 } }),
    { spec: { b: 5 } },
  );
});
