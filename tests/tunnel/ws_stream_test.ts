/**
 * The WebSocket byte streams: our client framing against Deno's server
 * WebSocket (bytes both ways, in order), and against a raw server that sends
 * and checks frames byte by byte (masking, extended lengths, split headers,
 * fragments, ping/pong, close, text refused, batching, backpressure).
 */

import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import type { Duplex } from "node:stream";
import { assert, assertEquals } from "../helpers/assert.ts";
import { patternChunk, readAllNode, readBytes, writeAll } from "../helpers/tunnel.ts";
import { freeBufferBytes, takeBuffer } from "../../lib/buffer_pool.ts";
import { encodeClientFrame } from "../../lib/tunnel/ws_frame.ts";
import { websocketClientStream } from "../../lib/tunnel/ws_stream.ts";
import { websocketStream } from "../helpers/ws_object_stream.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Send a minimal upgrade request on `conn` and read the response head; returns leftovers. */
async function clientHandshake(conn: Deno.Conn): Promise<Uint8Array> {
  await writeAll(
    conn,
    enc.encode(
      "GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" +
        "Sec-WebSocket-Protocol: kubesphere-v1\r\n\r\n",
    ),
  );
  let buf = new Uint8Array(0);
  const chunk = new Uint8Array(4096);
  for (let i = 0; i < 100; i++) {
    const n = await conn.read(chunk);
    if (n === null) throw new Error("closed during handshake");
    const next = new Uint8Array(buf.length + n);
    next.set(buf);
    next.set(chunk.subarray(0, n), buf.length);
    buf = next;
    const end = dec.decode(buf).indexOf("\r\n\r\n");
    if (end >= 0) {
      assert(dec.decode(buf.subarray(0, 12)).startsWith("HTTP/1.1 101"), dec.decode(buf));
      return buf.slice(end + 4);
    }
  }
  throw new Error("no handshake response");
}

/** A frame as the raw server sees it. */
interface Frame {
  fin: boolean;
  opcode: number;
  masked: boolean;
  payload: Uint8Array;
}

/** A raw WebSocket server endpoint (one connection) for frame-level checks. */
class RawServer {
  #buf = new Uint8Array(0);
  constructor(readonly conn: Deno.Conn) {}

