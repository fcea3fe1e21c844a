/**
 * Tests of the ssh2 hooks for the Go tower's SSH dialect: non-standard identification lines
 * (accepted and sent, hashed exactly as on the wire) and the `kubesphere` channel type.
 * Both SSH ends are ssh2 over an in-memory Duplex pair that records every byte written.
 */

import { Buffer } from "node:buffer";
import { createHash, generateKeyPairSync, randomBytes } from "node:crypto";
import net from "node:net";
import { Duplex } from "node:stream";
import assert from "node:assert/strict";
// @ts-types="@types/ssh2"
import ssh2 from "ssh2";
import type { Connection, ServerChannel } from "ssh2";
import { onKubesphereChannel } from "../../lib/tunnel/channel_accept.ts";
import {
  ChannelOpenError,
  openChannelWithExtraData,
  openKubesphereChannel,
} from "../../lib/tunnel/channel_open.ts";
import { OPEN_FAILURE } from "../../lib/tunnel/protocol.ts";
import { acceptAnyIdent, type IdentOptions, sendCustomIdent } from "../../lib/tunnel/ssh_ident.ts";
import { checkConnection, checkSsh2 } from "../../lib/tunnel/ssh2_internals.ts";
import { deadline } from "../helpers/deadline.ts";

const { Client, Server } = ssh2;
type Client = InstanceType<typeof Client>;
type Server = InstanceType<typeof Server>;

const HOST_KEY = generateKeyPairSync("ec", { namedCurve: "prime256v1" }).privateKey.export({
  type: "sec1",
  format: "pem",
}) as string;

/**
 * One end of an in-memory byte pipe; `written` keeps everything this end sent. Delivery to the
 * peer is asynchronous (a microtask), like a socket: a synchronous push from inside `write()`
 * re-enters ssh2 mid-update (Channel._write caches the window) and stalls channel windows.
 */
class PipeEnd extends Duplex {
  peer!: PipeEnd;
  written: Buffer[] = [];
  constructor() {
    super({ allowHalfOpen: false });
  }
  override _write(chunk: Buffer, _enc: string, cb: (err?: Error | null) => void): void {
    const copy = Buffer.from(chunk);
    this.written.push(copy);
    queueMicrotask(() => this.peer.push(copy));
    cb();
  }
  override _final(cb: (err?: Error | null) => void): void {
    queueMicrotask(() => this.peer.push(null));
    cb();
  }
  override _read(): void {}
  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    queueMicrotask(() => {
      if (!this.peer.readableEnded && !this.peer.destroyed) this.peer.push(null);
    });
    cb(err);
  }
  wire(): Buffer {
    return Buffer.concat(this.written);
  }
}

function pipePair(): [PipeEnd, PipeEnd] {
  const a = new PipeEnd();
  const b = new PipeEnd();
  a.peer = b;
  b.peer = a;
  return [a, b];
}

function once<T = unknown>(
  em: { once(ev: string, fn: (...a: unknown[]) => void): unknown },
  ev: string,
): Promise<T> {
  return new Promise((resolve) => em.once(ev, (...args: unknown[]) => resolve(args[0] as T)));
}

/** First "error" of an emitter; later ones (ssh2 may emit several) are swallowed. */
function firstError(em: { on(ev: string, fn: (e: Error) => void): unknown }): Promise<Error> {
  return new Promise((resolve) => em.on("error", (e: Error) => resolve(e)));
}

interface Session {
  client: Client;
  conn: Connection;
  clientEnd: PipeEnd;
  serverEnd: PipeEnd;
  peerIdent: string;
  close(): Promise<void>;
}

interface SessionOpts {
  /** ssh2 `algorithms` for both ends. */
  algorithms?: Record<string, string[]>;
  client?: IdentOptions | "plain";
  server?: IdentOptions | "plain";
  beforeConnect?: (client: Client) => void;
}

