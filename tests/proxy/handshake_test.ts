/**
 * The proxy's side of the handshake against misbehaving and Go-style peers:
 * every bad connection is closed on its own and the proxy keeps serving.
 */

import { Buffer } from "node:buffer";
import { assert, assertEquals, assertStringIncludes } from "../helpers/assert.ts";
import { connectRawAgent } from "../helpers/raw_agent.ts";
import { startTestProxy } from "../helpers/tunnel.ts";
import { encodeAgentConfig } from "../../lib/tunnel/handshake.ts";
import { WS_PROTOCOL } from "../../lib/tunnel/protocol.ts";

const TOKEN = "c3".repeat(32);
const dec = new TextDecoder();
const enc = new TextEncoder();

function config(name: string, token: string) {
  return encodeAgentConfig({
    Version: "v0.1.0",
    Name: name,
    Token: token,
    KubernetesSvcHost: "127.0.0.1:6443",
    KubeSphereSvcHost: "127.0.0.1:80",
  });
}

/** Open a raw tunnel WebSocket; resolves with it open and a promise of its close. */
async function openWs(url: string, protocol = WS_PROTOCOL) {
  const ws = new WebSocket(url.replace("http:", "ws:"), [protocol]);
  ws.binaryType = "arraybuffer";
  const closed = new Promise<CloseEvent>((resolve) =>
    ws.addEventListener("close", (e) => resolve(e))
  );
  const received: Uint8Array[] = [];
  ws.addEventListener("message", (e) => received.push(new Uint8Array(e.data as ArrayBuffer)));
  await new Promise<void>((resolve, reject) => {
    ws.addEventListener("open", () => resolve());
    ws.addEventListener("error", () => reject(new Error("ws error")));
  });
  return { ws, closed, received };
}

/** A Go-style agent (ident, empty user/password) completes the handshake. */
async function goStyleAgentWorks(url: string, name: string, token: string) {
  const agent = await connectRawAgent(url, { ident: "SSH-kubesphere-v1-client" });
  try {
    const reply = await agent.request("config", config(name, token));
    return reply.ok;
  } finally {
    agent.close();
    await agent.closed;
  }
}

Deno.test("agent port: /health, /version, 404, and other protocol versions refused", async () => {
  const proxy = await startTestProxy([]);
  try {
    const health = await fetch(`${proxy.url}/health`);
    assertEquals([health.status, await health.text()], [200, "OK\n"]);
    const version = await fetch(`${proxy.url}/version`);
    assertEquals(version.status, 200);
    assertStringIncludes(await version.text(), "v0.1.0");
    const other = await fetch(`${proxy.url}/apis`);
    assertEquals(other.status, 404);
    await other.body?.cancel();
    const v2 = await fetch(`${proxy.url}/`, {
      headers: {
        upgrade: "websocket",
        connection: "upgrade",
        "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
        "sec-websocket-version": "13",
        "sec-websocket-protocol": "kubesphere-v2",
      },
    });
    assertEquals(v2.status, 400);
    assertStringIncludes(await v2.text(), "kubesphere-v1");
  } finally {
    await proxy.close();
  }
});

Deno.test("Go-style agent: SSH-kubesphere-v1-client ident, empty credentials, config decides", async () => {
  const proxy = await startTestProxy([{ name: "alpha", token: TOKEN }]);
  try {
    const agent = await connectRawAgent(proxy.url, { ident: "SSH-kubesphere-v1-client" });
    const bad = await agent.request("config", config("alpha", "d4".repeat(32)));
    assertEquals(bad.ok, false);
    assertEquals(dec.decode(bad.payload), "Unauthorized agent");
    await agent.closed; // the proxy closes a refused session
    const unknown = await connectRawAgent(proxy.url, { ident: "SSH-kubesphere-v1-client" });
    const r = await unknown.request("config", config("nosuch", TOKEN));
    assertEquals([r.ok, dec.decode(r.payload)], [false, "Unauthorized agent"]);
    await unknown.closed;
    assert(await goStyleAgentWorks(proxy.url, "alpha", TOKEN));
  } finally {
    await proxy.close();
  }
});

