/**
 * The client side of figures 1–4, run against any {@link BenchPath}: bulk
 * transfer, small-request latency, concurrency, and fairness with one stalled
 * stream. Each function is one run; the caller repeats and interleaves them.
 * @module
 */

import { HttpConnection } from "./http_client.ts";
import { percentile } from "./stats.ts";
import type { BenchPath } from "./stack.ts";

async function open(path: BenchPath, bufferSize?: number): Promise<HttpConnection> {
  return new HttpConnection(await path.connect(), path.host, bufferSize);
}

function expectOk(what: string, status: number): void {
  if (status !== 200) throw new Error(`${what}: status ${status}`);
}

/** Figure 1: one GET of `getBytes` and one PUT of `putBytes` on a fresh connection; MB/s. */
export async function bulk(
  path: BenchPath,
  getBytes: number,
  putBytes: number,
): Promise<{ getMBps: number; putMBps: number }> {
  const c = await open(path);
  try {
    let t = performance.now();
    const g = await c.request("GET", `/bytes?n=${getBytes}`);
    const getS = (performance.now() - t) / 1000;
    expectOk(`${path.name} bulk GET`, g.status);
    if (g.bodyBytes !== getBytes) {
      throw new Error(`${path.name} bulk GET: ${g.bodyBytes} of ${getBytes} bytes`);
    }
    t = performance.now();
    const p = await c.request("PUT", "/sink", { bodySize: putBytes, keepBody: true });
    const putS = (performance.now() - t) / 1000;
    expectOk(`${path.name} bulk PUT`, p.status);
    if (Number(p.body?.trim()) !== putBytes) {
      throw new Error(`${path.name} bulk PUT: origin got ${p.body?.trim()} of ${putBytes} bytes`);
    }
    return { getMBps: getBytes / 1e6 / getS, putMBps: putBytes / 1e6 / putS };
  } finally {
    c.close();
  }
}

/**
 * Figure 2: `count` sequential keep-alive GETs of ~1 KB; latency in ms. Stops early after
 * `maxMs` (a path with a 40 ms stall per request would otherwise take minutes); `done` says
 * how many were measured.
 */
export async function small(
  path: BenchPath,
  count: number,
  maxMs = 15_000,
): Promise<{ p50: number; p99: number; max: number; done: number }> {
  const c = await open(path, 64 * 1024);
  try {
    // Warm the connection (and any pooled upstream stream) first.
    for (let i = 0; i < 20; i++) {
      expectOk(`${path.name} small GET`, (await c.request("GET", "/small")).status);
    }
    const all = new Float64Array(count);
    const deadline = performance.now() + maxMs;
    let done = 0;
    for (; done < count && performance.now() < deadline; done++) {
      const t = performance.now();
      const r = await c.request("GET", "/small");
      all[done] = performance.now() - t;
      if (r.status !== 200) expectOk(`${path.name} small GET`, r.status);
    }
    const lat = all.subarray(0, done).sort();
    return { p50: percentile(lat, 50), p99: percentile(lat, 99), max: lat[lat.length - 1], done };
  } finally {
    c.close();
  }
}

/** Result of the concurrency figure. */
export interface ConcurrencyResult {
  reqPerS: number;
  /** Requests answered with another status than 200 (first one's status and body kept). */
  errors: number;
  firstError?: string;
}

