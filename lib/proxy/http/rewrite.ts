/**
 * Header rewriting as a reverse proxy must do it (RFC 9110 §7.6): drop
 * hop-by-hop fields (Connection and the fields it names, Keep-Alive,
 * Proxy-*, TE, Trailer, Transfer-Encoding, Upgrade) and set the framing of
 * the next hop ourselves; keep Upgrade/Connection only on upgrades; append the
 * client's address to `X-Forwarded-For` and set `X-Forwarded-Proto/-Host`.
 *
 * Identity: when the client's `Authorization` passes through (kubesphere
 * endpoint), so do its identity headers — the member checks them against the
 * client itself. When the upstream identity is the agent's (the client's
 * `Authorization` stripped or replaced), `X-Remote-*` headers are always
 * dropped, and the client's `Impersonate-*` headers pass only when the caller
 * says so (Tower's admin certificate: `kubectl --as` then behaves as straight
 * to the member); `impersonate` adds Tower's own impersonation of a per-user
 * certificate's user and groups.
 * @module
 */

import type { Framing, HeaderField, RequestHead, ResponseHead } from "./head.ts";

const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "content-length", // re-emitted from the framing
]);

/** Whether `lower` names an impersonation header (`Impersonate-User`, `-Group`, `-Uid`, `-Extra-*`). */
export function isImpersonationHeader(lower: string): boolean {
  return lower.startsWith("impersonate-");
}

/** Field names listed in the Connection headers (lowercase). */
function connectionTokens(headers: HeaderField[]): Set<string> | null {
  let out: Set<string> | null = null;
  for (const h of headers) {
    if (h.lower !== "connection" && h.lower !== "proxy-connection") continue;
    for (const t of h.value.split(",")) {
      const v = t.trim().toLowerCase();
      if (v) (out ??= new Set()).add(v);
    }
  }
  return out;
}

/** The joined Transfer-Encoding values (kept verbatim when a chunked body is passed through). */
function transferEncoding(headers: HeaderField[]): string {
  let v = "";
  for (const h of headers) {
    if (h.lower === "transfer-encoding") {
      v = v ? `${v}, ${h.value}` : h.value;
    }
  }
  return v;
}

/** Options of {@link upstreamRequestHead}. */
export interface RequestRewrite {
  /** Request body framing (decides Content-Length / Transfer-Encoding upstream). */
  framing: Framing;
  /** The `Upgrade` value to forward when this is an upgrade request, else null. */
  upgrade: string | null;
  /** Drop the client's `Authorization`. */
  stripAuthorization: boolean;
  /**
   * Forward the client's `Impersonate-*` headers even when the upstream identity is the agent's
   * (otherwise they are dropped in that case; `X-Remote-*` always are).
   */
  passImpersonation: boolean;
  /** Set `Authorization: Bearer <token>` (replacing the client's). */
  bearerToken?: string;
  /** Impersonate this user and these groups (the client's own impersonation headers are dropped). */
  impersonate?: { user: string; groups: readonly string[] };
  /** Client IP appended to `X-Forwarded-For`. */
  clientAddress: string;
  /** `X-Forwarded-Proto`. */
  proto: "http" | "https";
  /** Host to send when the client (HTTP/1.0) sent none. */
  defaultHost: string;
}

