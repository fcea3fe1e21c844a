/**
 * The agent's TCP pipe: bytes both ways with half-close, buffers handed to the channel reused
 * only after the channel is done with them, backpressure from a slow channel, and the session's
 * send budget shared by its streams.
 */

import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import { Duplex } from "node:stream";
import { deadline } from "../helpers/deadline.ts";
import { assert, assertEquals } from "../helpers/assert.ts";
import {
  hashAfterEofServer,
  patternChunk,
  sourceServer,
  startTcpServer,
} from "../helpers/tunnel.ts";
import { dialTarget, pipeChannel, splitHostPort } from "../../lib/agent/forward.ts";
import { SendBudget } from "../../lib/tunnel/send_budget.ts";

/**
 * Stands in for an SSH channel: like ssh2, it holds each chunk written until it can send it
 * and copies it out (into a packet) only then, just before the write completes.
 */
class FakeChannel extends Duplex {
  written: Buffer[] = [];
  writtenBytes = 0;
  /** The distinct buffers chunks were written in. */
  buffers = new Set<ArrayBufferLike>();
  ended = false;
  /** When set, each write completes only after this many ms of (bounded) delay. */
  slow = false;
  /** Resolves once a write is held back. */
  stalled = Promise.withResolvers<void>();
  #pending: (() => void)[] = [];

  constructor() {
    super({ allowHalfOpen: true, highWaterMark: 256 * 1024 });
  }
  override _read(): void {}
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.buffers.add(chunk.buffer);
    this.writtenBytes += chunk.length;
    const send = () => {
      this.written.push(Buffer.from(chunk));
      cb();
    };
    if (this.slow) {
      this.#pending.push(send);
      this.stalled.resolve();
    } else send();
  }
  override _final(cb: () => void): void {
    this.ended = true;
    cb();
    // The proxy's side answers our EOF with its own, as the tunnel's half-close does.
    if (!this.eofPushed) this.eof();
  }
  eofPushed = false;
  /** The peer's EOF. */
  eof(): void {
    this.eofPushed = true;
    this.push(null);
  }
  /** Complete the writes held back while `slow`. */
  release(): void {
    for (const f of this.#pending.splice(0)) f();
  }
}

const target = (port: number) => `127.0.0.1:${port}`;

/** SHA-256 of `size` bytes of the sources' pattern `seed`, and of what `ch` was written. */
function hashes(ch: FakeChannel, size: number, seed: number): { got: string; want: string } {
  const got = createHash("sha256");
  for (const c of ch.written) got.update(c);
  const want = createHash("sha256");
  const chunk = patternChunk(seed);
  for (let left = size; left > 0; left -= chunk.length) {
    want.update(chunk.subarray(0, Math.min(left, chunk.length)));
  }
  return { got: got.digest("hex"), want: want.digest("hex") };
}

Deno.test("splitHostPort takes host:port and [v6]:port", () => {
  assertEquals(splitHostPort("10.0.0.1:443"), { hostname: "10.0.0.1", port: 443 });
  assertEquals(splitHostPort("[::1]:6443"), { hostname: "::1", port: 6443 });
  assertEquals(splitHostPort("ks-apiserver.kubesphere-system.svc:80").port, 80);
});

Deno.test("down: 24 MiB from the target arrive intact, then the channel ends; buffers are reused", async () => {
  const size = 24 << 20;
  const source = sourceServer(size, 5);
  const ch = new FakeChannel();
  try {
    await pipeChannel(ch, await dialTarget(target(source.port)));
    assert(ch.ended, "channel end() after the target's EOF");
    assertEquals(ch.writtenBytes, size);
    // Had a buffer been reused before the channel copied the chunk in it, the hash would differ.
    const { got, want } = hashes(ch, size, 5);
    assertEquals(got, want);
    assert(ch.destroyed, "channel destroyed once both directions are done");
    // 24 MiB in reads of at most 256 KiB: 96 distinct buffers or more when none is reused.
    assert(ch.buffers.size <= 40, `${ch.buffers.size} distinct buffers`);
  } finally {
    await source.close();
  }
});

Deno.test("up: channel bytes reach the target, EOF becomes FIN, the reply comes back", async () => {
  const sink = hashAfterEofServer();
  const ch = new FakeChannel();
  try {
    const done = pipeChannel(ch, await dialTarget(target(sink.port)));
    const want = createHash("sha256");
    const chunk = Buffer.from(patternChunk(9));
    for (let i = 0; i < 8; i++) {
      want.update(chunk);
      ch.push(chunk);
    }
    ch.eof(); // the proxy's EOF
    await done;
    const reply = Buffer.concat(ch.written).toString();
    assertEquals(reply, `sha256:${want.digest("hex")} bytes:${8 << 20}\n`);
  } finally {
    await sink.close();
  }
});

