/**
 * A TCP relay we control, placed between agent and proxy to simulate network
 * partitions: `blackhole()` silently drops bytes both ways (no FIN, no RST),
 * `heal()` lets new and existing connections through again.
 * @module
 */

import { startTcpServer, type TcpServer, writeAll } from "./tunnel.ts";

/** A relay to `127.0.0.1:targetPort`. */
export interface Relay {
  port: number;
  server: TcpServer;
  /** Drop everything from now on, without closing anything. */
  blackhole(): void;
  /** Forward again. */
  heal(): void;
  close(): Promise<void>;
}

/** Start a relay to `127.0.0.1:targetPort`. */
export function startRelay(targetPort: number): Relay {
  let dropping = false;
  const pump = async (from: Deno.Conn, to: Deno.Conn) => {
    const buf = new Uint8Array(64 * 1024);
    try {
      for (;;) {
        const n = await from.read(buf);
        if (n === null) break;
        if (!dropping) await writeAll(to, buf.subarray(0, n));
      }
      if (!dropping) await to.closeWrite();
    } catch {
      // the other side went away
    }
  };
  const server = startTcpServer(async (conn) => {
    const up = await Deno.connect({ hostname: "127.0.0.1", port: targetPort });
    try {
      await Promise.all([pump(conn, up), pump(up, conn)]);
    } finally {
      try {
        up.close();
      } catch {
        // closed
      }
    }
  });
  return {
    port: server.port,
    server,
    blackhole: () => {
      dropping = true;
    },
    heal: () => {
      dropping = false;
    },
    close: () => server.close(),
  };
}
