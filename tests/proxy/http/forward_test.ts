import { assert, assertEquals, assertMatch } from "../../helpers/assert.ts";
import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import type { RequestRecord } from "../../../lib/proxy/http/audit.ts";
import { isLongRunning } from "../../../lib/proxy/http/exchange.ts";
import * as net from "node:net";
import {
  StreamLimitError,
  type UpstreamAuth,
  type UpstreamDialer,
} from "../../../lib/proxy/http/upstream.ts";
import { listenLocal, RawClient, startPlainProxy, TestDialer } from "./helpers.ts";
import { BLOCK, blockHash, type Echo, startHttpOrigin, startRawOrigin } from "./origin.ts";

async function setup(
  opts: Parameters<typeof startPlainProxy>[1] & { auth?: UpstreamAuth } = {},
  wrap = false,
) {
  const origin = await startHttpOrigin();
  const { auth, ...proxyOpts } = opts;
  const dialer = new TestDialer(origin.port, { wrap, auth });
  const proxy = await startPlainProxy(dialer, proxyOpts);
  const client = Deno.createHttpClient({});
  const base = `http://127.0.0.1:${proxy.port}`;
  return {
    origin,
    dialer,
    proxy,
    base,
    fetch: (path: string, init: RequestInit = {}) => fetch(base + path, { ...init, client }),
    async close() {
      client.close();
      await proxy.close();
      await origin.close();
    },
  };
}

/** A scripted raw origin (see startRawOrigin), the proxy in front of it and a raw client. */
async function rawSetup(answer: Parameters<typeof startRawOrigin>[0]) {
  const origin = await startRawOrigin(answer);
  const dialer = new TestDialer(origin.port);
  const proxy = await startPlainProxy(dialer);
  const client = await RawClient.connect(proxy.port);
  return {
    origin,
    dialer,
    client,
    async close() {
      await client.close();
      await proxy.close();
      await origin.close();
    },
  };
}

Deno.test("GET is forwarded; keep-alive reuses one upstream stream", async () => {
  const t = await setup();
  try {
    for (let i = 0; i < 5; i++) {
      const res = await t.fetch(`/echo?i=${i}`);
      assertEquals(res.status, 200);
      const echo = await res.json() as Echo;
      assertEquals(echo.url, `/echo?i=${i}`);
      assertEquals(echo.method, "GET");
    }
    assertEquals(t.dialer.dials, 1);
    // A second client connection reuses the pooled upstream stream too.
    const c = await RawClient.connect(t.proxy.port);
    c.write("GET /echo HTTP/1.1\r\nHost: a\r\n\r\n");
    assertEquals((await c.readResponse()).status, 200);
    await c.close();
    assertEquals(t.dialer.dials, 1);
  } finally {
    await t.close();
  }
});