Deno.test("Go agent defaults: port-less service hosts are accepted and completed as the Go proxy's URLs imply", async () => {
  const proxy = await startTestProxy([{ name: "alpha", token: TOKEN }]);
  const agent = await connectRawAgent(proxy.url, { ident: "SSH-kubesphere-v1-client" });
  try {
    // What the Go agent sends with `--kubesphere-service` left at its default.
    const payload = enc.encode(JSON.stringify({
      Version: "0.0.0-rc",
      Name: "alpha",
      Token: TOKEN,
      KubernetesSvcHost: "kubernetes.default.svc",
      KubeSphereSvcHost: "ks-apiserver.kubesphere-system.svc",
    }));
    const reply = await agent.request("config", payload);
    assertEquals([reply.ok, dec.decode(reply.payload)], [true, ""]);
    const [session] = proxy.app.registry.sessions("alpha");
    assertEquals(session.config.KubernetesSvcHost, "kubernetes.default.svc:443");
    assertEquals(session.config.KubeSphereSvcHost, "ks-apiserver.kubesphere-system.svc:80");
  } finally {
    agent.close();
    await agent.closed;
    await proxy.close();
  }
});

Deno.test("bad config payloads are refused with a reason and the session closed", async () => {
  const proxy = await startTestProxy([{ name: "alpha", token: TOKEN }], { maxConfigBytes: 16384 });
  try {
    const cases: [Uint8Array, string][] = [
      [enc.encode("{not json"), "not JSON"],
      [enc.encode('{"Name":42}'), "Name"],
      [
        enc.encode(JSON.stringify({ Name: "alpha", Token: TOKEN, CAData: "A".repeat(20_000) })),
        "exceeds",
      ],
      [enc.encode(JSON.stringify({ Name: "alpha", Token: "x".repeat(10_000) })), "Token"],
      // Over ssh2's 35,000-byte packet ceiling: the connection is dropped outright.
      [
        enc.encode(JSON.stringify({ Name: "alpha", Token: TOKEN, CAData: "A".repeat(40_000) })),
        "connection closed",
      ],
    ];
    for (const [payload, reason] of cases) {
      const agent = await connectRawAgent(proxy.url);
      const reply = await agent.request("config", payload);
      assertEquals(reply.ok, false);
      assertStringIncludes(dec.decode(reply.payload), reason);
      await agent.closed;
    }
    assertEquals(proxy.app.registry.size, 0);
    assert(await goStyleAgentWorks(proxy.url, "alpha", TOKEN), "proxy still serves agents");
  } finally {
    await proxy.close();
  }
});

Deno.test("garbage, a non-SSH peer, a 1 MB ident line and silence are all cut off; others still served", async () => {
  const proxy = await startTestProxy([{ name: "alpha", token: TOKEN }], {
    handshakeTimeoutMs: 1500,
  });
  try {
    // Random bytes with no line end: ssh2 waits for an ident; the handshake deadline closes it.
    const garbage = await openWs(proxy.url);
    garbage.ws.send(crypto.getRandomValues(new Uint8Array(4096)));
    // A text message is not part of the protocol.
    const text = await openWs(proxy.url);
    text.ws.send("GET / HTTP/1.1\r\n\r\n");
    // A huge identification line.
    const huge = await openWs(proxy.url);
    huge.ws.send(Buffer.from("SSH-2.0-" + "x".repeat(1 << 20) + "\r\n"));
    // An SSH client that authenticates but never sends config.
    const silent = await connectRawAgent(proxy.url);
    // A second, well-behaved agent is served while those are pending.
    assert(await goStyleAgentWorks(proxy.url, "alpha", TOKEN));
    await Promise.all([garbage.closed, text.closed, huge.closed, silent.closed]);
    assertEquals(proxy.app.tunnel.pendingHandshakes, 0);
    assert(await goStyleAgentWorks(proxy.url, "alpha", TOKEN), "still served afterwards");
  } finally {
    await proxy.close();
  }
});

