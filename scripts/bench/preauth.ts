/**
 * Figure 7 (`preauth`): what unauthenticated clients can make the proxy hold.
 * Each flood runs against a fresh `proxy.ts` (defaults: 10 s handshake
 * deadline, 256 pending handshakes) and reports the growth of its RSS, peak
 * during the flood less the RSS just before:
 *
 * - `big_frames`: 4 tunnels each announcing one 63 MiB WebSocket frame and
 *   sending it;
 * - `fragments`: 4 tunnels each sending 64 MiB as 1 KiB continuation frames;
 * - `big_heads`: 60 connections each sending a 1 MiB request head;
 * - `silent`: 300 connections that say nothing, half after an upgrade; also
 *   `silent_past_deadline` (s), how long after its handshake deadline the
 *   last one the proxy closed was closed at the TCP level (negative: refused
 *   at once, all slots taken), and `silent_left_open`, those still open 60 s
 *   after connecting;
 * - `endpoint_heads`: with an agent connected, 30 connections to the cluster's kubernetes
 *   endpoint (TLS, no client certificate) and 30 to its kubesphere endpoint, each sending a
 *   1 MiB request head;
 * - `slot_flood`: 127.0.0.2 holding every handshake slot with silent tunnels
 *   (300, reopened as they close); also `agent_in_flood` (ms), how long an
 *   agent from 127.0.0.3 (SSH and `config`, through a relay) then takes to be
 *   accepted, retrying on refusals for up to 15 s (15,000: never).
 * @module
 */

import type { Server } from "node:net";
import { freePort, type Proc } from "../../tests/helpers/proc.ts";
import { clustersYaml } from "../../tests/helpers/tunnel.ts";
import { connectRawAgent } from "../../tests/helpers/raw_agent.ts";
import {
  type FloodClient,
  floodClient,
  frameHeader,
  pour,
  relayFrom,
  sees,
  UPGRADE,
} from "../../tests/helpers/flood.ts";
import { encodeAgentConfig } from "../../lib/tunnel/handshake.ts";
import { within } from "../../lib/within.ts";
import { randomToken } from "../../lib/secret.ts";
import { peakRss } from "./rss.ts";
import { rssMiB, startProxyProc } from "./stack.ts";

/** The proxy's default handshake deadline, which the bench's proxy runs with. */
const DEADLINE_MS = 10_000;
/** How long the agent of the slot flood keeps trying. */
const AGENT_TRY_MS = 15_000;

/** One run's numbers (RSS growth in MiB). */
export interface PreauthResult {
  idleMiB: number;
  bigFramesMiB: number;
  fragmentsMiB: number;
  bigHeadsMiB: number;
  endpointHeadsMiB: number;
  silentMiB: number;
  silentPastDeadlineS: number;
  silentLeftOpen: number;
  slotFloodMiB: number;
  agentInFloodMs: number;
}

/**
 * Run `flood` against a fresh proxy (agent port `port`, cluster `flood` with `token`); resolves
 * its result and the proxy's RSS growth.
 */
async function onFreshProxy<T>(
  dir: string,
  flood: (port: number, token: string) => Promise<T>,
  endpoints?: {
    kubernetesPort: number;
    kubespherePort: number;
    /** Before the RSS is taken: connect what the flood needs (an agent). */
    prepare(port: number, token: string, proxy: Proc): Promise<void>;
  },
): Promise<{ result: T; growthMiB: number; idleMiB: number }> {
  const token = randomToken();
  const clustersPath = `${dir}/preauth-clusters.json`;
  await Deno.writeTextFile(
    clustersPath,
    clustersYaml([{
      name: "flood",
      token,
      kubernetesPort: endpoints?.kubernetesPort,
      kubespherePort: endpoints?.kubespherePort,
    }]),
  );
  const port = freePort();
  const proxy: Proc = await startProxyProc(dir, port, clustersPath, "preauth-proxy");
  try {
    await endpoints?.prepare(port, token, proxy);
    const idleMiB = rssMiB(proxy.child.pid);
    const { result, peaks } = await peakRss(
      () => ({ proxy: [proxy.child.pid] }),
      () => flood(port, token),
      50,
    );
    return { result, growthMiB: peaks.proxy - idleMiB, idleMiB };
  } finally {
    await proxy.stop();
  }
}

/** Open `n` tunnels (upgraded, 101 seen) on `port`. */
async function tunnels(port: number, n: number, localAddress?: string): Promise<FloodClient[]> {
  const out: FloodClient[] = [];
  for (let i = 0; i < n; i++) out.push(await floodClient(port, { first: UPGRADE, localAddress }));
  await Promise.all(out.map((c) => sees(c, /^HTTP\/1\.1 \d{3} /)));
  return out;
}

/** Send every client's flood and wait until each has ended. */
async function allEnded(clients: FloodClient[], send: (c: FloodClient) => Promise<unknown>) {
  await Promise.all(clients.map(send));
  return await Promise.all(clients.map((c) => c.ended));
}

async function silentFlood(port: number): Promise<{ pastS: number; leftOpen: number }> {
  const clients: { c: FloodClient; at: number }[] = [];
  for (let i = 0; i < 300; i++) {
    const c = await floodClient(port, { first: i % 2 ? UPGRADE : undefined });
    clients.push({ c, at: performance.now() });
  }
  const ends = await Promise.all(clients.map(({ c }) => c.ended));
  const closed = clients.filter((_, i) => ends[i] === "closed");
  const pastS = Math.max(...closed.map(({ c, at }) => c.endedAt - at - DEADLINE_MS)) / 1000;
  return { pastS, leftOpen: ends.filter((e) => e === "guard").length };
}

