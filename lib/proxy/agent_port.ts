/**
 * The agent-facing HTTP listener (`--host:--port`): WebSocket upgrades to the
 * tunnel, `GET /health` and `GET /version`, 404 for anything else (docs/protocol.md §1).
 *
 * HTTP/1.1 and WebSocket framing of our own over `Deno.listen`, because this
 * port faces whatever can reach it and Deno's server bounds neither the time
 * a request head may take nor the size of a WebSocket message it reads whole.
 * Here every connection counts against `maxConnections` from accept to close,
 * and until its agent is accepted holds one of the tunnel's admission slots
 * (shared fairly between source addresses), whose deadline covers the
 * request head, SSH and `config`. A head is at most `maxHeadBytes` (431
 * beyond, 400 when malformed). A tunnel upgrade is answered 101 and the
 * connection handed over as a WebSocket byte stream that, until the agent is
 * accepted, takes no message over `preauthMaxMessage`. Plain requests are
 * answered once, then the connection closes.
 * @module
 */

import { Buffer } from "node:buffer";
import { logger } from "../log.ts";
import { VERSION } from "../version.ts";
import { websocketServerStream } from "../tunnel/ws_stream.ts";
import { switchingProtocols, upgradeProblem } from "../tunnel/ws_upgrade.ts";
import { WS_PROTOCOL } from "../tunnel/protocol.ts";
import {
  findHeadEnd,
  type HeaderField,
  headerTokens,
  headerValue,
  HttpParseError,
  parseRequestHead,
  requestFraming,
  type RequestHead,
} from "./http/head.ts";
import { type PendingConnection, TunnelServer } from "./tunnel_server.ts";

const log = logger("proxy/http");
const enc = new TextEncoder();

/** A running agent port. */
export interface AgentPort {
  /** The bound address. */
  addr: Deno.NetAddr;
  /** Connections open on the port (agents' included). */
  readonly connections: number;
  /** Stop listening and close open connections (the tunnel's included). */
  close(): Promise<void>;
}

/** Limits of {@link startAgentPort}. */
export interface AgentPortOptions {
  /** Most connections open at once, established agents' included; more are refused (503). */
  maxConnections?: number;
  /** Largest request head accepted (431 beyond). */
  maxHeadBytes?: number;
  /**
   * Largest WebSocket message (all its frames) before the agent is accepted; a longer one
   * closes the connection. SSH needs far less before authentication (ssh2 takes no packet
   * over 35,000 bytes then).
   */
  preauthMaxMessage?: number;
}

/** Defaults of {@link AgentPortOptions}. */
const AGENT_PORT_DEFAULTS: Required<AgentPortOptions> = {
  maxConnections: 8192,
  maxHeadBytes: 16 * 1024,
  preauthMaxMessage: 256 * 1024,
};

/** The parts of a {@link TunnelServer} the agent port uses. */
export type TunnelAcceptor = Pick<TunnelServer, "admit" | "accept" | "checkProtocol" | "close">;

/** After answering and closing our side, how long and how much the client may still send. */
const LINGER_MS = 2_000;
const LINGER_BYTES = 64 * 1024;
/**
 * Refused connections (no slot) that may linger at once; more are closed right after the 503,
 * so that a flood of refused connections cannot fill the connection cap.
 */
const MAX_REFUSED_LINGERING = 64;

const PHRASES: Record<number, string> = {
  200: "OK",
  400: "Bad Request",
  404: "Not Found",
  405: "Method Not Allowed",
  426: "Upgrade Required",
  431: "Request Header Fields Too Large",
  501: "Not Implemented",
  503: "Service Unavailable",
  505: "HTTP Version Not Supported",
};

/** A complete plain-text response that closes the connection; `head`: no body (HEAD). */
function textResponse(
  status: number,
  body: string,
  opts: { head?: boolean; headers?: Record<string, string> } = {},
): Uint8Array {
  const bytes = enc.encode(body);
  let out = `HTTP/1.1 ${status} ${PHRASES[status] ?? "Error"}\r\n` +
    "Content-Type: text/plain; charset=utf-8\r\n" +
    `Content-Length: ${bytes.length}\r\nConnection: close\r\n`;
  for (const [k, v] of Object.entries(opts.headers ?? {})) out += `${k}: ${v}\r\n`;
  const head = enc.encode(out + "\r\n");
  if (opts.head || bytes.length === 0) return head;
  const all = new Uint8Array(head.length + bytes.length);
  all.set(head);
  all.set(bytes, head.length);
  return all;
}

/** Every value of header `lower`, joined with commas (repeated fields are one list). */
function joined(headers: HeaderField[], lower: string): string | undefined {
  let out: string | undefined;
  for (const h of headers) {
    if (h.lower === lower) out = out === undefined ? h.value : `${out},${h.value}`;
  }
  return out;
}

