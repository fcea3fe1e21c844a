/**
 * A WebSocket seen as a Node `Duplex` byte stream, which is what ssh2 runs on.
 *
 * Binary messages carry the SSH byte stream in order; their boundaries mean
 * nothing (SPEC §1). Writes made in the same tick are coalesced into one
 * message, so ssh2's many small packet writes do not become many frames.
 *
 * {@link websocketClientStream} (the agent) and {@link websocketServerStream}
 * (the proxy's agent port) speak RFC 6455 with framing of our own
 * (`ws_frame.ts`) over a `Deno.Conn` whose opening handshake is done. Every
 * batch of writes becomes one frame in one write on a `TCP_NODELAY` socket,
 * and payloads are handed to ssh2 as they are read, never held as whole
 * messages. (Deno's native `WebSocket` client turns Nagle's algorithm back on
 * and writes a frame's header and payload in two syscalls, which costs a
 * delayed-ACK wait, 40 ms on Linux, per request/response; its server side
 * reads each message whole before handing it over, whatever its size, and
 * answers a close by waiting for the peer's close without bound.)
 * @module
 */

import { Buffer } from "node:buffer";
import { Duplex } from "node:stream";
import { releaseBuffer, takeBuffer } from "../buffer_pool.ts";
import {
  CLOSE_NORMAL,
  encodeFrame,
  FRAME_PAD,
  FrameParser,
  OP_BINARY,
  OP_CLOSE,
  OP_PING,
  OP_PONG,
  sealFrame,
  WsProtocolError,
} from "./ws_frame.ts";

export { encodeClientFrame } from "./ws_frame.ts";

/** Options for {@link websocketClientStream} and {@link websocketServerStream}. */
export interface WsConnStreamOptions {
  /** Pause writers while more than this many bytes wait to be written (default 4 MiB). */
  highWaterMark?: number;
  /**
   * Largest frame payload to send; bigger batches are split (default: the client 1 MiB, the
   * server 512 KiB less the header room, the largest buffer the pool serves, so that its
   * frames are never one-off allocations).
   */
  maxMessage?: number;
  /**
   * Largest message accepted from the peer, all its frames together (default 64 MiB; payloads
   * are streamed, never held whole). A longer one is a protocol error (close code 1009).
   */
  maxReceive?: number;
  /**
   * How long the peer has to answer our close frame (after `end()`) before the connection is
   * closed anyway, and how long a close frame explaining a protocol error may take to go out
   * (default 5 s).
   */
  closeWaitMs?: number;
}

/** A WebSocket byte stream over a connection. */
export interface WsConnStream extends Duplex {
  /** Change the largest message accepted from now on (the proxy raises it once authenticated). */
  setMaxReceive(bytes: number): void;
  /**
   * Read into one buffer again and again while `consumerKeepsNothing()` says the reader (ssh2)
   * keeps no reference to what it was handed once it has taken it, instead of handing over each
   * read's buffer and taking a fresh one (the proxy made ~2.4 GB of garbage that way in three
   * passes of the 1,000-stream figure). Checked before and after each read is handed on; the
   * buffer is kept only if the bytes were taken at once (nothing waits in the stream).
   */
  setReadReuse(consumerKeepsNothing: () => boolean): void;
}

/** Client reads: reads at least this large are handed on without copying (a new buffer). */
const ZERO_COPY_READ = 16 * 1024;
/** Client reads: the read size. */
const READ_SIZE = 256 * 1024;
/**
 * Server reads start at `MIN_READ`, double after each read that fills one, up to `MAX_READ`,
 * and fall back to `MIN_READ` after a short read: every connection always has a read pending
 * into its buffer, and a proxy holding 1,000 mostly idle agents at a fixed 256 KiB each went
 * from 237 to 401 MiB RSS, while bulk transfers still reach 256 KiB reads within four.
 */
const MIN_READ = 16 * 1024;
const MAX_READ = 256 * 1024;

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
): WsConnStream {
  return connStream(conn, initial, opts, "client");
}