Deno.test("channels opened by an agent are refused; ping is answered", async () => {
  const proxy = await startTestProxy([{ name: "alpha", token: TOKEN }]);
  try {
    const agent = await connectRawAgent(proxy.url, { username: "alpha", password: TOKEN });
    assertEquals((await agent.request("config", config("alpha", TOKEN))).ok, true);
    assertEquals((await agent.request("ping", new Uint8Array(0))).ok, true);
    const forward = await new Promise<Error | undefined>((resolve) =>
      agent.client.forwardOut("127.0.0.1", 1, "10.96.0.1", 443, (err) => resolve(err ?? undefined))
    );
    assert(forward, "direct-tcpip must be refused");
    const shell = await new Promise<Error | undefined>((resolve) =>
      agent.client.exec("id", (err) => resolve(err ?? undefined))
    );
    assert(shell, "session channels must be refused");
    // The session itself stays up.
    assertEquals((await agent.request("ping", new Uint8Array(0))).ok, true);
    agent.close();
    await agent.closed;
  } finally {
    await proxy.close();
  }
});

Deno.test("too many handshakes in flight: further agents get 503", async () => {
  const proxy = await startTestProxy([{ name: "alpha", token: TOKEN }], {
    maxPendingHandshakes: 2,
  });
  try {
    const a = await openWs(proxy.url);
    const b = await openWs(proxy.url);
    const third = await fetch(`${proxy.url}/`, {
      headers: {
        upgrade: "websocket",
        connection: "upgrade",
        "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
        "sec-websocket-version": "13",
        "sec-websocket-protocol": WS_PROTOCOL,
      },
    });
    assertEquals(third.status, 503);
    await third.body?.cancel();
    a.ws.close();
    b.ws.close();
    await Promise.all([a.closed, b.closed]);
  } finally {
    await proxy.close();
  }
});

Deno.test("malformed WebSocket frames close only that connection", async () => {
  const proxy = await startTestProxy([{ name: "alpha", token: TOKEN }], {
    handshakeTimeoutMs: 3000,
  });
  try {
    const frames: [string, Uint8Array][] = [
      ["unmasked client frame", new Uint8Array([0x82, 0x03, 1, 2, 3])],
      ["reserved opcode", new Uint8Array([0x83, 0x80, 0, 0, 0, 0])],
      ["RSV bits without extension", new Uint8Array([0xf2, 0x80, 0, 0, 0, 0])],
      [
        "absurd length",
        new Uint8Array([0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4]),
      ],
      ["fragmented control frame", new Uint8Array([0x09, 0x80, 0, 0, 0, 0])],
    ];
    for (const [what, frame] of frames) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: proxy.app.addr.port });
      await conn.write(enc.encode(
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" +
          `Sec-WebSocket-Protocol: ${WS_PROTOCOL}\r\n\r\n`,
      ));
      const buf = new Uint8Array(4096);
      const n = await conn.read(buf);
      assert(n && dec.decode(buf.subarray(0, n)).startsWith("HTTP/1.1 101"), what);
      await conn.write(frame).catch(() => {});
      // The proxy ends the connection: a close frame (0x88), EOF or a reset. Bounded wait.
      const deadline = setTimeout(() => conn.close(), 10_000);
      let closed = false;
      for (let i = 0; i < 100 && !closed; i++) {
        const r = await conn.read(buf).catch(() => null);
        closed = r === null || buf[0] === 0x88;
      }
      clearTimeout(deadline);
      assert(closed, `${what}: connection left open`);
      try {
        conn.close();
      } catch {
        // closed by the deadline
      }
    }
    assert(await goStyleAgentWorks(proxy.url, "alpha", TOKEN), "proxy still serves agents");
  } finally {
    await proxy.close();
  }
});
