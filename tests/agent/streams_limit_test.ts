/**
 * The agent's limit on streams counts channels as the proxy does (open until our CLOSE), so a
 * stream whose channel is closed but which is still finishing with its target (writing what the
 * channel brought, then waiting for the target to close) does not make the agent refuse a
 * channel the proxy is within its limit to open; such streams are bounded on their own, at twice
 * the limit. Before, a thousand busy streams churning through the proxy's pool got hundreds of
 * "too many streams" refusals (502s) per fairness pass. The real Agent class against an ssh2
 * server, targets that never close their side.
 */

// @ts-types="@types/ssh2"
import ssh2 from "ssh2";
import type { Duplex } from "node:stream";
import { Agent } from "../../lib/agent/agent.ts";
import { generateHostKeyPem } from "../../lib/tunnel/hostkey.ts";
import { ChannelOpenError, openKubesphereChannel } from "../../lib/tunnel/channel_open.ts";
import { acceptAnyIdent } from "../../lib/tunnel/ssh_ident.ts";
import { serveGlobalRequests } from "../../lib/tunnel/ssh_requests.ts";
import { OPEN_FAILURE, WS_PROTOCOL } from "../../lib/tunnel/protocol.ts";
import { assertEquals, assertRejects } from "../helpers/assert.ts";
import { readBytes, startTcpServer } from "../helpers/tunnel.ts";
import { websocketStream } from "../helpers/ws_object_stream.ts";
import { deadline } from "../helpers/deadline.ts";

Deno.test("agent: streams still finishing with their target after CLOSE do not count as open channels", async () => {
  // A target that answers each connection once, then ignores our FIN and never closes.
  const greeted = new Set<Deno.TcpConn>();
  const release = Promise.withResolvers<void>();
  const target = startTcpServer(async (conn) => {
    greeted.add(conn);
    await conn.write(new TextEncoder().encode("hi"));
    const buf = new Uint8Array(1024);
    while ((await conn.read(buf)) !== null);
    await release.promise; // our FIN is ignored until the end of the test
  });
  const server = new ssh2.Server({ hostKeys: [generateHostKeyPem()] });
  const ready = Promise.withResolvers<ssh2.Connection>();
  server.on("connection", (conn: ssh2.Connection) => {
    conn.on("error", () => {});
    conn.on("authentication", (ctx: ssh2.AuthContext) => ctx.accept());
    serveGlobalRequests(conn, () => ({ ok: true }));
    conn.on("ready", () => ready.resolve(conn));
  });
  const http = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    const { socket, response } = Deno.upgradeWebSocket(req, {
      protocol: WS_PROTOCOL,
      idleTimeout: 0,
    });
    server.injectSocket(acceptAnyIdent(websocketStream(socket), server) as never);
    return response;
  });
  const addr = `127.0.0.1:${target.port}`;
  const agent = new Agent({
    proxyServer: `http://127.0.0.1:${http.addr.port}`,
    config: () =>
      Promise.resolve({
        Version: "v0.1.0",
        Name: "alpha",
        Token: "t",
        KubernetesSvcHost: addr,
        KubeSphereSvcHost: addr,
      }),
    maxStreams: 2,
    lingerMs: 600_000, // the streams stay until their target closes
  });
  const stop = new AbortController();
  const running = agent.run(stop.signal);
  try {
    const conn = await deadline(ready.promise, 20_000, "agent connected");
    /** Open a channel, read the target's greeting, close the channel and see its close back. */
    const openAndClose = async () => {
      const ch = await openKubesphereChannel(conn, addr) as unknown as Duplex;
      await readBytes(ch, 2);
      const closed = new Promise((r) => ch.once("close", r));
      ch.destroy();
      await deadline(closed, 20_000, "channel closed");
    };
    // Four streams, at most two channels open at a time: all opened, though four streams
    // still run (their targets never close).
    for (let i = 0; i < 4; i++) await openAndClose();
    assertEquals(greeted.size, 4, "four streams to the target");
    assertEquals(agent.streams, 0, "no channel open");
    // Twice the limit of streams still finishing: the next open is refused.
    const err = await assertRejects(() => openKubesphereChannel(conn, addr), ChannelOpenError);
    assertEquals((err as ChannelOpenError).reason, OPEN_FAILURE.RESOURCE_SHORTAGE);
  } finally {
    stop.abort();
    release.resolve();
    await target.close(); // the lingering streams end with their targets
    await running.catch(() => {});
    await http.shutdown();
  }
});
