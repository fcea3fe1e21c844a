/**
 * The agent end of a tunnelled stream: dial the target over TCP and pipe
 * bytes both ways between it and the SSH channel, with backpressure on both
 * sides and half-close carried across (channel EOF → TCP FIN and back). A
 * channel closed without EOF (as the original Go proxy does) still gets every
 * byte received before its CLOSE to the target, and the target is not reset
 * (see {@link pipeChannel}).
 *
 * Performance notes (this is the agent's whole data path):
 * - TCP → channel reads go into buffers from the buffer pool, sized to the stream's share of its
 *   session's {@link SendBudget} (a power of two from 16 to 256 KiB), and a buffer goes back to
 *   the pool once the channel has taken the chunk read into it (its write callback; ssh2 may keep
 *   a chunk until the peer's window opens). A stream holds at most its share unsent: a thousand
 *   busy streams hold ~16 KiB each, one bulk stream 256 KiB.
 * - channel → TCP keeps the channel flowing and queues chunks while a write is in progress; it
 *   pauses the channel only when the queue is large, instead of pausing and resuming around
 *   every 32 KiB SSH packet.
 * @module
 */

import { Buffer } from "node:buffer";
import type { Duplex } from "node:stream";
import { releaseBuffer, takeBuffer } from "../buffer_pool.ts";
import { MIN_SHARE, SendBudget } from "../tunnel/send_budget.ts";
import { deferConsumption } from "../tunnel/receive_budget.ts";
import { within } from "../within.ts";

/** Queued channel → TCP bytes above which the channel is paused. */
const UP_HIGH_WATER = 1 << 20;

/** The budget of streams piped without one of their own (tests; one agent session). */
const processBudget = new SendBudget();

/** Parse `host:port` (with `[v6]` support) for `Deno.connect`. */
export function splitHostPort(target: string): { hostname: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(target);
  if (!m) throw new Error(`bad target ${JSON.stringify(target)}`);
  return { hostname: m[1] ?? m[2], port: Number(m[3]) };
}

/**
 * How long a target has to accept our TCP connection. Without a deadline a target that drops
 * our SYNs (a full accept queue, a firewall) held the proxy's channel open, and the stream
 * counted against the agent's limit, for the kernel's whole retry schedule (~2 min on Linux).
 */
export const DIAL_TIMEOUT_MS = 10_000;

/**
 * Dial `target` over TCP; fails after `timeoutMs`, and then gives the connect up (its socket
 * would otherwise stay in SYN_SENT for the kernel's retries; one that completes anyway is closed).
 */
export async function dialTarget(
  target: string,
  timeoutMs: number = DIAL_TIMEOUT_MS,
): Promise<Deno.TcpConn> {
  // Aborted only if the dial fails (Deno documents the signal as closing the connection).
  const giveUp = new AbortController();
  const conn = await within(
    Deno.connect({ ...splitHostPort(target), transport: "tcp", signal: giveUp.signal }),
    timeoutMs,
    {
      what: "connect",
      timedOut: `not connected within ${timeoutMs} ms`,
      late: (c) => c.close(),
    },
  ).catch((err) => {
    giveUp.abort();
    throw err;
  });
  conn.setNoDelay(true);
  return conn;
}

/**
 * How long the target connection stays open, once the channel is gone, for the target to close
 * it after our FIN (its output read and dropped meanwhile). Closing it at once, with its output
 * still unread, would reset it, and a reset drops what it had not read yet: the last bytes the
 * channel brought, stdin's tail.
 */
export const LINGER_MS = 5_000;

/**
 * Pipe `channel` ↔ `conn` until both directions are done, then close both.
 * Resolves when everything is closed; never rejects.
 *
 * Each direction ends on its own: the channel's EOF, or its CLOSE without EOF first (the
 * original Go proxy's way; ssh2 ends the readable side behind every byte received), becomes a
 * FIN to the target once every byte received from the channel is written; the target's EOF (or
 * a failed read) becomes the channel's EOF once every byte read is handed to it. Once the
 * channel can take nothing more, the target's output is read and dropped until it closes (at
 * most {@link LINGER_MS}), so it is not reset while the last bytes are on their way to it.
 *
 * (One long function: both directions share the close state and the channel's events; split,
 * they would hand each other half a dozen closures.)
 */
