/**
 * A `WebSocket` object (from `Deno.upgradeWebSocket`) seen as a Node `Duplex`
 * byte stream, for tests that play a proxy with Deno's own WebSocket server
 * (the proxy itself frames WebSocket on its own: `websocketServerStream`).
 * Same-tick writes are coalesced into one message; backpressure follows
 * `bufferedAmount`.
 * @module
 */

import { Buffer } from "node:buffer";
import { Duplex } from "node:stream";
import { releaseBuffer } from "../../lib/buffer_pool.ts";

/** Options for {@link websocketStream}. */
export interface WsStreamOptions {
  /** Pause writers while more than this many bytes wait to be sent (default 4 MiB). */
  highWaterMark?: number;
  /** Largest message to send; bigger batches are split (default 1 MiB). */
  maxMessage?: number;
}

/**
 * Wrap an open (or opening) WebSocket. The stream ends when the socket closes;
 * destroying the stream closes the socket. A text message is a protocol error.
 */
export function websocketStream(ws: WebSocket, opts: WsStreamOptions = {}): Duplex {
  const highWater = opts.highWaterMark ?? 4 << 20;
  const maxMessage = opts.maxMessage ?? 1 << 20;
  ws.binaryType = "arraybuffer";
  let batch: Buffer[] = [];
  let batchBytes = 0;
  let flushScheduled = false;
  let drainWaiters: (() => void)[] = [];
  let drainTimer: ReturnType<typeof setTimeout> | undefined;

  const opened = ws.readyState === WebSocket.OPEN
    ? Promise.resolve()
    : new Promise<void>((resolve, reject) => {
      ws.addEventListener("open", () => resolve(), { once: true });
      ws.addEventListener("close", () => reject(new Error("websocket closed before open")), {
        once: true,
      });
    });
  opened.catch(() => {});

  const sendNow = () => {
    flushScheduled = false;
    if (batchBytes === 0 || ws.readyState !== WebSocket.OPEN) return;
    const sent = batch;
    const data = sent.length === 1 ? sent[0] : Buffer.concat(sent, batchBytes);
    batch = [];
    batchBytes = 0;
    for (let off = 0; off < data.length; off += maxMessage) {
      ws.send(data.subarray(off, Math.min(data.length, off + maxMessage)));
    }
    // `send` has copied the bytes: packet buffers may serve the next packets.
    for (const c of sent) releaseBuffer(c);
  };

  const checkDrain = () => {
    drainTimer = undefined;
    if (ws.readyState !== WebSocket.OPEN || ws.bufferedAmount <= highWater) {
      const waiters = drainWaiters;
      drainWaiters = [];
      for (const w of waiters) w();
    } else {
      // No drain event exists on WebSocket: look again shortly.
      drainTimer = setTimeout(checkDrain, 2);
    }
  };

  const stream = new Duplex({
    allowHalfOpen: false,
    readableHighWaterMark: 1 << 20,
    writableHighWaterMark: 1 << 20,
    read() {},
    write(chunk: Buffer, _enc, cb) {
      const go = () => {
        if (ws.readyState !== WebSocket.OPEN) return cb(new Error("websocket is not open"));
        batch.push(chunk);
        batchBytes += chunk.length;
        if (batchBytes >= maxMessage) sendNow();
        else if (!flushScheduled) {
          flushScheduled = true;
          queueMicrotask(sendNow);
        }
        if (ws.bufferedAmount > highWater) {
          drainWaiters.push(() => cb());
          if (drainTimer === undefined) drainTimer = setTimeout(checkDrain, 2);
        } else cb();
      };
      if (ws.readyState === WebSocket.CONNECTING) opened.then(go, (e) => cb(e));
      else go();
    },
    final(cb) {
      sendNow();
      try {
        ws.close(1000);
      } catch {
        // already closing
      }
      cb();
    },
    destroy(err, cb) {
      if (drainTimer !== undefined) clearTimeout(drainTimer);
      drainTimer = undefined;
      for (const w of drainWaiters.splice(0)) w();
      try {
        if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) {
          ws.close(err ? 1011 : 1000);
        }
      } catch {
        // already closed
      }
      cb(err);
    },
  });

  ws.addEventListener("message", (ev: MessageEvent) => {
    if (typeof ev.data === "string") {
      stream.destroy(new Error("unexpected text message on the tunnel websocket"));
      return;
    }
    stream.push(Buffer.from(ev.data as ArrayBuffer));
  });
  ws.addEventListener("close", () => {
    if (drainTimer !== undefined) clearTimeout(drainTimer);
    drainTimer = undefined;
    for (const w of drainWaiters.splice(0)) w();
    stream.push(null);
    if (!stream.destroyed) stream.destroy();
  });
  ws.addEventListener("error", () => {
    if (!stream.destroyed) stream.destroy(new Error("websocket error"));
  });
  return stream;
}
