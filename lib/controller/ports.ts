/**
 * Port allocation for the per-cluster endpoints (pure). The Go tower picked
 * the kubernetes port at random in 6000–7000 and used port + 10000 for
 * kubesphere; we keep the ranges but scan deterministically for the lowest
 * free pair, so two clusters can never get the same port of either kind, and
 * leave out the few ports browsers and `fetch` refuse to dial (6000 is X11's).
 * @module
 */

/** First kubernetes port. */
export const KUBERNETES_PORT_MIN = 6000;
/** One past the last kubernetes port. */
export const KUBERNETES_PORT_MAX = 7000;
/** kubesphere port = kubernetes port + this. */
export const KUBESPHERE_PORT_OFFSET = 10000;

/**
 * Ports the Fetch standard's "bad port" list blocks (X11, IRC…): browsers and
 * fetch-based clients (Deno's included) refuse to connect to them, so no
 * cluster endpoint is put there.
 */
export const FETCH_BLOCKED_PORTS: ReadonlySet<number> = new Set([
  6000,
  6566,
  6665,
  6666,
  6667,
  6668,
  6669,
  6679,
  6697,
]);

/** An allocated pair. */
export interface PortPair {
  kubernetes: number;
  kubesphere: number;
}

/**
 * The lowest kubernetes port p in range with neither p nor p + 10000 in `used`
 * (`used` holds ports of both kinds of every other cluster), skipping the
 * ports fetch-based clients cannot reach ({@link FETCH_BLOCKED_PORTS}).
 * @throws Error when the range is exhausted.
 */
export function allocatePorts(used: ReadonlySet<number>): PortPair {
  for (let p = KUBERNETES_PORT_MIN; p < KUBERNETES_PORT_MAX; p++) {
    if (FETCH_BLOCKED_PORTS.has(p)) continue;
    if (!used.has(p) && !used.has(p + KUBESPHERE_PORT_OFFSET)) {
      return { kubernetes: p, kubesphere: p + KUBESPHERE_PORT_OFFSET };
    }
  }
  throw new Error(
    `no free port pair left in ${KUBERNETES_PORT_MIN}-${KUBERNETES_PORT_MAX - 1}`,
  );
}

/** Whether a cluster's pair is usable: both set, distinct and unused by others. */
export function pairIsFree(pair: Partial<PortPair>, usedByOthers: ReadonlySet<number>): boolean {
  const { kubernetes: k, kubesphere: s } = pair;
  return !!k && !!s && k !== s && !usedByOthers.has(k) && !usedByOthers.has(s);
}
