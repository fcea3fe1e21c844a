/**
 * The agent's transport to the proxy: a WebSocket with subprotocol
 * `kubesphere-v1` to `--proxy-server` (`http(s)://` or `ws(s)://`), seen as a
 * byte stream. Deno's WebSocket goes through `HTTPS_PROXY`/`HTTP_PROXY` (HTTP
 * CONNECT) and honours `NO_PROXY`, as `fetch` does.
 * @module
 */

import type { Duplex } from "node:stream";
import { WS_PROTOCOL } from "../tunnel/protocol.ts";
import { websocketStream } from "../tunnel/ws_stream.ts";

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

/**
 * Open the tunnel WebSocket; resolves once it is open.
 * @throws Error when the proxy refuses or cannot be reached (or on `signal`).
 */
export function dialProxy(url: URL, signal?: AbortSignal, timeoutMs = 15_000): Promise<Duplex> {
  return new Promise((resolve, reject) => {
    let ws: WebSocket;
    try {
      ws = new WebSocket(url, [WS_PROTOCOL]);
    } catch (err) {
      return reject(new Error(`dial ${url}: ${(err as Error).message}`));
    }
    ws.binaryType = "arraybuffer";
    const fail = (why: string) => {
      cleanup();
      try {
        ws.close();
      } catch {
        // not open
      }
      reject(new Error(`dial ${url}: ${why}`));
    };
    const onOpen = () => {
      cleanup();
      if (ws.protocol !== WS_PROTOCOL) {
        ws.close();
        return reject(new Error(`dial ${url}: proxy answered subprotocol "${ws.protocol}"`));
      }
      resolve(websocketStream(ws));
    };
    const onError = (ev: Event) => fail((ev as ErrorEvent).message || "connection failed");
    const onClose = (ev: CloseEvent) => fail(`closed during handshake (code ${ev.code})`);
    const onAbort = () => fail("aborted");
    const timer = setTimeout(() => fail(`no answer within ${timeoutMs} ms`), timeoutMs);
    const cleanup = () => {
      clearTimeout(timer);
      ws.removeEventListener("open", onOpen);
      ws.removeEventListener("error", onError);
      ws.removeEventListener("close", onClose);
      signal?.removeEventListener("abort", onAbort);
    };
    ws.addEventListener("open", onOpen);
    ws.addEventListener("error", onError);
    ws.addEventListener("close", onClose);
    signal?.addEventListener("abort", onAbort);
  });
}
