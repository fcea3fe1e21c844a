/**
 * A byte stream seen as a sequence of HTTP messages: {@link Wire} hands the
 * bytes of a `Duplex` to one consumer at a time (a head reader, a body pump,
 * an idle watcher), keeps what a consumer hands back (bytes past the end of a
 * message) for the next one, and buffers a bounded amount while nobody
 * consumes. {@link readHead} reads a message head; {@link pumpBody} forwards a
 * body to a `Writable` by its framing, chunk by chunk without copying, pausing
 * the source while the destination is full (backpressure).
 * @module
 */

import { Buffer } from "node:buffer";
import type { Duplex, Writable } from "node:stream";
import { ChunkedScanner } from "./chunked.ts";
import type { Deadline, Deadlines } from "./deadlines.ts";
import { DEFAULT_HEAD_LIMITS, findHeadEnd, type Framing, HttpParseError } from "./head.ts";

/** What a {@link Wire} pauses and resumes for backpressure (a stream, or a gate under one). */
export interface FlowControl {
  pause(): unknown;
  resume(): unknown;
}

/** Consumer of a {@link Wire}'s bytes. */
export interface WireSink {
  /** Bytes, in order. The sink may call `pause`, `unshift`, `setSink` from here. */
  onData(chunk: Buffer): void;
  /** The peer finished sending (every byte was delivered before). */
  onEnd(): void;
  /** The stream closed or failed; `err` is set on failure. Called after `onEnd` on a clean close. */
  onClose(err: Error | undefined): void;
}

/** The stream ended or closed before a complete message arrived. */
export class WireClosedError extends Error {
  constructor(message: string, readonly received: number, options?: ErrorOptions) {
    super(message, options);
    this.name = "WireClosedError";
  }
}

/** A `Duplex` whose incoming bytes go to one {@link WireSink} at a time. */
export class Wire {
  readonly stream: Duplex;
  /** The peer sent EOF. */
  eof = false;
  /** The stream closed. */
  closed = false;
  /** Why the stream failed, if it did. */
  error: Error | undefined;
  #pending: Buffer[] = [];
  #pendingBytes = 0;
  #sink: WireSink | null = null;
  #paused = false;
  #streamPaused = false;
  #flushing = false;
  #endDelivered = false;
  #closeDelivered = false;
  readonly #maxBuffered: number;
  readonly #flow: FlowControl;

