/**
 * Runs `scripts/bench/main.ts` as `deno task bench` would, with `--json` to a temporary file, and
 * hands back every result's median by key (`figure/metric/path`) and the bench's output. It fails
 * with the bench's last lines when the bench exits non-zero or does not finish within the bound.
 * @module
 */

import { assertEquals } from "./assert.ts";
import { deadline } from "./deadline.ts";
import { Proc } from "./proc.ts";

/** What a bench run gave. */
export interface BenchRun {
  /** Each result's median, by key. */
  got: Map<string, number>;
  /** What the bench printed (stdout and stderr). */
  output: string;
}

/** Run the bench with `args` (`--json` is added), within `timeoutMs`. */
export async function runBench(args: string[], timeoutMs = 300_000): Promise<BenchRun> {
  const dir = await Deno.makeTempDir({ prefix: "tower-bench-" });
  const out = `${dir}/results.json`;
  const main = new URL("../../scripts/bench/main.ts", import.meta.url).pathname;
  const proc = new Proc("bench", Deno.execPath(), [
    "run",
    "-A",
    "--quiet",
    main,
    ...args,
    "--json",
    out,
  ]);
  try {
    const status = await deadline(proc.status(), timeoutMs, "the bench's end").catch((err) => {
      throw new Error(`${(err as Error).message}\n${proc.tail(30)}`);
    });
    assertEquals(status.code, 0, proc.tail(30));
    const { results } = JSON.parse(await Deno.readTextFile(out)) as {
      results: { key: string; sample: { median: number } }[];
    };
    return { got: new Map(results.map((r) => [r.key, r.sample.median])), output: proc.output };
  } finally {
    if (!proc.exited) await proc.stop();
    await Deno.remove(dir, { recursive: true });
  }
}