/** Path of a request target (origin-form or absolute-form). */
function pathOf(target: string): string {
  if (target.startsWith("/")) {
    const q = target.indexOf("?");
    return q < 0 ? target : target.slice(0, q);
  }
  try {
    return new URL(target).pathname;
  } catch {
    return "";
  }
}

/** The answer to a plain (non-tunnel) request. */
export function plainRoute(method: string, target: string): { status: number; body: string } {
  if (method === "GET" || method === "HEAD") {
    const path = pathOf(target);
    if (path === "/health") return { status: 200, body: "OK\n" };
    if (path === "/version") return { status: 200, body: `${VERSION}\n` };
  }
  return { status: 404, body: "404 page not found\n" };
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await conn.write(data.subarray(off));
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // already closed
  }
}

/**
 * Send `response` and close. With `linger` (the client may have sent more than was read),
 * first close our side and read (and drop) what the client still sends, within
 * {@link LINGER_MS} and {@link LINGER_BYTES}: closing with its bytes unread would reset the
 * connection, and the client might lose the answer.
 */
async function respondAndClose(
  conn: Deno.Conn,
  response: Uint8Array,
  linger = true,
): Promise<void> {
  const timer = setTimeout(() => closeQuietly(conn), LINGER_MS);
  try {
    await writeAll(conn, response);
    if (!linger) return;
    await conn.closeWrite();
    const buf = new Uint8Array(16 * 1024);
    for (let total = 0; total < LINGER_BYTES;) {
      const n = await conn.read(buf);
      if (n === null) break;
      total += n;
    }
  } catch {
    // reset by the client, or closed by the timer: either way, done
  } finally {
    clearTimeout(timer);
    closeQuietly(conn);
  }
}

/**
 * Read one request head within `max` bytes. Resolves the bytes read (head first) and the
 * head's length, or null when the connection closed (by the client, or by the deadline that
 * closes it) before a complete head. Rejects with {@link HttpParseError} (431) past `max`.
 */
async function readHead(
  conn: Deno.Conn,
  max: number,
): Promise<{ buf: Uint8Array; end: number } | null> {
  let buf = new Uint8Array(2048);
  let len = 0;
  for (;;) {
    if (len > max) throw new HttpParseError(431, `request head larger than ${max} bytes`);
    if (len === buf.length) {
      const grown = new Uint8Array(Math.min(buf.length * 2, max + 1));
      grown.set(buf);
      buf = grown;
    }
    let n: number | null;
    try {
      n = await conn.read(buf.subarray(len));
    } catch {
      return null; // reset, or closed under us
    }
    if (n === null) return null;
    const from = len;
    len += n;
    const end = findHeadEnd(buf, len, from);
    if (end >= 0) {
      if (end > max) throw new HttpParseError(431, `request head larger than ${max} bytes`);
      return { buf: buf.subarray(0, len), end };
    }
  }
}

/** Whether a request says it has a body (which is never read here). */
function mayHaveBody(head: RequestHead): boolean {
  try {
    return requestFraming(head).kind !== "none";
  } catch {
    return true;
  }
}

/** Shared state of one listener's connections. */
interface PortContext {
  tunnel: TunnelAcceptor;
  opts: Required<AgentPortOptions>;
  /** Every open connection (those handed to the tunnel until their stream closes). */
  open: Set<Deno.TcpConn>;
  /** Refused connections lingering now. */
  refusedLingering: number;
}

/**
 * Serve one agent-port connection until it is answered or handed to the tunnel. Resolves
 * true when the tunnel took it (the connection then closes with its stream).
 */
async function serveConn(conn: Deno.TcpConn, ctx: PortContext): Promise<boolean> {
  const { hostname, port } = conn.remoteAddr;
  const admitted = ctx.tunnel.admit(hostname, port, () => closeQuietly(conn));
  if (typeof admitted === "string") {
    const linger = ctx.refusedLingering < MAX_REFUSED_LINGERING;
    if (linger) ctx.refusedLingering++;
    try {
      await respondAndClose(
        conn,
        textResponse(503, `${admitted}\n`, { headers: { "Retry-After": "5" } }),
        linger,
      );
    } finally {
      if (linger) ctx.refusedLingering--;
    }
    return false;
  }
  const pending = admitted;
  let handed = false;
  try {
    try {
      conn.setNoDelay(true);
    } catch {
      // closed already: the read below says so
    }
    let got;
    let head: RequestHead;
    try {
      got = await readHead(conn, ctx.opts.maxHeadBytes);
      if (got === null) return false;
      head = parseRequestHead(Buffer.from(got.buf.buffer, got.buf.byteOffset, got.end), got.end, {
        maxBytes: ctx.opts.maxHeadBytes,
        maxFields: 100,
      });
    } catch (err) {
      if (!(err instanceof HttpParseError)) throw err;
      log.v(2, "agent port: bad request head", { remote: pending.remote, err: err.message });
      await respondAndClose(conn, textResponse(err.status, `${err.message}\n`));
      return false;
    }
    const h = head.headers;
    if (TunnelServer.wantsTunnel(joined(h, "upgrade"), joined(h, "sec-websocket-protocol"))) {
      handed = await upgrade(conn, head, got.buf.subarray(got.end), pending, ctx);
      return handed;
    }
    const { status, body } = plainRoute(head.method, head.target);
    await respondAndClose(
      conn,
      textResponse(status, body, { head: head.method === "HEAD" }),
      got.buf.length > got.end || mayHaveBody(head),
    );
    return false;
  } catch (err) {
    log.v(2, "agent port connection failed", { remote: pending.remote, err: String(err) });
    return false;
  } finally {
    if (!handed) {
      pending.done();
      closeQuietly(conn);
    }
  }
}