/**
 * Speak RFC 6455 as the server over `conn`, whose opening handshake (the 101 response) is
 * done; `initial` holds any bytes read past the request head. Frames sent are not masked; an
 * unmasked frame received is a protocol error (RFC 6455 §5.1), and so is a continuation
 * outside a message. On a protocol error a close frame saying why goes out (bounded by
 * `closeWaitMs`) and the connection is closed; `destroy()` closes it at once. Otherwise as
 * {@link websocketClientStream}.
 */
export function websocketServerStream(
  conn: Deno.Conn,
  initial: Uint8Array = new Uint8Array(0),
  opts: WsConnStreamOptions = {},
): WsConnStream {
  return connStream(conn, initial, opts, "server");
}

/** The payload of a close frame: `code`, and a reason cut to fit a control frame. */
function closePayload(code: number, reason = ""): Uint8Array {
  const text = new TextEncoder().encode(reason).subarray(0, 123);
  const out = new Uint8Array(2 + text.length);
  out[0] = code >>> 8;
  out[1] = code & 0xff;
  out.set(text, 2);
  return out;
}

/**
 * The framing of both ends. One closure over a connection's whole state (write batch, control
 * frames, pump, read loop, close handling), which the Duplex callbacks all share: split into
 * pieces, each would need all of it.
 */
