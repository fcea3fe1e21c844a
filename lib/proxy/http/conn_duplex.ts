/**
 * A Deno TCP connection as the Node `Duplex` the HTTP engine serves, and a plain-TCP listener
 * that hands out such connections. Deno's own sockets cost the proxy much less CPU per request
 * than `node:net`'s emulation of libuv streams, so the plain (kubesphere) endpoint uses these;
 * the TLS endpoint stays on `node:tls`, which can ask for client certificates.
 *
 * Semantics match a `net.Socket` from `net.createServer()` with the defaults the engine was
 * built on: when the peer half-closes, our side ends too once pending writes are out
 * (`allowHalfOpen: false`); `destroy()` closes the connection, failing a pending read.
 * @module
 */

import { Buffer } from "node:buffer";
import { Duplex } from "node:stream";
import { SlabReader } from "../../slab.ts";

/** A connection with the peer address the engine logs. */
export interface ConnDuplex extends Duplex {
  readonly remoteAddress: string;
}

/** Wrap `conn` (TCP_NODELAY and keepalive are set here). */
export function connDuplex(conn: Deno.TcpConn): ConnDuplex {
  try {
    conn.setNoDelay(true);
    conn.setKeepAlive(true);
  } catch {
    // already closed: the first read will say so
  }
  const slab = new SlabReader();
  let reading = false;
  let closed = false;

  const closeConn = () => {
    if (closed) return;
    closed = true;
    try {
      conn.close();
    } catch {
      // already closed
    }
  };

  const writeAll = async (data: Uint8Array): Promise<void> => {
    for (let off = 0; off < data.length;) off += await conn.write(data.subarray(off));
  };

  const stream = new Duplex({
    allowHalfOpen: false,
    read() {
      if (reading) return;
      reading = true;
      (async () => {
        try {
          for (;;) {
            const n = await conn.read(slab.room());
            if (n === null) {
              stream.push(null);
              return;
            }
            if (!stream.push(slab.take(n))) return; // resumed by the next read()
          }
        } catch (err) {
          if (!closed) stream.destroy(err as Error);
        } finally {
          reading = false;
        }
      })();
    },
    write(chunk: Buffer, _enc, cb) {
      writeAll(chunk).then(() => cb(), (err) => cb(err as Error));
    },
    writev(chunks: { chunk: Buffer }[], cb) {
      const data = chunks.length === 1
        ? chunks[0].chunk
        : Buffer.concat(chunks.map((c) => c.chunk));
      writeAll(data).then(() => cb(), (err) => cb(err as Error));
    },
    final(cb) {
      conn.closeWrite().then(() => cb(), () => cb());
    },
    destroy(err, cb) {
      closeConn();
      cb(err);
    },
  }) as ConnDuplex;
  const addr = conn.remoteAddr as Deno.NetAddr;
  Object.defineProperty(stream, "remoteAddress", { value: addr.hostname, enumerable: true });
  return stream;
}

/** A bound plain-TCP listener handing each connection to `onConn` as a {@link ConnDuplex}. */
export interface ConnListener {
  readonly port: number;
  /** Stop accepting (connections already handed out are not touched). */
  close(): void;
}

/**
 * Listen on `host:port` (0: ephemeral). Throws Deno's error (`Deno.errors.AddrInUse`, …) when
 * the port cannot be bound.
 */
export function listenConns(
  host: string,
  port: number,
  onConn: (sock: ConnDuplex) => void,
  onError: (err: Error) => void,
): ConnListener {
  const listener = Deno.listen({ hostname: host, port, transport: "tcp" });
  let closed = false;
  (async () => {
    for (;;) {
      let conn: Deno.TcpConn;
      try {
        conn = await listener.accept();
      } catch (err) {
        if (closed || err instanceof Deno.errors.BadResource) return;
        onError(err as Error); // e.g. EMFILE: keep accepting once descriptors free up
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      onConn(connDuplex(conn));
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    close() {
      if (closed) return;
      closed = true;
      try {
        listener.close();
      } catch {
        // already closed
      }
    },
  };
}
