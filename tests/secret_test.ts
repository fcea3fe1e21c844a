import { assert, assertEquals, assertMatch } from "./helpers/assert.ts";
import { randomToken, secretsEqual } from "../lib/secret.ts";

Deno.test("randomToken is 256-bit hex and does not repeat", () => {
  const seen = new Set<string>();
  for (let i = 0; i < 200; i++) {
    const t = randomToken();
    assertMatch(t, /^[0-9a-f]{64}$/);
    seen.add(t);
  }
  assertEquals(seen.size, 200);
});

Deno.test("secretsEqual compares whole values, never matches empty", () => {
  const t = randomToken();
  assert(secretsEqual(t, t));
  assert(!secretsEqual(t.slice(0, 63), t));
  assert(!secretsEqual(t + "0", t));
  assert(!secretsEqual("", ""));
  assert(!secretsEqual(t.replace(/.$/, (c) => (c === "0" ? "1" : "0")), t));
});
