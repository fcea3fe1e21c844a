/**
 * Differential test of our request parsing against `node:http`'s parser
 * (llhttp, driven through `node:_http_common`'s `HTTPParser` exactly as
 * `node:http`'s server drives it): generated request streams — heads with
 * the ingredients of request smuggling (Content-Length and Transfer-Encoding
 * together, other codings, repeated or listed lengths, obsolete folding,
 * whitespace before the colon, bare LF and stray CR, NUL and other control
 * bytes, HTTP/1.0 with Transfer-Encoding, duplicate Host) and chunked bodies
 * (size overflow, extensions, trailers, bare LF), with byte mutations and a
 * second request behind the first — go to both. Where they disagree, ours
 * must be the stricter: every message we accept, llhttp accepts too, with the
 * same method, target, version, header fields and body, ending at the same
 * byte (so nothing llhttp would read as a second request is part of our body,
 * or the other way round).
 *
 * Two deliberate differences, checked precisely rather than skipped:
 * - Content-Length with Transfer-Encoding: llhttp refuses; we forward the
 *   chunked body without the length and close the connection after it
 *   (RFC 9112 §6.3). Such a message must read as llhttp reads it with
 *   `kLenientChunkedLength`, and be the last we read on the connection.
 * - Methods: llhttp knows a fixed list; any token is a method to us (we pass
 *   it on verbatim; it has no part in framing). Such a disagreement ends the
 *   comparison of that stream, and is counted.
 * @module
 */

import { Buffer } from "node:buffer";
import * as http from "node:http";
import * as net from "node:net";
import { HTTPParser, methods } from "node:_http_common";
import fc from "fast-check";
import { ChunkedScanner } from "../../../lib/proxy/http/chunked.ts";
import {
  findHeadEnd,
  parseRequestHead,
  requestFraming,
  requestHost,
  requestKeepAlive,
} from "../../../lib/proxy/http/head.ts";
import { assert, assertEquals } from "../../helpers/assert.ts";
import { STREAM } from "./request_arb.ts";

/** One request as a parser read it. */
interface Message {
  method: string;
  target: string;
  version: string;
  headers: string[];
  body: string;
  complete: boolean;
}

/** Everything a parser read from one byte stream. */
interface Reading {
  messages: Message[];
  /** Why the parser refused, if it did (a refusal ends the reading). */
  error?: string;
  /** Our reading: the connection closes after the last message (llhttp: unused). */
  closed?: boolean;
  /** Our reading: the last message was chunked with Content-Length (forwarded, then closed). */
  lengthAndChunked?: boolean;
}

// deno-lint-ignore no-explicit-any
const P = HTTPParser as any;

/** llhttp's reading of `input`, through the parser `node:http`'s server uses. */
function llhttpRead(input: Buffer, lenient = 0): Reading {
  const parser = new P();
  parser.initialize(P.REQUEST, {}, 0, lenient);
  const messages: Message[] = [];
  let cur: Message | null = null;
  let flushed: string[] = [];
  let flushedUrl = "";
  parser[P.kOnHeaders] = (headers: string[], url: string) => {
    // Long heads come in parts before headers-complete; within a message these are trailers.
    if (cur === null) {
      flushed = flushed.concat(headers);
      flushedUrl += url;
    }
  };
  parser[P.kOnHeadersComplete] = (
    major: number,
    minor: number,
    headers: string[] | undefined,
    method: number,
    url: string | undefined,
  ) => {
    cur = {
      method: methods[method],
      target: url ?? flushedUrl,
      version: `${major}.${minor}`,
      headers: headers ? flushed.concat(headers) : flushed,
      body: "",
      complete: false,
    };
    flushed = [];
    flushedUrl = "";
    messages.push(cur);
    return 0;
  };
  parser[P.kOnBody] = (b: Buffer) => {
    cur!.body += Buffer.from(b).toString("latin1");
  };
  parser[P.kOnMessageComplete] = () => {
    cur!.complete = true;
    cur = null;
  };
  const r = parser.execute(input);
  parser.close?.();
  if (r instanceof Error) {
    const e = r as Error & { code: string; reason: string };
    return { messages, error: `${e.code} ${e.reason}` };
  }
  return { messages };
}

