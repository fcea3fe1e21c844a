/**
 * The metrics/health listener (`--metrics-address`), separate from the agent
 * port: `/metrics` (Prometheus text), `/healthz` (the process is alive and its
 * event loop answers) and `/readyz` (the component says it is ready). The
 * metrics module (prom-client) is loaded when the listener starts.
 * @module
 */

import { logger } from "./log.ts";

const log = logger("health");

/** Readiness: `ok` plus a line per check for humans. */
export interface Readiness {
  ok: boolean;
  detail: string[];
}

/** Parse `host:port` / `:port` as Go does for listen addresses. */
export function parseListenAddress(addr: string): { hostname: string; port: number } {
  const m = /^(\[[^\]]*\]|[^:]*):(\d+)$/.exec(addr);
  if (!m) {
    throw new Error(`invalid listen address ${JSON.stringify(addr)}: want host:port or :port`);
  }
  const port = Number(m[2]);
  if (port > 65535) throw new Error(`invalid listen address ${addr}: port out of range`);
  const host = m[1].replace(/^\[|\]$/g, "");
  return { hostname: host === "" ? "0.0.0.0" : host, port };
}

/** Start the listener; `ready` is consulted on each `/readyz`. */
export async function startHealthServer(
  address: string,
  ready: () => Readiness,
): Promise<{ addr: Deno.NetAddr; close(): Promise<void> }> {
  const { hostname, port } = parseListenAddress(address);
  // prom-client is loaded with the listener: an agent without --metrics-address never pays it.
  const { registry } = await import("./metrics.ts");
  const listening = Promise.withResolvers<Deno.NetAddr>();
  const server = Deno.serve({
    hostname,
    port,
    onListen: (a) => listening.resolve(a as Deno.NetAddr),
  }, async (req) => {
    const { pathname } = new URL(req.url);
    switch (pathname) {
      case "/metrics":
        return new Response(await registry.metrics(), {
          headers: { "content-type": registry.contentType },
        });
      case "/healthz":
        return new Response("ok\n");
      case "/readyz": {
        const r = ready();
        return new Response(`${r.ok ? "ok" : "not ready"}\n${r.detail.join("\n")}\n`, {
          status: r.ok ? 200 : 503,
        });
      }
      default:
        return new Response("404 page not found\n", { status: 404 });
    }
  });
  const addr = await listening.promise;
  log.info("Serving metrics and health", { address: `${addr.hostname}:${addr.port}` });
  return { addr, close: () => server.shutdown() };
}
