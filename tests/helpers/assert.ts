/**
 * Assertions for the suite (`jsr:@std/assert` is not reachable here), thin
 * wrappers over `node:assert/strict` with std-like names.
 * @module
 */

import nodeAssert from "node:assert/strict";

// node:assert's typings reject an `undefined` message; ours is optional.
interface NodeAssert {
  ok(value: unknown, message?: string): void;
  deepStrictEqual(actual: unknown, expected: unknown, message?: string): void;
  notDeepStrictEqual(actual: unknown, expected: unknown, message?: string): void;
  match(value: string, re: RegExp, message?: string): void;
  AssertionError: typeof nodeAssert.AssertionError;
}
const assert: NodeAssert = nodeAssert as unknown as NodeAssert;

/** Deep equality. */
export function assertEquals<T>(actual: T, expected: T, msg?: string): void {
  assert.deepStrictEqual(actual, expected, msg);
}

/** Deep inequality. */
export function assertNotEquals<T>(actual: T, expected: T, msg?: string): void {
  assert.notDeepStrictEqual(actual, expected, msg);
}

/** Truthiness. */
export function assert_(cond: unknown, msg?: string): asserts cond {
  if (!cond) throw new nodeAssert.AssertionError({ message: msg ?? "assertion failed" });
}
export { assert_ as assert };

/** `s` contains `part`. */
export function assertStringIncludes(s: string, part: string, msg?: string): void {
  assert.ok(
    s.includes(part),
    msg ?? `expected ${JSON.stringify(s.slice(0, 2000))} to include ${JSON.stringify(part)}`,
  );
}

/** `s` matches `re`. */
export function assertMatch(s: string, re: RegExp, msg?: string): void {
  assert.match(s, re, msg);
}

/** `fn` throws an instance of `cls` whose message includes `includes`. */
export function assertThrows(
  fn: () => unknown,
  // deno-lint-ignore no-explicit-any
  cls: new (...args: any[]) => Error = Error,
  includes?: string,
): Error {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof cls, `expected ${cls.name}, got ${err}`);
    if (includes) assertStringIncludes((err as Error).message, includes);
    return err as Error;
  }
  throw new assert.AssertionError({ message: "expected function to throw" });
}

/** `p` rejects with an instance of `cls` whose message includes `includes`. */
export async function assertRejects(
  p: Promise<unknown> | (() => Promise<unknown>),
  // deno-lint-ignore no-explicit-any
  cls: new (...args: any[]) => Error = Error,
  includes?: string,
): Promise<Error> {
  try {
    await (typeof p === "function" ? p() : p);
  } catch (err) {
    assert.ok(err instanceof cls, `expected ${cls.name}, got ${err}`);
    if (includes) assertStringIncludes((err as Error).message, includes);
    return err as Error;
  }
  throw new assert.AssertionError({ message: "expected promise to reject" });
}
