/**
 * The agent-facing HTTP listener (`--host:--port`): WebSocket upgrades to the
 * tunnel, `GET /health` and `GET /version`, 404 for anything else (SPEC §1).
 * @module
 */

import { logger } from "../log.ts";
import { VERSION } from "../version.ts";
import { TunnelServer } from "./tunnel_server.ts";

const log = logger("proxy/http");

/** A running agent port. */
export interface AgentPort {
  /** The bound address. */
  addr: Deno.NetAddr;
  /** Stop listening and close open connections. */
  close(): Promise<void>;
}

/** Routes of the agent port, usable without a listener (tests). */
export function agentPortHandler(tunnel: TunnelServer) {
  return (req: Request, info: Deno.ServeHandlerInfo<Deno.NetAddr>): Response => {
    const remote = `${info.remoteAddr.hostname}:${info.remoteAddr.port}`;
    if (TunnelServer.wantsTunnel(req)) return tunnel.handle(req, remote);
    const { pathname } = new URL(req.url);
    if (req.method === "GET" || req.method === "HEAD") {
      if (pathname === "/health") return new Response("OK\n");
      if (pathname === "/version") return new Response(`${VERSION}\n`);
    }
    return new Response("404 page not found\n", { status: 404 });
  };
}

/** Listen on `hostname:port` for agents. */
export async function startAgentPort(
  hostname: string,
  port: number,
  tunnel: TunnelServer,
): Promise<AgentPort> {
  const ready = Promise.withResolvers<Deno.NetAddr>();
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve({
      hostname,
      port,
      onListen: (addr) => ready.resolve(addr as Deno.NetAddr),
      onError: (err) => {
        log.warn("agent port request failed", { err: (err as Error).message });
        return new Response("internal error\n", { status: 500 });
      },
    }, agentPortHandler(tunnel));
  } catch (err) {
    throw new Error(`listen ${hostname}:${port}: ${(err as Error).message}`);
  }
  const addr = await ready.promise;
  log.info(`Listening on ${addr.hostname}:${addr.port}...`);
  return {
    addr,
    close: async () => {
      tunnel.close();
      await server.shutdown();
    },
  };
}
