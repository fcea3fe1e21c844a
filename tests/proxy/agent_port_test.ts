/**
 * The agent port's own HTTP: request heads bounded in time and size (a slow or
 * silent client is cut off while others are served), malformed requests
 * answered and closed, keep-alive for plain routes, upgrade checks, and no
 * connection left behind when the proxy closes.
 */

import { assert, assertEquals, assertMatch, assertStringIncludes } from "../helpers/assert.ts";
import { startTestProxy } from "../helpers/tunnel.ts";
import { WS_PROTOCOL } from "../../lib/tunnel/protocol.ts";
import { plainRoute } from "../../lib/proxy/agent_port.ts";
import { VERSION } from "../../lib/version.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Read until the peer closes (or `maxMs` passes: then the connection is closed here). */
async function readToClose(conn: Deno.Conn, maxMs = 10_000): Promise<{ text: string; ms: number }> {
  const t0 = performance.now();
  const guard = setTimeout(() => conn.close(), maxMs);
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
  return { text: parts.join(""), ms: performance.now() - t0 };
}

function close(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // closed already
  }
}

const UPGRADE = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";

Deno.test("agent port: a partial or trickled head is cut off after the timeout; others are served", async () => {
  const proxy = await startTestProxy([], { handshakeTimeoutMs: 400 });
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
      assertEquals(r.text, "", "nothing is answered to a head that never completed");
      assert(r.ms < 5_000, `closed after ${r.ms} ms`);
    }
    // A byte every 50 ms keeps the connection busy but never completes the head in time.
    const trickle = await Deno.connect({ hostname: "127.0.0.1", port });
    const head = enc.encode("GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + "a".repeat(200));
    let sent = 0;
    for (; sent < head.length; sent++) {
      const ok = await trickle.write(head.subarray(sent, sent + 1)).then(() => true, () => false);
      if (!ok) break;
      await new Promise((r) => setTimeout(r, 50)); // pacing the trickle, not synchronising
    }
    assert(sent < head.length, "a trickled head was allowed to take as long as it liked");
    close(trickle);
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
      ["GET /health HTTP/1.1\r\nHost: x\r\n X-Folded: y\r\n\r\n", /^HTTP\/1\.1 400 /],
      ["GET  /health HTTP/1.1\r\n\r\n", /^HTTP\/1\.1 400 /],
      ["GET /health HTTP/2.0\r\n\r\n", /^HTTP\/1\.1 505 /],
      ["\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", /^HTTP\/1\.1 400 /], // TLS hello
    ];
    for (const [req, want] of cases) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      await conn.write(enc.encode(req)).catch(() => {});
      const { text } = await readToClose(conn);
      assertMatch(text, want, JSON.stringify(req.slice(0, 40)));
      assertStringIncludes(text, "Connection: close\r\n");
    }
  } finally {
    await proxy.close();
  }
});

Deno.test("agent port: keep-alive and pipelining for plain routes; HEAD has no body; bodies close", async () => {
  const proxy = await startTestProxy([]);
  const port = proxy.app.addr.port;
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    await conn.write(enc.encode(
      "GET /health HTTP/1.1\r\nHost: x\r\n\r\n" +
        "HEAD /version HTTP/1.1\r\nHost: x\r\n\r\n" +
        "GET /version?x=1 HTTP/1.1\r\nHost: x\r\n\r\n" +
        "POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd" +
        "GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    ));
    const { text } = await readToClose(conn);
    const answers = text.split(/(?=HTTP\/1\.1 )/);
    assertEquals(answers.length, 4, text);
    assertMatch(answers[0], /^HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\nOK\n$/);
    assert(!answers[0].includes("Connection: close"));
    assertMatch(answers[1], /^HTTP\/1\.1 200 OK\r\n[^]*Content-Length: \d+\r\n\r\n$/);
    assert(answers[2].endsWith(`\r\n\r\n${VERSION}\n`), answers[2]);
    // A request with a body is answered, then the connection closes (the body is never read).
    assertMatch(answers[3], /^HTTP\/1\.1 404 Not Found\r\n[^]*Connection: close\r\n/);

    // HTTP/1.0 and `Connection: close` are answered once and closed.
    for (
      const req of [
        "GET /health HTTP/1.0\r\n\r\n",
        "GET /health HTTP/1.1\r\nConnection: close\r\n\r\n",
      ]
    ) {
      const c = await Deno.connect({ hostname: "127.0.0.1", port });
      await c.write(enc.encode(req));
      const r = await readToClose(c);
      assertEquals(r.text.split("HTTP/1.1 ").length - 1, 1);
      assertStringIncludes(r.text, "Connection: close\r\n");
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
    const cases: [string, RegExp][] = [
      [`${UPGRADE}${proto}Sec-WebSocket-Version: 13\r\n\r\n`, /^HTTP\/1\.1 400 [^]*16 bytes/],
      [
        `${UPGRADE}${proto}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n`,
        /^HTTP\/1\.1 426 [^]*Sec-WebSocket-Version: 13\r\n/,
      ],
      [
        `POST / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n${proto}\r\n`,
        /^HTTP\/1\.1 405 /,
      ],
    ];
    for (const [req, want] of cases) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      await conn.write(enc.encode(req));
      const { text } = await readToClose(conn);
      assertMatch(text, want, req.split("\r\n")[0]);
      assert(!text.includes("101 Switching"), text);
    }
    // Upgrade to another protocol is no tunnel request: it falls through to the plain routes.
    const other = await Deno.connect({ hostname: "127.0.0.1", port });
    await other.write(
      enc.encode(`${UPGRADE}Sec-WebSocket-Protocol: chat\r\nConnection: close\r\n\r\n`),
    );
    assertMatch((await readToClose(other)).text, /^HTTP\/1\.1 404 /);
  } finally {
    await proxy.close();
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
  assert(r.ms < 5_000, `left open for ${r.ms} ms`);
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
