/**
 * One request/response exchange on a client connection ({@link exchange}): the refusals decided
 * from the request head alone (400, 413, 405, 403); an upstream connection, an idle pooled one or
 * a fresh one from the tunnel dialer (503 when no agent is connected, 502 when the member API
 * server cannot be reached: the bodies say what failed, addresses, sessions and causes go to the
 * log); one retry on a fresh connection when a reused one turns out dead before any answer byte;
 * the audit record when the exchange ends. The round trip itself is `round_trip.ts`.
 * @module
 */

import { logger } from "../../log.ts";
import type { ClientAccess } from "../client_access.ts";
import { newRecord } from "./audit.ts";
import { closeAfterWrite } from "./close_after_write.ts";
import { openUpstream, type UpstreamConn, UpstreamConnectError } from "./conn.ts";
import {
  type Framing,
  headerTokens,
  headerValue,
  type HttpParseError,
  requestFraming,
  type RequestHead,
  requestHost,
  requestKeepAlive,
} from "./head.ts";
import { isImpersonationHeader } from "./rewrite.ts";
import { roundTrip } from "./round_trip.ts";
import { statusResponse } from "./status.ts";
import { NoAgentError } from "./upstream.ts";
import type { Wire } from "./wire.ts";
import type { Exchange, ForwardContext } from "./context.ts";

const log = logger("proxy/http");

const LONG_RUNNING = /[?&](watch|follow)=(true|1)(&|$)|^\/api(s\/[^/]+)?\/v[^/]+\/watch\//;

/** A watch (`?watch=true`, `/watch/` paths) or a followed log (`?follow=true`). */
export function isLongRunning(target: string): boolean {
  return LONG_RUNNING.test(target);
}

/** The `Upgrade` value when `req` asks for a protocol upgrade, else null. */
function upgradeOf(req: RequestHead): string | null {
  const up = headerValue(req.headers, "upgrade");
  if (up === undefined || up === "") return null;
  return headerTokens(req.headers, "connection").has("upgrade") ? up : null;
}

/** Answer the client with a `Status` and record it; returns `keep`. */
function reply(
  wire: Wire,
  x: Pick<Exchange, "req" | "rec">,
  code: number,
  msg: string,
  keep: boolean,
): boolean {
  const res = statusResponse(code, msg, { close: !keep, head: x.req.method === "HEAD" });
  x.rec.status = code;
  if (keep) wire.stream.write(res);
  else closeAfterWrite(wire, res);
  return keep;
}

/** The request's framing, or why it is refused before anything is dialled. */
function checkRequest(
  req: RequestHead,
  access: ClientAccess | undefined,
  maxBody: number | undefined,
): Framing | { status: number; message: string } {
  let framing: Framing;
  try {
    framing = requestFraming(req);
    requestHost(req);
  } catch (err) {
    const e = err as HttpParseError;
    return { status: e.status, message: e.message };
  }
  if (maxBody !== undefined && framing.kind === "length" && framing.length > maxBody) {
    const message = `request body of ${framing.length} bytes exceeds the limit of ${maxBody} bytes`;
    return { status: 413, message };
  }
  if (req.method === "CONNECT") return { status: 405, message: "bad request" };
  if (
    access?.ok && access.role === "user" &&
    req.headers.some((h) => isImpersonationHeader(h.lower))
  ) {
    return { status: 403, message: "impersonation is not allowed with a per-user certificate" };
  }
  return framing;
}

/** One request/response; resolves whether the client connection stays open for another. */
export async function exchange(
  ctx: ForwardContext,
  wire: Wire,
  req: RequestHead,
  clientAddress: string,
  access: ClientAccess | undefined,
): Promise<boolean> {
  const sock = wire.stream;
  const start = performance.now();
  const rec = newRecord(ctx.cluster, ctx.kind, req, access?.ok ? access.user : "");
  const framing = checkRequest(req, access, ctx.maxRequestBody);
  if ("status" in framing) {
    reply(wire, { req, rec }, framing.status, framing.message, false);
    ctx.audit(rec, 0, start);
    return false;
  }
  const x: Exchange = {
    req,
    framing,
    upgrade: upgradeOf(req),
    clientAddress,
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
  // after an upgrade it is a half-close, relayed by `relay.ts`.
  const onClientEnd = () => {
    if (x.reqComplete && !rec.upgrade) x.gone();
  };
  sock.on("close", onClientClose);
  sock.on("end", onClientEnd);
  try {
    return await forward(ctx, wire, x);
  } finally {
    sock.off("close", onClientClose);
    sock.off("end", onClientEnd);
    rec.bytesIn = x.reqCount.bytes;
    rec.bytesOut = x.resCount.bytes;
    ctx.audit(rec, 0, start);
  }
}

/** Forward `x` on an upstream connection, once more on a fresh one when a reused one was dead. */
async function forward(ctx: ForwardContext, wire: Wire, x: Exchange): Promise<boolean> {
  // Long-running requests get a stream of their own, so that (like new connections) they
  // spread over the cluster's sessions: losing one agent then ends only its share of them.
  const fresh = x.upgrade !== null || isLongRunning(x.req.target);
  for (let attempt = 0;; attempt++) {
    let conn = fresh ? undefined : ctx.pool.take(ctx.dialer.isLive?.bind(ctx.dialer));
    const reused = conn !== undefined;
    if (!conn) {
      const dialled = await dial(ctx, wire, x);
      if (typeof dialled === "boolean") return dialled;
      conn = dialled;
      ctx.track(conn);
    }
    x.upstream = conn;
    if (x.clientGone || ctx.isClosed()) {
      conn.destroy();
      return false;
    }
    conn.uses++;
    const out = await roundTrip(ctx, wire, conn, x, reused && attempt === 0);
    if (!out.retry) return out.keep;
    log.v(4, "retrying on a fresh upstream connection", { cluster: ctx.cluster });
  }
}

/**
 * A fresh upstream connection; or, when none can be had, the client's answer (503 without an
 * agent, else 502) is sent and the result says whether the client connection stays open.
 */
async function dial(
  ctx: ForwardContext,
  wire: Wire,
  x: Exchange,
): Promise<UpstreamConn | boolean> {
  try {
    return await openUpstream(ctx.dialer, x.abort.signal, ctx.handshakeMs);
  } catch (err) {
    if (x.clientGone) return false;
    const keep = x.clientKeep && x.framing.kind === "none";
    if (err instanceof NoAgentError) {
      return reply(wire, x, 503, `cluster ${ctx.cluster}: no agent connected`, keep);
    }
    // The body says what failed; where and why (addresses, sessions) only go to the log.
    const cause = err instanceof UpstreamConnectError
      ? err.message
      : `dial: ${(err as Error).message}`;
    log.warn("upstream unreachable", { cluster: ctx.cluster, endpoint: ctx.kind, error: cause });
    return reply(wire, x, 502, `cluster ${ctx.cluster}: ${ctx.kind} API server unreachable`, keep);
  }
}
