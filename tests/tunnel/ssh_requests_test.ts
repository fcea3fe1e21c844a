/**
 * Go-style global requests on ssh2 (lib/tunnel/ssh_requests.ts): the ssh2 internals the module
 * touches are there, replies carry a payload on failure too and reach the requester, replies
 * go out in request order whatever order the handlers finish in, a throwing handler becomes a
 * failure reply, requests without a reply still run, pending requests fail when the
 * connection closes, and requests made during a key exchange are answered after it. Both ends
 * are ssh2 over TCP on 127.0.0.1.
 */

import net from "node:net";
// @ts-types="@types/ssh2"
import ssh2 from "ssh2";
import type { Connection } from "ssh2";
// @ts-ignore: ssh2 internals have no type declarations
import MESSAGE_HANDLERS from "ssh2/lib/protocol/handlers.js";
// @ts-ignore: ssh2 internals have no type declarations
import protocolUtils from "ssh2/lib/protocol/utils.js";
import { assert, assertEquals } from "../helpers/assert.ts";
import { generateHostKeyPem, parseHostKey } from "../../lib/tunnel/hostkey.ts";
import {
  type GlobalReply,
  GlobalRequester,
  type GlobalRequestHandler,
  protocolOf,
  sendRawPacket,
  serveGlobalRequests,
} from "../../lib/tunnel/ssh_requests.ts";
import { deadline } from "../helpers/deadline.ts";

const { Client, Server } = ssh2;
type Client = InstanceType<typeof Client>;

const HOST_KEY = { key: parseHostKey(generateHostKeyPem()).sshKey };
const enc = new TextEncoder();
const dec = new TextDecoder();

/** A server serving `handler` and a client with a requester, connected and ready. */
async function pair(handler: GlobalRequestHandler) {
  const server = new Server({ hostKeys: [HOST_KEY] });
  const connP = new Promise<Connection>((resolve) => {
    server.on("connection", (conn: Connection) => {
      conn.on("error", () => {});
      conn.on("authentication", (ctx) => ctx.accept());
      conn.once("ready", () => {
        serveGlobalRequests(conn, handler);
        resolve(conn);
      });
    });
  });
  const tcp = net.createServer((sock) => server.injectSocket(sock));
  await new Promise<void>((r) => tcp.listen(0, "127.0.0.1", r));
  const client = new Client();
  client.on("error", () => {});
  const ready = new Promise<void>((r) => client.once("ready", () => r()));
  client.connect({
    host: "127.0.0.1",
    port: (tcp.address() as net.AddressInfo).port,
    username: "u",
    password: "p",
  });
  const requester = new GlobalRequester(client);
  await deadline(ready, 10_000, "ready");
  const conn = await deadline(connP, 10_000, "server ready");
  return {
    client,
    conn,
    requester,
    close: async () => {
      const closed = new Promise<void>((r) => client.once("close", () => r()));
      client.end();
      await deadline(closed, 5_000, "closed");
      await new Promise((r) => tcp.close(r));
    },
  };
}

Deno.test("ssh_requests: the ssh2 internals it touches are there", async () => {
  const table = MESSAGE_HANDLERS as Record<number, unknown>;
  for (const type of [80, 81, 82]) assertEquals(typeof table[type], "function", `type ${type}`);
  assertEquals(typeof (protocolUtils as { sendPacket?: unknown }).sendPacket, "function");
  const p = await pair(() => ({ ok: true }));
  try {
    for (const ssh of [p.client, p.conn]) {
      const proto = protocolOf(ssh);
      assertEquals(typeof proto._handlers, "object");
      assertEquals(typeof proto._packetRW.write.alloc, "function");
      assertEquals(typeof proto._packetRW.write.finalize, "function");
      assertEquals(proto._packetRW.write.allocStart, 5);
    }
  } finally {
    await p.close();
  }
});

