/**
 * `deno task bench`: how fast is Tower next to a direct connection?
 *
 * Starts an origin HTTP server, the proxy and the agent on 127.0.0.1 and
 * measures, in one run and interleaved, each figure directly and through
 * Tower's endpoints (see scripts/bench/README.md for the figures and how to
 * read the table). Each figure is the median of `--runs` runs with min/max.
 * @module
 */

import { FlagError, type FlagSpecs, helpText, parseFlags } from "../../lib/cli.ts";
import { setupLogging } from "../../lib/log.ts";
import { randomToken } from "../../lib/secret.ts";
import { bulk, concurrency, fairness, settle, small } from "./figures.ts";
import { preauth } from "./preauth.ts";
import { OPENSSH_CIPHER, openSshMissing, startOpenSshTunnel } from "./openssh.ts";
import { renderChanges, renderTable } from "./report.ts";
import { type Memory, memoryFigure } from "./memory.ts";
import { peakRss, SETTLE_RULE } from "./rss.ts";
import { scale } from "./scale.ts";
import { REPLICAS_FLAGS, replicasFigure } from "./replicas.ts";
import { tcpMemPressureMiB } from "./tcp_mem.ts";
import {
  type BenchPath,
  startOrigin,
  startPassthroughPair,
  startRawTunnel,
  startTowerStack,
  tcpPath,
  tlsPath,
} from "./stack.ts";
import { compare, fmt, type Report, ResultSet } from "./stats.ts";

const BASELINE = new URL("./baseline.json", import.meta.url).pathname;
const FIGURES = ["bulk", "small", "concurrency", "fairness", "scale", "rss", "preauth", "replicas"];
/** The paths of a default run, in the order the table shows them ("raw" and "tower" follow). */
const DEFAULT_PATHS = [
  "direct",
  "direct-tls",
  "kubesphere",
  "kubernetes",
  "passthrough",
  "passthrough-sealed",
  "openssh",
] as const;

/** The bench's flags. */
export const BENCH_FLAGS: FlagSpecs = {
  runs: { kind: "int", default: 3, min: 1, max: 20, help: "repetitions of each figure" },
  full: {
    kind: "bool",
    default: false,
    help: "issue sizes: 1 GiB GET, 256 MiB PUT, 10 s load, 10 s fairness",
  },
  "get-mib": { kind: "int", default: 256, min: 1, help: "bulk GET size (MiB)" },
  "put-mib": { kind: "int", default: 64, min: 1, help: "bulk PUT size (MiB)" },
  "small-count": { kind: "int", default: 2000, min: 10, help: "sequential small GETs" },
  conns: { kind: "int", default: 64, min: 1, help: "connections of the concurrency figure" },
  duration: { kind: "duration", default: 5_000, help: "length of the concurrency figure" },
  streams: { kind: "int", default: 1000, min: 2, help: "streams of the fairness figure" },
  "fair-duration": { kind: "duration", default: 3_000, help: "length of each fairness run" },
  agents: { kind: "int", default: 1000, min: 0, help: "agents of the scale figure (0: skip)" },
  "agent-procs": { kind: "int", default: 4, min: 1, help: "processes the scale agents run in" },
  settle: {
    kind: "duration",
    default: 30_000,
    help: "how long the scale figure watches the proxy's RSS settle with every agent connected",
  },
  "rss-settle": {
    kind: "duration",
    default: SETTLE_RULE.boundMs,
    help: "after the rss figure's load, wait at most this long with no traffic for each " +
      "process's RSS to settle (sampled every 500 ms, watched at least 30 s, then until not " +
      "fallen by more than 1 MiB over 10 s): rows *_after_load_settled and *_settle_s; a wait " +
      "that ends at this bound is named under the table and its value is the RSS then; the " +
      "bench's smoke test passes 1s (the bound, always hit, keeps it fast); 0: no settled rows",
  },
  ...REPLICAS_FLAGS,
  only: {
    kind: "string",
    default: "",
    help: `comma-separated figures to run (${FIGURES.join(",")}); default all but replicas`,
  },
  paths: {
    kind: "string",
    default: "",
    help: "comma-separated paths (direct,direct-tls,kubesphere,kubernetes,passthrough," +
      "passthrough-sealed,openssh,raw); default: all but raw when the endpoints exist, else " +
      "direct,raw",
  },
  against: {
    kind: "string",
    multiple: true,
    help: "host:port of another local forwarding port to the origin, measured the same way",
  },
  "origin-port": {
    kind: "int",
    default: 0,
    min: 0,
    max: 65535,
    help: "origin HTTP port (fix it to point another tunnel at it for --against)",
  },
  json: { kind: "string", default: "", help: "write the results to this file" },
  compare: { kind: "bool", default: false, help: "print the change from baseline.json" },
  "save-baseline": {
    kind: "bool",
    default: false,
    help: "write the results to scripts/bench/baseline.json",
  },
};

