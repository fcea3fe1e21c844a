import { Buffer } from "node:buffer";
import {
  encodeHead,
  findHeadEnd,
  HttpParseError,
  parseRequestHead,
  parseResponseHead,
  requestFraming,
  responseFraming,
} from "../../../lib/proxy/http/head.ts";
import { assertEquals, assertThrows } from "../../helpers/assert.ts";

function req(text: string) {
  const b = Buffer.from(text, "latin1");
  return parseRequestHead(b, findHeadEnd(b, b.length));
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

Deno.test("request framing: chunked wins over Content-Length; bad lengths refused", () => {
  assertEquals(requestFraming(req("GET / HTTP/1.1\r\n\r\n")), { kind: "none" });
  assertEquals(requestFraming(req("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")), {
    kind: "none",
  });
  assertEquals(requestFraming(req("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n")), {
    kind: "length",
    length: 12,
  });
  assertEquals(
    requestFraming(req("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n")),
    { kind: "length", length: 5 },
  );
  assertEquals(
    requestFraming(
      req("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\nContent-Length: 3\r\n\r\n"),
    ),
    { kind: "chunked" },
  );
  for (
    const [text, status] of [
      ["POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400],
      ["POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400],
      ["POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n", 400],
      ["POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 501],
    ] as const
  ) {
    const err = assertThrows(() => requestFraming(req(text)), HttpParseError) as HttpParseError;
    assertEquals(err.status, status);
  }
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
