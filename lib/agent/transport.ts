/**
 * The agent's transport to the proxy: a WebSocket with subprotocol
 * `kubesphere-v1` to `--proxy-server` (`http(s)://` or `ws(s)://`), seen as a
 * byte stream; through `HTTPS_PROXY`/`HTTP_PROXY` with HTTP CONNECT when one
 * applies (and `NO_PROXY` does not exclude the host).
 * @module
 */

import type { Duplex } from "node:stream";
import { WS_PROTOCOL } from "../tunnel/protocol.ts";
import { within } from "../within.ts";
import { connectWebSocket, proxyFor } from "./ws_client.ts";

/** Turn `--proxy-server` into the WebSocket URL to dial. */
export function tunnelUrl(proxyServer: string): URL {
  let url: URL;
  try {
    url = new URL(proxyServer);
  } catch {
    throw new Error(`invalid proxy server URL ${JSON.stringify(proxyServer)}`);
  }
  if (url.protocol === "http:") url.protocol = "ws:";
  else if (url.protocol === "https:") url.protocol = "wss:";
  else if (url.protocol !== "ws:" && url.protocol !== "wss:") {
    throw new Error(`proxy server URL ${proxyServer}: scheme must be http, https, ws or wss`);
  }
  return url;
}

/** How {@link dialProxy} reaches the proxy. */
export interface DialOptions {
  signal?: AbortSignal;
  /** Deadline for the whole opening handshake (default 15 s). */
  timeoutMs?: number;
  /** Extra trusted roots (PEM) for a `wss://` proxy behind a private CA (`--proxy-ca`). */
  caCerts?: string[];
  /** Environment lookup for `HTTP(S)_PROXY`/`NO_PROXY` (tests override). */
  env?: (name: string) => string | undefined;
}

/**
 * Open the tunnel WebSocket; resolves once it is open (see `ws_client.ts`).
 * @throws Error when the proxy refuses or cannot be reached (or on `signal`).
 */
export function dialProxy(url: URL, opts: DialOptions = {}): Promise<Duplex> {
  const timeoutMs = opts.timeoutMs ?? 15_000;
  const via = proxyFor(url, opts.env ?? ((n) => Deno.env.get(n)));
  return within(
    connectWebSocket(url, WS_PROTOCOL, { proxy: via, caCerts: opts.caCerts }),
    timeoutMs,
    {
      what: via ? `dial ${url} via ${via.host}` : `dial ${url}`,
      signal: opts.signal,
      late: (stream) => stream.destroy(),
    },
  );
}
