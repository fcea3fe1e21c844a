/**
 * Go-compatible duration parsing and formatting (`time.ParseDuration` syntax):
 * `300ms`, `-1.5h`, `2h45m`, `1h30m10.5s`, `0`. Units: ns, us, µs, ms, s, m, h.
 * @module
 */

const UNIT_NS: Record<string, number> = {
  ns: 1,
  us: 1e3,
  "µs": 1e3,
  "μs": 1e3,
  ms: 1e6,
  s: 1e9,
  m: 60e9,
  h: 3600e9,
};

const PART = /^(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)/;

/**
 * Parse a Go duration string into milliseconds.
 * @throws Error naming the bad input when it is not a valid Go duration.
 */
export function parseDuration(input: string): number {
  let s = input.trim();
  if (s !== input || s === "") throw new Error(`invalid duration "${input}"`);
  let sign = 1;
  if (s[0] === "-" || s[0] === "+") {
    if (s[0] === "-") sign = -1;
    s = s.slice(1);
  }
  if (s === "0") return 0;
  if (s === "") throw new Error(`invalid duration "${input}"`);
  let total = 0;
  while (s.length > 0) {
    const m = PART.exec(s);
    if (!m) {
      if (/^\d/.test(s) && !/[a-zµμ]/i.test(s)) {
        throw new Error(`missing unit in duration "${input}"`);
      }
      throw new Error(`invalid duration "${input}"`);
    }
    total += Number(m[1]) * UNIT_NS[m[2]];
    s = s.slice(m[0].length);
  }
  if (!Number.isFinite(total)) throw new Error(`invalid duration "${input}"`);
  return sign * (total / 1e6);
}

/** Format milliseconds the way Go's `time.Duration.String` does (`1m30s`, `500ms`, `0s`). */
export function formatDuration(ms: number): string {
  if (ms === 0) return "0s";
  const neg = ms < 0;
  let rest = Math.abs(ms);
  let out = "";
  if (rest < 1000) {
    out = rest >= 1
      ? `${trim(rest)}ms`
      : rest >= 1e-3
      ? `${trim(rest * 1e3)}µs`
      : `${trim(rest * 1e6)}ns`;
  } else {
    const h = Math.floor(rest / 3_600_000);
    rest -= h * 3_600_000;
    const m = Math.floor(rest / 60_000);
    rest -= m * 60_000;
    const s = rest / 1000;
    if (h) out += `${h}h`;
    if (h || m) out += `${m}m`;
    out += `${trim(s)}s`;
  }
  return (neg ? "-" : "") + out;
}

function trim(n: number): string {
  return String(Number(n.toFixed(9)));
}
