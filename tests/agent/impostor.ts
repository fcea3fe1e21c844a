/**
 * An impostor proxy for host-key tests: the proxy's WebSocket transport and an
 * SSH server with a host key of its own that takes any password (the cluster
 * token, for an agent of ours) and answers any global request — and records each, so a test can prove an agent sent
 * it nothing (no user authentication, hence no token; no `config`).
 * @module
 */

// @ts-types="@types/ssh2"
import ssh2 from "ssh2";
import { generateHostKeyPem, parseHostKey } from "../../lib/tunnel/hostkey.ts";
import { WS_PROTOCOL } from "../../lib/tunnel/protocol.ts";
import { acceptAnyIdent } from "../../lib/tunnel/ssh_ident.ts";
import { serveGlobalRequests } from "../../lib/tunnel/ssh_requests.ts";
import { websocketStream } from "../helpers/ws_object_stream.ts";

/** What the impostor saw. */
export interface Impostor {
  url: string;
  port: number;
  fingerprint: string;
  /** SSH connections accepted (the agent got as far as dialing). */
  connections: number;
  /** User authentication requests received: `method user` (a password method carries the token). */
  auths: string[];
  /** Global requests received (`config` carries the token and member credentials). */
  requests: string[];
  /** Resolves on the next SSH connection that ends. */
  nextClose(): Promise<void>;
  close(): Promise<void>;
}

/** Listen on 127.0.0.1:`port` (0: any) as an impostor proxy. */
export function startImpostor(port = 0): Impostor {
  const key = parseHostKey(generateHostKeyPem());
  const server = new ssh2.Server({ hostKeys: [key.pem] });
  let closeWaiters: (() => void)[] = [];
  const imp: Impostor = {
    url: "",
    port: 0,
    fingerprint: key.fingerprint,
    connections: 0,
    auths: [],
    requests: [],
    nextClose: () => new Promise((resolve) => closeWaiters.push(resolve)),
    close: async () => {
      for (const c of conns) c.end();
      await http.shutdown();
    },
  };
  const conns = new Set<ssh2.Connection>();
  server.on("connection", (conn: ssh2.Connection) => {
    imp.connections++;
    conns.add(conn);
    conn.on("error", () => {});
    conn.on("close", () => {
      conns.delete(conn);
      const w = closeWaiters;
      closeWaiters = [];
      for (const f of w) f();
    });
    conn.on("authentication", (ctx: ssh2.AuthContext) => {
      imp.auths.push(`${ctx.method} ${ctx.username}`);
      // Ask for the password, as a Tower proxy does: it is the cluster token.
      if (ctx.method === "password") ctx.accept();
      else ctx.reject(["password"]);
    });
    serveGlobalRequests(conn, (name) => {
      imp.requests.push(name);
      return { ok: true };
    });
  });
  const http = Deno.serve({ hostname: "127.0.0.1", port, onListen: () => {} }, (req) => {
    const { socket, response } = Deno.upgradeWebSocket(req, {
      protocol: WS_PROTOCOL,
      idleTimeout: 0,
    });
    server.injectSocket(acceptAnyIdent(websocketStream(socket), server) as never);
    return response;
  });
  imp.port = http.addr.port;
  imp.url = `http://127.0.0.1:${imp.port}`;
  return imp;
}
