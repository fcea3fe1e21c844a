/**
 * Port allocation for the per-cluster endpoints (pure). The Go tower picked
 * the kubernetes port at random in 6000–7000 and used port + 10000 for
 * kubesphere; we keep the offset and the start of the range, but take the
 * range from `--port-range` (default 6000–20080: 10,000 pairs with the proxy's
 * default agent and metrics ports reserved, all below the Linux ephemeral range,
 * a superset of the original's so existing allocations stay) and pick the lowest free pair deterministically, so two clusters can
 * never get the same port of either kind. Ports browsers and `fetch` refuse
 * to dial, and the proxy's own listening ports, are never handed out.
 * {@link PortIndex} (`port_index.ts`) answers the same questions in O(log n)
 * for a whole deployment; the functions here scan and suit small sets.
 * @module
 */

/** kubesphere port = kubernetes port + this. */
export const KUBESPHERE_PORT_OFFSET = 10000;

/** An inclusive range of kubernetes ports (their kubesphere ports are {@link KUBESPHERE_PORT_OFFSET} above). */
export interface PortRange {
  min: number;
  max: number;
}

/**
 * `--port-range` default: room for 10,000 clusters. Twelve kubernetes ports of 6000–15999 are
 * never handed out (ten fetch-blocked, the agent port 8080 and metrics port 9090), so the range
 * goes on to 20080: above 15999 a port is some lower cluster's kubesphere port, except the
 * partners of those twelve (16000, 16566, …, 18080, 19090, 20080), which make up the 10,000.
 * Kubesphere ports stay below 30081, under Linux's ephemeral range (32768).
 */
export const DEFAULT_PORT_RANGE: Readonly<PortRange> = Object.freeze({ min: 6000, max: 20080 });

/**
 * Ports the Fetch standard's "bad port" list blocks in the ranges we use (X11, IRC, amanda…):
 * browsers and fetch-based clients (Deno's included) refuse to connect to them, so no cluster
 * endpoint is put there.
 */
const FETCH_BLOCKED_PORTS: ReadonlySet<number> = new Set([
  1719,
  1720,
  1723,
  2049,
  3659,
  4045,
  4190,
  5060,
  5061,
  6000,
  6566,
  6665,
  6666,
  6667,
  6668,
  6669,
  6679,
  6697,
  10080,
]);

/** An allocated pair. */
export interface PortPair {
  kubernetes: number;
  kubesphere: number;
}

/**
 * Parse `--port-range` (`MIN-MAX`, kubernetes ports): at least 1024, and MAX + 10000 at most
 * 65535.
 * @throws Error saying what is wrong.
 */
export function parsePortRange(text: string): PortRange {
  const m = /^\s*(\d{1,5})\s*-\s*(\d{1,5})\s*$/.exec(text);
  if (!m) throw new Error(`want MIN-MAX (e.g. 6000-20080), got ${JSON.stringify(text)}`);
  const min = Number(m[1]);
  const max = Number(m[2]);
  if (min < 1024) throw new Error(`${min}: want ports from 1024 up`);
  if (min > max) throw new Error(`${min} is above ${max}`);
  if (max + KUBESPHERE_PORT_OFFSET > 65535) {
    throw new Error(`${max} + ${KUBESPHERE_PORT_OFFSET} (its kubesphere port) is above 65535`);
  }
  return { min, max };
}

/** Whether `p` may be a kubernetes port of a new pair: in range, and neither port blocked or reserved. */
export function pairAllowed(p: number, range: PortRange, reserved: ReadonlySet<number>): boolean {
  const s = p + KUBESPHERE_PORT_OFFSET;
  return p >= range.min && p <= range.max && !FETCH_BLOCKED_PORTS.has(p) &&
    !FETCH_BLOCKED_PORTS.has(s) && !reserved.has(p) && !reserved.has(s);
}

/**
 * The lowest kubernetes port p in `range` with neither p nor p + 10000 in `used` (`used`
 * holds ports of both kinds of every other cluster), skipping the ports fetch-based clients
 * cannot reach ({@link FETCH_BLOCKED_PORTS}) and `reserved` ones (the proxy's own listeners).
 * A linear scan: use {@link PortIndex} for many clusters.
 * @throws Error when the range is exhausted.
 */
export function allocatePorts(
  used: ReadonlySet<number>,
  range: PortRange = DEFAULT_PORT_RANGE,
  reserved: ReadonlySet<number> = new Set(),
): PortPair {
  for (let p = range.min; p <= range.max; p++) {
    if (!pairAllowed(p, range, reserved)) continue;
    if (!used.has(p) && !used.has(p + KUBESPHERE_PORT_OFFSET)) {
      return { kubernetes: p, kubesphere: p + KUBESPHERE_PORT_OFFSET };
    }
  }
  throw new Error(`no free port pair left in ${range.min}-${range.max}`);
}

/** Whether a cluster's pair is usable: both set, distinct and unused by others. */
export function pairIsFree(pair: Partial<PortPair>, usedByOthers: ReadonlySet<number>): boolean {
  const { kubernetes: k, kubesphere: s } = pair;
  return !!k && !!s && k !== s && !usedByOthers.has(k) && !usedByOthers.has(s);
}

/**
 * What one cluster's reconcile asks about ports, from its own point of view (its own claim
 * and the claims it wins against do not count as used).
 */
export interface PortView {
  /** Whether `port` is held by another cluster that keeps it against this one. */
  usedByOthers(port: number): boolean;
  /**
   * The lowest pair this cluster may take.
   * @throws Error when none is left.
   */
  lowestFreePair(): PortPair;
}

/** A {@link PortView} over a plain set of ports used by others (tests, small callers). */
export function portViewFromSet(
  used: ReadonlySet<number>,
  range: PortRange = DEFAULT_PORT_RANGE,
  reserved: ReadonlySet<number> = new Set(),
): PortView {
  return {
    usedByOthers: (p) => used.has(p),
    lowestFreePair: () => allocatePorts(used, range, reserved),
  };
}
