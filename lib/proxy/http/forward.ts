/**
 * The reverse proxy of one per-cluster endpoint ({@link HttpProxy}): serves HTTP/1.x client
 * connections (request heads read within bounds of size and idle time, refused callers answered
 * 401) and hands each request to `exchange.ts`, which forwards it over an upstream connection
 * from the pool or the tunnel dialer.
 *
 * HTTP is handled at the byte level rather than with `node:http`, because a
 * tunnel proxy needs control that `node:http` does not give: keep-alive
 * reuse of arbitrary `Duplex` streams keyed by tunnel session (its Agent
 * only pools sockets it created), bodies passed through verbatim (chunked
 * framing included) with no re-encoding, 1xx and 101 answers forwarded as
 * they come, raw byte relays after an upgrade that reuse the bytes already
 * read, precise cancellation (a client that goes away destroys exactly its
 * upstream stream, which is never pooled) and no hidden timeouts on hours-long
 * watches. Heads are parsed strictly (see `head.ts`); bodies are forwarded
 * chunk by chunk without copies, pausing the source while the destination
 * is full.
 *
 * Per request: strict head parsing; 401 when the client's access is refused
 * (kubernetes endpoint, `client_access.ts`), 403 when a per-user certificate
 * tries to impersonate; hop-by-hop headers dropped, `X-Forwarded-*` set and,
 * on the kubernetes endpoint, the caller's credentials replaced by those of
 * the agent session that carries the request (`rewrite.ts`); 503 `Status`
 * when no agent is connected and 502 when the member API server cannot be
 * reached; a reused connection that turns out dead before any answer byte is
 * retried once on a fresh one for idempotent requests without a body; an audit
 * record when the exchange ends (`audit.ts`).
 * @module
 */

import type { Duplex } from "node:stream";
import { logger } from "../../log.ts";
import type { ClientAccess } from "../client_access.ts";
import { audit, type EndpointKind, newRecord, type RequestRecord } from "./audit.ts";
import { closeAfterWrite } from "./close_after_write.ts";
import type { UpstreamConn } from "./conn.ts";
import type { ForwardContext } from "./context.ts";
import { Deadlines } from "./deadlines.ts";
import { exchange } from "./exchange.ts";
import {
  DEFAULT_HEAD_LIMITS,
  type HeadLimits,
  HttpParseError,
  parseRequestHead,
  type RequestHead,
} from "./head.ts";
import { type PoolOptions, UpstreamPool } from "./pool.ts";
import { statusResponse } from "./status.ts";
import type { UpstreamDialer } from "./upstream.ts";
import { type FlowControl, readHead, Wire } from "./wire.ts";

const log = logger("proxy/http");

/** What the proxy knows about a client connection. */
export interface ClientInfo {
  /** Peer IP for `X-Forwarded-For`. */
  remoteAddress: string;
  /**
   * When set, asked before every request (credentials may be revoked while a connection is
   * open): a refusal is answered 401 and closes the connection.
   */
  access?: () => Promise<ClientAccess>;
  /**
   * What to pause when the client sends faster than its bytes are taken (default: the
   * connection itself): the gate under a TLS socket, whose own pause does not stop reads.
   */
  flow?: FlowControl;
}

/** Options of {@link HttpProxy}. */
export interface HttpProxyOptions {
  cluster: string;
  kind: EndpointKind;
  dialer: UpstreamDialer;
  /** Scheme clients use (`X-Forwarded-Proto`). */
  proto: "http" | "https";
  /** Drop the client's `Authorization` (kubernetes endpoint: the upstream identity is the agent's). */
  stripAuthorization: boolean;
  onRequest?: (rec: RequestRecord) => void;
  pool?: Partial<PoolOptions>;
  /** Close a client connection idle this long between requests (default 120 s). */
  clientIdleMs?: number;
  /** Largest request body accepted (413 beyond it); undefined: no limit. */
  maxRequestBody?: number;
  /** Upstream TLS handshake limit (default 30 s). */
  handshakeMs?: number;
  /**
   * Largest request head from a client (default {@link DEFAULT_REQUEST_HEAD_BYTES}; 431 beyond).
   * Every open client connection may hold about this much before its head is complete.
   */
  maxRequestHead?: number;
  /** Field-count and size limits of heads (response heads use its `maxBytes`). */
  head?: Partial<HeadLimits>;
}

/** Largest request head read from a client whose certificate was refused (it gets a 401). */
const REFUSED_HEAD_BYTES = 4096;

/** Default largest request head (64 KiB: kubectl's are under 2 KiB). */
const DEFAULT_REQUEST_HEAD_BYTES = 64 * 1024;

/** The reverse proxy of one endpoint (see the module doc). */
export class HttpProxy {
  readonly #o: HttpProxyOptions;
  readonly #pool: UpstreamPool;
  /** Open client connections and what is known about each. */
  readonly #clients = new Map<Duplex, ClientInfo>();
  readonly #upstreams = new Set<UpstreamConn>();
  readonly #limits: HeadLimits;
  readonly #requestHeadBytes: number;
  /** Client connections waiting for their next request (no exchange in flight). */
  readonly #idle = new Set<Duplex>();
  /** The client connections' idle timeouts, on one timer. */
  readonly #deadlines = new Deadlines();
  #closed = false;
  #draining = false;
  #emptyWaiters: (() => void)[] = [];
  /** What each exchange needs of this proxy. */
  readonly #ctx: ForwardContext;

