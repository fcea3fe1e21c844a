/**
 * The agent link's crypto as the binaries run it: an in-process proxy and a real agent process,
 * both rekeying after 1 MiB (set through the proxy's options and the agent's `--rekey-limit`),
 * with the agent on each ChaCha20-Poly1305 implementation `TOWER_SSH_CRYPTO` selects (ours with
 * SIMD or scalar Poly1305, or ssh2's own code). Every byte must arrive in order across the key
 * exchanges, both ways; each process logs which implementation it uses.
 */

import { createHash } from "node:crypto";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import {
  hashAfterEofServer,
  patternChunk,
  readAllNode,
  sourceServer,
  startAgent,
  startTestProxy,
  waitForSessions,
} from "../helpers/tunnel.ts";
import { rekeysCounter } from "../../lib/metrics.ts";
import { LARGE_PACKET_SIZE } from "../../lib/tunnel/ssh_cipher.ts";

const TOKEN = "b7".repeat(32);
const MiB = 1 << 20;

/** Key exchanges the proxy in this process has seen (all sessions), and how many it started. */
async function proxyRekeys(): Promise<{ all: number; started: number }> {
  const values = (await rekeysCounter.get()).values;
  const sum = (vs: typeof values) => vs.reduce((n, v) => n + v.value, 0);
  return { all: sum(values), started: sum(values.filter((v) => v.labels.reason !== "peer")) };
}

function expectedHash(seed: number, mib: number): string {
  const h = createHash("sha256");
  const chunk = patternChunk(seed);
  for (let i = 0; i < mib; i++) h.update(chunk);
  return h.digest("hex");
}

Deno.test("link crypto: each agent implementation, 1 MiB rekey limit on both ends, 12 MiB each way intact", async (t) => {
  const proxy = await startTestProxy([{ name: "alpha", token: TOKEN }], { rekey: { bytes: MiB } });
  const sink = hashAfterEofServer();
  const mib = 12;
  const source = sourceServer(mib * MiB, 5);
  try {
    for (const impl of ["simd", "scalar", "ssh2"] as const) {
      await t.step(`agent on ${impl}`, async () => {
        const agent = await startAgent({
          name: "alpha",
          token: TOKEN,
          proxyUrl: proxy.url,
          dir: proxy.dir,
          kubernetesPort: sink.port,
          kubespherePort: source.port,
          label: `agent-${impl}`,
          extra: ["--rekey-limit", "1M", "--v", "2"],
          env: { TOWER_SSH_CRYPTO: impl },
        });
        try {
          const line = await agent.waitFor(/SSH link crypto/);
          assertMatch(line, new RegExp(`impl="${impl}"`));
          await agent.waitFor(/Connected\./);
          await waitForSessions(proxy.app, "alpha", 1);
          const session = proxy.app.registry.pick("alpha")!;
          const before = await proxyRekeys();

          // Down: the agent sends 12 MiB (the kubesphere target is a source).
          const down = await session.openStream(`127.0.0.1:${source.port}`);
          const info = down as unknown as { outgoing: { packetSize: number } };
          // Large packets only where the agent opens packets with our code.
          assertEquals(info.outgoing.packetSize, impl === "ssh2" ? 32 * 1024 : LARGE_PACKET_SIZE);
          down.end();
          const got = await readAllNode(down);
          assertEquals(got.length, mib * MiB);
          assertEquals(createHash("sha256").update(got).digest("hex"), expectedHash(5, mib));

          // Up: 12 MiB to the sink, which answers with its hash after EOF.
          const up = await session.openStream(`127.0.0.1:${sink.port}`);
          const answer = readAllNode(up);
          const chunk = patternChunk(9);
          for (let i = 0; i < mib; i++) {
            if (!up.write(chunk)) await new Promise((r) => up.once("drain", r));
          }
          up.end();
          assertEquals(
            (await answer).toString(),
            `sha256:${expectedHash(9, mib)} bytes:${mib * MiB}\n`,
          );

          // 24 MiB crossed the link: with a 1 MiB limit at each end, at least 24 / 2 exchanges
          // (an end may carry one more write burst before its exchange starts).
          // The sender of each leg notices first: the agent started exchanges going down, the
          // proxy going up.
          const after = await proxyRekeys();
          const seenByProxy = after.all - before.all;
          assert(seenByProxy >= 12, `proxy saw ${seenByProxy} key exchanges`);
          assert(after.started > before.started, "the proxy started some");
          const seenByAgent = agent.count(/SSH key exchange done/);
          assert(seenByAgent >= 12, `agent saw ${seenByAgent} key exchanges`);
          assert(agent.count(/Starting SSH key exchange/) > 0, "the agent started some");
        } finally {
          await agent.stop();
          await waitForSessions(proxy.app, "alpha", 0);
        }
      });
    }
  } finally {
    await proxy.close();
    await sink.close();
    await source.close();
  }
});

Deno.test("link crypto: an unknown TOWER_SSH_CRYPTO stops the agent with a clear error", async () => {
  const proxy = await startTestProxy([{ name: "alpha", token: TOKEN }]);
  try {
    const agent = await startAgent({
      name: "alpha",
      token: TOKEN,
      proxyUrl: proxy.url,
      dir: proxy.dir,
      kubernetesPort: 1,
      kubespherePort: 1,
      env: { TOWER_SSH_CRYPTO: "fast" },
    });
    const status = await agent.status();
    assertEquals(status.code, 1);
    assertMatch(agent.output, /TOWER_SSH_CRYPTO=fast: want auto, simd, scalar or ssh2/);
  } finally {
    await proxy.close();
  }
});
