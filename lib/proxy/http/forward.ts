/**
 * The reverse proxy of one per-cluster endpoint: serves HTTP/1.x client
 * connections and forwards each request over an upstream connection from the
 * pool or the tunnel dialer.
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
 * reached (the bodies say what failed; addresses, sessions and causes go to
 * the log); a reused connection that turns out dead before any answer byte is
 * retried once on a fresh one for idempotent requests without a body; an audit
 * record when the exchange ends.
 * @module
 */

import { Buffer } from "node:buffer";
import type { Duplex } from "node:stream";
import { logger } from "../../log.ts";
import { ChunkedError } from "./chunked.ts";
import { openUpstream, type UpstreamConn, UpstreamConnectError } from "./conn.ts";
import { Deadlines } from "./deadlines.ts";
import {
  DEFAULT_HEAD_LIMITS,
  encodeHead,
  type Framing,
  headerTokens,
  headerValue,
  type HeadLimits,
  HttpParseError,
  parseRequestHead,
  parseResponseHead,
  requestFraming,
  type RequestHead,
  requestHost,
  requestKeepAlive,
  responseFraming,
  type ResponseHead,
} from "./head.ts";
import { type PoolOptions, UpstreamPool } from "./pool.ts";
import {
  type ClientBodyMode,
  clientResponseHead,
  isImpersonationHeader,
  upstreamRequestHead,
} from "./rewrite.ts";
import { statusResponse } from "./status.ts";
import { NoAgentError, type UpstreamDialer } from "./upstream.ts";
import type { ClientAccess } from "../client_access.ts";
import {
  BodyTooLargeError,
  type FlowControl,
  pumpBody,
  type PumpCounter,
  type PumpMode,
  readHead,
  Wire,
  WireClosedError,
} from "./wire.ts";

const log = logger("proxy/http");

/** Which member API server an endpoint fronts. */
export type EndpointKind = "kubernetes" | "kubesphere";

/** One finished exchange, for auditing. Never carries headers, queries or credentials. */
export interface RequestRecord {
  cluster: string;
  endpoint: EndpointKind;
  /** The user the request runs for (client certificate CN) on the kubernetes endpoint; "" otherwise. */
  commonName: string;
  method: string;
  /** Request path without the query string. */
  path: string;
  /** Status sent to the client (0 when the exchange broke before a response head). */
  status: number;
  /** Request body bytes (raw client→upstream bytes after an upgrade). */
  bytesIn: number;
  /** Response body bytes (raw upstream→client bytes after an upgrade). */
  bytesOut: number;
  durationMs: number;
  /** The exchange was upgraded (101) and relayed raw bytes. */
  upgrade: boolean;
}

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
export const DEFAULT_REQUEST_HEAD_BYTES = 64 * 1024;

const IDEMPOTENT = new Set(["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"]);
const NONE: Framing = { kind: "none" };

/** How long a closing connection waits for the client to close before it is destroyed. */
const CLOSE_LINGER_MS = 2_000;
/** What a closing connection reads and drops at most before it is destroyed. */
const LINGER_BYTES = 64 * 1024;

/**
 * Close a connection after its last response: our side ends; what the client still sends is
 * read and dropped, never held, so that its close is seen at once; beyond {@link LINGER_BYTES}
 * (a huge head after its 431, a body after its 401) or after {@link CLOSE_LINGER_MS} the
 * connection is destroyed (reading on and dropping would cost memory for every chunk: a flood of
 * 1 MiB heads grew the proxy by tens of MiB).
 */
function closeAfterWrite(wire: Wire, last?: Buffer): void {
  const sock = wire.stream;
  if (sock.destroyed) return;
  sock.end(last);
  let dropped = 0;
  wire.setSink({
    onData(chunk) {
      dropped += chunk.length;
      if (dropped > LINGER_BYTES) sock.destroy();
    },
    onEnd() {},
    onClose() {},
  });
  wire.resume();
  const timer = setTimeout(() => sock.destroy(), CLOSE_LINGER_MS);
  sock.once("close", () => clearTimeout(timer));
}

