/**
 * The agent's pipe (`pipeChannel`, as agent.ts runs it) against a proxy that ends streams the
 * way the original Go tower proxy does: when its client's side ends, it closes the channel with
 * SSH_MSG_CHANNEL_CLOSE and no EOF before it, right behind the last bytes it wrote, while the
 * target is still answering. Every byte the channel brought must reach the target, which must
 * see an EOF (not a reset, which would drop what it had not read yet), and the pipe must end
 * (the agent's stream released). Real ssh2 channels over TCP, random sizes and chunkings
 * (fast-check, seeded).
 */

import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import type { Duplex } from "node:stream";
import fc from "fast-check";
import { dialTarget, pipeChannel } from "../../lib/agent/forward.ts";
import { openKubesphereChannel } from "../../lib/tunnel/channel_open.ts";
import { deadline } from "../helpers/deadline.ts";
import { assertEquals } from "../helpers/assert.ts";
import { patternBytes, startClosingOrigin, writeChunked } from "../helpers/closing_origin.ts";
import { type SshChannel, sshPair } from "../helpers/ssh_pair.ts";

const SEED = 20261207;

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

/** Our agent on an ssh2 link, its targets on `origin`; `pipes` are the agent's running pipes. */
async function setup() {
  const origin = startClosingOrigin();
  const pair = await sshPair();
  const pipes: Promise<void>[] = [];
  pair.onAccept = (ch, target) => {
    pipes.push(
      dialTarget(target).then((conn) => pipeChannel(ch as unknown as Duplex, conn)),
    );
  };
  return {
    origin,
    pipes,
    /** A channel to the origin, as the proxy opens it. */
    open: async () =>
      await openKubesphereChannel(pair.conn, `127.0.0.1:${origin.port}`) as unknown as SshChannel,
    close: async () => {
      await pair.close();
      await origin.close();
    },
  };
}

/** Write `data` in pieces of `sizes` (cycled); resolves once every byte is sent, as Go's Write. */
function writeAllChunked(ch: SshChannel, data: Uint8Array, sizes: number[]): Promise<void> {
  writeChunked(ch, data, sizes);
  return new Promise((resolve) => ch.write(Buffer.alloc(0), () => resolve()));
}

Deno.test("proxy CLOSE without EOF: every byte reaches the target, which sees EOF", async () => {
  const s = await setup();
  try {
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          n: fc.integer({ min: 0, max: 3 << 20 }),
          seed: fc.integer({ min: 1, max: 0x7fffffff }),
          sizes: fc.array(fc.integer({ min: 1, max: 96 * 1024 }), { minLength: 1, maxLength: 16 }),
          /** What the target sends meanwhile (the agent writes it into a closing channel). */
          out: fc.integer({ min: 0, max: 4 << 20 }),
          /** A slow target: ms after each read of up to 64 KiB. */
          slow: fc.constantFrom(0, 0, 1, 3),
        }),
        async (p) => {
          const ch = await s.open();
          ch.on("data", () => {}); // the Go proxy copies the answer to its client
          const stdin = patternBytes(p.seed, p.n);
          ch.write(
            `GET /sink/${p.out}/${p.slow} HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n` +
              `Upgrade: SPDY/3.1\r\n\r\n`,
          );
          await writeAllChunked(ch, stdin, p.sizes);
          ch.close(); // Go's Close: CLOSE, no EOF first
          const seen = await deadline(s.origin.next(), 30_000, "the target's record");
          assertEquals(seen.how, "eof", "the target was reset");
          assertEquals(seen.bytes, p.n, "bytes at the target");
          assertEquals(seen.sha, sha(stdin), "bytes at the target");
          await deadline(s.pipes[s.pipes.length - 1], 10_000, "the agent's pipe ends");
        },
      ),
      // A failure is a hang or a short read: report the first one, no shrinking through timeouts.
      { seed: SEED, numRuns: 20, endOnFailure: true },
    );
  } finally {
    await s.close();
  }
});

Deno.test("proxy CLOSE without EOF after the answer: the whole answer came first", async () => {
  const s = await setup();
  try {
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          n: fc.integer({ min: 0, max: 2 << 20 }),
          seed: fc.integer({ min: 1, max: 0x7fffffff }),
          body: fc.integer({ min: 0, max: 1 << 20 }),
          sizes: fc.array(fc.integer({ min: 1, max: 96 * 1024 }), { minLength: 1, maxLength: 16 }),
        }),
        async (p) => {
          const ch = await s.open();
          const parts: Buffer[] = [];
          ch.on("data", (d: Buffer) => parts.push(d));
          const ended = new Promise<void>((r) => ch.once("end", () => r()));
          ch.write(
            `POST /close/${p.n}/${p.seed} HTTP/1.1\r\nHost: t\r\nContent-Length: ${p.body}\r\n\r\n`,
          );
          const sent = writeAllChunked(ch, patternBytes(p.seed + 1, p.body), p.sizes);
          // Go's copy to its client ends at our EOF; it then closes the channel, whatever of the
          // request body is still on its way.
          await deadline(ended, 30_000, "the answer's end");
          ch.close();
          const answer = Buffer.concat(parts);
          const head = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n";
          assertEquals(answer.subarray(0, head.length).toString("latin1"), head);
          assertEquals(sha(answer.subarray(head.length)), sha(patternBytes(p.seed, p.n)));
          await sent;
          await deadline(s.origin.next(), 10_000, "the target's record");
          await deadline(s.pipes[s.pipes.length - 1], 10_000, "the agent's pipe ends");
        },
      ),
      { seed: SEED, numRuns: 20, endOnFailure: true },
    );
  } finally {
    await s.close();
  }
});
