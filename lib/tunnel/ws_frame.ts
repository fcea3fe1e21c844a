/**
 * RFC 6455 frames as both ends of the tunnel's WebSocket write and read them:
 * building a frame in place in front of its payload (masked as a client,
 * unmasked as a server), and an incremental parser that hands payload bytes
 * on as they arrive, so no message is ever held whole.
 *
 * The parser enforces what the tunnel's WebSocket allows: binary messages
 * only (text is an error), no extensions (reserved bits clear), control
 * frames short and unfragmented, continuation frames only inside a message,
 * and a cap on a message's total length across its frames. A server also
 * requires every client frame to be masked (RFC 6455 §5.1).
 * @module
 */

import { randomFillSync } from "node:crypto";

export const OP_CONT = 0x0;
const OP_TEXT = 0x1;
export const OP_BINARY = 0x2;
export const OP_CLOSE = 0x8;
export const OP_PING = 0x9;
export const OP_PONG = 0xa;

/** Close codes used here (RFC 6455 §7.4.1). */
export const CLOSE_NORMAL = 1000;
const CLOSE_PROTOCOL_ERROR = 1002;
const CLOSE_UNSUPPORTED_DATA = 1003;
const CLOSE_TOO_BIG = 1009;

/** Room in front of a payload for the longest header (10 bytes + 4 mask bytes), 4-aligned. */
export const FRAME_PAD = 16;

/** A frame the parser refuses; `code` is the close code to send before closing. */
export class WsProtocolError extends Error {
  constructor(readonly code: number, message: string) {
    super(message);
    this.name = "WsProtocolError";
  }
}

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

const maskBytes = new Uint8Array(4);
const maskWord = new Uint32Array(maskBytes.buffer);

/**
 * XOR `data` in place with the 4-byte masking `key`, `data[0]` being payload byte `pos` of its
 * frame (RFC 6455 §5.3). Whole words at a time where `data` is 4-byte aligned.
 */
function xorMask(data: Uint8Array, key: Uint8Array, pos: number): void {
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

/**
 * Write the header of a final frame for the `len` payload bytes that start at `FRAME_PAD` in
 * `frame`, masking the payload in place when `masked` (client frames), and return the frame
 * (header + payload) as a view of `frame`.
 */
export function sealFrame(
  frame: Uint8Array,
  opcode: number,
  len: number,
  masked: boolean,
): Uint8Array {
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
    maskWord[0] = nextMask();
    frame.set(maskBytes, maskAt);
    xorMask(frame.subarray(FRAME_PAD, FRAME_PAD + len), frame.subarray(maskAt, maskAt + 4), 0);
  }
  return frame.subarray(start, FRAME_PAD + len);
}

/** A final frame carrying `payload`, masked when `masked` (control frames, tests). */
export function encodeFrame(opcode: number, payload: Uint8Array, masked: boolean): Uint8Array {
  const frame = new Uint8Array(FRAME_PAD + payload.length);
  frame.set(payload, FRAME_PAD);
  return sealFrame(frame, opcode, payload.length, masked);
}

/** A masked client frame carrying `payload` (for control frames and tests). */
export function encodeClientFrame(opcode: number, payload: Uint8Array): Uint8Array {
  return encodeFrame(opcode, payload, true);
}

/** What a {@link FrameParser} reports. */
export interface FrameSink {
  /** Payload bytes of a binary message, unmasked; a view of the parsed buffer. */
  data(piece: Uint8Array): void;
  /** A complete control frame (ping, pong, close). */
  control(opcode: number, payload: Uint8Array): void;
}

/** Parses the frames one end receives; see the module doc for what it refuses. */
export class FrameParser {
  /** Largest message accepted, all its frames together (may be changed at any time). */
  maxMessage: number;
  /** Set once a close frame was parsed: nothing after it is looked at. */
  closed = false;
  readonly #mustMask: boolean;
  readonly #sink: FrameSink;
  readonly #head = new Uint8Array(14);
  #headLen = 0;
  #need = 2;
  #opcode = 0;
  #remaining = 0;
  #inPayload = false;
  /** The current frame's masking key (in `#mask`), or undefined for an unmasked frame. */
  #maskKey: Uint8Array | undefined;
  /** Room for a masking key: copied here, not sliced (a 4-byte ArrayBuffer per frame). */
  readonly #mask = new Uint8Array(4);
  #maskPos = 0;
  #control: Uint8Array | undefined;
  #controlPos = 0;
  /** Inside a fragmented message (its last frame not seen yet). */
  #inMessage = false;
  #messageBytes = 0;

