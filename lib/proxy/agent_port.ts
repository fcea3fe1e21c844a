/**
 * The agent-facing HTTP listener (`--host:--port`): WebSocket upgrades to the
 * tunnel, `GET /health` and `GET /version`, 404 for anything else (SPEC §1).
 *
 * HTTP/1.1 of our own over `Deno.listen`, because this port faces whatever can
 * reach it: a request head must arrive whole within `headTimeoutMs` (default
 * 10 s) and `maxHeadBytes` (16 KiB), so a client that opens connections and then
 * sends nothing, or a byte now and then, holds none of them for long
 * (`Deno.serve` has no such timeout: a partial head stays open indefinitely).
 * Plain requests are answered on a keep-alive connection, the same timeout
 * bounding the wait for the next head; a tunnel upgrade that the
 * {@link TunnelServer} admits is answered 101 and the connection handed over,
 * with any bytes read past the head, as a WebSocket byte stream.
 * @module
 */

import { Buffer } from "node:buffer";
import { logger } from "../log.ts";
import { VERSION } from "../version.ts";
import { websocketServerStream } from "../tunnel/ws_stream.ts";
import { switchingProtocols, upgradeProblem } from "../tunnel/ws_upgrade.ts";
import { WS_PROTOCOL } from "../tunnel/protocol.ts";
import { Deadlines } from "./http/deadlines.ts";
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
import { TunnelServer } from "./tunnel_server.ts";

const log = logger("proxy/http");
const enc = new TextEncoder();

/** A running agent port. */
export interface AgentPort {
  /** The bound address. */
  addr: Deno.NetAddr;
  /** Stop listening and close open connections (the tunnel's included). */
  close(): Promise<void>;
}

/** Limits of {@link startAgentPort}. */
export interface AgentPortOptions {
  /** Time for a whole request head to arrive, and for the next one on a keep-alive connection. */
  headTimeoutMs?: number;
  /** Largest request head accepted (431 beyond). */
  maxHeadBytes?: number;
}

/** The parts of a {@link TunnelServer} the agent port uses. */
export type TunnelAcceptor = Pick<TunnelServer, "admit" | "accept" | "close">;

/** Defaults of {@link AgentPortOptions}. */
export const AGENT_PORT_DEFAULTS: Required<AgentPortOptions> = {
  headTimeoutMs: 10_000,
  maxHeadBytes: 16 * 1024,
};

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

