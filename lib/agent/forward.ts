/**
 * The agent end of a tunnelled stream: dial the target over TCP and pipe
 * bytes both ways between it and the SSH channel, with backpressure on both
 * sides and half-close carried across (channel EOF → TCP FIN and back).
 * @module
 */

import { Buffer } from "node:buffer";
import type { Duplex } from "node:stream";

const CHUNK = 256 * 1024;

/** Parse `host:port` (with `[v6]` support) for `Deno.connect`. */
export function splitHostPort(target: string): { hostname: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(target);
  if (!m) throw new Error(`bad target ${JSON.stringify(target)}`);
  return { hostname: m[1] ?? m[2], port: Number(m[3]) };
}

/** Dial `target` over TCP. */
export async function dialTarget(target: string): Promise<Deno.TcpConn> {
  const conn = await Deno.connect({ ...splitHostPort(target), transport: "tcp" });
  conn.setNoDelay(true);
  return conn;
}

/**
 * Pipe `channel` ↔ `conn` until both directions are done, then close both.
 * Resolves when everything is closed; never rejects.
 */
export async function pipeChannel(channel: Duplex, conn: Deno.TcpConn): Promise<void> {
  let closed = false;
  const closeAll = () => {
    if (closed) return;
    closed = true;
    try {
      conn.close();
    } catch {
      // already closed
    }
    channel.destroy();
  };

  // channel → TCP
  const up = new Promise<void>((resolve) => {
    let writing = Promise.resolve();
    channel.on("data", (chunk: Buffer) => {
      channel.pause();
      writing = writeAll(conn, chunk).then(
        () => {
          if (!closed) channel.resume();
        },
        () => closeAll(),
      );
    });
    channel.once("end", () => {
      writing.then(() => conn.closeWrite()).catch(() => {}).finally(resolve);
    });
    channel.once("close", () => resolve());
    channel.on("error", () => closeAll());
  });

  // TCP → channel
  const down = (async () => {
    try {
      while (!closed) {
        const buf = Buffer.allocUnsafe(CHUNK);
        const n = await conn.read(buf);
        if (n === null) break;
        if (!channel.write(buf.subarray(0, n))) {
          await new Promise<void>((resolve) => {
            const done = () => {
              channel.off("drain", done);
              channel.off("close", done);
              resolve();
            };
            channel.on("drain", done);
            channel.on("close", done);
          });
        }
      }
      if (!closed) {
        // Everything queued on the channel must reach the proxy before close.
        await new Promise<void>((resolve) => {
          channel.once("finish", resolve);
          channel.once("close", resolve);
          channel.end();
        });
      }
    } catch {
      closeAll();
    }
  })();

  await Promise.all([up, down]);
  closeAll();
}

async function writeAll(conn: Deno.TcpConn, chunk: Uint8Array): Promise<void> {
  let off = 0;
  while (off < chunk.length) off += await conn.write(chunk.subarray(off));
}
