/**
 * A slow request head is cut off by `--http-idle-timeout`. SIGTERM on the
 * proxy: in-flight requests finish (within `--shutdown-grace`),
 * sessions are closed cleanly so the agent reconnects at once, and the process
 * exits 0.
 */

import { assertEquals, assertStringIncludes } from "../helpers/assert.ts";
import { tempDir } from "../helpers/proc.ts";
import { startStandaloneStack } from "../helpers/stack.ts";

const TOKEN = "a9".repeat(32);

Deno.test("slowloris cut off; SIGTERM: an in-flight request completes, the agent is told, the proxy exits 0", async () => {
  await using dir = await tempDir();
  const stack = await startStandaloneStack({
    dir: dir.path,
    token: TOKEN,
    proxyArgs: [
      "--metrics-address",
      "127.0.0.1:0",
      "--shutdown-grace",
      "30s",
      "--http-idle-timeout",
      "1s",
    ],
  });
  const { proxy, member } = stack;
  const k8sPort = stack.kubernetesPort;
  const ksPort = stack.kubespherePort;
  try {
    const agent = stack.startAgent("agent");
    await agent.waitFor(/Connected\./, 30_000);
    const { client } = await stack.kubeconfigClient();

    // Slowloris: a head that never completes is cut off by --http-idle-timeout.
    const slow = await Deno.connect({ hostname: "127.0.0.1", port: ksPort });
    await slow.write(new TextEncoder().encode("GET /kapis HTTP/1.1\r\nHost: x\r\nX-Slow: "));
    const buf = new Uint8Array(1024);
    let read: number | null = 0;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const cut = await Promise.race([
      (async () => {
        while (read !== null) read = await slow.read(buf).catch(() => null);
        return "closed";
      })(),
      new Promise((resolve) => timer = setTimeout(() => resolve("still open"), 15_000)),
    ]);
    clearTimeout(timer);
    slow.close();
    assertEquals(cut, "closed");

    // The member answers slowly: the request is in flight when SIGTERM arrives.
    member.faults.delay(1500);
    const inFlight = fetch(`https://127.0.0.1:${k8sPort}/api/v1/namespaces`, { client });
    const metrics = /address="([^"]+)"/.exec(await proxy.waitFor(/Serving metrics and health/))![1];
    await waitForOpenChannel(`http://${metrics}/metrics`);
    proxy.signal("SIGTERM");
    const res = await inFlight;
    assertEquals(res.status, 200);
    assertEquals((await res.json()).kind, "NamespaceList");
    const status = await proxy.status();
    assertEquals(status.code, 0, proxy.tail());
    assertStringIncludes(proxy.output, "Shutting down");
    // The session was closed by the proxy, so the agent knows and starts reconnecting.
    await agent.waitFor(/Disconnected from proxy/, 10_000);
    await agent.waitFor(/Retrying/, 10_000);
  } finally {
    member.faults.delay(0);
    await stack.close();
  }
});

/** Resolve once the proxy has a tunnel channel open (the request reached the member side). */
async function waitForOpenChannel(metricsUrl: string) {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const text = await (await fetch(metricsUrl)).text();
    const m = /^tower_tunnel_channels (\d+)/m.exec(text);
    if (m && Number(m[1]) > 0) return;
  }
  throw new Error("no tunnel channel opened within 10 s");
}
