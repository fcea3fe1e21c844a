/**
 * A session's budget for bytes in flight outward: the buffers its streams read from their local
 * sockets into, from the moment a read is started (a pending read holds its buffer) until the
 * SSH channel has taken the chunk read (the peer's window and the transport allowing).
 *
 * A stream reads at most its share at a time and holds at most its share: the limit divided
 * among the session's streams, between {@link MIN_SHARE} and {@link MAX_SHARE}, as a power of two
 * (five buffer sizes, which the buffer pool keeps and reuses). So one bulk stream moves 256 KiB at
 * a time while each of a thousand streams reads 16 KiB. A stream also starts a read only while the
 * session's held bytes and the read fit in the limit, except that a stream holding nothing may
 * always read {@link MIN_SHARE}: no stream waits on the others, and a session holds at most
 * `limit` plus 16 KiB per stream.
 * @module
 */

/** The smallest read, which a stream holding nothing may always make. */
export const MIN_SHARE = 16 * 1024;
/** The largest read (the largest SSH packet a Tower end accepts carries 256 KiB). */
export const MAX_SHARE = 256 * 1024;
/** Default per-session limit. */
export const DEFAULT_SEND_BUDGET = 16 * 1024 * 1024;

/** See the module doc. */
export class SendBudget {
  /** Bytes the session's streams may hold together (see the module doc). */
  readonly limit: number;
  #streams = 0;
  #bytes = 0;

  constructor(limit: number = DEFAULT_SEND_BUDGET) {
    this.limit = limit;
  }

  /** Streams sharing the budget. */
  get streams(): number {
    return this.#streams;
  }

  /** Bytes held now. */
  get bytes(): number {
    return this.#bytes;
  }

  /** A stream starts sharing the budget. */
  join(): void {
    this.#streams++;
  }

  /** A stream stops sharing it (what it held released before). */
  leave(): void {
    this.#streams--;
  }

  /** A stream's share: the read size, and the most it holds. */
  share(): number {
    return readSize(Math.floor(this.limit / Math.max(1, this.#streams)));
  }

  /**
   * How much a stream that holds `held` bytes may read now: its share if that fits in the
   * limit, else {@link MIN_SHARE} when it holds nothing, else 0 (wait until its bytes are taken).
   */
  readable(held: number): number {
    const size = this.share();
    if (this.#bytes + size <= this.limit) return size;
    return held === 0 ? MIN_SHARE : 0;
  }

  /** A stream now holds `bytes` more. */
  hold(bytes: number): void {
    this.#bytes += bytes;
  }

  /** A stream holds `bytes` fewer. */
  release(bytes: number): void {
    this.#bytes -= bytes;
  }
}

/**
 * The read size for a share: the largest power of two not above it, from {@link MIN_SHARE} to
 * {@link MAX_SHARE}.
 */
export function readSize(share: number): number {
  let size = MIN_SHARE;
  while (size * 2 <= share && size < MAX_SHARE) size *= 2;
  return size;
}