function connStream(
  conn: Deno.Conn,
  initial: Uint8Array,
  opts: WsConnStreamOptions,
  role: "client" | "server",
): WsConnStream {
  const masked = role === "client";
  const highWater = opts.highWaterMark ?? 4 << 20;
  const maxMessage = opts.maxMessage ?? (masked ? 1 << 20 : (512 << 10) - FRAME_PAD);
  const closeWaitMs = opts.closeWaitMs ?? 5_000;
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
  /** Destroyed with control frames still to send: close once they are out. */
  let closeWhenFlushed = false;
  let closeTimer: ReturnType<typeof setTimeout> | undefined;
  const drainWaiters: (() => void)[] = [];
  let finalCb: ((err?: Error | null) => void) | undefined;
  let readPaused = false;
  let resumeRead: (() => void) | undefined;

  const shutdown = (): void => {
    if (finished) return;
    finished = true;
    if (closeTimer !== undefined) clearTimeout(closeTimer);
    try {
      conn.close();
    } catch {
      // already closed
    }
    for (const w of drainWaiters.splice(0)) w();
    resumeRead?.();
  };
  /** Close the connection after `closeWaitMs` at the latest. */
  const closeWithin = (): void => {
    if (closeTimer === undefined && !finished) closeTimer = setTimeout(shutdown, closeWaitMs);
  };

  const writeAll = async (data: Uint8Array): Promise<void> => {
    let off = 0;
    while (off < data.length) off += await conn.write(data.subarray(off));
  };

  /**
   * Where frames are built. The client (an agent: one connection, often sending bulk) keeps one
   * buffer, grown to its largest frame. The server (the proxy: a connection per agent, mostly
   * idle) takes each frame from the pool and gives it back once written, since a buffer kept
   * per connection cost a proxy with 1,000 agents 64 MiB.
   */
  let frameBuf = new Uint8Array(0);
  let pooledFrame: Uint8Array | undefined;
  /** Take up to `maxMessage` bytes of the batch as one frame. */
  const takeFrame = (): Uint8Array => {
    const len = Math.min(batchBytes, maxMessage);
    let frame: Uint8Array;
    if (!masked) frame = pooledFrame = takeBuffer(FRAME_PAD + len);
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
      while (!finished && (control.length > 0 || (batchBytes > 0 && !stream.destroyed))) {
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
      if (closeWhenFlushed && control.length === 0) shutdown();
      if (finalCb && batchBytes === 0 && !finished) {
        // Everything written is out: now the close frame, then report the end as done.
        const cb = finalCb;
        finalCb = undefined;
        if (!closeSent) {
          closeSent = true;
          await writeAll(encodeFrame(OP_CLOSE, closePayload(CLOSE_NORMAL), masked));
          // A peer that never answers does not keep the connection.
          closeWithin();
        }
        cb();
      }
    } catch (err) {
      if (!finished && !stream.destroyed) {
        stream.destroy(new Error(`websocket write: ${(err as Error).message}`));
      }
      shutdown();
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
      // Everything written goes out, then a normal close; the peer answers with its own.
      if (finished) return cb();
      finalCb = cb;
      schedule();
    },
    destroy(err, cb) {
      if (err instanceof WsProtocolError && !masked && !finished) {
        // A server tells its client why, briefly: the close frame goes out, then the connection
        // closes. (The agent, as it always has, just closes.)
        sendControl(OP_CLOSE, closePayload(err.code, err.message));
        closeWhenFlushed = true;
        closeWithin();
        schedule();
      } else shutdown();
      cb(err);
    },
  }) as WsConnStream;
  stream.setMaxReceive = (bytes: number) => {
    parser.maxMessage = bytes;
  };
  let keepsNothing: (() => boolean) | undefined;
  stream.setReadReuse = (check: () => boolean) => {
    keepsNothing = check;
  };

  const parser = new FrameParser(role, opts.maxReceive ?? 64 << 20, {
    data(piece) {
      const buf = Buffer.from(piece.buffer, piece.byteOffset, piece.length);
      if (!stream.push(buf)) readPaused = true;
    },
    control(op, payload) {
      if (op === OP_PING) sendControl(OP_PONG, payload);
      else if (op === OP_CLOSE) {
        sendControl(OP_CLOSE, payload.length >= 2 ? payload.subarray(0, 2) : new Uint8Array(0));
      }
    },
  });

  /** The next buffer to read into, given how much the last read got (servers adapt). */
  let buf = new Uint8Array(masked ? READ_SIZE : MIN_READ);
  /** The last read went into `buf` itself, to be reused if its bytes were taken at once. */
  let inPlace = false;
  const readOnce = async (): Promise<Uint8Array | null> => {
    const n = await conn.read(buf);
    if (n === null) return null;
    let size = buf.length;
    if (!masked) {
      size = n === buf.length ? Math.min(size * 2, MAX_READ) : n < MIN_READ ? MIN_READ : size;
    }
    inPlace = keepsNothing?.() === true;
    if (inPlace) {
      const got = buf.subarray(0, n);
      if (size !== buf.length) buf = new Uint8Array(size); // the old one is still parsed below
      return got;
    }
    if (n >= ZERO_COPY_READ) {
      // Hand the bytes on as they are (ssh2 may keep them); the next read gets a fresh buffer.
      const got = buf.subarray(0, n);
      buf = new Uint8Array(size);
      return got;
    }
    const got = buf.slice(0, n);
    if (size !== buf.length) buf = new Uint8Array(size);
    return got;
  };
  /** After `got` was parsed: a reused buffer still referenced (bytes waiting) is replaced. */
  const afterParse = (got: Uint8Array): void => {
    if (!inPlace || got.buffer !== buf.buffer) return;
    if (stream.readableLength > 0 || keepsNothing?.() !== true) buf = new Uint8Array(buf.length);
  };

  (async () => {
    try {
      if (initial.length > 0) parser.parse(initial.slice());
      while (!parser.closed && !finished) {
        if (readPaused) {
          await new Promise<void>((r) => resumeRead = r);
          resumeRead = undefined;
        }
        if (finished) break;
        const got = await readOnce();
        if (got === null) break;
        parser.parse(got);
        afterParse(got);
      }
      if (!stream.destroyed) stream.push(null);
      // Let a close we owe the peer go out before the connection goes away.
      await pumped;
      if (control.length > 0) await pump();
      shutdown();
    } catch (err) {
      if (!finished && !stream.destroyed) {
        stream.destroy(err instanceof Error ? err : new Error(String(err)));
      } else if (!closeWhenFlushed) shutdown();
    }
    if (!stream.destroyed) stream.destroy();
  })();
  return stream;
}