Deno.test("hop-by-hop headers are dropped both ways; X-Forwarded-* set", async () => {
  const t = await setup();
  const c = await RawClient.connect(t.proxy.port);
  try {
    c.write(
      "GET /echo HTTP/1.1\r\nHost: tower.example:6443\r\n" +
        "Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n" +
        "TE: trailers\r\nTrailer: X-T\r\nProxy-Authorization: Basic eA==\r\n" +
        "Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-End: kept\r\n" +
        "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Proto: gopher\r\n\r\n",
    );
    const res = await c.readResponse();
    const echo = JSON.parse(res.body.toString()) as Echo;
    const h = echo.headers;
    for (const k of ["x-hop", "keep-alive", "te", "trailer", "proxy-authorization", "upgrade"]) {
      assertEquals(h[k], undefined, k);
    }
    assertEquals(h["proxy-connection"], undefined);
    assert(h["connection"] === undefined || h["connection"] === "keep-alive");
    assertEquals(h["x-end"], "kept");
    assertEquals(h["host"], "tower.example:6443");
    assertEquals(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
    assertEquals(h["x-forwarded-host"], "tower.example:6443");
    assertEquals(h["x-forwarded-proto"], "http");

    c.write("GET /hop HTTP/1.1\r\nHost: a\r\n\r\n");
    const hop = await c.readResponse();
    assertEquals(hop.body.toString(), "ok");
    assertEquals(hop.headers["x-end-to-end"], "yes");
    for (const k of ["x-hop-resp", "keep-alive", "proxy-authenticate", "connection"]) {
      assertEquals(hop.headers[k], undefined, k);
    }
  } finally {
    await c.close();
    await t.close();
  }
});

Deno.test("client Authorization replaced by the agent's bearer token; identity headers dropped", async () => {
  const t = await setup({ auth: { bearerToken: "agent-token" }, stripAuthorization: true });
  try {
    const res = await t.fetch("/echo", {
      headers: {
        "Authorization": "Bearer client-token",
        "Impersonate-User": "admin",
        "Impersonate-Group": "system:masters",
        "Impersonate-Extra-Scopes": "x",
        "X-Remote-User": "admin",
      },
    });
    const echo = await res.json() as Echo;
    assertEquals(echo.headers["authorization"], "Bearer agent-token");
    const names = echo.rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
    assertEquals(names.filter((n) => n === "authorization").length, 1);
    for (const n of names) assert(!n.startsWith("impersonate-") && !n.startsWith("x-remote-"), n);
  } finally {
    await t.close();
  }
  // Without a bearer token and with stripAuthorization, nothing is sent.
  const u = await setup({ stripAuthorization: true });
  try {
    const echo = await (await u.fetch("/echo", {
      headers: { Authorization: "Bearer c", "Impersonate-User": "admin" },
    })).json() as Echo;
    assertEquals(echo.headers["authorization"], undefined);
    assertEquals(echo.headers["impersonate-user"], undefined);
  } finally {
    await u.close();
  }
  // kubesphere without a token passes the client's own, and its impersonation headers (the
  // member checks them against the client itself).
  const v = await setup();
  try {
    const echo = await (await v.fetch("/echo", {
      headers: { Authorization: "Bearer c", "Impersonate-User": "bob" },
    })).json() as Echo;
    assertEquals(echo.headers["authorization"], "Bearer c");
    assertEquals(echo.headers["impersonate-user"], "bob");
  } finally {
    await v.close();
  }
});

Deno.test("50 MiB request bodies (Content-Length and chunked) arrive intact", async () => {
  const t = await setup({}, true);
  try {
    const mib = 50;
    const c = await RawClient.connect(t.proxy.port);
    c.write(`PUT /echo HTTP/1.1\r\nHost: a\r\nContent-Length: ${mib << 20}\r\n\r\n`);
    for (let i = 0; i < mib; i++) {
      if (!c.sock.write(BLOCK)) await new Promise((r) => c.sock.once("drain", r));
    }
    const res = await c.readResponse();
    await c.close();
    const echo = JSON.parse(res.body.toString()) as Echo;
    assertEquals(echo.bodyBytes, mib << 20);
    assertEquals(echo.sha256, blockHash(mib));
    assertEquals(echo.headers["content-length"], String(mib << 20));

    // A streamed body without a length goes up chunked.
    let i = 0;
    const res2 = await t.fetch("/echo", {
      method: "POST",
      body: new ReadableStream<Uint8Array>({
        pull(ctl) {
          if (i++ < mib) ctl.enqueue(new Uint8Array(BLOCK));
          else ctl.close();
        },
      }),
    });
    const echo2 = await res2.json() as Echo;
    assertEquals(echo2.headers["transfer-encoding"], "chunked");
    assertEquals(echo2.bodyBytes, mib << 20);
    assertEquals(echo2.sha256, blockHash(mib));
  } finally {
    await t.close();
  }
});

Deno.test("50 MiB responses (Content-Length and chunked) stream intact", async () => {
  const t = await setup({}, true);
  try {
    for (const path of ["/big?mib=50", "/bigchunked?mib=50"]) {
      const res = await t.fetch(path);
      assertEquals(res.status, 200);
      const h = createHash("sha256");
      let n = 0;
      for await (const chunk of res.body!) {
        h.update(chunk);
        n += chunk.length;
      }
      assertEquals(n, 50 << 20, path);
      assertEquals(h.digest("hex"), blockHash(50), path);
    }
  } finally {
    await t.close();
  }
});

Deno.test("a response is not buffered: a client that stops reading stalls the origin", async () => {
  const t = await setup();
  const c = await RawClient.connect(t.proxy.port);
  try {
    c.write("GET /offer?mib=64 HTTP/1.1\r\nHost: a\r\n\r\n");
    await c.readHead();
    c.sock.pause();
    // Measure how far the origin gets while nobody reads: it must stall far below 64 MiB.
    let last = -1;
    for (let i = 0; i < 50 && t.origin.offered.bytes !== last; i++) {
      last = t.origin.offered.bytes;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert(!t.origin.offered.done, "origin wrote everything: the proxy buffered the body");
    assert(t.origin.offered.bytes < 24 << 20, `origin wrote ${t.origin.offered.bytes} bytes`);
    c.sock.resume();
    const h = createHash("sha256");
    let n = 0;
    while (n < 64 << 20) {
      const b = await c.readSome();
      h.update(b);
      n += b.length;
    }
    assertEquals(h.digest("hex"), blockHash(64));
  } finally {
    await c.close();
    await t.close();
  }
});

Deno.test("chunked response is streamed: the first chunk arrives before the origin finishes", async () => {
  const t = await setup();
  try {
    const res = await t.fetch("/chunks");
    const reader = res.body!.getReader();
    const first = await reader.read();
    assertEquals(new TextDecoder().decode(first.value), "first\n");
    t.origin.releaseChunks();
    let rest = "";
    for (;;) {
      const r = await reader.read();
      if (r.done) break;
      rest += new TextDecoder().decode(r.value);
    }
    assertEquals(rest, "second\n");
  } finally {
    await t.close();
  }
});

Deno.test("client disconnect mid-watch destroys the upstream stream (never pooled)", async () => {
  const t = await setup({}, true);
  const c = await RawClient.connect(t.proxy.port);
  try {
    c.write("GET /watch?watch=true HTTP/1.1\r\nHost: a\r\n\r\n");
    const head = await c.readHead();
    assertEquals(head.status, 200);
    assertEquals(head.headers["transfer-encoding"], "chunked");
    const first = (await c.readSome()).toString();
    assertMatch(first, /ADDED/);
    assertEquals(t.dialer.open, 1);
    await c.close();
    await t.dialer.waitOpen(0);
    await t.origin.watchClosed;
    assertEquals(t.proxy.proxy.stats.idle, 0);
  } finally {
    await c.close();
    await t.close();
  }
});

Deno.test("503 Status without an agent, 502 Status when dialling fails; no internals in bodies", async () => {
  const t = await setup();
  try {
    t.dialer.mode = "noagent";
    const r1 = await t.fetch("/echo");
    assertEquals(r1.status, 503);
    const s1 = await r1.json();
    assertEquals(s1.kind, "Status");
    assertEquals(s1.apiVersion, "v1");
    assertEquals(s1.status, "Failure");
    assertEquals(s1.code, 503);
    assertEquals(s1.reason, "ServiceUnavailable");
    assertMatch(s1.message, /cluster alpha/);
    t.dialer.mode = "fail";
    const r2 = await t.fetch("/echo");
    assertEquals(r2.status, 502);
    const s2 = await r2.json();
    assertEquals(s2.code, 502);
    // What failed, not where or why: the address and the dial error go to the log only.
    assertEquals(s2.message, "cluster alpha: kubesphere API server unreachable");
    t.dialer.mode = "ok";
    assertEquals((await t.fetch("/status/204")).status, 204);
  } finally {
    await t.close();
  }
});

for (const proto of ["SPDY/3.1", "websocket"]) {
  Deno.test(`upgrade (${proto}): 101 forwarded, then raw bytes both ways`, async () => {
    const origin = await startRawOrigin((head) => {
      if (!/^upgrade: /im.test(head)) {
        return { response: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno", upgrade: false };
      }
      const extra = proto === "websocket"
        ? "Sec-WebSocket-Accept: x\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n"
        : "X-Stream-Protocol-Version: v4.channel.k8s.io\r\n";
      return {
        response: `HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n` +
          `Upgrade: ${proto}\r\n${extra}\r\n`,
        upgrade: true,
      };
    });
    const dialer = new TestDialer(origin.port, { wrap: true });
    const records: RequestRecord[] = [];
    const proxy = await startPlainProxy(dialer, { onRequest: (r) => records.push(r) });
    const c = await RawClient.connect(proxy.port);
    try {
      // A plain request first, then the upgrade on the same client connection.
      c.write("GET /plain HTTP/1.1\r\nHost: a\r\n\r\n");
      assertEquals((await c.readResponse()).body.toString(), "no");
      const headers = proto === "websocket"
        ? "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" +
          "Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n"
        : "X-Stream-Protocol-Version: v4.channel.k8s.io\r\n";
      // Bytes right behind the head must be relayed too.
      c.write(
        `POST /api/v1/namespaces/default/pods/p/exec?command=sh HTTP/1.1\r\nHost: a\r\n` +
          `Connection: Upgrade\r\nUpgrade: ${proto}\r\n${headers}\r\nearly`,
      );
      const head = await c.readHead();
      assertEquals(head.status, 101);
      assertEquals(head.headers["upgrade"], proto);
      assertEquals(head.headers["connection"], "Upgrade");
      assertEquals((await c.readBytes(5)).toString(), "early");
      const payload = Buffer.alloc(256 * 1024, 7);
      c.write(payload);
      assertEquals(Buffer.compare(await c.readBytes(payload.length), payload), 0);
      const up = origin.heads[1];
      assertMatch(up, /^Upgrade: /im);
      assertMatch(up, /^Connection: Upgrade$/im);
      await c.close();
      await dialer.waitOpen(1); // the upgraded stream is gone; the plain one idles in the pool
      assertEquals(proxy.proxy.stats.idle, 1);
      const rec = records.find((r) => r.upgrade)!;
      assertEquals(rec.status, 101);
      assertEquals(rec.bytesIn, 5 + payload.length);
      assertEquals(rec.bytesOut, 5 + payload.length);
    } finally {
      await c.close();
      await proxy.close();
      await origin.close();
    }
  });
}

Deno.test("upgrade refused with a normal answer keeps the connection usable", async () => {
  const t = await setup();
  const c = await RawClient.connect(t.proxy.port);
  try {
    c.write(
      "GET /status/400 HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n",
    );
    const res = await c.readResponse();
    assertEquals(res.status, 400);
    c.write("GET /echo HTTP/1.1\r\nHost: a\r\n\r\n");
    assertEquals((await c.readResponse()).status, 200);
  } finally {
    await c.close();
    await t.close();
  }
});

Deno.test("header bytes beyond ASCII (obs-text) pass through unchanged both ways", async () => {
  // E.g. a Content-Disposition file name sent as raw UTF-8 bytes: HTTP heads are bytes, and
  // the proxy must not re-encode them.
  const t = await rawSetup(() => ({
    response:
      'HTTP/1.1 200 OK\r\nContent-Disposition: attachment; filename="r\xc3\xa9sum\xc3\xa9"\r\n' +
      "X-Latin: caf\xe9 \xff\r\nContent-Length: 2\r\n\r\nok",
    upgrade: false,
  }));
  const c = t.client;
  try {
    c.write("GET / HTTP/1.1\r\nHost: a\r\nX-Name: na\xefve \xc3\xa9\r\n\r\n");
    const res = await c.readResponse();
    assertEquals(res.status, 200);
    assertEquals(res.headers["content-disposition"], 'attachment; filename="r\xc3\xa9sum\xc3\xa9"');
    assertEquals(res.headers["x-latin"], "caf\xe9 \xff");
    assertMatch(t.origin.heads[0], /\r\nX-Name: na\xefve \xc3\xa9(\r\n|$)/);
  } finally {
    await t.close();
  }
});

Deno.test("HEAD, 204 and 304 have no body; Connection: close from origin is honoured upstream only", async () => {
  const t = await setup();
  const c = await RawClient.connect(t.proxy.port);
  try {
    c.write("HEAD /big?mib=1 HTTP/1.1\r\nHost: a\r\n\r\n");
    const h = await c.readResponse("HEAD");
    assertEquals(h.headers["content-length"], String(1 << 20));
    c.write("GET /status/204 HTTP/1.1\r\nHost: a\r\n\r\n");
    assertEquals((await c.readResponse()).status, 204);
    c.write("GET /status/304 HTTP/1.1\r\nHost: a\r\n\r\n");
    assertEquals((await c.readResponse()).status, 304);
    c.write("GET /close HTTP/1.1\r\nHost: a\r\n\r\n");
    const bye = await c.readResponse();
    assertEquals(bye.body.toString(), "bye");
    assertEquals(bye.headers["connection"], undefined);
    c.write("GET /echo HTTP/1.1\r\nHost: a\r\n\r\n");
    assertEquals((await c.readResponse()).status, 200);
    assertEquals(t.dialer.dials, 2);
  } finally {
    await c.close();
    await t.close();
  }
});

Deno.test("Expect: 100-continue: the interim answer is relayed before the body is sent", async () => {
  const t = await setup();
  const c = await RawClient.connect(t.proxy.port);
  try {
    c.write(
      "PUT /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    );
    const interim = await c.readHead();
    assertEquals(interim.status, 100);
    c.write("hello");
    const res = await c.readResponse();
    assertEquals(res.status, 200);
    assertEquals((JSON.parse(res.body.toString()) as Echo).bodyBytes, 5);
  } finally {
    await c.close();
    await t.close();
  }
});

Deno.test("close-delimited answers are re-chunked for HTTP/1.1 and closed for HTTP/1.0", async () => {
  const origin = await startRawOrigin(() => ({
    response: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nuntil-close",
    upgrade: false,
  }));
  // The raw origin only ends after the client does; close-delimited needs it to close.
  const dialer = new TestDialer(origin.port);
  const proxy = await startPlainProxy(dialer);
  try {
    const orig = dialer.dial.bind(dialer);
    dialer.dial = async (signal) => {
      const d = await orig(signal);
      d.stream.once("data", () => setTimeout(() => d.stream.end(), 0));
      return d;
    };
    const c = await RawClient.connect(proxy.port);
    c.write("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    const res = await c.readResponse();
    assertEquals(res.headers["transfer-encoding"], "chunked");
    assertEquals(res.body.toString(), "until-close");
    await c.close();
    const d = await RawClient.connect(proxy.port);
    d.write("GET / HTTP/1.0\r\n\r\n");
    const res0 = await d.readResponse();
    assertEquals(res0.headers["connection"], "close");
    assertEquals(res0.body.toString(), "until-close");
    await d.close();
  } finally {
    await proxy.close();
    await origin.close();
  }
});

Deno.test("a chunked answer is de-chunked for an HTTP/1.0 client", async () => {
  const t = await setup();
  const c = await RawClient.connect(t.proxy.port);
  try {
    c.write("GET /bigchunked?mib=2 HTTP/1.0\r\n\r\n");
    const res = await c.readResponse();
    assertEquals(res.headers["transfer-encoding"], undefined);
    assertEquals(res.body.length, 2 << 20);
    assertEquals(createHash("sha256").update(res.body).digest("hex"), blockHash(2));
  } finally {
    await c.close();
    await t.close();
  }
});

Deno.test("malformed requests get 400, oversized heads 431, smuggling attempts are refused", async () => {
  const t = await setup();
  try {
    const cases: [string, number][] = [
      ["GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n", 400],
      ["GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400],
      ["GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400],
      ["GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501],
      ["GET / HTTP/1.1\r\n\r\n", 400],
      ["GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505],
      ["GET /\r\n\r\n", 400],
      [`GET / HTTP/1.1\r\nHost: a\r\nX-Big: ${"a".repeat(1 << 20)}\r\n\r\n`, 431],
    ];
    for (const [req, code] of cases) {
      const c = await RawClient.connect(t.proxy.port);
      c.write(req);
      const res = await c.readResponse();
      assertEquals(res.status, code, req.slice(0, 60));
      assertEquals(JSON.parse(res.body.toString()).kind, "Status");
      await c.close();
    }
    // A chunked body with a bad chunk size never reaches the origin as a second request.
    const c = await RawClient.connect(t.proxy.port);
    c.write(
      "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n" +
        "zz\r\nGET /smuggled HTTP/1.1\r\n\r\n",
    );
    const res = await c.readResponse();
    assertEquals(res.status, 400);
    await c.close();
    assertEquals(t.dialer.dials, 1);
  } finally {
    await t.close();
  }
});

Deno.test("audit records carry method, path without query, status and byte counts", async () => {
  const records: RequestRecord[] = [];
  const t = await setup({ onRequest: (r) => records.push(r) });
  try {
    await (await t.fetch("/big?mib=1&token=secret")).arrayBuffer();
    await (await t.fetch("/echo", { method: "POST", body: "12345" })).arrayBuffer();
    t.dialer.mode = "noagent";
    t.proxy.proxy.dropSession(t.dialer.key); // else the pooled stream answers
    await (await t.fetch("/echo")).arrayBuffer();
    assertEquals(records.length, 3);
    assertEquals(records[0].path, "/big");
    assertEquals(records[0].status, 200);
    assertEquals(records[0].bytesOut, 1 << 20);
    assertEquals(records[1].method, "POST");
    assertEquals(records[1].bytesIn, 5);
    assertEquals(records[2].status, 503);
    assert(!JSON.stringify(records).includes("secret"));
    for (const r of records) assertEquals(r.cluster, "alpha");
  } finally {
    await t.close();
  }
});

Deno.test("idle pooled streams closed by the origin are evicted", async () => {
  const t = await setup();
  try {
    assertEquals((await t.fetch("/echo")).status, 200);
    assertEquals(t.proxy.proxy.stats.idle, 1);
    await t.origin.close(); // drops the idle upstream connection
    await t.dialer.waitOpen(0);
    assertEquals(t.proxy.proxy.stats.idle, 0);
  } finally {
    await t.close();
  }
});

Deno.test("upstream failing mid-response breaks the client connection promptly", async () => {
  const t = await setup();
  const c = await RawClient.connect(t.proxy.port);
  try {
    c.write("GET /watch HTTP/1.1\r\nHost: a\r\n\r\n");
    await c.readHead();
    await c.readSome();
    await t.origin.close(); // the member side goes away
    await c.readToEnd();
    assert(c.ended);
  } finally {
    await c.close();
    await t.close();
  }
});

Deno.test("a pooled stream that turns out dead is retried once for idempotent requests", async () => {
  // Every connection answers its first request and drops on the second, unanswered.
  const t = await rawSetup((_head, n) => ({
    response: n === 0 ? "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" : null,
    upgrade: false,
  }));
  const { client: c, dialer, origin } = t;
  try {
    c.write("GET /a HTTP/1.1\r\nHost: a\r\n\r\n");
    assertEquals((await c.readResponse()).body.toString(), "ok");
    c.write("GET /b HTTP/1.1\r\nHost: a\r\n\r\n");
    assertEquals((await c.readResponse()).body.toString(), "ok", "retried on a fresh stream");
    assertEquals(dialer.dials, 2);
    assertEquals(origin.heads.filter((h) => h.startsWith("GET /b ")).length, 2, "sent twice");
    // A request with a body is not replayed: 502.
    c.write("POST /c HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx");
    const res = await c.readResponse();
    assertEquals(res.status, 502);
    assertEquals(dialer.dials, 2);
  } finally {
    await t.close();
  }
});

Deno.test("pooled streams of a session that is no longer live are not reused", async () => {
  const t = await setup();
  try {
    let live = true;
    t.dialer.isLive = () => live;
    await (await t.fetch("/echo")).arrayBuffer();
    await (await t.fetch("/echo")).arrayBuffer();
    assertEquals(t.dialer.dials, 1);
    live = false;
    await (await t.fetch("/echo")).arrayBuffer();
    assertEquals(t.dialer.dials, 2);
  } finally {
    await t.close();
  }
});

Deno.test("concurrent clients: all answered, idle pool bounded, Connection: close honoured", async () => {
  const t = await setup({ pool: { maxIdle: 4 } });
  try {
    const clients = await Promise.all(
      Array.from({ length: 24 }, () => RawClient.connect(t.proxy.port)),
    );
    try {
      // Hold 24 requests in flight at once (the origin answers /chunks after release).
      for (const c of clients) c.write("GET /chunks HTTP/1.1\r\nHost: a\r\n\r\n");
      const heads = await Promise.all(clients.map((c) => c.readHead()));
      assertEquals(t.dialer.dials, 24);
      t.origin.releaseChunks();
      for (const [i, c] of clients.entries()) {
        assertEquals((await c.readBody(heads[i])).body.toString(), "first\nsecond\n");
      }
      await t.dialer.waitOpen(4); // 20 closed beyond maxIdle
      assertEquals(t.proxy.proxy.stats.idle, 4);
      const last = clients[0];
      last.write("GET /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
      const res = await last.readResponse();
      assertEquals(res.headers["connection"], "close");
      await last.readToEnd();
      assert(last.ended, "client connection closed after Connection: close");
      assertEquals(t.proxy.proxy.stats.idle, 4, "the upstream stream went back to the pool");
    } finally {
      await Promise.all(clients.map((c) => c.close()));
    }
  } finally {
    await t.close();
  }
});

Deno.test("a request body is not buffered: an origin that stops reading stalls the client", async () => {
  // The origin accepts the connection and never reads.
  const held = new Set<net.Socket>();
  const origin = await listenLocal(net.createServer((sock) => {
    sock.pause();
    sock.on("error", () => {});
    held.add(sock);
  }));
  const dialer = new TestDialer(origin.port);
  const proxy = await startPlainProxy(dialer);
  const c = await RawClient.connect(proxy.port);
  try {
    const total = 256 << 20;
    c.write(`PUT /echo HTTP/1.1\r\nHost: a\r\nContent-Length: ${total}\r\n\r\n`);
    let sent = 0;
    let stalled = false;
    // Write until a drain does not come within 300 ms (a measurement window, not a sync point).
    while (sent < total && !stalled) {
      const ok = c.sock.write(BLOCK);
      sent += BLOCK.length;
      if (ok) continue;
      stalled = await new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => {
          c.sock.off("drain", onDrain);
          resolve(true);
        }, 300);
        const onDrain = () => {
          clearTimeout(timer);
          resolve(false);
        };
        c.sock.once("drain", onDrain);
      });
    }
    assert(stalled, "the whole body was accepted: the proxy buffered it");
    assert(sent < 64 << 20, `client got ${sent} bytes out before stalling`);
  } finally {
    await c.close();
    await proxy.close();
    for (const s of held) s.destroy();
    await origin.close();
  }
});

Deno.test("each request carries the credentials of the session its stream rides on", async () => {
  const t = await setup({ auth: { bearerToken: "a" }, stripAuthorization: true });
  const bearer = async (path: string) => {
    const res = await t.fetch(path, { headers: { Authorization: "Bearer client" } });
    return ((await res.json()) as Echo).headers["authorization"];
  };
  try {
    assertEquals(await bearer("/echo"), "Bearer a");
    // A second session with other credentials connects: the pooled stream still rides on the
    // first and carries the first session's credentials, not the newcomer's.
    t.dialer.key = "session-2";
    t.dialer.auth = { bearerToken: "b" };
    assertEquals(await bearer("/echo"), "Bearer a");
    assertEquals(t.dialer.dials, 1);
    // The first session goes: its streams, and with them its credentials, are gone.
    t.proxy.proxy.dropSession("session-1");
    assertEquals(await bearer("/echo"), "Bearer b");
    assertEquals(await bearer("/echo"), "Bearer b");
    assertEquals(t.dialer.dials, 2);
  } finally {
    await t.close();
  }
});

Deno.test("long-running requests (watch, follow, upgrades) get a stream of their own", async () => {
  for (
    const [target, long] of [
      ["/api/v1/namespaces?watch=true", true],
      ["/api/v1/namespaces?resourceVersion=1&watch=1", true],
      ["/api/v1/watch/namespaces", true],
      ["/apis/apps/v1/watch/deployments", true],
      ["/api/v1/namespaces/d/pods/p/log?follow=true", true],
      ["/api/v1/namespaces?watch=false", false],
      ["/api/v1/namespaces/watch", false],
      ["/api/v1/namespaces", false],
    ] as const
  ) assertEquals(isLongRunning(target), long, target);

  const t = await setup();
  try {
    await (await t.fetch("/echo")).arrayBuffer();
    assertEquals(t.proxy.proxy.stats.idle, 1);
    // A watch does not take the idle stream: it dials (the dialer spreads dials over sessions).
    const c = await RawClient.connect(t.proxy.port);
    c.write("GET /watch?watch=true HTTP/1.1\r\nHost: a\r\n\r\n");
    await c.readHead();
    assertEquals(t.dialer.dials, 2);
    assertEquals(t.proxy.proxy.stats.idle, 1);
    await c.close();
  } finally {
    await t.close();
  }
});

Deno.test("request body limit: 413 up front for Content-Length, mid-stream for chunked", async () => {
  const t = await setup({ maxRequestBody: 1000 });
  try {
    const small = await t.fetch("/echo", { method: "POST", body: "x".repeat(1000) });
    assertEquals(small.status, 200);
    await small.body?.cancel();
    const dialsBefore = t.dialer.dials;
    const big = await t.fetch("/echo", { method: "POST", body: "x".repeat(1001) });
    assertEquals(big.status, 413);
    assertMatch(await big.text(), /exceeds the limit of 1000 bytes/);
    assertEquals(t.dialer.dials, dialsBefore, "a refused body never reaches upstream");
    const c = await RawClient.connect(t.proxy.port);
    c.write("POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    c.write("400\r\n" + "y".repeat(1024) + "\r\n");
    const res = await c.readResponse();
    assertEquals(res.status, 413);
    await c.close();
  } finally {
    await t.close();
  }
});

Deno.test("a dial refused at the stream limit is answered 502, without the session", async () => {
  const dialer: UpstreamDialer = {
    dial: () => Promise.reject(new StreamLimitError("session-1: channel limit 0 reached")),
  };
  const proxy = await startPlainProxy(dialer);
  const c = await RawClient.connect(proxy.port);
  try {
    c.write("GET /echo HTTP/1.1\r\nHost: a\r\n\r\n");
    const res = await c.readResponse();
    assertEquals(res.status, 502);
    const body = res.body.toString();
    assertMatch(body, /cluster alpha: kubesphere API server unreachable/);
    assert(!body.includes("session-1") && !body.includes("channel limit"), body);
  } finally {
    await c.close();
    await proxy.close();
  }
});
