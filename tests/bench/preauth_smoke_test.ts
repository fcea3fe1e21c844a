/**
 * `deno task bench --only preauth` end to end: every flood runs against its own proxy process and
 * `--json` holds each result; the floods' outcomes that are facts, not figures, hold (no silent
 * client left open, the agent from another address got in).
 */

import { assert, assertEquals } from "../helpers/assert.ts";
import { Proc } from "../helpers/proc.ts";

Deno.test("bench: the preauth figure measures every flood", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tower-bench-" });
  const out = `${dir}/results.json`;
  const main = new URL("../../scripts/bench/main.ts", import.meta.url).pathname;
  const proc = new Proc("bench", Deno.execPath(), [
    "run",
    "-A",
    "--quiet",
    main,
    "--only",
    "preauth",
    "--runs",
    "1",
    "--paths",
    "direct",
    "--json",
    out,
  ]);
  try {
    const status = await proc.status();
    assertEquals(status.code, 0, proc.tail(30));
    const { results } = JSON.parse(await Deno.readTextFile(out)) as {
      results: { key: string; sample: { median: number } }[];
    };
    const got = new Map(results.map((r) => [r.key, r.sample.median]));
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
  } finally {
    if (!proc.exited) await proc.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
