/**
 * The agent port's own HTTP: request heads bounded in time (the handshake
 * deadline) and size, malformed requests answered and closed, plain routes
 * answered once, upgrade checks, the connection cap, and no connection left
 * behind when the proxy closes.
 */

import { assert, assertEquals, assertMatch, assertStringIncludes } from "../helpers/assert.ts";
import { startTestProxy } from "../helpers/tunnel.ts";
import { WS_PROTOCOL } from "../../lib/tunnel/protocol.ts";
import { plainRoute, startAgentPort } from "../../lib/proxy/agent_port.ts";
import { VERSION } from "../../lib/version.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/**
 * Read until the peer closes. `closedByPeer` is false when the generous guard (30 s) had to
 * close it instead: the proxy left the connection open.
 */
async function readToClose(conn: Deno.Conn): Promise<{ text: string; closedByPeer: boolean }> {
  let guarded = false;
  const guard = setTimeout(() => {
    guarded = true;
    conn.close();
  }, 30_000);
  const parts: string[] = [];
  const buf = new Uint8Array(64 * 1024);
  try {
    for (let i = 0; i < 10_000; i++) {
      const n = await conn.read(buf).catch(() => null);
      if (n === null) break;
      parts.push(dec.decode(buf.subarray(0, n)));
    }
  } finally {
    clearTimeout(guard);
  }
  return { text: parts.join(""), closedByPeer: !guarded };
}

function close(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // closed already
  }
}

const UPGRADE = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";

Deno.test("agent port: a silent, partial or trickled head is cut off at the deadline; others are served", async () => {
  const proxy = await startTestProxy([], { handshakeTimeoutMs: 1500 });
  const port = proxy.app.addr.port;
  try {
    const silent = await Deno.connect({ hostname: "127.0.0.1", port });
    const partial = await Deno.connect({ hostname: "127.0.0.1", port });
    await partial.write(enc.encode("GET /health HTTP/1.1\r\nHost: x\r\n"));
    const cut = [readToClose(silent), readToClose(partial)];
    // While those wait, a well-behaved client is answered.
    const health = await fetch(`${proxy.url}/health`);
    assertEquals([health.status, await health.text()], [200, "OK\n"]);
    for (const r of await Promise.all(cut)) {
      assert(r.closedByPeer, "the proxy left a connection without a complete head open");
      assertEquals(r.text, "", "nothing is answered to a head that never completed");
    }
    // A byte at a time keeps the connection busy but never completes the head in time.
    const trickle = await Deno.connect({ hostname: "127.0.0.1", port });
    const head = enc.encode("GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + "a".repeat(2000));
    let sent = 0;
    for (; sent < head.length; sent++) {
      const ok = await trickle.write(head.subarray(sent, sent + 1)).then(() => true, () => false);
      if (!ok) break;
      await new Promise((r) => setTimeout(r, 10)); // pacing the trickle, not synchronising
    }
    assert(sent < head.length, "a trickled head was allowed to take as long as it liked");
    close(trickle);
    assertEquals(proxy.app.tunnel.pendingHandshakes, 0);
  } finally {
    await proxy.close();
  }
});

Deno.test("agent port: oversized and malformed heads are answered and closed", async () => {
  const proxy = await startTestProxy([]);
  const port = proxy.app.addr.port;
  try {
    const cases: [string, RegExp][] = [
      [
        `GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${"b".repeat(20_000)}\r\n\r\n`,
        /^HTTP\/1\.1 431 /,
      ],
      // Too large before its end is even seen.
      [`GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${"b".repeat(100_000)}`, /^HTTP\/1\.1 431 /],
      ["GET /health HTTP/1.1\r\nHost: x\r\n X-Folded: y\r\n\r\n", /^HTTP\/1\.1 400 /],
      ["GET  /health HTTP/1.1\r\n\r\n", /^HTTP\/1\.1 400 /],
      ["GET /health HTTP/2.0\r\n\r\n", /^HTTP\/1\.1 505 /],
      ["\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", /^HTTP\/1\.1 400 /], // TLS hello
    ];
    for (const [req, want] of cases) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      await conn.write(enc.encode(req)).catch(() => {});
      const { text, closedByPeer } = await readToClose(conn);
      assertMatch(text, want, JSON.stringify(req.slice(0, 40)));
      assertStringIncludes(text, "Connection: close\r\n");
      assert(closedByPeer, "left open after the answer");
    }
  } finally {
    await proxy.close();
  }
});

Deno.test("agent port: plain routes answered once, HEAD without a body, bodies not read", async () => {
  const proxy = await startTestProxy([]);
  const port = proxy.app.addr.port;
  try {
    const ask = async (req: string) => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      await conn.write(enc.encode(req));
      const r = await readToClose(conn);
      assert(r.closedByPeer, `${req.split("\r\n")[0]}: left open`);
      return r.text;
    };
    const health = await ask(
      "GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /version HTTP/1.1\r\n\r\n",
    );
    assertMatch(health, /^HTTP\/1\.1 200 OK\r\n[^]*Connection: close\r\n\r\nOK\n$/);
    assertMatch(
      await ask("HEAD /version HTTP/1.1\r\nHost: x\r\n\r\n"),
      /^HTTP\/1\.1 200 OK\r\n[^]*Content-Length: \d+\r\n[^]*\r\n\r\n$/,
    );
    assert((await ask("GET /version?x=1 HTTP/1.0\r\n\r\n")).endsWith(`\r\n\r\n${VERSION}\n`));
    assertMatch(
      await ask("POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd"),
      /^HTTP\/1\.1 404 Not Found\r\n/,
    );
    // Through fetch (keep-alive client): each request gets its answer.
    for (let i = 0; i < 3; i++) {
      const r = await fetch(`${proxy.url}/version`);
      assertEquals(await r.text(), `${VERSION}\n`);
    }
  } finally {
    await proxy.close();
  }
});

