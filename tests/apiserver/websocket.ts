/**
 * A minimal RFC 6455 WebSocket server connection over a raw socket taken
 * from a node `upgrade` event: handshake, (de)framing with masking and
 * fragmentation, ping/pong and close. Enough for the exec and portforward
 * endpoints; not a general-purpose library.
 * @module
 */

import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import type { Duplex } from "node:stream";

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/** Frame opcodes. */
export const OP = { cont: 0, text: 1, binary: 2, close: 8, ping: 9, pong: 10 } as const;

/** Write the 101 response accepting `key` with `protocol` (may be empty). */
export function acceptHandshake(socket: Duplex, key: string, protocol: string): void {
  const accept = createHash("sha1").update(key + GUID).digest("base64");
  socket.write(
    "HTTP/1.1 101 Switching Protocols\r\n" +
      "Upgrade: websocket\r\n" +
      "Connection: Upgrade\r\n" +
      `Sec-WebSocket-Accept: ${accept}\r\n` +
      (protocol ? `Sec-WebSocket-Protocol: ${protocol}\r\n` : "") +
      "\r\n",
  );
}

/** Encode one unmasked (server) frame. */
export function encodeFrame(opcode: number, payload: Uint8Array, fin = true): Buffer {
  const len = payload.length;
  let head: Buffer;
  if (len < 126) {
    head = Buffer.from([(fin ? 0x80 : 0) | opcode, len]);
  } else if (len < 65536) {
    head = Buffer.alloc(4);
    head[0] = (fin ? 0x80 : 0) | opcode;
    head[1] = 126;
    head.writeUInt16BE(len, 2);
  } else {
    head = Buffer.alloc(10);
    head[0] = (fin ? 0x80 : 0) | opcode;
    head[1] = 127;
    head.writeBigUInt64BE(BigInt(len), 2);
  }
  return Buffer.concat([head, payload]);
}

/** A server-side WebSocket connection. */
export class WsConn {
  #buf: Buffer = Buffer.alloc(0);
  #fragments: Buffer[] = [];
  #fragOpcode = 0;
  #closed = false;
  /** Called with each complete data message (text or binary). */
  onMessage: (data: Uint8Array, opcode: number) => void = () => {};
  /** Called once when the connection ends (close frame, socket end or error). */
  onClose: () => void = () => {};

  constructor(readonly socket: Duplex, head: Uint8Array = new Uint8Array()) {
    socket.on("data", (d: Buffer) => this.#feed(d));
    socket.on("close", () => this.#ended());
    socket.on("error", () => this.#ended());
    if (head.length) queueMicrotask(() => this.#feed(Buffer.from(head)));
  }

  /** Whether the connection is closed. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Send a binary message. */
  send(data: Uint8Array, opcode: number = OP.binary): void {
    if (this.#closed) return;
    this.socket.write(encodeFrame(opcode, data));
  }

  /** Send a close frame and end the socket. */
  close(code = 1000, reason = ""): void {
    if (this.#closed) return;
    const r = new TextEncoder().encode(reason);
    const p = Buffer.alloc(2 + r.length);
    p.writeUInt16BE(code, 0);
    p.set(r, 2);
    this.socket.write(encodeFrame(OP.close, p));
    this.socket.end();
    this.#ended();
  }

  #ended(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.onClose();
  }

  #feed(d: Buffer): void {
    this.#buf = this.#buf.length ? Buffer.concat([this.#buf, d]) : d;
    for (;;) {
      const b = this.#buf;
      if (b.length < 2) return;
      const fin = (b[0] & 0x80) !== 0;
      const opcode = b[0] & 0x0f;
      const masked = (b[1] & 0x80) !== 0;
      let len = b[1] & 0x7f;
      let off = 2;
      if (len === 126) {
        if (b.length < 4) return;
        len = b.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (b.length < 10) return;
        len = Number(b.readBigUInt64BE(2));
        off = 10;
      }
      const maskOff = off;
      if (masked) off += 4;
      if (b.length < off + len) return;
      const payload = Buffer.from(b.subarray(off, off + len));
      if (masked) {
        for (let i = 0; i < payload.length; i++) payload[i] ^= b[maskOff + (i & 3)];
      }
      this.#buf = b.subarray(off + len);
      this.#frame(fin, opcode, payload);
      if (this.#closed) return;
    }
  }

  #frame(fin: boolean, opcode: number, payload: Buffer): void {
    switch (opcode) {
      case OP.ping:
        this.send(payload, OP.pong);
        return;
      case OP.pong:
        return;
      case OP.close:
        this.close(payload.length >= 2 ? payload.readUInt16BE(0) : 1000);
        return;
      case OP.cont:
        this.#fragments.push(payload);
        if (fin) {
          const all = Buffer.concat(this.#fragments);
          this.#fragments = [];
          this.onMessage(all, this.#fragOpcode);
        }
        return;
      default:
        if (!fin) {
          this.#fragOpcode = opcode;
          this.#fragments = [payload];
          return;
        }
        this.onMessage(payload, opcode);
    }
  }
}
