/**
 * The agent through an HTTP proxy: CONNECT, then WebSocket framing of our own;
 * NO_PROXY bypasses it. Uses a real CONNECT proxy and a real proxy process.
 */

import { assertEquals, assertRejects } from "../helpers/assert.ts";
import { generateCA, issueServingCert } from "../../lib/pki/mod.ts";
import { startAgent, startTcpServer, startTestProxy, writeAll } from "../helpers/tunnel.ts";
import { acceptFor, connectWebSocket, proxyFor } from "../../lib/agent/ws_client.ts";

const TOKEN = "a7".repeat(32);

/** A CONNECT-only HTTP proxy that records the authorities asked for. */
function connectProxy() {
  const seen: string[] = [];
  const server = startTcpServer(async (conn) => {
    const buf = new Uint8Array(4096);
    let head = "";
    while (!head.includes("\r\n\r\n")) {
      const n = await conn.read(buf);
      if (n === null) return;
      head += new TextDecoder().decode(buf.subarray(0, n));
    }
    const m = /^CONNECT (\S+):(\d+) HTTP\/1\.1/.exec(head);
    if (!m) {
      await writeAll(conn, new TextEncoder().encode("HTTP/1.1 405 Method Not Allowed\r\n\r\n"));
      return;
    }
    seen.push(`${m[1]}:${m[2]}`);
    const up = await Deno.connect({ hostname: m[1], port: Number(m[2]) });
    await writeAll(conn, new TextEncoder().encode("HTTP/1.1 200 Connection established\r\n\r\n"));
    await Promise.allSettled([
      conn.readable.pipeTo(up.writable),
      up.readable.pipeTo(conn.writable),
    ]);
  });
  return { server, seen };
}

Deno.test("proxyFor follows HTTP(S)_PROXY and NO_PROXY", () => {
  const env = (vars: Record<string, string>) => (n: string) => vars[n];
  const ws = new URL("ws://tower.example.com:8080/");
  const wss = new URL("wss://tower.example.com/");
  assertEquals(proxyFor(ws, env({}))?.href, undefined);
  assertEquals(proxyFor(ws, env({ HTTP_PROXY: "http://p:3128" }))?.host, "p:3128");
  assertEquals(proxyFor(wss, env({ HTTP_PROXY: "http://p:3128" }))?.host, undefined);
  assertEquals(proxyFor(wss, env({ https_proxy: "p2:8080" }))?.host, "p2:8080");
  for (
    const np of [
      "tower.example.com",
      ".example.com",
      "example.com",
      "*",
      "x, tower.example.com:8080",
    ]
  ) {
    assertEquals(proxyFor(ws, env({ HTTP_PROXY: "http://p:3128", NO_PROXY: np })), undefined, np);
  }
  assertEquals(
    proxyFor(ws, env({ HTTP_PROXY: "http://p:3128", NO_PROXY: "tower.example.com:9999" }))?.host,
    "p:3128",
  );
  assertEquals(
    proxyFor(ws, env({ HTTP_PROXY: "http://p:3128", NO_PROXY: "other.com" }))?.host,
    "p:3128",
  );
});

