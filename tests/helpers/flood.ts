/**
 * Unauthenticated clients of the agent port, as an attacker drives them (the
 * pre-auth tests and the bench's `preauth` figure): raw sockets from a chosen
 * source address (`node:net` `localAddress`, any 127.0.0.0/8 address on
 * Linux), what each has received and when it was closed, WebSocket frames
 * announcing huge payloads, and a relay that dials from another address.
 * @module
 */

import net from "node:net";
import tls from "node:tls";
import { Buffer } from "node:buffer";
import { WS_PROTOCOL } from "../../lib/tunnel/protocol.ts";

/** A complete, valid tunnel upgrade request. */
export const UPGRADE = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n" +
  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
  `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ${WS_PROTOCOL}\r\n\r\n`;

/** A client socket and what it has seen: its bytes, and how it ended. */
export interface FloodClient {
  socket: net.Socket | tls.TLSSocket;
  /** Everything received so far. */
  received(): Buffer;
  /** Resolves once the server closed it (EOF or reset), or the guard did ("guard"). */
  ended: Promise<"closed" | "guard">;
  /** `performance.now()` when it ended (NaN before). */
  endedAt: number;
}

/**
 * Connect to 127.0.0.1:`port` from `localAddress` (over TLS without a client certificate, not
 * checking the server's, with `tls`), sending `first` if given. A connection the server has not
 * closed after `guardMs` is closed here and ends as "guard".
 */
export function floodClient(
  port: number,
  opts: { first?: string | Uint8Array; localAddress?: string; guardMs?: number; tls?: boolean } =
    {},
): Promise<FloodClient> {
  return new Promise((resolve, reject) => {
    const where = { host: "127.0.0.1", port, localAddress: opts.localAddress ?? "127.0.0.1" };
    const socket = opts.tls
      ? tls.connect({ ...where, rejectUnauthorized: false })
      : net.connect(where);
    const parts: Buffer[] = [];
    socket.on("data", (b: Buffer) => parts.push(b));
    socket.on("error", () => {});
    let guard: ReturnType<typeof setTimeout> | undefined;
    const client: FloodClient = {
      socket,
      received: () => Buffer.concat(parts),
      endedAt: NaN,
      ended: new Promise<"closed" | "guard">((done) => {
        socket.once("close", () => {
          clearTimeout(guard);
          client.endedAt = performance.now();
          done("closed");
        });
        guard = setTimeout(() => {
          done("guard");
          socket.destroy();
        }, opts.guardMs ?? 60_000);
      }),
    };
    socket.once(opts.tls ? "secureConnect" : "connect", () => {
      if (opts.first) socket.write(opts.first);
      resolve(client);
    });
    socket.once("error", reject);
    // A connection (or TLS handshake) that never completes ends with the guard: fail then too.
    socket.once("close", () => reject(new Error(`127.0.0.1:${port}: closed before connecting`)));
  });
}

/** Wait until `c` has received something matching `re` (false if it ended without). */
export async function sees(c: FloodClient, re: RegExp): Promise<boolean> {
  for (;;) {
    if (re.test(c.received().toString("latin1"))) return true;
    const more = new Promise((r) => c.socket.once("data", r));
    if (await Promise.race([more.then(() => false), c.ended.then(() => true)])) {
      return re.test(c.received().toString("latin1"));
    }
  }
}

/** A masked client frame header announcing `len` payload bytes (with a zero mask key). */
export function frameHeader(opcode: number, len: number, fin = true): Buffer {
  const h = Buffer.alloc(14);
  h[0] = (fin ? 0x80 : 0) | opcode;
  h[1] = 0x80 | 127;
  h.writeBigUInt64BE(BigInt(len), 2);
  return h; // a zero mask leaves the payload as it is
}

/**
 * Write `total` zero bytes until done or closed: raw (after a frame header sent by the caller),
 * or as a binary message fragmented into frames of `frame` bytes. Resolves the bytes written.
 */
export async function pour(c: FloodClient, total: number, frame?: number): Promise<number> {
  const chunk = Buffer.alloc(64 * 1024);
  let sent = 0;
  let closed = false;
  c.ended.then(() => closed = true);
  while (sent < total && !closed) {
    let piece: Buffer = chunk;
    if (frame !== undefined) {
      const last = sent + frame >= total;
      piece = Buffer.concat([
        frameHeader(sent === 0 ? 2 : 0, frame, last),
        chunk.subarray(0, frame),
      ]);
    }
    sent += frame ?? chunk.length;
    if (!c.socket.write(piece)) {
      await Promise.race([new Promise((r) => c.socket.once("drain", r)), c.ended]);
    }
  }
  return sent;
}

/** The close code of the first close frame after the response head in `buf`, if any. */
export function closeCode(buf: Buffer): number | undefined {
  const head = buf.indexOf("\r\n\r\n");
  if (head < 0) return undefined;
  const at = buf.indexOf(0x88, head + 4);
  return at >= 0 && at + 3 < buf.length ? buf.readUInt16BE(at + 2) : undefined;
}

/** A TCP relay listening on 127.0.0.1 that dials 127.0.0.1:`port` from `localAddress`. */
export function relayFrom(localAddress: string, port: number): Promise<net.Server> {
  const server = net.createServer((inbound) => {
    const outbound = net.connect({ host: "127.0.0.1", port, localAddress });
    inbound.pipe(outbound);
    outbound.pipe(inbound);
    const both = () => {
      inbound.destroy();
      outbound.destroy();
    };
    inbound.on("error", both).on("close", both);
    outbound.on("error", both).on("close", both);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}