  async #need(n: number): Promise<boolean> {
    const chunk = new Uint8Array(64 * 1024);
    while (this.#buf.length < n) {
      const k = await this.conn.read(chunk);
      if (k === null) return false;
      const next = new Uint8Array(this.#buf.length + k);
      next.set(this.#buf);
      next.set(chunk.subarray(0, k), this.#buf.length);
      this.#buf = next;
    }
    return true;
  }

  #take(n: number): Uint8Array {
    const out = this.#buf.slice(0, n);
    this.#buf = this.#buf.subarray(n);
    return out;
  }

  /** Read one client frame (unmasked for the caller); undefined at EOF. */
  async frame(): Promise<Frame | undefined> {
    if (!(await this.#need(2))) return undefined;
    const h = this.#take(2);
    let len = h[1] & 0x7f;
    if (len === 126) {
      await this.#need(2);
      const x = this.#take(2);
      len = (x[0] << 8) | x[1];
    } else if (len === 127) {
      await this.#need(8);
      len = Number(new DataView(this.#take(8).buffer).getBigUint64(0));
    }
    const masked = (h[1] & 0x80) !== 0;
    const mask = masked ? (await this.#need(4), this.#take(4)) : undefined;
    await this.#need(len);
    const payload = this.#take(len);
    if (mask) { for (let i = 0; i < len; i++) payload[i] ^= mask[i & 3]; }
    return { fin: (h[0] & 0x80) !== 0, opcode: h[0] & 0x0f, masked, payload };
  }

  /** Read the request head of the upgrade and answer 101. */
  async accept(): Promise<void> {
    for (let i = 0; i < 100; i++) {
      const text = dec.decode(this.#buf);
      const end = text.indexOf("\r\n\r\n");
      if (end >= 0) {
        this.#buf = this.#buf.subarray(end + 4);
        await writeAll(
          this.conn,
          enc.encode("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"),
        );
        return;
      }
      if (!(await this.#need(this.#buf.length + 1))) throw new Error("closed before upgrade");
    }
  }
}

/** A server frame (unmasked unless `mask` is given). */
function serverFrame(opcode: number, payload: Uint8Array, fin = true, mask?: number[]) {
  const len = payload.length;
  const head = len < 126 ? 2 : len < 65536 ? 4 : 10;
  const out = new Uint8Array(head + (mask ? 4 : 0) + len);
  out[0] = (fin ? 0x80 : 0) | opcode;
  if (len < 126) out[1] = len;
  else if (len < 65536) {
    out[1] = 126;
    out[2] = len >> 8;
    out[3] = len & 0xff;
  } else {
    out[1] = 127;
    new DataView(out.buffer).setBigUint64(2, BigInt(len));
  }
  if (mask) {
    out[1] |= 0x80;
    out.set(mask, head);
    for (let i = 0; i < len; i++) out[head + 4 + i] = payload[i] ^ mask[i & 3];
  } else out.set(payload, head);
  return out;
}

/** A client stream connected to a raw server on 127.0.0.1. */
async function rawPair(): Promise<{ client: Duplex; server: RawServer; close(): void }> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepting = listener.accept();
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  const server = new RawServer(await accepting);
  listener.close();
  const [leftover] = await Promise.all([clientHandshake(conn), server.accept()]);
  const client = websocketClientStream(conn, leftover);
  return {
    client,
    server,
    close: () => {
      client.destroy();
      try {
        server.conn.close();
      } catch {
        // closed by the test
      }
    },
  };
}

function once(stream: Duplex, event: string): Promise<unknown> {
  return new Promise((resolve) => stream.once(event, resolve));
}

Deno.test("client stream ↔ Deno's server WebSocket: 16 MiB each way, in order", async () => {
  let serverSide: Duplex | undefined;
  const gotServer = Promise.withResolvers<Duplex>();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    const { socket, response } = Deno.upgradeWebSocket(req, { protocol: "kubesphere-v1" });
    serverSide = websocketStream(socket);
    gotServer.resolve(serverSide);
    return response;
  });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
  const client = websocketClientStream(conn, await clientHandshake(conn));
  const srv = await gotServer.promise;
  try {
    // A WebSocket close is a full close: read exactly what is sent, then close.
    const total = 16 << 20;
    const up = readBytes(srv, total);
    const down = readBytes(client, total);
    const hashUp = createHash("sha256");
    const hashDown = createHash("sha256");
    // Many writes of odd sizes, both directions at once.
    const pump = async (s: Duplex, seed: number, h: ReturnType<typeof createHash>) => {
      const chunk = patternChunk(seed);
      let sent = 0;
      for (let i = 0; sent < total; i++) {
        const size = 1 + ((i * 7919) % 70_000);
        const piece = Buffer.from(chunk.subarray(0, Math.min(size, total - sent)));
        h.update(piece);
        sent += piece.length;
        if (!s.write(piece)) await once(s, "drain");
      }
    };
    await Promise.all([pump(client, 1, hashUp), pump(srv, 2, hashDown)]);
    const [gotUp, gotDown] = await Promise.all([up, down]);
    assertEquals(createHash("sha256").update(gotUp).digest("hex"), hashUp.digest("hex"));
    assertEquals(createHash("sha256").update(gotDown).digest("hex"), hashDown.digest("hex"));
  } finally {
    client.destroy();
    serverSide?.destroy();
    await server.shutdown();
  }
});

Deno.test("client frames are masked, sized with 7/16/64-bit lengths, and batch same-tick writes", async () => {
  const { client, server, close } = await rawPair();
  try {
    for (const size of [1, 125, 126, 65535, 65536, 300_000]) {
      const payload = Buffer.from(patternChunk(size).subarray(0, size));
      client.write(payload);
      const f = (await server.frame())!;
      assertEquals(f.opcode, 2);
      assert(f.masked, "client frames must be masked");
      assert(f.fin);
      assertEquals(f.payload.length, size);
      assert(Buffer.from(f.payload).equals(payload), `payload of ${size} bytes`);
    }
    // 100 writes in one tick become one frame.
    const parts = Array.from({ length: 100 }, (_, i) => Buffer.from(`part-${i};`));
    for (const p of parts) client.write(p);
    const f = (await server.frame())!;
    assertEquals(dec.decode(f.payload), parts.map((p) => p.toString()).join(""));
    // Larger than maxMessage (1 MiB): split into several frames, bytes intact.
    const big = Buffer.from(new Uint8Array(3 << 20).map((_, i) => i * 13));
    client.write(big);
    let got = 0;
    const all = Buffer.alloc(big.length);
    while (got < big.length) {
      const g = (await server.frame())!;
      assert(g.payload.length <= 1 << 20);
      all.set(g.payload, got);
      got += g.payload.length;
    }
    assert(all.equals(big));
  } finally {
    close();
  }
});

Deno.test("a pooled buffer written whole is given back once framed, and its bytes went out", async () => {
  const { client, server, close } = await rawPair();
  try {
    const packet = takeBuffer(40_000);
    const other = takeBuffer(40_000);
    packet.set(patternChunk(40_000).subarray(0, 40_000));
    const want = Buffer.from(packet);
    const freeBefore = freeBufferBytes();
    client.write(packet);
    const f = (await server.frame())!;
    assert(Buffer.from(f.payload).equals(want), "the frame carries the bytes as written");
    assertEquals(freeBufferBytes(), freeBefore + packet.buffer.byteLength);
    // A buffer written as a view into its middle is left to the GC.
    client.write(other.subarray(8));
    await server.frame();
    assertEquals(freeBufferBytes(), freeBefore + packet.buffer.byteLength);
    assertEquals(takeBuffer(40_000).buffer, packet.buffer, "reused by the next packet");
  } finally {
    close();
  }
});

Deno.test("server frames: split anywhere, fragmented, masked, with ping and close", async () => {
  const { client, server, close } = await rawPair();
  try {
    const received = readAllNode(client);
    const a = enc.encode("hello ");
    const b = new Uint8Array(70_000).fill(0x61);
    const c = enc.encode(" world");
    const wire = new Uint8Array([
      ...serverFrame(2, a, false),
      ...serverFrame(9, enc.encode("are you there")), // ping between fragments
      ...serverFrame(0, b, false),
      ...serverFrame(0, c, true, [1, 2, 3, 4]), // a masked frame is unmasked too
    ]);
    // One byte at a time: headers and payloads split at every position.
    for (let i = 0; i < 40; i++) await writeAll(server.conn, wire.subarray(i, i + 1));
    await writeAll(server.conn, wire.subarray(40));
    const pong = (await server.frame())!;
    assertEquals(pong.opcode, 0xa);
    assertEquals(dec.decode(pong.payload), "are you there");
    await writeAll(server.conn, serverFrame(8, new Uint8Array([0x03, 0xe8])));
    const closeReply = (await server.frame())!;
    assertEquals(closeReply.opcode, 8);
    assertEquals([...closeReply.payload], [0x03, 0xe8]);
    const got = await received;
    assertEquals(got.length, a.length + b.length + c.length);
    assertEquals(got.subarray(0, 6).toString(), "hello ");
    assertEquals(got.subarray(got.length - 6).toString(), " world");
    // After the close handshake the client closes the connection.
    assertEquals(await server.frame(), undefined);
  } finally {
    close();
  }
});

Deno.test("a text message is a protocol error that destroys the stream", async () => {
  const { client, server, close } = await rawPair();
  try {
    const failed = new Promise<Error>((resolve) => client.once("error", resolve));
    await writeAll(server.conn, serverFrame(1, enc.encode("nope")));
    const err = await failed;
    assert(/text message/.test(err.message), err.message);
    assertEquals(await server.frame(), undefined);
  } finally {
    close();
  }
});

Deno.test("a server frame with reserved bits set is a protocol error that destroys the stream", async () => {
  const { client, server, close } = await rawPair();
  try {
    // Settles either way: an error, or the payload delivered as if the frame were fine.
    const outcome = new Promise<string>((resolve) => {
      client.once("error", (e: Error) => resolve(e.message));
      client.once("data", () => resolve("the frame was accepted"));
    });
    const frame = serverFrame(2, enc.encode("compressed?"));
    frame[0] |= 0x40; // RSV1, as permessage-deflate would set it
    await writeAll(server.conn, frame);
    const got = await outcome;
    assert(/reserved bits/.test(got), got);
    assertEquals(await server.frame(), undefined);
  } finally {
    close();
  }
});

Deno.test("end() flushes what was written, then sends a close frame", async () => {
  const { client, server, close } = await rawPair();
  try {
    client.write(Buffer.from("last words"));
    client.end();
    const f = (await server.frame())!;
    assertEquals(dec.decode(f.payload), "last words");
    const c = (await server.frame())!;
    assertEquals(c.opcode, 8);
    // The server answers; the client then closes the connection.
    const ended = once(client, "close");
    await writeAll(server.conn, serverFrame(8, new Uint8Array([0x03, 0xe8])));
    await ended;
    assertEquals(await server.frame(), undefined);
  } finally {
    close();
  }
});

Deno.test("writes report backpressure while the server does not read, and drain after", async () => {
  const { client, server, close } = await rawPair();
  try {
    const chunk = Buffer.alloc(256 * 1024, 7);
    let written = 0;
    let full = false;
    for (let i = 0; i < 400 && !full; i++) {
      written += chunk.length;
      full = !client.write(chunk);
    }
    assert(full, `write() never returned false after ${written} bytes`);
    const drained = once(client, "drain");
    let got = 0;
    while (got < written) {
      const f = await server.frame();
      if (!f) throw new Error("connection closed");
      got += f.payload.length;
    }
    await drained;
    assertEquals(got, written);
  } finally {
    close();
  }
});

Deno.test("encodeClientFrame masks a control frame", () => {
  const f = encodeClientFrame(9, enc.encode("ping!"));
  assertEquals(f[0], 0x89);
  assertEquals(f[1], 0x80 | 5);
  const mask = f.subarray(2, 6);
  assertEquals(dec.decode(f.subarray(6).map((b, i) => b ^ mask[i & 3])), "ping!");
});
