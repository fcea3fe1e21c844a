/**
 * The agent link end to end: an in-process proxy, a real agent process, real
 * TCP upstreams on 127.0.0.1, bytes through `kubesphere` channels.
 */

import { Buffer } from "node:buffer";
import type { Duplex } from "node:stream";
import { createHash } from "node:crypto";
import { assert, assertEquals, assertRejects, assertStringIncludes } from "../helpers/assert.ts";
import {
  echoServer,
  hashAfterEofServer,
  patternChunk,
  readAllNode,
  sourceServer,
  startAgent,
  startTestProxy,
  waitForSessions,
} from "../helpers/tunnel.ts";

import { LARGE_PACKET_SIZE } from "../../lib/tunnel/ssh_cipher.ts";
import { StreamLimitError } from "../../lib/proxy/http/upstream.ts";
import { clusterDialer } from "../../lib/proxy/cluster_dialer.ts";

const TOKEN = "a1".repeat(32);

function target(port: number) {
  return `127.0.0.1:${port}`;
}

Deno.test("agent connects; bytes round-trip both ways with half-close, 64 MiB, 200 concurrent channels", async (t) => {
  const proxy = await startTestProxy([{ name: "alpha", token: TOKEN }]);
  const sink = hashAfterEofServer(); // kubernetes target: hashes what it gets after EOF
  const source = sourceServer(64 << 20, 7); // kubesphere target: sends 64 MiB
  const agent = await startAgent({
    name: "alpha",
    token: TOKEN,
    proxyUrl: proxy.url,
    dir: proxy.dir,
    kubernetesPort: sink.port,
    kubespherePort: source.port,
  });
  try {
    await agent.waitFor(/Connected\./);
    await waitForSessions(proxy.app, "alpha", 1);
    for (
      const line of ["Handshaking...", 'Proxy host key fingerprint="SHA256:', "Sending config"]
    ) {
      assertStringIncludes(agent.output, line);
    }
    const session = proxy.app.registry.pick("alpha")!;

    await t.step("64 MiB up, answer only after half-close", async () => {
      const ch = await session.openStream(target(sink.port));
      const expect = createHash("sha256");
      const chunk = patternChunk(3);
      const answer = readAllNode(ch);
      for (let i = 0; i < 64; i++) {
        expect.update(chunk);
        if (!ch.write(chunk)) await new Promise((r) => ch.once("drain", r));
      }
      ch.end();
      const text = (await answer).toString();
      assertEquals(text, `sha256:${expect.digest("hex")} bytes:${64 << 20}\n`);
    });

    await t.step("64 MiB down, ends with EOF, in 256 KiB packets", async () => {
      const ch = await session.openStream(target(source.port));
      // Both Tower ends open packets with their own ChaCha20-Poly1305, so both announce large
      // packets, and the agent sends data in packets over SSH's customary 32 KiB.
      const info = ch as unknown as Record<"incoming" | "outgoing", { packetSize: number }>;
      assertEquals(info.incoming.packetSize, LARGE_PACKET_SIZE);
      assertEquals(info.outgoing.packetSize, LARGE_PACKET_SIZE);
      let largest = 0;
      ch.on("data", (c: Buffer) => largest = Math.max(largest, c.length));
      ch.end(); // nothing to send: half-close our side right away
      const got = await readAllNode(ch);
      assertEquals(got.length, 64 << 20);
      assert(largest > 32 * 1024, `largest packet payload ${largest}`);
      const expect = createHash("sha256");
      const chunk = patternChunk(7);
      for (let i = 0; i < 64; i++) expect.update(chunk);
      assertEquals(createHash("sha256").update(got).digest("hex"), expect.digest("hex"));
    });

    await t.step("200 concurrent channels each get their own bytes back", async () => {
      // Agents dial only their configured targets: a second agent of the same cluster
      // announces the echo server (this also exercises two sessions of one cluster).
      const echo = echoServer();
      const agent2 = await startAgent({
        name: "alpha",
        token: TOKEN,
        proxyUrl: proxy.url,
        dir: proxy.dir,
        kubernetesPort: echo.port,
        kubespherePort: echo.port,
        label: "agent-alpha-echo",
      });
      try {
        await agent2.waitFor(/Connected\./);
        await waitForSessions(proxy.app, "alpha", 2);
        const echoSession = proxy.app.registry.sessions("alpha").find((s) =>
          s.config.KubernetesSvcHost === target(echo.port)
        )!;
        const results = await Promise.all(
          Array.from({ length: 200 }, async (_, i) => {
            const ch = await echoSession.openStream(target(echo.port));
            const closed = new Promise((r) => ch.once("close", r));
            const payload = Buffer.from(`channel-${i}-`.repeat(1000 + i));
            const back = readAllNode(ch);
            ch.end(payload);
            const got = await back;
            // The session counts a channel until both sides have closed it, which follows EOF.
            await closed;
            return got.equals(payload);
          }),
        );
        assertEquals(results.filter(Boolean).length, 200);
        assertEquals(echoSession.channels, 0);
      } finally {
        await agent2.stop();
        await echo.close();
      }
    });

    await t.step("a target the agent did not announce is refused by the proxy", async () => {
      await assertRejects(
        () => session.openStream("127.0.0.1:1"),
        Error,
        "not one the agent announced",
      );
    });
  } finally {
    await agent.stop();
    await proxy.close();
    await sink.close();
    await source.close();
  }
});