/** Server (proxy role) and client (agent role) connected in memory; resolves when both ready. */
async function session(opts: SessionOpts = {}): Promise<Session> {
  const [clientEnd, serverEnd] = pipePair();
  const server: Server = new Server({ hostKeys: [HOST_KEY], algorithms: opts.algorithms });
  let peerIdent = "";
  const connP = new Promise<Connection>((resolve) => {
    server.on("connection", (conn: Connection, info: { header: { identRaw: string } }) => {
      peerIdent = info.header.identRaw;
      conn.on("authentication", (ctx) => ctx.accept());
      conn.on("error", () => {});
      conn.once("ready", () => resolve(conn));
    });
  });
  if (opts.server !== "plain") acceptAnyIdent(serverEnd, server, opts.server ?? {});
  server.injectSocket(serverEnd as unknown as import("node:net").Socket);

  const client = new Client();
  if (opts.client !== "plain") acceptAnyIdent(clientEnd, client, opts.client ?? {});
  opts.beforeConnect?.(client);
  const readyP = once(client, "ready");
  const errP = firstError(client).then((e) => {
    throw e;
  });
  client.connect({ sock: clientEnd, username: "", password: "", algorithms: opts.algorithms });
  const [conn] = await deadline(
    Promise.race([Promise.all([connP, readyP]), errP]),
    10_000,
    "ready",
  );
  return {
    client,
    conn,
    clientEnd,
    serverEnd,
    peerIdent,
    close: async () => {
      const closed = Promise.all([once(client, "close"), once(conn, "close")]);
      client.end();
      await deadline(closed, 5_000, "session close");
    },
  };
}

const KS_CLIENT = "SSH-kubesphere-v1-client";
const KS_SERVER = "SSH-kubesphere-v1-server";

Deno.test("ssh2 internals the compat hooks rely on are present", async () => {
  checkSsh2();
  let seen: Client | Connection | undefined;
  const s = await session({
    beforeConnect: (c) => {
      c.once("connect", () => {
        checkConnection(c);
        seen = c;
      });
    },
  });
  assert.ok(seen);
  checkConnection(s.conn);
  checkConnection(s.client);
  await s.close();
});

Deno.test("kubesphere idents both ways: kex completes, exact lines on the wire", async () => {
  const s = await session({ client: { sendIdent: KS_CLIENT }, server: { sendIdent: KS_SERVER } });
  assert.equal(s.clientEnd.wire().subarray(0, 26).toString("latin1"), `${KS_CLIENT}\r\n`);
  assert.equal(s.serverEnd.wire().subarray(0, 26).toString("latin1"), `${KS_SERVER}\r\n`);
  assert.equal(s.peerIdent, KS_CLIENT);
  await s.close();
});

Deno.test("an unhooked ssh2 client refuses SSH-kubesphere-v1-server (why the hook exists)", async () => {
  const [clientEnd, serverEnd] = pipePair();
  const server: Server = new Server({ hostKeys: [HOST_KEY] });
  sendCustomIdent(serverEnd, server, KS_SERVER);
  server.on("connection", (conn: Connection) => {
    conn.on("authentication", (ctx) => ctx.accept());
    conn.on("close", () => {});
  });
  server.injectSocket(serverEnd as unknown as import("node:net").Socket);
  const plain = new Client();
  const errP = firstError(plain);
  const closed = once(plain, "close");
  plain.connect({ sock: clientEnd, username: "", password: "" });
  const err = await deadline(errP, 5_000, "plain client error");
  assert.match(err.message, /identification/i);
  await deadline(closed, 5_000, "plain client close");
});

Deno.test("hooked server still accepts a standard SSH-2.0 client", async () => {
  const s = await session({ client: "plain" });
  assert.match(s.peerIdent, /^SSH-2\.0-ssh2js/);
  await s.close();
});

Deno.test("hash must use the raw ident: hashing the rewritten line makes kex fail", async () => {
  await assert.rejects(
    session({
      client: { sendIdent: KS_CLIENT },
      server: { sendIdent: KS_SERVER, hashRewrittenIdent: true },
    }),
    /Handshake failed: signature verification failed/,
  );
});

/** A raw peer: the test writes bytes to `peer`, ssh2 runs on the other end. */
function rawClientAgainst(bytes: Buffer[], end: boolean): { client: Client; peer: PipeEnd } {
  const [clientEnd, peer] = pipePair();
  const client = new Client();
  acceptAnyIdent(clientEnd, client);
  client.connect({ sock: clientEnd, username: "", password: "", readyTimeout: 5_000 });
  peer.resume(); // drain what ssh2 sends, so its EOF reaches us and we close too (like TCP)
  for (const b of bytes) peer.write(b);
  if (end) peer.end();
  return { client, peer };
}

async function expectClientFailure(client: Client, pattern: RegExp): Promise<void> {
  const closed = once(client, "close");
  const err = await deadline(firstError(client), 5_000, "client error");
  assert.match(err.message, pattern);
  await deadline(closed, 5_000, "client close");
}

Deno.test("client: garbage instead of an ident fails cleanly", async () => {
  const { client } = rawClientAgainst([randomBytes(20_000).fill(0x41)], false);
  await expectClientFailure(client, /too long/i);
});

