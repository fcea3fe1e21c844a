/**
 * A token holder opening sessions for one cluster (standalone proxy and real
 * agent as processes, the extra sessions hand-driven ones that refuse every
 * channel): the cluster keeps at most `--max-sessions-per-cluster`, a new
 * session closes the oldest failing one (or else the oldest), and requests
 * still reach the agent that accepts channels instead of failing with 502.
 */

import { assert, assertEquals } from "../helpers/assert.ts";
import { tempDir } from "../helpers/proc.ts";
import { connectRawAgent, type RawAgent } from "../helpers/raw_agent.ts";
import { startStandaloneStack } from "../helpers/stack.ts";
import { encodeAgentConfig } from "../../lib/tunnel/handshake.ts";

const TOKEN = "e1".repeat(32);

/** A session for `alpha` whose agent refuses every channel the proxy opens. */
async function refusingSession(agentPort: number): Promise<RawAgent> {
  const raw = await connectRawAgent(`http://127.0.0.1:${agentPort}`, {
    username: "alpha",
    password: TOKEN,
  });
  const reply = await raw.request(
    "config",
    encodeAgentConfig({
      Version: "v0.1.0",
      Name: "alpha",
      Token: TOKEN,
      KubernetesSvcHost: "127.0.0.1:6443",
      KubeSphereSvcHost: "127.0.0.1:80",
    }),
  );
  assert(reply.ok, "config accepted");
  return raw;
}

/** Ids of the sessions the proxy closed for the cap, in order (from its log). */
function capped(lines: string[]): string[] {
  return lines.filter((l) => /Closing agent session.*more than 3 sessions/.test(l))
    .map((l) => /session="([^"]+)"/.exec(l)![1]);
}

Deno.test("sessions per cluster are capped: the oldest failing one goes, requests avoid refusing agents", async () => {
  await using dir = await tempDir();
  const stack = await startStandaloneStack({
    dir: dir.path,
    token: TOKEN,
    proxyArgs: ["--max-sessions-per-cluster", "3"],
  });
  const proxy = stack.proxy;
  await proxy.waitFor(/Listening on/);
  const raws: RawAgent[] = [];
  const watches: ReadableStreamDefaultReader<Uint8Array>[] = [];
  try {
    // Four sessions against a cap of 3, none failing yet: the fourth closes the oldest.
    for (let i = 0; i < 4; i++) raws.push(await refusingSession(stack.agentPort));
    await raws[0].closed;
    await proxy.waitFor(/Closing agent session.*"alpha#1".*more than 3/);
    assertEquals(capped(proxy.lines), ["alpha#1"]);
    // Gone, all of them.
    for (const r of raws.splice(0)) r.close();
    for (const id of ["alpha#2", "alpha#3", "alpha#4"]) {
      await proxy.waitFor(new RegExp(`Agent disconnected.*session="${id}"`));
    }

    // The real agent first (the oldest session now), then two refusing ones: at the cap.
    const agent = stack.startAgent("agent");
    await agent.waitFor(/Connected\./, 30_000);
    await proxy.waitFor(/Agent connected.*session="alpha#5"/);
    for (let i = 0; i < 2; i++) raws.push(await refusingSession(stack.agentPort));
    const { server: base, client } = await stack.kubeconfigClient();
    // Eight concurrent watches, each on a stream of its own: every one is opened, some after
    // a refusing session said no (before, that refusal was the answer: 502).
    const statuses = await Promise.all(Array.from({ length: 8 }, async () => {
      const r = await fetch(`${base}/api/v1/namespaces?watch=true`, { client });
      if (r.status !== 200) return `${r.status}: ${await r.text()}`;
      const reader = r.body!.getReader();
      watches.push(reader);
      await reader.read();
      return "open";
    }));
    assertEquals(statuses, Array(8).fill("open"));
    // Both refusing sessions have failed opens by now. One more session closes the oldest
    // failing one, not the agent's (the oldest of all).
    raws.push(await refusingSession(stack.agentPort));
    await raws[0].closed;
    await proxy.waitFor(/Closing agent session.*"alpha#6".*more than 3/);
    assertEquals(capped(proxy.lines), ["alpha#1", "alpha#6"]);
    // Fresh requests keep going to the agent.
    for (let i = 0; i < 8; i++) {
      const r = await fetch(`${base}/api/v1/namespaces`, { client });
      assertEquals(r.status, 200, await r.text());
    }
    assertEquals(agent.count(/Disconnected from proxy/), 0, "the agent's session was closed");
  } finally {
    for (const w of watches) await w.cancel().catch(() => {});
    for (const r of raws) r.close();
    await stack.close();
  }
});