/** Our reading of `input`: the proxy's own parsing steps, in its order. */
function ourRead(input: Buffer): Reading {
  const messages: Message[] = [];
  let lengthAndChunked = false;
  let at = 0;
  for (;;) {
    const rest = input.subarray(at);
    const end = findHeadEnd(rest, rest.length);
    if (end < 0) return { messages, lengthAndChunked };
    let head, framing;
    try {
      head = parseRequestHead(rest, end);
      framing = requestFraming(head);
      requestHost(head);
      if (head.method === "CONNECT") throw new Error("CONNECT refused");
    } catch (err) {
      return { messages, error: (err as Error).message, lengthAndChunked };
    }
    lengthAndChunked = framing.kind === "chunked" && framing.close === true;
    const headers: string[] = [];
    for (const h of head.headers) headers.push(h.name, h.value);
    const m: Message = {
      method: head.method,
      target: head.target,
      version: `1.${head.minor}`,
      headers,
      body: "",
      complete: false,
    };
    messages.push(m);
    let used = end;
    if (framing.kind === "length") {
      const take = Math.min(framing.length, rest.length - end);
      m.body = rest.toString("latin1", end, end + take);
      used += take;
      m.complete = take === framing.length;
    } else if (framing.kind === "chunked") {
      const scanner = new ChunkedScanner();
      try {
        used = scanner.scan(rest, end, (b, x, y) => (m.body += b.toString("latin1", x, y)));
      } catch (err) {
        return { messages, error: (err as Error).message, lengthAndChunked };
      }
      m.complete = scanner.done;
    } else m.complete = true;
    if (!m.complete) return { messages, lengthAndChunked };
    if (!requestKeepAlive(head, framing)) return { messages, closed: true, lengthAndChunked };
    at += used;
  }
}

/** Tallies over a run, so that a property that only ever compares refusals fails. */
interface Tally {
  accepted: number;
  chunked: number;
  second: number;
  refusedByUs: number;
  lengthAndChunked: number;
  methodOnly: number;
}

function newTally(): Tally {
  return { accepted: 0, chunked: 0, second: 0, refusedByUs: 0, lengthAndChunked: 0, methodOnly: 0 };
}

/**
 * Check that our reading of `input` is llhttp's or stricter; throws with both readings when not.
 */
function compare(input: Buffer, tally: Tally): void {
  const ours = ourRead(input);
  let theirs = llhttpRead(input);
  if (ours.lengthAndChunked) {
    tally.lengthAndChunked++;
    theirs = llhttpRead(input, P.kLenientChunkedLength);
  }
  const fail = (why: string): never => {
    throw new Error(
      `${why}\ninput: ${JSON.stringify(input.toString("latin1"))}\nours: ${
        JSON.stringify(ours)
      }\nllhttp: ${JSON.stringify(theirs)}`,
    );
  };
  const n = ours.messages.length;
  for (let i = 0; i < n; i++) {
    const o = ours.messages[i];
    const t = theirs.messages[i];
    if (t === undefined) {
      // llhttp refused at the start of this message: only an extension method may explain it.
      if (/^HPE_INVALID_METHOD/.test(theirs.error ?? "") && !methods.includes(o.method)) {
        tally.methodOnly++;
        return;
      }
      fail(`message ${i}: we read a request where llhttp read none`);
    }
    const head = (m: Message) => [m.method, m.target, m.version, m.headers];
    if (JSON.stringify(head(o)) !== JSON.stringify(head(t))) fail(`message ${i}: heads differ`);
    // We refused inside this body: what went on before is a prefix of it; nothing more to check.
    if (i === n - 1 && ours.error !== undefined && !o.complete) break;
    if (o.body !== t.body) fail(`message ${i}: bodies differ`);
    if (o.complete !== t.complete) fail(`message ${i}: one parser ended the body, the other not`);
  }
  if (ours.error !== undefined) {
    tally.refusedByUs++;
    return;
  }
  if (n > 0) tally.accepted++;
  if (n > 1) tally.second++;
  if (ours.messages.some((m) => m.complete && /transfer-encoding/i.test(m.headers.join()))) {
    tally.chunked++;
  }
  if (ours.closed) return; // we read no further on this connection
  // We are waiting for more bytes (a body or the next head).
  if (theirs.messages.length > n) fail("llhttp read a request whose head we have not found");
  if (theirs.error !== undefined && n > 0 && !ours.messages[n - 1].complete) {
    fail("llhttp refused inside a body we are still reading");
  }
  // A refusal inside a head we have not finished reading is no disagreement yet: we forward
  // nothing of a head until it is complete (and then parse it ourselves).
}

Deno.test("differential: generated request streams read as llhttp reads them, or are refused", () => {
  const tally = newTally();
  const runs = Number(Deno.env.get("TOWER_DIFF_RUNS") ?? 10_000);
  fc.assert(fc.property(STREAM, (input) => compare(input, tally)), { numRuns: runs });
  // The property must have compared real readings, not only refusals (about half are read).
  const t = JSON.stringify(tally);
  assert(tally.accepted > runs / 5, t);
  assert(tally.chunked > runs / 40, t);
  assert(tally.second > runs / 40, t);
  assert(tally.refusedByUs > runs / 10, t);
  assert(tally.lengthAndChunked > runs / 200, t);
});

const H = "POST / HTTP/1.1\r\nHost: a\r\n";

