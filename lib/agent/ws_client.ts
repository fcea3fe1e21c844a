/**
 * The agent's WebSocket client: opening handshake (RFC 6455) over a TCP
 * connection we dial ourselves — directly or through an HTTP proxy with
 * `CONNECT`, with TLS for `wss://` — then the framing of
 * `websocketClientStream`. Deno's native WebSocket is not used: it sends
 * `ws://` through HTTP proxies as an absolute-form GET (most proxies do not
 * upgrade that), cannot take extra CAs, and leaves Nagle on, which stalls
 * every small request by a delayed ACK.
 * @module
 */

import { Buffer } from "node:buffer";
import { createHash, randomBytes } from "node:crypto";
import type { Duplex } from "node:stream";
import { websocketClientStream } from "../tunnel/ws_stream.ts";

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const MAX_HEAD = 16 * 1024;

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
    // Nagle would hold back the small SSH packets (a 40 ms delayed-ACK stall per request).
    (conn as Deno.TcpConn).setNoDelay?.(true);
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
    // RFC 6455 §4.1: a server that names no subprotocol selected none, and the client may go
    // on (the original Go proxy answers so); only one we did not offer is a failure.
    const selected = header(reply.head, "sec-websocket-protocol");
    if (selected && selected !== protocol) {
      throw new Error(
        `websocket ${target.host}: server selected subprotocol ${selected}, not ${protocol}`,
      );
    }
    return websocketClientStream(conn, reply.rest);
  } catch (err) {
    try {
      conn.close();
    } catch {
      // already closed
    }
    throw err;
  }
}
