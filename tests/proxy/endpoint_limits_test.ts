/**
 * The per-cluster endpoints' limits against callers who never authenticate: a TLS handshake
 * that never comes is cut off; connections beyond the cap are closed before a byte is read; a
 * caller without a valid certificate may send only a small head before its 401; heads beyond
 * the limit get 431 on the unauthenticated kubesphere endpoint; listeners bind the given host.
 * @module
 */

import * as net from "node:net";
import * as tls from "node:tls";
import {
  generateCA,
  issueClientCert,
  issueServingCert,
  verifyClientCert,
} from "../../lib/pki/mod.ts";
import { type ClusterEndpointsOptions, startClusterEndpoints } from "../../lib/proxy/endpoint.ts";
import { deadline } from "../helpers/deadline.ts";
import { anyVerifiedAsAdmin } from "../helpers/access.ts";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { RawClient, TestDialer } from "./http/helpers.ts";
import { startHttpOrigin } from "./http/origin.ts";

async function endpoints(opts: Partial<ClusterEndpointsOptions> = {}) {
  const ca = await generateCA({ commonName: "tower-ca" });
  const origin = await startHttpOrigin();
  const kdial = new TestDialer(origin.port);
  const ep = await startClusterEndpoints({
    cluster: "alpha",
    host: "127.0.0.1",
    kubernetesPort: 0,
    kubespherePort: 0,
    servingCert: await issueServingCert(ca, { commonName: "ep", ipAddresses: ["127.0.0.1"] }),
    verifyClient: (der) => verifyClientCert(ca, der),
    access: anyVerifiedAsAdmin,
    kubernetes: kdial,
    kubesphere: new TestDialer(origin.port),
    ...opts,
  });
  return {
    ca,
    ep,
    kdial,
    async close() {
      await ep.close();
      await origin.close();
    },
  };
}

/** A plain TCP connection that records when the server closes it. */
function rawConnect(port: number, host = "127.0.0.1") {
  const sock = net.connect(port, host);
  sock.on("error", () => {});
  const closed = new Promise<void>((resolve) => sock.once("close", () => resolve()));
  const connected = new Promise<void>((resolve, reject) => {
    sock.once("connect", () => resolve());
    sock.once("error", reject);
  });
  return { sock, closed, connected };
}

Deno.test("a TLS handshake that never comes is cut off", async () => {
  const t = await endpoints({ tlsHandshakeMs: 200 });
  try {
    const c = rawConnect(t.ep.kubernetesPort);
    await c.connected;
    // Silent: no ClientHello. The server gives up on it (the deadline below is only a net).
    await deadline(c.closed, 10_000, "the silent TLS client is closed");
  } finally {
    await t.close();
  }
});

Deno.test("connections beyond the cap are closed before a byte is read", async () => {
  const t = await endpoints({ maxConnections: 3, tlsHandshakeMs: 60_000 });
  try {
    for (const port of [t.ep.kubernetesPort, t.ep.kubespherePort]) {
      const held = [rawConnect(port), rawConnect(port), rawConnect(port)];
      await Promise.all(held.map((c) => c.connected));
      let heldClosed = false;
      void Promise.race(held.map((c) => c.closed)).then(() => heldClosed = true);
      const extra = rawConnect(port);
      await deadline(extra.closed, 10_000, "the connection over the cap is closed");
      assert(!heldClosed, "a connection within the cap was closed");
      for (const c of held) c.sock.destroy();
      await Promise.all(held.map((c) => c.closed));
      // Room again once the server has seen them go (it learns a moment after the client):
      // a request gets through within a few attempts.
      if (port === t.ep.kubespherePort) {
        let status = 0;
        for (let i = 0; i < 50 && status !== 200; i++) {
          const c = await RawClient.connect(port);
          c.write("GET /echo HTTP/1.1\r\nHost: a\r\n\r\n");
          status = await c.readResponse().then((r) => r.status, () => 0);
          await c.close();
        }
        assertEquals(status, 200);
      }
    }
  } finally {
    await t.close();
  }
});

/** Write `head` (never finished) on `sock` and read what comes back until the server closes. */
async function sendEndlessHead(c: RawClient, size: number): Promise<string> {
  c.sock.on("error", () => {});
  c.write(`GET /echo HTTP/1.1\r\nHost: a\r\nX-Big: ${"a".repeat(size)}`);
  return (await deadline(c.readToEnd(), 10_000, "the server answers and closes")).toString();
}

