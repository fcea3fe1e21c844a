/**
 * `deno task bench --only replicas` end to end at a tiny size (30 Clusters, 9 agents): the test
 * API server, three `proxy.ts` replicas and the agents run as processes, and `--json` holds every
 * result of the figure with plausible values — every Cluster reconciled, every agent's cluster
 * served through a replica's slice, a standby killed and its clusters served again elsewhere.
 */

import { assert, assertEquals } from "../helpers/assert.ts";
import { runBench } from "../helpers/bench_run.ts";

Deno.test("bench: a tiny replicas figure reconciles, serves through slices and survives a kill", async () => {
  const { got } = await runBench([
    "--only",
    "replicas",
    "--runs",
    "1",
    "--paths",
    "direct",
    "--replica-clusters",
    "30",
    "--replica-agents",
    "9",
    "--replica-agent-procs",
    "1",
    "--replica-settle",
    "500ms",
    "--replica-timeout",
    "60s",
  ]);
  const v = (metric: string) => got.get(`replicas/${metric}/tower`) ?? NaN;
  assertEquals(v("clusters"), 30);
  assertEquals(v("agents"), 9);
  // The load balancer spreads 9 agents over 3 replicas; the most loaded standby is killed.
  assert(
    v("kill_clusters") >= 1 && v("kill_clusters") <= 9,
    `kill_clusters ${v("kill_clusters")}`,
  );
  for (
    const m of [
      "reconcile_all",
      "agents_connect",
      "agents_served",
      "kill_agents_back",
      "kill_reaped",
      "kill_all_served",
    ]
  ) {
    assert(v(m) > 0 && Number.isFinite(v(m)), `${m}: ${v(m)} s`);
  }
  for (const m of ["leader_rss", "standby_rss", "replica_rss_idle", "replica_rss_agents"]) {
    // A Deno process is at least ~30 MiB.
    assert(v(m) > 20 && v(m) < 4096, `${m}: ${v(m)} MiB`);
  }
  assert(v("leader_heap") > 0 && v("standby_heap") > 0, "heap read from /metrics");
  assert(Number.isFinite(v("rss_per_agent")), `rss_per_agent: ${v("rss_per_agent")}`);
});