Deno.test("agent port: tunnel upgrades that are not valid WebSocket handshakes are refused", async () => {
  const proxy = await startTestProxy([]);
  const port = proxy.app.addr.port;
  try {
    const proto = `Sec-WebSocket-Protocol: ${WS_PROTOCOL}\r\n`;
    const key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    const cases: [string, RegExp][] = [
      [`${UPGRADE}${proto}Sec-WebSocket-Version: 13\r\n\r\n`, /^HTTP\/1\.1 400 [^]*16 bytes/],
      [
        `${UPGRADE}${proto}${key}Sec-WebSocket-Version: 8\r\n\r\n`,
        /^HTTP\/1\.1 426 [^]*Sec-WebSocket-Version: 13\r\n/,
      ],
      [
        `POST / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n${proto}\r\n`,
        /^HTTP\/1\.1 405 /,
      ],
      [
        `${UPGRADE}Sec-WebSocket-Protocol: kubesphere-v2\r\n${key}Sec-WebSocket-Version: 13\r\n\r\n`,
        /^HTTP\/1\.1 400 [^]*want kubesphere-v1/,
      ],
    ];
    for (const [req, want] of cases) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      await conn.write(enc.encode(req));
      const { text } = await readToClose(conn);
      assertMatch(text, want, req.split("\r\n")[0]);
      assert(!text.includes("101 Switching"), text);
    }
    // An upgrade to another protocol is no tunnel request: it falls through to the plain routes.
    const other = await Deno.connect({ hostname: "127.0.0.1", port });
    await other.write(enc.encode(`${UPGRADE}Sec-WebSocket-Protocol: chat\r\n\r\n`));
    assertMatch((await readToClose(other)).text, /^HTTP\/1\.1 404 /);
    // A valid one is accepted with our subprotocol named.
    const ok = await Deno.connect({ hostname: "127.0.0.1", port });
    await ok.write(enc.encode(`${UPGRADE}${proto}${key}Sec-WebSocket-Version: 13\r\n\r\n`));
    const buf = new Uint8Array(4096);
    const n = await ok.read(buf);
    const head = dec.decode(buf.subarray(0, n ?? 0));
    assertMatch(head, /^HTTP\/1\.1 101 /);
    assertStringIncludes(head, "\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n");
    assertStringIncludes(head, `\r\nSec-WebSocket-Protocol: ${WS_PROTOCOL}\r\n`);
    close(ok);
  } finally {
    await proxy.close();
  }
});

Deno.test("agent port: past the connection cap a connection gets 503 and is closed", async () => {
  // A tunnel that admits everyone and never finishes: only the port's own cap applies.
  const held: (() => void)[] = [];
  const tunnel = {
    admit: (_h: string, p: number, close: () => void) => {
      held.push(close);
      return { remote: `x:${p}`, close, upgraded: false, done: () => {} };
    },
    accept: () => {},
    checkProtocol: () => true,
    close: () => held.forEach((c) => c()),
  };
  const port = await startAgentPort("127.0.0.1", 0, tunnel, { maxConnections: 3 });
  const conns: Deno.Conn[] = [];
  try {
    for (let i = 0; i < 3; i++) {
      conns.push(await Deno.connect({ hostname: "127.0.0.1", port: port.addr.port }));
    }
    // The port has taken all three once it has answered a fourth.
    const fourth = await Deno.connect({ hostname: "127.0.0.1", port: port.addr.port });
    const r = await readToClose(fourth);
    assertMatch(r.text, /^HTTP\/1\.1 503 [^]*too many connections/);
    assertEquals(port.connections, 3);
    // One is answered and closed (the port forgets it before the client sees the end): a new
    // connection is taken again.
    const first = conns.shift()!;
    await first.write(enc.encode("GET /health HTTP/1.1\r\n\r\n"));
    assertMatch((await readToClose(first)).text, /^HTTP\/1\.1 200 /);
    assertEquals(port.connections, 2);
    const fifth = await Deno.connect({ hostname: "127.0.0.1", port: port.addr.port });
    await fifth.write(enc.encode("GET /health HTTP/1.1\r\n\r\n"));
    assertMatch((await readToClose(fifth)).text, /^HTTP\/1\.1 200 /);
  } finally {
    conns.forEach(close);
    await port.close();
  }
});

Deno.test("agent port: closing the proxy closes connections still sending their head", async () => {
  const proxy = await startTestProxy([], { handshakeTimeoutMs: 60_000 });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: proxy.app.addr.port });
  await conn.write(enc.encode("GET /health HTTP/1.1\r\n"));
  const ended = readToClose(conn);
  // The proxy has the connection once it answers another request.
  const health = await fetch(`${proxy.url}/health`);
  await health.body?.cancel();
  await proxy.close();
  const r = await ended;
  assertEquals(r.text, "");
  assert(r.closedByPeer, "left open after the proxy closed");
});

Deno.test("plainRoute: /health and /version for GET and HEAD, in any target form; else 404", () => {
  assertEquals(plainRoute("GET", "/health"), { status: 200, body: "OK\n" });
  assertEquals(plainRoute("HEAD", "/health?probe=1"), { status: 200, body: "OK\n" });
  assertEquals(plainRoute("GET", "http://proxy:8080/version"), {
    status: 200,
    body: `${VERSION}\n`,
  });
  assertEquals(plainRoute("POST", "/health").status, 404);
  assertEquals(plainRoute("GET", "/healthz").status, 404);
  assertEquals(plainRoute("GET", "*").status, 404);
});
