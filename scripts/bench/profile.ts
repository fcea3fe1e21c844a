/**
 * Summarise V8 CPU profiles (`.cpuprofile`, as `deno run --cpu-prof` writes them): where each
 * process spent its busy time, by function, both self time and inclusive time (a function and
 * everything it called). Profile the bench's processes with
 *
 * ```
 * TOWER_DENO_FLAGS="--cpu-prof --cpu-prof-dir=/tmp/prof" deno task bench --only concurrency \
 *   --paths kubesphere --runs 1 --agents 0
 * deno run -A scripts/bench/profile.ts /tmp/prof/*.cpuprofile
 * ```
 *
 * `--top N` (default 30) rows per table; `--under REGEX` restricts the tables to samples whose
 * stack holds a frame matching REGEX (e.g. `#audit`) and adds a third: who called the
 * outermost matching frame (e.g. `--under '^setTimeout '` shows who sets the timers).
 * @module
 */

import { parseArgs } from "node:util";

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}

/** The parts of a `.cpuprofile` used here. */
export interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** One row: a function and its share of busy time. */
export interface ProfileRow {
  name: string;
  /** Microseconds. */
  us: number;
  /** Share of busy (non-idle) time, 0–1. */
  share: number;
}

/** Summary of one profile. */
export interface ProfileSummary {
  /** Microseconds sampled in all. */
  totalUs: number;
  /** Microseconds not idle. */
  busyUs: number;
  self: ProfileRow[];
  inclusive: ProfileRow[];
  /** With `under`: the callers of the outermost frame matching it, by time under them. */
  callers: ProfileRow[];
}

function frameName(f: CallFrame): string {
  const file = f.url ? f.url.split("/").slice(-2).join("/") : "";
  return `${f.functionName || "(anonymous)"}${file ? ` ${file}:${f.lineNumber + 1}` : ""}`;
}

/** Self and inclusive time per function; idle samples are left out of both. */
export function summarise(p: CpuProfile, under?: RegExp): ProfileSummary {
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const n of p.nodes) byId.set(n.id, n);
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const self = new Map<string, number>();
  const incl = new Map<string, number>();
  const callers = new Map<string, number>();
  let total = 0;
  let busy = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const dt = p.timeDeltas[i] ?? 0;
    total += dt;
    const leaf = byId.get(p.samples[i]);
    if (!leaf || leaf.callFrame.functionName === "(idle)") continue;
    const stack: string[] = [];
    for (let id: number | undefined = leaf.id; id !== undefined; id = parent.get(id)) {
      stack.push(frameName(byId.get(id)!.callFrame));
    }
    if (under) {
      const outer = stack.findLastIndex((s) => under.test(s));
      if (outer < 0) continue;
      const above = stack[outer + 1];
      const caller = above === undefined || above === "(root)" ? "(top level)" : above;
      callers.set(caller, (callers.get(caller) ?? 0) + dt);
    }
    busy += dt;
    self.set(stack[0], (self.get(stack[0]) ?? 0) + dt);
    for (const name of new Set(stack)) incl.set(name, (incl.get(name) ?? 0) + dt);
  }
  const rows = (m: Map<string, number>) =>
    [...m.entries()]
      .filter(([name]) => name !== "(root)")
      .map(([name, us]) => ({ name, us, share: busy > 0 ? us / busy : 0 }))
      .sort((a, b) => b.us - a.us);
  return {
    totalUs: total,
    busyUs: busy,
    self: rows(self),
    inclusive: rows(incl),
    callers: rows(callers),
  };
}

function table(title: string, rows: ProfileRow[], top: number): string {
  const lines = rows.slice(0, top).map((r) =>
    `${(100 * r.share).toFixed(1).padStart(6)}%  ${
      (r.us / 1000).toFixed(0).padStart(7)
    } ms  ${r.name}`
  );
  return [`  ${title}`, ...lines].join("\n");
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: { top: { type: "string", default: "30" }, under: { type: "string" } },
  });
  if (positionals.length === 0) {
    console.error("usage: profile.ts [--top N] [--under REGEX] FILE.cpuprofile…");
    Deno.exit(2);
  }
  const top = Number(values.top);
  const under = values.under ? new RegExp(values.under) : undefined;
  for (const file of positionals) {
    let p: CpuProfile;
    try {
      p = JSON.parse(await Deno.readTextFile(file));
    } catch (err) {
      console.error(`${file}: ${(err as Error).message}`);
      Deno.exitCode = 1;
      continue;
    }
    const s = summarise(p, under);
    console.log(
      `${file}: busy ${(s.busyUs / 1e6).toFixed(2)} s of ${(s.totalUs / 1e6).toFixed(2)} s` +
        (under ? ` (stacks matching ${under})` : ""),
    );
    console.log(table("self", s.self, top));
    console.log(table("inclusive", s.inclusive, top));
    if (under) console.log(table("callers", s.callers, top));
  }
}
