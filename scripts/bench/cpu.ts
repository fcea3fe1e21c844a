/**
 * CPU time of the bench's processes, read from Linux `/proc/<pid>/stat`: what a process spent
 * on a figure, which the machine's other load moves far less than wall-clock rates do.
 * @module
 */

/** Clock ticks per second of `/proc/<pid>/stat` (USER_HZ: 100 on Linux everywhere). */
const TICKS = 100;

/** User + system CPU seconds a process has used so far, NaN when unknown. */
export function cpuSeconds(pid: number): number {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    // Fields after the command name (which may hold spaces), counting from field 3 (state).
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / TICKS;
  } catch {
    return NaN;
  }
}

/** CPU seconds each of `pids` spends while `work` runs. */
export async function cpuDuring<T>(
  pids: Record<string, number>,
  work: () => Promise<T>,
): Promise<{ result: T; cpu: Record<string, number> }> {
  const before = Object.fromEntries(Object.entries(pids).map(([k, p]) => [k, cpuSeconds(p)]));
  const result = await work();
  const cpu: Record<string, number> = {};
  for (const [k, p] of Object.entries(pids)) cpu[k] = cpuSeconds(p) - before[k];
  return { result, cpu };
}
