/**
 * HTTP/1.x message heads: finding the end of a head in a byte stream,
 * parsing request and response heads strictly (no obsolete line folding, no
 * whitespace before the colon, no control characters in values: the things
 * request smuggling is made of), header lookups, and body framing rules.
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

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
// Control characters other than HTAB (CR and LF cannot occur: lines are split on LF).
// deno-lint-ignore no-control-regex
const BAD_VALUE = /[\x00-\x08\x0a-\x1f\x7f]/;
const TARGET = /^[\x21-\x7e\x80-\xff]+$/;

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

function parseFields(lines: string[], limits: HeadLimits): HeaderField[] {
  if (lines.length - 1 > limits.maxFields) {
    throw new HttpParseError(431, `more than ${limits.maxFields} header fields`);
  }
  const fields: HeaderField[] = new Array(lines.length - 1);
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i];
    const c0 = line.charCodeAt(0);
    if (c0 === 0x20 || c0 === 0x09) throw new HttpParseError(400, "obsolete line folding");
    const colon = line.indexOf(":");
    if (colon <= 0) throw new HttpParseError(400, "malformed header line");
    const name = line.slice(0, colon);
    if (!TOKEN.test(name)) throw new HttpParseError(400, "invalid header name");
    const value = trimOws(line.slice(colon + 1));
    if (BAD_VALUE.test(value)) throw new HttpParseError(400, `invalid value of header ${name}`);
    fields[i - 1] = { name, lower: name.toLowerCase(), value };
  }
  return fields;
}

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

/** Parse a request head (`buf[0, end)` including the blank line). */
export function parseRequestHead(
  buf: Buffer,
  end: number,
  limits: HeadLimits = DEFAULT_HEAD_LIMITS,
): RequestHead {
  const lines = splitLines(buf.toString("latin1", 0, end));
  // Tolerate empty lines before the request line (RFC 9112 §2.2).
  while (lines.length > 0 && lines[0] === "") lines.shift();
  if (lines.length === 0) throw new HttpParseError(400, "empty request");
  const parts = lines[0].split(" ");
  if (parts.length !== 3) throw new HttpParseError(400, "malformed request line");
  const [method, target, version] = parts;
  if (!TOKEN.test(method)) throw new HttpParseError(400, "invalid method");
  if (!TARGET.test(target)) throw new HttpParseError(400, "invalid request target");
  return { method, target, minor: parseVersion(version), headers: parseFields(lines, limits) };
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
  return { minor, status: Number(code), reason, headers: parseFields(lines, limits) };
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
  | { kind: "chunked" }
  | { kind: "close" };

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

/** The single Content-Length (equal repeated values collapse), or undefined; throws when invalid. */
function contentLength(headers: HeaderField[]): number | undefined {
  let len: number | undefined;
  for (const h of headers) {
    if (h.lower !== "content-length") continue;
    for (const part of h.value.split(",")) {
      const v = part.trim();
      if (!/^\d{1,15}$/.test(v)) throw new HttpParseError(400, "invalid Content-Length");
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
 * Body framing of a request (RFC 9112 §6): chunked when Transfer-Encoding ends in chunked
 * (Content-Length then ignored), else Content-Length, else no body. Any other
 * Transfer-Encoding is refused (501), as is an invalid Content-Length (400).
 */
export function requestFraming(head: RequestHead): Framing {
  const chunked = chunkedLast(head.headers);
  if (chunked === true) return { kind: "chunked" };
  if (chunked === false) throw new HttpParseError(501, "unsupported Transfer-Encoding");
  const len = contentLength(head.headers);
  return len ? { kind: "length", length: len } : { kind: "none" };
}

/**
 * Body framing of a response to `method` (RFC 9112 §6.3): none for HEAD, 1xx, 204 and 304;
 * chunked; Content-Length; otherwise until the connection closes.
 */
export function responseFraming(method: string, head: ResponseHead): Framing {
  const s = head.status;
  if (method === "HEAD" || s < 200 || s === 204 || s === 304) return { kind: "none" };
  const chunked = chunkedLast(head.headers);
  if (chunked === true) return { kind: "chunked" };
  if (chunked === false) return { kind: "close" };
  const len = contentLength(head.headers);
  if (len === undefined) return { kind: "close" };
  return len === 0 ? { kind: "none" } : { kind: "length", length: len };
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