/** A raw agent of cluster `flood` with `token`, connected (its endpoints start). */
async function floodAgent(url: string, token: string) {
  const agent = await connectRawAgent(url, { username: "flood", password: token });
  const reply = await within(
    agent.request(
      "config",
      encodeAgentConfig({
        Version: "v0.1.0",
        Name: "flood",
        Token: token,
        KubernetesSvcHost: "127.0.0.1:1",
        KubeSphereSvcHost: "127.0.0.1:1",
      }),
    ),
    15_000,
    { what: "preauth: the flood agent's config" },
  ).catch((err) => {
    agent.close();
    throw err;
  });
  return { agent, ok: reply.ok };
}

/** Milliseconds until an agent of `flood` from 127.0.0.3 is accepted (AGENT_TRY_MS: never). */
async function agentThrough(relay: Server, token: string): Promise<number> {
  const url = `http://127.0.0.1:${(relay.address() as { port: number }).port}`;
  const t0 = performance.now();
  while (performance.now() - t0 < AGENT_TRY_MS) {
    try {
      const { agent, ok } = await floodAgent(url, token);
      const ms = performance.now() - t0;
      agent.close();
      if (ok) return ms;
    } catch {
      // refused (503) or cut off: try again
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  return AGENT_TRY_MS;
}

async function slotFlood(port: number, token: string): Promise<number> {
  const flood = await tunnels(port, 300, "127.0.0.2");
  // Whatever closes (refused, or evicted for the agent) is opened again, for as long as it runs.
  let running = true;
  const refill = (c: FloodClient): void => {
    c.ended.then(async () => {
      if (!running) return;
      const next = await floodClient(port, { first: UPGRADE, localAddress: "127.0.0.2" });
      flood.push(next);
      refill(next);
    });
  };
  flood.forEach(refill);
  const relay = await relayFrom("127.0.0.3", port);
  try {
    return await agentThrough(relay, token);
  } finally {
    running = false;
    relay.close();
    for (const c of flood) c.socket.destroy();
  }
}

/**
 * 60 unauthenticated 1 MiB heads, half on each endpoint of a cluster whose agent is connected
 * (the endpoints run only then); the RSS before the flood includes the agent's session.
 */
async function endpointHeads(dir: string) {
  let agent: { close(): void } | undefined;
  const ports = {
    kubernetesPort: freePort(),
    kubespherePort: freePort(),
    async prepare(port: number, token: string, proxy: Proc) {
      const connected = await floodAgent(`http://127.0.0.1:${port}`, token);
      agent = connected.agent;
      if (!connected.ok) throw new Error("preauth: the endpoint flood's agent was refused");
      const line = await proxy.waitFor(/Serving cluster endpoints|Cannot serve cluster endpoints/);
      if (/Cannot serve/.test(line)) throw new Error(`preauth: ${line}`);
    },
  };
  const run = await onFreshProxy(dir, async () => {
    const clients: FloodClient[] = [];
    for (let i = 0; i < 30; i++) {
      const first = "GET /api/v1/namespaces HTTP/1.1\r\nHost: x\r\nX-Big: ";
      clients.push(await floodClient(ports.kubernetesPort, { first, tls: true }));
      clients.push(await floodClient(ports.kubespherePort, { first }));
    }
    return await allEnded(clients, (c) => pour(c, 1 << 20));
  }, ports);
  agent?.close();
  return run;
}

/** One run of every flood. */
export async function preauth(dir: string, log: (msg: string) => void): Promise<PreauthResult> {
  const big = await onFreshProxy(dir, async (port) => {
    const clients = await tunnels(port, 4);
    return await allEnded(clients, (c) => {
      c.socket.write(frameHeader(2, 63 << 20));
      return pour(c, 63 << 20);
    });
  });
  const frag = await onFreshProxy(dir, async (port) => {
    const clients = await tunnels(port, 4);
    return await allEnded(clients, (c) => pour(c, 64 << 20, 1024));
  });
  const heads = await onFreshProxy(dir, async (port) => {
    const clients: FloodClient[] = [];
    for (let i = 0; i < 60; i++) {
      clients.push(await floodClient(port, { first: "GET / HTTP/1.1\r\nX-Big: " }));
    }
    return await allEnded(clients, (c) => pour(c, 1 << 20));
  });
  const endpoints = await endpointHeads(dir);
  const silent = await onFreshProxy(dir, silentFlood);
  const slots = await onFreshProxy(dir, slotFlood);
  const r: PreauthResult = {
    idleMiB: big.idleMiB,
    bigFramesMiB: big.growthMiB,
    fragmentsMiB: frag.growthMiB,
    bigHeadsMiB: heads.growthMiB,
    endpointHeadsMiB: endpoints.growthMiB,
    silentMiB: silent.growthMiB,
    silentPastDeadlineS: silent.result.pastS,
    silentLeftOpen: silent.result.leftOpen,
    slotFloodMiB: slots.growthMiB,
    agentInFloodMs: slots.result,
  };
  const left = [big, frag, heads, endpoints].map((f) =>
    f.result.filter((e) => e === "guard").length
  );
  if (left.some((n) => n > 0)) log(`preauth: connections left open 60 s: ${left.join(", ")}`);
  log(
    `preauth: RSS growth big frames ${r.bigFramesMiB.toFixed(1)}, fragments ${
      r.fragmentsMiB.toFixed(1)
    }, heads ${r.bigHeadsMiB.toFixed(1)}, endpoint heads ${r.endpointHeadsMiB.toFixed(1)}, silent ${
      r.silentMiB.toFixed(1)
    }, slot flood ${r.slotFloodMiB.toFixed(1)} MiB; agent in during the flood after ${
      r.agentInFloodMs.toFixed(0)
    } ms`,
  );
  return r;
}
