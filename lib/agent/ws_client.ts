/**
 * A small RFC 6455 WebSocket client over a byte connection we open ourselves,
 * for the one case Deno's native WebSocket does not cover: reaching the proxy
 * through an HTTP proxy with `CONNECT` (Deno sends `ws://` through an HTTP
 * proxy as an absolute-form GET, which most proxies do not upgrade).
 *
 * Only what the tunnel needs: binary messages out (masked, as clients must),
 * binary/continuation in, ping → pong, close.
 * @module
 */

import { Buffer } from "node:buffer";
import { createHash, randomBytes } from "node:crypto";
import { Duplex } from "node:stream";

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const MAX_HEAD = 16 * 1024;
const MAX_FRAME = 64 << 20;

/** Which proxy, if any, applies to `target` according to the environment. */
export function proxyFor(target: URL, env: (name: string) => string | undefined): URL | undefined {
  const secure = target.protocol === "wss:" || target.protocol === "https:";
  const raw = secure
    ? env("HTTPS_PROXY") ?? env("https_proxy")
    : env("HTTP_PROXY") ?? env("http_proxy");
  if (!raw) return undefined;
  const noProxy = (env("NO_PROXY") ?? env("no_proxy") ?? "").split(",").map((s) => s.trim())
    .filter(Boolean);
  const host = target.hostname.replace(/^\[|\]$/g, "").toLowerCase();
  const port = target.port || (secure ? "443" : "80");
  for (const entry of noProxy) {
    if (entry === "*") return undefined;
    const [h, p] = entry.startsWith("[")
      ? [entry.replace(/\]:?.*$/, "]"), entry.split("]:")[1]]
      : entry.split(":");
    if (p && p !== port) continue;
    const name = h.replace(/^\[|\]$/g, "").replace(/^\*?\./, "").toLowerCase();
    if (host === name || host.endsWith(`.${name}`)) return undefined;
  }
  try {
    return new URL(raw.includes("://") ? raw : `http://${raw}`);
  } catch {
    throw new Error(`invalid proxy URL in environment: ${raw}`);
  }
}

/** The `Sec-WebSocket-Accept` a server must answer to `key` (RFC 6455 §4.2.2). */
export function acceptFor(key: string): string {
  return createHash("sha1").update(key + GUID).digest("base64");
}

/** Read from `conn` until the end of an HTTP head; returns the head and any bytes after it. */
async function readHead(
  conn: Deno.Conn,
  what: string,
): Promise<{ head: string; rest: Uint8Array }> {
  let buf = new Uint8Array(0);
  const chunk = new Uint8Array(4096);
  for (;;) {
    const n = await conn.read(chunk);
    if (n === null) throw new Error(`${what}: connection closed before the response head`);
    const next = new Uint8Array(buf.length + n);
    next.set(buf);
    next.set(chunk.subarray(0, n), buf.length);
    buf = next;
    const end = findHeadEnd(buf);
    if (end >= 0) {
      return { head: new TextDecoder().decode(buf.subarray(0, end)), rest: buf.subarray(end + 4) };
    }
    if (buf.length > MAX_HEAD) {
      throw new Error(`${what}: response head larger than ${MAX_HEAD} bytes`);
    }
  }
}

function findHeadEnd(b: Uint8Array): number {
  for (let i = 0; i + 3 < b.length; i++) {
    if (b[i] === 13 && b[i + 1] === 10 && b[i + 2] === 13 && b[i + 3] === 10) return i;
  }
  return -1;
}

function statusOf(head: string): number {
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(head);
  return m ? Number(m[1]) : 0;
}

function header(head: string, name: string): string | undefined {
  const re = new RegExp(`^${name}:\\s*(.*)$`, "im");
  return re.exec(head)?.[1]?.trim();
}