Deno.test("Sec-WebSocket-Accept matches the RFC 6455 example", () => {
  assertEquals(acceptFor("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
});

/**
 * A WebSocket server that answers every upgrade with 101 and `protocolLine` (a whole
 * `Sec-WebSocket-Protocol` header line, or "" for none), then holds the connection.
 */
function upgradeServer(protocolLine: string) {
  return startTcpServer(async (conn) => {
    const buf = new Uint8Array(4096);
    let head = "";
    while (!head.includes("\r\n\r\n")) {
      const n = await conn.read(buf);
      if (n === null) return;
      head += new TextDecoder().decode(buf.subarray(0, n));
    }
    const key = /^Sec-WebSocket-Key:\s*(\S+)/im.exec(head)?.[1] ?? "";
    await writeAll(
      conn,
      new TextEncoder().encode(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
          `Sec-WebSocket-Accept: ${acceptFor(key)}\r\n${protocolLine}\r\n`,
      ),
    );
    while (await conn.read(buf) !== null) {
      // hold until the client goes
    }
  });
}

Deno.test("subprotocol: a 101 naming none or ours is accepted, one we did not offer is refused", async () => {
  // The original Go proxy's upgrader selects no subprotocol: its 101 has no header at all.
  for (const line of ["", "Sec-WebSocket-Protocol: kubesphere-v1\r\n"]) {
    const server = upgradeServer(line);
    try {
      const ws = await connectWebSocket(new URL(`ws://127.0.0.1:${server.port}/`), "kubesphere-v1");
      ws.destroy();
    } finally {
      await server.close();
    }
  }
  const other = upgradeServer("Sec-WebSocket-Protocol: kubesphere-v2\r\n");
  try {
    await assertRejects(
      () => connectWebSocket(new URL(`ws://127.0.0.1:${other.port}/`), "kubesphere-v1"),
      Error,
      "server selected subprotocol kubesphere-v2, not kubesphere-v1",
    );
  } finally {
    await other.close();
  }
});

Deno.test("agent reaches the proxy through HTTP CONNECT; NO_PROXY goes direct", async () => {
  const proxy = await startTestProxy([{ name: "alpha", token: TOKEN }]);
  const { server, seen } = connectProxy();
  const via = await startAgent({
    name: "alpha",
    token: TOKEN,
    proxyUrl: proxy.url,
    dir: proxy.dir,
    kubernetesPort: 1,
    kubespherePort: 2,
    env: { HTTP_PROXY: `http://127.0.0.1:${server.port}`, NO_PROXY: "" },
  });
  try {
    await via.waitFor(/Connected\./);
    assertEquals(seen, [`127.0.0.1:${proxy.app.addr.port}`]);
  } finally {
    await via.stop();
  }
  const direct = await startAgent({
    name: "alpha",
    token: TOKEN,
    proxyUrl: proxy.url,
    dir: proxy.dir,
    kubernetesPort: 1,
    kubespherePort: 2,
    env: { HTTP_PROXY: `http://127.0.0.1:${server.port}`, NO_PROXY: "127.0.0.1" },
  });
  try {
    await direct.waitFor(/Connected\./);
    assertEquals(seen.length, 1, "NO_PROXY host must not go through the proxy");
  } finally {
    await direct.stop();
    await proxy.close();
    await server.close();
  }
});

Deno.test("wss:// proxy behind TLS with a private CA: --proxy-ca trusts it, without it the agent refuses", async () => {
  const proxy = await startTestProxy([{ name: "alpha", token: TOKEN }]);
  const ca = await generateCA({ commonName: "ingress-ca" });
  const serving = await issueServingCert(ca, {
    commonName: "localhost",
    dnsNames: ["localhost"],
    ipAddresses: ["127.0.0.1"],
  });
  // A TLS-terminating front (as an ingress would be) forwarding to the proxy's agent port.
  const front = Deno.listenTls({
    hostname: "127.0.0.1",
    port: 0,
    cert: serving.certPem,
    key: serving.keyPem,
  });
  const conns: Deno.Conn[] = [];
  const serving_ = (async () => {
    for await (const c of front) {
      conns.push(c);
      (async () => {
        const up = await Deno.connect({ hostname: "127.0.0.1", port: proxy.app.addr.port });
        conns.push(up);
        await Promise.allSettled([c.readable.pipeTo(up.writable), up.readable.pipeTo(c.writable)]);
      })().catch(() => {});
    }
  })().catch(() => {});
  const caFile = `${proxy.dir}/ingress-ca.pem`;
  await Deno.writeTextFile(caFile, ca.certPem);
  const frontUrl = `https://localhost:${(front.addr as Deno.NetAddr).port}`;
  const trusted = await startAgent({
    name: "alpha",
    token: TOKEN,
    proxyUrl: frontUrl,
    dir: proxy.dir,
    kubernetesPort: 1,
    kubespherePort: 2,
    extra: ["--proxy-ca", caFile],
  });
  const untrusted = await startAgent({
    name: "alpha",
    token: TOKEN,
    proxyUrl: frontUrl,
    dir: proxy.dir,
    kubernetesPort: 1,
    kubespherePort: 2,
    label: "untrusted",
  });
  try {
    await trusted.waitFor(/Connected\./);
    await untrusted.waitFor(/Connection to proxy failed/);
    assertEquals(untrusted.count(/Connected\./), 0);
  } finally {
    await trusted.stop();
    await untrusted.stop();
    front.close();
    for (const c of conns) {
      try {
        c.close();
      } catch {
        // closed
      }
    }
    await serving_;
    await proxy.close();
  }
});