/** A complete plain-text response; `head` leaves the body out (a HEAD request). */
function textResponse(
  status: number,
  body: string,
  opts: { close: boolean; head?: boolean; headers?: Record<string, string> },
): Uint8Array {
  const bytes = enc.encode(body);
  let out = `HTTP/1.1 ${status} ${PHRASES[status] ?? "Error"}\r\n` +
    "Content-Type: text/plain; charset=utf-8\r\n" +
    `Content-Length: ${bytes.length}\r\n`;
  for (const [k, v] of Object.entries(opts.headers ?? {})) out += `${k}: ${v}\r\n`;
  if (opts.close) out += "Connection: close\r\n";
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
    if (h.lower === lower) {
      out = out === undefined ? h.value : `${out},${h.value}`;
    }
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

/** The head did not arrive in time (the connection is closed already). */
class HeadTimeoutError extends Error {}

/** Shared state of one listener's connections. */
interface PortContext {
  tunnel: TunnelAcceptor;
  deadlines: Deadlines;
  headTimeoutMs: number;
  maxHeadBytes: number;
}

/**
 * Read one request head: `pending` holds bytes already read past the previous one. Resolves
 * the bytes held (head first) and the head's length, or null when the client closed before
 * sending a byte. Rejects with {@link HttpParseError} (431) past `maxHeadBytes` and with
 * {@link HeadTimeoutError} when the head is not complete within `headTimeoutMs`.
 */
async function readHead(
  conn: Deno.Conn,
  pending: Uint8Array,
  ctx: PortContext,
): Promise<{ buf: Uint8Array; end: number } | null> {
  const max = ctx.maxHeadBytes;
  const tooLarge = () => new HttpParseError(431, `request head larger than ${max} bytes`);
  if (pending.length > 0) {
    const end = findHeadEnd(pending, pending.length);
    if (end >= 0) {
      if (end > max) throw tooLarge();
      return { buf: pending, end };
    }
  }
  let buf = new Uint8Array(Math.max(4096, pending.length * 2));
  buf.set(pending);
  let len = pending.length;
  let timedOut = false;
  const deadline = ctx.deadlines.add(ctx.headTimeoutMs, () => {
    timedOut = true;
    closeQuietly(conn); // wakes the read below
  });
  try {
    for (;;) {
      if (len > max) throw tooLarge();
      if (len === buf.length) {
        const grown = new Uint8Array(Math.min(buf.length * 2, max + 1));
        grown.set(buf);
        buf = grown;
      }
      const n = await conn.read(buf.subarray(len));
      if (n === null) {
        if (len === 0) return null;
        throw new Error("connection closed inside a request head");
      }
      const from = len;
      len += n;
      const end = findHeadEnd(buf, len, from);
      if (end >= 0) {
        if (end > max) throw tooLarge();
        return { buf: buf.subarray(0, len), end };
      }
    }
  } catch (err) {
    if (timedOut) {
      throw new HeadTimeoutError(`no complete request head within ${ctx.headTimeoutMs} ms`);
    }
    throw err;
  } finally {
    ctx.deadlines.cancel(deadline);
  }
}

/**
 * Serve one agent-port connection until it closes or is handed to the tunnel. Resolves true
 * when the tunnel took it (the caller no longer owns it).
 */
async function serveConn(conn: Deno.TcpConn, ctx: PortContext): Promise<boolean> {
  const remote = `${conn.remoteAddr.hostname}:${conn.remoteAddr.port}`;
  try {
    conn.setNoDelay(true);
  } catch {
    // closed already: the read below says so
  }
  let pending: Uint8Array = new Uint8Array(0);
  try {
    for (;;) {
      const got = await readHead(conn, pending, ctx);
      if (got === null) return false;
      const { buf, end } = got;
      pending = buf.subarray(end);
      let head: RequestHead;
      try {
        head = parseRequestHead(Buffer.from(buf.buffer, buf.byteOffset, end), end, {
          maxBytes: ctx.maxHeadBytes,
          maxFields: 100,
        });
      } catch (err) {
        if (!(err instanceof HttpParseError)) throw err;
        await writeAll(conn, textResponse(err.status, `${err.message}\n`, { close: true }));
        return false;
      }
      const h = head.headers;
      if (TunnelServer.wantsTunnel(joined(h, "upgrade"), joined(h, "sec-websocket-protocol"))) {
        return await upgrade(conn, head, pending, remote, ctx);
      }
      let keepAlive = head.minor >= 1 && !headerTokens(h, "connection").has("close");
      try {
        // A body is never read here: answer, then close rather than parse past it.
        if (requestFraming(head).kind !== "none") keepAlive = false;
      } catch {
        keepAlive = false;
      }
      const { status, body } = plainRoute(head.method, head.target);
      await writeAll(
        conn,
        textResponse(status, body, { close: !keepAlive, head: head.method === "HEAD" }),
      );
      if (!keepAlive) return false;
    }
  } catch (err) {
    if (err instanceof HttpParseError) {
      await writeAll(conn, textResponse(err.status, `${err.message}\n`, { close: true }))
        .catch(() => {});
    } else if (err instanceof HeadTimeoutError) {
      log.v(2, "agent port: closing a connection that sent no complete request head", {
        remote,
        timeout: `${ctx.headTimeoutMs}ms`,
      });
    } else {
      log.v(2, "agent port connection failed", { remote, err: (err as Error).message });
    }
    return false;
  }
}

/** Answer a tunnel request: refuse it, or switch protocols and hand the connection over. */
async function upgrade(
  conn: Deno.TcpConn,
  head: RequestHead,
  rest: Uint8Array,
  remote: string,
  ctx: PortContext,
): Promise<boolean> {
  const h = head.headers;
  const refusal = ctx.tunnel.admit(joined(h, "sec-websocket-protocol") ?? "", remote);
  const problem = refusal ?? upgradeProblem({
    method: head.method,
    minor: head.minor,
    upgrade: headerTokens(h, "upgrade"),
    connection: headerTokens(h, "connection"),
    key: headerValue(h, "sec-websocket-key"),
    version: headerValue(h, "sec-websocket-version"),
  });
  if (problem) {
    if (!refusal) log.v(2, "agent port: bad websocket upgrade", { remote, err: problem.message });
    await writeAll(
      conn,
      textResponse(problem.status, `${problem.message}\n`, {
        close: true,
        headers: problem.headers,
      }),
    );
    return false;
  }
  await writeAll(
    conn,
    enc.encode(switchingProtocols(headerValue(h, "sec-websocket-key")!, WS_PROTOCOL)),
  );
  // Bytes after the head are the agent's first frames: they belong to the stream.
  ctx.tunnel.accept(websocketServerStream(conn, rest), remote);
  return true;
}

/** Listen on `hostname:port` for agents. */
export function startAgentPort(
  hostname: string,
  port: number,
  tunnel: TunnelAcceptor,
  opts: AgentPortOptions = {},
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
    deadlines: new Deadlines(),
    headTimeoutMs: opts.headTimeoutMs ?? AGENT_PORT_DEFAULTS.headTimeoutMs,
    maxHeadBytes: opts.maxHeadBytes ?? AGENT_PORT_DEFAULTS.maxHeadBytes,
  };
  /** Connections still speaking HTTP (the tunnel tracks those it took). */
  const open = new Set<Deno.TcpConn>();
  let closed = false;
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
      open.add(conn);
      serveConn(conn, ctx).then((handed) => {
        open.delete(conn);
        if (!handed) closeQuietly(conn);
      });
    }
  })();
  log.info(`Listening on ${addr.hostname}:${addr.port}...`);
  return Promise.resolve({
    addr,
    close: async () => {
      closed = true;
      tunnel.close();
      try {
        listener.close();
      } catch {
        // closed already
      }
      for (const conn of open) closeQuietly(conn);
      open.clear();
      ctx.deadlines.close();
      await accepting;
    },
  });
}
