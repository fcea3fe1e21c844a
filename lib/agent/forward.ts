/**
 * The agent end of a tunnelled stream: dial the target over TCP and pipe
 * bytes both ways between it and the SSH channel, with backpressure on both
 * sides and half-close carried across (channel EOF → TCP FIN and back).
 *
 * Performance notes (this is the agent's whole data path):
 * - TCP → channel reads go into slices of a shared slab that is replaced only
 *   when nearly used up, so a small read does not cost a fresh zero-filled
 *   256 KiB buffer (ssh2 may keep a written chunk until the peer's window
 *   opens, so buffers handed to the channel are never reused).
 * - channel → TCP keeps the channel flowing and queues chunks while a write is
 *   in progress; it pauses the channel only when the queue is large, instead
 *   of pausing and resuming around every 32 KiB SSH packet.
 * @module
 */

import { Buffer } from "node:buffer";
import type { Duplex } from "node:stream";
import { READ_MIN, SlabReader } from "../slab.ts";

/** Queued channel → TCP bytes above which the channel is paused. */
const UP_HIGH_WATER = 1 << 20;

/**
 * Bytes all target → channel reads of this process may hold at once. A stream's next read is this
 * divided by the streams currently holding a chunk the channel has not taken (waiting for their
 * SSH window or the transport), between 16 KiB and 256 KiB: a bulk stream reads 256 KiB at a
 * time, while a thousand stalled-up streams hold 16 KiB each instead of a quarter of a GiB
 * together. Idle keep-alive streams do not count.
 */
export const READ_BUDGET = 16 << 20;

/** Target → channel loops now holding a chunk the channel has not taken (waiting for `drain`). */
let blockedReaders = 0;

/** Read size for one of `readers` streams sharing {@link READ_BUDGET}. */
export function readLimit(readers: number): number {
  return Math.max(READ_MIN, Math.min(256 * 1024, Math.floor(READ_BUDGET / Math.max(1, readers))));
}

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

/** Resolve once `stream` emits `drain` or `close`. */
function drainedOrClosed(stream: Duplex): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      stream.off("drain", done);
      stream.off("close", done);
      resolve();
    };
    stream.on("drain", done);
    stream.on("close", done);
  });
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
    const queue: Buffer[] = [];
    let queued = 0;
    let writing = false;
    let ended = false;
    let closing = false;
    const finishUp = () => {
      conn.closeWrite().catch(() => {}).finally(resolve);
    };
    const drain = async () => {
      writing = true;
      try {
        while (queue.length > 0 && !closed) {
          const chunk = queue.shift()!;
          let off = 0;
          while (off < chunk.length) off += await conn.write(chunk.subarray(off));
          queued -= chunk.length;
          if (queued < UP_HIGH_WATER / 2 && channel.isPaused() && !closed) channel.resume();
        }
      } catch {
        closeAll();
        resolve();
        return;
      } finally {
        writing = false;
      }
      if (closing) closeAll();
      else if (ended && !closed) finishUp();
    };
    channel.on("data", (chunk: Buffer) => {
      queue.push(chunk);
      queued += chunk.length;
      if (queued > UP_HIGH_WATER) channel.pause();
      if (!writing) drain();
    });
    channel.once("end", () => {
      ended = true;
      if (!writing) finishUp();
    });
    // The channel is gone (the proxy closed it, or the session ended): nothing more can go
    // back, so the target connection is closed too, once what was already received from the
    // channel has been written to it. Without this a keep-alive target would hold the stream
    // (and the agent's stream count) open until it times the connection out.
    channel.once("close", () => {
      closing = true;
      if (!writing) closeAll();
      resolve();
    });
    channel.on("error", () => closeAll());
  });

  // TCP → channel
  const down = (async () => {
    const slab = new SlabReader();
    try {
      while (!closed) {
        const n = await conn.read(slab.room(readLimit(blockedReaders + 1)));
        if (n === null) break;
        if (!channel.write(slab.take(n))) {
          blockedReaders++;
          await drainedOrClosed(channel).finally(() => blockedReaders--);
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
