/**
 * Chunked transfer coding (RFC 9112 §7.1): an incremental scanner that finds
 * where a chunked body ends in a byte stream, so the proxy can pass chunked
 * bodies through verbatim, and optionally reports the data slices (to
 * de-chunk for HTTP/1.0 clients). Only chunk-size lines and trailers are
 * examined byte by byte; chunk data is skipped over by length.
 *
 * The framing is read strictly, because the bytes go on verbatim to a parser
 * of its own at the other end: every line ends in CRLF (a bare LF is refused,
 * as Go's net/http and llhttp refuse it), no whitespace around the chunk size,
 * chunk extensions must follow the grammar (`;name`, `;name=token`,
 * `;name="quoted"`), and trailer lines must be header fields (token name,
 * colon, value without control characters). Where two parsers could disagree
 * on where a body ends, this one refuses.
 * @module
 */

import type { Buffer } from "node:buffer";
import { TCHAR } from "./head.ts";

const enum State {
  Size,
  ExtNameStart,
  ExtName,
  ExtValueStart,
  ExtToken,
  ExtQuoted,
  ExtQuotedPair,
  ExtQuotedEnd,
  SizeLf,
  Data,
  DataCr,
  DataLf,
  TrailerStart,
  TrailerName,
  TrailerValue,
  TrailerLf,
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
const CR = 0x0d;
const LF = 0x0a;

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  return -1;
}

/** HTAB, SP, visible ASCII and obs-text: what a field value or quoted pair may hold. */
function isFieldByte(c: number): boolean {
  return c === 0x09 || (c >= 0x20 && c !== 0x7f);
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
        case State.Data: {
          const take = Math.min(this.#size, n - i);
          if (onData) onData(buf, i, i + take);
          i += take;
          this.#size -= take;
          if (this.#size === 0) this.#state = State.DataCr;
          break;
        }
        case State.Size:
          this.#sizeByte(buf[i++]);
          break;
        case State.SizeLf:
          if (buf[i++] !== LF) throw new ChunkedError("expected LF after chunk size");
          this.#state = this.#size === 0 ? State.TrailerStart : State.Data;
          break;
        case State.DataCr:
          if (buf[i++] !== CR) throw new ChunkedError("expected CRLF after chunk data");
          this.#state = State.DataLf;
          break;
        case State.DataLf:
          if (buf[i++] !== LF) throw new ChunkedError("expected LF after chunk data");
          this.#state = State.Size;
          this.#digits = 0;
          break;
        case State.FinalLf:
          if (buf[i++] !== LF) throw new ChunkedError("expected LF after trailer section");
          this.#state = State.Done;
          return i;
        case State.Done:
          return i;
        default:
          if (this.#state <= State.ExtQuotedEnd) this.#extByte(buf[i++]);
          else this.#trailerByte(buf[i++]);
      }
    }
    return i;
  }

  #sizeByte(c: number): void {
    const h = hexValue(c);
    if (h >= 0) {
      if (++this.#digits > MAX_SIZE_DIGITS) throw new ChunkedError("chunk size too large");
      this.#size = this.#size * 16 + h;
      return;
    }
    if (this.#digits === 0) throw new ChunkedError("missing chunk size");
    if (c === CR) this.#state = State.SizeLf;
    else if (c === 0x3b) {
      this.#state = State.ExtNameStart;
      this.#line = 0;
    } else throw new ChunkedError("invalid chunk size");
  }

  /** One byte of the chunk extensions: `*( ";" token [ "=" ( token / quoted-string ) ] )`. */
  #extByte(c: number): void {
    if (++this.#line > MAX_LINE) throw new ChunkedError("chunk extension too long");
    switch (this.#state) {
      case State.ExtNameStart:
        if (TCHAR[c]) this.#state = State.ExtName;
        else throw new ChunkedError("invalid chunk extension name");
        return;
      case State.ExtName:
      case State.ExtToken:
        if (TCHAR[c]) return;
        if (c === 0x3d && this.#state === State.ExtName) this.#state = State.ExtValueStart;
        else this.#extEnd(c);
        return;
      case State.ExtValueStart:
        if (TCHAR[c]) this.#state = State.ExtToken;
        else if (c === 0x22) this.#state = State.ExtQuoted;
        else throw new ChunkedError("invalid chunk extension value");
        return;
      case State.ExtQuoted:
        if (c === 0x22) this.#state = State.ExtQuotedEnd;
        else if (c === 0x5c) this.#state = State.ExtQuotedPair;
        else if (!isFieldByte(c)) throw new ChunkedError("invalid byte in quoted chunk extension");
        return;
      case State.ExtQuotedPair:
        if (!isFieldByte(c)) throw new ChunkedError("invalid byte in quoted chunk extension");
        this.#state = State.ExtQuoted;
        return;
      default: // ExtQuotedEnd
        this.#extEnd(c);
    }
  }

  /** After an extension: another one, or the end of the line. */
  #extEnd(c: number): void {
    if (c === 0x3b) this.#state = State.ExtNameStart;
    else if (c === CR) this.#state = State.SizeLf;
    else throw new ChunkedError("invalid chunk extension");
  }

  /** One byte of the trailer section: field lines, then CRLF. */
  #trailerByte(c: number): void {
    if (++this.#trailers > MAX_TRAILERS) throw new ChunkedError("trailer section too large");
    switch (this.#state) {
      case State.TrailerStart:
        if (c === CR) this.#state = State.FinalLf;
        else if (TCHAR[c]) {
          this.#state = State.TrailerName;
          this.#line = 1;
        } else throw new ChunkedError("invalid trailer field");
        return;
      case State.TrailerName:
        if (++this.#line > MAX_LINE) throw new ChunkedError("trailer line too long");
        if (c === 0x3a) this.#state = State.TrailerValue;
        else if (!TCHAR[c]) throw new ChunkedError("invalid trailer field name");
        return;
      case State.TrailerValue:
        if (++this.#line > MAX_LINE) throw new ChunkedError("trailer line too long");
        if (c === CR) this.#state = State.TrailerLf;
        else if (!isFieldByte(c)) throw new ChunkedError("invalid byte in trailer field value");
        return;
      default: // TrailerLf
        if (c !== LF) throw new ChunkedError("expected LF after trailer field");
        this.#state = State.TrailerStart;
    }
  }
}
