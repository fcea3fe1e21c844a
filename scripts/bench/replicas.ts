/**
 * Figure 8, replicas: a deployment's scale on the test API server. Its own
 * process (`replicas_apiserver.ts`) holds `clusters` Cluster objects as users
 * create them (no token, no ports) and Pods `tower-0..2`; three `proxy.ts`
 * replicas in Kubernetes mode (`--leader-elect`, pod IPs 127.0.0.2–4) start
 * together, and the bench measures, in three phases:
 *
 * 1. reconcile: from the leader's "starting cluster controller" until every
 *    Cluster has a token, both ports, `Initialized=True` and its `mc-<name>`
 *    Service; the leader's and the standbys' RSS and V8 heap then (a standby
 *    holds the same informers without the controller), and the CPU seconds
 *    the API server, the leader and the standbys spent meanwhile;
 * 2. agents: `agents` agents of the first clusters (tokens from the
 *    Clusters) in `agentProcs` processes, through a TCP load balancer over the
 *    replicas' agent ports (the agent Service): time until all are connected
 *    and every one of their clusters is served (a ready EndpointSlice of a
 *    live replica), and the replicas' RSS growth per agent they hold (lowest
 *    RSS over `settleMs` before and after, once V8 has collected);
 * 3. kill: SIGKILL of the standby holding the most clusters; time until its
 *    agents are all back (elsewhere), until its slices are reaped, and until
 *    each of its clusters is served again (a live replica's ready slice, none
 *    of the dead one's left).
 * @module
 */

import type { FlagSpecs } from "../../lib/cli.ts";
import { denoRun, type Proc } from "../../tests/helpers/proc.ts";
import { startLoadBalancer } from "../../tests/helpers/replicas.ts";
import { ReplicasWatch } from "./replicas_watch.ts";
import { rssMiB } from "./rss.ts";
import { connectedCount } from "./scale.ts";
import type { ResultSet } from "./stats.ts";

const NAMESPACE = "kubesphere-system";
const IPS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
const PREFIX = "rep-";
/**
 * Kubernetes ports of the clusters: the proxy's default range. 6000-15999 alone holds 9,990
 * pairs: ten of its ports are on the Fetch blocked list. Above 15999 a port is some lower cluster's kubesphere port
 * (+10,000), except where that lower port was blocked: 16000, 16566, 16665-16669, 16679, 16697
 * and 20080 make 10,000, the last one's kubesphere port (30080) still below the ephemeral range.
 */
const PORT_RANGE = { min: 6000, max: 20080 };

/** What the figure is asked to do. */
export interface ReplicasOptions {
  clusters: number;
  agents: number;
  agentProcs: number;
  /** How long RSS is watched for its low before and after the agents connect (ms). */
  settleMs: number;
  /** Bound on each wait (ms). */
  timeoutMs?: number;
  log: (msg: string) => void;
}

/** Numbers of one run (times in s, memory in MiB, CPU in s). */
export interface ReplicasResult {
  clusters: number;
  agents: number;
  reconcileS: number;
  leaderRssMiB: number;
  leaderRssPeakMiB: number;
  standbyRssMiB: number;
  leaderHeapMiB: number;
  standbyHeapMiB: number;
  apiServerCpuS: number;
  leaderCpuS: number;
  standbyCpuS: number;
  apiServerRssMiB: number;
  agentsConnectS: number;
  agentsServedS: number;
  replicaRssIdleMiB: number;
  replicaRssAgentsMiB: number;
  rssPerAgentKiB: number;
  killedClusters: number;
  killAgentsBackS: number;
  killReapedS: number;
  killServedS: number;
}

/** CPU time (user + system) of `pid` in seconds (Linux `/proc`, 100 ticks a second). */
export function cpuSeconds(pid: number): number {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return NaN;
  }
}

/** An agent port and a metrics port free on every replica address, outside the cluster ports. */
function freePorts(): { agentPort: number; metricsPort: number } {
  for (let attempt = 0; attempt < 50; attempt++) {
    // Above every port of the clusters (30080), below the ephemeral range (32768).
    const agentPort = 31000 + Math.floor(Math.random() * 1700);
    const held: Deno.Listener[] = [];
    try {
      for (const hostname of IPS) {
        for (const port of [agentPort, agentPort + 1]) held.push(Deno.listen({ hostname, port }));
      }
      return { agentPort, metricsPort: agentPort + 1 };
    } catch {
      // taken: try another
    } finally {
      for (const l of held) l.close();
    }
  }
  throw new Error("replicas: no free agent port on 127.0.0.2-4");
}

