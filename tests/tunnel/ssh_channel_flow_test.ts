/**
 * Flow control of `kubesphere` channels over real TCP: channel writes wait for a congested
 * transport (bounded queues with many channels), the write buffer is small and shared by a
 * connection's channels, and `destroy()` on
 * a channel with unread data still ends in `close` (the proxy's channel count depends on it),
 * also after the peer's CLOSE without EOF, which ends reading only after every byte and makes a
 * later write fail without destroying the channel.
 */

import { Buffer } from "node:buffer";
import type { Duplex } from "node:stream";
import { deadline } from "../helpers/deadline.ts";
import { assert, assertEquals } from "../helpers/assert.ts";
import { type SshPair, sshPair } from "../helpers/ssh_pair.ts";
import { CHANNEL_WRITE_BUFFER } from "../../lib/tunnel/channel_flow.ts";
import { ChannelEndedError } from "../../lib/tunnel/channel_half_close.ts";
import { openKubesphereChannel } from "../../lib/tunnel/channel_open.ts";
import { SESSION_WRITE_BUFFER, writeBufferShare } from "../../lib/tunnel/channel_flow.ts";

/**
 * `n` proxy-opened channels on `l` whose agent has stopped reading its socket, so everything the
 * proxy sends backs up; and the proxy's SSH transport.
 */
async function stalledChannels(l: SshPair, n: number) {
  const channels = await Promise.all(
    Array.from({ length: n }, () => openKubesphereChannel(l.conn, "10.0.0.1:443")),
  );
  l.agentSock.pause();
  const transport = (l.conn as unknown as { _sock: Duplex })._sock;
  return { channels, transport };
}

Deno.test("channel writes wait for a congested transport: 16 channels do not queue 32 MiB", async () => {
  const l = await sshPair();
  try {
    const { channels, transport } = await stalledChannels(l, 16);
    for (const ch of channels) assertEquals(ch.writableHighWaterMark, CHANNEL_WRITE_BUFFER);
    const chunk = Buffer.alloc(64 * 1024, 1);
    // Each channel has a 2 MiB window: without the transport check ssh2 would put all of it,
    // 32 MiB, into the transport's buffer. Write until every channel reports backpressure.
    let stalled = 0;
    const allStalled = Promise.withResolvers<void>();
    for (const ch of channels) {
      let full = false;
      for (let i = 0; i < 64 && !full; i++) full = !ch.write(chunk);
      if (!full) allStalled.reject(new Error("a channel took 4 MiB without backpressure"));
      else if (++stalled === channels.length) allStalled.resolve();
    }
    await deadline(allStalled.promise, 10_000, "all channels stalled");
    const queued = transport.writableLength;
    assert(queued < 8 << 20, `transport queued ${queued} bytes`);
    // Reading again lets everything through.
    l.agentSock.resume();
    const drained = channels.map((ch) => new Promise((r) => ch.once("drain", r)));
    await deadline(Promise.all(drained), 10_000, "drain");
    for (const ch of channels) ch.destroy();
  } finally {
    await l.close();
  }
});

Deno.test("300 channels waiting on a congested transport add one write to it, not one each", async () => {
  const l = await sshPair();
  try {
    const { channels, transport } = await stalledChannels(l, 300);
    // Congest the transport, one channel after the other, then give every channel a 256 KiB
    // write: 75 MiB in all.
    const chunk = Buffer.alloc(256 * 1024, 2);
    for (let i = 0; i < channels.length && !transport.writableNeedDrain; i++) {
      channels[i].write(chunk);
    }
    assert(transport.writableNeedDrain, "transport never congested");
    const before = transport.writableLength;
    for (const ch of channels) ch.write(chunk);
    const queued = transport.writableLength - before;
    assert(queued <= 2 * chunk.length, `transport took ${queued} more bytes while congested`);
    // Reading again lets every channel's write through, in turn.
    l.agentSock.resume();
    const drained = channels.map((ch) =>
      ch.writableNeedDrain ? new Promise((r) => ch.once("drain", r)) : Promise.resolve()
    );
    await deadline(Promise.all(drained), 20_000, "drain");
    for (const ch of channels) ch.destroy();
  } finally {
    await l.close();
  }
});

