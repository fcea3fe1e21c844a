/**
 * What an unauthenticated client can hold on the agent port, the attacker's
 * way round: huge WebSocket messages are refused from their first bytes,
 * silent clients lose their TCP connection at the handshake deadline, and one
 * source flooding the handshake slots cannot keep an agent from another
 * address out. Sources other than 127.0.0.1 are bound with `node:net`
 * (`localAddress`); the agent reaches the proxy through a relay that dials
 * from 127.0.0.3.
 */

import type net from "node:net";
import { assert, assertEquals } from "../helpers/assert.ts";
import {
  closeCode,
  type FloodClient,
  floodClient,
  frameHeader,
  pour,
  relayFrom,
  sees,
  UPGRADE,
} from "../helpers/flood.ts";
import { startAgent, startTestProxy, waitForSessions } from "../helpers/tunnel.ts";

const TOKEN = "a7".repeat(32);

/** Connect from `localAddress` (default 127.0.0.1), optionally sending `first`. */
function connect(port: number, first?: string, localAddress?: string): Promise<FloodClient> {
  return floodClient(port, { first, localAddress });
}

Deno.test("before auth, huge WebSocket messages are refused early, in one frame or in 1 KiB fragments", async () => {
  const proxy = await startTestProxy([{ name: "alpha", token: TOKEN }]);
  const port = proxy.app.addr.port;
  try {
    // Four clients, each announcing one 63 MiB frame, as in the review.
    const whole = await Promise.all([0, 1, 2, 3].map(() => connect(port, UPGRADE)));
    for (const c of whole) assert(await sees(c, /^HTTP\/1\.1 101 /), "upgraded");
    const sentWhole = await Promise.all(whole.map(async (c) => {
      c.socket.write(frameHeader(2, 63 << 20));
      return await pour(c, 63 << 20);
    }));
    // 64 MiB as 1 KiB continuation frames.
    const frag = await connect(port, UPGRADE);
    assert(await sees(frag, /^HTTP\/1\.1 101 /));
    const sentFrag = await pour(frag, 64 << 20, 1024);
    for (const [i, c] of [...whole, frag].entries()) {
      assertEquals(await c.ended, "closed", `client ${i} was left open`);
      assertEquals(closeCode(c.received()), 1009, `client ${i}: close frame "message too big"`);
    }
    // None could send its message: the proxy stopped reading and closed first.
    for (const sent of [...sentWhole, sentFrag]) assert(sent < 63 << 20, `${sent} bytes taken`);
    assertEquals(proxy.app.tunnel.pendingHandshakes, 0);
  } finally {
    await proxy.close();
  }
});

Deno.test("300 silent clients, with and without an upgrade, all closed at the TCP level at the deadline", async () => {
  const proxy = await startTestProxy([], { handshakeTimeoutMs: 2000, maxPendingHandshakes: 300 });
  const port = proxy.app.addr.port;
  try {
    const clients: FloodClient[] = [];
    for (let i = 0; i < 300; i++) clients.push(await connect(port, i % 2 ? UPGRADE : undefined));
    // The upgraded ones became tunnels (unless the deadline came first on a crawling machine).
    const upgraded = clients.filter((_, i) => i % 2 === 1);
    const tunnels = await Promise.all(upgraded.map((c) => sees(c, /^HTTP\/1\.1 101 /)));
    assert(tunnels.some(Boolean), "no upgrade was answered");
    const ends = await Promise.all(clients.map((c) => c.ended));
    const closed = ends.filter((e) => e === "closed").length;
    assertEquals(closed, 300, `${300 - closed} connections still open after 60 s`);
    assertEquals(proxy.app.tunnel.pendingHandshakes, 0);
  } finally {
    await proxy.close();
  }
});

Deno.test("one source filling the handshake slots cannot keep an agent from another address out", async () => {
  const proxy = await startTestProxy([{ name: "alpha", token: TOKEN }], {
    maxPendingHandshakes: 8,
    handshakeTimeoutMs: 60_000,
  });
  const port = proxy.app.addr.port;
  const relay = await relayFrom("127.0.0.3", port);
  const flood: FloodClient[] = [];
  let agent;
  try {
    // 127.0.0.2 opens 20 silent tunnels: 8 hold every slot, the rest are refused.
    for (let i = 0; i < 20; i++) flood.push(await connect(port, UPGRADE, "127.0.0.2"));
    const answers = await Promise.all(flood.map((c) => sees(c, /^HTTP\/1\.1 (101|503) /)));
    assert(answers.every(Boolean));
    const statuses = flood.map((c) => c.received().toString("latin1").slice(9, 12));
    assertEquals(statuses.filter((s) => s === "101").length, 8);
    assertEquals(statuses.filter((s) => s === "503").length, 12);
    assertEquals(proxy.app.tunnel.pendingHandshakes, 8);
    // A real agent, through the relay, from 127.0.0.3.
    const dir = await Deno.makeTempDir();
    agent = await startAgent({
      name: "alpha",
      token: TOKEN,
      proxyUrl: `http://127.0.0.1:${(relay.address() as net.AddressInfo).port}`,
      dir,
      kubernetesPort: 1,
      kubespherePort: 1,
    });
    await agent.waitFor(/Connected\./, 30_000);
    await waitForSessions(proxy.app, "alpha", 1);
    // It took a slot of 127.0.0.2's: the oldest of its tunnels was closed.
    assertEquals(await flood[0].ended, "closed");
    // The agent's slot is free again: 127.0.0.2 may take it, and no more.
    const more = [
      await connect(port, UPGRADE, "127.0.0.2"),
      await connect(port, UPGRADE, "127.0.0.2"),
    ];
    flood.push(...more);
    assert(await sees(more[0], /^HTTP\/1\.1 101 /), "a free slot is anyone's");
    assert(await sees(more[1], /^HTTP\/1\.1 503 /), "the flooding source got another slot");
    await Deno.remove(dir, { recursive: true });
  } finally {
    await agent?.stop();
    for (const c of flood) c.socket.destroy();
    relay.close();
    await proxy.close();
  }
});
