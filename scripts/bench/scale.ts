/**
 * Figure 5: many agents on one proxy. The proxy runs as `proxy.ts` with a
 * clusters file of N clusters; the agents run in a few worker processes
 * (`agents.ts`) using the agent library. Measures the connect rate, the
 * proxy's RSS with everyone connected, and the time until every agent is back
 * after the proxy restarts.
 * @module
 */

import { denoRun, freePort, type Proc } from "../../tests/helpers/proc.ts";
import { clustersYaml } from "../../tests/helpers/tunnel.ts";
import { scaleToken } from "./agents.ts";
import { rssMiB, startProxyProc } from "./stack.ts";

/** One restart's numbers. */
export interface ScaleRestart {
  /** Seconds from SIGTERM to the old proxy until every agent is connected to the new one. */
  allBackS: number;
  /** Seconds from SIGTERM until the new proxy serves every cluster's endpoints. */
  allServingS: number;
  /** Proxy RSS (MiB) once every agent is back and every cluster served. */
  proxyRssMiB: number;
}

/** Results of the scale figure. */
export interface ScaleResult {
  agents: number;
  /** Seconds from starting the workers until every agent is connected. */
  initialConnectS: number;
  /** Agents per second during the initial connect. */
  connectRate: number;
  /** Seconds from starting the workers until the proxy serves every cluster's endpoints. */
  initialServingS: number;
  /**
   * Proxy RSS (MiB) as soon as every agent is connected and every cluster served (the connect
   * storm's garbage included).
   */
  proxyRssMiB: number;
  /**
   * Lowest proxy RSS (MiB) over `settleMs` after that, every agent still connected: the steady
   * state once V8 has collected the handshakes' garbage (it does so after some quiet seconds).
   */
  proxyRssSettledMiB: number;
  restarts: ScaleRestart[];
}

function connectedOf(worker: Proc): number {
  for (let i = worker.lines.length - 1; i >= 0; i--) {
    const m = /^connected (\d+)$/.exec(worker.lines[i]);
    if (m) return Number(m[1]);
  }
  return 0;
}

/** Agents connected over all workers (`agents.ts` processes). */
export function connectedCount(workers: Proc[]): number {
  return workers.reduce((s, w) => s + connectedOf(w), 0);
}

/**
 * Wait until `proxy` has logged that it serves the endpoints of all `clusters` clusters that
 * got ports (the port range holds 991 pairs: past that a cluster's agent connects but its
 * endpoints wait, and the proxy says so once).
 */
async function waitServing(proxy: Proc, clusters: number, timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const n = proxy.count(/Serving cluster endpoints/);
    if (n >= clusters - proxy.count(/No ports for the cluster's endpoints/)) return;
    if (proxy.exited) throw new Error(`scale: proxy exited:\n${proxy.tail(10)}`);
    if (performance.now() > deadline) {
      throw new Error(`scale: ${n} of ${clusters} clusters served after ${timeoutMs} ms`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function waitCount(
  workers: Proc[],
  ok: (n: number) => boolean,
  timeoutMs: number,
  what: string,
): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const n = connectedCount(workers);
    if (ok(n)) return;
    for (const w of workers) {
      if (w.exited) throw new Error(`scale: ${w.name} exited:\n${w.tail(10)}`);
    }
    if (performance.now() > deadline) {
      throw new Error(`scale: ${what}: ${n} connected after ${timeoutMs} ms`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Lowest RSS of `pid` sampled every 250 ms for `ms`, checking the agents stay connected. */
async function settledRss(pid: number, ms: number, stillAll: () => void): Promise<number> {
  let min = rssMiB(pid);
  const end = performance.now() + ms;
  while (performance.now() < end) {
    await new Promise((r) => setTimeout(r, 250));
    stillAll();
    min = Math.min(min, rssMiB(pid));
  }
  return min;
}

/** Run the scale figure with `agents` agents in `procs` worker processes. */
export async function scale(
  dir: string,
  agents: number,
  procs: number,
  restarts: number,
  log: (msg: string) => void,
  settleMs = 30_000,
): Promise<ScaleResult> {
  const seed = crypto.randomUUID();
  const names = Array.from({ length: agents }, (_, i) => ({
    name: `scale-${i}`,
    token: scaleToken(seed, i),
  }));
  const clustersPath = `${dir}/clusters.json`;
  await Deno.writeTextFile(clustersPath, clustersYaml(names));
  const port = freePort();
  let proxy = await startProxyProc(dir, port, clustersPath, "scale-proxy");
  const workers: Proc[] = [];
  try {
    const per = Math.ceil(agents / procs);
    const t0 = performance.now();
    for (let p = 0; p < procs && p * per < agents; p++) {
      workers.push(denoRun(`agents-${p}`, "scripts/bench/agents.ts", [
        "--proxy-server",
        `http://127.0.0.1:${port}`,
        "--from",
        String(p * per),
        "--count",
        String(Math.min(per, agents - p * per)),
        "--token-seed",
        seed,
      ]));
    }
    await waitCount(workers, (n) => n >= agents, 300_000, "initial connect");
    const initialConnectS = (performance.now() - t0) / 1000;
    await waitServing(proxy, agents, 300_000);
    const initialServingS = (performance.now() - t0) / 1000;
    // With every agent connected and every cluster served: the whole load in place.
    const proxyRss = rssMiB(proxy.child.pid);
    log(
      `scale: ${agents} agents connected in ${initialConnectS.toFixed(1)} s, proxy RSS ${
        proxyRss.toFixed(0)
      } MiB`,
    );
    const proxyRssSettled = await settledRss(proxy.child.pid, settleMs, () => {
      const n = connectedCount(workers);
      if (n < agents) throw new Error(`scale: only ${n} of ${agents} agents stayed connected`);
    });
    log(`scale: proxy RSS settled at ${proxyRssSettled.toFixed(0)} MiB`);
    const out: ScaleRestart[] = [];
    for (let r = 0; r < restarts; r++) {
      const t = performance.now();
      await proxy.stop();
      await waitCount(workers, (n) => n < agents, 60_000, "disconnect after proxy stop");
      proxy = await startProxyProc(dir, port, clustersPath, "scale-proxy");
      await waitCount(workers, (n) => n >= agents, 300_000, "reconnect after restart");
      const allBackS = (performance.now() - t) / 1000;
      await waitServing(proxy, agents, 300_000);
      const allServingS = (performance.now() - t) / 1000;
      const rss = rssMiB(proxy.child.pid);
      log(
        `scale: restart ${r + 1}: all back in ${allBackS.toFixed(1)} s, proxy RSS ${
          rss.toFixed(0)
        } MiB`,
      );
      out.push({ allBackS, allServingS, proxyRssMiB: rss });
    }
    return {
      agents,
      initialConnectS,
      connectRate: agents / initialConnectS,
      initialServingS,
      proxyRssMiB: proxyRss,
      proxyRssSettledMiB: proxyRssSettled,
      restarts: out,
    };
  } finally {
    await Promise.all(workers.map((w) => w.stop()));
    await proxy.stop();
  }
}