Deno.test("a slow channel holds back reading from the target", async () => {
  const size = 64 << 20;
  const source = sourceServer(size, 3);
  const ch = new FakeChannel();
  ch.slow = true;
  try {
    const done = pipeChannel(ch, await dialTarget(target(source.port)));
    await ch.stalled.promise;
    // Give the pipe many turns of the event loop to fill the channel's buffer, then more to
    // (wrongly) keep reading past it.
    const turns = async () => {
      for (let i = 0; i < 50; i++) await new Promise<void>((r) => setTimeout(r, 0));
    };
    await turns();
    const buffered = ch.writableLength;
    await turns();
    assertEquals(ch.writableLength, buffered, "kept reading from the target past backpressure");
    assert(buffered < 1 << 20, `read ${buffered} bytes ahead of a stalled channel`);
    ch.slow = false;
    ch.release();
    await done;
    assertEquals(ch.writtenBytes, size);
    // And intact, though the channel copied each chunk only when its write completed.
    const { got, want } = hashes(ch, size, 3);
    assertEquals(got, want);
  } finally {
    await source.close();
  }
});

Deno.test("the target closing abruptly ends the pipe and closes the channel", async () => {
  const server = startTcpServer(async (conn) => {
    await conn.write(new TextEncoder().encode("partial"));
    conn.close();
  });
  const ch = new FakeChannel();
  try {
    await pipeChannel(ch, await dialTarget(target(server.port)));
    assertEquals(Buffer.concat(ch.written).toString(), "partial");
    assert(ch.destroyed);
  } finally {
    await server.close();
  }
});

Deno.test("the channel closing closes a keep-alive target connection (the stream is released)", async () => {
  const targetSawEof = Promise.withResolvers<void>();
  const server = startTcpServer(async (conn) => {
    // Answers once and keeps the connection open, like an HTTP keep-alive server.
    const buf = new Uint8Array(1024);
    await conn.read(buf);
    await conn.write(new TextEncoder().encode("reply"));
    while ((await conn.read(buf).catch(() => null)) !== null);
    targetSawEof.resolve();
  });
  const ch = new FakeChannel();
  try {
    const done = pipeChannel(ch, await dialTarget(target(server.port)));
    ch.push(Buffer.from("request"));
    for (let i = 0; i < 100 && ch.writtenBytes < 5; i++) {
      await new Promise<void>((r) => setTimeout(r, 0));
    }
    assertEquals(Buffer.concat(ch.written).toString(), "reply");
    ch.destroy(); // the proxy closed the channel
    let timer: ReturnType<typeof setTimeout> | undefined;
    const limit = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error("pipe still open 10 s after close")), 10_000);
    });
    try {
      await Promise.race([Promise.all([done, targetSawEof.promise]), limit]);
    } finally {
      clearTimeout(timer);
    }
  } finally {
    await server.close();
  }
});

Deno.test("a target that ignores our FIN after the channel closed is closed after the linger", async () => {
  const targetClosed = Promise.withResolvers<void>();
  const server = startTcpServer(async (conn) => {
    // Keeps answering and never closes, even after our FIN.
    const buf = new Uint8Array(1024);
    const chatter = new TextEncoder().encode("more");
    try {
      for (;;) {
        await conn.write(chatter);
        await conn.read(buf);
      }
    } catch {
      targetClosed.resolve();
    }
  });
  const ch = new FakeChannel();
  try {
    const done = pipeChannel(ch, await dialTarget(target(server.port)), { lingerMs: 50 });
    ch.push(Buffer.from("request"));
    ch.destroy(); // the proxy closed the channel
    await deadline(Promise.all([done, targetClosed.promise]), 10_000, "pipe and target closed");
  } finally {
    await server.close();
  }
});

Deno.test("send budget: the streams of a session hold at most its limit and 16 KiB each", async () => {
  // A session whose budget is two 16 KiB reads: three streams at once into slow channels.
  const limit = 32 * 1024;
  const budget = new SendBudget(limit);
  const size = 4 << 20;
  const sources = [sourceServer(size, 1), sourceServer(size, 2), sourceServer(size, 3)];
  const chans = sources.map(() => new FakeChannel());
  for (const ch of chans) ch.slow = true;
  try {
    const done = sources.map(async (s, i) =>
      pipeChannel(chans[i], await dialTarget(target(s.port)), { budget })
    );
    await Promise.all(chans.map((ch) => ch.stalled.promise));
    for (let i = 0; i < 50; i++) await new Promise<void>((r) => setTimeout(r, 0));
    assertEquals(budget.streams, 3);
    const unsent = chans.reduce((n, ch) => n + ch.writableLength, 0);
    assert(unsent <= budget.bytes, `${unsent} bytes unsent, ${budget.bytes} counted`);
    assert(budget.bytes <= limit + 3 * 16 * 1024, `the session holds ${budget.bytes} bytes`);
    for (const ch of chans) {
      ch.slow = false;
      ch.release();
    }
    await Promise.all(done);
    for (const ch of chans) assertEquals(ch.writtenBytes, size);
    assertEquals([budget.streams, budget.bytes], [0, 0], "nothing held once every stream is done");
  } finally {
    for (const s of sources) await s.close();
  }
});