/** Ask the HTTP proxy on `conn` for a tunnel to `host:port` (HTTP CONNECT). */
async function connectTunnel(
  conn: Deno.Conn,
  proxy: URL,
  host: string,
  port: number,
): Promise<void> {
  const authority = `${host.includes(":") ? `[${host}]` : host}:${port}`;
  let req = `CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n`;
  if (proxy.username) {
    const cred = `${decodeURIComponent(proxy.username)}:${decodeURIComponent(proxy.password)}`;
    req += `Proxy-Authorization: Basic ${Buffer.from(cred).toString("base64")}\r\n`;
  }
  await writeAll(conn, new TextEncoder().encode(`${req}\r\n`));
  const reply = await readHead(conn, `proxy ${proxy.host}`);
  if (statusOf(reply.head) !== 200) {
    throw new Error(
      `proxy ${proxy.host} refused CONNECT ${authority}: ${reply.head.split("\r\n")[0]}`,
    );
  }
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await conn.write(data.subarray(off));
}

/** How {@link connectWebSocket} reaches the server. */
export interface ConnectOptions {
  /** HTTP proxy to go through with CONNECT (see {@link proxyFor}). */
  proxy?: URL;
  /** Extra trusted root certificates (PEM) for `wss://` (and an `https://` proxy). */
  caCerts?: string[];
}

/**
 * Open `target` (ws:// or wss://), directly or through an HTTP proxy with
 * CONNECT, then speak WebSocket with subprotocol `protocol`.
 */
export async function connectWebSocket(
  target: URL,
  protocol: string,
  opts: ConnectOptions = {},
): Promise<Duplex> {
  const secure = target.protocol === "wss:";
  const host = target.hostname.replace(/^\[|\]$/g, "");
  const port = Number(target.port || (secure ? 443 : 80));
  const proxy = opts.proxy;
  let conn: Deno.Conn;
  if (proxy) {
    const proxyPort = Number(proxy.port || (proxy.protocol === "https:" ? 443 : 80));
    conn = proxy.protocol === "https:"
      ? await Deno.connectTls({ hostname: proxy.hostname, port: proxyPort, caCerts: opts.caCerts })
      : await Deno.connect({ hostname: proxy.hostname, port: proxyPort });
  } else {
    conn = await Deno.connect({ hostname: host, port });
  }
  try {
    if (proxy) await connectTunnel(conn, proxy, host, port);
    if (secure) {
      conn = await Deno.startTls(conn as Deno.TcpConn, { hostname: host, caCerts: opts.caCerts });
    }
    const key = randomBytes(16).toString("base64");
    const path = `${target.pathname || "/"}${target.search}`;
    await writeAll(
      conn,
      new TextEncoder().encode(
        `GET ${path} HTTP/1.1\r\nHost: ${target.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n` +
          `Sec-WebSocket-Protocol: ${protocol}\r\n\r\n`,
      ),
    );
    const reply = await readHead(conn, `websocket ${target.host}`);
    if (statusOf(reply.head) !== 101) {
      throw new Error(`websocket ${target.host}: ${reply.head.split("\r\n")[0]}`);
    }
    if (header(reply.head, "sec-websocket-accept") !== acceptFor(key)) {
      throw new Error(`websocket ${target.host}: bad Sec-WebSocket-Accept`);
    }
    if (header(reply.head, "sec-websocket-protocol") !== protocol) {
      throw new Error(`websocket ${target.host}: server did not accept subprotocol ${protocol}`);
    }
    return frameStream(conn, reply.rest);
  } catch (err) {
    try {
      conn.close();
    } catch {
      // already closed
    }
    throw err;
  }
}

/** Mask `payload` in place with `mask` (4 bytes). */
export function applyMask(payload: Uint8Array, mask: Uint8Array): void {
  const n = payload.length;
  let i = 0;
  if (payload.byteOffset % 4 === 0 && n >= 8) {
    const m32 = new Uint32Array(mask.buffer.slice(mask.byteOffset, mask.byteOffset + 4))[0];
    const words = new Uint32Array(payload.buffer, payload.byteOffset, n >>> 2);
    for (let w = 0; w < words.length; w++) words[w] ^= m32;
    i = words.length << 2;
  }
  for (; i < n; i++) payload[i] ^= mask[i & 3];
}

