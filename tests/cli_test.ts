import { assertEquals, assertStringIncludes, assertThrows } from "./helpers/assert.ts";
import { FlagError, type FlagSpecs, helpText, parseFlags } from "../lib/cli.ts";

const SPECS: FlagSpecs = {
  name: { kind: "string", help: "the name" },
  port: { kind: "port", default: 8080, min: 1024, max: 49151, help: "the port" },
  keepalive: { kind: "duration", default: 30_000, help: "keepalive" },
  "leader-elect": { kind: "bool", default: false, help: "elect" },
  v: { kind: "int", default: 0, min: 0, help: "verbosity" },
};

Deno.test("parseFlags reads both --flag value and --flag=value, and Go single-dash flags", () => {
  const { values } = parseFlags(
    ["--name", "alpha", "--port=9000", "-keepalive", "1m30s", "--leader-elect", "--v", "4"],
    SPECS,
  );
  assertEquals(values, {
    name: "alpha",
    port: 9000,
    keepalive: 90_000,
    "leader-elect": true,
    v: 4,
  });
});

Deno.test("parseFlags applies defaults", () => {
  const { values } = parseFlags([], SPECS);
  assertEquals(values.port, 8080);
  assertEquals(values.keepalive, 30_000);
  assertEquals(values.name, undefined);
});

Deno.test("parseFlags gives one-line errors naming the flag", () => {
  const cases: [string[], string][] = [
    [["--port", "80"], "--port"],
    [["--port", "abc"], "--port"],
    [["--keepalive", "30"], "--keepalive"],
    [["--keepalive", "soon"], "--keepalive"],
    [["--v", "x"], "--v"],
    [["--bogus"], "unknown flag: --bogus"],
    [["--name"], "--name"],
  ];
  for (const [args, expect] of cases) {
    const err = assertThrows(() => parseFlags(args, SPECS), FlagError);
    assertStringIncludes(err.message, expect);
    assertEquals(err.message.includes("\n"), false, err.message);
  }
});

Deno.test("helpText lists every flag with its default", () => {
  const text = helpText("Usage: x", SPECS);
  for (const name of Object.keys(SPECS)) assertStringIncludes(text, `--${name}`);
  assertStringIncludes(text, "(default 8080)");
  assertStringIncludes(text, "(default 30s)");
  assertStringIncludes(text, "--help");
});