  /** `role`: which end parses (a server requires masked frames). */
  constructor(role: "client" | "server", maxMessage: number, sink: FrameSink) {
    this.#mustMask = role === "server";
    this.maxMessage = maxMessage;
    this.#sink = sink;
  }

  /** Parse `data` (unmasked in place). Throws {@link WsProtocolError}. */
  parse(data: Uint8Array): void {
    let p = 0;
    while (p < data.length && !this.closed) {
      if (!this.#inPayload) {
        const head = this.#head;
        while (this.#headLen < this.#need && p < data.length) head[this.#headLen++] = data[p++];
        if (this.#headLen < this.#need) return;
        if (this.#need === 2) {
          const len7 = head[1] & 0x7f;
          this.#need = 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0) + ((head[1] & 0x80) ? 4 : 0);
          if (this.#headLen < this.#need) continue;
        }
        this.#startFrame();
      }
      const k = Math.min(this.#remaining, data.length - p);
      const piece = data.subarray(p, p + k);
      if (this.#maskKey) {
        xorMask(piece, this.#maskKey, this.#maskPos);
        this.#maskPos += k;
      }
      p += k;
      this.#remaining -= k;
      if (this.#opcode >= 0x8) {
        this.#control!.set(piece, this.#controlPos);
        this.#controlPos += k;
      } else if (k > 0) this.#sink.data(piece);
      if (this.#remaining === 0) {
        this.#inPayload = false;
        if (this.#opcode >= 0x8) {
          if (this.#opcode === OP_CLOSE) this.closed = true;
          this.#sink.control(this.#opcode, this.#control!);
        }
      }
    }
  }

  /** The header in `#head` is complete: check it and set up for its payload. */
  #startFrame(): void {
    const head = this.#head;
    const fin = (head[0] & 0x80) !== 0;
    // No extension is negotiated, so the reserved bits must be clear (RFC 6455 §5.2).
    if ((head[0] & 0x70) !== 0) {
      throw new WsProtocolError(CLOSE_PROTOCOL_ERROR, "websocket frame with reserved bits set");
    }
    const opcode = head[0] & 0x0f;
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
    const masked = (head[1] & 0x80) !== 0;
    if (this.#mustMask && !masked) {
      throw new WsProtocolError(CLOSE_PROTOCOL_ERROR, "unmasked websocket frame from a client");
    }
    if (masked) {
      this.#mask.set(head.subarray(off, off + 4));
      this.#maskKey = this.#mask;
    } else this.#maskKey = undefined;
    this.#maskPos = 0;
    this.#headLen = 0;
    this.#need = 2;
    if (opcode >= 0x8) {
      if (opcode !== OP_CLOSE && opcode !== OP_PING && opcode !== OP_PONG) {
        throw new WsProtocolError(CLOSE_PROTOCOL_ERROR, `unexpected websocket opcode ${opcode}`);
      }
      if (len > 125 || !fin) {
        throw new WsProtocolError(CLOSE_PROTOCOL_ERROR, "bad websocket control frame");
      }
      this.#control = new Uint8Array(len);
      this.#controlPos = 0;
    } else {
      if (opcode === OP_TEXT) {
        throw new WsProtocolError(
          CLOSE_UNSUPPORTED_DATA,
          "unexpected text message on the tunnel websocket",
        );
      }
      if (opcode !== OP_BINARY && opcode !== OP_CONT) {
        throw new WsProtocolError(CLOSE_PROTOCOL_ERROR, `unexpected websocket opcode ${opcode}`);
      }
      this.#checkMessage(opcode, len);
      this.#inMessage = !fin;
    }
    this.#opcode = opcode;
    this.#remaining = len;
    this.#inPayload = true;
  }

  /** A data frame of `len` bytes starts: it must fit the message sequence and the size cap. */
  #checkMessage(opcode: number, len: number): void {
    if (this.#mustMask) {
      // A server holds its peer to the sequence; the agent reads any server leniently.
      if (opcode === OP_CONT && !this.#inMessage) {
        throw new WsProtocolError(CLOSE_PROTOCOL_ERROR, "continuation frame outside a message");
      }
      if (opcode === OP_BINARY && this.#inMessage) {
        throw new WsProtocolError(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one");
      }
    }
    this.#messageBytes = opcode === OP_BINARY ? len : this.#messageBytes + len;
    if (this.#messageBytes > this.maxMessage) {
      throw new WsProtocolError(
        CLOSE_TOO_BIG,
        `websocket message of ${
          opcode === OP_BINARY ? "" : "at least "
        }${this.#messageBytes} bytes is over the limit of ${this.maxMessage}`,
      );
    }
  }
}
