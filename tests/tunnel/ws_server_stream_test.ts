/**
 * The server side of our WebSocket framing (the proxy's agent port): bytes
 * both ways against our client, and against a raw client that sends frames
 * byte by byte: what it refuses (unmasked frames, misplaced continuations, a
 * message over the receive limit however it is fragmented), the close frame
 * saying why, and a connection that is closed, not left waiting, whether the
 * peer answers or not.
 */

import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import type { Duplex } from "node:stream";
import { assert, assertEquals } from "../helpers/assert.ts";
import { patternChunk, readBytes, writeAll } from "../helpers/tunnel.ts";
import { freeBufferBytes, takeBuffer } from "../../lib/buffer_pool.ts";
import {
  websocketClientStream,
  websocketServerStream,
  type WsConnStream,
  type WsConnStreamOptions,
} from "../../lib/tunnel/ws_stream.ts";
import { encodeFrame, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING } from "../../lib/tunnel/ws_frame.ts";

const enc = new TextEncoder();

/** A connected TCP pair on 127.0.0.1: `server` is the accepted end. */
async function tcpPair(): Promise<{ client: Deno.TcpConn; server: Deno.TcpConn }> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepted = listener.accept();
  const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  const server = await accepted;
  listener.close();
  return { client, server };
}

/** A raw client: writes frames as given, reads the server's frames (or EOF). */
class RawClient {
  #buf = new Uint8Array(0);
  constructor(readonly conn: Deno.Conn) {}

  send(opcode: number, payload: Uint8Array, fin = true): Promise<void> {
    const frame = encodeFrame(opcode, payload, true);
    if (!fin) frame[0] &= 0x7f;
    return writeAll(this.conn, frame).catch(() => {});
  }