Deno.test("destroy() with unread data still ends in close, and marks the channel destroyed", async () => {
  const l = await sshPair();
  try {
    // The agent sends a MiB the proxy never reads, then the proxy gives up on the channel.
    l.onAccept = (ch) => {
      ch.on("data", () => {});
      ch.write(Buffer.alloc(1 << 20, 2));
    };
    const ch = await openKubesphereChannel(l.conn, "10.0.0.1:443");
    // No consumer: what arrives stays buffered; `readable` says it has.
    await deadline(new Promise((r) => ch.once("readable", r)), 10_000, "data on the proxy side");
    assert(ch.readableLength > 0);
    const closed = new Promise((r) => ch.once("close", r));
    const agentClosed = new Promise((r) => l.accepted[0].once("close", r));
    ch.destroy();
    assert(ch.destroyed, "destroyed is true after destroy()");
    await deadline(closed, 5_000, "close on the proxy side");
    await deadline(agentClosed, 5_000, "close on the agent side");
  } finally {
    await l.close();
  }
});

/**
 * The agent sends `size` bytes on a new channel, then CLOSE without EOF (as the original Go
 * tower does); resolves with the proxy side, unread, once the CLOSE exchange is done.
 */
async function closedUnread(l: SshPair, size: number) {
  l.onAccept = (ch) => {
    ch.on("data", () => {});
    ch.write(Buffer.alloc(size, 3), () => (ch as unknown as { close(): void }).close());
  };
  const ch = await openKubesphereChannel(l.conn, "10.0.0.1:443");
  const agentClosed = new Promise((r) => l.accepted[l.accepted.length - 1].once("close", r));
  await deadline(agentClosed, 10_000, "the CLOSE exchange");
  return ch;
}

Deno.test("the peer's CLOSE without EOF: every byte is still read, a late write fails alone", async () => {
  const l = await sshPair();
  try {
    const size = 1 << 20;
    const ch = await closedUnread(l, size);
    assert(ch.readableLength > 0, "the tail is still held");
    const late = Promise.withResolvers<Error | null | undefined>();
    assertEquals(ch.write(Buffer.from("late"), (err) => late.resolve(err)), false);
    assert((await late.promise) instanceof ChannelEndedError, "the late write fails");
    assert(!ch.destroyed, "a late write does not destroy the channel");
    let got = 0;
    const ended = new Promise((r) => ch.once("end", r));
    const closed = new Promise((r) => ch.once("close", r));
    ch.on("data", (d: Buffer) => got += d.length);
    await deadline(ended, 5_000, "end");
    assertEquals(got, size);
    await deadline(closed, 5_000, "close");
  } finally {
    await l.close();
  }
});

Deno.test("destroy() after the peer's CLOSE with data unread still ends in close", async () => {
  const l = await sshPair();
  try {
    const ch = await closedUnread(l, 1 << 20);
    assert(ch.readableLength > 0);
    const closed = new Promise((r) => ch.once("close", r));
    ch.destroy(); // the client went away before reading the tail
    await deadline(closed, 5_000, "close on the proxy side");
  } finally {
    await l.close();
  }
});

Deno.test("a connection's channels share one write buffer: 400 channels buffer ~16 MiB, not 100 MiB", async () => {
  const l = await sshPair();
  try {
    const { channels } = await stalledChannels(l, 400);
    assertEquals(channels[0].writableHighWaterMark, writeBufferShare(400));
    assert(writeBufferShare(400) * 400 <= SESSION_WRITE_BUFFER);
    // Write 4 KiB pieces to each until it reports backpressure.
    const piece = Buffer.alloc(4096, 3);
    for (const ch of channels) {
      for (let i = 0; i < 1024 && ch.write(piece); i++);
    }
    const buffered = channels.reduce((n, ch) => n + ch.writableLength, 0);
    assert(
      buffered <= SESSION_WRITE_BUFFER + channels.length * piece.length,
      `${buffered} bytes buffered by 400 channels`,
    );
    // Fewer channels, larger shares (up to CHANNEL_WRITE_BUFFER).
    const closed = channels.slice(100).map((ch) => new Promise((r) => ch.once("close", r)));
    for (const ch of channels.slice(100)) ch.destroy();
    l.agentSock.resume();
    await deadline(Promise.all(closed), 20_000, "300 channels closed");
    assertEquals(channels[0].writableHighWaterMark, writeBufferShare(100));
    assert(writeBufferShare(100) > writeBufferShare(400));
    for (const ch of channels.slice(0, 100)) ch.destroy();
  } finally {
    await l.close();
  }
});