/** Poll `ok` every 50 ms until it holds; throws `what()` after `ms`. */
async function until(ok: () => boolean, ms: number, what: () => string): Promise<number> {
  const t0 = performance.now();
  while (!ok()) {
    if (performance.now() - t0 > ms) throw new Error(`replicas: ${what()} after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return performance.now();
}

/** Lowest RSS of each pid over `ms` (sampled every 250 ms). */
async function lowRss(pids: number[], ms: number): Promise<number[]> {
  const low = pids.map(rssMiB);
  const end = performance.now() + ms;
  while (performance.now() < end) {
    await new Promise((r) => setTimeout(r, 250));
    pids.forEach((p, i) => low[i] = Math.min(low[i], rssMiB(p)));
  }
  return low;
}

/** V8 heap in use (MiB) from a replica's `/metrics`. */
async function heapMiB(metrics: string): Promise<number> {
  try {
    const text = await (await fetch(`http://${metrics}/metrics`)).text();
    const m = /^tower_nodejs_heap_size_used_bytes (\S+)$/m.exec(text);
    return m ? Number(m[1]) / (1 << 20) : NaN;
  } catch {
    return NaN;
  }
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

interface Replica {
  name: string;
  ip: string;
  proc: Proc;
  metrics: string;
}

function startReplicas(kubeconfig: string, ports: ReturnType<typeof freePorts>): Replica[] {
  return IPS.map((ip, i) => {
    const name = `tower-${i}`;
    const proc = denoRun(name, "proxy.ts", [
      "--kubeconfig",
      kubeconfig,
      "--leader-elect",
      "--host",
      ip,
      "--port",
      String(ports.agentPort),
      "--pod-name",
      name,
      "--pod-ip",
      ip,
      "--port-range",
      `${PORT_RANGE.min}-${PORT_RANGE.max}`,
      "--metrics-address",
      `${ip}:${ports.metricsPort}`,
    ], { POD_NAMESPACE: NAMESPACE });
    return { name, ip, proc, metrics: `${ip}:${ports.metricsPort}` };
  });
}

/** Run the figure once. */
export async function replicas(dir: string, o: ReplicasOptions): Promise<ReplicasResult> {
  const timeoutMs = o.timeoutMs ?? 900_000;
  const api = denoRun("replicas-apiserver", "scripts/bench/replicas_apiserver.ts", [
    "--clusters",
    String(o.clusters),
    "--prefix",
    PREFIX,
    ...IPS.flatMap((ip, i) => ["--pod", `tower-${i}=${ip}`]),
  ]);
  const procs: Proc[] = [api];
  let watch: ReplicasWatch | undefined;
  let lb: ReturnType<typeof startLoadBalancer> | undefined;
  try {
    const kubeconfig = (await api.waitFor(/^kubeconfig=/, 60_000)).slice("kubeconfig=".length);
    o.log(`replicas: ${(await api.waitFor(/^ready clusters=/, timeoutMs)).slice(6)}`);
    watch = await ReplicasWatch.start(kubeconfig);
    const ports = freePorts();
    const reps = startReplicas(kubeconfig, ports);
    procs.push(...reps.map((r) => r.proc));
    const killed = new Set<string>();
    lb = startLoadBalancer(() =>
      reps.filter((r) => !killed.has(r.name)).map((r) => ({
        hostname: r.ip,
        port: ports.agentPort,
      }))
    );
    const phase1 = await reconcilePhase(api, reps, watch, o, timeoutMs);
    const phase2 = await agentsPhase(dir, reps, watch, lb.port, o, timeoutMs, procs);
    const phase3 = await killPhase(
      reps,
      phase1.leader,
      watch,
      phase2.workers,
      killed,
      o,
      timeoutMs,
    );
    return {
      clusters: o.clusters,
      agents: o.agents,
      ...phase1.result,
      ...phase2.result,
      ...phase3,
    };
  } finally {
    await lb?.close();
    await watch?.close();
    await Promise.all(procs.reverse().map((p) => p.stop()));
  }
}

async function reconcilePhase(
  api: Proc,
  reps: Replica[],
  watch: ReplicasWatch,
  o: ReplicasOptions,
  timeoutMs: number,
) {
  const started = await Promise.race(
    reps.map((r) => r.proc.waitFor(/starting cluster controller/, timeoutMs).then(() => r)),
  );
  const t0 = performance.now();
  const leader = started;
  const standbys = reps.filter((r) => r !== leader);
  const cpu0 = [api, leader.proc, ...standbys.map((r) => r.proc)].map((p) =>
    cpuSeconds(p.child.pid)
  );
  let peak = 0;
  const sampler = setInterval(() => peak = Math.max(peak, rssMiB(leader.proc.child.pid)), 250);
  try {
    await until(
      () => watch.done.size >= o.clusters,
      timeoutMs,
      () => `${watch.done.size} of ${o.clusters} clusters reconciled`,
    );
  } finally {
    clearInterval(sampler);
  }
  const reconcileS = (performance.now() - t0) / 1000;
  const cpu1 = [api, leader.proc, ...standbys.map((r) => r.proc)].map((p) =>
    cpuSeconds(p.child.pid)
  );
  const d = cpu1.map((c, i) => c - cpu0[i]);
  const leaderRss = rssMiB(leader.proc.child.pid);
  const result = {
    reconcileS,
    leaderRssMiB: leaderRss,
    leaderRssPeakMiB: Math.max(peak, leaderRss),
    standbyRssMiB: mean(standbys.map((r) => rssMiB(r.proc.child.pid))),
    leaderHeapMiB: await heapMiB(leader.metrics),
    standbyHeapMiB: mean(await Promise.all(standbys.map((r) => heapMiB(r.metrics)))),
    apiServerCpuS: d[0],
    leaderCpuS: d[1],
    standbyCpuS: mean(d.slice(2)),
    apiServerRssMiB: rssMiB(api.child.pid),
  };
  o.log(
    `replicas: ${o.clusters} clusters reconciled by ${leader.name} in ${reconcileS.toFixed(1)} s ` +
      `(CPU s: api server ${d[0].toFixed(1)}, leader ${d[1].toFixed(1)}, standbys ` +
      `${d.slice(2).map((x) => x.toFixed(1)).join("/")}); RSS leader ${
        leaderRss.toFixed(0)
      } MiB, ` +
      `standby ${result.standbyRssMiB.toFixed(0)} MiB`,
  );
  return { leader, result };
}

async function agentsPhase(
  dir: string,
  reps: Replica[],
  watch: ReplicasWatch,
  lbPort: number,
  o: ReplicasOptions,
  timeoutMs: number,
  procs: Proc[],
) {
  const names = Array.from({ length: o.agents }, (_, i) => `${PREFIX}${i}`);
  const tokensPath = `${dir}/replica-tokens`;
  await Deno.writeTextFile(tokensPath, names.map((n) => watch.token(n)).join("\n"));
  const pids = reps.map((r) => r.proc.child.pid);
  const idle = await lowRss(pids, o.settleMs);
  const t0 = performance.now();
  const per = Math.ceil(o.agents / o.agentProcs);
  const workers: Proc[] = [];
  for (let from = 0; from < o.agents; from += per) {
    workers.push(denoRun(`replica-agents-${workers.length}`, "scripts/bench/agents.ts", [
      "--proxy-server",
      `http://127.0.0.1:${lbPort}`,
      "--prefix",
      PREFIX,
      "--from",
      String(from),
      "--count",
      String(Math.min(per, o.agents - from)),
      "--tokens-file",
      tokensPath,
    ]));
  }
  procs.push(...workers);
  const connected = await until(
    () => connectedCount(workers) >= o.agents,
    timeoutMs,
    () => `${connectedCount(workers)} of ${o.agents} agents connected`,
  );
  const served = await until(
    () => names.every((n) => watch.served(n)),
    timeoutMs,
    () => `${names.filter((n) => watch.served(n)).length} of ${o.agents} clusters served`,
  );
  const held = reps.map((r) => watch.clustersOf(r.name).size);
  const loaded = await lowRss(pids, o.settleMs);
  const grown = loaded.reduce((a, x, i) => a + x - idle[i], 0);
  const result = {
    agentsConnectS: (connected - t0) / 1000,
    agentsServedS: (served - t0) / 1000,
    replicaRssIdleMiB: mean(idle),
    replicaRssAgentsMiB: mean(loaded),
    rssPerAgentKiB: grown * 1024 / Math.max(1, held.reduce((a, b) => a + b, 0)),
  };
  o.log(
    `replicas: ${o.agents} agents connected in ${result.agentsConnectS.toFixed(1)} s, all served ` +
      `in ${result.agentsServedS.toFixed(1)} s; clusters per replica ${held.join("/")}; RSS ` +
      `${idle.map((x) => x.toFixed(0)).join("/")} -> ${
        loaded.map((x) => x.toFixed(0)).join("/")
      } MiB (${result.rssPerAgentKiB.toFixed(0)} KiB per agent)`,
  );
  return { workers, result };
}

async function killPhase(
  reps: Replica[],
  leader: Replica,
  watch: ReplicasWatch,
  workers: Proc[],
  killed: Set<string>,
  o: ReplicasOptions,
  timeoutMs: number,
) {
  const victim = reps.filter((r) => r !== leader)
    .sort((a, b) => watch.clustersOf(b.name).size - watch.clustersOf(a.name).size)[0];
  const lost = [...watch.clustersOf(victim.name)];
  killed.add(victim.name);
  const t0 = performance.now();
  victim.proc.signal("SIGKILL");
  const marks = await Promise.all([
    (async () => {
      // The workers report a change within 50 ms; a reconnect takes a retry delay (≥ 1 s).
      await until(
        () => lost.length === 0 || connectedCount(workers) < o.agents,
        timeoutMs,
        () => "no agent noticed the kill",
      );
      return await until(
        () => connectedCount(workers) >= o.agents,
        timeoutMs,
        () => `${connectedCount(workers)} of ${o.agents} agents back`,
      );
    })(),
    until(
      () => watch.clustersOf(victim.name).size === 0,
      timeoutMs,
      () => `${watch.clustersOf(victim.name).size} slices of ${victim.name} left`,
    ),
    until(
      () => lost.every((c) => watch.served(c, killed)),
      timeoutMs,
      () => `${lost.filter((c) => watch.served(c, killed)).length} of ${lost.length} served`,
    ),
  ]);
  const [back, reaped, served] = marks.map((t) => (t - t0) / 1000);
  o.log(
    `replicas: SIGKILL ${victim.name} (${lost.length} clusters): agents back in ` +
      `${back.toFixed(1)} s, its slices reaped in ${reaped.toFixed(1)} s, all its clusters ` +
      `served again in ${served.toFixed(1)} s`,
  );
  return {
    killedClusters: lost.length,
    killAgentsBackS: back,
    killReapedS: reaped,
    killServedS: served,
  };
}

/** The figure's flags (part of the bench's). */
export const REPLICAS_FLAGS: FlagSpecs = {
  "replica-clusters": {
    kind: "int",
    default: 10_000,
    min: 0,
    help: "Cluster objects of the replicas figure (0: skip it)",
  },
  "replica-agents": {
    kind: "int",
    default: 3_000,
    min: 1,
    help: "agents of the replicas figure (one per cluster, the first clusters)",
  },
  "replica-agent-procs": {
    kind: "int",
    default: 4,
    min: 1,
    help: "processes the replicas figure's agents run in",
  },
  "replica-timeout": {
    kind: "duration",
    default: 900_000,
    help: "bound on each wait of the replicas figure (reconcile, agents, kill)",
  },
  "replica-settle": {
    kind: "duration",
    default: 10_000,
    help: "how long the replicas figure watches RSS for its low before and after the agents",
  },
};

/** Run the figure with the bench's flags `v` and add its rows to `results`. */
export async function replicasFigure(
  dir: string,
  v: Record<string, unknown>,
  results: ResultSet,
  log: (msg: string) => void,
): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const clusters = v["replica-clusters"] as number;
  const agents = Math.min(v["replica-agents"] as number, clusters);
  log(`replicas: ${clusters} clusters, 3 replicas, ${agents} agents`);
  const r = await replicas(dir, {
    clusters,
    agents,
    agentProcs: v["replica-agent-procs"] as number,
    settleMs: v["replica-settle"] as number,
    timeoutMs: v["replica-timeout"] as number,
    log,
  });
  const add = (metric: string, value: number, unit: string, better: "lower" | "higher") =>
    results.add("replicas", metric, "tower", value, unit, better);
  add("clusters", r.clusters, "", "higher");
  add("reconcile_all", r.reconcileS, "s", "lower");
  add("reconcile_rate", r.clusters / r.reconcileS, "clusters/s", "higher");
  add("leader_rss", r.leaderRssMiB, "MiB", "lower");
  add("leader_rss_peak", r.leaderRssPeakMiB, "MiB", "lower");
  add("leader_heap", r.leaderHeapMiB, "MiB", "lower");
  add("standby_rss", r.standbyRssMiB, "MiB", "lower");
  add("standby_heap", r.standbyHeapMiB, "MiB", "lower");
  add("apiserver_cpu", r.apiServerCpuS, "s", "lower");
  add("leader_cpu", r.leaderCpuS, "s", "lower");
  add("standby_cpu", r.standbyCpuS, "s", "lower");
  add("apiserver_rss", r.apiServerRssMiB, "MiB", "lower");
  add("agents", r.agents, "", "higher");
  add("agents_connect", r.agentsConnectS, "s", "lower");
  add("agents_served", r.agentsServedS, "s", "lower");
  add("replica_rss_idle", r.replicaRssIdleMiB, "MiB", "lower");
  add("replica_rss_agents", r.replicaRssAgentsMiB, "MiB", "lower");
  add("rss_per_agent", r.rssPerAgentKiB, "KiB", "lower");
  add("kill_clusters", r.killedClusters, "", "higher");
  add("kill_agents_back", r.killAgentsBackS, "s", "lower");
  add("kill_reaped", r.killReapedS, "s", "lower");
  add("kill_all_served", r.killServedS, "s", "lower");
}