Deno.test("ssh_requests: replies carry payloads both ways, failures included", async () => {
  const seen: string[] = [];
  const p = await pair((name, payload) => {
    seen.push(`${name}:${dec.decode(payload)}`);
    return name === "config"
      ? { ok: true, payload: enc.encode("welcome") }
      : { ok: false, payload: enc.encode(`Unauthorized ${name}`) };
  });
  try {
    const ok = await p.requester.request("config", enc.encode('{"Name":"a"}'));
    assertEquals(ok.ok, true);
    assertEquals(dec.decode(ok.payload), "welcome");
    const bad = await p.requester.request("other", enc.encode("x"));
    assertEquals(bad.ok, false);
    assertEquals(dec.decode(bad.payload), "Unauthorized other");
    assertEquals(seen, ['config:{"Name":"a"}', "other:x"]);
  } finally {
    await p.close();
  }
});

Deno.test("ssh_requests: replies in request order when handlers finish out of order", async () => {
  const gates = new Map<string, PromiseWithResolvers<GlobalReply>>();
  const arrived = Promise.withResolvers<void>();
  const p = await pair((name) => {
    const g = Promise.withResolvers<GlobalReply>();
    gates.set(name, g);
    if (gates.size === 3) arrived.resolve();
    return g.promise;
  });
  try {
    const replies = ["first", "second", "third"].map((n) =>
      p.requester.request(n, new Uint8Array())
    );
    await deadline(arrived.promise, 5_000, "all three at the server");
    // Finish them backwards: the replies must still come back first, second, third.
    for (const n of ["third", "second", "first"]) {
      gates.get(n)!.resolve({ ok: true, payload: enc.encode(n) });
    }
    const got = await deadline(Promise.all(replies), 5_000, "replies");
    assertEquals(got.map((r) => dec.decode(r.payload)), ["first", "second", "third"]);
  } finally {
    await p.close();
  }
});

Deno.test("ssh_requests: a throwing or rejecting handler is a failure reply; no-reply requests run", async () => {
  const ran = Promise.withResolvers<string>();
  const p = await pair((name) => {
    if (name === "throw") throw new Error("boom");
    if (name === "reject") return Promise.reject(new Error("later boom"));
    if (name === "quiet") ran.resolve(name);
    return { ok: true };
  });
  try {
    const thrown = await p.requester.request("throw", new Uint8Array());
    assertEquals([thrown.ok, dec.decode(thrown.payload)], [false, "internal error: boom"]);
    const rejected = await p.requester.request("reject", new Uint8Array());
    assertEquals([rejected.ok, dec.decode(rejected.payload)], [
      false,
      "internal error: later boom",
    ]);
    assertEquals(await p.requester.request("quiet", new Uint8Array(), false), { ok: true });
    assertEquals(await deadline(ran.promise, 5_000, "no-reply request handled"), "quiet");
    // The next reply is not mistaken for the no-reply request's.
    const after = await p.requester.request("x", new Uint8Array());
    assertEquals(after.ok, true);
  } finally {
    await p.close();
  }
});

Deno.test("ssh_requests: pending requests fail when the connection closes", async () => {
  const never = Promise.withResolvers<GlobalReply>();
  const p = await pair(() => never.promise);
  const pending = p.requester.request("hang", new Uint8Array());
  await p.close();
  const r = await deadline(pending, 5_000, "pending request");
  assertEquals([r.ok, dec.decode(r.payload)], [false, "connection closed"]);
  // Writing on a torn-down connection does nothing (and does not throw).
  sendRawPacket(protocolOf(p.client), 80, new Uint8Array(4));
});

Deno.test("ssh_requests: requests made during a key exchange are answered after it", async () => {
  const p = await pair((name) => ({ ok: true, payload: enc.encode(name) }));
  try {
    const proto = protocolOf(p.client) as unknown as { rekey(): void; _kexinit: unknown };
    const done = new Promise<void>((r) => p.client.once("handshake", () => r()));
    proto.rekey();
    assert(proto._kexinit !== undefined, "key exchange under way");
    const replies = [1, 2, 3].map((i) => p.requester.request(`r${i}`, new Uint8Array()));
    await deadline(done, 10_000, "key exchange");
    const got = await deadline(Promise.all(replies), 5_000, "replies");
    assertEquals(got.map((r) => dec.decode(r.payload)), ["r1", "r2", "r3"]);
  } finally {
    await p.close();
  }
});
