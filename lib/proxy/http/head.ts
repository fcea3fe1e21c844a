/**
 * HTTP/1.x message heads: finding the end of a head in a byte stream,
 * parsing request and response heads strictly (no obsolete line folding, no
 * whitespace before the colon, no control characters in values: the things
 * request smuggling is made of), header lookups, and body framing rules.
 * Requests are held to the strictest reading where parsers are known to
 * differ (CRLF line ends only, one Host, one Content-Length, `chunked` as the
 * only transfer coding): what we accept, `node:http`'s parser (llhttp) reads
 * the same way, as a differential test checks (`docs/http.md`).
 *
 * Heads are small and parsed once per message, so they are decoded as latin1
 * strings (one character per byte) and encoded back the same way
 * ({@link encodeHead}); bodies are never touched here.
 * @module
 */

import { Buffer } from "node:buffer";

/** One header field as received (name keeps its case; `lower` is for matching). */
export interface HeaderField {
  name: string;
  lower: string;
  value: string;
}

/** A parsed request head. */
export interface RequestHead {
  method: string;
  /** Request target exactly as sent (origin-form, absolute-form or `*`). */
  target: string;
  /** Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1. */
  minor: number;
  headers: HeaderField[];
}

/** A parsed response head. */
export interface ResponseHead {
  minor: number;
  status: number;
  reason: string;
  headers: HeaderField[];
}

/** A malformed message; `status` is what to answer a client with. */
export class HttpParseError extends Error {
  constructor(readonly status: 400 | 431 | 501 | 505, message: string) {
    super(message);
    this.name = "HttpParseError";
  }
}

/** Limits applied while reading a head. */
export interface HeadLimits {
  /** Maximum bytes of the head including the blank line (default 1 MiB, as Go's net/http). */
  maxBytes: number;
  /** Maximum number of header fields (default 1000). */
  maxFields: number;
}

/** Defaults for {@link HeadLimits}. */
export const DEFAULT_HEAD_LIMITS: HeadLimits = { maxBytes: 1 << 20, maxFields: 1000 };

const LF = 0x0a;
const CR = 0x0d;

/**
 * Index just past the blank line ending a head in `buf[0, len)`, or -1. Lines may end in CRLF or
 * a bare LF. `from` lets a caller resume a scan without rescanning (pass the previous length).
 */
export function findHeadEnd(buf: Uint8Array, len: number, from = 0): number {
  let i = from > 3 ? from - 3 : 0;
  while (i < len) {
    const lf = buf.indexOf(LF, i);
    if (lf < 0 || lf >= len) return -1;
    if (lf + 1 < len && buf[lf + 1] === LF) return lf + 2;
    if (lf + 2 < len && buf[lf + 1] === CR && buf[lf + 2] === LF) return lf + 3;
    i = lf + 1;
  }
  return -1;
}

// The same set of characters twice: as a regular expression (strings) and a table (bytes).
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/** 1 for each byte that may appear in a token (RFC 9110 §5.6.2: field names, methods). */
export const TCHAR: Uint8Array = (() => {
  const t = new Uint8Array(256);
  for (let i = 0; i < TOKEN_CHARS.length; i++) t[TOKEN_CHARS.charCodeAt(i)] = 1;
  return t;
})();

// Control characters but HTAB; CR and LF among them (a stray one inside a line is refused).
// deno-lint-ignore no-control-regex
const BAD_VALUE = /[\x00-\x08\x0a-\x1f\x7f]/;
// origin-form, absolute-form (a letters-only scheme, "://", an authority of URI characters,
// then anything printable) or asterisk-form (RFC 9112 §3.2); printable ASCII only: bytes beyond
// ASCII are no part of a URI (RFC 3986) and llhttp refuses them.
const TARGET =
  /^(?:\/[\x21-\x7e]*|[A-Za-z]+:\/\/[\w\-.~!$&'()*+,;=:@[\]%]+(?:[/?#][\x21-\x7e]*)?|\*)$/;

/** Lines of a response head: CRLF or a bare LF ends a line (RFC 9112 §2.2 lets a recipient). */
function splitLines(head: string): string[] {
  const lines = head.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i];
    if (l.length > 0 && l.charCodeAt(l.length - 1) === CR) lines[i] = l.slice(0, -1);
  }
  // The head ends with an empty line: drop it (and the empty string after the final LF).
  while (lines.length > 0 && lines[lines.length - 1] === "") lines.pop();
  return lines;
}

