/**
 * The HTTP engine against an agent that ends streams the way the original Go tower agent does:
 * when the member closes its connection, the agent sends every byte it read and then
 * SSH_MSG_CHANNEL_CLOSE with no EOF before it, while the client's last bytes may still be on
 * their way up (tests/helpers/ssh_pair.ts `goPipe`, over real ssh2 channels and TCP). Every
 * byte the member sent must reach the client, then a clean end; the client's late bytes are
 * dropped without taking anything else down. Upgraded (exec-like) streams and close-delimited
 * answers, plain and TLS to the member, random sizes and chunkings (fast-check, seeded).
 *
 * `stall` runs make the client read nothing until the agent's CLOSE has reached the proxy, so
 * the proxy still holds the tail of the output when it arrives and when the client's trailing
 * bytes are written into the closed channel (the window of the original failure, made certain).
 * The client connection is an in-memory pair with a small buffer, so the proxy feels the
 * client's backpressure at once.
 */

import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import net from "node:net";
import { duplexPair } from "node:stream";
import fc from "fast-check";
import { HttpProxy } from "../../../lib/proxy/http/forward.ts";
import type { UpstreamAuth } from "../../../lib/proxy/http/upstream.ts";
import { generateCA, issueServingCert } from "../../../lib/pki/mod.ts";
import { openKubesphereChannel } from "../../../lib/tunnel/channel_open.ts";
import { deadline } from "../../helpers/deadline.ts";
import { assert, assertEquals } from "../../helpers/assert.ts";
import { patternBytes, startClosingOrigin, writeChunked } from "../../helpers/closing_origin.ts";
import { goPipe, type SshChannel, sshPair } from "../../helpers/ssh_pair.ts";
import { RawClient } from "./helpers.ts";

const SEED = 20261207;
/** Our receive window on the proxy side: the whole output fits while the client stalls. */
const WINDOW = 8 << 20;

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

/**
 * Origins (plain and TLS) behind a Go-style agent on an ssh2 link, and an {@link HttpProxy} for
 * each, dialling channels on the link.
 */
async function setup() {
  const ca = await generateCA({ commonName: "member-ca" });
  const serving = await issueServingCert(ca, { commonName: "member", ipAddresses: ["127.0.0.1"] });
  const plain = startClosingOrigin();
  const secure = startClosingOrigin({ tls: serving });
  const pair = await sshPair();
  /** The agent side's channels, each with a promise of its `close` (the CLOSE exchange done). */
  const agentClosed: Promise<void>[] = [];
  pair.onAccept = (ch, target) => {
    const sock = net.connect(Number(target.split(":")[1]), "127.0.0.1");
    agentClosed.push(new Promise((r) => ch.once("close", () => r())));
    void goPipe(ch as unknown as SshChannel, sock);
  };
  const proxy = (port: number, auth: UpstreamAuth) =>
    new HttpProxy({
      cluster: "alpha",
      kind: auth.tls ? "kubernetes" : "kubesphere",
      dialer: {
        dial: async () => ({
          stream: await openKubesphereChannel(pair.conn, `127.0.0.1:${port}`, { window: WINDOW }),
          key: "session-1",
          auth,
        }),
      },
      proto: "http",
      stripAuthorization: false,
    });
  const proxies = {
    plain: proxy(plain.port, {}),
    tls: proxy(secure.port, { tls: { caPem: ca.certPem, serverName: "127.0.0.1" } }),
  };
  return {
    origins: { plain, tls: secure },
    /** A client connection to the proxy for `tls` or plain, and whether it ended cleanly. */
    connect(tls: boolean) {
      const [client, server] = duplexPair({ highWaterMark: 16 * 1024 });
      void (tls ? proxies.tls : proxies.plain).serve(server, { remoteAddress: "127.0.0.1" });
      const c = RawClient.of(client as unknown as net.Socket);
      const clean = { end: false };
      client.once("end", () => clean.end = true);
      return { c, clean };
    },
    /** Resolves when the agent side of the channel opened last has closed. */
    lastAgentClose: () => agentClosed[agentClosed.length - 1],
    close: async () => {
      proxies.plain.close();
      proxies.tls.close();
      await pair.close();
      await plain.close();
      await secure.close();
    },
  };
}

