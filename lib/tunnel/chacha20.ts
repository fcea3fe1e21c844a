/**
 * ChaCha20 keystream in plain TypeScript, for the short pieces of each SSH packet.
 *
 * `chacha20-poly1305@openssh.com` needs, per packet, one block under the length key (4 bytes
 * of it), block 0 under the main key (the Poly1305 key) and blocks 1… for the body. Under Deno
 * a `node:crypto` ChaCha20 object costs 2–3 µs to set up, more than a whole small packet's
 * worth of blocks here (~0.15 µs a block), so {@link ./ssh_cipher.ts} takes those blocks from
 * this module and keeps `node:crypto` for long bodies, where its per-byte speed wins. (We
 * measured `@noble/ciphers`' public `chacha20orig` too: it validates and expands the key on
 * every call and was slower than `node:crypto` below 4 KiB.)
 *
 * This is the original ChaCha20 (64-bit block counter, 64-bit nonce) that OpenSSH uses, with
 * the SSH sequence number as the nonce (big-endian); the block function is RFC 8439 §2.3.
 * Keystream bytes are read from the state words in memory order, so the fast path needs a
 * little-endian platform ({@link LITTLE_ENDIAN}); callers fall back to `node:crypto` otherwise.
 * @module
 */

/** Whether typed arrays store words little-endian here (true on x86-64 and arm64). */
export const LITTLE_ENDIAN: boolean = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/** A 256-bit key as the eight little-endian words the block function reads. */
export function keyWords(key: Uint8Array): Uint32Array {
  if (key.length < 32) throw new Error(`chacha20 key is ${key.length} bytes, want 32`);
  const w = new Uint32Array(8);
  for (let i = 0; i < 8; i++) {
    const j = 4 * i;
    w[i] = (key[j] | (key[j + 1] << 8) | (key[j + 2] << 16) | (key[j + 3] << 24)) >>> 0;
  }
  return w;
}

/**
 * One keystream block under key `k`, written to `out` (16 words), given state words 12–15: in
 * the original ChaCha20 the 64-bit block counter (low word first) and the 64-bit nonce, in
 * RFC 8439's a 32-bit counter and a 96-bit nonce. For SSH packets use {@link seqnoBlock}.
 */
