/**
 * A partition with no FIN or RST between agent and proxy is noticed by keepalive on both sides
 * (each logs that the peer stopped answering: nothing else could end a link that stays open),
 * and the agent reconnects when the path heals. Event-based: how fast each side notices is the
 * keepalive interval's business, not a wall-clock bound's.
 */

import { assertMatch } from "../helpers/assert.ts";
import { freePort, tempDir } from "../helpers/proc.ts";
import { startRelay } from "../helpers/relay.ts";
import { startAgent, startProxyProc } from "../helpers/tunnel.ts";

const TOKEN = "b8".repeat(32);

Deno.test("black-holed link: both sides drop the session by keepalive; reconnect after heal", async () => {
  await using dir = await tempDir();
  const port = freePort();
  const { proc: proxy } = await startProxyProc({
    dir: dir.path,
    port,
    name: "alpha",
    token: TOKEN,
    args: ["--keepalive", "1s"],
  });
  const relay = startRelay(port);
  try {
    const agent = await startAgent({
      name: "alpha",
      token: TOKEN,
      proxyUrl: `http://127.0.0.1:${relay.port}`,
      dir: dir.path,
      kubernetesPort: 1,
      kubespherePort: 2,
      extra: ["--keepalive", "1s", "--max-retry-interval", "1s"],
    });
    try {
      await agent.waitFor(/Connected\./, 30_000);
      await proxy.waitFor(/Agent connected/, 30_000);
      const proxyFrom = proxy.lines.length;
      const agentFrom = agent.lines.length;
      relay.blackhole();
      // Proxy side: its keepalives go unanswered, and it drops the session.
      await proxy.waitFor(/Agent stopped answering keepalives/, 30_000, proxyFrom);
      await proxy.waitFor(/Agent disconnected/, 30_000, proxyFrom);
      // Agent side: its pings go unanswered, and it drops the session.
      const line = await agent.waitFor(/Disconnected from proxy/, 30_000, agentFrom);
      assertMatch(line, /proxy did not answer ping within 1000 ms/);
      const [proxyHeal, agentHeal] = [proxy.lines.length, agent.lines.length];
      relay.heal();
      await agent.waitFor(/Connected\./, 30_000, agentHeal);
      await proxy.waitFor(/Agent connected/, 30_000, proxyHeal);
    } finally {
      await agent.stop();
    }
  } finally {
    await proxy.stop();
    await relay.close();
  }
});
