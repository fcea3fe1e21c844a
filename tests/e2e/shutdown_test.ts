/**
 * A slow request head is cut off by `--http-idle-timeout`. SIGTERM on the
 * proxy: a request held in flight at the member across the signal finishes
 * (within `--shutdown-grace`), sessions are closed cleanly so the agent
 * reconnects at once, and the process exits 0.
 */

import { assert, assertEquals, assertStringIncludes } from "../helpers/assert.ts";
import { deadline } from "../helpers/deadline.ts";
import { tempDir } from "../helpers/proc.ts";
import { startStandaloneStack } from "../helpers/stack.ts";

const TOKEN = "a9".repeat(32);

Deno.test("slowloris cut off; SIGTERM: an in-flight request completes, the agent is told, the proxy exits 0", async () => {
  await using dir = await tempDir();
  const stack = await startStandaloneStack({
    dir: dir.path,
    token: TOKEN,
    proxyArgs: [
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
    await deadline(
      (async () => {
        while (await slow.read(buf).catch(() => null) !== null);
      })(),
      30_000,
      "the proxy closes a connection whose head never completes",
    );
    slow.close();

    // The member holds the response: the request is in flight when SIGTERM arrives, and
    // stays so until the proxy has begun shutting down.
    const held = member.faults.hold((method, path) =>
      method === "GET" && path === "/api/v1/namespaces"
    );
    const inFlight = fetch(`https://127.0.0.1:${k8sPort}/api/v1/namespaces`, { client });
    await deadline(held.arrived, 30_000, "the request reached the member");
    proxy.signal("SIGTERM");
    await proxy.waitFor(/Shutting down/);
    // Draining: the endpoints wait for the held request (the grace is 30 s).
    assert(!/cluster endpoints closed/.test(proxy.output), "closed before the request finished");
    held.release();
    const res = await inFlight;
    assertEquals(res.status, 200);
    assertEquals((await res.json()).kind, "NamespaceList");
    const status = await proxy.status();
    assertEquals(status.code, 0, proxy.tail());
    assertStringIncludes(proxy.output, "cluster endpoints closed");
    // The session was closed by the proxy, so the agent knows and starts reconnecting.
    await agent.waitFor(/Disconnected from proxy/, 10_000);
    await agent.waitFor(/Retrying/, 10_000);
  } finally {
    member.faults.reset();
    await stack.close();
  }
});