Deno.test("client: 1 MB ident line fails cleanly", async () => {
  const line = Buffer.concat([
    Buffer.from("SSH-"),
    Buffer.alloc(1 << 20, 0x61),
    Buffer.from("\r\n"),
  ]);
  const { client } = rawClientAgainst([line.subarray(0, 5000), line.subarray(5000)], false);
  await expectClientFailure(client, /too long/i);
});

Deno.test("client: bad packet after a kubesphere ident fails cleanly", async () => {
  const bad = Buffer.from([0xff, 0xff, 0xff, 0xff, 4, 20, 0, 0, 0, 0]);
  const { client } = rawClientAgainst([Buffer.from(`${KS_SERVER}\r\n`), bad], false);
  await expectClientFailure(client, /packet length/i);
});

Deno.test("client: truncated packet then EOF closes cleanly without ready", async () => {
  const { client } = rawClientAgainst(
    [Buffer.from(`${KS_SERVER}\r\n`), Buffer.from([0, 0, 1])],
    true,
  );
  let ready = false;
  client.on("ready", () => (ready = true));
  client.on("error", () => {});
  await deadline(once(client, "close"), 5_000, "client close");
  assert.equal(ready, false);
});

Deno.test("server: garbage and 1 MB ident lines are refused, the peer sees EOF", async () => {
  for (
    const bytes of [
      Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
      Buffer.concat([Buffer.from("SSH-"), Buffer.alloc(1 << 20, 0x61), Buffer.from("\r\n")]),
    ]
  ) {
    const [peer, serverEnd] = pipePair();
    const server: Server = new Server({ hostKeys: [HOST_KEY] });
    let connected = false;
    server.on("connection", () => (connected = true));
    acceptAnyIdent(serverEnd, server);
    server.injectSocket(serverEnd as unknown as import("node:net").Socket);
    peer.on("data", () => {});
    const ended = once(peer, "end");
    const closed = once(serverEnd, "close");
    peer.write(bytes);
    await deadline(ended, 5_000, "peer EOF");
    assert.equal(connected, false);
    await deadline(closed, 5_000, "server stream close");
  }
});

Deno.test("ident split byte by byte after greeting lines is still accepted", async () => {
  // The client allows greeting lines before the server ident; feed it a few, one byte a write.
  const [clientEnd, serverEnd] = pipePair();
  const server: Server = new Server({ hostKeys: [HOST_KEY], greeting: "hello SSH-not-an-ident" });
  sendCustomIdent(serverEnd, server, KS_SERVER);
  server.on("connection", (conn: Connection) => conn.on("authentication", (ctx) => ctx.accept()));
  const client = new Client();
  acceptAnyIdent(clientEnd, client);
  // Deliver the server's bytes to the client one at a time.
  const origPush = clientEnd.push.bind(clientEnd);
  clientEnd.push = (chunk: unknown): boolean => {
    if (chunk === null) return origPush(null);
    const b = chunk as Buffer;
    for (const byte of b) origPush(Buffer.from([byte]));
    return true;
  };
  server.injectSocket(serverEnd as unknown as import("node:net").Socket);
  client.connect({ sock: clientEnd, username: "", password: "" });
  await deadline(once(client, "ready"), 10_000, "ready");
  const closed = once(client, "close");
  client.end();
  await deadline(closed, 5_000, "close");
});

// ---------------------------------------------------------------------------------------------
// kubesphere channels

function readAll(ch: Duplex): Promise<Buffer> {
  const parts: Buffer[] = [];
  ch.on("data", (d: Buffer) => parts.push(d));
  return new Promise((resolve, reject) => {
    ch.once("end", () => resolve(Buffer.concat(parts)));
    ch.once("error", reject);
  });
}

const sha = (b: Buffer): string => createHash("sha256").update(b).digest("hex");

