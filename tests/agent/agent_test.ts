/**
 * The agent process: CLI, reconnection after a proxy restart, SIGHUP and
 * SIGTERM, and refusing targets it was not configured for.
 */

// @ts-types="@types/ssh2"
import ssh2 from "ssh2";
import {
  assert,
  assertEquals,
  assertMatch,
  assertRejects,
  assertStringIncludes,
} from "../helpers/assert.ts";
import { denoRun, freePort, run, tempDir } from "../helpers/proc.ts";
import {
  clustersYaml,
  echoServer,
  readAllNode,
  startAgent,
  startTcpServer,
} from "../helpers/tunnel.ts";
import { deadline } from "../helpers/deadline.ts";
import { Agent } from "../../lib/agent/agent.ts";
import { dialTarget } from "../../lib/agent/forward.ts";
import { ProxyTrust } from "../../lib/agent/proxy_trust.ts";
import { AGENT_FLAGS } from "../../agent.ts";
import { PROXY_FLAGS } from "../../proxy.ts";
import { generateHostKeyPem } from "../../lib/tunnel/hostkey.ts";
import { ChannelOpenError, openKubesphereChannel } from "../../lib/tunnel/channel_open.ts";
import { acceptAnyIdent } from "../../lib/tunnel/ssh_ident.ts";
import { serveGlobalRequests } from "../../lib/tunnel/ssh_requests.ts";
import { websocketStream } from "../helpers/ws_object_stream.ts";
import { WS_PROTOCOL } from "../../lib/tunnel/protocol.ts";

const TOKEN = "e5".repeat(32);

Deno.test("CLI: --help lists every flag; bad values give a one-line error naming the flag", async () => {
  for (const [script, flags] of [["agent.ts", AGENT_FLAGS], ["proxy.ts", PROXY_FLAGS]] as const) {
    const help = await run(Deno.execPath(), ["run", "-A", "--quiet", script, "--help"]);
    assertEquals(help.code, 0);
    for (const name of Object.keys(flags)) assertStringIncludes(help.stdout, `--${name}`);
  }
  const cases: [string, string[], string][] = [
    ["agent.ts", ["--name", "a", "--token", "t", "--keepalive", "30"], "--keepalive"],
    [
      "agent.ts",
      ["--name", "a", "--token", "t", "--max-retry-interval", "soon"],
      "--max-retry-interval",
    ],
    ["agent.ts", ["--token", "t"], "--name"],
    ["agent.ts", ["--name", "a", "--bogus"], "--bogus"],
    ["proxy.ts", ["--port", "80"], "--port"],
    ["proxy.ts", ["--port", "http"], "--port"],
    ["proxy.ts", ["--keepalive", "1y"], "--keepalive"],
  ];
  for (const [script, args, flag] of cases) {
    const r = await run(Deno.execPath(), ["run", "-A", "--quiet", script, ...args]);
    assertEquals(r.code, 2, `${script} ${args.join(" ")}: ${r.stderr}`);
    const lines = r.stderr.trim().split("\n");
    assertEquals(lines.length, 1, r.stderr);
    assertStringIncludes(lines[0], flag);
  }
});

Deno.test("proxy killed and restarted: the agent reconnects by itself; SIGHUP retries at once; SIGTERM exits 0", async () => {
  await using dir = await tempDir();
  const port = freePort();
  const clusters = `${dir.path}/clusters.json`;
  await Deno.writeTextFile(clusters, clustersYaml([{ name: "alpha", token: TOKEN }]));
  const proxyArgs = [
    "--clusters-file",
    clusters,
    "--host",
    "127.0.0.1",
    "--port",
    String(port),
    "--metrics-address",
    "127.0.0.1:0",
  ];
  let proxy = denoRun("proxy", "proxy.ts", proxyArgs);
  const agent = await startAgent({
    name: "alpha",
    token: TOKEN,
    proxyUrl: `http://127.0.0.1:${port}`,
    dir: dir.path,
    kubernetesPort: 1,
    kubespherePort: 2,
    extra: ["--max-retry-interval", "60s"],
  });
  try {
    await agent.waitFor(/Connected\./);
    const fp1 = await proxy.waitFor(/SSH host key/);
    proxy.signal("SIGKILL");
    await proxy.status();
    await agent.waitFor(/Disconnected from proxy/);
    proxy = denoRun("proxy-2", "proxy.ts", proxyArgs);
    const fp2 = await proxy.waitFor(/SSH host key/);
    // The host key file persisted: same fingerprint after the restart.
    assertEquals(fp2.match(/SHA256:\S+"/)?.[0], fp1.match(/SHA256:\S+"/)?.[0]);
    const from = agent.lines.length;
    await agent.waitFor(/Connected\./, 30_000, from);

    // SIGHUP while waiting to retry: kill the proxy, let the backoff grow, then HUP.
    proxy.signal("SIGKILL");
    await proxy.status();
    await agent.waitFor(/Retrying/, 20_000, from);
    proxy = denoRun("proxy-3", "proxy.ts", proxyArgs);
    await proxy.waitFor(/Listening on/);
    const beforeHup = agent.lines.length;
    agent.signal("SIGHUP");
    await agent.waitFor(/SIGHUP: reconnecting now/, 10_000, beforeHup);
    await agent.waitFor(/Connected\./, 10_000, beforeHup);

    const status = await agent.stop();
    assertEquals(status.code, 0, agent.tail());
    assertStringIncludes(agent.output, "Shutting down");
  } finally {
    await agent.stop();
    await proxy.stop();
  }
});

