/**
 * The audit record of one exchange ({@link RequestRecord}) and the audit line: one per proxied
 * request, never headers, queries or credentials.
 * @module
 */

import { logger } from "../../log.ts";
import type { RequestHead } from "./head.ts";

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

function pathOf(target: string): string {
  const q = target.indexOf("?");
  return q < 0 ? target : target.slice(0, q);
}

/** A record of `req` on an endpoint of `cluster`, before anything is known of its answer. */
export function newRecord(
  cluster: string,
  endpoint: EndpointKind,
  req: RequestHead,
  commonName: string,
): RequestRecord {
  return {
    cluster,
    endpoint,
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

/**
 * Finish `rec` (`status`, when not 0, is what the client got; the duration is counted from
 * `start`), log the audit line and hand the record to `hook`, whose failure is logged.
 */
export function audit(
  rec: RequestRecord,
  status: number,
  start: number,
  hook: ((rec: RequestRecord) => void) | undefined,
): void {
  if (status) rec.status = status;
  rec.durationMs = performance.now() - start;
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
  if (!hook) return;
  try {
    hook(rec);
  } catch (err) {
    log.error("audit hook failed", { cluster: rec.cluster, error: err as Error });
  }
}