/** Figure 3: `conns` keep-alive connections issuing small GETs for `durationMs`; req/s. */
export async function concurrency(
  path: BenchPath,
  conns: number,
  durationMs: number,
  onProgress?: () => void,
): Promise<ConcurrencyResult> {
  const cs = await Promise.all(Array.from({ length: conns }, () => open(path, 64 * 1024)));
  try {
    // One warm-up request each, outside the measured window.
    await Promise.all(cs.map(async (c) => {
      const r = await c.request("GET", "/small", { keepBody: true });
      if (r.status !== 200) {
        throw new Error(`${path.name} warm-up GET: status ${r.status}: ${r.body?.slice(0, 300)}`);
      }
    }));
    let done = 0;
    let errors = 0;
    let firstError: string | undefined;
    const start = performance.now();
    const end = start + durationMs;
    const ticker = onProgress ? setInterval(onProgress, 200) : undefined;
    try {
      await Promise.all(cs.map(async (c) => {
        while (performance.now() < end) {
          const r = await c.request("GET", "/small", { keepBody: true });
          if (r.status === 200) done++;
          else {
            errors++;
            firstError ??= `status ${r.status}: ${r.body?.slice(0, 300)}`;
          }
        }
      }));
    } finally {
      clearInterval(ticker);
    }
    return { reqPerS: done / ((performance.now() - start) / 1000), errors, firstError };
  } finally {
    for (const c of cs) c.close();
  }
}

/**
 * Figure 4: `streams` connections each downloading a large body; with `stall`,
 * one of them sends its request and never reads. Returns the aggregate MB/s of
 * the reading streams over `durationMs` (after a warm-up of `warmupMs`).
 *
 * The stalled stream asks first, alone, and gets `warmupMs` to fill everything
 * on its path (socket buffers, the proxy's buffers, its SSH window) before the
 * others start: sharing ~100 MB/s with a thousand others it would need about a
 * minute to, so the measurement would not see a stalled stream at all.
 */
export async function fairness(
  path: BenchPath,
  streams: number,
  durationMs: number,
  stall: boolean,
  warmupMs = 1000,
): Promise<number> {
  const cs: HttpConnection[] = [];
  let stop = false;
  let bytes = 0;
  const onBody = (n: number) => {
    bytes += n;
  };
  const readers: Promise<unknown>[] = [];
  try {
    // Open in waves so that connection setup does not become the measurement.
    for (let i = 0; i < streams; i += 64) {
      const wave = await Promise.all(
        Array.from({ length: Math.min(64, streams - i) }, () => open(path, 16 * 1024)),
      );
      cs.push(...wave);
    }
    const huge = 2 ** 40;
    if (stall) {
      // Ask for the body and never read it; let it fill its path while alone.
      readers.push(
        cs[0].request("GET", `/bytes?n=${huge}`, { stop: () => true }).catch(() => {}),
      );
      await new Promise<void>((r) => setTimeout(r, warmupMs));
    }
    cs.forEach((c, i) => {
      if (stall && i === 0) return;
      readers.push(
        c.request("GET", `/bytes?n=${huge}`, { onBody, stop: () => stop }).catch(
          (err: Error) => {
            if (!stop) throw new Error(`${path.name} fairness stream ${i}: ${err.message}`);
          },
        ),
      );
    });
    const failed = Promise.all(readers).then(() => {
      if (!stop) throw new Error(`${path.name} fairness: streams ended early`);
    });
    const wait = (ms: number) =>
      Promise.race([new Promise<void>((r) => setTimeout(r, ms)), failed]);
    await wait(warmupMs);
    bytes = 0;
    const t = performance.now();
    await wait(durationMs);
    const mbps = bytes / 1e6 / ((performance.now() - t) / 1000);
    stop = true;
    return mbps;
  } finally {
    stop = true;
    for (const c of cs) c.close();
    await Promise.allSettled(readers);
  }
}

/**
 * Wait (bounded) until `conns` parallel small GETs all succeed: after the fairness figure the
 * tunnel takes a moment to close a thousand streams, and the next figure must not measure that.
 */
export async function settle(path: BenchPath, conns: number, timeoutMs = 15_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  let last = "";
  while (performance.now() < deadline) {
    const cs = await Promise.all(Array.from({ length: conns }, () => open(path, 16 * 1024)));
    try {
      const rs = await Promise.all(cs.map((c) => c.request("GET", "/small", { keepBody: true })));
      const bad = rs.find((r) => r.status !== 200);
      if (!bad) return;
      last = `status ${bad.status}: ${bad.body?.slice(0, 200)}`;
    } finally {
      for (const c of cs) c.close();
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`${path.name}: still failing ${timeoutMs} ms after the fairness figure: ${last}`);
}