  async #need(n: number): Promise<boolean> {
    const chunk = new Uint8Array(64 * 1024);
    while (this.#buf.length < n) {
      const k = await this.conn.read(chunk).catch(() => null);
      if (k === null) return false;
      const next = new Uint8Array(this.#buf.length + k);
      next.set(this.#buf);
      next.set(chunk.subarray(0, k), this.#buf.length);
      this.#buf = next;
    }
    return true;
  }

  /** The next frame from the server (unmasked by the server), or undefined at EOF/reset. */
  async frame(): Promise<{ opcode: number; masked: boolean; payload: Uint8Array } | undefined> {
    if (!(await this.#need(2))) return undefined;
    let len = this.#buf[1] & 0x7f;
    let at = 2;
    if (len === 126) {
      if (!(await this.#need(4))) return undefined;
      len = (this.#buf[2] << 8) | this.#buf[3];
      at = 4;
    } else if (len === 127) {
      if (!(await this.#need(10))) return undefined;
      len = Number(new DataView(this.#buf.buffer, this.#buf.byteOffset + 2).getBigUint64(0));
      at = 10;
    }
    if (!(await this.#need(at + len))) return undefined;
    const out = {
      opcode: this.#buf[0] & 0x0f,
      masked: (this.#buf[1] & 0x80) !== 0,
      payload: this.#buf.slice(at, at + len),
    };
    this.#buf = this.#buf.subarray(at + len);
    return out;
  }

  /** Frames until EOF (bounded), the last one first if it is a close. */
  async untilEof(): Promise<{ closeCode?: number; reason: string; frames: number }> {
    let closeCode: number | undefined;
    let reason = "";
    let frames = 0;
    for (let i = 0; i < 10_000; i++) {
      const f = await this.frame();
      if (!f) break;
      frames++;
      if (f.opcode === OP_CLOSE) {
        closeCode = (f.payload[0] << 8) | f.payload[1];
        reason = new TextDecoder().decode(f.payload.subarray(2));
      }
    }
    return { closeCode, reason, frames };
  }
}

async function serverWithRawClient(
  opts: WsConnStreamOptions = {},
): Promise<{ stream: WsConnStream; raw: RawClient; close(): void }> {
  const { client, server } = await tcpPair();
  const stream = websocketServerStream(server, new Uint8Array(0), opts);
  stream.on("error", () => {});
  // A server that never closes fails the test (EOF never comes) instead of hanging it.
  const guard = setTimeout(() => client.close(), 30_000);
  return {
    stream,
    raw: new RawClient(client),
    close: () => {
      clearTimeout(guard);
      stream.destroy();
      try {
        client.close();
      } catch {
        // closed by the test
      }
    },
  };
}

Deno.test("server stream ↔ client stream over TCP: 16 MiB each way, in order, unmasked down", async () => {
  const { client: c, server: s } = await tcpPair();
  const server = websocketServerStream(s);
  const client = websocketClientStream(c);
  try {
    const total = 16 << 20;
    const up = readBytes(server, total);
    const down = readBytes(client, total);
    const hashes = [createHash("sha256"), createHash("sha256")];
    const pump = async (d: Duplex, seed: number, h: ReturnType<typeof createHash>) => {
      const chunk = patternChunk(seed);
      let sent = 0;
      for (let i = 0; sent < total; i++) {
        const piece = Buffer.from(
          chunk.subarray(0, Math.min(1 + ((i * 7919) % 70_000), total - sent)),
        );
        h.update(piece);
        sent += piece.length;
        if (!d.write(piece)) await new Promise((r) => d.once("drain", r));
      }
    };
    await Promise.all([pump(client, 1, hashes[0]), pump(server, 2, hashes[1])]);
    const [gotUp, gotDown] = await Promise.all([up, down]);
    assertEquals(createHash("sha256").update(gotUp).digest("hex"), hashes[0].digest("hex"));
    assertEquals(createHash("sha256").update(gotDown).digest("hex"), hashes[1].digest("hex"));
  } finally {
    client.destroy();
    server.destroy();
  }
});

Deno.test("server frames are unmasked; masked client frames split anywhere are read, pings answered", async () => {
  const { stream, raw, close } = await serverWithRawClient();
  try {
    const got = readBytes(stream, 11);
    const wire = new Uint8Array([
      ...encodeFrame(OP_BINARY, enc.encode("hello"), true).map((b, i) => i === 0 ? b & 0x7f : b),
      ...encodeFrame(OP_PING, enc.encode("there?"), true),
      ...encodeFrame(OP_CONT, enc.encode(" world"), true),
    ]);
    for (let i = 0; i < wire.length; i++) await writeAll(raw.conn, wire.subarray(i, i + 1));
    assertEquals((await got).toString(), "hello world");
    const pong = (await raw.frame())!;
    assertEquals([pong.opcode, new TextDecoder().decode(pong.payload)], [0xa, "there?"]);
    stream.write(Buffer.from("down"));
    const f = (await raw.frame())!;
    assertEquals([f.opcode, f.masked, new TextDecoder().decode(f.payload)], [2, false, "down"]);
  } finally {
    close();
  }
});

Deno.test("server refuses protocol errors with a close frame saying why, then closes", async () => {
  const cases: [string, (raw: RawClient) => Promise<void>, number, RegExp][] = [
    [
      "unmasked frame",
      async (raw) => {
        await writeAll(raw.conn, new Uint8Array([0x82, 0x02, 1, 2]));
      },
      1002,
      /unmasked/,
    ],
    [
      "continuation outside a message",
      (raw) => raw.send(OP_CONT, enc.encode("x")),
      1002,
      /continuation/,
    ],
    [
      "new message inside a fragmented one",
      async (raw) => {
        await raw.send(OP_BINARY, enc.encode("a"), false);
        await raw.send(OP_BINARY, enc.encode("b"));
      },
      1002,
      /inside a fragmented/,
    ],
    ["text", (raw) => raw.send(0x1, enc.encode("hi")), 1003, /text/],
    [
      "reserved bits",
      async (raw) => {
        const f = encodeFrame(OP_BINARY, enc.encode("z"), true);
        f[0] |= 0x40;
        await writeAll(raw.conn, f);
      },
      1002,
      /reserved/,
    ],
  ];
  for (const [what, send, code, reason] of cases) {
    const { stream, raw, close } = await serverWithRawClient();
    try {
      const failed = new Promise<Error>((r) => stream.once("error", r));
      await send(raw);
      const end = await raw.untilEof();
      assertEquals(end.closeCode, code, what);
      assert(reason.test(end.reason), `${what}: ${end.reason}`);
      assert(reason.test((await failed).message), what);
    } finally {
      close();
    }
  }
});

Deno.test("the receive limit counts a message's frames together, however it is fragmented", async () => {
  const limit = 4096;
  const sends: [string, (raw: RawClient) => Promise<void>][] = [
    ["one frame", (raw) => raw.send(OP_BINARY, new Uint8Array(limit + 1))],
    ["1 KiB fragments", async (raw) => {
      await raw.send(OP_BINARY, new Uint8Array(1024), false);
      for (let i = 0; i < 4; i++) await raw.send(OP_CONT, new Uint8Array(1024), i === 3);
    }],
  ];
  for (const [what, send] of sends) {
    const { stream, raw, close } = await serverWithRawClient({ maxReceive: limit });
    try {
      let received = 0;
      stream.on("data", (c: Buffer) => received += c.length);
      await send(raw);
      const end = await raw.untilEof();
      assertEquals(end.closeCode, 1009, what);
      assert(received <= limit, `${what}: ${received} bytes passed on`);
    } finally {
      close();
    }
  }
  // At the limit, fragmented, and many such messages: all fine.
  const { stream, raw, close } = await serverWithRawClient({ maxReceive: limit });
  try {
    const got = readBytes(stream, 3 * limit);
    for (let m = 0; m < 3; m++) {
      await raw.send(OP_BINARY, new Uint8Array(1024).fill(m), false);
      for (let i = 0; i < 3; i++) await raw.send(OP_CONT, new Uint8Array(1024).fill(m), i === 2);
    }
    const all = await got;
    assert(all.subarray(2 * limit).every((b) => b === 2));
    // Raised (as the proxy does once the agent is accepted): a longer message passes.
    stream.setMaxReceive(1 << 20);
    const more = readBytes(stream, 100_000);
    await raw.send(OP_BINARY, new Uint8Array(100_000).fill(7));
    assert((await more).every((b) => b === 7));
  } finally {
    close();
  }
});

Deno.test("end(): a close frame, then the connection closes whether or not the peer answers", async () => {
  // A peer that answers: closed once its close frame arrives.
  {
    const { stream, raw, close } = await serverWithRawClient({ closeWaitMs: 60_000 });
    try {
      stream.end(Buffer.from("bye"));
      assertEquals(new TextDecoder().decode((await raw.frame())!.payload), "bye");
      assertEquals((await raw.frame())!.opcode, OP_CLOSE);
      await raw.send(OP_CLOSE, new Uint8Array([0x03, 0xe8]));
      assertEquals(await raw.frame(), undefined, "EOF after the close handshake");
    } finally {
      close();
    }
  }
  // A silent peer: closed after the close wait, not held for ever.
  {
    const { stream, raw, close } = await serverWithRawClient({ closeWaitMs: 200 });
    try {
      stream.end();
      assertEquals((await raw.frame())!.opcode, OP_CLOSE);
      assertEquals(await raw.frame(), undefined, "EOF although the peer never answered");
    } finally {
      close();
    }
  }
});

Deno.test("destroy() closes the connection at once; a peer's close is answered and closed", async () => {
  {
    const { stream, raw, close } = await serverWithRawClient({ closeWaitMs: 60_000 });
    try {
      stream.destroy();
      const end = await raw.untilEof();
      assertEquals(end.frames, 0, "nothing sent, the connection just closes");
    } finally {
      close();
    }
  }
  {
    const { stream, raw, close } = await serverWithRawClient({ closeWaitMs: 60_000 });
    try {
      const ended = new Promise((r) => stream.once("close", r));
      await raw.send(OP_CLOSE, new Uint8Array([0x03, 0xe8]));
      const end = await raw.untilEof();
      assertEquals(end.closeCode, 1000);
      await ended;
    } finally {
      close();
    }
  }
});

Deno.test("server side: packet buffers go back to the pool once framed, and serve later packets intact", async () => {
  const { stream, raw, close } = await serverWithRawClient();
  try {
    const fill = (b: Uint8Array, v: number) => b.fill(v);
    const a = fill(takeBuffer(40_000), 1);
    const freeBefore = freeBufferBytes();
    stream.write(a);
    const first = (await raw.frame())!;
    assert(first.payload.every((v) => v === 1) && first.payload.length === 40_000);
    // The packet, and the pooled frame it was copied into once written.
    assert(freeBufferBytes() >= freeBefore + a.buffer.byteLength, "given back once framed");
    const next = [takeBuffer(40_000), takeBuffer(40_000)];
    const reused = next.find((b) => b.buffer === a.buffer)!;
    assert(reused, "the next packets reuse it");
    // Two in one tick, the second in the first one's old buffer.
    stream.write(fill(next.find((b) => b !== reused)!, 2));
    stream.write(fill(reused, 3));
    const both = (await raw.frame())!;
    assertEquals(both.payload.length, 80_000);
    assert(both.payload.subarray(0, 40_000).every((v) => v === 2), "the second packet");
    assert(both.payload.subarray(40_000).every((v) => v === 3), "the third, as written");
  } finally {
    close();
  }
});

Deno.test("read reuse: one buffer while the reader takes bytes at once; none overwritten while bytes wait", async () => {
  for (const mode of ["at once", "paused at times", "off"] as const) {
    const { client: c, server: s } = await tcpPair();
    const server = websocketServerStream(s);
    const client = websocketClientStream(c);
    if (mode !== "off") server.setReadReuse(() => true);
    try {
      const total = 8 << 20;
      const got = createHash("sha256");
      const buffers = new Set<ArrayBufferLike>();
      let received = 0;
      let chunks = 0;
      const done = new Promise<void>((resolve) => {
        server.on("data", (chunk: Buffer) => {
          // The reader keeps nothing: it hashes each chunk as it is handed over.
          got.update(chunk);
          buffers.add(chunk.buffer);
          received += chunk.length;
          if (received >= total) resolve();
          if (mode === "paused at times" && ++chunks % 7 === 0) {
            // Chunks pushed meanwhile wait in the stream: their buffer must not be reused.
            server.pause();
            setTimeout(() => server.resume(), 0);
          }
        });
      });
      const want = createHash("sha256");
      const pattern = patternChunk(4);
      for (let sent = 0, i = 0; sent < total; i++) {
        const piece = Buffer.from(
          pattern.subarray(0, Math.min(1 + ((i * 7919) % 200_000), total - sent)),
        );
        want.update(piece);
        sent += piece.length;
        if (!client.write(piece)) await new Promise((r) => client.once("drain", r));
      }
      await done;
      assertEquals(got.digest("hex"), want.digest("hex"), mode);
      if (mode === "at once") assert(buffers.size < 20, `${buffers.size} read buffers`);
      if (mode === "off") assert(buffers.size > 30, `${buffers.size} read buffers`);
    } finally {
      client.destroy();
      server.destroy();
    }
  }
});
