/**
 * What the steps of forwarding one exchange share: the endpoint's side
 * ({@link ForwardContext}, kept by `forward.ts`) and the exchange's own state ({@link Exchange}).
 * @module
 */

import type { ClientAccess } from "../client_access.ts";
import type { EndpointKind, RequestRecord } from "./audit.ts";
import type { UpstreamConn } from "./conn.ts";
import type { Framing, HeadLimits, RequestHead } from "./head.ts";
import type { UpstreamPool } from "./pool.ts";
import type { UpstreamDialer } from "./upstream.ts";
import type { PumpCounter } from "./wire.ts";

/** What the steps of an exchange need from the endpoint's proxy (`forward.ts`). */
export interface ForwardContext {
  readonly cluster: string;
  readonly kind: EndpointKind;
  readonly dialer: UpstreamDialer;
  /** Scheme clients use (`X-Forwarded-Proto`). */
  readonly proto: "http" | "https";
  /** Drop the client's `Authorization` (the kubernetes endpoint). */
  readonly stripAuthorization: boolean;
  /** Largest request body accepted (413 beyond it); undefined: no limit. */
  readonly maxRequestBody: number | undefined;
  /** Upstream TLS handshake limit. */
  readonly handshakeMs: number;
  readonly limits: HeadLimits;
  readonly pool: UpstreamPool;
  /** The proxy was closed: nothing is pooled, new upstream connections are destroyed. */
  isClosed(): boolean;
  /** Count a new upstream connection as open until it closes. */
  track(conn: UpstreamConn): void;
  /** Finish and log the exchange's record (see `audit.ts`). */
  audit(rec: RequestRecord, status: number, start: number): void;
}

/** State shared by the steps of one exchange. */
export interface Exchange {
  req: RequestHead;
  framing: Framing;
  upgrade: string | null;
  /** Peer IP for `X-Forwarded-For`. */
  clientAddress: string;
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

/** How a round trip ended: try again on a fresh connection, or whether the client stays. */
export type Outcome = { retry: true } | { retry: false; keep: boolean };