const say = (msg: string) => console.error(`bench: ${msg}`);

/** Where the endpoint implementation lives; without it only the raw path exists. */
async function endpointsAvailable(): Promise<boolean> {
  try {
    const src = await Deno.readTextFile(
      new URL("../../lib/proxy/app.ts", import.meta.url).pathname,
    );
    return /startClusterEndpoints|endpoint/i.test(src);
  } catch {
    return false;
  }
}

async function revision(): Promise<string> {
  try {
    const out = await new Deno.Command("git", {
      args: ["describe", "--always", "--dirty"],
      stdout: "piped",
      stderr: "null",
    }).output();
    return new TextDecoder().decode(out.stdout).trim();
  } catch {
    return "unknown";
  }
}

async function main(args: string[]): Promise<number> {
  let flags;
  try {
    flags = parseFlags(args, BENCH_FLAGS);
  } catch (err) {
    if (err instanceof FlagError) {
      console.error(`bench: ${err.message} (see --help)`);
      return 2;
    }
    throw err;
  }
  if (flags.help) {
    console.log(helpText("Usage: deno task bench [flags]", BENCH_FLAGS));
    return 0;
  }
  const v = flags.values;
  setupLogging({ verbosity: 0, write: () => {} });
  const full = v.full as boolean;
  const runs = v.runs as number;
  const getBytes = (full ? 1024 : v["get-mib"] as number) * (1 << 20);
  const putBytes = (full ? 256 : v["put-mib"] as number) * (1 << 20);
  const durationMs = full ? 10_000 : v.duration as number;
  const fairMs = full ? 10_000 : v["fair-duration"] as number;
  const only = new Set(
    (v.only as string).split(",").map((s) => s.trim()).filter(Boolean),
  );
  for (const f of only) {
    if (!FIGURES.includes(f)) {
      console.error(`bench: --only: unknown figure ${f}`);
      return 2;
    }
  }
  // The replicas figure (10,000 Clusters, ~10 min on 2 cores) runs only when asked for.
  const want = (f: string) => only.size === 0 ? f !== "replicas" : only.has(f);
  const haveEndpoints = await endpointsAvailable();
  const pathNames = (v.paths as string)
    ? (v.paths as string).split(",").map((s) => s.trim())
    : haveEndpoints
    ? [...DEFAULT_PATHS]
    : ["direct", "raw"];
  const against = (v.against as string[] | undefined) ?? [];
  const settings = {
    runs,
    getBytes,
    putBytes,
    smallCount: v["small-count"],
    conns: v.conns,
    durationMs,
    streams: v.streams,
    fairMs,
    agents: v.agents,
    agentProcs: v["agent-procs"],
    rssSettleMs: v["rss-settle"],
    paths: pathNames,
    against,
    cores: navigator.hardwareConcurrency,
  };
  say(`settings ${JSON.stringify(settings)}`);

  const dir = await Deno.makeTempDir({ prefix: "tower-bench-" });
  const results = new ResultSet();
  const cleanups: (() => Promise<void>)[] = [];
  const token = randomToken();
  try {
    const origin = await startOrigin(dir, v["origin-port"] as number);
    cleanups.push(async () => void await origin.proc.stop());
    say(`origin on 127.0.0.1:${origin.httpPort} (TLS ${origin.httpsPort})`);

    const paths: BenchPath[] = [];
    /** Paths whose processes' memory is measured, and the column it is shown in. */
    const memory: Memory[] = [];
    let sshVersion = "";
    for (const name of pathNames) {
      if (name === "direct") paths.push(tcpPath("direct", origin.httpPort));
      else if (name === "direct-tls") {
        paths.push(tlsPath("direct-tls", origin.httpsPort, origin.tls.caPem));
      } else if (name === "raw") {
        const raw = await startRawTunnel(`${dir}`, origin, token);
        cleanups.push(raw.close);
        paths.push(raw.path);
        const pids = { proxy: [Deno.pid], agent: [raw.agent.child.pid] };
        memory.push({ label: "raw", path: raw.path, roles: () => pids });
      } else if (name === "passthrough" || name === "passthrough-sealed") {
        const pair = await startPassthroughPair(origin, name === "passthrough-sealed");
        cleanups.push(pair.close);
        paths.push(pair.path);
      } else if (name === "openssh") {
        const missing = await openSshMissing();
        if (missing) throw new Error(`path openssh: ${missing}`);
        const ssh = await startOpenSshTunnel(`${dir}/openssh`, origin.httpPort);
        cleanups.push(ssh.close);
        paths.push(ssh.path);
        memory.push({ label: "openssh", path: ssh.path, roles: ssh.processes });
        sshVersion = ssh.version;
      } else if (name === "kubesphere" || name === "kubernetes") {
        if (paths.some((p) => p.name === "kubesphere" || p.name === "kubernetes")) continue;
        const towerDir = `${dir}/tower`;
        await Deno.mkdir(towerDir);
        const tower = await startTowerStack(towerDir, origin, token);
        cleanups.push(tower.close);
        if (pathNames.includes("kubesphere")) paths.push(tower.kubesphere);
        if (pathNames.includes("kubernetes")) paths.push(tower.kubernetes);
        const pids = { proxy: [tower.proxy.child.pid], agent: [tower.agent.child.pid] };
        // Measured on the plain endpoint (the TLS one when it is the only one asked for).
        const path = pathNames.includes("kubesphere") ? tower.kubesphere : tower.kubernetes;
        memory.push({ label: "tower", path, roles: () => pids });
      } else {
        console.error(`bench: unknown path ${name}`);
        return 2;
      }
    }
    for (const a of against) {
      const m = /^(.*):(\d+)$/.exec(a);
      if (!m) throw new Error(`--against ${a}: want host:port`);
      paths.push({
        ...tcpPath(`against:${a}`, Number(m[2])),
        connect: async () => {
          const c = await Deno.connect({ hostname: m[1], port: Number(m[2]) });
          c.setNoDelay(true);
          return c;
        },
      });
    }
    // Fairness runs on the plain-HTTP tunnel path (and any --against port): 2,000 streams per
    // run per path is the most expensive figure, and the TLS endpoint adds nothing to what it
    // shows about the tunnel. The sealed pass-through pair (a connection per stream, nothing
    // shared) shows what the figure reads when nothing can be unfair; OpenSSH how a widely used
    // tunnel (one connection, multiplexed too) fares.
    const tunnelPaths = paths.filter((p) =>
      p.name === "kubesphere" || p.name === "raw" || p.name === "passthrough-sealed" ||
      p.name === "openssh" || p.name.startsWith("against:")
    );
    const memoryOf = (p: BenchPath) => want("rss") ? memory.find((m) => m.path === p) : undefined;
    /** Run `work`, adding the peak RSS of the path's processes as `<role>_<metric>`. */
    const measured = async <T>(p: BenchPath, metric: string, work: () => Promise<T>) => {
      const m = memoryOf(p);
      if (!m) return await work();
      const { result, peaks } = await peakRss(m.roles, work);
      for (const [role, mib] of Object.entries(peaks)) {
        results.add("rss", `${role}_${metric}`, m.label, mib, "MiB", "lower");
      }
      return result;
    };

    // Memory first, on processes that have carried nothing yet (memory.ts). Measured within the
    // runs, runs 2 and 3 followed run 1's bulk transfers and 1,000 streams, whose peak RSS the
    // processes keep (glibc does not give it back), and read 2-3x run 1's. This load is not
    // counted in the concurrency figure.
    const settleBounded = await memoryFigure(want("rss") ? memory : [], results, {
      conns: v.conns as number,
      durationMs,
      settleMs: v["rss-settle"] as number,
      say,
    });
    for (let rep = 1; rep <= runs; rep++) {
      const tag = `run ${rep}/${runs}`;
      if (want("bulk")) {
        for (const p of paths) {
          say(`${tag} bulk ${p.name}`);
          const r = await bulk(p, getBytes, putBytes);
          results.add("bulk", "get", p.name, r.getMBps, "MB/s", "higher");
          results.add("bulk", "put", p.name, r.putMBps, "MB/s", "higher");
        }
      }
      if (want("small")) {
        const direct: Record<string, number> = {};
        for (const p of paths) {
          say(`${tag} small ${p.name}`);
          const r = await small(p, v["small-count"] as number);
          if (r.done < (v["small-count"] as number)) {
            say(`${p.name}: only ${r.done} small GETs within the time cap (slow path)`);
          }
          results.add("small", "p50", p.name, r.p50, "ms", "lower");
          results.add("small", "p99", p.name, r.p99, "ms", "lower");
          results.add("small", "max", p.name, r.max, "ms", "lower");
          if (p.name === "direct") Object.assign(direct, r);
          else if (direct.p50 !== undefined) {
            results.add("small", "added_p50", p.name, r.p50 - direct.p50, "ms", "lower");
          }
        }
      }
      if (want("concurrency")) {
        for (const p of paths) {
          say(`${tag} concurrency ${p.name}`);
          const r = await concurrency(p, v.conns as number, durationMs);
          results.add("concurrency", "req_per_s", p.name, r.reqPerS, "req/s", "higher");
          results.add("concurrency", "errors", p.name, r.errors, "", "lower");
          if (r.errors > 0) say(`${p.name}: ${r.errors} failed requests, first: ${r.firstError}`);
        }
      }
      if (want("fairness")) {
        for (const p of tunnelPaths) {
          say(`${tag} fairness ${p.name} (${v.streams} streams)`);
          // Each measured run follows another: a run made right after a thousand streams were
          // torn down measured 0.5-0.9x one made on a fresh tunnel, stalled stream or not, so a
          // first run is made and discarded (and the two measured ones are on equal terms).
          const { free, stalled } = await measured(p, "streams_peak", async () => {
            await fairness(p, v.streams as number, fairMs, false);
            await settle(p, v.streams as number).catch((err) => say(err.message));
            const free = await fairness(p, v.streams as number, fairMs, false);
            await settle(p, v.streams as number).catch((err) => say(err.message));
            return { free, stalled: await fairness(p, v.streams as number, fairMs, true) };
          });
          results.add("fairness", "unstalled", p.name, free.mbps, "MB/s", "higher");
          results.add("fairness", "one_stalled", p.name, stalled.mbps, "MB/s", "higher");
          results.add("fairness", "ratio", p.name, stalled.mbps / free.mbps, "", "higher");
          const errors = free.errors + stalled.errors;
          results.add("fairness", "errors", p.name, errors, "", "lower");
          if (errors > 0) {
            say(
              `${p.name}: ${errors} failed fairness requests, first: ` +
                (free.firstError || stalled.firstError),
            );
          }
          const memPeak = Math.max(free.tcpMemPeakMiB, stalled.tcpMemPeakMiB);
          results.add("fairness", "tcp_mem_peak", p.name, memPeak, "MiB", "lower");
          if (memPeak > tcpMemPressureMiB()) {
            say(
              `${p.name}: TCP buffer memory reached ${fmt(memPeak)} MiB, past the kernel's ` +
                `pressure mark (${fmt(tcpMemPressureMiB())} MiB, net.ipv4.tcp_mem): it was ` +
                "shrinking every socket's window, so the fairness passes measured that too",
            );
          }
          await settle(p, v.conns as number).catch((err) => say(err.message));
        }
      }
    }
    // The main stack is idle from here on: stop it before the scale figure.
    for (const c of cleanups.splice(1).reverse()) await c();

    if (want("scale") && (v.agents as number) > 0) {
      const scaleDir = `${dir}/scale`;
      await Deno.mkdir(scaleDir);
      say(`scale: ${v.agents} agents in ${v["agent-procs"]} processes`);
      const s = await scale(
        scaleDir,
        v.agents as number,
        v["agent-procs"] as number,
        runs,
        say,
        v.settle as number,
      );
      results.add("scale", "initial_connect", "tower", s.initialConnectS, "s", "lower");
      results.add("scale", "initial_serving", "tower", s.initialServingS, "s", "lower");
      results.add("scale", "connect_rate", "tower", s.connectRate, "agents/s", "higher");
      results.add("scale", "proxy_rss", "tower", s.proxyRssMiB, "MiB", "lower");
      results.add("scale", "proxy_rss_settled", "tower", s.proxyRssSettledMiB, "MiB", "lower");
      for (const r of s.restarts) {
        results.add("scale", "restart_all_back", "tower", r.allBackS, "s", "lower");
        results.add("scale", "restart_all_serving", "tower", r.allServingS, "s", "lower");
        results.add("scale", "proxy_rss_after_restart", "tower", r.proxyRssMiB, "MiB", "lower");
      }
    }

    if (want("preauth")) {
      const at = `${dir}/preauth`;
      await Deno.mkdir(at);
      for (let rep = 1; rep <= runs; rep++) {
        say(`run ${rep}/${runs} preauth floods`);
        const r = await preauth(at, say);
        const add = (metric: string, value: number, unit: string) =>
          results.add("preauth", metric, "tower", value, unit, "lower");
        add("rss_idle", r.idleMiB, "MiB");
        add("big_frames", r.bigFramesMiB, "MiB");
        add("fragments", r.fragmentsMiB, "MiB");
        add("big_heads", r.bigHeadsMiB, "MiB");
        add("endpoint_heads", r.endpointHeadsMiB, "MiB");
        add("silent", r.silentMiB, "MiB");
        add("silent_past_deadline", r.silentPastDeadlineS, "s");
        add("silent_left_open", r.silentLeftOpen, "");
        add("slot_flood", r.slotFloodMiB, "MiB");
        add("agent_in_flood", r.agentInFloodMs, "ms");
      }
    }

    if (want("replicas") && (v["replica-clusters"] as number) > 0) {
      await replicasFigure(`${dir}/replicas`, v, results, say);
    }

    const report: Report = {
      date: new Date().toISOString(),
      revision: await revision(),
      settings,
      results: results.results(),
    };
    const order = [...DEFAULT_PATHS, "raw", "tower"];
    for (const p of paths) if (!order.includes(p.name)) order.push(p.name);
    console.log(`\n${renderTable(report.results, order)}\n`);
    console.log(
      "median [min–max] of " + runs + " runs; ×direct = path / direct in the same run " +
        `(${report.revision}, ${settings.cores} cores)`,
    );
    if (memory.length) {
      console.log(
        "rss: idle = connected, before any request; load = peak during a first 64-connection " +
          "load (before any other figure); after_load = a second after it; " +
          "after_load_settled = then, with no traffic, once watched " +
          `${SETTLE_RULE.minMs / 1000} s and not fallen by more than ${SETTLE_RULE.fallMiB} MiB ` +
          `over ${SETTLE_RULE.quietMs / 1000} s (settle_s: seconds after after_load until it ` +
          "had come down to within 1 MiB of that); streams_peak = peak during the fairness " +
          "figure (1,000 streams)",
      );
      if (settleBounded.length) {
        console.log(
          `rss: not settled within --rss-settle (${(v["rss-settle"] as number) / 1000} s), ` +
            `the value at the bound: ${settleBounded.join(", ")}`,
        );
      }
    }
    if (sshVersion) {
      console.log(
        `openssh: sshd -D on 127.0.0.1 and ssh -N -R, ${OPENSSH_CIPHER} both ways, compression ` +
          `off (${sshVersion}); rss: proxy = sshd (all its processes), agent = ssh`,
      );
    }
    if (v.compare as boolean) {
      try {
        const base = JSON.parse(await Deno.readTextFile(BASELINE)) as Report;
        const changes = compare(base.results, report.results);
        console.log(`\nChange from baseline.json (${base.revision}, ${base.date}):\n`);
        console.log(renderChanges(changes));
        const bad = changes.filter((c) => c.regressed);
        if (bad.length) console.log(`\n${bad.length} result(s) regressed by more than 10%`);
      } catch (err) {
        console.error(`bench: --compare: ${BASELINE}: ${(err as Error).message}`);
      }
    }
    const json = JSON.stringify(report, null, 2) + "\n";
    if (v.json as string) await Deno.writeTextFile(v.json as string, json);
    if (v["save-baseline"] as boolean) await Deno.writeTextFile(BASELINE, json);
    return 0;
  } finally {
    for (const c of cleanups.reverse()) {
      await c().catch((err) => say(`cleanup: ${(err as Error).message}`));
    }
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
