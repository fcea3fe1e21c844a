/**
 * Chunked transfer coding (RFC 9112 §7.1): an incremental scanner that finds
 * where a chunked body ends in a byte stream, so the proxy can pass chunked
 * bodies through verbatim, and optionally reports the data slices (to
 * de-chunk for HTTP/1.0 clients). Only chunk-size lines and trailers are
 * examined byte by byte; chunk data is skipped over by length.
 * @module
 */

import type { Buffer } from "node:buffer";

const enum State {
  Size,
  Ext,
  SizeLf,
  Data,
  DataCr,
  DataLf,
  TrailerStart,
  Trailer,
  FinalLf,
  Done,
}

/** A malformed chunked body. */
export class ChunkedError extends Error {
  constructor(message: string) {
    super(`chunked body: ${message}`);
    this.name = "ChunkedError";
  }
}

const MAX_SIZE_DIGITS = 13; // < 2^52: exact in a double.
const MAX_LINE = 4096; // chunk extensions and each trailer line.
const MAX_TRAILERS = 64 * 1024;

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  return -1;
}

/** Incremental chunked-body scanner. Feed it consecutive slices of the stream with {@link scan}. */
export class ChunkedScanner {
  #state = State.Size;
  #digits = 0;
  #size = 0;
  #line = 0;
  #trailers = 0;

  /** Whether the terminating zero chunk and trailer section have been seen. */
  get done(): boolean {
    return this.#state === State.Done;
  }

  /**
   * Scan `buf[start, buf.length)`; returns the index just past the end of the body when it ends
   * inside, else `buf.length`. `onData(buf, a, b)` receives each run of chunk data.
   * Throws {@link ChunkedError} when the framing is malformed.
   */
  scan(buf: Buffer, start = 0, onData?: (buf: Buffer, a: number, b: number) => void): number {
    let i = start;
    const n = buf.length;
    while (i < n) {
      switch (this.#state) {
        case State.Size: {
          const c = buf[i];
          const h = hexValue(c);
          if (h >= 0) {
            if (++this.#digits > MAX_SIZE_DIGITS) throw new ChunkedError("chunk size too large");
            this.#size = this.#size * 16 + h;
            i++;
            break;
          }
          if (this.#digits === 0) throw new ChunkedError("missing chunk size");
          if (c === 0x0d) this.#state = State.SizeLf;
          else if (c === 0x0a) {
            this.#afterSizeLine();
          } else if (c === 0x3b || c === 0x20 || c === 0x09) {
            this.#state = State.Ext;
            this.#line = 0;
          } else throw new ChunkedError("invalid chunk size");
          i++;
          break;
        }
        case State.Ext: {
          const c = buf[i++];
          if (c === 0x0d) this.#state = State.SizeLf;
          else if (c === 0x0a) this.#afterSizeLine();
          else if (++this.#line > MAX_LINE) throw new ChunkedError("chunk extension too long");
          break;
        }
        case State.SizeLf:
          if (buf[i++] !== 0x0a) throw new ChunkedError("expected LF after chunk size");
          this.#afterSizeLine();
          break;
        case State.Data: {
          const take = Math.min(this.#size, n - i);
          if (onData) onData(buf, i, i + take);
          i += take;
          this.#size -= take;
          if (this.#size === 0) this.#state = State.DataCr;
          break;
        }
        case State.DataCr: {
          const c = buf[i++];
          if (c === 0x0d) this.#state = State.DataLf;
          else if (c === 0x0a) this.#nextChunk();
          else throw new ChunkedError("expected CRLF after chunk data");
          break;
        }
        case State.DataLf:
          if (buf[i++] !== 0x0a) throw new ChunkedError("expected LF after chunk data");
          this.#nextChunk();
          break;
        case State.TrailerStart: {
          const c = buf[i++];
          if (c === 0x0d) this.#state = State.FinalLf;
          else if (c === 0x0a) {
            this.#state = State.Done;
            return i;
          } else {
            this.#state = State.Trailer;
            this.#line = 1;
            this.#countTrailer();
          }
          break;
        }
        case State.Trailer: {
          const lf = buf.indexOf(0x0a, i);
          const end = lf < 0 ? n : lf + 1;
          this.#line += end - i;
          this.#trailers += end - i;
          if (this.#line > MAX_LINE || this.#trailers > MAX_TRAILERS) {
            throw new ChunkedError("trailer section too large");
          }
          i = end;
          if (lf >= 0) this.#state = State.TrailerStart;
          break;
        }
        case State.FinalLf:
          if (buf[i++] !== 0x0a) throw new ChunkedError("expected LF after trailer section");
          this.#state = State.Done;
          return i;
        case State.Done:
          return i;
      }
    }
    return i;
  }

  #afterSizeLine(): void {
    this.#state = this.#size === 0 ? State.TrailerStart : State.Data;
  }

  #nextChunk(): void {
    this.#state = State.Size;
    this.#digits = 0;
    this.#size = 0;
  }

  #countTrailer(): void {
    if (++this.#trailers > MAX_TRAILERS) throw new ChunkedError("trailer section too large");
  }
}
