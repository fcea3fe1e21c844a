/**
 * A proxy restart with 100 agents connected: every agent comes back by itself
 * within a bounded time, and the reconnection attempts are spread out by the
 * jittered backoff instead of arriving as one herd.
 */

import { assert, assertEquals } from "../helpers/assert.ts";
import { denoRun, freePort, type Proc, tempDir } from "../helpers/proc.ts";
import { clustersYaml } from "../helpers/tunnel.ts";

const TOKEN = "c9".repeat(32);
const AGENTS_PER_PROCESS = 50;
const PROCESSES = 2;
const TOTAL = AGENTS_PER_PROCESS * PROCESSES;

/** Resolve when the swarms together report `n` connected agents. */
function waitConnected(
  swarms: Proc[],
  n: number,
  timeoutMs: number,
  from: number[],
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const check = () => {
      const total = swarms.reduce((sum, s, i) => {
        const lines = s.lines.slice(from[i]).filter((l) => l.startsWith('{"event"'));
        const last = lines.at(-1);
        return sum + (last ? JSON.parse(last).connected : 0);
      }, 0);
      if (total === n) return resolve();
      if (Date.now() > deadline) return reject(new Error(`${total}/${n} agents connected`));
      // Output arrives asynchronously from the child processes: look again when it has.
      Promise.race(swarms.map((s) => s.waitFor(/"event"/, 1000, s.lines.length).catch(() => {})))
        .then(check);
    };
    check();
  });
}

Deno.test("100 agents: all back after a proxy restart, attempts spread by jittered backoff", async () => {
  await using dir = await tempDir();
  const clusters = `${dir.path}/clusters.json`;
  await Deno.writeTextFile(
    clusters,
    clustersYaml(Array.from({ length: 10 }, (_, i) => ({ name: `swarm-${i}`, token: TOKEN }))),
  );
  const port = freePort();
  const proxyArgs = [
    "--clusters-file",
    clusters,
    "--host",
    "127.0.0.1",
    "--port",
    String(port),
    "--metrics-address",
    "",
  ];
  let proxy = denoRun("proxy", "proxy.ts", proxyArgs);
  await proxy.waitFor(/Listening on/);
  const swarms = Array.from(
    { length: PROCESSES },
    (_, i) =>
      denoRun(`swarm-${i}`, "tests/helpers/agent_swarm.ts", [
        "--proxy",
        `http://127.0.0.1:${port}`,
        "--token",
        TOKEN,
        "--count",
        String(AGENTS_PER_PROCESS),
        "--clusters",
        "10",
        "--max-retry-interval",
        "4s",
      ]),
  );
  try {
    await waitConnected(swarms, TOTAL, 60_000, swarms.map(() => 0));
    proxy.signal("SIGKILL");
    await proxy.status();
    const killedAt = Date.now();
    const marks = swarms.map((s) => s.lines.length);
    proxy = denoRun("proxy-2", "proxy.ts", proxyArgs);
    await waitConnected(swarms, TOTAL, 30_000, marks);
    const backMs = Date.now() - killedAt;

    // Every dial attempt after the kill, by time.
    const attempts = swarms.flatMap((s, i) =>
      s.lines.slice(marks[i]).filter((l) => l.includes('"msg":"Dialing proxy"')).map((l) =>
        Date.parse(JSON.parse(l).ts)
      )
    );
    assert(attempts.length >= TOTAL, `${attempts.length} attempts`);
    const buckets = new Map<number, number>();
    for (const t of attempts) {
      const b = Math.floor((t - killedAt) / 100);
      buckets.set(b, (buckets.get(b) ?? 0) + 1);
    }
    const peak = Math.max(...buckets.values());
    console.log(
      `restart: all ${TOTAL} agents back in ${backMs} ms; ${attempts.length} attempts, ` +
        `peak ${peak} per 100 ms over ${buckets.size} buckets`,
    );
    assert(backMs < 30_000, `agents back after ${backMs} ms`);
    // Jitter spreads the first retry over [d/2, d]: no 100 ms slot sees most agents.
    assert(peak <= TOTAL / 2, `herd: ${peak} attempts in one 100 ms slot`);
    assertEquals(attempts.every((t) => t >= killedAt - 1000), true);
  } finally {
    for (const s of swarms) await s.stop();
    await proxy.stop();
  }
});
