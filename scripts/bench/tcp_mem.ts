/**
 * Linux's TCP buffer memory, for the fairness figure: past `net.ipv4.tcp_mem`'s middle value
 * the kernel is under memory pressure and shrinks every socket's buffers and windows, the
 * tunnel's one WebSocket connection included, so what a figure measures then is the kernel's
 * rationing. Values are MiB; NaN where `/proc` does not say (not Linux).
 * @module
 */

const PAGE = 4096;

/** TCP buffer memory in use now (`/proc/net/sockstat`, "TCP: … mem N" pages). */
export function tcpMemMiB(): number {
  try {
    const m = /^TCP:.*\bmem (\d+)/m.exec(Deno.readTextFileSync("/proc/net/sockstat"));
    return m ? Number(m[1]) * PAGE / (1 << 20) : NaN;
  } catch {
    return NaN;
  }
}

/** Where memory pressure starts (`net.ipv4.tcp_mem`'s second value). */
export function tcpMemPressureMiB(): number {
  try {
    const v = Deno.readTextFileSync("/proc/sys/net/ipv4/tcp_mem").trim().split(/\s+/).map(Number);
    return v.length === 3 && Number.isFinite(v[1]) ? v[1] * PAGE / (1 << 20) : NaN;
  } catch {
    return NaN;
  }
}

/** Sample {@link tcpMemMiB} every `everyMs` until `stop()`; returns the peak. */
export function tcpMemPeak(everyMs = 100): { stop(): number } {
  let peak = tcpMemMiB();
  const timer = setInterval(() => {
    const now = tcpMemMiB();
    if (!(peak >= now)) peak = now;
  }, everyMs);
  return {
    stop() {
      clearInterval(timer);
      const now = tcpMemMiB();
      return peak >= now ? peak : now;
    },
  };
}