/** The header fields in `lines[from, lines.length)`. */
function parseFields(lines: string[], from: number, limits: HeadLimits): HeaderField[] {
  if (lines.length - from > limits.maxFields) {
    throw new HttpParseError(431, `more than ${limits.maxFields} header fields`);
  }
  const fields: HeaderField[] = new Array(lines.length - from);
  for (let i = from; i < lines.length; i++) {
    const line = lines[i];
    const c0 = line.charCodeAt(0);
    if (c0 === 0x20 || c0 === 0x09) throw new HttpParseError(400, "obsolete line folding");
    const colon = line.indexOf(":");
    if (colon <= 0) throw new HttpParseError(400, "malformed header line");
    const name = line.slice(0, colon);
    if (!TOKEN.test(name)) throw new HttpParseError(400, "invalid header name");
    const raw = line.slice(colon + 1);
    const value = trimOws(raw);
    if (BAD_VALUE.test(value)) throw new HttpParseError(400, `invalid value of header ${name}`);
    const lower = name.toLowerCase();
    if ((lower === "content-length" || lower === "transfer-encoding") && TAB_AFTER.test(raw)) {
      // llhttp refuses these two with a tab after the value (and reads the message otherwise).
      throw new HttpParseError(400, `invalid value of header ${name}`);
    }
    fields[i - from] = { name, lower, value };
  }
  return fields;
}

const TAB_AFTER = /\t[ \t]*$/;

function trimOws(s: string): string {
  let a = 0;
  let b = s.length;
  while (a < b && (s.charCodeAt(a) === 0x20 || s.charCodeAt(a) === 0x09)) a++;
  while (b > a && (s.charCodeAt(b - 1) === 0x20 || s.charCodeAt(b - 1) === 0x09)) b--;
  return a === 0 && b === s.length ? s : s.slice(a, b);
}

function parseVersion(v: string): number {
  if (v === "HTTP/1.1") return 1;
  if (v === "HTTP/1.0") return 0;
  if (/^HTTP\/\d\.\d$/.test(v)) throw new HttpParseError(505, `unsupported version ${v}`);
  throw new HttpParseError(400, "malformed HTTP version");
}

/**
 * Parse a request head (`buf[0, end)` including the blank line). Every line must end in CRLF:
 * a bare LF is refused, as llhttp does, so that no parser in front of us can see line breaks
 * where we see none (RFC 9112 §2.2 only allows, never requires, reading LF as a line end).
 */
export function parseRequestHead(
  buf: Buffer,
  end: number,
  limits: HeadLimits = DEFAULT_HEAD_LIMITS,
): RequestHead {
  const text = buf.toString("latin1", 0, end);
  if (!text.endsWith("\r\n\r\n")) {
    throw new HttpParseError(400, "request head lines must end in CRLF");
  }
  // A CR or LF left inside a line fails its checks below: method, field name (tokens), target
  // (printable), version (exact), field value (BAD_VALUE).
  const lines = text.split("\r\n");
  lines.length -= 2; // the blank line, and the empty string after its CRLF
  // Tolerate empty lines before the request line (RFC 9112 §2.2).
  let first = 0;
  while (first < lines.length && lines[first] === "") first++;
  if (first === lines.length) throw new HttpParseError(400, "empty request");
  const parts = lines[first].split(" ");
  if (parts.length !== 3) throw new HttpParseError(400, "malformed request line");
  const [method, target, version] = parts;
  if (!TOKEN.test(method)) throw new HttpParseError(400, "invalid method");
  if (!TARGET.test(target)) throw new HttpParseError(400, "invalid request target");
  const minor = parseVersion(version);
  return { method, target, minor, headers: parseFields(lines, first + 1, limits) };
}

