/**
 * `/metrics`, `/healthz` and `/readyz` of a real proxy process: the exposition
 * parses as Prometheus text and its counters move with agent traffic.
 */

import { assert, assertEquals, assertStringIncludes } from "../helpers/assert.ts";
import { denoRun, freePort, tempDir } from "../helpers/proc.ts";
import { clustersYaml, startAgent } from "../helpers/tunnel.ts";

const TOKEN = "f6".repeat(32);

/** Parse Prometheus text exposition strictly enough to catch a malformed line. */
export function parsePrometheus(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  const types = new Set(["counter", "gauge", "histogram", "summary", "untyped"]);
  for (const line of text.split("\n")) {
    if (line === "") continue;
    if (line.startsWith("# HELP ")) continue;
    if (line.startsWith("# TYPE ")) {
      const [, , , type] = line.split(" ");
      assert(types.has(type), `bad TYPE line: ${line}`);
      continue;
    }
    const m =
      /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (-?[0-9.eE+-]+|NaN|\+Inf|-Inf)( \d+)?$/
        .exec(line);
    assert(m, `malformed sample line: ${line}`);
    samples.set(`${m[1]}${m[2] ?? ""}`, Number(m[3]));
  }
  return samples;
}

Deno.test("proxy metrics: valid exposition, counters follow connects and refusals; health and readiness", async () => {
  await using dir = await tempDir();
  const clusters = `${dir.path}/clusters.json`;
  await Deno.writeTextFile(clusters, clustersYaml([{ name: "alpha", token: TOKEN }]));
  const port = freePort();
  const proxy = denoRun("proxy", "proxy.ts", [
    "--clusters-file",
    clusters,
    "--host",
    "127.0.0.1",
    "--port",
    String(port),
    "--metrics-address",
    "127.0.0.1:0",
  ]);
  const agents = [];
  try {
    const line = await proxy.waitFor(/Serving metrics and health/);
    const metricsUrl = `http://${/address="([^"]+)"/.exec(line)![1]}`;
    const scrape = async () => parsePrometheus(await (await fetch(`${metricsUrl}/metrics`)).text());

    const healthz = await fetch(`${metricsUrl}/healthz`);
    assertEquals([healthz.status, await healthz.text()], [200, "ok\n"]);
    await proxy.waitFor(/Listening on/);
    const readyz = await fetch(`${metricsUrl}/readyz`);
    assertEquals(readyz.status, 200);
    assertStringIncludes(await readyz.text(), "agent port: listening");

    const before = await scrape();
    assertEquals(before.get('tower_agent_connects_total{cluster="alpha"}'), undefined);

    const good = await startAgent({
      name: "alpha",
      token: TOKEN,
      proxyUrl: `http://127.0.0.1:${port}`,
      dir: dir.path,
      kubernetesPort: 1,
      kubespherePort: 2,
    });
    agents.push(good);
    await good.waitFor(/Connected\./);
    const bad = await startAgent({
      name: "alpha",
      token: "00".repeat(32),
      proxyUrl: `http://127.0.0.1:${port}`,
      dir: dir.path,
      kubernetesPort: 1,
      kubespherePort: 2,
      label: "bad-agent",
    });
    agents.push(bad);
    await bad.waitFor(/Proxy refused the agent/);

    const after = await scrape();
    assertEquals(after.get('tower_agent_connects_total{cluster="alpha"}'), 1);
    assertEquals(after.get('tower_agent_sessions{cluster="alpha"}'), 1);
    assert((after.get('tower_handshake_failures_total{reason="unauthorized"}') ?? 0) >= 1);
    assert(
      after.has("tower_process_resident_memory_bytes") ||
        after.has("tower_nodejs_heap_size_used_bytes"),
    );

    await good.stop();
    await proxy.waitFor(/Agent disconnected/);
    const end = await scrape();
    assertEquals(end.get('tower_agent_disconnects_total{cluster="alpha"}'), 1);
    assertEquals(end.get('tower_agent_sessions{cluster="alpha"}'), 0);
  } finally {
    for (const a of agents) await a.stop();
    await proxy.stop();
  }
});