Deno.test("kubesphere channel: exact target, MiBs both ways, half-close, close", async () => {
  let seenTarget = "";
  const agentClosed: Promise<unknown>[] = [];
  const s = await session({
    client: { sendIdent: KS_CLIENT },
    server: { sendIdent: KS_SERVER },
    beforeConnect: (c) =>
      onKubesphereChannel(c, (target, accept) => {
        seenTarget = target;
        const ch = accept();
        agentClosed.push(once(ch, "close"));
        // Echo everything; after the proxy's EOF, still send a trailer, then EOF.
        ch.pipe(ch, { end: false });
        ch.on("end", () => ch.end(Buffer.from("after-eof")));
      }),
  });
  const ch: ServerChannel = await deadline(
    openKubesphereChannel(s.conn, "10.96.0.1:443"),
    5_000,
    "open",
  );
  assert.equal(seenTarget, "10.96.0.1:443");
  const proxyClosed = once(ch, "close");
  const payload = randomBytes(5 * 1024 * 1024 + 123);
  const got = readAll(ch);
  ch.end(payload);
  const back = await deadline(got, 20_000, "echo");
  assert.equal(back.length, payload.length + 9);
  assert.equal(sha(back.subarray(0, payload.length)), sha(payload));
  assert.equal(back.subarray(payload.length).toString(), "after-eof");
  await deadline(Promise.all([proxyClosed, ...agentClosed]), 5_000, "channel close");
  await s.close();
});

Deno.test("kubesphere channel: agent half-closes first, proxy still answers", async () => {
  let agentGot: Promise<Buffer> | undefined;
  let agentClosed: Promise<unknown> | undefined;
  const s = await session({
    beforeConnect: (c) =>
      onKubesphereChannel(c, (_target, accept) => {
        const ch = accept();
        agentGot = readAll(ch);
        agentClosed = once(ch, "close");
        ch.end("request");
      }),
  });
  const ch = await deadline(openKubesphereChannel(s.conn, "a:1"), 5_000, "open");
  const proxyClosed = once(ch, "close");
  const req = await deadline(readAll(ch), 5_000, "request");
  assert.equal(req.toString(), "request");
  ch.end("response after the agent's EOF");
  assert.ok(agentGot && agentClosed);
  assert.equal(
    (await deadline(agentGot, 5_000, "response")).toString(),
    "response after the agent's EOF",
  );
  await deadline(Promise.all([proxyClosed, agentClosed]), 5_000, "channel close");
  await s.close();
});

Deno.test("kubesphere channel: several concurrent channels keep their targets", async () => {
  const s = await session({
    beforeConnect: (c) =>
      onKubesphereChannel(c, (target, accept) => {
        const ch = accept();
        ch.on("data", () => {});
        ch.on("end", () => ch.end(target));
      }),
  });
  const targets = ["10.96.0.1:443", "ks-apiserver.kubesphere-system.svc:80", "[::1]:6443"];
  const chans = await deadline(
    Promise.all(targets.map((t) => openKubesphereChannel(s.conn, t, { window: 64 * 1024 }))),
    5_000,
    "open all",
  );
  const replies = await deadline(
    Promise.all(chans.map((ch) => {
      const r = readAll(ch);
      ch.end();
      return r;
    })),
    5_000,
    "replies",
  );
  assert.deepEqual(replies.map((b) => b.toString("latin1")), targets);
  await s.close();
});

Deno.test("kubesphere channel: extra data still seen after ssh2 swaps its packet reader", async () => {
  // ssh2 replaces `_packetRW.read` when zlib compression starts. (zlib itself cannot be tested:
  // ssh2's zlib binding fails under Deno, so compression must stay "none".) Swap it by hand.
  let seen = "";
  let client: Client | undefined;
  const s = await session({
    beforeConnect: (c) => {
      client = c;
      onKubesphereChannel(c, (target, accept) => {
        seen = target;
        const ch = accept();
        ch.on("data", () => {});
        ch.on("end", () => ch.end("pong"));
      });
    },
  });
  const rw = (client as unknown as { _protocol: { _packetRW: { read: object } } })._protocol
    ._packetRW;
  const Reader = rw.read.constructor as new () => object;
  rw.read = new Reader();
  const ch = await deadline(openKubesphereChannel(s.conn, "10.96.0.1:443"), 5_000, "open");
  const r = readAll(ch);
  ch.end("ping");
  assert.equal((await deadline(r, 5_000, "reply")).toString(), "pong");
  assert.equal(seen, "10.96.0.1:443");
  await s.close();
});