/** Build one client frame (FIN set, masked). */
export function encodeFrame(opcode: number, payload: Uint8Array): Uint8Array {
  const len = payload.length;
  const headLen = len < 126 ? 2 : len < 65536 ? 4 : 10;
  // Pad in front so the payload starts 4-byte aligned and masks word by word.
  const pad = (4 - ((headLen + 4) % 4)) % 4;
  const out = new Uint8Array(pad + headLen + 4 + len).subarray(pad);
  out[0] = 0x80 | opcode;
  if (len < 126) out[1] = 0x80 | len;
  else if (len < 65536) {
    out[1] = 0x80 | 126;
    out[2] = len >>> 8;
    out[3] = len & 0xff;
  } else {
    out[1] = 0x80 | 127;
    new DataView(out.buffer, out.byteOffset).setBigUint64(2, BigInt(len));
  }
  const mask = randomBytes(4);
  out.set(mask, headLen);
  const body = out.subarray(headLen + 4);
  body.set(payload);
  applyMask(body, mask);
  return out;
}

/** Incremental parser of server frames (unmasked). */
export class FrameParser {
  #buf: Uint8Array = new Uint8Array(0);

  /** Feed bytes; returns complete frames. */
  push(data: Uint8Array): { fin: boolean; opcode: number; payload: Uint8Array }[] {
    if (this.#buf.length === 0) this.#buf = data;
    else {
      const b = new Uint8Array(this.#buf.length + data.length);
      b.set(this.#buf);
      b.set(data, this.#buf.length);
      this.#buf = b;
    }
    const frames = [];
    for (;;) {
      const b = this.#buf;
      if (b.length < 2) break;
      const masked = (b[1] & 0x80) !== 0;
      let len = b[1] & 0x7f;
      let off = 2;
      if (len === 126) {
        if (b.length < 4) break;
        len = (b[2] << 8) | b[3];
        off = 4;
      } else if (len === 127) {
        if (b.length < 10) break;
        const big = new DataView(b.buffer, b.byteOffset + 2, 8).getBigUint64(0);
        if (big > BigInt(MAX_FRAME)) throw new Error("websocket frame too large");
        len = Number(big);
        off = 10;
      }
      if (len > MAX_FRAME) throw new Error("websocket frame too large");
      const maskLen = masked ? 4 : 0;
      if (b.length < off + maskLen + len) break;
      const payload = b.slice(off + maskLen, off + maskLen + len);
      if (masked) applyMask(payload, b.subarray(off, off + 4));
      frames.push({ fin: (b[0] & 0x80) !== 0, opcode: b[0] & 0x0f, payload });
      this.#buf = b.subarray(off + maskLen + len);
    }
    return frames;
  }
}

function frameStream(conn: Deno.Conn, initial: Uint8Array): Duplex {
  const parser = new FrameParser();
  let closed = false;
  let writing: Promise<void> = Promise.resolve();
  const send = (frame: Uint8Array) => {
    writing = writing.then(() => writeAll(conn, frame));
    return writing;
  };
  const shutdown = () => {
    if (closed) return;
    closed = true;
    try {
      conn.close();
    } catch {
      // already closed
    }
  };
  const stream = new Duplex({
    read() {},
    write(chunk: Buffer, _enc, cb) {
      send(encodeFrame(0x2, chunk)).then(() => cb(), (err) => cb(err));
    },
    final(cb) {
      send(encodeFrame(0x8, new Uint8Array([0x03, 0xe8]))).then(() => cb(), () => cb());
    },
    destroy(err, cb) {
      shutdown();
      cb(err);
    },
  });
  const handle = (data: Uint8Array) => {
    for (const f of parser.push(data)) {
      switch (f.opcode) {
        case 0x0:
        case 0x2:
          stream.push(Buffer.from(f.payload.buffer, f.payload.byteOffset, f.payload.length));
          break;
        case 0x8:
          stream.push(null);
          shutdown();
          return;
        case 0x9:
          send(encodeFrame(0xa, f.payload)).catch(() => {});
          break;
        case 0xa:
          break;
        default:
          throw new Error(`unexpected websocket opcode ${f.opcode}`);
      }
    }
  };
  (async () => {
    try {
      if (initial.length) handle(initial);
      const buf = new Uint8Array(256 * 1024);
      while (!closed) {
        const n = await conn.read(buf);
        if (n === null) break;
        handle(buf.slice(0, n));
      }
      stream.push(null);
    } catch (err) {
      stream.destroy(err as Error);
    } finally {
      shutdown();
    }
  })();
  return stream;
}
