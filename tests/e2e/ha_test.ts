/**
 * Several agents of one cluster (standalone proxy, real processes): requests
 * spread over the sessions; killing one agent ends only the streams it
 * carried, promptly, and requests keep succeeding through the other. At the
 * channel limit new streams go to the other agent; a request refused because
 * every session is full is counted in `tower_channel_limit_refusals_total`.
 */

import { assert, assertEquals, assertStringIncludes } from "../helpers/assert.ts";
import { deadline } from "../helpers/deadline.ts";
import { run, tempDir } from "../helpers/proc.ts";
import { startStandaloneStack } from "../helpers/stack.ts";

const TOKEN = "d0".repeat(32);

Deno.test("two agents, one killed mid-run: its watch ends promptly, gets keep working", async () => {
  await using dir = await tempDir();
  const stack = await startStandaloneStack({
    dir: dir.path,
    token: TOKEN,
    proxyArgs: ["--keepalive", "10m"],
  });
  try {
    const a = stack.startAgent("agent-a");
    const b = stack.startAgent("agent-b");
    await a.waitFor(/Connected\./, 30_000);
    await b.waitFor(/Connected\./, 30_000);
    const { path: kubeconfigPath, server: base, client } = await stack.kubeconfigClient();
    const get = async () => {
      const r = await fetch(`${base}/api/v1/namespaces`, { client });
      const body = await r.json();
      return r.status === 200 && body.kind === "NamespaceList";
    };
    // The real kubectl works with the written kubeconfig.
    const k = await run("kubectl", [
      `--kubeconfig=${kubeconfigPath}`,
      `--cache-dir=${dir.path}/c`,
      "get",
      "ns",
    ]);
    assertEquals(k.code, 0, k.stderr);
    assertStringIncludes(k.stdout, "kube-system");

    // Six concurrent watches: each holds its own upstream stream; beyond the few idle
    // pooled ones, new streams alternate between the two sessions, so both carry some.
    const watches = await Promise.all(Array.from({ length: 6 }, async () => {
      const r = await fetch(`${base}/api/v1/namespaces?watch=true`, { client });
      assertEquals(r.status, 200);
      const reader = r.body!.getReader();
      await reader.read(); // the first ADDED event: the stream is live
      let done = false;
      const ended = (async () => {
        try {
          while (!(await reader.read()).done);
        } catch {
          // ended with an error: also an end
        }
        done = true;
      })();
      return { reader, ended, isDone: () => done };
    }));

    // Kill agent a outright: no goodbye. Its transport closes, and with keepalive set to 10
    // minutes nothing but that close can end its streams while the test runs.
    const from = stack.proxy.lines.length;
    a.signal("SIGKILL");
    await a.status();
    await deadline(
      Promise.race(watches.map((w) => w.ended)),
      60_000,
      "a watch carried by the killed agent ends",
    );
    await stack.proxy.waitFor(/Agent disconnected/, 10_000, from);
    assert(!/stopped answering keepalives/.test(stack.proxy.output), "ended by keepalive");
    // Gets keep succeeding through agent b.
    for (let i = 0; i < 20; i++) assert(await get(), `get ${i} failed after losing one agent`);
    // Watches on the surviving agent are still open: end them ourselves.
    const open = watches.filter((w) => !w.isDone());
    assert(open.length > 0, "the watches on the surviving agent must stay open");
    for (const w of open) {
      await w.reader.cancel();
      await w.ended;
    }
  } finally {
    await stack.close();
  }
});

Deno.test("a session at its stream limit leaves new streams to another agent of the cluster", async () => {
  await using dir = await tempDir();
  const stack = await startStandaloneStack({
    dir: dir.path,
    token: TOKEN,
    proxyArgs: ["--max-channels-per-session", "2", "--metrics-address", "127.0.0.1:0"],
  });
  const watches: ReadableStreamDefaultReader<Uint8Array>[] = [];
  try {
    const addr = /address="([^"]+)"/.exec(
      await stack.proxy.waitFor(/Serving metrics and health/, 30_000),
    )![1];
    /** The refusals counted for cluster alpha (0 while the series does not exist). */
    const refusals = async () => {
      const text = await (await fetch(`http://${addr}/metrics`)).text();
      const m = /^tower_channel_limit_refusals_total\{cluster="alpha"\} (\d+)$/m.exec(text);
      return m ? Number(m[1]) : 0;
    };
    // Agent a alone: two watches (each a stream of its own) fill its session.
    const a = stack.startAgent("agent-a");
    await a.waitFor(/Connected\./, 30_000);
    const { server: base, client } = await stack.kubeconfigClient();
    const watch = async () => {
      const r = await fetch(`${base}/api/v1/namespaces?watch=true`, { client });
      if (r.status !== 200) return `${r.status}: ${await r.text()}`;
      const reader = r.body!.getReader();
      watches.push(reader);
      await reader.read(); // the first event: the stream is live
      return "open";
    };
    assertEquals(await watch(), "open");
    assertEquals(await watch(), "open");
    // With a third, a's session refuses the stream; agent b's takes it.
    const b = stack.startAgent("agent-b");
    await b.waitFor(/Connected\./, 30_000);
    assertEquals(await watch(), "open");
    assertEquals(await watch(), "open");
    // a's full session refused streams that b took: no request was refused.
    assertEquals(await refusals(), 0);
    // Both full: the answer says what failed, the log says why, the metric counts it.
    const full = await watch();
    assert(full.startsWith("502: ") && full.includes("API server unreachable"), full);
    assert(!full.includes("channel limit") && !full.includes("alpha#"), full);
    await stack.proxy.waitFor(/upstream unreachable.*channel limit 2 reached/);
    assertEquals(await refusals(), 1);
  } finally {
    for (const w of watches) await w.cancel().catch(() => {});
    await stack.close();
  }
});

Deno.test("at its stream limit a session gives up an idle stream of the other endpoint for a new one", async () => {
  await using dir = await tempDir();
  const stack = await startStandaloneStack({
    dir: dir.path,
    token: TOKEN,
    proxyArgs: ["--max-channels-per-session", "2"],
  });
  // The agent's kubesphere target: a keep-alive HTTP server.
  const ks = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    () => new Response("ok"),
  );
  const watches: ReadableStreamDefaultReader<Uint8Array>[] = [];
  try {
    const a = stack.startAgent("agent-a", [
      "--kubesphere-service",
      `127.0.0.1:${ks.addr.port}`,
    ]);
    await a.waitFor(/Connected\./, 30_000);
    const { server: base, client } = await stack.kubeconfigClient();
    const watch = async () => {
      const r = await fetch(`${base}/api/v1/namespaces?watch=true`, { client });
      assertEquals(r.status, 200, r.status === 200 ? "" : await r.text());
      const reader = r.body!.getReader();
      watches.push(reader);
      assert(!(await reader.read()).done, "the watch delivers its first event");
    };
    // A request on the kubesphere endpoint leaves its stream idle in that endpoint's pool.
    const r = await fetch(`http://127.0.0.1:${stack.kubespherePort}/kapis/version`);
    assertEquals(await r.text(), "ok");
    // A watch on the kubernetes endpoint (a stream of its own) fills the session.
    await watch();
    // A second one: the kubernetes endpoint has nothing idle; the kubesphere one gives its up.
    await watch();
  } finally {
    for (const w of watches) await w.cancel().catch(() => {});
    await stack.close();
    await ks.shutdown();
  }
});
