/**
 * Kubernetes `Status` error responses written by the proxy itself (401 for a
 * missing client certificate, 503 without an agent, 502 when the member API
 * server cannot be dialled, 400 for malformed requests), as complete
 * HTTP/1.1 responses.
 * @module
 */

import { Buffer } from "node:buffer";

/** A `metav1.Status` failure object. */
export interface KubeStatus {
  kind: "Status";
  apiVersion: "v1";
  metadata: Record<string, never>;
  status: "Failure";
  message: string;
  reason: string;
  code: number;
}

const REASONS: Record<number, [string, string]> = {
  400: ["BadRequest", "Bad Request"],
  401: ["Unauthorized", "Unauthorized"],
  403: ["Forbidden", "Forbidden"],
  405: ["MethodNotAllowed", "Method Not Allowed"],
  413: ["RequestEntityTooLarge", "Request Entity Too Large"],
  431: ["RequestHeaderFieldsTooLarge", "Request Header Fields Too Large"],
  501: ["NotImplemented", "Not Implemented"],
  502: ["BadGateway", "Bad Gateway"],
  503: ["ServiceUnavailable", "Service Unavailable"],
  504: ["Timeout", "Gateway Timeout"],
  505: ["HTTPVersionNotSupported", "HTTP Version Not Supported"],
};

/** The Status object for `code` (reason from the code unless given). */
function kubeStatus(code: number, message: string, reason?: string): KubeStatus {
  return {
    kind: "Status",
    apiVersion: "v1",
    metadata: {},
    status: "Failure",
    message,
    reason: reason ?? REASONS[code]?.[0] ?? "InternalError",
    code,
  };
}

/**
 * A complete HTTP/1.1 response carrying a Status JSON body; with `close` it says
 * `Connection: close` (the caller then closes the connection).
 */
export function statusResponse(
  code: number,
  message: string,
  opts: { close?: boolean; reason?: string; head?: boolean } = {},
): Buffer {
  const body = Buffer.from(JSON.stringify(kubeStatus(code, message, opts.reason)) + "\n", "utf8");
  const phrase = REASONS[code]?.[1] ?? "Error";
  const head = `HTTP/1.1 ${code} ${phrase}\r\n` +
    "Content-Type: application/json\r\n" +
    "Cache-Control: no-cache, private\r\n" +
    `Content-Length: ${body.length}\r\n` +
    (opts.close ? "Connection: close\r\n" : "") +
    "\r\n";
  const h = Buffer.from(head, "latin1");
  return opts.head ? h : Buffer.concat([h, body]);
}