export function chachaBlock(
  k: Uint32Array,
  w12: number,
  w13: number,
  w14: number,
  w15: number,
  out: Uint32Array,
): void {
  const j0 = 0x61707865, j1 = 0x3320646e, j2 = 0x79622d32, j3 = 0x6b206574;
  const j4 = k[0] | 0, j5 = k[1] | 0, j6 = k[2] | 0, j7 = k[3] | 0;
  const j8 = k[4] | 0, j9 = k[5] | 0, j10 = k[6] | 0, j11 = k[7] | 0;
  const j12 = w12 | 0, j13 = w13 | 0, j14 = w14 | 0, j15 = w15 | 0;
  let x0 = j0, x1 = j1, x2 = j2, x3 = j3, x4 = j4, x5 = j5, x6 = j6, x7 = j7;
  let x8 = j8, x9 = j9, x10 = j10, x11 = j11, x12 = j12, x13 = j13, x14 = j14, x15 = j15;
  for (let i = 0; i < 10; i++) {
    // Column round.
    x0 = (x0 + x4) | 0, x12 ^= x0, x12 = (x12 << 16) | (x12 >>> 16);
    x8 = (x8 + x12) | 0, x4 ^= x8, x4 = (x4 << 12) | (x4 >>> 20);
    x0 = (x0 + x4) | 0, x12 ^= x0, x12 = (x12 << 8) | (x12 >>> 24);
    x8 = (x8 + x12) | 0, x4 ^= x8, x4 = (x4 << 7) | (x4 >>> 25);
    x1 = (x1 + x5) | 0, x13 ^= x1, x13 = (x13 << 16) | (x13 >>> 16);
    x9 = (x9 + x13) | 0, x5 ^= x9, x5 = (x5 << 12) | (x5 >>> 20);
    x1 = (x1 + x5) | 0, x13 ^= x1, x13 = (x13 << 8) | (x13 >>> 24);
    x9 = (x9 + x13) | 0, x5 ^= x9, x5 = (x5 << 7) | (x5 >>> 25);
    x2 = (x2 + x6) | 0, x14 ^= x2, x14 = (x14 << 16) | (x14 >>> 16);
    x10 = (x10 + x14) | 0, x6 ^= x10, x6 = (x6 << 12) | (x6 >>> 20);
    x2 = (x2 + x6) | 0, x14 ^= x2, x14 = (x14 << 8) | (x14 >>> 24);
    x10 = (x10 + x14) | 0, x6 ^= x10, x6 = (x6 << 7) | (x6 >>> 25);
    x3 = (x3 + x7) | 0, x15 ^= x3, x15 = (x15 << 16) | (x15 >>> 16);
    x11 = (x11 + x15) | 0, x7 ^= x11, x7 = (x7 << 12) | (x7 >>> 20);
    x3 = (x3 + x7) | 0, x15 ^= x3, x15 = (x15 << 8) | (x15 >>> 24);
    x11 = (x11 + x15) | 0, x7 ^= x11, x7 = (x7 << 7) | (x7 >>> 25);
    // Diagonal round.
    x0 = (x0 + x5) | 0, x15 ^= x0, x15 = (x15 << 16) | (x15 >>> 16);
    x10 = (x10 + x15) | 0, x5 ^= x10, x5 = (x5 << 12) | (x5 >>> 20);
    x0 = (x0 + x5) | 0, x15 ^= x0, x15 = (x15 << 8) | (x15 >>> 24);
    x10 = (x10 + x15) | 0, x5 ^= x10, x5 = (x5 << 7) | (x5 >>> 25);
    x1 = (x1 + x6) | 0, x12 ^= x1, x12 = (x12 << 16) | (x12 >>> 16);
    x11 = (x11 + x12) | 0, x6 ^= x11, x6 = (x6 << 12) | (x6 >>> 20);
    x1 = (x1 + x6) | 0, x12 ^= x1, x12 = (x12 << 8) | (x12 >>> 24);
    x11 = (x11 + x12) | 0, x6 ^= x11, x6 = (x6 << 7) | (x6 >>> 25);
    x2 = (x2 + x7) | 0, x13 ^= x2, x13 = (x13 << 16) | (x13 >>> 16);
    x8 = (x8 + x13) | 0, x7 ^= x8, x7 = (x7 << 12) | (x7 >>> 20);
    x2 = (x2 + x7) | 0, x13 ^= x2, x13 = (x13 << 8) | (x13 >>> 24);
    x8 = (x8 + x13) | 0, x7 ^= x8, x7 = (x7 << 7) | (x7 >>> 25);
    x3 = (x3 + x4) | 0, x14 ^= x3, x14 = (x14 << 16) | (x14 >>> 16);
    x9 = (x9 + x14) | 0, x4 ^= x9, x4 = (x4 << 12) | (x4 >>> 20);
    x3 = (x3 + x4) | 0, x14 ^= x3, x14 = (x14 << 8) | (x14 >>> 24);
    x9 = (x9 + x14) | 0, x4 ^= x9, x4 = (x4 << 7) | (x4 >>> 25);
  }
  out[0] = x0 + j0, out[1] = x1 + j1, out[2] = x2 + j2, out[3] = x3 + j3;
  out[4] = x4 + j4, out[5] = x5 + j5, out[6] = x6 + j6, out[7] = x7 + j7;
  out[8] = x8 + j8, out[9] = x9 + j9, out[10] = x10 + j10, out[11] = x11 + j11;
  out[12] = x12 + j12, out[13] = x13 + j13, out[14] = x14 + j14, out[15] = x15 + j15;
}

/** The nonce word (state word 15) for SSH sequence number `seqno`: its bytes big-endian. */
function seqnoWord(seqno: number): number {
  return (((seqno & 0xff) << 24) | ((seqno & 0xff00) << 8) | ((seqno >>> 8) & 0xff00) |
    (seqno >>> 24)) >>> 0;
}

/**
 * Keystream block `counter` (below 2^32) for SSH packet `seqno`: the nonce is the sequence
 * number as 8 big-endian bytes.
 */
export function seqnoBlock(k: Uint32Array, counter: number, seqno: number, out: Uint32Array): void {
  chachaBlock(k, counter, 0, 0, seqnoWord(seqno), out);
}

const ks = new Uint32Array(16);
const ksBytes = new Uint8Array(ks.buffer);

/**
 * XOR `buf[off…+len]` in place with the keystream starting at block `counter` for SSH packet
 * `seqno`. Whole words at a time where the range starts 4-byte aligned in its buffer (a
 * packet from `Buffer.allocUnsafe` does, 4 bytes in). Needs {@link LITTLE_ENDIAN}.
 */
export function xorKeystream(
  k: Uint32Array,
  seqno: number,
  counter: number,
  buf: Uint8Array,
  off: number,
  len: number,
): void {
  const n1 = seqnoWord(seqno);
  let done = 0;
  const at = buf.byteOffset + off;
  if ((at & 3) === 0 && len >= 64) {
    const words = new Uint32Array(buf.buffer, at, len >>> 2);
    for (; done + 64 <= len; done += 64, counter++) {
      chachaBlock(k, counter, 0, 0, n1, ks);
      const w = done >>> 2;
      for (let i = 0; i < 16; i++) words[w + i] ^= ks[i];
    }
  }
  for (; done < len; done += 64, counter++) {
    chachaBlock(k, counter, 0, 0, n1, ks);
    const n = Math.min(64, len - done);
    const d = off + done;
    for (let i = 0; i < n; i++) buf[d + i] ^= ksBytes[i];
  }
}
