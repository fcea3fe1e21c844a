/**
 * The bench's printed output: the results table (median [min–max] per path, with the ratio to
 * `direct` from the same run) and the comparison with `baseline.json`.
 * @module
 */

import { type Change, fmt, fmtSample, markdownTable, type Result } from "./stats.ts";

/** The reference path a path's ratio is taken against. */
function referenceOf(path: string): string {
  return path === "direct" ? "" : "direct";
}

/** Turn results into the printed table. */
export function renderTable(results: Result[], pathOrder: string[]): string {
  const byMetric = new Map<string, Map<string, Result>>();
  for (const r of results) {
    const k = `${r.figure}/${r.metric}`;
    if (!byMetric.has(k)) byMetric.set(k, new Map());
    byMetric.get(k)!.set(r.path, r);
  }
  const paths = pathOrder.filter((p) => results.some((r) => r.path === p));
  const header = ["figure", "metric", "unit"];
  for (const p of paths) {
    header.push(p);
    if (referenceOf(p)) header.push("×direct");
  }
  const rows = [header];
  for (const [k, m] of byMetric) {
    const first = [...m.values()][0];
    const row = [first.figure, k.slice(first.figure.length + 1), first.unit];
    for (const p of paths) {
      const r = m.get(p);
      row.push(r ? fmtSample(r.sample) : "");
      const ref = referenceOf(p);
      if (ref) {
        const d = m.get(ref);
        const ratioOk = r && d && d.sample.median !== 0 && !/added|ratio/.test(r.metric);
        row.push(ratioOk ? `${fmt(r.sample.median / d.sample.median)}×` : "");
      }
    }
    rows.push(row);
  }
  return markdownTable(rows);
}

/** Render a baseline comparison. */
export function renderChanges(changes: Change[]): string {
  const rows = [["result", "unit", "baseline", "now", "change", ""]];
  for (const c of changes) {
    rows.push([
      c.key,
      c.unit,
      fmt(c.before),
      fmt(c.after),
      `${c.gain >= 0 ? "+" : ""}${(c.gain * 100).toFixed(1)}%`,
      c.regressed ? "REGRESSION" : "",
    ]);
  }
  return markdownTable(rows);
}
