/**
 * What one unit of work costs the proxy and the agent in CPU time: `deno run -A
 * scripts/bench/cost.ts --figure small|concurrency|get|put|fairness [--runs N]` starts the origin,
 * `proxy.ts` and `agent.ts` (as `deno task bench` does), runs the figure on the kubesphere path
 * and prints, per run, one JSON line: the figure's wall-clock rate and each process's CPU time
 * (user + system, from `/proc/<pid>/stat`) per request or per MB, and peak RSS.
 *
 * Wall-clock rates on a shared machine move with everyone else's load; CPU per unit of work moves
 * far less, which makes it the number to compare in an A/B. Run two checkouts alternately, e.g.
 * `for i in 1 2 3; do (cd A && deno run -A scripts/bench/cost.ts --figure small); (cd B && …); done`.
 * @module
 */

import { parseArgs } from "node:util";
import { setupLogging } from "../../lib/log.ts";
import { randomToken } from "../../lib/secret.ts";
import { cpuSeconds } from "./cpu.ts";
import { concurrency, fairness, settle, small } from "./figures.ts";
import { HttpConnection } from "./http_client.ts";
import { peakRss } from "./rss.ts";
import { startOrigin, startTowerStack } from "./stack.ts";

const FIGURES = ["small", "concurrency", "get", "put", "fairness"] as const;
type Figure = typeof FIGURES[number];

const { values } = parseArgs({
  args: Deno.args,
  options: {
    figure: { type: "string", default: "small" },
    runs: { type: "string", default: "1" },
    count: { type: "string", default: "2000" },
    conns: { type: "string", default: "64" },
    duration: { type: "string", default: "5000" },
    mib: { type: "string", default: "256" },
    streams: { type: "string", default: "1000" },
    label: { type: "string", default: "" },
  },
});
const figure = values.figure as Figure;
if (!FIGURES.includes(figure)) throw new Error(`--figure: one of ${FIGURES.join(", ")}`);

setupLogging({ verbosity: 0, write: () => {} });
const dir = await Deno.makeTempDir({ prefix: "tower-cost-" });
const origin = await startOrigin(dir);
await Deno.mkdir(`${dir}/tower`);
const tower = await startTowerStack(`${dir}/tower`, origin, randomToken());
const path = tower.kubesphere;
const pids = { proxy: tower.proxy.child.pid, agent: tower.agent.child.pid };
const roles = () => ({ proxy: [pids.proxy], agent: [pids.agent] });

/** Run the figure once: its rate, and how many units (requests or MB) it moved. */
async function once(): Promise<{ rate: number; units: number; unit: string }> {
  switch (figure) {
    case "small": {
      const n = Number(values.count);
      const r = await small(path, n);
      return { rate: r.p50, units: r.done, unit: "request" };
    }
    case "concurrency": {
      const ms = Number(values.duration);
      const r = await concurrency(path, Number(values.conns), ms);
      return { rate: r.reqPerS, units: r.reqPerS * ms / 1000, unit: "request" };
    }
    case "get":
    case "put": {
      const bytes = Number(values.mib) << 20;
      const c = new HttpConnection(await path.connect(), path.host);
      try {
        const t = performance.now();
        const r = figure === "get"
          ? await c.request("GET", `/bytes?n=${bytes}`)
          : await c.request("PUT", "/sink", { bodySize: bytes, keepBody: true });
        if (r.status !== 200) throw new Error(`${figure}: status ${r.status}`);
        return {
          rate: bytes / 1e6 / ((performance.now() - t) / 1000),
          units: bytes / 1e6,
          unit: "MB",
        };
      } finally {
        c.close();
      }
    }
    case "fairness": {
      const ms = Number(values.duration);
      const r = await fairness(path, Number(values.streams), ms, false);
      return { rate: r.mbps, units: r.mbps * ms / 1000, unit: "MB" };
    }
  }
}

try {
  if (figure === "small") await small(path, 200); // warm up the code paths
  for (let i = 0; i < Number(values.runs); i++) {
    const before = Object.fromEntries(Object.entries(pids).map(([k, p]) => [k, cpuSeconds(p)]));
    const { result, peaks } = await peakRss(roles, once);
    const out: Record<string, unknown> = {
      label: values.label,
      figure,
      rate: Number(result.rate.toFixed(figure === "small" ? 4 : 1)),
    };
    const perUnit = result.unit === "MB" ? 1e3 : 1e6; // ms per MB, µs per request
    for (const [k, p] of Object.entries(pids)) {
      out[`${k}_cpu`] = Number(((cpuSeconds(p) - before[k]) * perUnit / result.units).toFixed(2));
      out[`${k}_rss`] = Math.round(peaks[k]);
    }
    out.cpu_unit = result.unit === "MB" ? "ms/MB" : "µs/request";
    console.log(JSON.stringify(out));
    if (figure === "fairness") await settle(path, Number(values.conns)).catch(() => {});
  }
} finally {
  await tower.close();
  await origin.proc.stop();
  await Deno.remove(dir, { recursive: true }).catch(() => {});
}
