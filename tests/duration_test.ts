import { assertEquals, assertThrows } from "./helpers/assert.ts";
import { formatDuration, parseDuration } from "../lib/duration.ts";

Deno.test("parseDuration accepts Go syntax", () => {
  assertEquals(parseDuration("30s"), 30_000);
  assertEquals(parseDuration("2m"), 120_000);
  assertEquals(parseDuration("1h30m"), 5_400_000);
  assertEquals(parseDuration("1.5h"), 5_400_000);
  assertEquals(parseDuration("300ms"), 300);
  assertEquals(parseDuration("1h30m10.5s"), 5_410_500);
  assertEquals(parseDuration("0"), 0);
  assertEquals(parseDuration("-1m"), -60_000);
  assertEquals(parseDuration("100us"), 0.1);
  assertEquals(parseDuration("1µs"), 0.001);
  assertEquals(parseDuration("5ns"), 5e-6);
});

Deno.test("parseDuration refuses what Go refuses", () => {
  for (const bad of ["", "30", "1x", "s", "1m 30s", " 1s", "1.s.", "--1s", "1e3s", "abc"]) {
    assertThrows(() => parseDuration(bad), Error, "duration");
  }
});

Deno.test("formatDuration prints like Go", () => {
  assertEquals(formatDuration(0), "0s");
  assertEquals(formatDuration(30_000), "30s");
  assertEquals(formatDuration(120_000), "2m0s");
  assertEquals(formatDuration(5_410_500), "1h30m10.5s");
  assertEquals(formatDuration(500), "500ms");
  assertEquals(formatDuration(-1000), "-1s");
});
