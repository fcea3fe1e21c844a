/**
 * A faster `chacha20-poly1305@openssh.com` for ssh2 1.17.0 under Deno, byte-for-byte the same
 * on the wire (it is the cipher the agent link prefers, docs/protocol.md §2, "Ciphers").
 *
 * Without its native addon (never available under Deno) ssh2 seals each packet with three
 * `createCipheriv("chacha20")` objects, a Poly1305 call through Emscripten's `cwrap` (which
 * copies the packet onto the WASM stack) and three separate writes (length, body, MAC), and
 * opens each with the same again. Here a packet is sealed in place in a buffer that already
 * has room for its MAC and leaves in one write. Where WebAssembly SIMD works (`simd`), each
 * packet is sealed or opened in one call into ./packet_crypto.ts (ChaCha20 and Poly1305 in
 * WebAssembly, no cipher object, nothing allocated but the payload received); elsewhere
 * (`scalar`) the length block, the Poly1305 key and bodies up to 2 KiB come from
 * {@link ./chacha20.ts}, longer bodies from one `node:crypto` cipher, and Poly1305 from ssh2's
 * scalar build. Little-endian platforms only (x86-64, arm64); elsewhere ssh2's own methods
 * stay. `TOWER_SSH_CRYPTO` ({@link LINK_CRYPTO_ENV}) picks the scalar code or ssh2's own
 * instead, and a log line at start says which is in use.
 *
 * It works by replacing `allocPacket`/`encrypt` and `decrypt` on the prototypes of ssh2's
 * `ChaChaPolyCipherNative`/`ChaChaPolyDecipherNative` ({@link installFastChaChaPoly}); the
 * instance fields those methods use are the ones ssh2's constructors set. `checkChaChaPoly()`
 * fails loudly if ssh2 changes shape, and tests/tunnel/ssh_cipher_test.ts checks the output
 * against ssh2's own implementation both ways.
 * @module
 */

import { Buffer } from "node:buffer";
import { createCipheriv, createDecipheriv, randomFillSync } from "node:crypto";
import cryptoModule from "ssh2/lib/protocol/crypto.js";
import { keyWords, LITTLE_ENDIAN, seqnoBlock, xorKeystream } from "./chacha20.ts";
import { loadPoly1305, type Poly1305 } from "./poly1305.ts";
import { loadPacketCrypto, type PacketCrypto } from "./packet_crypto.ts";
import { releaseBuffer, takeBuffer } from "../buffer_pool.ts";
import { logger } from "../log.ts";
import {
  checkChaChaPolyShape,
  checkSsh2,
  SSH2_MODULES,
  Ssh2InternalsError,
} from "./ssh2_internals.ts";

const log = logger("ssh-cipher");

/** The name of the cipher on the wire. */
export const CHACHA_POLY = "chacha20-poly1305@openssh.com";

/**
 * Largest channel data payload a Tower end announces when its inbound cipher is this one:
 * eight times SSH's customary 32 KiB, so a bulk transfer costs an eighth of the per-packet work
 * (cipher setup, Poly1305 call, parsing, socket writes). The peer sends packets up to this size
 * only if we announce it; ssh2's other ciphers still refuse anything over 35,000 bytes, and Go's
 * transport reads packets up to 256 KiB, so both ends stay compatible.
 */
export const LARGE_PACKET_SIZE = 256 * 1024;

/** Largest packet length field accepted: a {@link LARGE_PACKET_SIZE} payload and its framing. */
const MAX_PACKET_SIZE = LARGE_PACKET_SIZE + 1024;

interface Ssh2Crypto {
  CIPHER_INFO: Record<string, unknown>;
  init: Promise<void>;
  createCipher(config: unknown): CipherInstance;
  createDecipher(config: unknown): DecipherInstance;
}

/** The fields ssh2's `ChaChaPolyCipherNative` constructor sets, and our key words. */
interface CipherInstance {
  outSeqno: number;
  _onWrite(data: Buffer): void;
  _encKeyMain: Buffer;
  _encKeyPktLen: Buffer;
  _dead: boolean;
  _towerKeys?: KeyPair;
  allocPacket(payloadLen: number): Buffer;
  encrypt(packet: Buffer): void;
}

