/**
 * A WebSocket seen as a Node `Duplex` byte stream, which is what ssh2 runs on:
 * RFC 6455 framing of our own over a `Deno.Conn` whose opening handshake is
 * done, as the client ({@link websocketClientStream}, the agent) or the server
 * ({@link websocketServerStream}, the proxy's agent port).
 *
 * Binary messages carry the SSH byte stream in order; their boundaries mean
 * nothing (SPEC §1). Every batch of writes made in the same tick becomes one
 * frame in one write on a `TCP_NODELAY` socket, so ssh2's many small packet
 * writes do not become many frames or syscalls, and payloads read are handed
 * to ssh2 without copying. (Deno's native `WebSocket` client turns Nagle's
 * algorithm back on and writes a frame's header and payload in two syscalls,
 * which costs a delayed-ACK wait, 40 ms on Linux, per request/response; its
 * server side offers no drain event, only `bufferedAmount` to poll, and comes
 * with `Deno.serve`, which has no timeout for reading a request head.)
 * @module
 */

import { Buffer } from "node:buffer";
import { randomFillSync } from "node:crypto";
import { Duplex } from "node:stream";
import { releaseBuffer, takeBuffer } from "../buffer_pool.ts";

/** Options for {@link websocketClientStream} and {@link websocketServerStream}. */
export interface WsConnStreamOptions {
  /** Pause writers while more than this many bytes wait to be written (default 4 MiB). */
  highWaterMark?: number;
  /**
   * Largest frame payload to send; bigger batches are split (default 512 KiB less the header
   * room: the largest frame the buffer pool serves, so frames are never one-off allocations).
   */
  maxMessage?: number;
  /** Largest frame payload accepted from the peer (default 64 MiB; payloads are streamed). */
  maxFrame?: number;
  /** After our close frame, how long the peer has to answer with its own (default 5 s). */
  closeWaitMs?: number;
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
/**
 * Read buffers start at `MIN_READ`, double after each read that fills one, up to `MAX_READ`,
 * and fall back to `MIN_READ` after a short read. Every connection always has a read pending
 * into its buffer: a proxy with 1,000 mostly idle agents held 1,000 × 256 KiB with a fixed size
 * (proxy RSS 237 → 401 MiB), while bulk transfers still reach 256 KiB reads within four.
 */
const MIN_READ = 16 * 1024;
const MAX_READ = 256 * 1024;

const maskBytes = new Uint8Array(4);
const maskWord = new Uint32Array(maskBytes.buffer);

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
 * Write the frame header for a payload of `len` bytes that starts at `FRAME_PAD` in `frame`,
 * masking the payload in place when `masked` (client frames), and return the frame
 * (header + payload).
 */
function sealFrame(frame: Uint8Array, opcode: number, len: number, masked: boolean): Uint8Array {
  const headLen = len < 126 ? 2 : len < 65536 ? 4 : 10;
  const start = FRAME_PAD - headLen - (masked ? 4 : 0);
  const maskBit = masked ? 0x80 : 0;
  frame[start] = 0x80 | opcode;
  if (len < 126) frame[start + 1] = maskBit | len;
  else if (len < 65536) {
    frame[start + 1] = maskBit | 126;
    frame[start + 2] = len >>> 8;
    frame[start + 3] = len & 0xff;
  } else {
    frame[start + 1] = maskBit | 127;
    const dv = new DataView(frame.buffer, frame.byteOffset + start + 2, 8);
    dv.setUint32(0, Math.floor(len / 2 ** 32));
    dv.setUint32(4, len >>> 0);
  }
  if (masked) {
    const maskAt = FRAME_PAD - 4;
    // The key's bytes on the wire (any 4 random bytes; `frame` need not be 4-byte aligned).
    maskWord[0] = nextMask();
    frame.set(maskBytes, maskAt);
    xorMask(frame.subarray(FRAME_PAD, FRAME_PAD + len), frame.subarray(maskAt, maskAt + 4), 0);
  }
  return frame.subarray(start, FRAME_PAD + len);
}

/**
 * XOR `data` in place with the 4-byte masking `key`, `data[0]` being payload byte `pos` of its
 * frame (RFC 6455 §5.3). Whole words at a time where `data` is 4-byte aligned.
 */
export function xorMask(data: Uint8Array, key: Uint8Array, pos: number): void {
  const n = data.length;
  let i = 0;
  while (i < n && ((data.byteOffset + i) & 3) !== 0) {
    data[i] ^= key[(pos + i) & 3];
    i++;
  }
  const words = (n - i) >>> 2;
  if (words > 0) {
    for (let k = 0; k < 4; k++) maskBytes[k] = key[(pos + i + k) & 3];
    const m = maskWord[0];
    const w = new Uint32Array(data.buffer, data.byteOffset + i, words);
    for (let j = 0; j < words; j++) w[j] ^= m;
    i += words << 2;
  }
  for (; i < n; i++) data[i] ^= key[(pos + i) & 3];
}

/** A frame carrying `payload`, masked when `masked` (for control frames and tests). */
export function encodeFrame(opcode: number, payload: Uint8Array, masked: boolean): Uint8Array {
  const frame = new Uint8Array(FRAME_PAD + payload.length);
  frame.set(payload, FRAME_PAD);
  return sealFrame(frame, opcode, payload.length, masked);
}

/**
 * Speak RFC 6455 as the client over `conn`, whose opening handshake is already done;
 * `initial` holds any bytes read past the handshake response. Frames sent are masked; frames
 * received may be either (a server should not mask, and nothing is lost by reading it anyway).
 * Sets `TCP_NODELAY` when `conn` is TCP. Returns the byte stream carried in binary messages.
 * The stream ends when the server closes; destroying it closes the connection.
 */
export function websocketClientStream(
  conn: Deno.Conn,
  initial: Uint8Array = new Uint8Array(0),
  opts: WsConnStreamOptions = {},
): Duplex {
  return connStream(conn, initial, opts, "client");
}

/**
 * Speak RFC 6455 as the server over `conn`, whose opening handshake (the 101 response) is
 * done; `initial` holds any bytes read past the request head. Frames sent are not masked;
 * an unmasked frame received is a protocol error (RFC 6455 §5.1). Otherwise as
 * {@link websocketClientStream}.
 */
export function websocketServerStream(
  conn: Deno.Conn,
  initial: Uint8Array = new Uint8Array(0),
  opts: WsConnStreamOptions = {},
): Duplex {
  return connStream(conn, initial, opts, "server");
}

/**
 * Speak RFC 6455 as the client over `conn`, whose opening handshake is already done;
 * `initial` holds any bytes read past the handshake response. Sets `TCP_NODELAY` when
 * `conn` is TCP. Returns the byte stream carried in binary messages. The stream ends when
 * the server closes; destroying it closes the connection.
 */
function connStream(
  conn: Deno.Conn,
  initial: Uint8Array,
  opts: WsConnStreamOptions,
  role: "client" | "server",
): Duplex {
  const masked = role === "client";
  const highWater = opts.highWaterMark ?? 4 << 20;
  const maxMessage = opts.maxMessage ?? (512 << 10) - FRAME_PAD;
  const maxFrame = opts.maxFrame ?? 64 << 20;
  const closeWaitMs = opts.closeWaitMs ?? 5_000;
  let closeWait: ReturnType<typeof setTimeout> | undefined;
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
    if (closeWait !== undefined) clearTimeout(closeWait);
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

  /**
   * Where frames are built. The client (an agent: one connection, often sending bulk) keeps one
   * buffer, grown to its largest frame: taking each frame from the shared pool instead cost the
   * agent ~5% of its CPU (profiled) in fresh 512 KiB allocations with a thousand busy streams,
   * whose read slabs churn the pool. The server (the proxy: a connection per
   * agent, mostly idle) takes each frame from the pool and gives it back once written, since a
   * buffer kept per connection cost a proxy with 1,000 agents 64 MiB.
   */
  let frameBuf = new Uint8Array(0);
  let pooledFrame: Uint8Array | undefined;
  /** Take up to `maxMessage` bytes of the batch as one frame. */
  const takeFrame = (): Uint8Array => {
    const len = Math.min(batchBytes, maxMessage);
    let frame: Uint8Array;
    if (role === "server") frame = pooledFrame = takeBuffer(FRAME_PAD + len);
    else {
      if (frameBuf.length < FRAME_PAD + len) {
        frameBuf = new Uint8Array(FRAME_PAD + Math.max(len, 64 * 1024));
      }
      frame = frameBuf;
    }
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
    return sealFrame(frame, OP_BINARY, len, masked);
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
        if (pooledFrame !== undefined) {
          releaseBuffer(pooledFrame);
          pooledFrame = undefined;
        }
      }
      if (finalCb && batchBytes === 0 && !finished) {
        // Everything written is out: now the close frame, then report the end as done.
        const cb = finalCb;
        finalCb = undefined;
        if (!closeSent) {
          closeSent = true;
          await writeAll(encodeFrame(OP_CLOSE, new Uint8Array([0x03, 0xe8]), masked));
          // A peer that never answers does not keep the connection.
          if (!finished) closeWait = setTimeout(shutdown, closeWaitMs);
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
    control.push(encodeFrame(opcode, payload, masked));
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
        if (role === "server" && maskKey === undefined) {
          throw new Error("unmasked websocket frame from a client");
        }
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
        xorMask(piece, maskKey, maskPos);
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
      let buf = new Uint8Array(MIN_READ);
      while (!closing && !finished) {
        if (readPaused) {
          await new Promise<void>((r) => resumeRead = r);
          resumeRead = undefined;
        }
        if (finished) break;
        const n = await conn.read(buf);
        if (n === null) break;
        const size = n === buf.length
          ? Math.min(buf.length * 2, MAX_READ)
          : n < MIN_READ
          ? MIN_READ
          : buf.length;
        if (n >= ZERO_COPY_READ) {
          // Hand the bytes on as they are; the next read gets a fresh buffer.
          const got = buf.subarray(0, n);
          buf = new Uint8Array(size);
          parse(got);
        } else {
          const got = buf.slice(0, n);
          if (size !== buf.length) buf = new Uint8Array(size);
          parse(got);
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
