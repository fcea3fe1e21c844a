/**
 * Numbers of the benchmark: samples (median of runs with min/max), latency
 * percentiles, the result records written by `--json`, and comparison with a
 * baseline.
 * @module
 */

/** Whether a larger value of a metric is better. */
export type Better = "higher" | "lower";

/** One measured quantity over several runs. */
export interface Sample {
  median: number;
  min: number;
  max: number;
  runs: number[];
}

/** One figure's metric on one path. */
export interface Result {
  /** Stable key: `figure/metric/path`, e.g. `bulk/get_MBps/kubesphere`. */
  key: string;
  figure: string;
  metric: string;
  path: string;
  unit: string;
  better: Better;
  sample: Sample;
}

/** What `--json` writes. */
export interface Report {
  /** ISO time of the run. */
  date: string;
  /** `git describe`-like revision, when known. */
  revision: string;
  /** Settings the run used (sizes, durations, agents, …). */
  settings: Record<string, unknown>;
  results: Result[];
}

/** Median, min and max of `runs` (which must not be empty). */
export function sampleOf(runs: number[]): Sample {
  if (runs.length === 0) throw new Error("sampleOf: no runs");
  const s = [...runs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  const median = s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
  return { median, min: s[0], max: s[s.length - 1], runs: [...runs] };
}

/** The `p`-th percentile (0–100) of sorted `values`, nearest rank. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))];
}

/** Collects the runs of every key, then turns them into {@link Result}s. */
export class ResultSet {
  #runs = new Map<string, Omit<Result, "sample"> & { runs: number[] }>();

  /** Record one run of `figure/metric/path`. */
  add(
    figure: string,
    metric: string,
    path: string,
    value: number,
    unit: string,
    better: Better,
  ): void {
    const key = `${figure}/${metric}/${path}`;
    let r = this.#runs.get(key);
    if (!r) {
      r = { key, figure, metric, path, unit, better, runs: [] };
      this.#runs.set(key, r);
    }
    r.runs.push(value);
  }

  /** Every key's result, in the order first recorded. */
  results(): Result[] {
    return [...this.#runs.values()].map(({ runs, ...rest }) => ({
      ...rest,
      sample: sampleOf(runs),
    }));
  }
}

/** Format a number with about 3 significant digits. */
export function fmt(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  const a = Math.abs(n);
  if (a >= 1000) return n.toFixed(0);
  if (a >= 100) return n.toFixed(1);
  if (a >= 10) return n.toFixed(2);
  if (a >= 1) return n.toFixed(2);
  return n.toFixed(3);
}

/** A sample as `median [min–max]`. */
export function fmtSample(s: Sample): string {
  return s.runs.length > 1 ? `${fmt(s.median)} [${fmt(s.min)}–${fmt(s.max)}]` : fmt(s.median);
}

/** Render rows as a Markdown table (first row is the header). */
export function markdownTable(rows: string[][]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  const line = (r: string[]) => `| ${r.map((c, i) => (c ?? "").padEnd(widths[i])).join(" | ")} |`;
  return [
    line(rows[0]),
    `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`,
    ...rows.slice(1).map(line),
  ].join("\n");
}

/** One line of a comparison with a baseline. */
export interface Change {
  key: string;
  unit: string;
  before: number;
  after: number;
  /** Relative change, positive = better. */
  gain: number;
  /** Worse by more than the tolerance. */
  regressed: boolean;
}

/**
 * Compare `now` with `base` on every key present in both. `tolerance` is the
 * relative worsening allowed (0.10 = 10%).
 */
export function compare(base: Result[], now: Result[], tolerance = 0.10): Change[] {
  const old = new Map(base.map((r) => [r.key, r]));
  const out: Change[] = [];
  for (const r of now) {
    const b = old.get(r.key);
    if (!b || b.unit !== r.unit) continue;
    const before = b.sample.median;
    const after = r.sample.median;
    if (!Number.isFinite(before) || !Number.isFinite(after) || before === 0) continue;
    const rel = (after - before) / Math.abs(before);
    const gain = r.better === "higher" ? rel : -rel;
    out.push({ key: r.key, unit: r.unit, before, after, gain, regressed: gain < -tolerance });
  }
  return out;
}
