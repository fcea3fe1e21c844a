/**
 * One round trip on an upstream connection ({@link roundTrip}): the request head rewritten for
 * the member (`rewrite.ts`) with the credentials of the session the connection rides on, the
 * body pumped alongside; interim (1xx) answers forwarded as they come; a 101 handed to
 * `relay.ts`; the response body passed through verbatim, or re-framed for an HTTP/1.0 client or
 * an upstream that ends its body by closing; the connection pooled again when both sides allow.
 * @module
 */

import type { Buffer } from "node:buffer";
import { logger } from "../../log.ts";
import { ChunkedError } from "./chunked.ts";
import { closeAfterWrite } from "./close_after_write.ts";
import type { UpstreamConn } from "./conn.ts";
import type { Exchange, ForwardContext, Outcome } from "./context.ts";
import {
  encodeHead,
  type Framing,
  headerTokens,
  parseResponseHead,
  responseFraming,
  type ResponseHead,
} from "./head.ts";
import { relayUpgraded } from "./relay.ts";
import { type ClientBodyMode, clientResponseHead, upstreamRequestHead } from "./rewrite.ts";
import { statusResponse } from "./status.ts";
import {
  BodyTooLargeError,
  pumpBody,
  type PumpMode,
  readHead,
  type Wire,
  WireClosedError,
} from "./wire.ts";

const log = logger("proxy/http");

const IDEMPOTENT = new Set(["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"]);
const NONE: Framing = { kind: "none" };

/** One round trip's parts, handed between its steps. */
interface Trip {
  ctx: ForwardContext;
  /** The client connection. */
  wire: Wire;
  conn: UpstreamConn;
  x: Exchange;
  /** The reused connection may be given up for a fresh one if it fails before answering. */
  mayRetry: boolean;
  /** The request body's pump (null without a body) and how it failed, if it did. */
  reqPump: Promise<void> | null;
  reqError: Error | null;
  cancelReq: AbortController;
}

/** The request head for `conn`, with the credentials of the session `conn` rides on. */
function upstreamHead(ctx: ForwardContext, x: Exchange, conn: UpstreamConn): Buffer {
  const auth = conn.auth;
  const access = x.access?.ok ? x.access : undefined;
  return encodeHead(upstreamRequestHead(x.req, {
    framing: x.framing,
    upgrade: x.upgrade,
    stripAuthorization: ctx.stripAuthorization,
    passImpersonation: access?.role === "admin",
    impersonate: access?.role === "user" ? access : undefined,
    bearerToken: auth.bearerToken,
    clientAddress: x.clientAddress,
    proto: ctx.proto,
    defaultHost: auth.tls?.serverName ?? "localhost",
  }));
}

/** Send the request on `conn` and relay the answer. */
export async function roundTrip(
  ctx: ForwardContext,
  wire: Wire,
  conn: UpstreamConn,
  x: Exchange,
  mayRetry: boolean,
): Promise<Outcome> {
  conn.stream.write(upstreamHead(ctx, x, conn));
  const t: Trip = {
    ctx,
    wire,
    conn,
    x,
    mayRetry,
    reqPump: null,
    reqError: null,
    cancelReq: new AbortController(),
  };
  if (x.framing.kind !== "none") {
    t.reqPump = pumpBody(wire, x.framing, conn.stream, x.reqCount, {
      signal: t.cancelReq.signal,
      limit: ctx.maxRequestBody,
    }).then(
      () => {
        x.reqComplete = true;
        if (wire.eof) x.gone(); // EOF seen while the body was being read
      },
      (err: Error) => {
        t.reqError = err;
        if (!t.cancelReq.signal.aborted) conn.destroy();
      },
    );
  }
  const head = await responseHead(t);
  if (head.res === null) return fail(t, head.error, head.received);
  const res = head.res;
  if (res.status !== 101) return forwardResponse(t, res, head.received);
  if (x.upgrade === null) {
    return fail(t, new Error("unsolicited 101 Switching Protocols"), head.received);
  }
  x.rec.status = 101;
  x.rec.upgrade = true;
  wire.stream.write(encodeHead(clientResponseHead(res, "none", NONE, false)));
  await relayUpgraded(wire, conn, x.reqCount, x.resCount);
  return { retry: false, keep: false };
}

/**
 * The final response head (or a 101), forwarding interim (1xx) answers to an HTTP/1.1 client;
 * `received` counts the bytes read, which decides whether a failure may be retried.
 */
async function responseHead(
  t: Trip,
): Promise<
  { res: ResponseHead; received: number } | { res: null; error: Error; received: number }
> {
  const { x, ctx } = t;
  let received = 0;
  for (;;) {
    let got;
    try {
      got = await readHead(t.conn.wire, { maxBytes: ctx.limits.maxBytes });
    } catch (err) {
      const r = err instanceof WireClosedError ? err.received : 1;
      return { res: null, error: err as Error, received: received + r };
    }
    if (got === null) {
      return { res: null, error: new Error("connection closed before a response"), received };
    }
    received += got.end;
    let res: ResponseHead;
    try {
      res = parseResponseHead(got.buf, got.end, ctx.limits);
    } catch (err) {
      const error = new Error(`malformed response: ${(err as Error).message}`);
      return { res: null, error, received };
    }
    if (res.status >= 200 || res.status === 101) return { res, received };
    if (x.req.minor >= 1 && !x.clientGone) {
      t.wire.stream.write(encodeHead(clientResponseHead(res, "none", NONE, false)));
    }
  }
}