/** The `Upgrade` value when `req` asks for a protocol upgrade, else null. */
function upgradeOf(req: RequestHead): string | null {
  const up = headerValue(req.headers, "upgrade");
  if (up === undefined || up === "") return null;
  return headerTokens(req.headers, "connection").has("upgrade") ? up : null;
}

const LONG_RUNNING = /[?&](watch|follow)=(true|1)(&|$)|^\/api(s\/[^/]+)?\/v[^/]+\/watch\//;

/** A watch (`?watch=true`, `/watch/` paths) or a followed log (`?follow=true`). */
export function isLongRunning(target: string): boolean {
  return LONG_RUNNING.test(target);
}

function pathOf(target: string): string {
  const q = target.indexOf("?");
  return q < 0 ? target : target.slice(0, q);
}

/** State shared by the steps of one exchange. */
interface Exchange {
  req: RequestHead;
  framing: Framing;
  upgrade: string | null;
  client: ClientInfo;
  /** Who the request runs as (kubernetes endpoint with client certificates). */
  access: ClientAccess | undefined;
  clientKeep: boolean;
  rec: RequestRecord;
  reqCount: PumpCounter;
  resCount: PumpCounter;
  reqComplete: boolean;
  clientGone: boolean;
  upstream: UpstreamConn | null;
  abort: AbortController;
  /** The client went away: cancel the exchange. */
  gone: () => void;
}