Deno.test("a caller without a valid certificate gets its 401 after a small head, not a large one", async () => {
  const t = await endpoints();
  try {
    for (const identity of ["none", "other CA"]) {
      const other = await generateCA({ commonName: "tower-ca" });
      const cert = identity === "none" ? undefined : await issueClientCert(other, {
        commonName: "kubernetes-admin",
      });
      const sock = tls.connect({
        host: "127.0.0.1",
        port: t.ep.kubernetesPort,
        ca: t.ca.certPem,
        ...(cert ? { cert: cert.certPem, key: cert.keyPem } : {}),
      });
      await new Promise<void>((resolve, reject) => {
        sock.once("secureConnect", () => resolve());
        sock.once("error", reject);
      });
      const c = RawClient.of(sock);
      // 12 KiB of head: fine for a client with a certificate, too much without one.
      const answer = await sendEndlessHead(c, 12 * 1024);
      assertMatch(answer, /^HTTP\/1\.1 401 /);
      assertMatch(answer, /"kind":"Status"/);
      await c.close();
    }
    assertEquals(t.kdial.dials, 0, "refused callers never reach the tunnel");
    // The same head size with a valid certificate is read whole (and then completed).
    const user = await issueClientCert(t.ca, { commonName: "u" });
    const sock = tls.connect({
      host: "127.0.0.1",
      port: t.ep.kubernetesPort,
      ca: t.ca.certPem,
      cert: user.certPem,
      key: user.keyPem,
    });
    await new Promise<void>((r) => sock.once("secureConnect", () => r()));
    const c = RawClient.of(sock);
    c.write(`GET /echo HTTP/1.1\r\nHost: a\r\nX-Big: ${"a".repeat(12 * 1024)}\r\n\r\n`);
    assertEquals((await c.readResponse()).status, 200);
    await c.close();
  } finally {
    await t.close();
  }
});

Deno.test("a head beyond the limit gets 431 on the unauthenticated kubesphere endpoint", async () => {
  const t = await endpoints({ maxRequestHead: 16 * 1024 });
  try {
    const c = await RawClient.connect(t.ep.kubespherePort);
    const answer = await sendEndlessHead(c, 1 << 20);
    assertMatch(answer, /^HTTP\/1\.1 431 /);
    await c.close();
  } finally {
    await t.close();
  }
});

/**
 * The local addresses the kernel lists as listening on `port` (IPv4 dotted, IPv6 as its 32 hex
 * digits), from /proc/net/tcp and tcp6: what is bound, whoever else runs on this machine.
 */
async function listenersOn(port: number): Promise<string[]> {
  const hexPort = port.toString(16).toUpperCase().padStart(4, "0");
  const found: string[] = [];
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    const table = await Deno.readTextFile(file).catch(() => "");
    for (const line of table.split("\n").slice(1)) {
      // sl local_address rem_address st …; LISTEN is state 0A.
      const [, local, , state] = line.trim().split(/\s+/);
      if (state !== "0A" || !local?.endsWith(`:${hexPort}`)) continue;
      const addr = local.slice(0, local.indexOf(":"));
      // IPv4 addresses are little-endian hex.
      found.push(
        addr.length === 8
          ? [6, 4, 2, 0].map((i) => parseInt(addr.slice(i, i + 2), 16)).join(".")
          : addr,
      );
    }
  }
  return found;
}

Deno.test("the endpoints listen on the given host only", async () => {
  const t = await endpoints({ host: "127.0.0.2" });
  try {
    for (const port of [t.ep.kubernetesPort, t.ep.kubespherePort]) {
      const there = rawConnect(port, "127.0.0.2");
      await there.connected;
      there.sock.destroy();
      // Not a connect to 127.0.0.1: another process may listen there on the same port number.
      const listeners = await listenersOn(port);
      assert(listeners.includes("127.0.0.2"), `no listener on 127.0.0.2:${port}: ${listeners}`);
      for (const any of ["0.0.0.0", "0".repeat(32)]) {
        assert(!listeners.includes(any), `port ${port} is bound to every address: ${listeners}`);
      }
    }
  } finally {
    await t.close();
  }
});

Deno.test("an 8 MiB upload through the kubernetes endpoint completes, paused and resumed on the way", async () => {
  const ca = await generateCA({ commonName: "tower-ca" });
  const serving = await issueServingCert(ca, { commonName: "m", ipAddresses: ["127.0.0.1"] });
  // A member that reads request bodies slowly, so the proxy must hold the client back.
  const member = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    cert: serving.certPem,
    key: serving.keyPem,
    onListen() {},
  }, async (req) => {
    let n = 0;
    for await (const chunk of req.body!) {
      n += chunk.length;
      if (n % (1 << 20) < chunk.length) await new Promise((r) => setTimeout(r, 20));
    }
    return new Response(String(n));
  });
  const t = await endpoints({
    kubernetes: new TestDialer(member.addr.port, {
      wrap: true,
      auth: { tls: { caPem: ca.certPem, serverName: "127.0.0.1" } },
    }),
  });
  const user = await issueClientCert(t.ca, { commonName: "u" });
  const client = Deno.createHttpClient({
    caCerts: [t.ca.certPem],
    cert: user.certPem,
    key: user.keyPem,
  });
  try {
    const body = new Uint8Array(8 << 20);
    const res = await deadline(
      fetch(`https://127.0.0.1:${t.ep.kubernetesPort}/sink`, { method: "PUT", body, client }),
      30_000,
      "the upload's answer",
    );
    assertEquals(res.status, 200);
    assertEquals(await res.text(), String(body.length));
  } finally {
    client.close();
    await t.close();
    await member.shutdown();
  }
});