Deno.test("--max-retry gives up with a non-zero exit", async () => {
  await using dir = await tempDir();
  const agent = await startAgent({
    name: "alpha",
    token: TOKEN,
    proxyUrl: `http://127.0.0.1:${freePort()}`,
    dir: dir.path,
    kubernetesPort: 1,
    kubespherePort: 2,
    extra: ["--max-retry", "2", "--max-retry-interval", "200ms"],
  });
  const status = await agent.status();
  assertEquals(status.code, 1);
  assertMatch(agent.output, /giving up after 2 failed attempts/);
});

/** A minimal stand-in proxy: accepts any agent, then lets the test open channels. */
function fakeProxy() {
  const server = new ssh2.Server({ hostKeys: [generateHostKeyPem()] });
  const conns = Promise.withResolvers<ssh2.Connection>();
  server.on("connection", (conn: ssh2.Connection) => {
    conn.on("error", () => {});
    conn.on("authentication", (ctx: ssh2.AuthContext) => ctx.accept());
    serveGlobalRequests(conn, () => ({ ok: true }));
    conn.on("ready", () => conns.resolve(conn));
  });
  const http = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    const { socket, response } = Deno.upgradeWebSocket(req, {
      protocol: WS_PROTOCOL,
      idleTimeout: 0,
    });
    const stream = websocketStream(socket);
    server.injectSocket(acceptAnyIdent(stream, server) as never);
    return response;
  });
  return { url: `http://127.0.0.1:${http.addr.port}`, conn: conns.promise, http };
}

Deno.test("the agent dials only its two configured targets", async () => {
  await using dir = await tempDir();
  const fake = fakeProxy();
  const echo = echoServer();
  const agent = await startAgent({
    name: "alpha",
    token: TOKEN,
    proxyUrl: fake.url,
    dir: dir.path,
    kubernetesPort: echo.port,
    kubespherePort: echo.port,
  });
  try {
    await agent.waitFor(/Connected\./);
    const conn = await fake.conn;
    const err = await assertRejects(
      () => openKubesphereChannel(conn, `127.0.0.1:${echo.port + 1}`),
      ChannelOpenError,
    );
    assertEquals((err as ChannelOpenError).reason, 1);
    await agent.waitFor(/Refusing to dial a target that is not configured/);
    // Odd bytes in the extra data are refused the same way, and the session survives them.
    for (const odd of ["\u0000\u00ff:1", `127.0.0.1:${echo.port}\r\n`, "x".repeat(5000), ""]) {
      const e = await assertRejects(() => openKubesphereChannel(conn, odd), ChannelOpenError);
      assertEquals((e as ChannelOpenError).reason, 1);
    }
    assertEquals(echo.connections, 0);
    // A configured target works on the same session.
    const ch = await openKubesphereChannel(conn, `127.0.0.1:${echo.port}`);
    const back = readAllNode(ch as never);
    ch.end("hello");
    assertEquals((await back).toString(), "hello");
    assert(echo.connections === 1);
  } finally {
    await agent.stop();
    await fake.http.shutdown();
    await echo.close();
  }
});

/** Options of an agent for cluster alpha at `proxy`, its kubernetes target on loopback `port`. */
function alphaAgent(proxy: string, port: number) {
  return {
    proxyServer: proxy,
    trust: new ProxyTrust({ kind: "any" }),
    config: () =>
      Promise.resolve({
        Version: "v0.1.0",
        Name: "alpha",
        Token: TOKEN,
        KubernetesSvcHost: `127.0.0.1:${port}`,
        KubeSphereSvcHost: "127.0.0.1:2",
      }),
  };
}

Deno.test("a session that ends while the agent dials its target: the late connection is closed, the agent lives on", async () => {
  const fake = fakeProxy();
  const targetClosed = Promise.withResolvers<void>();
  const target = startTcpServer(async (conn) => {
    const buf = new Uint8Array(1024);
    while (await conn.read(buf).catch(() => null) !== null);
    targetClosed.resolve();
  });
  const dialling = Promise.withResolvers<void>();
  const release = Promise.withResolvers<void>();
  const connected = Promise.withResolvers<void>();
  const disconnected = Promise.withResolvers<void>();
  const agent = new Agent({
    ...alphaAgent(fake.url, target.port),
    // The dial is held until the session is gone.
    dialTarget: async (t) => {
      dialling.resolve();
      await release.promise;
      return await dialTarget(t);
    },
    onState: (s) => (s === "connected" ? connected : disconnected).resolve(),
  });
  const stop = new AbortController();
  const running = agent.run(stop.signal);
  try {
    await deadline(connected.promise, 30_000, "agent connected");
    const conn = await fake.conn;
    const opening = openKubesphereChannel(conn, `127.0.0.1:${target.port}`).catch((e) => e);
    await deadline(dialling.promise, 10_000, "agent dialling");
    conn.end();
    await deadline(disconnected.promise, 10_000, "agent saw the session end");
    assert((await opening) instanceof Error, "the channel never opened");
    release.resolve();
    // Answering the channel now throws inside the agent (its session is torn down): that is
    // caught, and the target connection it had made is closed, not leaked.
    await deadline(targetClosed.promise, 10_000, "target connection closed");
    assertEquals(target.connections, 1);
  } finally {
    release.resolve();
    stop.abort();
    await running;
    await fake.http.shutdown();
    await target.close();
  }
});