type Outcome = { retry: true } | { retry: false; keep: boolean };

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

  constructor(opts: HttpProxyOptions) {
    this.#o = opts;
    this.#pool = new UpstreamPool(opts.pool);
    this.#limits = { ...DEFAULT_HEAD_LIMITS, ...opts.head };
    this.#requestHeadBytes = opts.maxRequestHead ?? DEFAULT_REQUEST_HEAD_BYTES;
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
        this.#audit(this.#record(req, ""), 401, performance.now());
        closeAfterWrite(wire, unauthorized);
        return;
      }
      if (!await this.#exchange(wire, req, client, access)) return;
    }
  }

  #record(req: RequestHead, commonName: string): RequestRecord {
    return {
      cluster: this.#o.cluster,
      endpoint: this.#o.kind,
      commonName,
      method: req.method,
      path: pathOf(req.target),
      status: 0,
      bytesIn: 0,
      bytesOut: 0,
      durationMs: 0,
      upgrade: false,
    };
  }

  #audit(rec: RequestRecord, status: number, start: number): void {
    if (status) rec.status = status;
    rec.durationMs = performance.now() - start;
    // The audit line: one per proxied request, never headers, queries or credentials.
    log.info("request", {
      cluster: rec.cluster,
      endpoint: rec.endpoint,
      user: rec.commonName,
      verb: rec.method,
      path: rec.path,
      status: rec.status,
      bytesIn: rec.bytesIn,
      bytesOut: rec.bytesOut,
      ms: Math.round(rec.durationMs),
      upgrade: rec.upgrade,
    });
    if (!this.#o.onRequest) return;
    try {
      this.#o.onRequest(rec);
    } catch (err) {
      log.error("audit hook failed", { cluster: this.#o.cluster, error: err as Error });
    }
  }

  /** One request/response; resolves whether the client connection stays open for another. */
  async #exchange(
    wire: Wire,
    req: RequestHead,
    client: ClientInfo,
    access: ClientAccess | undefined,
  ): Promise<boolean> {
    const sock = wire.stream;
    const start = performance.now();
    const rec = this.#record(req, access?.ok ? access.user : "");
    const reply = (code: number, msg: string, keep: boolean): boolean => {
      const res = statusResponse(code, msg, { close: !keep, head: req.method === "HEAD" });
      rec.status = code;
      if (keep) sock.write(res);
      else closeAfterWrite(wire, res);
      return keep;
    };
    let framing: Framing;
    try {
      framing = requestFraming(req);
      requestHost(req);
    } catch (err) {
      const e = err as HttpParseError;
      reply(e.status, e.message, false);
      this.#audit(rec, 0, start);
      return false;
    }
    const maxBody = this.#o.maxRequestBody;
    if (maxBody !== undefined && framing.kind === "length" && framing.length > maxBody) {
      reply(
        413,
        `request body of ${framing.length} bytes exceeds the limit of ${maxBody} bytes`,
        false,
      );
      this.#audit(rec, 413, start);
      return false;
    }
    if (req.method === "CONNECT") {
      reply(405, "bad request", false);
      this.#audit(rec, 0, start);
      return false;
    }
    if (
      access?.ok && access.role === "user" &&
      req.headers.some((h) => isImpersonationHeader(h.lower))
    ) {
      reply(403, "impersonation is not allowed with a per-user certificate", false);
      this.#audit(rec, 0, start);
      return false;
    }
    const upgrade = upgradeOf(req);
    const x: Exchange = {
      req,
      framing,
      upgrade,
      client,
      access,
      clientKeep: requestKeepAlive(req, framing),
      rec,
      reqCount: { bytes: 0 },
      resCount: { bytes: 0 },
      reqComplete: framing.kind === "none",
      clientGone: false,
      upstream: null,
      abort: new AbortController(),
      gone: () => {
        x.clientGone = true;
        x.abort.abort();
        x.upstream?.destroy();
      },
    };
    const onClientClose = () => x.gone();
    // EOF from the client once its request is complete means it gave up (as Go's server does);
    // after an upgrade it is a half-close, relayed by #relay.
    const onClientEnd = () => {
      if (x.reqComplete && !rec.upgrade) x.gone();
    };
    sock.on("close", onClientClose);
    sock.on("end", onClientEnd);
    try {
      // Long-running requests get a stream of their own, so that (like new connections) they
      // spread over the cluster's sessions: losing one agent then ends only its share of them.
      const fresh = upgrade !== null || isLongRunning(req.target);
      for (let attempt = 0;; attempt++) {
        let conn = fresh ? undefined : this.#pool.take(this.#o.dialer.isLive?.bind(this.#o.dialer));
        const reused = conn !== undefined;
        if (!conn) {
          try {
            conn = await openUpstream(
              this.#o.dialer,
              x.abort.signal,
              this.#o.handshakeMs ?? 30_000,
            );
          } catch (err) {
            if (x.clientGone) return false;
            const keep = x.clientKeep && framing.kind === "none";
            if (err instanceof NoAgentError) {
              return reply(503, `cluster ${this.#o.cluster}: no agent connected`, keep);
            }
            // The body says what failed; where and why (addresses, sessions) only go to the log.
            const cause = err instanceof UpstreamConnectError
              ? err.message
              : `dial: ${(err as Error).message}`;
            log.warn("upstream unreachable", {
              cluster: this.#o.cluster,
              endpoint: this.#o.kind,
              error: cause,
            });
            return reply(
              502,
              `cluster ${this.#o.cluster}: ${this.#o.kind} API server unreachable`,
              keep,
            );
          }
          this.#track(conn);
        }
        x.upstream = conn;
        if (x.clientGone || this.#closed) {
          conn.destroy();
          return false;
        }
        conn.uses++;
        const out = await this.#roundTrip(wire, conn, x, reused && attempt === 0);
        if (!out.retry) return out.keep;
        log.v(4, "retrying on a fresh upstream connection", { cluster: this.#o.cluster });
      }
    } finally {
      sock.off("close", onClientClose);
      sock.off("end", onClientEnd);
      rec.bytesIn = x.reqCount.bytes;
      rec.bytesOut = x.resCount.bytes;
      this.#audit(rec, 0, start);
    }
  }

  #track(conn: UpstreamConn): void {
    this.#upstreams.add(conn);
    conn.stream.once("close", () => this.#upstreams.delete(conn));
    if (this.#closed) conn.destroy();
  }

  /** The request head for `conn`, with the credentials of the session `conn` rides on. */
  #upstreamHead(x: Exchange, conn: UpstreamConn): Buffer {
    const auth = conn.auth;
    const access = x.access?.ok ? x.access : undefined;
    return encodeHead(upstreamRequestHead(x.req, {
      framing: x.framing,
      upgrade: x.upgrade,
      stripAuthorization: this.#o.stripAuthorization,
      passImpersonation: access?.role === "admin",
      impersonate: access?.role === "user" ? access : undefined,
      bearerToken: auth.bearerToken,
      clientAddress: x.client.remoteAddress,
      proto: this.#o.proto,
      defaultHost: auth.tls?.serverName ?? "localhost",
    }));
  }

  /** Send the request on `conn` and relay the answer. */
  async #roundTrip(
    wire: Wire,
    conn: UpstreamConn,
    x: Exchange,
    mayRetry: boolean,
  ): Promise<Outcome> {
    const sock = wire.stream;
    const us = conn.stream;
    const uw = conn.wire;
    const { req, rec } = x;
    us.write(this.#upstreamHead(x, conn));
    let reqPump: Promise<void> | null = null;
    let reqError: Error | null = null;
    const cancelReq = new AbortController();
    if (x.framing.kind !== "none") {
      reqPump = pumpBody(wire, x.framing, us, x.reqCount, {
        signal: cancelReq.signal,
        limit: this.#o.maxRequestBody,
      }).then(
        () => {
          x.reqComplete = true;
          if (wire.eof) x.gone(); // EOF seen while the body was being read
        },
        (err: Error) => {
          reqError = err;
          if (!cancelReq.signal.aborted) conn.destroy();
        },
      );
    }
    const fail = (err: Error, received: number): Outcome => {
      cancelReq.abort();
      conn.destroy();
      if (x.clientGone) return { retry: false, keep: false };
      const retryable = mayRetry && received === 0 && x.framing.kind === "none" &&
        IDEMPOTENT.has(req.method);
      if (retryable) return { retry: true };
      if (reqError instanceof BodyTooLargeError) {
        rec.status = 413;
        closeAfterWrite(wire, statusResponse(413, reqError.message, { close: true }));
        return { retry: false, keep: false };
      }
      if (reqError instanceof ChunkedError) {
        rec.status = 400;
        closeAfterWrite(wire, statusResponse(400, reqError.message, { close: true }));
        return { retry: false, keep: false };
      }
      const msg = `cluster ${this.#o.cluster}: ${this.#o.kind} API server did not answer`;
      log.warn("upstream failed before answering", {
        cluster: this.#o.cluster,
        endpoint: this.#o.kind,
        error: err.message,
      });
      rec.status = 502;
      closeAfterWrite(wire, statusResponse(502, msg, { close: true, head: req.method === "HEAD" }));
      return { retry: false, keep: false };
    };

    // Response head, forwarding interim (1xx) answers.
    let res: ResponseHead;
    let received = 0;
    for (;;) {
      let got;
      try {
        got = await readHead(uw, { maxBytes: this.#limits.maxBytes });
      } catch (err) {
        const r = err instanceof WireClosedError ? err.received : 1;
        return fail(err as Error, received + r);
      }
      if (got === null) return fail(new Error("connection closed before a response"), received);
      received += got.end;
      try {
        res = parseResponseHead(got.buf, got.end, this.#limits);
      } catch (err) {
        return fail(new Error(`malformed response: ${(err as Error).message}`), received);
      }
      if (res.status >= 200 || res.status === 101) break;
      if (req.minor >= 1 && !x.clientGone) {
        sock.write(encodeHead(clientResponseHead(res, "none", NONE, false)));
      }
    }

    if (res.status === 101) {
      if (x.upgrade === null) {
        return fail(new Error("unsolicited 101 Switching Protocols"), received);
      }
      rec.status = 101;
      rec.upgrade = true;
      sock.write(encodeHead(clientResponseHead(res, "none", NONE, false)));
      await this.#relay(wire, conn, x);
      return { retry: false, keep: false };
    }

    let rf: Framing;
    try {
      rf = responseFraming(req.method, res);
    } catch (err) {
      return fail(new Error(`malformed response: ${(err as Error).message}`), received);
    }
    let close = !x.clientKeep;
    let mode: ClientBodyMode;
    let pumpMode: PumpMode = "raw";
    switch (rf.kind) {
      case "none":
        mode = "none";
        break;
      case "length":
        mode = "length";
        break;
      case "chunked":
        if (req.minor >= 1) mode = "chunked";
        else {
          mode = "close";
          pumpMode = "dechunk";
          close = true;
        }
        break;
      case "close":
        if (req.minor >= 1) {
          mode = "rechunk";
          pumpMode = "chunk";
        } else {
          mode = "close";
          close = true;
        }
        break;
    }
    const upstreamKeep = rf.kind !== "close" && !(rf.kind === "chunked" && rf.close) &&
      res.minor >= 1 && !headerTokens(res.headers, "connection").has("close");
    rec.status = res.status;
    sock.cork();
    sock.write(encodeHead(clientResponseHead(res, mode, rf, close)));
    const bodyDone = pumpBody(uw, rf, sock, x.resCount, { mode: pumpMode });
    sock.uncork();
    try {
      await bodyDone;
    } catch (err) {
      // The response broke off: the only way to tell the client is to break its connection too.
      cancelReq.abort();
      conn.destroy();
      if (!x.clientGone) {
        log.v(2, "upstream failed mid-response", {
          cluster: this.#o.cluster,
          error: (err as Error).message,
        });
        sock.destroy();
      }
      return { retry: false, keep: false };
    }
    if (!x.reqComplete) {
      // Answered before the whole request body arrived: neither connection is in a known state.
      cancelReq.abort();
      conn.destroy();
      closeAfterWrite(wire);
      return { retry: false, keep: false };
    }
    await reqPump;
    if (upstreamKeep && !this.#closed) this.#pool.put(conn);
    else conn.destroy();
    if (close) {
      closeAfterWrite(wire);
      return { retry: false, keep: false };
    }
    return { retry: false, keep: !x.clientGone };
  }

  /**
   * After a 101: relay raw bytes both ways until both sides ended or either closed. Each
   * direction ends on its own: an EOF is passed on as one (a client's half-close too), and a
   * side that can take nothing more (the agent closed the channel, with or without EOF first)
   * stops only the direction into it: what the other direction has received still reaches its
   * end (`pumpBody`).
   */
  async #relay(wire: Wire, conn: UpstreamConn, x: Exchange): Promise<void> {
    const sock = wire.stream;
    // Node would end our side at the client's EOF and drop the member's answer still to come.
    sock.allowHalfOpen = true;
    const cancel = new AbortController();
    const up = pumpBody(wire, { kind: "close" }, conn.stream, x.reqCount, {
      endDest: true,
      signal: cancel.signal,
    });
    const down = pumpBody(conn.wire, { kind: "close" }, sock, x.resCount, {
      endDest: true,
      signal: cancel.signal,
    });
    await new Promise<void>((resolve) => {
      let upDone = false;
      let downDone = false;
      // A failed side: the client is gone (nothing can reach it), or the member's stream broke.
      const broke = () => resolve();
      up.then(() => {
        upDone = true;
        if (downDone) resolve();
      }, broke);
      down.then(() => {
        downDone = true;
        // The member side closed (not just half-closed): nothing more can go up.
        if (upDone || conn.wire.closed) resolve();
      }, broke);
      conn.stream.once("close", () => {
        if (downDone) resolve();
      });
    });
    cancel.abort();
    conn.destroy();
    if (!sock.destroyed) closeAfterWrite(wire);
  }
}