Deno.test("over real TCP on 127.0.0.1: kubesphere idents and a channel", async () => {
  const server: Server = new Server({ hostKeys: [HOST_KEY] });
  const tcp = net.createServer((sock) => {
    sendCustomIdent(sock, server, KS_SERVER);
    server.injectSocket(sock);
  });
  await new Promise<void>((resolve) => tcp.listen(0, "127.0.0.1", resolve));
  const port = (tcp.address() as net.AddressInfo).port;
  const connP = new Promise<Connection>((resolve) => {
    server.on("connection", (conn: Connection) => {
      conn.on("authentication", (ctx) => ctx.accept());
      conn.once("ready", () => resolve(conn));
    });
  });
  const sock = net.connect(port, "127.0.0.1");
  await once(sock, "connect");
  const client = new Client();
  sendCustomIdent(sock, client, KS_CLIENT);
  onKubesphereChannel(client, (target, accept) => {
    const ch = accept();
    ch.on("data", () => {});
    ch.on("end", () => ch.end(`hello from ${target}`));
  });
  client.connect({ sock, username: "", password: "" });
  const conn = await deadline(connP, 10_000, "ready");
  const ch = await deadline(openKubesphereChannel(conn, "10.96.0.1:443"), 5_000, "open");
  const r = readAll(ch);
  ch.end();
  assert.equal((await deadline(r, 5_000, "reply")).toString(), "hello from 10.96.0.1:443");
  const closed = Promise.all([once(client, "close"), once(conn, "close")]);
  client.end();
  await deadline(closed, 5_000, "close");
  await new Promise((resolve) => tcp.close(resolve));
});

Deno.test("kubesphere channel: reject carries reason and description to the opener", async () => {
  const s = await session({
    beforeConnect: (c) =>
      onKubesphereChannel(c, (_target, _accept, reject) => {
        reject(OPEN_FAILURE.ADMINISTRATIVELY_PROHIBITED, "target not allowed");
      }),
  });
  const err = await deadline(
    openKubesphereChannel(s.conn, "169.254.169.254:80").then(() => undefined, (e) => e),
    5_000,
    "reject",
  );
  assert.ok(err instanceof ChannelOpenError, String(err));
  assert.equal(err.reason, OPEN_FAILURE.ADMINISTRATIVELY_PROHIBITED);
  assert.equal(err.description, "target not allowed");
  await s.close();
});

Deno.test("kubesphere channel: a throwing handler rejects with CONNECT_FAILED", async () => {
  const s = await session({
    beforeConnect: (c) =>
      onKubesphereChannel(c, () => {
        throw new Error("boom");
      }),
  });
  const err = await deadline(
    openKubesphereChannel(s.conn, "x:1").then(() => undefined, (e) => e),
    5_000,
    "reject",
  );
  assert.ok(err instanceof ChannelOpenError);
  assert.equal(err.reason, OPEN_FAILURE.CONNECT_FAILED);
  await s.close();
});

Deno.test("kubesphere channel: no handler registered → rejected as unknown type", async () => {
  const s = await session();
  const err = await deadline(
    openKubesphereChannel(s.conn, "10.96.0.1:443").then(() => undefined, (e) => e),
    5_000,
    "reject",
  );
  assert.ok(err instanceof ChannelOpenError);
  assert.equal(err.reason, OPEN_FAILURE.UNKNOWN_CHANNEL_TYPE);
  await s.close();
});

Deno.test("other unknown channel types stay rejected when a kubesphere handler exists", async () => {
  let called = false;
  const s = await session({
    beforeConnect: (c) => onKubesphereChannel(c, () => (called = true)),
  });
  const err = await deadline(
    openChannelWithExtraData(s.conn, "something-else", "10.96.0.1:443").then(
      () => undefined,
      (e) => e,
    ),
    5_000,
    "reject",
  );
  assert.ok(err instanceof ChannelOpenError);
  assert.equal(err.reason, OPEN_FAILURE.UNKNOWN_CHANNEL_TYPE);
  assert.equal(called, false);
  await s.close();
});

Deno.test("handler registered after connect() still receives channels", async () => {
  let late: Client | undefined;
  const s = await session({ beforeConnect: (c) => (late = c) });
  assert.ok(late);
  // Registering after the session is up patches the live protocol instance.
  onKubesphereChannel(late, (target, accept) => {
    const ch = accept();
    ch.on("data", () => {});
    ch.on("end", () => ch.end(`ok ${target}`));
  });
  const ch = await deadline(openKubesphereChannel(s.conn, "a:1"), 5_000, "open");
  const r = readAll(ch);
  ch.end();
  assert.equal((await deadline(r, 5_000, "reply")).toString(), "ok a:1");
  await s.close();
});

Deno.test("opening on a closed session rejects instead of hanging", async () => {
  const s = await session();
  const p = openKubesphereChannel(s.conn, "a:1").then(() => undefined, (e) => e);
  const closed = Promise.all([once(s.client, "close"), once(s.conn, "close")]);
  s.clientEnd.destroy();
  const err = await deadline(p, 5_000, "reject on close");
  assert.ok(err instanceof Error);
  await deadline(closed, 5_000, "session close");
});
