/**
 * A WebSocket seen as a Node `Duplex` byte stream, which is what ssh2 runs on.
 *
 * Binary messages carry the SSH byte stream in order; their boundaries mean
 * nothing (SPEC §1). Writes made in the same tick are coalesced into one
 * message, so ssh2's many small packet writes do not become many frames.
 *
 * Two flavours:
 * - {@link websocketStream} over a `WebSocket` object (the proxy side, from
 *   `Deno.upgradeWebSocket`); backpressure follows `bufferedAmount`.
 * - {@link websocketClientStream}: RFC 6455 client framing of our own over a
 *   `Deno.Conn` whose opening handshake is done (the agent side). Deno's
 *   native `WebSocket` client turns Nagle's algorithm back on and writes a
 *   frame's header and payload in two syscalls, which costs a delayed-ACK
 *   wait (40 ms on Linux) per request/response; here every batch of writes
 *   becomes one masked frame in one write on a `TCP_NODELAY` socket, and
 *   payloads read are handed to ssh2 without copying.
 * @module
 */

import { Buffer } from "node:buffer";
import { randomFillSync } from "node:crypto";
import { Duplex } from "node:stream";
import { releaseBuffer } from "../buffer_pool.ts";

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

// ---------------------------------------------------------------------------------------------
// Client framing over a raw connection.

/** Options for {@link websocketClientStream}. */
export interface WsClientStreamOptions {
  /** Pause writers while more than this many bytes wait to be written (default 4 MiB). */
  highWaterMark?: number;
  /** Largest frame payload to send; bigger batches are split (default 1 MiB). */
  maxMessage?: number;
  /** Largest frame payload accepted from the server (default 64 MiB). */
  maxFrame?: number;
}

const OP_CONT = 0x0;
const OP_TEXT = 0x1;
const OP_BINARY = 0x2;
const OP_CLOSE = 0x8;
const OP_PING = 0x9;
const OP_PONG = 0xa;
/** Room in front of a payload for the longest client header (10 + 4 mask bytes), 4-aligned. */
const FRAME_PAD = 16;
/** Reads at least this large are handed on without copying (a new buffer is taken). */
const ZERO_COPY_READ = 16 * 1024;
const READ_SIZE = 256 * 1024;

/** Masking keys come from one CSPRNG fill, 4 bytes at a time. */
const maskPool = new Uint32Array(1024);
let maskNext = maskPool.length;
function nextMask(): number {
  if (maskNext === maskPool.length) {
    randomFillSync(maskPool);
    maskNext = 0;
  }
  return maskPool[maskNext++];
}

/**
 * Write the client frame header for a payload of `len` bytes that starts at `FRAME_PAD` in
 * `frame`, mask the payload in place, and return the frame (header + payload).
 */
function sealFrame(frame: Uint8Array, opcode: number, len: number): Uint8Array {
  const headLen = len < 126 ? 2 : len < 65536 ? 4 : 10;
  const start = FRAME_PAD - headLen - 4;
  frame[start] = 0x80 | opcode;
  if (len < 126) frame[start + 1] = 0x80 | len;
  else if (len < 65536) {
    frame[start + 1] = 0x80 | 126;
    frame[start + 2] = len >>> 8;
    frame[start + 3] = len & 0xff;
  } else {
    frame[start + 1] = 0x80 | 127;
    const dv = new DataView(frame.buffer, frame.byteOffset + start + 2, 8);
    dv.setUint32(0, Math.floor(len / 2 ** 32));
    dv.setUint32(4, len >>> 0);
  }
  const mask = nextMask();
  const maskAt = FRAME_PAD - 4;
  // The key's bytes on the wire, in the order the XOR below applies them (platform endian).
  new Uint32Array(frame.buffer, frame.byteOffset + maskAt, 1)[0] = mask;
  const words = len >>> 2;
  const w = new Uint32Array(frame.buffer, frame.byteOffset + FRAME_PAD, words);
  for (let i = 0; i < words; i++) w[i] ^= mask;
  for (let i = words << 2; i < len; i++) {
    frame[FRAME_PAD + i] ^= frame[maskAt + (i & 3)];
  }
  return frame.subarray(start, FRAME_PAD + len);
}

/** A masked client frame carrying `payload` (for control frames and tests). */
export function encodeClientFrame(opcode: number, payload: Uint8Array): Uint8Array {
  const frame = new Uint8Array(FRAME_PAD + payload.length);
  frame.set(payload, FRAME_PAD);
  return sealFrame(frame, opcode, payload.length);
}

/**
 * Speak RFC 6455 as the client over `conn`, whose opening handshake is already done;
 * `initial` holds any bytes read past the handshake response. Sets `TCP_NODELAY` when
 * `conn` is TCP. Returns the byte stream carried in binary messages. The stream ends when
 * the server closes; destroying it closes the connection.
 */