Deno.test("agent CLOSE without EOF: an upgraded stream's output reaches the client whole", async () => {
  const s = await setup();
  try {
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          tls: fc.boolean(),
          n: fc.integer({ min: 0, max: 2 << 20 }),
          seed: fc.integer({ min: 1, max: 0x7fffffff }),
          sizes: fc.array(fc.integer({ min: 1, max: 96 * 1024 }), { minLength: 1, maxLength: 16 }),
          trailing: fc.integer({ min: 1, max: 200 }),
          stall: fc.boolean(),
          /** Flowing runs: the share of the echo read before the trailing bytes go up. */
          at: fc.double({ min: 0, max: 1, noNaN: true }),
        }),
        async (p) => {
          const { c, clean } = s.connect(p.tls);
          const origin = p.tls ? s.origins.tls : s.origins.plain;
          try {
            const stdin = patternBytes(p.seed, p.n);
            c.write(
              `GET /echo/${p.n} HTTP/1.1\r\nHost: member\r\nConnection: Upgrade\r\n` +
                `Upgrade: SPDY/3.1\r\n\r\n`,
            );
            assertEquals((await deadline(c.readHead(), 10_000, "101")).status, 101);
            const trailing = patternBytes(p.seed + 1, p.trailing);
            let got: Buffer;
            if (p.stall) {
              c.sock.pause();
              writeChunked(c, stdin, p.sizes);
              await deadline(s.lastAgentClose(), 20_000, "the agent's CLOSE exchanged");
              c.write(trailing); // into a channel the agent has closed
              c.sock.resume();
              got = await deadline(c.readToEnd(), 20_000, "echo");
            } else {
              writeChunked(c, stdin, p.sizes);
              const first = await deadline(c.readBytes(Math.floor(p.at * p.n)), 20_000, "echo");
              c.write(trailing);
              got = Buffer.concat([first, await deadline(c.readToEnd(), 20_000, "echo tail")]);
            }
            assertEquals(got.length, p.n, "echoed bytes");
            assertEquals(sha(got), sha(stdin), "echoed bytes");
            assert(clean.end, "the client side ended cleanly");
            const seen = await deadline(origin.next(), 10_000, "origin record");
            if (p.stall) {
              // The trailing bytes came after the CLOSE: stdin arrived whole, nothing else.
              assertEquals(seen.bytes, p.n);
              assertEquals(seen.sha, sha(stdin));
            } else assert(seen.bytes >= p.n);
          } finally {
            await c.close();
          }
        },
      ),
      // A failure is a hang or a short read: report the first one, no shrinking through timeouts.
      { seed: SEED, numRuns: 24, endOnFailure: true },
    );
  } finally {
    await s.close();
  }
});

Deno.test("agent CLOSE without EOF: a close-delimited answer reaches the client whole", async () => {
  const s = await setup();
  try {
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          tls: fc.boolean(),
          n: fc.integer({ min: 0, max: 2 << 20 }),
          seed: fc.integer({ min: 1, max: 0x7fffffff }),
          http10: fc.boolean(),
          /** A request body still being sent while the answer (and the CLOSE) comes. */
          body: fc.integer({ min: 0, max: 512 * 1024 }),
          sizes: fc.array(fc.integer({ min: 1, max: 96 * 1024 }), { minLength: 1, maxLength: 16 }),
          stall: fc.boolean(),
        }),
        async (p) => {
          const { c, clean } = s.connect(p.tls);
          try {
            c.write(
              `POST /close/${p.n}/${p.seed} HTTP/1.${p.http10 ? 0 : 1}\r\nHost: member\r\n` +
                `Content-Length: ${p.body}\r\n\r\n`,
            );
            if (p.stall) c.sock.pause();
            writeChunked(c, patternBytes(p.seed + 2, p.body), p.sizes);
            if (p.stall) {
              await deadline(s.lastAgentClose(), 20_000, "the agent's CLOSE exchanged");
              c.sock.resume();
            }
            const res = await deadline(c.readHead(), 20_000, "answer head");
            assertEquals(res.status, 200);
            await deadline(c.readBody(res), 20_000, "answer body");
            assertEquals(res.body.length, p.n, "answer bytes");
            assertEquals(sha(res.body), sha(patternBytes(p.seed, p.n)), "answer bytes");
            if (p.http10) {
              assertEquals((await deadline(c.readToEnd(), 10_000, "end")).length, 0);
              assert(clean.end, "the client side ended cleanly");
            } else assertEquals(res.headers["transfer-encoding"], "chunked");
          } finally {
            await c.close();
          }
        },
      ),
      // A failure is a hang or a short read: report the first one, no shrinking through timeouts.
      { seed: SEED, numRuns: 24, endOnFailure: true },
    );
  } finally {
    await s.close();
  }
});