  /**
   * `maxBuffered`: bytes kept while no sink consumes before the stream is paused. `flow`: what to
   * pause for backpressure, when not `stream` itself: the tunnel stream under a TLS stream (see
   * `conn.ts`).
   */
  constructor(stream: Duplex, maxBuffered = 64 * 1024, flow: FlowControl = stream) {
    this.stream = stream;
    this.#maxBuffered = maxBuffered;
    this.#flow = flow;
    stream.on("data", this.#onData);
    stream.on("end", this.#onEnd);
    stream.on("error", this.#onError);
    stream.on("close", this.#onClose);
    if (stream.destroyed) queueMicrotask(() => this.#onClose());
  }

  /** Bytes held for the next sink. */
  get buffered(): number {
    return this.#pendingBytes;
  }

  /** Give the bytes to `sink` from now on (null: hold them). Held bytes go first. */
  setSink(sink: WireSink | null): void {
    this.#sink = sink;
    this.#endDelivered = false;
    this.#closeDelivered = false;
    this.#flush();
    this.#updateFlow();
  }

  /** Put bytes back in front of what is held (they go to the next sink first). */
  unshift(buf: Buffer): void {
    if (buf.length === 0) return;
    this.#pending.unshift(buf);
    this.#pendingBytes += buf.length;
  }

  /** Stop delivering (backpressure); bytes arriving meanwhile are held. */
  pause(): void {
    this.#paused = true;
    this.#updateFlow();
  }

  /** Resume delivering after {@link pause}. */
  resume(): void {
    this.#paused = false;
    this.#flush();
    this.#updateFlow();
  }

  /** Destroy the stream. */
  destroy(err?: Error): void {
    this.stream.destroy(err);
  }

  #onData = (chunk: Buffer): void => {
    if (this.#sink && !this.#paused && this.#pendingBytes === 0 && !this.#flushing) {
      this.#sink.onData(chunk);
    } else {
      this.#pending.push(chunk);
      this.#pendingBytes += chunk.length;
      this.#flush();
    }
    this.#updateFlow();
  };

  #onEnd = (): void => {
    this.eof = true;
    this.#flush();
  };

  #onError = (err: Error): void => {
    this.error ??= err;
  };

  #onClose = (): void => {
    this.closed = true;
    if (this.error && this.#sink && !this.#closeDelivered) {
      // A failure is reported at once, even with bytes held.
      this.#closeDelivered = true;
      this.#sink.onClose(this.error);
      return;
    }
    this.#flush();
  };

  #flush(): void {
    if (this.#flushing) return;
    this.#flushing = true;
    try {
      while (this.#sink && !this.#paused && this.#pending.length > 0) {
        const chunk = this.#pending.shift()!;
        this.#pendingBytes -= chunk.length;
        this.#sink.onData(chunk);
      }
      if (this.#pending.length > 0 || this.#paused) return;
      if (this.eof && this.#sink && !this.#endDelivered) {
        this.#endDelivered = true;
        this.#sink.onEnd();
      }
      if (this.closed && this.#sink && !this.#closeDelivered) {
        this.#closeDelivered = true;
        this.#sink.onClose(this.error);
      }
    } finally {
      this.#flushing = false;
    }
  }

  #updateFlow(): void {
    const pause = this.#paused || (!this.#sink && this.#pendingBytes >= this.#maxBuffered);
    if (pause && !this.#streamPaused) {
      this.#streamPaused = true;
      this.#flow.pause();
    } else if (!pause && this.#streamPaused) {
      this.#streamPaused = false;
      this.#flow.resume();
    }
  }
}

/**
 * Read one head from `wire`: resolves the head bytes and their length (the rest stays held in
 * the wire), or null when the stream ended cleanly before any byte. Rejects with
 * {@link HttpParseError} (431) past `maxBytes`, {@link WireClosedError} when the stream ends or
 * closes mid-head or `idle.ms` elapses first (timed by `idle.deadlines`, which a server shares
 * among its connections).
 */
export function readHead(
  wire: Wire,
  opts: { maxBytes?: number; idle?: { ms: number; deadlines: Deadlines } } = {},
): Promise<{ buf: Buffer; end: number } | null> {
  const maxBytes = opts.maxBytes ?? DEFAULT_HEAD_LIMITS.maxBytes;
  return new Promise((resolve, reject) => {
    let acc: Buffer | null = null;
    let len = 0;
    const idle = opts.idle;
    let deadline: Deadline | undefined;
    const finish = (err: Error | null, value?: { buf: Buffer; end: number } | null) => {
      if (deadline !== undefined) idle!.deadlines.cancel(deadline);
      deadline = undefined;
      wire.setSink(null);
      if (err) reject(err);
      else resolve(value ?? null);
    };
    if (idle) {
      deadline = idle.deadlines.add(idle.ms, () => {
        deadline = undefined;
        finish(new WireClosedError(`no complete head within ${idle.ms} ms`, len));
      });
    }
    wire.setSink({
      onData(chunk) {
        let end: number;
        if (len === 0) {
          // Common case: the whole head in one chunk.
          end = findHeadEnd(chunk, chunk.length);
          if (end >= 0 && end <= maxBytes) {
            wire.setSink(null);
            wire.unshift(chunk.subarray(end));
            finish(null, { buf: chunk, end });
            return;
          }
        }
        if (acc === null || acc.length < len + chunk.length) {
          // Doubling, but never much past the limit: a client sending a huge head holds at most
          // `maxBytes` and one chunk before it is refused.
          const want = Math.max(1024, Math.min((len + chunk.length) * 2, maxBytes + 1024));
          const grown = Buffer.allocUnsafe(Math.max(want, len + chunk.length));
          if (acc !== null) acc.copy(grown, 0, 0, len);
          acc = grown;
        }
        chunk.copy(acc, len);
        const from = len;
        len += chunk.length;
        const buf = acc;
        end = findHeadEnd(buf, len, from);
        if (end < 0) {
          if (len > maxBytes) finish(new HttpParseError(431, `head larger than ${maxBytes} bytes`));
          return;
        }
        if (end > maxBytes) {
          finish(new HttpParseError(431, `head larger than ${maxBytes} bytes`));
          return;
        }
        wire.setSink(null);
        // Bytes past the head belong to the body or the next message: hand them back.
        const rest = chunk.subarray(chunk.length - (len - end));
        wire.unshift(rest);
        finish(null, { buf, end });
      },
      onEnd() {
        if (len === 0) finish(null, null);
        else finish(new WireClosedError("stream ended inside a message head", len));
      },
      onClose(err) {
        finish(
          new WireClosedError(
            err ? `stream failed: ${err.message}` : "stream closed",
            len,
            { cause: err },
          ),
        );
      },
    });
  });
}

/** Progress of a {@link pumpBody}. */
export interface PumpCounter {
  /** Body bytes forwarded so far (framing bytes included when passed through). */
  bytes: number;
}

/** How {@link pumpBody} writes what it reads. */
export type PumpMode =
  /** Bytes as received (framing included). */
  | "raw"
  /** Chunked in, chunk data only out (for HTTP/1.0 clients). */
  | "dechunk"
  /** Close-delimited in, chunked out (for HTTP/1.1 clients). */
  | "chunk";

const CRLF = Buffer.from("\r\n", "latin1");
const LAST_CHUNK = Buffer.from("0\r\n\r\n", "latin1");

/** A body went past the size limit given to {@link pumpBody}. */
export class BodyTooLargeError extends Error {
  constructor(readonly limit: number) {
    super(`request body larger than the limit of ${limit} bytes`);
    this.name = "BodyTooLargeError";
  }
}

/**
 * Forward one body framed by `framing` from `src` to `dest`, respecting backpressure. Resolves
 * when the body is complete (bytes past it stay held in `src`; `dest` is not ended), rejects when
 * `src` ends early or fails, or the framing is malformed. With `framing.kind === "close"` the
 * body ends at EOF; `endDest` then ends `dest` too (half-close).
 *
 * `dest` going away is not `src`'s failure: once `dest` is no longer writable (its peer closed
 * it, or it ended), the rest of the body is still read from `src` to its end and dropped, so
 * that `src` is neither stalled nor torn down, and whatever else reads it or writes to it
 * carries on (an upgraded stream's other direction).
 */
export function pumpBody(
  src: Wire,
  framing: Framing,
  dest: Writable,
  counter: PumpCounter,
  opts: { mode?: PumpMode; endDest?: boolean; signal?: AbortSignal; limit?: number } = {},
): Promise<void> {
  const mode = opts.mode ?? "raw";
  if (framing.kind === "none") return Promise.resolve();
  const signal = opts.signal;
  if (signal?.aborted) return Promise.reject(new Error("body forwarding cancelled"));
  return new Promise((resolve, reject) => {
    let remaining = framing.kind === "length" ? framing.length : 0;
    const scanner = framing.kind === "chunked" ? new ChunkedScanner() : null;
    let waitingDrain = false;
    let settled = false;
    const onDrain = () => {
      waitingDrain = false;
      dest.off("drain", onDrain);
      dest.off("close", onDrain);
      if (!settled) src.resume();
    };
    const onAbort = () => settle(new Error("body forwarding cancelled"));
    const settle = (err: Error | null) => {
      if (settled) return;
      settled = true;
      signal?.removeEventListener("abort", onAbort);
      src.setSink(null);
      if (waitingDrain) {
        dest.off("drain", onDrain);
        dest.off("close", onDrain);
        src.resume();
      }
      if (err) reject(err);
      else resolve();
    };
    const write = (part: Buffer): boolean => {
      counter.bytes += part.length;
      if (opts.limit !== undefined && counter.bytes > opts.limit) {
        settle(new BodyTooLargeError(opts.limit));
        return true;
      }
      if (!dest.writable) return true; // dest gone: read on, drop
      if (mode !== "chunk") return dest.write(part);
      dest.cork();
      dest.write(part.length.toString(16) + "\r\n", "latin1");
      dest.write(part);
      const ok = dest.write(CRLF);
      dest.uncork();
      return ok;
    };
    let dechunkOk = true;
    const dechunkWrite = (buf: Buffer, a: number, b: number) => {
      if (b <= a) return;
      counter.bytes += b - a;
      if (!dest.writable) return;
      if (!dest.write(a === 0 && b === buf.length ? buf : buf.subarray(a, b))) dechunkOk = false;
    };
    signal?.addEventListener("abort", onAbort);
    src.setSink({
      onData(chunk) {
        let take = chunk.length;
        let done = false;
        if (framing.kind === "length") {
          if (take >= remaining) {
            take = remaining;
            done = true;
          }
          remaining -= take;
        } else if (scanner) {
          try {
            if (mode === "dechunk") {
              dechunkOk = true;
              take = scanner.scan(chunk, 0, dechunkWrite);
            } else take = scanner.scan(chunk, 0);
          } catch (err) {
            settle(err as Error);
            return;
          }
          done = scanner.done;
        }
        if (done) {
          src.setSink(null);
          if (take < chunk.length) src.unshift(chunk.subarray(take));
        }
        let ok = true;
        if (mode === "dechunk" && scanner) ok = dechunkOk;
        else if (take > 0) ok = write(take === chunk.length ? chunk : chunk.subarray(0, take));
        if (done) settle(null);
        else if (!ok && !waitingDrain && dest.writable) {
          // (A dest that stopped being writable in that write never drains: read on.)
          waitingDrain = true;
          src.pause();
          dest.on("drain", onDrain);
          dest.on("close", onDrain);
        }
      },
      onEnd() {
        if (framing.kind !== "close") {
          settle(new WireClosedError("stream ended inside a message body", counter.bytes));
          return;
        }
        if (dest.writable) {
          if (mode === "chunk") dest.write(LAST_CHUNK);
          if (opts.endDest) dest.end();
        }
        settle(null);
      },
      onClose(err) {
        settle(
          new WireClosedError(
            err ? `stream failed: ${err.message}` : "stream closed inside a message body",
            counter.bytes,
            { cause: err },
          ),
        );
      },
    });
  });
}