/**
 * The upstream failed before its answer was complete: a retry when the connection was a reused
 * one, nothing was received and the request is idempotent without a body; else the client's
 * answer (413 or 400 when its own body was at fault, 502 otherwise) and the connection closes.
 */
function fail(t: Trip, err: Error, received: number): Outcome {
  const { x, ctx, wire } = t;
  const req = x.req;
  t.cancelReq.abort();
  t.conn.destroy();
  if (x.clientGone) return { retry: false, keep: false };
  const retryable = t.mayRetry && received === 0 && x.framing.kind === "none" &&
    IDEMPOTENT.has(req.method);
  if (retryable) return { retry: true };
  const reqError = t.reqError;
  if (reqError instanceof BodyTooLargeError) {
    x.rec.status = 413;
    closeAfterWrite(wire, statusResponse(413, reqError.message, { close: true }));
    return { retry: false, keep: false };
  }
  if (reqError instanceof ChunkedError) {
    x.rec.status = 400;
    closeAfterWrite(wire, statusResponse(400, reqError.message, { close: true }));
    return { retry: false, keep: false };
  }
  const msg = `cluster ${ctx.cluster}: ${ctx.kind} API server did not answer`;
  log.warn("upstream failed before answering", {
    cluster: ctx.cluster,
    endpoint: ctx.kind,
    error: err.message,
  });
  x.rec.status = 502;
  closeAfterWrite(wire, statusResponse(502, msg, { close: true, head: req.method === "HEAD" }));
  return { retry: false, keep: false };
}

/** How a response body of framing `rf` reaches a client speaking HTTP/1.`minor`. */
interface BodyPlan {
  /** Framing announced to the client. */
  mode: ClientBodyMode;
  /** What the pump does to the bytes on the way. */
  pump: PumpMode;
  /** The client connection closes after this response. */
  close: boolean;
}

/**
 * Verbatim where the client can take the framing as it is; an HTTP/1.0 client gets a chunked
 * body de-chunked and ended by closing; an HTTP/1.1 client gets a body ended by the upstream's
 * close re-chunked, so that its connection can stay.
 */
function bodyPlan(minor: number, rf: Framing, clientKeep: boolean): BodyPlan {
  switch (rf.kind) {
    case "none":
      return { mode: "none", pump: "raw", close: !clientKeep };
    case "length":
      return { mode: "length", pump: "raw", close: !clientKeep };
    case "chunked":
      return minor >= 1
        ? { mode: "chunked", pump: "raw", close: !clientKeep }
        : { mode: "close", pump: "dechunk", close: true };
    case "close":
      return minor >= 1
        ? { mode: "rechunk", pump: "chunk", close: !clientKeep }
        : { mode: "close", pump: "raw", close: true };
  }
}

/** Relay a final (non-101) response, then pool or close the upstream connection. */
async function forwardResponse(t: Trip, res: ResponseHead, received: number): Promise<Outcome> {
  const { x, ctx, wire, conn } = t;
  const sock = wire.stream;
  let rf: Framing;
  try {
    rf = responseFraming(x.req.method, res);
  } catch (err) {
    return fail(t, new Error(`malformed response: ${(err as Error).message}`), received);
  }
  const plan = bodyPlan(x.req.minor, rf, x.clientKeep);
  const upstreamKeep = rf.kind !== "close" && !(rf.kind === "chunked" && rf.close) &&
    res.minor >= 1 && !headerTokens(res.headers, "connection").has("close");
  x.rec.status = res.status;
  sock.cork();
  sock.write(encodeHead(clientResponseHead(res, plan.mode, rf, plan.close)));
  const bodyDone = pumpBody(conn.wire, rf, sock, x.resCount, { mode: plan.pump });
  sock.uncork();
  try {
    await bodyDone;
  } catch (err) {
    // The response broke off: the only way to tell the client is to break its connection too.
    t.cancelReq.abort();
    conn.destroy();
    if (!x.clientGone) {
      log.v(2, "upstream failed mid-response", {
        cluster: ctx.cluster,
        error: (err as Error).message,
      });
      sock.destroy();
    }
    return { retry: false, keep: false };
  }
  if (!x.reqComplete) {
    // Answered before the whole request body arrived: neither connection is in a known state.
    t.cancelReq.abort();
    conn.destroy();
    closeAfterWrite(wire);
    return { retry: false, keep: false };
  }
  await t.reqPump;
  if (upstreamKeep && !ctx.isClosed()) ctx.pool.put(conn);
  else conn.destroy();
  if (plan.close) {
    closeAfterWrite(wire);
    return { retry: false, keep: false };
  }
  return { retry: false, keep: !x.clientGone };
}