/** Parse a response head (`buf[0, end)` including the blank line). */
export function parseResponseHead(
  buf: Buffer,
  end: number,
  limits: HeadLimits = DEFAULT_HEAD_LIMITS,
): ResponseHead {
  const lines = splitLines(buf.toString("latin1", 0, end));
  if (lines.length === 0) throw new HttpParseError(400, "empty response");
  const line = lines[0];
  const sp1 = line.indexOf(" ");
  if (sp1 < 0) throw new HttpParseError(400, "malformed status line");
  const minor = parseVersion(line.slice(0, sp1));
  const code = line.slice(sp1 + 1, sp1 + 4);
  if (!/^\d{3}$/.test(code) || (line.length > sp1 + 4 && line[sp1 + 4] !== " ")) {
    throw new HttpParseError(400, "malformed status code");
  }
  const reason = line.length > sp1 + 5 ? line.slice(sp1 + 5) : "";
  return { minor, status: Number(code), reason, headers: parseFields(lines, 1, limits) };
}

/** First value of header `lower` (lowercase name), or undefined. */
export function headerValue(headers: HeaderField[], lower: string): string | undefined {
  for (const h of headers) if (h.lower === lower) return h.value;
  return undefined;
}

/** Lowercased comma-separated tokens of every `lower` header (e.g. `connection`). */
export function headerTokens(headers: HeaderField[], lower: string): Set<string> {
  const out = new Set<string>();
  for (const h of headers) {
    if (h.lower !== lower) continue;
    for (const t of h.value.split(",")) {
      const v = t.trim().toLowerCase();
      if (v) out.add(v);
    }
  }
  return out;
}

/** How a message body is delimited. */
export type Framing =
  | { kind: "none" }
  | { kind: "length"; length: number }
  /**
   * `close`: the message also carried Content-Length (RFC 9112 §6.3: Transfer-Encoding wins,
   * the message is suspect, and the connection it came on closes after the exchange).
   */
  | { kind: "chunked"; close?: boolean }
  | { kind: "close" };

const NO_BODY: Framing = { kind: "none" };
const CHUNKED: Framing = { kind: "chunked" };
const CHUNKED_CLOSE: Framing = { kind: "chunked", close: true };
const UNTIL_CLOSE: Framing = { kind: "close" };

/** Whether the final transfer coding listed is `chunked`; undefined without Transfer-Encoding. */
function chunkedLast(headers: HeaderField[]): boolean | undefined {
  let seen = false;
  let last = "";
  for (const h of headers) {
    if (h.lower !== "transfer-encoding") continue;
    seen = true;
    for (const t of h.value.split(",")) {
      const v = t.trim().toLowerCase();
      if (v) last = v;
    }
  }
  return seen ? last === "chunked" : undefined;
}

const LENGTH = /^\d{1,15}$/;

/**
 * A response's Content-Length (equal repeated values collapse, RFC 9112 §6.3), or undefined;
 * throws when invalid. Responses only: we send the client a Content-Length of our own.
 */
function contentLength(headers: HeaderField[]): number | undefined {
  let len: number | undefined;
  for (const h of headers) {
    if (h.lower !== "content-length") continue;
    for (const part of h.value.split(",")) {
      const v = part.trim();
      if (!LENGTH.test(v)) throw new HttpParseError(400, "invalid Content-Length");
      const n = Number(v);
      if (len !== undefined && len !== n) {
        throw new HttpParseError(400, "conflicting Content-Length");
      }
      len = n;
    }
  }
  return len;
}

/**
 * Body framing of a request (RFC 9112 §6), read as strictly as any parser in front of us or
 * behind us could: Transfer-Encoding must be one field saying exactly `chunked` (Go's net/http
 * accepts nothing else either; anything else is 501) and is refused in HTTP/1.0 (§6.1: framing
 * then faulty); Content-Length must be one field of digits (a repeated or listed one, which
 * llhttp refuses, is 400). Both present: chunked, and the connection closes after the exchange
 * (§6.3). Otherwise Content-Length, else no body.
 */