/** Answer a tunnel request: refuse it, or switch protocols and hand the connection over. */
async function upgrade(
  conn: Deno.TcpConn,
  head: RequestHead,
  rest: Uint8Array,
  pending: PendingConnection,
  ctx: PortContext,
): Promise<boolean> {
  const h = head.headers;
  const problem =
    !ctx.tunnel.checkProtocol(joined(h, "sec-websocket-protocol") ?? "", pending.remote)
      ? { status: 400, message: `unsupported protocol version, want ${WS_PROTOCOL}`, headers: {} }
      : upgradeProblem({
        method: head.method,
        minor: head.minor,
        upgrade: headerTokens(h, "upgrade"),
        connection: headerTokens(h, "connection"),
        key: headerValue(h, "sec-websocket-key"),
        version: headerValue(h, "sec-websocket-version"),
      });
  if (problem) {
    log.v(2, "agent port: refused websocket upgrade", {
      remote: pending.remote,
      err: problem.message,
    });
    await respondAndClose(
      conn,
      textResponse(problem.status, `${problem.message}\n`, { headers: problem.headers }),
    );
    return false;
  }
  await writeAll(
    conn,
    enc.encode(switchingProtocols(headerValue(h, "sec-websocket-key")!, WS_PROTOCOL)),
  );
  // Bytes after the head are the agent's first frames: they belong to the stream.
  const stream = websocketServerStream(conn, rest.slice(), {
    maxReceive: ctx.opts.preauthMaxMessage,
  });
  pending.onAuthenticated = () => stream.setMaxReceive(64 << 20);
  stream.once("close", () => ctx.open.delete(conn));
  ctx.tunnel.accept(stream, pending);
  return true;
}

/** Listen on `hostname:port` for agents. */
export function startAgentPort(
  hostname: string,
  port: number,
  tunnel: TunnelAcceptor,
  options: AgentPortOptions = {},
): Promise<AgentPort> {
  let listener: Deno.TcpListener;
  try {
    listener = Deno.listen({ hostname, port, transport: "tcp" });
  } catch (err) {
    return Promise.reject(new Error(`listen ${hostname}:${port}: ${(err as Error).message}`));
  }
  const addr = listener.addr;
  const ctx: PortContext = {
    tunnel,
    opts: { ...AGENT_PORT_DEFAULTS, ...definedOnly(options) },
    open: new Set(),
    refusedLingering: 0,
  };
  let closed = false;
  let refusedLogged = 0;
  const accepting = (async () => {
    while (!closed) {
      let conn: Deno.TcpConn;
      try {
        conn = await listener.accept();
      } catch (err) {
        if (closed || err instanceof Deno.errors.BadResource) return;
        // Out of file descriptors and the like: say so, and try again shortly.
        log.warn("agent port: accept failed", { err: (err as Error).message });
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      if (closed) {
        closeQuietly(conn);
        return;
      }
      if (ctx.open.size >= ctx.opts.maxConnections) {
        if (Date.now() - refusedLogged > 10_000) {
          refusedLogged = Date.now();
          log.warn("agent port: refusing connections, too many open", {
            max: ctx.opts.maxConnections,
          });
        }
        const refusal = textResponse(503, "too many connections\n", {
          headers: { "Retry-After": "5" },
        });
        conn.write(refusal).catch(() => {}).finally(() => closeQuietly(conn));
        continue;
      }
      ctx.open.add(conn);
      serveConn(conn, ctx).then((handed) => {
        if (!handed) ctx.open.delete(conn);
      });
    }
  })();
  log.info(`Listening on ${addr.hostname}:${addr.port}...`);
  return Promise.resolve({
    addr,
    get connections() {
      return ctx.open.size;
    },
    close: async () => {
      closed = true;
      tunnel.close();
      try {
        listener.close();
      } catch {
        // closed already
      }
      for (const conn of ctx.open) closeQuietly(conn);
      ctx.open.clear();
      await accepting;
    },
  });
}

/** `o` without its undefined properties (so they do not override defaults). */
function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
