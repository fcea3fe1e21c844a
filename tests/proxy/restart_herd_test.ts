/**
 * A proxy restart with 100 agents connected: every agent comes back by itself
 * within a bounded time, and the reconnection attempts are spread out by the
 * jittered backoff instead of arriving as one herd.
 */

import { assert } from "../helpers/assert.ts";
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
    const killedAt = Date.now();
    proxy.signal("SIGKILL");
    await proxy.status();
    const marks = swarms.map((s) => s.lines.length);
    proxy = denoRun("proxy-2", "proxy.ts", proxyArgs);
    await waitConnected(swarms, TOTAL, 30_000, marks);
    const backMs = Date.now() - killedAt;

    // Every dial attempt after the kill, by time, and when each retry was planned for.
    // Several agents share a process here, so a busy event loop can fire due timers
    // together; the planned times show what the jittered backoff itself does.
    const after = swarms.flatMap((s) =>
      s.lines.filter((l) => l.startsWith("{")).map((l) => JSON.parse(l))
        .filter((e) => e.ts && Date.parse(e.ts) >= killedAt)
    );
    const attempts = after.filter((e) => e.msg === "Dialing proxy").map((e) => Date.parse(e.ts));
    const planned = after.filter((e) => e.msg === "Retrying").map((e) =>
      Date.parse(e.ts) + parseInt(String(e.in), 10)
    );
    const peakPer100ms = (times: number[]) => {
      const buckets = new Map<number, number>();
      for (const t of times) {
        const b = Math.floor((t - killedAt) / 100);
        buckets.set(b, (buckets.get(b) ?? 0) + 1);
      }
      return { peak: Math.max(0, ...buckets.values()), slots: buckets.size };
    };
    const actual = peakPer100ms(attempts);
    const plan = peakPer100ms(planned);
    const seconds = Math.max(1, (Math.max(...attempts) - Math.min(...attempts)) / 1000);
    console.log(
      `restart: all ${TOTAL} agents back in ${backMs} ms; ${attempts.length} attempts ` +
        `(${
          (attempts.length / seconds).toFixed(0)
        }/s); planned retries peak ${plan.peak} per 100 ms ` +
        `over ${plan.slots} slots; observed peak ${actual.peak} per 100 ms`,
    );
    assert(backMs < 30_000, `agents back after ${backMs} ms`);
    assert(attempts.length >= TOTAL, `${attempts.length} attempts`);
    assert(planned.length >= TOTAL, `${planned.length} planned retries`);
    // Jitter spreads each retry over [d/2, d]: no 100 ms slot is planned for most agents.
    assert(plan.peak <= TOTAL / 2, `herd: ${plan.peak} retries planned for one 100 ms slot`);
  } finally {
    for (const s of swarms) await s.stop();
    await proxy.stop();
  }
});
