/**
 * HTTP/1.1 strictness at the proxy, over real sockets: what a client gets
 * for the requests request smuggling is made of (Content-Length with
 * Transfer-Encoding, a second Host, Transfer-Encoding in HTTP/1.0, a bare LF
 * in chunked framing), what reaches the member, and what the proxy does with
 * a member's answer framed both ways.
 * @module
 */

import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import { assert, assertEquals } from "../../helpers/assert.ts";
import { RawClient, startPlainProxy, TestDialer } from "./helpers.ts";
import { type Echo, startHttpOrigin, startRawOrigin } from "./origin.ts";

async function setup() {
  const origin = await startHttpOrigin();
  const dialer = new TestDialer(origin.port);
  const proxy = await startPlainProxy(dialer);
  const client = await RawClient.connect(proxy.port);
  return {
    dialer,
    client,
    port: proxy.port,
    async close() {
      await client.close();
      await proxy.close();
      await origin.close();
    },
  };
}

/** What comes next from `c`: bytes, or "" once the proxy closed the connection. */
async function next(c: RawClient): Promise<string> {
  return await c.readSome().then((b) => b.toString("latin1"), () => "");
}

Deno.test("Content-Length with Transfer-Encoding: forwarded chunked without the length, then closed", async () => {
  const t = await setup();
  try {
    t.client.write(
      "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n" +
        "3\r\nabc\r\n0\r\n\r\n" +
        // What a front end reading the length would take for a second request.
        "GET /echo?smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    const res = await t.client.readResponse();
    assertEquals(res.status, 200);
    assertEquals(res.headers["connection"], "close");
    const echo = JSON.parse(res.body.toString()) as Echo;
    assertEquals(echo.headers["transfer-encoding"], "chunked");
    assertEquals(echo.headers["content-length"], undefined);
    assertEquals(echo.bodyBytes, 3);
    assertEquals(echo.sha256, createHash("sha256").update("abc").digest("hex"));
    // No answer to the bytes after the body: the connection closes instead.
    assertEquals(await next(t.client), "");
  } finally {
    await t.close();
  }
});

Deno.test("a second Host, or Transfer-Encoding in HTTP/1.0, is refused before the member", async () => {
  const t = await setup();
  try {
    const cases = [
      "GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
      "POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ];
    for (const text of cases) {
      const c = await RawClient.connect(t.port);
      try {
        c.write(text);
        const res = await c.readResponse();
        assertEquals(res.status, 400, text);
        assertEquals(JSON.parse(res.body.toString()).kind, "Status");
        assertEquals(await next(c), "");
      } finally {
        await c.close();
      }
    }
    assertEquals(t.dialer.dials, 0);
  } finally {
    await t.close();
  }
});

Deno.test("a bare LF in a chunked request body is refused by the proxy (400), not the member", async () => {
  const t = await setup();
  try {
    t.client.write(
      "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
    );
    const res = await t.client.readResponse();
    assertEquals(res.status, 400);
    const status = JSON.parse(res.body.toString()) as { message: string };
    assert(status.message.includes("chunked body"), status.message);
  } finally {
    await t.close();
  }
});

Deno.test("a member answer with Content-Length and chunked is passed on chunked; its stream is not reused", async () => {
  const origin = await startRawOrigin((head) => ({
    response: head.startsWith("GET /a ")
      ? "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n" +
        "3\r\nabc\r\n0\r\n\r\n"
      : "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    upgrade: false,
  }));
  const dialer = new TestDialer(origin.port);
  const proxy = await startPlainProxy(dialer);
  const c = await RawClient.connect(proxy.port);
  try {
    c.write("GET /a HTTP/1.1\r\nHost: a\r\n\r\n");
    const first = await c.readResponse();
    assertEquals(first.body, Buffer.from("abc"));
    assertEquals(first.headers["content-length"], undefined);
    assertEquals(first.headers["transfer-encoding"], "chunked");
    c.write("GET /b HTTP/1.1\r\nHost: a\r\n\r\n");
    assertEquals((await c.readResponse()).body, Buffer.from("ok"));
    assertEquals(dialer.dials, 2);
  } finally {
    await c.close();
    await proxy.close();
    await origin.close();
  }
});
