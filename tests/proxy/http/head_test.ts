import { Buffer } from "node:buffer";
import {
  encodeHead,
  findHeadEnd,
  HttpParseError,
  parseRequestHead,
  parseResponseHead,
  requestFraming,
  requestHost,
  requestKeepAlive,
  responseFraming,
} from "../../../lib/proxy/http/head.ts";
import { assert, assertEquals, assertThrows } from "../../helpers/assert.ts";

function req(text: string) {
  const b = Buffer.from(text, "latin1");
  return parseRequestHead(b, findHeadEnd(b, b.length));
}

/** The status a request head is refused with (by parsing, framing or Host), or 0. */
function refusal(text: string): number {
  try {
    const h = req(text);
    requestFraming(h);
    requestHost(h);
    return 0;
  } catch (err) {
    assert(err instanceof HttpParseError, String(err));
    return err.status;
  }
}

function res(text: string) {
  const b = Buffer.from(text, "latin1");
  return parseResponseHead(b, findHeadEnd(b, b.length));
}

Deno.test("findHeadEnd: CRLF and bare LF, resumable", () => {
  const b = Buffer.from("GET / HTTP/1.1\r\nA: b\r\n\r\nbody");
  assertEquals(findHeadEnd(b, b.length), b.length - 4);
  assertEquals(findHeadEnd(b, 10), -1);
  assertEquals(findHeadEnd(b, b.length, 20), b.length - 4);
  const lf = Buffer.from("GET / HTTP/1.1\nA: b\n\nx");
  assertEquals(findHeadEnd(lf, lf.length), lf.length - 1);
});

Deno.test("parseRequestHead: fields keep case and order; values trimmed", () => {
  const h = req("PUT /api/v1/x?y=1 HTTP/1.1\r\nHost: a\r\nX-Multi:  one \r\nx-multi: two\r\n\r\n");
  assertEquals(h.method, "PUT");
  assertEquals(h.target, "/api/v1/x?y=1");
  assertEquals(h.minor, 1);
  assertEquals(h.headers.map((f) => [f.name, f.value]), [
    ["Host", "a"],
    ["X-Multi", "one"],
    ["x-multi", "two"],
  ]);
  assertEquals(req("\r\nGET / HTTP/1.0\r\n\r\n").minor, 0);
});

Deno.test("parseRequestHead: refuses what smuggling is made of", () => {
  const bad: [string, number][] = [
    ["GET / HTTP/1.1\r\nA : b\r\n\r\n", 400],
    ["GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", 400],
    ["GET / HTTP/1.1\r\nA: b\x00c\r\n\r\n", 400],
    ["GET / HTTP/1.1\r\nA: b\rc\r\n\r\n", 400],
    ["GET  / HTTP/1.1\r\n\r\n", 400],
    ["GET / HTTP/3.0\r\n\r\n", 505],
    ["G(T / HTTP/1.1\r\n\r\n", 400],
    ["GET /\x7f HTTP/1.1\r\n\r\n", 400],
  ];
  for (const [text, status] of bad) {
    const err = assertThrows(() => req(text), HttpParseError) as HttpParseError;
    assertEquals(err.status, status, JSON.stringify(text));
  }
  const many = "GET / HTTP/1.1\r\n" + "A: b\r\n".repeat(1001) + "\r\n";
  assertEquals((assertThrows(() => req(many), HttpParseError) as HttpParseError).status, 431);
});