/** The HTTP/1.1 request head to send upstream for `req`. */
export function upstreamRequestHead(req: RequestHead, o: RequestRewrite): string {
  const conn = connectionTokens(req.headers);
  const agentIdentity = o.stripAuthorization || o.bearerToken !== undefined;
  const passImpersonation = !agentIdentity || (o.passImpersonation && !o.impersonate);
  let out = `${req.method} ${req.target} HTTP/1.1\r\n`;
  let host: string | undefined;
  let xff = "";
  let hadLength = false;
  for (const h of req.headers) {
    const l = h.lower;
    if (HOP_BY_HOP.has(l) || (conn !== null && conn.has(l))) {
      if (l === "content-length") hadLength = true;
      continue;
    }
    if (l === "host") {
      host ??= h.value;
    } else if (l === "x-forwarded-for") {
      xff = xff ? `${xff}, ${h.value}` : h.value;
      continue;
    } else if (l === "x-forwarded-proto" || l === "x-forwarded-host") {
      continue;
    } else if (l === "authorization") {
      if (agentIdentity) continue;
    } else if (isImpersonationHeader(l)) {
      if (!passImpersonation) continue;
    } else if (agentIdentity && l.startsWith("x-remote-")) {
      continue;
    }
    out += `${h.name}: ${h.value}\r\n`;
  }
  if (host === undefined) {
    host = o.defaultHost;
    out += `Host: ${host}\r\n`;
  }
  if (o.bearerToken !== undefined) out += `Authorization: Bearer ${o.bearerToken}\r\n`;
  if (o.impersonate) {
    out += `Impersonate-User: ${o.impersonate.user}\r\n`;
    for (const g of o.impersonate.groups) out += `Impersonate-Group: ${g}\r\n`;
  }
  if (o.framing.kind === "length") out += `Content-Length: ${o.framing.length}\r\n`;
  else if (o.framing.kind === "chunked") {
    out += `Transfer-Encoding: ${transferEncoding(req.headers)}\r\n`;
  } else if (hadLength && methodMayHaveBody(req.method)) out += "Content-Length: 0\r\n";
  if (o.upgrade !== null) out += `Connection: Upgrade\r\nUpgrade: ${o.upgrade}\r\n`;
  out += `X-Forwarded-For: ${xff ? `${xff}, ${o.clientAddress}` : o.clientAddress}\r\n`;
  out += `X-Forwarded-Proto: ${o.proto}\r\n`;
  out += `X-Forwarded-Host: ${host}\r\n`;
  return out + "\r\n";
}

function methodMayHaveBody(method: string): boolean {
  return method !== "GET" && method !== "HEAD";
}

/** How the response body is sent to the client (see {@link clientResponseHead}). */
export type ClientBodyMode =
  /** No body; Content-Length passed as received (HEAD, 304). */
  | "none"
  /** Content-Length body. */
  | "length"
  /** Chunked passed through (Transfer-Encoding and Trailer kept). */
  | "chunked"
  /** Close-delimited upstream, re-framed as chunked. */
  | "rechunk"
  /** Body until the connection closes (HTTP/1.0 client). */
  | "close";

/**
 * The response head for the client: hop-by-hop fields dropped, framing per `mode`,
 * `Connection: close` when `close`, `Connection: Upgrade` + `Upgrade` on a 101.
 */
export function clientResponseHead(
  res: ResponseHead,
  mode: ClientBodyMode,
  framing: Framing,
  close: boolean,
): string {
  const conn = connectionTokens(res.headers);
  let out = `HTTP/1.1 ${res.status} ${res.reason}\r\n`;
  let upgrade: string | undefined;
  let length: string | undefined;
  for (const h of res.headers) {
    const l = h.lower;
    if (l === "upgrade") upgrade ??= h.value;
    if (l === "content-length") length ??= h.value;
    if (l === "trailer" && mode === "chunked") {
      out += `${h.name}: ${h.value}\r\n`;
      continue;
    }
    if (HOP_BY_HOP.has(l) || (conn !== null && conn.has(l))) continue;
    out += `${h.name}: ${h.value}\r\n`;
  }
  if (res.status === 101) {
    out += `Connection: Upgrade\r\n`;
    if (upgrade !== undefined) out += `Upgrade: ${upgrade}\r\n`;
    return out + "\r\n";
  }
  if (mode === "length" && framing.kind === "length") {
    out += `Content-Length: ${framing.length}\r\n`;
  } else if (mode === "none" && length !== undefined && res.status !== 204 && res.status >= 200) {
    out += `Content-Length: ${length}\r\n`;
  } else if (mode === "chunked") {
    out += `Transfer-Encoding: ${transferEncoding(res.headers)}\r\n`;
  } else if (mode === "rechunk") {
    out += "Transfer-Encoding: chunked\r\n";
  }
  if (close) out += "Connection: close\r\n";
  return out + "\r\n";
}
