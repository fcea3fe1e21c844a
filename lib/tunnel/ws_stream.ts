/**
 * A WebSocket seen as a Node `Duplex` byte stream, which is what ssh2 runs on.
 *
 * Binary messages carry the SSH byte stream in order; their boundaries mean
 * nothing (docs/protocol.md §1). Writes made in the same tick are coalesced into one
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

/** The framing of both ends: a {@link WsLink} over `conn`, its read loop started. */
function connStream(
  conn: Deno.Conn,
  initial: Uint8Array,
  opts: WsConnStreamOptions,
  role: "client" | "server",
): WsConnStream {
  const link = new WsLink(conn, opts, role);
  link.readLoop(initial);
  return link.stream;
}

/**
 * One connection's framing state, shared by the write side (a batch of writes and queued
 * control frames, pumped out as frames), the read side (a read loop feeding a
 * {@link FrameParser}) and the close handling; {@link WsLink.stream} is the byte stream.
 */
class WsLink {
  /** The byte stream carried in binary messages. */
  readonly stream: WsConnStream;
  readonly #conn: Deno.Conn;
  readonly #masked: boolean;
  readonly #highWater: number;
  readonly #maxMessage: number;
  readonly #closeWaitMs: number;
  readonly #parser: FrameParser;

  // Write side.
  readonly #batch: Uint8Array[] = [];
  #batchBytes = 0;
  readonly #control: Uint8Array[] = [];
  #pumping = false;
  #scheduled = false;
  #pumped: Promise<void> = Promise.resolve();
  readonly #drainWaiters: (() => void)[] = [];
  #finalCb: ((err?: Error | null) => void) | undefined;
  /**
   * Where frames are built. The client (an agent: one connection, often sending bulk) keeps one
   * buffer, grown to its largest frame. The server (the proxy: a connection per agent, mostly
   * idle) takes each frame from the pool and gives it back once written, since a buffer kept
   * per connection cost a proxy with 1,000 agents 64 MiB.
   */
  #frameBuf = new Uint8Array(0);
  #pooledFrame: Uint8Array | undefined;

  // Close handling.
  #closeSent = false;
  /** Connection closed or being closed. */
  #finished = false;
  /** Destroyed with control frames still to send: close once they are out. */
  #closeWhenFlushed = false;
  #closeTimer: ReturnType<typeof setTimeout> | undefined;

  // Read side.
  #readPaused = false;
  #resumeRead: (() => void) | undefined;
  #keepsNothing: (() => boolean) | undefined;
  /** The next buffer to read into, given how much the last read got (servers adapt). */
  #buf: Uint8Array;
  /** The last read went into `#buf` itself, to be reused if its bytes were taken at once. */
  #inPlace = false;

