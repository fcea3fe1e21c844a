/** Structural-schema pruning and validation of custom resources. */

import { assertEquals } from "../helpers/assert.ts";
import { pruneAndValidate } from "./schema.ts";

const schema = {
  type: "object",
  properties: {
    spec: {
      type: "object",
      required: ["name"],
      properties: {
        name: { type: "string" },
        size: { type: "integer" },
        mode: { type: "string", enum: ["a", "b"] },
        data: { type: "string", format: "byte" },
        at: { type: "string", format: "date-time" },
        free: { type: "object", "x-kubernetes-preserve-unknown-fields": true },
        labels: { type: "object", additionalProperties: { type: "string" } },
      },
    },
  },
};

Deno.test("schema: unknown fields pruned and reported; metadata kept", () => {
  const r = pruneAndValidate({
    apiVersion: "x/v1",
    kind: "X",
    metadata: { name: "n", anything: 1 },
    spec: { name: "n", extra: 1, free: { any: { thing: 1 } }, labels: { a: "b" } },
    top: 1,
  }, schema);
  assertEquals(r.errors, []);
  assertEquals(r.unknownFields, ["spec.extra", "top"]);
  assertEquals(r.object, {
    apiVersion: "x/v1",
    kind: "X",
    metadata: { name: "n", anything: 1 },
    spec: { name: "n", free: { any: { thing: 1 } }, labels: { a: "b" } },
  });
});

Deno.test("schema: type, enum, required and byte format are checked", () => {
  const r = pruneAndValidate(
    { spec: { size: 1.5, mode: "c", data: "not base64!", at: "yesterday" } },
    schema,
  );
  assertEquals(r.errors.map((e) => [e.field, e.reason]), [
    ["spec.name", "FieldValueRequired"],
    ["spec.size", "FieldValueTypeInvalid"],
    ["spec.mode", "FieldValueNotSupported"],
    ["spec.data", "FieldValueInvalid"],
    ["spec.at", "FieldValueInvalid"],
  ]);
  const ok = pruneAndValidate(
    { spec: { name: "n", at: "2026-11-23T07:00:00Z", data: btoa("x") } },
    schema,
  );
  assertEquals(ok.errors, []);
});