/**
 * A TCP port on loopback that never completes a handshake: a listener that never accepts, its
 * accept queue filled (Linux then drops further SYNs, and a connect stays in SYN_SENT, retried
 * for about two minutes). Filled until a probe's connect is seen in SYN_SENT in /proc/net/tcp.
 */
async function unansweringPort(): Promise<{ port: number; close(): void }> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  const filled: Deno.TcpConn[] = [];
  const close = () => {
    for (const c of filled) c.close();
    listener.close();
  };
  try {
    for (let i = 0; i < 100_000; i++) {
      let settled = false;
      const probe = Deno.connect({ hostname: "127.0.0.1", port }).finally(() => settled = true);
      const got = await Promise.race([probe, synSentTo(port, () => settled)]);
      if (typeof got === "object") {
        filled.push(got);
        continue;
      }
      if (got === "stuck") {
        // Left pending: the listener's close ends it (a reset at the next retry).
        probe.then((c) => c.close(), () => {});
        return { port, close };
      }
      filled.push(await probe);
    }
    throw new Error("the accept queue never filled");
  } catch (err) {
    close();
    throw err;
  }
}

/** Resolves "stuck" once a connect to `port` stays in SYN_SENT over two looks, or when `done()`. */
async function synSentTo(port: number, done: () => boolean): Promise<"stuck" | undefined> {
  const rem = `:${port.toString(16).toUpperCase().padStart(4, "0")}`;
  let seen = 0;
  while (!done()) {
    const table = await Deno.readTextFile("/proc/net/tcp");
    // sl local_address rem_address st …; SYN_SENT is state 02.
    const stuck = table.split("\n").some((line) => {
      const f = line.trim().split(/\s+/);
      return f[2]?.endsWith(rem) && f[3] === "02";
    });
    seen = stuck ? seen + 1 : 0;
    if (seen >= 2) return "stuck";
    await new Promise((r) => setTimeout(r, 20)); // polling the kernel's table, not a wait
  }
}

Deno.test("a target that never accepts: the agent refuses the channel at its dial deadline, and counts the stream out", async () => {
  const fake = fakeProxy();
  const target = await unansweringPort();
  const connected = Promise.withResolvers<void>();
  const agent = new Agent({
    ...alphaAgent(fake.url, target.port),
    dialTimeoutMs: 500,
    onState: (s) => s === "connected" && connected.resolve(),
  });
  const stop = new AbortController();
  const running = agent.run(stop.signal);
  try {
    await deadline(connected.promise, 30_000, "agent connected");
    const conn = await fake.conn;
    // Without a deadline the open waits out the kernel's SYN retries (~2 min).
    const err = await deadline(
      openKubesphereChannel(conn, `127.0.0.1:${target.port}`).then(() => undefined, (e) => e),
      30_000,
      "channel open refused",
    );
    assert(err instanceof ChannelOpenError, `refused, not ${err}`);
    assertEquals(err.reason, 2, "CONNECT_FAILED");
    assertStringIncludes(err.description, `dial 127.0.0.1:${target.port}`);
    assertStringIncludes(err.description, "not connected within 500 ms");
    assertEquals(agent.streams, 0, "the stream is counted out");
    // And its connect is given up, not left to the kernel's retries: only the filler's probe
    // stays in SYN_SENT (each abandoned connect would hold a socket for ~2 min).
    let pending = synSentCount(target.port);
    for (let i = 0; pending > 1 && i < 250; i++) {
      await new Promise((r) => setTimeout(r, 20)); // polling the kernel's table, bounded
      pending = synSentCount(target.port);
    }
    assertEquals(pending, 1, "connects to the target still in SYN_SENT");
  } finally {
    stop.abort();
    await running;
    await fake.http.shutdown();
    target.close();
  }
});

/** Sockets in SYN_SENT towards `port` on this machine (/proc/net/tcp). */
function synSentCount(port: number): number {
  const rem = `:${port.toString(16).toUpperCase().padStart(4, "0")}`;
  return Deno.readTextFileSync("/proc/net/tcp").split("\n").filter((line) => {
    const f = line.trim().split(/\s+/);
    return f[2]?.endsWith(rem) && f[3] === "02";
  }).length;
}
