/**
 * Flow control of `kubesphere` channels over real TCP: channel writes wait for a congested
 * transport (bounded queues with many channels), the write buffer is small, and `destroy()` on
 * a channel with unread data still ends in `close` (the proxy's channel count depends on it).
 */

import { Buffer } from "node:buffer";
import { generateKeyPairSync } from "node:crypto";
import net from "node:net";
import type { Duplex } from "node:stream";
// @ts-types="@types/ssh2"
import ssh2 from "ssh2";
import type { ClientChannel, Connection } from "ssh2";
import { assert, assertEquals } from "../helpers/assert.ts";
import {
  CHANNEL_WRITE_BUFFER,
  onKubesphereChannel,
  openKubesphereChannel,
} from "../../lib/tunnel/ssh_compat.ts";

const { Client, Server } = ssh2;
type Client = InstanceType<typeof Client>;

const HOST_KEY = generateKeyPairSync("ec", { namedCurve: "prime256v1" }).privateKey.export({
  type: "sec1",
  format: "pem",
}) as string;

async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout: ${what}`)), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

interface Link {
  conn: Connection;
  client: Client;
  /** The agent's TCP socket (the proxy's transport peer). */
  agentSock: net.Socket;
  /** Channels the agent accepted, in order. */
  accepted: ClientChannel[];
  onAccept: ((ch: ClientChannel) => void) | undefined;
  close(): Promise<void>;
}

/** An ssh2 server (proxy role) and client (agent role) over TCP on 127.0.0.1. */
async function link(): Promise<Link> {
  const server = new Server({ hostKeys: [HOST_KEY] });
  const serverSocks: net.Socket[] = [];
  const tcp = net.createServer((sock) => {
    serverSocks.push(sock);
    server.injectSocket(sock);
  });
  await new Promise<void>((resolve) => tcp.listen(0, "127.0.0.1", resolve));
  const connP = new Promise<Connection>((resolve) => {
    server.on("connection", (conn: Connection) => {
      conn.on("authentication", (ctx) => ctx.accept());
      conn.on("error", () => {});
      conn.once("ready", () => resolve(conn));
    });
  });
  const agentSock = net.connect((tcp.address() as net.AddressInfo).port, "127.0.0.1");
  await new Promise((r) => agentSock.once("connect", r));
  const client = new Client();
  client.on("error", () => {});
  const l: Link = {
    conn: undefined as unknown as Connection,
    client,
    agentSock,
    accepted: [],
    onAccept: undefined,
    close: async () => {
      const closed = Promise.all(
        [agentSock, ...serverSocks].map((s) =>
          s.destroyed ? Promise.resolve() : new Promise((r) => s.once("close", r))
        ),
      );
      client.end();
      agentSock.destroy();
      for (const s of serverSocks) s.destroy();
      await within(closed, 5_000, "sockets closed");
      await new Promise((r) => tcp.close(r));
    },
  };
  onKubesphereChannel(client, (_target, accept) => {
    const ch = accept();
    l.accepted.push(ch);
    l.onAccept?.(ch);
  });
  client.connect({ sock: agentSock, username: "", password: "" });
  l.conn = await within(connP, 10_000, "ready");
  return l;
}

/**
 * `n` proxy-opened channels on `l` whose agent has stopped reading its socket, so everything the
 * proxy sends backs up; and the proxy's SSH transport.
 */
async function stalledChannels(l: Link, n: number) {
  const channels = await Promise.all(
    Array.from({ length: n }, () => openKubesphereChannel(l.conn, "10.0.0.1:443")),
  );
  l.agentSock.pause();
  const transport = (l.conn as unknown as { _sock: Duplex })._sock;
  return { channels, transport };
}

Deno.test("channel writes wait for a congested transport: 16 channels do not queue 32 MiB", async () => {
  const l = await link();
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
    await within(allStalled.promise, 10_000, "all channels stalled");
    const queued = transport.writableLength;
    assert(queued < 8 << 20, `transport queued ${queued} bytes`);
    // Reading again lets everything through.
    l.agentSock.resume();
    const drained = channels.map((ch) => new Promise((r) => ch.once("drain", r)));
    await within(Promise.all(drained), 10_000, "drain");
    for (const ch of channels) ch.destroy();
  } finally {
    await l.close();
  }
});

Deno.test("300 channels waiting on a congested transport add one write to it, not one each", async () => {
  const l = await link();
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
    await within(Promise.all(drained), 20_000, "drain");
    for (const ch of channels) ch.destroy();
  } finally {
    await l.close();
  }
});

Deno.test("destroy() with unread data still ends in close, and marks the channel destroyed", async () => {
  const l = await link();
  try {
    // The agent sends a MiB the proxy never reads, then the proxy gives up on the channel.
    l.onAccept = (ch) => {
      ch.on("data", () => {});
      ch.write(Buffer.alloc(1 << 20, 2));
    };
    const ch = await openKubesphereChannel(l.conn, "10.0.0.1:443");
    // No consumer: what arrives stays buffered; `readable` says it has.
    await within(new Promise((r) => ch.once("readable", r)), 10_000, "data on the proxy side");
    assert(ch.readableLength > 0);
    const closed = new Promise((r) => ch.once("close", r));
    const agentClosed = new Promise((r) => l.accepted[0].once("close", r));
    ch.destroy();
    assert(ch.destroyed, "destroyed is true after destroy()");
    await within(closed, 5_000, "close on the proxy side");
    await within(agentClosed, 5_000, "close on the agent side");
  } finally {
    await l.close();
  }
});