export function requestFraming(head: RequestHead): Framing {
  let te: string | undefined;
  let teFields = 0;
  let cl: string | undefined;
  let clFields = 0;
  for (const h of head.headers) {
    if (h.lower === "transfer-encoding") {
      te = h.value;
      teFields++;
    } else if (h.lower === "content-length") {
      cl = h.value;
      clFields++;
    }
  }
  let length: number | undefined;
  if (cl !== undefined) {
    if (clFields > 1) throw new HttpParseError(400, "more than one Content-Length");
    if (!LENGTH.test(cl)) throw new HttpParseError(400, "invalid Content-Length");
    length = Number(cl);
  }
  if (te === undefined) return length ? { kind: "length", length } : NO_BODY;
  if (head.minor === 0) throw new HttpParseError(400, "Transfer-Encoding in an HTTP/1.0 request");
  if (teFields > 1 || te.length !== 7 || te.toLowerCase() !== "chunked") {
    throw new HttpParseError(501, "unsupported Transfer-Encoding (only chunked is)");
  }
  return length === undefined ? CHUNKED : CHUNKED_CLOSE;
}

/** Whether a client connection stays open after the exchange of `head` (framed `framing`). */
export function requestKeepAlive(head: RequestHead, framing: Framing): boolean {
  if (head.minor < 1 || (framing.kind === "chunked" && framing.close)) return false;
  return !headerTokens(head.headers, "connection").has("close");
}

/**
 * The request's Host (RFC 9112 §3.2): required in HTTP/1.1 and never repeated (400 otherwise,
 * as Go's net/http answers; proxies and servers could each pick a different one).
 */
export function requestHost(head: RequestHead): string | undefined {
  let host: string | undefined;
  for (const h of head.headers) {
    if (h.lower !== "host") continue;
    if (host !== undefined) throw new HttpParseError(400, "more than one Host");
    host = h.value;
  }
  if (head.minor >= 1 && !host) throw new HttpParseError(400, "missing Host");
  return host;
}

/**
 * Body framing of a response to `method` (RFC 9112 §6.3): none for HEAD, 1xx, 204 and 304;
 * chunked (with `close` when Content-Length came too: that connection is not reused); until
 * the connection closes for any other Transfer-Encoding, and for any in HTTP/1.0 (§6.1);
 * Content-Length; otherwise until the connection closes.
 */
export function responseFraming(method: string, head: ResponseHead): Framing {
  const s = head.status;
  if (method === "HEAD" || s < 200 || s === 204 || s === 304) return NO_BODY;
  const chunked = chunkedLast(head.headers);
  if (chunked !== undefined) {
    if (!chunked || head.minor === 0) return UNTIL_CLOSE;
    return headerValue(head.headers, "content-length") === undefined ? CHUNKED : CHUNKED_CLOSE;
  }
  const len = contentLength(head.headers);
  if (len === undefined) return UNTIL_CLOSE;
  return len === 0 ? NO_BODY : { kind: "length", length: len };
}

const NON_ASCII = /[\u0080-\uffff]/;
const utf8 = new TextEncoder();

/**
 * The bytes of a head built from latin1-decoded strings: one byte per character, so header
 * bytes beyond ASCII (obs-text, e.g. a raw UTF-8 file name) leave as they came. ASCII heads,
 * nearly all of them, take the native encoder (latin1 encoding is a JavaScript loop here).
 */
export function encodeHead(head: string): Buffer {
  if (!NON_ASCII.test(head)) {
    // Into a slice of Buffer's pool: a sixth of the cost of encode() and a wrapper.
    const bytes = Buffer.allocUnsafe(head.length);
    utf8.encodeInto(head, bytes);
    return bytes;
  }
  return Buffer.from(head, "latin1");
}
