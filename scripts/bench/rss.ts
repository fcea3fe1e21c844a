/**
 * Resident set size of the bench's processes, read from Linux `/proc`: once, or the peak
 * while some work runs.
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

/** Peak RSS (MiB) of some processes while `work` runs, sampled every `everyMs`. */
export async function peakRss<T>(
  pids: Record<string, number>,
  work: () => Promise<T>,
  everyMs = 100,
): Promise<{ result: T; peaks: Record<string, number> }> {
  const peaks: Record<string, number> = {};
  const sample = () => {
    for (const [k, pid] of Object.entries(pids)) {
      const r = rssMiB(pid);
      if (!(peaks[k] >= r)) peaks[k] = r;
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