export function websocketClientStream(
  conn: Deno.Conn,
  initial: Uint8Array = new Uint8Array(0),
  opts: WsClientStreamOptions = {},
): Duplex {
  const highWater = opts.highWaterMark ?? 4 << 20;
  const maxMessage = opts.maxMessage ?? 1 << 20;
  const maxFrame = opts.maxFrame ?? 64 << 20;
  try {
    (conn as Deno.TcpConn).setNoDelay?.(true);
  } catch {
    // not TCP (or already closed): nothing to tune
  }

  const batch: Uint8Array[] = [];
  let batchBytes = 0;
  const control: Uint8Array[] = [];
  let pumping = false;
  let scheduled = false;
  let closeSent = false;
  let finished = false; // connection closed or being closed
  const drainWaiters: (() => void)[] = [];
  let finalCb: ((err?: Error | null) => void) | undefined;
  let readPaused = false;
  let resumeRead: (() => void) | undefined;

  const shutdown = (): void => {
    if (finished) return;
    finished = true;
    try {
      conn.close();
    } catch {
      // already closed
    }
    for (const w of drainWaiters.splice(0)) w();
    resumeRead?.();
  };

  const writeAll = async (data: Uint8Array): Promise<void> => {
    let off = 0;
    while (off < data.length) off += await conn.write(data.subarray(off));
  };

  // One frame buffer, reused: the pump awaits each write before building the next frame.
  let frameBuf = new Uint8Array(0);
  /** Take up to `maxMessage` bytes of the batch as one masked frame. */
  const takeFrame = (): Uint8Array => {
    const len = Math.min(batchBytes, maxMessage);
    if (frameBuf.length < FRAME_PAD + len) {
      frameBuf = new Uint8Array(FRAME_PAD + Math.max(len, 64 * 1024));
    }
    const frame = frameBuf;
    let off = FRAME_PAD;
    while (off < FRAME_PAD + len) {
      const c = batch[0];
      const k = Math.min(c.length, FRAME_PAD + len - off);
      frame.set(k === c.length ? c : c.subarray(0, k), off);
      off += k;
      if (k === c.length) {
        batch.shift();
        // Copied out whole: if it is a packet buffer, the next packet may reuse it.
        releaseBuffer(c);
      } else batch[0] = c.subarray(k);
    }
    batchBytes -= len;
    return sealFrame(frame, OP_BINARY, len);
  };

  let pumped: Promise<void> = Promise.resolve();
  const pump = async (): Promise<void> => {
    scheduled = false;
    if (pumping) return;
    pumping = true;
    try {
      while (!finished && (control.length > 0 || batchBytes > 0)) {
        const frame = control.length > 0 ? control.shift()! : takeFrame();
        if (batchBytes <= highWater && drainWaiters.length > 0) {
          for (const w of drainWaiters.splice(0)) w();
        }
        await writeAll(frame);
      }
      if (finalCb && batchBytes === 0 && !finished) {
        // Everything written is out: now the close frame, then report the end as done.
        const cb = finalCb;
        finalCb = undefined;
        if (!closeSent) {
          closeSent = true;
          await writeAll(encodeClientFrame(OP_CLOSE, new Uint8Array([0x03, 0xe8])));
        }
        cb();
      }
    } catch (err) {
      if (!finished) stream.destroy(new Error(`websocket write: ${(err as Error).message}`));
    } finally {
      pumping = false;
    }
  };

  const schedule = (): void => {
    if (pumping || scheduled) return;
    scheduled = true;
    queueMicrotask(() => {
      pumped = pump();
    });
  };

  const sendControl = (opcode: number, payload: Uint8Array): void => {
    if (finished || closeSent) return;
    if (opcode === OP_CLOSE) closeSent = true;
    control.push(encodeClientFrame(opcode, payload));
    schedule();
  };

  const stream = new Duplex({
    allowHalfOpen: false,
    readableHighWaterMark: 1 << 20,
    writableHighWaterMark: 1 << 20,
    read() {
      if (readPaused) {
        readPaused = false;
        resumeRead?.();
      }
    },
    write(chunk: Buffer, _enc, cb) {
      if (finished || closeSent) return cb(new Error("websocket is closed"));
      batch.push(chunk);
      batchBytes += chunk.length;
      schedule();
      if (batchBytes > highWater) drainWaiters.push(() => cb());
      else cb();
    },
    final(cb) {
      // Everything written goes out, then a normal close; the server answers with its own.
      if (finished) return cb();
      finalCb = cb;
      schedule();
    },
    destroy(err, cb) {
      shutdown();
      cb(err);
    },
  });

  // --- reading -------------------------------------------------------------------------------
  const head = new Uint8Array(14);
  let headLen = 0;
  let need = 2; // header bytes needed so far
  let opcode = 0;
  let remaining = 0; // payload bytes left in the current frame
  let inPayload = false;
  let maskKey: Uint8Array | undefined;
  let maskPos = 0;
  let controlBuf: Uint8Array | undefined;
  let controlPos = 0;
  let closing = false;

  const deliver = (data: Uint8Array): void => {
    if (!stream.push(Buffer.from(data.buffer, data.byteOffset, data.length))) readPaused = true;
  };

  const onControl = (op: number, payload: Uint8Array): void => {
    if (op === OP_PING) sendControl(OP_PONG, payload);
    else if (op === OP_CLOSE) {
      sendControl(OP_CLOSE, payload.length >= 2 ? payload.subarray(0, 2) : new Uint8Array(0));
      closing = true;
    }
  };

  /** Parse `data` (modified in place when masked). Throws on protocol errors. */
  const parse = (data: Uint8Array): void => {
    let p = 0;
    while (p < data.length && !closing) {
      if (!inPayload) {
        while (headLen < need && p < data.length) head[headLen++] = data[p++];
        if (headLen < need) return;
        if (need === 2) {
          const len7 = head[1] & 0x7f;
          need = 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0) + ((head[1] & 0x80) ? 4 : 0);
          if (headLen < need) continue;
        }
        const fin = (head[0] & 0x80) !== 0;
        // No extension is negotiated, so the reserved bits must be clear (RFC 6455 §5.2).
        if ((head[0] & 0x70) !== 0) throw new Error("websocket frame with reserved bits set");
        opcode = head[0] & 0x0f;
        const len7 = head[1] & 0x7f;
        let len = len7;
        let off = 2;
        if (len7 === 126) {
          len = (head[2] << 8) | head[3];
          off = 4;
        } else if (len7 === 127) {
          const hi = ((head[2] << 24) | (head[3] << 16) | (head[4] << 8) | head[5]) >>> 0;
          const lo = ((head[6] << 24) | (head[7] << 16) | (head[8] << 8) | head[9]) >>> 0;
          len = hi * 2 ** 32 + lo;
          off = 10;
        }
        if (len > maxFrame) throw new Error(`websocket frame of ${len} bytes is too large`);
        maskKey = (head[1] & 0x80) ? head.slice(off, off + 4) : undefined;
        maskPos = 0;
        headLen = 0;
        need = 2;
        if (opcode === OP_TEXT) {
          throw new Error("unexpected text message on the tunnel websocket");
        }
        if (opcode >= 0x8) {
          if (len > 125 || !fin) throw new Error("bad websocket control frame");
          controlBuf = new Uint8Array(len);
          controlPos = 0;
        } else if (opcode !== OP_BINARY && opcode !== OP_CONT) {
          throw new Error(`unexpected websocket opcode ${opcode}`);
        }
        remaining = len;
        inPayload = true;
      }
      const k = Math.min(remaining, data.length - p);
      const piece = data.subarray(p, p + k);
      if (maskKey) {
        for (let i = 0; i < k; i++) piece[i] ^= maskKey[(maskPos + i) & 3];
        maskPos += k;
      }
      p += k;
      remaining -= k;
      if (opcode >= 0x8) {
        controlBuf!.set(piece, controlPos);
        controlPos += k;
      } else if (k > 0) deliver(piece);
      if (remaining === 0) {
        inPayload = false;
        if (opcode >= 0x8) onControl(opcode, controlBuf!);
      }
    }
  };

  (async () => {
    try {
      if (initial.length > 0) parse(initial.slice());
      let buf = new Uint8Array(READ_SIZE);
      while (!closing && !finished) {
        if (readPaused) {
          await new Promise<void>((r) => resumeRead = r);
          resumeRead = undefined;
        }
        if (finished) break;
        const n = await conn.read(buf);
        if (n === null) break;
        if (n >= ZERO_COPY_READ) {
          // Hand the bytes on as they are; the next read gets a fresh buffer.
          const got = buf.subarray(0, n);
          buf = new Uint8Array(READ_SIZE);
          parse(got);
        } else {
          parse(buf.slice(0, n));
        }
      }
      if (!stream.destroyed) stream.push(null);
      // Let a close we owe the server go out before the connection goes away.
      await pumped;
      if (control.length > 0) await pump();
    } catch (err) {
      if (!finished && !stream.destroyed) {
        stream.destroy(err instanceof Error ? err : new Error(String(err)));
      }
    } finally {
      shutdown();
      if (!stream.destroyed) stream.destroy();
    }
  })();
  return stream;
}