  constructor(conn: Deno.Conn, opts: WsConnStreamOptions, role: "client" | "server") {
    this.#conn = conn;
    this.#masked = role === "client";
    this.#highWater = opts.highWaterMark ?? 4 << 20;
    this.#maxMessage = opts.maxMessage ?? (this.#masked ? 1 << 20 : (512 << 10) - FRAME_PAD);
    this.#closeWaitMs = opts.closeWaitMs ?? 5_000;
    this.#buf = new Uint8Array(this.#masked ? READ_SIZE : MIN_READ);
    try {
      (conn as Deno.TcpConn).setNoDelay?.(true);
    } catch {
      // not TCP (or already closed): nothing to tune
    }
    this.stream = this.#makeStream();
    this.#parser = new FrameParser(role, opts.maxReceive ?? 64 << 20, {
      data: (piece) => {
        const buf = Buffer.from(piece.buffer, piece.byteOffset, piece.length);
        if (!this.stream.push(buf)) this.#readPaused = true;
      },
      control: (op, payload) => {
        if (op === OP_PING) this.#sendControl(OP_PONG, payload);
        else if (op === OP_CLOSE) {
          this.#sendControl(
            OP_CLOSE,
            payload.length >= 2 ? payload.subarray(0, 2) : new Uint8Array(0),
          );
        }
      },
    });
  }

  /** The Duplex whose callbacks are this link's write side and close handling. */
  #makeStream(): WsConnStream {
    const stream = new Duplex({
      allowHalfOpen: false,
      readableHighWaterMark: 1 << 20,
      writableHighWaterMark: 1 << 20,
      read: () => {
        if (this.#readPaused) {
          this.#readPaused = false;
          this.#resumeRead?.();
        }
      },
      write: (chunk: Buffer, _enc, cb) => this.#write(chunk, cb),
      final: (cb) => this.#final(cb),
      destroy: (err, cb) => {
        this.#destroy(err);
        cb(err);
      },
    }) as WsConnStream;
    stream.setMaxReceive = (bytes: number) => {
      this.#parser.maxMessage = bytes;
    };
    stream.setReadReuse = (check: () => boolean) => {
      this.#keepsNothing = check;
    };
    return stream;
  }

  // --- Close handling -------------------------------------------------------------------------

  #shutdown(): void {
    if (this.#finished) return;
    this.#finished = true;
    if (this.#closeTimer !== undefined) clearTimeout(this.#closeTimer);
    try {
      this.#conn.close();
    } catch {
      // already closed
    }
    for (const w of this.#drainWaiters.splice(0)) w();
    this.#resumeRead?.();
  }

  /** Close the connection after `closeWaitMs` at the latest. */
  #closeWithin(): void {
    if (this.#closeTimer === undefined && !this.#finished) {
      this.#closeTimer = setTimeout(() => this.#shutdown(), this.#closeWaitMs);
    }
  }

  /** Duplex `destroy`. */
  #destroy(err: Error | null): void {
    if (err instanceof WsProtocolError && !this.#masked && !this.#finished) {
      // A server tells its client why, briefly: the close frame goes out, then the connection
      // closes. (The agent, as it always has, just closes.)
      this.#sendControl(OP_CLOSE, closePayload(err.code, err.message));
      this.#closeWhenFlushed = true;
      this.#closeWithin();
      this.#schedule();
    } else this.#shutdown();
  }

  // --- Write side -----------------------------------------------------------------------------

  /** Duplex `write`: batched until the pump runs; calls back at once below the high water. */
  #write(chunk: Buffer, cb: (err?: Error | null) => void): void {
    if (this.#finished || this.#closeSent) return cb(new Error("websocket is closed"));
    this.#batch.push(chunk);
    this.#batchBytes += chunk.length;
    this.#schedule();
    if (this.#batchBytes > this.#highWater) this.#drainWaiters.push(() => cb());
    else cb();
  }

  /** Duplex `final`: everything written goes out, then a normal close; the peer answers. */
  #final(cb: (err?: Error | null) => void): void {
    if (this.#finished) return cb();
    this.#finalCb = cb;
    this.#schedule();
  }

  #sendControl(opcode: number, payload: Uint8Array): void {
    if (this.#finished || this.#closeSent) return;
    if (opcode === OP_CLOSE) this.#closeSent = true;
    this.#control.push(encodeFrame(opcode, payload, this.#masked));
    this.#schedule();
  }

  /** Pump once the current tick's writes are in: they go out as one frame. */
  #schedule(): void {
    if (this.#pumping || this.#scheduled) return;
    this.#scheduled = true;
    queueMicrotask(() => {
      this.#pumped = this.#pump();
    });
  }

  async #writeAll(data: Uint8Array): Promise<void> {
    let off = 0;
    while (off < data.length) off += await this.#conn.write(data.subarray(off));
  }

  /** Write control frames and the batch as frames until both are empty, then a pending end. */
  async #pump(): Promise<void> {
    this.#scheduled = false;
    if (this.#pumping) return;
    this.#pumping = true;
    try {
      while (
        !this.#finished &&
        (this.#control.length > 0 || (this.#batchBytes > 0 && !this.stream.destroyed))
      ) {
        const frame = this.#control.length > 0 ? this.#control.shift()! : this.#takeFrame();
        if (this.#batchBytes <= this.#highWater && this.#drainWaiters.length > 0) {
          for (const w of this.#drainWaiters.splice(0)) w();
        }
        await this.#writeAll(frame);
        if (this.#pooledFrame !== undefined) {
          releaseBuffer(this.#pooledFrame);
          this.#pooledFrame = undefined;
        }
      }
      if (this.#closeWhenFlushed && this.#control.length === 0) this.#shutdown();
      if (this.#finalCb && this.#batchBytes === 0 && !this.#finished) await this.#finish();
    } catch (err) {
      if (!this.#finished && !this.stream.destroyed) {
        this.stream.destroy(new Error(`websocket write: ${(err as Error).message}`));
      }
      this.#shutdown();
    } finally {
      this.#pumping = false;
    }
  }

  /** Everything written is out: now the close frame, then report the end as done. */
  async #finish(): Promise<void> {
    const cb = this.#finalCb!;
    this.#finalCb = undefined;
    if (!this.#closeSent) {
      this.#closeSent = true;
      await this.#writeAll(encodeFrame(OP_CLOSE, closePayload(CLOSE_NORMAL), this.#masked));
      // A peer that never answers does not keep the connection.
      this.#closeWithin();
    }
    cb();
  }

  /** Take up to `maxMessage` bytes of the batch as one frame. */
  #takeFrame(): Uint8Array {
    const batch = this.#batch;
    const len = Math.min(this.#batchBytes, this.#maxMessage);
    let frame: Uint8Array;
    if (!this.#masked) frame = this.#pooledFrame = takeBuffer(FRAME_PAD + len);
    else {
      if (this.#frameBuf.length < FRAME_PAD + len) {
        this.#frameBuf = new Uint8Array(FRAME_PAD + Math.max(len, 64 * 1024));
      }
      frame = this.#frameBuf;
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
    this.#batchBytes -= len;
    return sealFrame(frame, OP_BINARY, len, this.#masked);
  }

  // --- Read side ------------------------------------------------------------------------------

  /**
   * Parse `initial`, then read and parse until the peer's close frame, the connection's end or
   * our shutdown; pauses while the stream's reader does. Runs in the background.
   */
  async readLoop(initial: Uint8Array): Promise<void> {
    const stream = this.stream;
    try {
      if (initial.length > 0) this.#parser.parse(initial.slice());
      while (!this.#parser.closed && !this.#finished) {
        if (this.#readPaused) {
          await new Promise<void>((r) => this.#resumeRead = r);
          this.#resumeRead = undefined;
        }
        if (this.#finished) break;
        const got = await this.#readOnce();
        if (got === null) break;
        this.#parser.parse(got);
        this.#afterParse(got);
      }
      if (!stream.destroyed) stream.push(null);
      // Let a close we owe the peer go out before the connection goes away.
      await this.#pumped;
      if (this.#control.length > 0) await this.#pump();
      this.#shutdown();
    } catch (err) {
      if (!this.#finished && !stream.destroyed) {
        stream.destroy(err instanceof Error ? err : new Error(String(err)));
      } else if (!this.#closeWhenFlushed) this.#shutdown();
    }
    if (!stream.destroyed) stream.destroy();
  }

  /** One read: the bytes to parse (see {@link WsConnStream.setReadReuse}), or null at the end. */
  async #readOnce(): Promise<Uint8Array | null> {
    let buf = this.#buf;
    const n = await this.#conn.read(buf);
    if (n === null) return null;
    let size = buf.length;
    if (!this.#masked) {
      size = n === buf.length ? Math.min(size * 2, MAX_READ) : n < MIN_READ ? MIN_READ : size;
    }
    this.#inPlace = this.#keepsNothing?.() === true;
    let got: Uint8Array;
    if (this.#inPlace) {
      got = buf.subarray(0, n);
      if (size !== buf.length) buf = new Uint8Array(size); // the old one is still parsed below
    } else if (n >= ZERO_COPY_READ) {
      // Hand the bytes on as they are (ssh2 may keep them); the next read gets a fresh buffer.
      got = buf.subarray(0, n);
      buf = new Uint8Array(size);
    } else {
      got = buf.slice(0, n);
      if (size !== buf.length) buf = new Uint8Array(size);
    }
    this.#buf = buf;
    return got;
  }

  /** After `got` was parsed: a reused buffer still referenced (bytes waiting) is replaced. */
  #afterParse(got: Uint8Array): void {
    if (!this.#inPlace || got.buffer !== this.#buf.buffer) return;
    if (this.stream.readableLength > 0 || this.#keepsNothing?.() !== true) {
      this.#buf = new Uint8Array(this.#buf.length);
    }
  }
}