Deno.test("wrong token: agent logs the refusal and retries with backoff; unknown name refused", async () => {
  const proxy = await startTestProxy([{ name: "alpha", token: TOKEN }]);
  const wrong = await startAgent({
    name: "alpha",
    token: "b2".repeat(32),
    proxyUrl: proxy.url,
    dir: proxy.dir,
    kubernetesPort: 1,
    kubespherePort: 2,
  });
  const unknown = await startAgent({
    name: "nosuch",
    token: TOKEN,
    proxyUrl: proxy.url,
    dir: proxy.dir,
    kubernetesPort: 1,
    kubespherePort: 2,
  });
  try {
    for (const agent of [wrong, unknown]) {
      await agent.waitFor(/Proxy refused the agent reason="Unauthorized agent/);
      await agent.waitFor(/Retrying/);
      const first = agent.lines.findIndex((l) => l.includes("Handshaking..."));
      // A second attempt happens by itself.
      await agent.waitFor(/Handshaking\.\.\./, 20_000, first + 1);
      assertEquals(agent.count(/Connected\./), 0);
    }
    assertEquals(proxy.app.registry.size, 0);
  } finally {
    await wrong.stop();
    await unknown.stop();
    await proxy.close();
  }
});

Deno.test("a pinned fingerprint that does not match: the agent never sends its config", async () => {
  const proxy = await startTestProxy([{ name: "alpha", token: TOKEN }]);
  const agent = await startAgent({
    name: "alpha",
    token: TOKEN,
    proxyUrl: proxy.url,
    dir: proxy.dir,
    kubernetesPort: 1,
    kubespherePort: 2,
    extra: ["--proxy-fingerprint", "SHA256:" + "A".repeat(43)],
  });
  try {
    await agent.waitFor(/does not match --proxy-fingerprint/);
    await agent.waitFor(/Retrying/);
    assertEquals(agent.count(/Sending config/), 0);
    assertEquals(proxy.app.registry.size, 0);
  } finally {
    await agent.stop();
    await proxy.close();
  }
});

Deno.test("the right pinned fingerprint connects", async () => {
  const proxy = await startTestProxy([{ name: "alpha", token: TOKEN }]);
  const fp = proxy.app.tunnel.fingerprint;
  assert(fp?.startsWith("SHA256:"), "proxy exposes its fingerprint");
  const agent = await startAgent({
    name: "alpha",
    token: TOKEN,
    proxyUrl: proxy.url,
    dir: proxy.dir,
    kubernetesPort: 1,
    kubespherePort: 2,
    extra: ["--proxy-fingerprint", fp],
  });
  try {
    await agent.waitFor(/Connected\./);
  } finally {
    await agent.stop();
    await proxy.close();
  }
});

Deno.test("at the channel limit an open waits for a destroyed channel to be gone, the dialer gives back an idle one, and fails when none is going", async () => {
  const proxy = await startTestProxy([{ name: "alpha", token: TOKEN }], {
    maxChannelsPerSession: 2,
  });
  const echo = echoServer();
  const agent = await startAgent({
    name: "alpha",
    token: TOKEN,
    proxyUrl: proxy.url,
    dir: proxy.dir,
    kubernetesPort: echo.port,
    kubespherePort: echo.port,
  });
  try {
    await agent.waitFor(/Connected\./);
    await waitForSessions(proxy.app, "alpha", 1);
    const session = proxy.app.registry.pick("alpha")!;
    const a = await session.openStream(target(echo.port));
    const b = await session.openStream(target(echo.port));
    // Full and nothing on its way out: refused at once, as a limit the caller can recognise.
    await assertRejects(
      () => session.openStream(target(echo.port)),
      StreamLimitError,
      "channel limit 2 reached",
    );
    // b destroyed: it counts until the agent's CLOSE is back; the open waits for that.
    const order: string[] = [];
    b.once("close", () => order.push("b gone"));
    b.destroy();
    const c = await session.openStream(target(echo.port));
    order.push("c open");
    assertEquals(order, ["b gone", "c open"]);
    assertEquals(session.channels, 2);
    c.write("ping");
    const back = await new Promise<string>((resolve) => c.once("data", (d) => resolve(`${d}`)));
    assertEquals(back, "ping");
    // Full again, nothing closing: the cluster's dialer has the session give back an idle pooled
    // stream (here c) and takes its place once it is gone; with nothing to give back, and no
    // other session, it gives up with the limit, counted once as a channel-limit refusal.
    let spare: Duplex | undefined = c;
    const asked: string[] = [];
    let refusals = 0;
    const dialer = clusterDialer({
      registry: proxy.app.registry,
      cluster: "alpha",
      kind: "kubesphere",
      auth: () => ({}),
      reclaimIdle: (key) => {
        asked.push(key);
        if (spare === undefined) return false;
        spare.destroy();
        spare = undefined;
        return true;
      },
      onChannelLimitRefusal: () => refusals++,
    });
    c.once("close", () => order.push("c gone"));
    const d = (await dialer.dial()).stream;
    order.push("d open");
    assertEquals(asked, [session.id]);
    assertEquals(order.slice(2), ["c gone", "d open"]);
    assertEquals(refusals, 0);
    await assertRejects(() => dialer.dial(), StreamLimitError, "channel limit 2 reached");
    assertEquals(asked, [session.id, session.id]);
    assertEquals(refusals, 1);
    assertEquals(session.channels, 2);
    a.destroy();
    d.destroy();
  } finally {
    await agent.stop();
    await proxy.close();
    await echo.close();
  }
});