Deno.test("parseRequestHead: a bare LF or stray CR ends no line in a request head", () => {
  for (
    const bad of [
      "GET / HTTP/1.1\nHost: a\n\n",
      "GET / HTTP/1.1\r\nHost: a\n\r\n",
      "GET / HTTP/1.1\r\nHost: a\r\n\n",
      "GET / HTTP/1.1\nHost: a\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: a\r\nX: b\nTransfer-Encoding: chunked\r\n\r\n",
      "GET / HTTP/1.1\r\r\nHost: a\r\n\r\n",
      "\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    ]
  ) {
    const b = Buffer.from(bad, "latin1");
    const end = findHeadEnd(b, b.length);
    assert(end > 0, JSON.stringify(bad));
    const err = assertThrows(() => parseRequestHead(b, end), HttpParseError) as HttpParseError;
    assertEquals(err.status, 400, JSON.stringify(bad));
  }
  // Responses (from the member, re-sent by us with CRLF) may end lines in a bare LF.
  assertEquals(res("HTTP/1.1 200 OK\nContent-Length: 1\n\n").headers[0].value, "1");
});

Deno.test("parseRequestHead: request targets are origin-, absolute- or asterisk-form ASCII", () => {
  for (
    const ok of ["/", "/a?b=c#d", "//x", "http://a/b", "HTTPS://[::1]:6443/x?y", "http://a", "*"]
  ) {
    assertEquals(req(`GET ${ok} HTTP/1.1\r\nHost: a\r\n\r\n`).target, ok);
  }
  for (const bad of ["a", "/caf\xe9", "*x", "http://", "x-y://a/", 'http://a"/', "a:443"]) {
    assertEquals(refusal(`GET ${bad} HTTP/1.1\r\nHost: a\r\n\r\n`), 400, JSON.stringify(bad));
  }
});

Deno.test("request framing: one Content-Length, digits only; lone Transfer-Encoding chunked", () => {
  const P = "POST / HTTP/1.1\r\nHost: a\r\n";
  assertEquals(requestFraming(req("GET / HTTP/1.1\r\n\r\n")), { kind: "none" });
  assertEquals(requestFraming(req(P + "Content-Length: 0\r\n\r\n")), { kind: "none" });
  assertEquals(requestFraming(req(P + "Content-Length:\t012 \r\n\r\n")), {
    kind: "length",
    length: 12,
  });
  assertEquals(requestFraming(req(P + "Transfer-Encoding: Chunked\r\n\r\n")), { kind: "chunked" });
  for (
    const [text, status] of [
      [P + "Content-Length: -1\r\n\r\n", 400],
      [P + "Content-Length: 1\r\nContent-Length: 2\r\n\r\n", 400],
      [P + "Content-Length: 5\r\nContent-Length: 5\r\n\r\n", 400],
      [P + "Content-Length: 5, 5\r\n\r\n", 400],
      [P + "Content-Length: 0x10\r\n\r\n", 400],
      [P + "Content-Length: 5\t\r\n\r\n", 400],
      [P + "Content-Length: \r\n\r\n", 400],
      [P + "Transfer-Encoding: chunked\t\r\n\r\n", 400],
      [P + "Transfer-Encoding: chunked, gzip\r\n\r\n", 501],
      [P + "Transfer-Encoding: gzip, chunked\r\n\r\n", 501],
      [P + "Transfer-Encoding: chunked, chunked\r\n\r\n", 501],
      [P + "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", 501],
      [P + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 501],
      [P + "Transfer-Encoding: \r\n\r\n", 501],
      ["POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400],
    ] as const
  ) assertEquals(refusal(text), status, JSON.stringify(text));
});

Deno.test("request framing: Content-Length with Transfer-Encoding is chunked, then the connection closes", () => {
  const h = req(
    "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
  );
  const f = requestFraming(h);
  assertEquals(f, { kind: "chunked", close: true });
  assertEquals(requestKeepAlive(h, f), false);
  const plain = req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
  assertEquals(requestKeepAlive(plain, requestFraming(plain)), true);
  const closing = req("GET / HTTP/1.1\r\nHost: a\r\nConnection: x, Close\r\n\r\n");
  assertEquals(requestKeepAlive(closing, requestFraming(closing)), false);
  const old = req("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  assertEquals(requestKeepAlive(old, requestFraming(old)), false);
});

Deno.test("requestHost: exactly one in HTTP/1.1, at most one in HTTP/1.0", () => {
  assertEquals(requestHost(req("GET / HTTP/1.1\r\nhost: a:1\r\n\r\n")), "a:1");
  assertEquals(requestHost(req("GET / HTTP/1.0\r\n\r\n")), undefined);
  for (
    const text of [
      "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: a\r\nHOST: a\r\n\r\n",
      "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
      "GET / HTTP/1.1\r\n\r\n",
      "GET / HTTP/1.1\r\nHost:\r\n\r\n",
    ]
  ) assertEquals(refusal(text), 400, JSON.stringify(text));
});

Deno.test("response heads and framing (HEAD, 1xx, 204, 304, chunked, length, close)", () => {
  const r = res("HTTP/1.1 201 Created Now\r\nContent-Length: 7\r\n\r\n");
  assertEquals([r.minor, r.status, r.reason], [1, 201, "Created Now"]);
  assertEquals(res("HTTP/1.1 200\r\n\r\n").reason, "");
  assertEquals(responseFraming("GET", r), { kind: "length", length: 7 });
  assertEquals(responseFraming("HEAD", r), { kind: "none" });
  for (const s of ["100 Continue", "204 No Content", "304 Not Modified"]) {
    assertEquals(responseFraming("GET", res(`HTTP/1.1 ${s}\r\nContent-Length: 9\r\n\r\n`)), {
      kind: "none",
    });
  }
  assertEquals(
    responseFraming("GET", res("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")),
    { kind: "chunked" },
  );
  assertEquals(responseFraming("GET", res("HTTP/1.0 200 OK\r\n\r\n")), { kind: "close" });
  assertEquals(
    responseFraming("GET", res("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n")),
    { kind: "close" },
  );
  // Chunked with a length: chunked, and that upstream connection is not reused.
  assertEquals(
    responseFraming(
      "GET",
      res("HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ),
    { kind: "chunked", close: true },
  );
  // Transfer-Encoding in HTTP/1.0: the framing is faulty, read until the connection closes.
  assertEquals(
    responseFraming(
      "GET",
      res("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n"),
    ),
    { kind: "close" },
  );
  for (const bad of ["HTTP/1.1 20 OK\r\n\r\n", "HTTP/1.1 200OK\r\n\r\n", "ICY 200 OK\r\n\r\n"]) {
    assertThrows(() => res(bad), HttpParseError);
  }
});

Deno.test("encodeHead: one byte per character, ASCII or not", () => {
  const ascii = "HTTP/1.1 200 OK\r\nX-A: b\r\n\r\n";
  assertEquals(Array.from(encodeHead(ascii)), Array.from(ascii, (c) => c.charCodeAt(0)));
  const latin = "X-Name: caf\xe9 \xc3\xa9 \xff\r\n";
  assertEquals(Array.from(encodeHead(latin)), Array.from(latin, (c) => c.charCodeAt(0)));
  assertEquals(encodeHead("").length, 0);
});