export async function pipeChannel(
  channel: Duplex,
  conn: Deno.TcpConn,
  opts: { lingerMs?: number; budget?: SendBudget } = {},
): Promise<void> {
  const budget = opts.budget ?? processBudget;
  let closed = false;
  /** The channel closed: nothing more can be written to it. */
  let channelGone = false;
  let linger: ReturnType<typeof setTimeout> | undefined;
  const closeAll = () => {
    if (closed) return;
    closed = true;
    clearTimeout(linger);
    try {
      conn.close();
    } catch {
      // already closed
    }
    channel.destroy();
  };
  channel.once("close", () => {
    channelGone = true;
    linger = setTimeout(closeAll, opts.lingerMs ?? LINGER_MS);
  });
  channel.on("error", () => closeAll());
  /** Resolve once `channel` emits `event`, or is gone. */
  const channelEvent = (event: "drain" | "finish") =>
    new Promise<void>((resolve) => {
      if (channelGone) return resolve();
      const done = () => {
        channel.off(event, done);
        channel.off("close", done);
        resolve();
      };
      channel.on(event, done);
      channel.on("close", done);
    });

  // channel → TCP
  const up = new Promise<void>((resolve) => {
    // Queued bytes stay in the session's receive budget until they are written to the target.
    const written = deferConsumption(channel);
    const queue: Buffer[] = [];
    let queued = 0;
    let writing = false;
    /** The channel's readable side ended (EOF, CLOSE, or gone): FIN once the queue is written. */
    let ended = false;
    let finSent = false;
    const finish = () => {
      if (finSent) return;
      finSent = true;
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
          written(chunk.length);
          if (queued < UP_HIGH_WATER / 2 && channel.isPaused() && !closed) channel.resume();
        }
      } catch {
        // The target is gone: nothing more can reach it.
        closeAll();
        resolve();
        return;
      } finally {
        writing = false;
      }
      if (ended && !closed) finish();
    };
    channel.on("data", (chunk: Buffer) => {
      queue.push(chunk);
      queued += chunk.length;
      if (queued > UP_HIGH_WATER) channel.pause();
      if (!writing) drain();
    });
    const onEnd = () => {
      if (ended) return;
      ended = true;
      if (closed) resolve();
      else if (!writing) finish();
    };
    channel.once("end", onEnd);
    // Closed without an end (destroyed): what was received is still written, then FIN.
    channel.once("close", onEnd);
  });

  // TCP → channel
  const down = (async () => {
    /** Bytes of buffers written to the channel that it has not taken yet (callbacks pending). */
    let unsent = 0;
    let finished = false;
    let wake: (() => void) | undefined;
    /** The pool buffers of the chunks written and not yet taken, oldest first (in order). */
    const written: Buffer[] = [];
    // One callback for every write: Node then batches the completions of a tick into one call
    // each (a fresh closure per write cost a tick of its own, ~15% of small-request req/s).
    const onTaken = (err?: Error | null) => {
      const buf = written.shift();
      if (finished || buf === undefined) return; // counted out already: the channel closed
      unsent -= buf.length;
      budget.release(buf.length);
      // Once ssh2 has copied the chunk into packets, its buffer may be reused.
      if (!err) releaseBuffer(buf);
      wake?.();
    };
    /** Resolve once `unsent` is below `limit`, or the channel is gone (callbacks may never come). */
    const taken = (limit: number) =>
      new Promise<void>((resolve) => {
        const check = () => {
          if (unsent >= limit && !closed && !channelGone) return;
          wake = undefined;
          channel.off("close", check);
          resolve();
        };
        wake = check;
        channel.on("close", check);
        check();
      });
    /** The buffer of the next read, held in the budget from when it is taken. */
    let buf: Buffer | undefined;
    budget.join();
    try {
      try {
        while (!closed) {
          if (buf === undefined) {
            // Reads the channel will not take (it is gone) are dropped: any size will do.
            const dropping = channelGone || !channel.writable;
            const size = dropping ? MIN_SHARE : budget.readable(unsent);
            if (size === 0) {
              // The session holds its limit: wait until this stream's own bytes are taken.
              await taken(1);
              continue;
            }
            buf = takeBuffer(size);
            budget.hold(size);
          }
          const n = await conn.read(buf);
          if (n === null) break;
          // The channel takes nothing more (the proxy closed it): drop (the buffer is read into
          // again), and read on to EOF.
          if (channelGone || !channel.writable) continue;
          // The whole buffer stays held until the channel has taken the chunk read into it.
          unsent += buf.length;
          written.push(buf);
          const chunk = buf.subarray(0, n);
          buf = undefined;
          const ok = channel.write(chunk, onTaken);
          const share = budget.share();
          if (!ok) await channelEvent("drain");
          else if (unsent >= share) await taken(share);
        }
      } catch {
        // The target failed (reset): what was read is still handed on, then the channel's EOF.
      }
      if (!closed && !channelGone && channel.writable) {
        // Everything queued on the channel must reach the proxy before close.
        const sent = channelEvent("finish");
        channel.end();
        await sent;
      }
    } finally {
      // A closed channel never calls back for what it still held: stop counting it (those
      // buffers go to the garbage collector, as ssh2 may still hold them).
      finished = true;
      budget.release(unsent + (buf?.length ?? 0));
      if (buf !== undefined) releaseBuffer(buf);
      budget.leave();
    }
  })();

  await Promise.all([up, down]);
  closeAll();
}
