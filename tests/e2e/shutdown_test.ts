/**
 * SIGTERM on the proxy: in-flight requests finish (within `--shutdown-grace`),
 * sessions are closed cleanly so the agent reconnects at once, and the process
 * exits 0.
 */

import { Buffer } from "node:buffer";
import { parse } from "yaml";
import { assertEquals, assertStringIncludes } from "../helpers/assert.ts";
import { denoRun, freePort, type Proc, tempDir } from "../helpers/proc.ts";
import { startTestApiServer } from "../apiserver/server.ts";

const TOKEN = "a9".repeat(32);

Deno.test("slowloris cut off; SIGTERM: an in-flight request completes, the agent is told, the proxy exits 0", async () => {
  await using dir = await tempDir();
  const member = await startTestApiServer();
  const agentPort = freePort();
  const k8sPort = freePort();
  const ksPort = freePort();
  await Deno.writeTextFile(
    `${dir.path}/clusters.json`,
    JSON.stringify([{
      metadata: { name: "alpha" },
      spec: {
        joinFederation: true,
        connection: {
          type: "proxy",
          token: TOKEN,
          kubernetesAPIServerPort: k8sPort,
          kubesphereAPIServerPort: ksPort,
        },
      },
    }]),
  );
  const procs: Proc[] = [];
  let client: Deno.HttpClient | undefined;
  try {
    const proxy = denoRun("proxy", "proxy.ts", [
      "--clusters-file",
      `${dir.path}/clusters.json`,
      "--host",
      "127.0.0.1",
      "--port",
      String(agentPort),
      "--publish-service-address",
      "127.0.0.1",
      "--metrics-address",
      "127.0.0.1:0",
      "--shutdown-grace",
      "30s",
      "--http-idle-timeout",
      "1s",
    ]);
    procs.push(proxy);
    const agent = denoRun("agent", "agent.ts", [
      "--name",
      "alpha",
      "--token",
      TOKEN,
      "--proxy-server",
      `http://127.0.0.1:${agentPort}`,
      "--kubeconfig",
      member.kubeconfigPath,
    ]);
    procs.push(agent);
    await agent.waitFor(/Connected\./, 30_000);
    await proxy.waitFor(/Wrote kubeconfig/, 30_000);
    const kc = parse(await Deno.readTextFile(`${dir.path}/alpha.kubeconfig`));
    const unb64 = (s: string) => Buffer.from(s, "base64").toString("utf8");
    client = Deno.createHttpClient({
      caCerts: [unb64(kc.clusters[0].cluster["certificate-authority-data"])],
      cert: unb64(kc.users[0].user["client-certificate-data"]),
      key: unb64(kc.users[0].user["client-key-data"]),
    });

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
    client?.close();
    member.faults.delay(0);
    for (const p of procs.reverse()) await p.stop();
    await member.close();
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
