/**
 * The client side of figures 1–4, run against any {@link BenchPath}: bulk
 * transfer, small-request latency, concurrency, and fairness with one stalled
 * stream. Each function is one run; the caller repeats and interleaves them.
 * @module
 */

import { HttpConnection } from "./http_client.ts";
import { percentile } from "./stats.ts";
import type { BenchPath } from "./stack.ts";
import { tcpMemPeak } from "./tcp_mem.ts";

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

/** Bytes each reading stream of the fairness figure asks for at a time. */
export const FAIR_BODY = 256 * 1024;

/** One pass of the fairness figure. */
export interface FairnessPass {
  /** Aggregate MB/s of the reading streams. */
  mbps: number;
  /** Peak TCP buffer memory of the machine during the measurement, MiB. */
  tcpMemPeakMiB: number;
  /** Requests of the reading streams that failed (each then went on with a new connection). */
  errors: number;
  /** The first failure, when there was one. */
  firstError: string;
}

/**
 * Figure 4: `streams` connections each downloading a large body; with `stall`,
 * one of them sends its request and never reads. Returns the aggregate MB/s of
 * the reading streams over `durationMs` (after a warm-up of `warmupMs`), and the
 * peak of the machine's TCP buffer memory meanwhile.
 *
 * The reading streams download {@link FAIR_BODY} bytes per request, back to back:
 * with endless bodies the origin (on the same machine) wrote ahead into every
 * connection until each held up to 4 MiB in its kernel send buffer, ~3 GiB for a
 * thousand, past Linux's TCP memory pressure mark, where the kernel shrinks the
 * windows of every socket, the tunnel's one WebSocket connection included: passes
 * then measured 35–165 MB/s, against 157–221 with the limits raised.
 *
 * The stalled stream asks first, alone, and gets `warmupMs` to fill everything
 * on its path (socket buffers, the proxy's buffers, its SSH window) before the
 * others start: sharing ~100 MB/s with a thousand others it would need about a
 * minute to, so the measurement would not see a stalled stream at all. A pass
 * without a stalled stream waits the same time before starting its streams, so
 * the two passes differ in nothing else.
 */
export async function fairness(
  path: BenchPath,
  streams: number,
  durationMs: number,
  stall: boolean,
  warmupMs = 1000,
): Promise<FairnessPass> {
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
    }
    // Both passes wait the same time between opening their connections and starting them.
    await new Promise<void>((r) => setTimeout(r, warmupMs));
    // The others download FAIR_BODY bytes at a time, back to back on their connection. A
    // failed request (the proxy answers 502 and closes when it cannot open a stream) is counted
    // and the stream goes on with a new connection; too many failures end the figure.
    let errors = 0;
    let firstError = "";
    const download = async (i: number) => {
      while (!stop) {
        let why: string;
        try {
          const r = await cs[i].request("GET", `/bytes?n=${FAIR_BODY}`, {
            onBody,
            stop: () => stop,
          });
          if (stop || r.status === 200) continue;
          why = `status ${r.status}`;
        } catch (err) {
          if (stop) return;
          why = (err as Error).message;
        }
        errors++;
        firstError ||= `stream ${i}: ${why}`;
        if (errors > streams) throw new Error(`${errors} failed requests, first: ${firstError}`);
        cs[i].close();
        cs[i] = await open(path, 16 * 1024);
      }
    };
    cs.forEach((_, i) => {
      if (stall && i === 0) return;
      readers.push(
        download(i).catch((err: Error) => {
          if (!stop) throw new Error(`${path.name} fairness: ${err.message}`);
        }),
      );
    });
    const failed = Promise.all(readers).then(() => {
      if (!stop) throw new Error(`${path.name} fairness: streams ended early`);
    });
    const wait = (ms: number) =>
      Promise.race([new Promise<void>((r) => setTimeout(r, ms)), failed]);
    await wait(warmupMs);
    bytes = 0;
    const mem = tcpMemPeak();
    const t = performance.now();
    await wait(durationMs);
    const mbps = bytes / 1e6 / ((performance.now() - t) / 1000);
    stop = true;
    return { mbps, tcpMemPeakMiB: mem.stop(), errors, firstError };
  } finally {
    stop = true;
    for (const c of cs) c.close();
    await Promise.allSettled(readers);
    // A stream that was reconnecting when the pass ended holds a connection opened since.
    for (const c of cs) c.close();
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
