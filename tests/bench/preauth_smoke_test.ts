/**
 * `deno task bench --only preauth` end to end: every flood runs against its own proxy process and
 * `--json` holds each result; the floods' outcomes that are facts, not figures, hold (no silent
 * client left open, the agent from another address got in).
 */

import { assert, assertEquals } from "../helpers/assert.ts";
import { runBench } from "../helpers/bench_run.ts";

Deno.test("bench: the preauth figure measures every flood", async () => {
  const { got } = await runBench([
    "--only",
    "preauth",
    "--runs",
    "1",
    "--paths",
    "direct",
  ]);
  for (
    const key of ["rss_idle", "big_frames", "fragments", "big_heads", "silent", "slot_flood"]
  ) {
    const mib = got.get(`preauth/${key}/tower`);
    assert(mib !== undefined && Number.isFinite(mib), `preauth/${key}: ${mib}`);
  }
  assertEquals(got.get("preauth/silent_left_open/tower"), 0);
  assert(Number.isFinite(got.get("preauth/silent_past_deadline/tower")));
  assert(
    (got.get("preauth/agent_in_flood/tower") ?? Infinity) < 15_000,
    "the agent never got in",
  );
});
