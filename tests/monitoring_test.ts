/**
 * deploy/monitoring names only metrics the proxy really exports: a running
 * proxy (with an agent, so per-cluster series exist) is scraped, and every
 * `tower_*` metric in the PrometheusRule's expressions and the Grafana
 * dashboard's queries must be in its `/metrics` (a `# TYPE` line, or a sample
 * of a histogram's `_bucket`/`_sum`/`_count`). The manifests render with
 * `kubectl kustomize`.
 */

import { parseAllDocuments } from "yaml";
import { assert, assertEquals } from "./helpers/assert.ts";
import { run, tempDir } from "./helpers/proc.ts";
import { startStandaloneStack } from "./helpers/stack.ts";

/** Every `tower_…` metric name in `text` (PromQL). */
function metricNames(text: string): Set<string> {
  return new Set(text.match(/\btower_[a-z0-9_]+/g) ?? []);
}

Deno.test("deploy/monitoring: every metric its alerts and dashboard use is in a running proxy's /metrics", async () => {
  const rendered = await run("kubectl", ["kustomize", "deploy/monitoring"]);
  assertEquals(rendered.code, 0, rendered.stderr);
  const objs = parseAllDocuments(rendered.stdout).map((d) => d.toJS());
  const kinds = objs.map((o) => o.kind).sort();
  assertEquals(kinds, ["PrometheusRule", "Service", "ServiceMonitor"]);
  const rule = objs.find((o) => o.kind === "PrometheusRule");
  const alerts = rule.spec.groups.flatMap((g: { rules: { alert: string; expr: string }[] }) =>
    g.rules
  );
  assertEquals(alerts.map((a: { alert: string }) => a.alert).sort(), [
    "TowerAgentFlapping",
    "TowerChannelLimitRefusals",
    "TowerClusterUnavailable",
    "TowerHandshakeFailures",
    "TowerReplicaImbalance",
    "TowerRequestsRefused",
  ]);
  const dashboard = JSON.parse(await Deno.readTextFile("deploy/monitoring/dashboard.json"));
  const queries = dashboard.panels.flatMap((p: { targets: { expr: string }[] }) =>
    p.targets.map((t) => t.expr)
  );
  const used = metricNames([...alerts.map((a: { expr: string }) => a.expr), ...queries].join("\n"));
  assert(used.size >= 8, [...used].join(" "));

  await using dir = await tempDir();
  const stack = await startStandaloneStack({
    dir: dir.path,
    token: "9c".repeat(32),
    proxyArgs: ["--metrics-address", "127.0.0.1:0"],
  });
  try {
    const agent = stack.startAgent("agent");
    await agent.waitFor(/Connected\./, 30_000);
    const addr = /address="([^"]+)"/.exec(
      await stack.proxy.waitFor(/Serving metrics and health/),
    )![1];
    const text = await (await fetch(`http://${addr}/metrics`)).text();
    const exported = new Set<string>();
    for (const m of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
      exported.add(m[1]);
      if (m[2] === "histogram") {
        for (const s of ["_bucket", "_sum", "_count"]) exported.add(m[1] + s);
      }
    }
    const missing = [...used].filter((n) => !exported.has(n));
    assertEquals(missing, [], `not exported by the proxy: ${missing.join(", ")}`);
  } finally {
    await stack.close();
  }
});