  constructor(opts: HttpProxyOptions) {
    this.#o = opts;
    this.#pool = new UpstreamPool(opts.pool);
    this.#limits = { ...DEFAULT_HEAD_LIMITS, ...opts.head };
    this.#requestHeadBytes = opts.maxRequestHead ?? DEFAULT_REQUEST_HEAD_BYTES;
    const onRequest = opts.onRequest;
    this.#ctx = {
      cluster: opts.cluster,
      kind: opts.kind,
      dialer: opts.dialer,
      proto: opts.proto,
      stripAuthorization: opts.stripAuthorization,
      maxRequestBody: opts.maxRequestBody,
      handshakeMs: opts.handshakeMs ?? 30_000,
      limits: this.#limits,
      pool: this.#pool,
      isClosed: () => this.#closed,
      track: (conn) => this.#track(conn),
      audit: (rec, status, start) => audit(rec, status, start, onRequest),
    };
  }

  /** Counts for tests and metrics. */
  get stats(): { clients: number; upstreams: number; idle: number } {
    return { clients: this.#clients.size, upstreams: this.#upstreams.size, idle: this.#pool.size };
  }

  /**
   * Ask every client connection's access again (after credentials were revoked) and close
   * those now refused, in-flight requests and watches included.
   */
  async revalidate(): Promise<void> {
    await Promise.all([...this.#clients].map(async ([sock, client]) => {
      if (client.access && !(await client.access()).ok) sock.destroy();
    }));
  }

  /** Close idle upstream connections of session `key` (e.g. when the session goes away). */
  dropSession(key: string): void {
    this.#pool.dropKey(key);
  }

  /** Close the idle upstream connection of session `key` idle longest; false if there is none. */
  dropIdle(key: string): boolean {
    return this.#pool.dropOldest(key);
  }

  /**
   * Graceful shutdown, first step: refuse new connections, close idle ones now,
   * and close each busy one once its current exchange is done.
   */
  drain(): void {
    this.#draining = true;
    for (const c of this.#idle) c.destroy();
  }

  /** Resolves when no client connection is left (after {@link drain}). */
  whenEmpty(): Promise<void> {
    if (this.#clients.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.#emptyWaiters.push(resolve));
  }

  /** Destroy every client connection and upstream stream; later connections are refused. */
  close(): void {
    this.#closed = true;
    this.#deadlines.close();
    this.#pool.clear();
    for (const c of this.#clients.keys()) c.destroy();
    for (const u of this.#upstreams) u.destroy();
  }

  /** Serve HTTP on a client connection until it closes. Never rejects. */
  async serve(sock: Duplex, client: ClientInfo): Promise<void> {
    if (this.#closed || this.#draining) {
      sock.destroy();
      return;
    }
    this.#clients.set(sock, client);
    sock.once("close", () => {
      this.#clients.delete(sock);
      this.#idle.delete(sock);
      if (this.#clients.size === 0) { for (const w of this.#emptyWaiters.splice(0)) w(); }
    });
    const wire = new Wire(sock, undefined, client.flow);
    try {
      await this.#serveLoop(wire, client);
    } catch (err) {
      log.error("client connection failed", { cluster: this.#o.cluster, error: err as Error });
      sock.destroy();
    }
  }

  async #serveLoop(wire: Wire, client: ClientInfo): Promise<void> {
    const sock = wire.stream;
    const unauthorized = statusResponse(401, "Unauthorized", { close: true });
    while (!sock.destroyed) {
      if (this.#draining) {
        closeAfterWrite(wire);
        return;
      }
      // Who the client is, before its bytes are buffered: a refused caller's head may be only
      // small (it is read at all so that the 401 reaches the client rather than a reset).
      const access = client.access ? await client.access() : undefined;
      const refused = access !== undefined && !access.ok;
      let got;
      this.#idle.add(sock);
      try {
        got = await readHead(wire, {
          maxBytes: refused ? REFUSED_HEAD_BYTES : this.#requestHeadBytes,
          idle: { ms: this.#o.clientIdleMs ?? 120_000, deadlines: this.#deadlines },
        });
      } catch (err) {
        this.#idle.delete(sock);
        if (err instanceof HttpParseError) {
          const res = refused ? unauthorized : statusResponse(err.status, err.message, {
            close: true,
          });
          closeAfterWrite(wire, res);
        } else sock.destroy();
        return;
      }
      this.#idle.delete(sock);
      if (got === null) {
        closeAfterWrite(wire);
        return;
      }
      let req: RequestHead;
      try {
        req = parseRequestHead(got.buf, got.end, this.#limits);
      } catch (err) {
        const e = err as HttpParseError;
        const res = refused ? unauthorized : statusResponse(e.status ?? 400, e.message, {
          close: true,
        });
        closeAfterWrite(wire, res);
        return;
      }
      if (access !== undefined && !access.ok) {
        log.v(2, "client refused", { cluster: this.#o.cluster, reason: access.reason });
        const rec = newRecord(this.#o.cluster, this.#o.kind, req, "");
        audit(rec, 401, performance.now(), this.#o.onRequest);
        closeAfterWrite(wire, unauthorized);
        return;
      }
      if (!await exchange(this.#ctx, wire, req, client.remoteAddress, access)) return;
    }
  }

  /** Count `conn` among the open upstream connections until it closes. */
  #track(conn: UpstreamConn): void {
    this.#upstreams.add(conn);
    conn.stream.once("close", () => this.#upstreams.delete(conn));
    if (this.#closed) conn.destroy();
  }
}