/** The fields ssh2's `ChaChaPolyDecipherNative` constructor sets, and our key words. */
interface DecipherInstance {
  inSeqno: number;
  _onPayload(payload: Buffer): unknown;
  _decKeyMain: Buffer;
  _decKeyPktLen: Buffer;
  _towerKeys?: KeyPair;
  _len: number;
  _lenBuf: Buffer;
  _lenPos: number;
  _packet: Uint8Array | null;
  _pktLen: number;
  _mac: Buffer;
  _calcMac: Buffer;
  _macPos: number;
  decrypt(data: Uint8Array, p: number, dataLen: number): number | undefined;
}

/** A session direction's two ChaCha20 keys as the words {@link ./chacha20.ts} takes. */
interface KeyPair {
  main: Uint32Array;
  len: Uint32Array;
}

/**
 * Bodies up to this many bytes are enciphered by {@link xorKeystream}; longer ones by
 * `node:crypto`, whose per-byte speed then outweighs its 2–3 µs setup (measured crossover
 * about 2 KiB under Deno 2.9 on x86-64).
 */
const JS_MAX_BODY = 2048;

const ssh2Crypto = cryptoModule as unknown as Ssh2Crypto;
/** ChaCha20 IV as node:crypto takes it: 32-bit LE block counter 1, then the 96-bit nonce. */
const IV = Buffer.alloc(16);
IV[0] = 1;
/** Keystream block scratch: the length key's block, and block 0 (the Poly1305 key). */
const lenBlock = new Uint32Array(16);
const lenBlockBytes = new Uint8Array(lenBlock.buffer);
const polyBlock = new Uint32Array(16);
const polyKeyBytes = new Uint8Array(polyBlock.buffer, 0, 32);

/** Poly1305 of `lenField ‖ body` (./poly1305.ts), set by {@link installFastChaChaPoly}. */
let poly1305: Poly1305;

/** The IV for the body of packet `seqno`: block counter 1 (block 0 is the Poly1305 key). */
function setIv(seqno: number): Buffer {
  IV[12] = seqno >>> 24;
  IV[13] = (seqno >>> 16) & 0xff;
  IV[14] = (seqno >>> 8) & 0xff;
  IV[15] = seqno & 0xff;
  return IV;
}

/**
 * Whether two 16-byte MACs are equal, in constant time: every byte is looked at and no branch
 * depends on them (node:crypto's timingSafeEqual costs ~1.5 µs a call under Deno).
 */
