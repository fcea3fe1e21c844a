/**
 * The `rss` figure's first rows, taken before any other figure on processes that have carried
 * nothing yet: idle (connected, no request made), the peak during a first `--conns` connection
 * load, a second after it (`*_after_load`), and then, with no traffic, once the RSS has settled
 * (`*_after_load_settled`, `*_settle_s`; see {@link settleRss} for the rule).
 * @module
 */

import { concurrency } from "./figures.ts";
import { peakRss, type Roles, rolesRss, SETTLE_RULE, settleRss } from "./rss.ts";
import type { BenchPath } from "./stack.ts";
import { fmt, type ResultSet } from "./stats.ts";

/** A path whose processes' memory is measured, and the table column it is shown in. */
export interface Memory {
  label: string;
  path: BenchPath;
  roles: Roles;
}

/** How the memory rows are taken. */
export interface MemoryOptions {
  conns: number;
  durationMs: number;
  /** Bound on the settling wait, ms (`--rss-settle`); 0: no settled rows. */
  settleMs: number;
  say: (msg: string) => void;
}

/**
 * Add the idle, load, after-load and settled rows of every path in `memory` to `results`.
 * Returns the `label/role` pairs whose settling wait ended at the bound, not by the rule.
 */
export async function memoryFigure(
  memory: Memory[],
  results: ResultSet,
  o: MemoryOptions,
): Promise<string[]> {
  const add = (m: Memory, metric: string, value: number, unit = "MiB") =>
    results.add("rss", metric, m.label, value, unit, "lower");
  for (const m of memory) {
    for (const [role, mib] of Object.entries(rolesRss(m.roles))) add(m, `${role}_idle`, mib);
  }
  const bounded: string[] = [];
  for (const m of memory) {
    o.say(`memory: ${o.conns}-connection load on ${m.path.name}`);
    const { result: r, peaks } = await peakRss(
      m.roles,
      () => concurrency(m.path, o.conns, o.durationMs),
    );
    for (const [role, mib] of Object.entries(peaks)) add(m, `${role}_load`, mib);
    if (r.errors > 0) o.say(`${m.path.name}: ${r.errors} failed requests, first: ${r.firstError}`);
    // Its connections closed, a second for the processes to see it.
    await new Promise((res) => setTimeout(res, 1000));
    for (const [role, mib] of Object.entries(rolesRss(m.roles))) add(m, `${role}_after_load`, mib);
    if (o.settleMs <= 0) continue;
    o.say(`memory: ${m.path.name} idle until its RSS settles (at most ${o.settleMs / 1000} s)`);
    let next = 0;
    const settled = await settleRss(() => {
      const now = rolesRss(m.roles);
      if (performance.now() >= next) {
        next = performance.now() + 5_000;
        o.say(`memory: ${m.label} ${Object.entries(now).map(([k, v]) => `${k} ${fmt(v)}`)} MiB`);
      }
      return now;
    }, { ...SETTLE_RULE, boundMs: o.settleMs });
    for (const [role, s] of Object.entries(settled)) {
      add(m, `${role}_after_load_settled`, s.mib);
      add(m, `${role}_settle_s`, s.seconds, "s");
      if (s.bounded) bounded.push(`${m.label}/${role}`);
    }
  }
  return bounded;
}
