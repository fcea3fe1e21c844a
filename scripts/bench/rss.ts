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
