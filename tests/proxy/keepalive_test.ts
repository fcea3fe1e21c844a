/**
 * A partition with no FIN or RST between agent and proxy is detected by
 * keepalive on both sides within two intervals, and the agent reconnects when
 * the path heals.
 */

import { assert } from "../helpers/assert.ts";
import { startRelay } from "../helpers/relay.ts";
import { startAgent, startTestProxy, waitForSessions } from "../helpers/tunnel.ts";

const TOKEN = "b8".repeat(32);

Deno.test("black-holed link: both sides drop the session within 2 × keepalive; reconnect after heal", async () => {
  const keepaliveMs = 1000;
  const proxy = await startTestProxy([{ name: "alpha", token: TOKEN }], { keepaliveMs });
  const relay = startRelay(proxy.app.addr.port);
  const agent = await startAgent({
    name: "alpha",
    token: TOKEN,
    proxyUrl: `http://127.0.0.1:${relay.port}`,
    dir: proxy.dir,
    kubernetesPort: 1,
    kubespherePort: 2,
    extra: ["--keepalive", "1s", "--max-retry-interval", "1s"],
  });
  try {
    await agent.waitFor(/Connected\./);
    await waitForSessions(proxy.app, "alpha", 1);
    relay.blackhole();
    const t0 = Date.now();
    // Proxy side: the session disappears.
    await waitForSessions(proxy.app, "alpha", 0, 10_000);
    const proxyMs = Date.now() - t0;
    // Agent side: it notices too.
    await agent.waitFor(/Disconnected from proxy/, 10_000);
    const agentMs = Date.now() - t0;
    // Two intervals, plus scheduling slack for a loaded CI machine.
    assert(proxyMs <= 2 * keepaliveMs + 1500, `proxy noticed after ${proxyMs} ms`);
    assert(agentMs <= 2 * keepaliveMs + 1500, `agent noticed after ${agentMs} ms`);
    relay.heal();
    const from = agent.lines.length;
    await agent.waitFor(/Connected\./, 20_000, from);
    await waitForSessions(proxy.app, "alpha", 1);
  } finally {
    await agent.stop();
    await proxy.close();
    await relay.close();
  }
});
