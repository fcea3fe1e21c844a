/**
 * Resident memory of the processes behind a path, for the `rss` figure: one process (Tower's
 * proxy or agent, `ssh`) or a process with its children (`sshd` forks per connection), summed,
 * and the peak while some work runs.
 * @module
 */

/** Resident set size of a process in MiB, NaN when unknown. */
export function rssMiB(pid: number): number {
  try {
    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    const m = /VmRSS:\s+(\d+) kB/.exec(status);
    return m ? Number(m[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** `pid` and all its descendants (Linux `/proc`). */
export function processTree(pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${e.name}/stat`);
      // pid (comm) state ppid …: comm may hold spaces and parentheses.
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      const list = children.get(ppid) ?? [];
      list.push(Number(e.name));
      children.set(ppid, list);
    } catch {
      // exited meanwhile
    }
  }
  const out = [pid];
  for (let i = 0; i < out.length; i++) out.push(...(children.get(out[i]) ?? []));
  return out;
}

/** Processes per role (`proxy`, `agent`), asked again at each sample (sshd forks). */
export type Roles = () => Record<string, number[]>;

/** Summed RSS of each role's processes now, MiB. */
export function rolesRss(roles: Roles): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [role, pids] of Object.entries(roles())) {
    out[role] = pids.reduce((sum, pid) => sum + (rssMiB(pid) || 0), 0);
  }
  return out;
}

/** Peak summed RSS of each role while `work` runs, sampled every `everyMs` (default 100 ms). */
export async function peakRss<T>(
  roles: Roles,
  work: () => Promise<T>,
  everyMs = 100,
): Promise<{ result: T; peaks: Record<string, number> }> {
  const peaks: Record<string, number> = {};
  const sample = () => {
    for (const [k, mib] of Object.entries(rolesRss(roles))) {
      if (!(peaks[k] >= mib)) peaks[k] = mib;
    }
  };
  sample();
  const timer = setInterval(sample, everyMs);
  try {
    const result = await work();
    sample();
    return { result, peaks };
  } finally {
    clearInterval(timer);
  }
}

/** How {@link settleRss} decides that a role's RSS has settled, and when it stops waiting. */
export interface SettleRule {
  /** Sampling period, ms. */
  everyMs: number;
  /** Watch at least this long, ms, however flat the RSS reads meanwhile. */
  minMs: number;
  /** Then until the RSS has not fallen by more than `fallMiB` over the last `quietMs`, ms. */
  quietMs: number;
  fallMiB: number;
  /** Give up after this long and report the RSS then, ms. */
  boundMs: number;
}

/**
 * The rule of the `rss` figure's `*_after_load_settled` rows (the bound is `--rss-settle`). The
 * minimum watch is there because the RSS does not fall steadily: after the 64-connection load
 * the proxy read 165.6 MiB (±0.1) for 20 s, then 98.9 at +25 s (V8's memory reducer,
 * whose first memory-reducing collection waits for a low allocation rate; the agent 92.7 → 84.8
 * with it). A 10 s quiet window alone took the plateau for the floor.
 */
export const SETTLE_RULE: SettleRule = {
  everyMs: 500,
  minMs: 30_000,
  quietMs: 10_000,
  fallMiB: 1,
  boundMs: 60_000,
};

/** A role's settled RSS, and whether the bound ended the wait rather than the rule. */
export interface Settled {
  mib: number;
  /**
   * Seconds from the start until the RSS came down to within `fallMiB` of `mib` and stayed
   * there (what the fall took, the watch after it not counted); the bound when `bounded`.
   */
  seconds: number;
  bounded: boolean;
}

/** A clock and a timer, replaceable to test the rule on a made-up series. */
export interface SettleClock {
  now(): number;
  sleep(ms: number): Promise<void>;
}

const realClock: SettleClock = {
  now: () => performance.now(),
  sleep: (ms) => new Promise((res) => setTimeout(res, ms)),
};

/**
 * Sample each role's RSS (`sample`, MiB per role) every `rule.everyMs`, for at least
 * `rule.minMs` and then until it has not fallen by more than `rule.fallMiB` over the last
 * `rule.quietMs`, or until `rule.boundMs` has passed, whichever comes first; every role is
 * watched until it settles. A rise does not count against settling (nothing runs: the rule
 * looks for the floor). At most `boundMs / everyMs + 2` samples per role are kept.
 */
export async function settleRss(
  sample: () => Record<string, number>,
  rule: SettleRule = SETTLE_RULE,
  clock: SettleClock = realClock,
): Promise<Record<string, Settled>> {
  const start = clock.now();
  const seen = new Map<string, { t: number; mib: number }[]>();
  const out: Record<string, Settled> = {};
  for (;;) {
    const t = clock.now() - start;
    const now = sample();
    for (const [role, mib] of Object.entries(now)) {
      if (out[role]) continue;
      const series = seen.get(role) ?? [];
      series.push({ t, mib });
      seen.set(role, series);
      // The quiet window, opened by the last sample at or before its start.
      let open = series.length - 1;
      while (open > 0 && series[open].t > t - rule.quietMs) open--;
      const highest = Math.max(...series.slice(open).map((s) => s.mib));
      const settled = t >= Math.max(rule.minMs, rule.quietMs) && highest - mib <= rule.fallMiB;
      if (settled || t >= rule.boundMs) {
        let from = series.length - 1;
        while (from > 0 && series[from - 1].mib <= mib + rule.fallMiB) from--;
        const seconds = (settled ? series[from].t : t) / 1000;
        out[role] = { mib, seconds, bounded: !settled };
      }
    }
    if (Object.keys(now).every((role) => out[role])) return out;
    await clock.sleep(Math.max(0, Math.min(rule.everyMs, rule.boundMs - t)));
  }
}