/** Known smuggling vectors, and ordinary requests that must pass. */
const VECTORS: [string, "refused" | "read"][] = [
  [H + "Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", "refused"],
  [H + "Content-Length: 3, 3\r\n\r\nabc", "refused"],
  [H + "Content-Length: 3\t\r\n\r\nabc", "refused"],
  [H + "Transfer-Encoding: chunked\t\r\n\r\n0\r\n\r\n", "refused"],
  [H + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "refused"],
  [H + "Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", "refused"],
  [H + "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "refused"],
  ["POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "refused"],
  [H + "Transfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n", "refused"],
  [H + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\n0\r\n\r\n", "refused"],
  [H + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\n", "refused"],
  [H + "Transfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n", "refused"],
  [H + "Transfer-Encoding: chunked\r\n\r\n3 ;a\r\nabc\r\n0\r\n\r\n", "refused"],
  [H + "Transfer-Encoding: chunked\r\n\r\n3;a b\r\nabc\r\n0\r\n\r\n", "refused"],
  [H + "Transfer-Encoding: chunked\r\n\r\n1" + "0".repeat(16) + "\r\n", "refused"],
  [H + "Transfer-Encoding: chunked\r\n\r\n0\r\nX : y\r\n\r\n", "refused"],
  [H + "Transfer-Encoding: chunked\r\n\r\n0\r\nX: y\r\n z\r\n\r\n", "refused"],
  [H + "Transfer-Encoding: chunked\r\n\r\n0\r\nX: \0\r\n\r\n", "refused"],
  ["GET / HTTP/1.1\nHost: a\n\n", "refused"],
  ["GET / HTTP/1.1\r\nHost: a\r\n\n", "refused"],
  ["GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n z\r\n\r\n", "refused"],
  ["GET / HTTP/1.1\r\nHost: a\r\nX : y\r\n\r\n", "refused"],
  ["GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", "refused"],
  ["GET /\xe9 HTTP/1.1\r\nHost: a\r\n\r\n", "refused"],
  ["GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "refused"],
  ["GET / HTTP/1.1\r\n\r\n", "refused"],
  // Content-Length and Transfer-Encoding: read as chunked, the last request on the connection.
  [
    H +
    "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
    "read",
  ],
  [H + 'Transfer-Encoding: Chunked\r\n\r\n3;a=b;c="d"\r\nabc\r\n0\r\nX: y\r\n\r\n', "read"],
  [H + "Content-Length:  3 \r\n\r\nabcGET / HTTP/1.1\r\nHost: a\r\n\r\n", "read"],
  ["\r\nGET http://a/b HTTP/1.0\r\nX: caf\xe9\t \r\n\r\n", "read"],
];

Deno.test("differential: known smuggling vectors are refused, ordinary requests read alike", () => {
  const tally = newTally();
  for (const [text, want] of VECTORS) {
    const input = Buffer.from(text, "latin1");
    compare(input, tally);
    const ours = ourRead(input);
    assertEquals(ours.error === undefined ? "read" : "refused", want, JSON.stringify(text));
  }
  const smuggled = ourRead(Buffer.from(VECTORS.find(([t]) => t.includes("/smuggled"))![0]));
  assertEquals([smuggled.messages.length, smuggled.closed], [1, true]);
});

/** Send `text` to `port` and read the status of the first answer ("" when closed without one). */
async function statusFrom(port: number, text: string): Promise<string> {
  const sock = net.connect(port, "127.0.0.1");
  let got = "";
  return await new Promise<string>((resolve) => {
    sock.on("connect", () => sock.write(Buffer.from(text, "latin1")));
    sock.on("data", (d: Buffer) => {
      got += d.toString("latin1");
      const m = /^HTTP\/1\.1 (\d{3})/.exec(got);
      if (m) {
        sock.destroy();
        resolve(m[1]);
      }
    });
    sock.on("error", () => {});
    sock.on("close", () => resolve(""));
  });
}

Deno.test("differential: the parser driven here reads as node:http's server does", async () => {
  // Complete requests only: the server either answers 200 or refuses (400, or a closed socket).
  const server = http.createServer((req, res) => {
    req.resume();
    req.on("end", () => res.end("ok"));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as net.AddressInfo).port;
  try {
    let refusedSeen = 0;
    for (const [text] of VECTORS) {
      const theirs = llhttpRead(Buffer.from(text, "latin1"));
      const first = theirs.messages[0];
      if (theirs.error === undefined && !first?.complete) continue; // the server would wait
      const accepted = theirs.error === undefined && first !== undefined &&
        // node:http itself (not llhttp) refuses HTTP/1.1 without Host.
        (first.version !== "1.1" || first.headers.some((h, i) => i % 2 === 0 && /^host$/i.test(h)));
      const status = await statusFrom(port, text);
      assertEquals(status === "200", accepted, `${JSON.stringify(text)}: status ${status}`);
      if (!accepted) refusedSeen++;
    }
    assert(refusedSeen > 10);
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
});