function macEqual(a: Uint8Array, b: Uint8Array): boolean {
  let diff = 0;
  for (let i = 0; i < 16; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

function allocPacket(this: CipherInstance, payloadLen: number): Buffer {
  let pktLen = 4 + 1 + payloadLen;
  let padLen = 8 - ((pktLen - 4) & 7);
  if (padLen < 4) padLen += 8;
  pktLen += padLen;
  const packet = takeBuffer(pktLen + 16);
  packet.writeUInt32BE(pktLen - 4, 0);
  packet[4] = padLen;
  randomFillSync(packet, 5 + payloadLen, padLen);
  return packet;
}

function keysOf(main: Buffer, len: Buffer): KeyPair {
  return { main: keyWords(main), len: keyWords(len) };
}

function encrypt(this: CipherInstance, packet: Buffer): void {
  if (this._dead) return;
  const keys = this._towerKeys ??= keysOf(this._encKeyMain, this._encKeyPktLen);
  const seqno = this.outSeqno;
  const end = packet.length - 16;
  seqnoBlock(keys.len, 0, seqno, lenBlock);
  for (let i = 0; i < 4; i++) packet[i] ^= lenBlockBytes[i];
  seqnoBlock(keys.main, 0, seqno, polyBlock);
  if (end - 4 <= JS_MAX_BODY) xorKeystream(keys.main, seqno, 1, packet, 4, end - 4);
  else {
    packet.set(
      createCipheriv("chacha20", this._encKeyMain, setIv(seqno)).update(packet.subarray(4, end)),
      4,
    );
  }
  poly1305(packet, packet.subarray(4, end), polyKeyBytes, packet, end);
  this._onWrite(packet);
  this.outSeqno = (seqno + 1) >>> 0;
}

function decrypt(
  this: DecipherInstance,
  data: Uint8Array,
  p: number,
  dataLen: number,
): number | undefined {
  while (p < dataLen) {
    // Packet length
    if (this._lenPos < 4) {
      let nb = Math.min(4 - this._lenPos, dataLen - p);
      while (nb--) this._lenBuf[this._lenPos++] = data[p++];
      if (this._lenPos < 4) return;
      const keys = this._towerKeys ??= keysOf(this._decKeyMain, this._decKeyPktLen);
      seqnoBlock(keys.len, 0, this.inSeqno, lenBlock);
      const lb = this._lenBuf;
      this._len = (((lb[0] ^ lenBlockBytes[0]) << 24) | ((lb[1] ^ lenBlockBytes[1]) << 16) |
        ((lb[2] ^ lenBlockBytes[2]) << 8) | (lb[3] ^ lenBlockBytes[3])) >>> 0;
      if (this._len > MAX_PACKET_SIZE || this._len < 8 || (this._len & 7) !== 0) {
        throw new Error("Bad packet length");
      }
    }
    // Padding length, payload and padding
    if (this._pktLen < this._len) {
      if (p >= dataLen) return;
      const nb = Math.min(this._len - this._pktLen, dataLen - p);
      const encrypted = p !== 0 || nb !== dataLen
        ? new Uint8Array(data.buffer, data.byteOffset + p, nb)
        : data;
      if (nb === this._len) {
        this._packet = encrypted;
      } else {
        if (!this._packet) this._packet = Buffer.allocUnsafe(this._len);
        this._packet.set(encrypted, this._pktLen);
      }
      p += nb;
      this._pktLen += nb;
      if (this._pktLen < this._len || p >= dataLen) return;
    }
    // MAC
    {
      const nb = Math.min(16 - this._macPos, dataLen - p);
      this._mac.set(
        p !== 0 || nb !== dataLen ? new Uint8Array(data.buffer, data.byteOffset + p, nb) : data,
        this._macPos,
      );
      p += nb;
      this._macPos += nb;
      if (this._macPos < 16) return;
    }
    const keys = this._towerKeys!;
    const seqno = this.inSeqno;
    seqnoBlock(keys.main, 0, seqno, polyBlock);
    const sealed = this._packet!;
    poly1305(this._lenBuf, sealed, polyKeyBytes, this._calcMac, 0);
    if (!macEqual(this._calcMac, this._mac)) throw new Error("Invalid MAC");
    let packet: Uint8Array;
    if (sealed.length <= JS_MAX_BODY) {
      // Opened in a copy: `sealed` may be the caller's read buffer.
      packet = Buffer.allocUnsafe(sealed.length);
      packet.set(sealed);
      xorKeystream(keys.main, seqno, 1, packet, 0, packet.length);
    } else {
      packet = createDecipheriv("chacha20", this._decKeyMain, setIv(seqno)).update(sealed);
    }
    const payload = Buffer.from(
      packet.buffer,
      packet.byteOffset + 1,
      packet.length - packet[0] - 1,
    );

    this.inSeqno = (this.inSeqno + 1) >>> 0;
    this._len = 0;
    this._lenPos = 0;
    this._packet = null;
    this._pktLen = 0;
    this._macPos = 0;

    const ret = this._onPayload(payload);
    if (ret !== undefined) return ret === false ? p : (ret as number);
  }
}

/** The WebAssembly packet code, set by {@link installFastChaChaPoly} when SIMD works. */
let wasm: PacketCrypto;

function encryptWasm(this: CipherInstance, packet: Buffer): void {
  if (this._dead) return;
  wasm.seal(packet, this.outSeqno, this._encKeyMain, this._encKeyPktLen);
  this._onWrite(packet);
  this.outSeqno = (this.outSeqno + 1) >>> 0;
}

/**
 * {@link decrypt} on {@link PacketCrypto}: the length field is decoded as soon as its 4 bytes
 * are in; a packet (body and MAC) that arrived whole in `data` is opened from there, one split
 * across reads is gathered in a pooled buffer first. Nothing keeps a view of `data` after the
 * call, and each payload is a Buffer of its own.
 */
function decryptWasm(
  this: DecipherInstance,
  data: Uint8Array,
  p: number,
  dataLen: number,
): number | undefined {
  while (p < dataLen) {
    if (this._lenPos < 4) {
      let nb = Math.min(4 - this._lenPos, dataLen - p);
      while (nb--) this._lenBuf[this._lenPos++] = data[p++];
      if (this._lenPos < 4) return;
      this._len = wasm.length(this._lenBuf, this.inSeqno, this._decKeyMain, this._decKeyPktLen);
      if (this._len > MAX_PACKET_SIZE || this._len < 8 || (this._len & 7) !== 0) {
        throw new Error("Bad packet length");
      }
    }
    // Body and MAC.
    const need = this._len + 16;
    let sealed: Uint8Array;
    if (this._pktLen === 0 && dataLen - p >= need) {
      sealed = data.subarray(p, p + need);
      p += need;
    } else {
      if (p >= dataLen) return;
      const gather = this._packet ??= takeBuffer(need);
      const nb = Math.min(need - this._pktLen, dataLen - p);
      gather.set(data.subarray(p, p + nb), this._pktLen);
      p += nb;
      this._pktLen += nb;
      if (this._pktLen < need) return;
      sealed = gather;
    }
    const body = wasm.open(
      this._lenBuf,
      sealed,
      this.inSeqno,
      this._decKeyMain,
      this._decKeyPktLen,
    );
    if (this._packet) releaseBuffer(this._packet);
    if (body === undefined) throw new Error("Invalid MAC");
    const padLen = body[0];
    if (padLen + 1 > body.length) throw new Error("Bad padding length");
    const payload = Buffer.from(body.buffer, body.byteOffset + 1, body.length - padLen - 1);

    this.inSeqno = (this.inSeqno + 1) >>> 0;
    this._len = 0;
    this._lenPos = 0;
    this._packet = null;
    this._pktLen = 0;

    const ret = this._onPayload(payload);
    if (ret !== undefined) return ret === false ? p : (ret as number);
  }
}

function probeConfigs(): { cipher: CipherInstance; decipher: DecipherInstance } {
  const info = ssh2Crypto.CIPHER_INFO[CHACHA_POLY];
  const cipher = ssh2Crypto.createCipher({
    outbound: {
      seqno: 0,
      onWrite() {},
      cipherInfo: info,
      cipherKey: Buffer.alloc(64),
      macInfo: null,
    },
  });
  const decipher = ssh2Crypto.createDecipher({
    inbound: {
      seqno: 0,
      onPayload() {},
      decipherInfo: info,
      decipherKey: Buffer.alloc(64),
      macInfo: null,
    },
  });
  return { cipher, decipher };
}

/**
 * The prototypes to patch, or an {@link Ssh2InternalsError} naming what changed: ssh2 must be
 * using its pure-JavaScript ChaCha20-Poly1305 classes with the fields this module relies on
 * (listed once, in ./ssh2_internals.ts's `SSH2_INTERNALS`).
 */
export function checkChaChaPoly(): {
  cipherProto: CipherInstance;
  decipherProto: DecipherInstance;
} {
  const { cipher, decipher } = probeConfigs();
  const cipherProto = Object.getPrototypeOf(cipher) as CipherInstance;
  const decipherProto = Object.getPrototypeOf(decipher) as DecipherInstance;
  const problems: string[] = [];
  checkChaChaPolyShape(cipher, decipher, (m) => problems.push(m));
  if (problems.length > 0) throw new Ssh2InternalsError(problems, SSH2_MODULES.version);
  return { cipherProto, decipherProto };
}

/**
 * Whether packets arriving through `decipher` (a `Protocol`'s `_decipher`) are opened by this
 * module, which accepts up to {@link LARGE_PACKET_SIZE} of channel data per packet.
 */
export function acceptsLargePackets(decipher: unknown): boolean {
  if (typeof decipher !== "object" || decipher === null) return false;
  const method = (decipher as { decrypt?: unknown }).decrypt;
  return method === decrypt || method === decryptWasm;
}

/**
 * Whether the bytes `ssh`'s (a Client's or Connection's) protocol is handed are dead once its
 * `parse` returns: true while {@link decryptWasm} opens its inbound packets (a packet split over
 * reads is gathered in a buffer of its own, payloads are copies); false before the first key
 * exchange and with other ciphers, which keep views of their input (ssh2's null decipher hands
 * out payloads that are views of it). A transport may reuse its read buffer only then.
 */
export function keepsNoInput(ssh: object): boolean {
  const proto = (ssh as { _protocol?: { _decipher?: { decrypt?: unknown } } })._protocol;
  return proto?._decipher?.decrypt === decryptWasm;
}

/**
 * Which code seals and opens `chacha20-poly1305@openssh.com` packets: ChaCha20 and Poly1305 in
 * our WebAssembly SIMD build, this module's scalar code (TypeScript and `node:crypto` ChaCha20,
 * ssh2's scalar Poly1305), or ssh2's own packet methods.
 */
export type LinkCrypto = "simd" | "scalar" | "ssh2";

/**
 * Environment variable that picks the {@link LinkCrypto}: `auto` (default: `simd` where
 * WebAssembly SIMD works, else `scalar`), `scalar`, or `ssh2` (leave ssh2's methods alone).
 */
const LINK_CRYPTO_ENV = "TOWER_SSH_CRYPTO";

/** The choice in {@link LINK_CRYPTO_ENV}, checked. */
function linkCryptoFromEnv(
  env: (name: string) => string | undefined = (n) => Deno.env.get(n),
): "auto" | LinkCrypto {
  const v = (env(LINK_CRYPTO_ENV) ?? "").trim().toLowerCase() || "auto";
  if (v === "auto" || v === "simd" || v === "scalar" || v === "ssh2") return v;
  throw new Error(`${LINK_CRYPTO_ENV}=${v}: want auto, simd, scalar or ssh2`);
}

let installed: Promise<LinkCrypto> | undefined;

/**
 * Replace ssh2's ChaCha20-Poly1305 packet methods with the ones above, once per process, unless
 * `choice` (default: {@link LINK_CRYPTO_ENV}) is `ssh2`; logs which code is in use. Sessions
 * whose keys are already in use keep working (the fields are shared); call before any session
 * is set up. Resolves when the Poly1305 module is ready, with what is in use; the first call's
 * choice holds for the process.
 */
export function installFastChaChaPoly(choice?: "auto" | LinkCrypto): Promise<LinkCrypto> {
  installed ??= (async (): Promise<LinkCrypto> => {
    checkSsh2(); // refuse to run on any ssh2 but the pinned one (./ssh2_internals.ts)
    const want = choice ?? linkCryptoFromEnv();
    const use = await install(want);
    log.info("SSH link crypto", {
      chacha20poly1305: use === "ssh2" ? "ssh2's own" : "Tower's",
      chacha20: use === "simd" ? "WebAssembly SIMD" : use === "scalar" ? "node:crypto" : "ssh2's",
      poly1305: use === "simd" ? "WebAssembly SIMD" : use === "scalar" ? "scalar" : "ssh2's",
      impl: use,
      requested: want,
    });
    return use;
  })();
  return installed;
}

async function install(want: "auto" | LinkCrypto): Promise<LinkCrypto> {
  if (want === "ssh2") return "ssh2";
  // The keystream blocks are read in memory order; elsewhere ssh2's own methods stay.
  if (!LITTLE_ENDIAN) {
    log.warn("Big-endian platform: ssh2's own ChaCha20-Poly1305 code stays in use (slower)");
    return "ssh2";
  }
  await ssh2Crypto.init;
  const { cipherProto, decipherProto } = checkChaChaPoly();
  if (want !== "scalar") {
    const pc = await loadPacketCrypto();
    if (pc) {
      wasm = pc;
      cipherProto.allocPacket = allocPacket;
      cipherProto.encrypt = encryptWasm;
      decipherProto.decrypt = decryptWasm;
      return "simd";
    }
    if (want === "simd") {
      throw new Error(
        `${LINK_CRYPTO_ENV}=simd: WebAssembly SIMD ChaCha20-Poly1305 cannot load here`,
      );
    }
  }
  const loaded = await loadPoly1305(MAX_PACKET_SIZE, "scalar");
  poly1305 = loaded.poly1305;
  cipherProto.allocPacket = allocPacket;
  cipherProto.encrypt = encrypt;
  decipherProto.decrypt = decrypt;
  return loaded.kind;
}
