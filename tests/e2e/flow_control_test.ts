/**
 * Flow control through the real tunnel: 1,000 concurrent streams on one agent
 * session, one of them never read. The other 999 complete with the right
 * bytes, the stalled one holds back its source (the agent stops reading it),
 * and memory stays bounded.
 */

import { createHash } from "node:crypto";
import type { Duplex } from "node:stream";
import { assert, assertEquals } from "../helpers/assert.ts";
import {
  patternChunk,
  startAgent,
  startTcpServer,
  startTestProxy,
  waitForSessions,
  writeAll,
} from "../helpers/tunnel.ts";

const TOKEN = "f1".repeat(32);
const PER_STREAM = 64 * 1024;
const STREAMS = 999;
const STALLED_WANTS = 64 << 20;

/** Read a stream to its end without keeping it: byte count and SHA-256. */
function drain(stream: Duplex): Promise<{ bytes: number; sha: string }> {
  const h = createHash("sha256");
  let bytes = 0;
  return new Promise((resolve, reject) => {
    stream.on("data", (c: Uint8Array) => {
      bytes += c.length;
      h.update(c);
    });
    stream.once("end", () => resolve({ bytes, sha: h.digest("hex") }));
    stream.once("error", reject);
  });
}

Deno.test("1,000 streams, one stalled: the rest complete, the stall is held at the source, RSS bounded", async () => {
  const proxy = await startTestProxy([{ name: "alpha", token: TOKEN }]);
  const chunk = patternChunk(5).subarray(0, PER_STREAM);
  const expected = createHash("sha256").update(chunk).digest("hex");
  const small = startTcpServer(async (conn) => await writeAll(conn, chunk));
  let stalledSent = 0;
  const big = startTcpServer(async (conn) => {
    const block = patternChunk(9);
    while (stalledSent < STALLED_WANTS) {
      await writeAll(conn, block);
      stalledSent += block.length;
    }
  });
  const agent = await startAgent({
    name: "alpha",
    token: TOKEN,
    proxyUrl: proxy.url,
    dir: proxy.dir,
    kubernetesPort: big.port,
    kubespherePort: small.port,
  });
  try {
    await agent.waitFor(/Connected\./);
    await waitForSessions(proxy.app, "alpha", 1);
    const session = proxy.app.registry.pick("alpha")!;
    const rssBefore = Deno.memoryUsage().rss;

    const stalled = await session.openStream(`127.0.0.1:${big.port}`);
    stalled.pause(); // never read

    const results = await Promise.all(Array.from({ length: STREAMS }, async () => {
      const ch = await session.openStream(`127.0.0.1:${small.port}`);
      ch.end();
      return await drain(ch);
    }));
    const rssAfter = Deno.memoryUsage().rss;
    assertEquals(
      results.filter((r) => r.bytes === PER_STREAM && r.sha === expected).length,
      STREAMS,
    );

    // The stalled stream is still open and its source was held back: only the SSH window,
    // the agent's read buffer and the kernel's socket buffers were filled.
    assert(!stalled.destroyed, "the stalled stream stays open");
    assert(stalledSent < 24 << 20, `the stalled source pushed ${stalledSent} bytes`);
    const growth = rssAfter - rssBefore;
    console.log(
      `flow control: ${STREAMS} streams done; stalled source held at ${
        (stalledSent / 2 ** 20).toFixed(1)
      } MiB; ` +
        `proxy-side RSS growth ${(growth / 2 ** 20).toFixed(1)} MiB`,
    );
    assert(growth < 256 << 20, `RSS grew by ${growth} bytes`);
    stalled.destroy();
  } finally {
    await agent.stop();
    await proxy.close();
    await small.close();
    await big.close();
  }
});
