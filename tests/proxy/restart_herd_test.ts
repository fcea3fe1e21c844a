/**
 * A proxy restart with 100 agents connected: every agent comes back by itself,
 * and the reconnection attempts are spread out by the jittered backoff instead
 * of arriving as one herd. Judged by the delays the agents chose (their log),
 * not by wall-clock times, which a loaded machine skews.
 */

import { assert } from "../helpers/assert.ts";
import { deadline } from "../helpers/deadline.ts";
import { denoRun, freePort, type Proc, tempDir } from "../helpers/proc.ts";
import { clustersYaml } from "../helpers/tunnel.ts";

const TOKEN = "c9".repeat(32);
const AGENTS_PER_PROCESS = 50;
const PROCESSES = 2;
const TOTAL = AGENTS_PER_PROCESS * PROCESSES;

/**
 * Resolve once `done()` holds, looked at again whenever a swarm prints a line (output arrives
 * asynchronously from the child processes, stdout and stderr each in their own order). `what`
 * names the wait in the error of the safety-net deadline, `state()` what was seen by then.
 */
async function waitOutput(swarms: Proc[], done: () => boolean, what: string, state: () => string) {
  let waiting = true;
  const check = async (): Promise<void> => {
    while (waiting && !done()) {
      if (swarms.some((s) => s.exited)) throw new Error(`a swarm exited: ${what}`);
      await Promise.race(
        swarms.map((s) => s.waitFor(/./, 120_000, s.lines.length).catch(() => {})),
      );
    }
  };
  try {
    await deadline(check(), 120_000, what);
  } catch (err) {
    throw new Error(`${(err as Error).message} (${state()})`);
  } finally {
    waiting = false;
  }
}

/**
 * Resolve when each of `n` agents of the swarms has reported itself connected in their JSON event
 * lines from `from[i]` on (each agent, not a running total: after a restart, agents that have
 * reconnected could otherwise make up for those that have not yet noticed the loss).
 */
async function waitConnected(swarms: Proc[], n: number, from: number[], what: string) {
  const total = () => {
    const up = new Set<string>();
    swarms.forEach((s, i) => {
      for (const l of s.lines.slice(from[i])) {
        if (!l.startsWith('{"event"')) continue;
        const e = JSON.parse(l) as { event: string; agent: number };
        if (e.event === "connected") up.add(`${i}/${e.agent}`);
      }
    });
    return up.size;
  };
  await waitOutput(
    swarms,
    () => total() === n,
    `${what}: ${n} agents connected`,
    () => `${total()} are`,
  );
}

/** JSON log lines of the swarms from `from[i]` on. */
function logLines(swarms: Proc[], from: number[]): Record<string, unknown>[] {
  return swarms.flatMap((s, i) =>
    s.lines.slice(from[i]).filter((l) => l.startsWith("{")).map((l) => JSON.parse(l))
  );
}

Deno.test("100 agents: all back after a proxy restart, reconnects spread by jittered backoff", async () => {
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
    await waitConnected(swarms, TOTAL, swarms.map(() => 0), "first start");
    // Everything each agent logs from here on follows the kill.
    const marks = swarms.map((s) => s.lines.length);
    proxy.signal("SIGKILL");
    await proxy.status();
    proxy = denoRun("proxy-2", "proxy.ts", proxyArgs);
    await waitConnected(swarms, TOTAL, marks, "after the restart");

    // Each agent lost its session at the same moment (the kill) and planned its first retry
    // then: the delays it chose, not when timers fired on a busy machine, show the jitter. The
    // agents log on stderr and report connections on stdout: their log lines may still be on
    // their way when the last connection is seen.
    const count = () => {
      const after = logLines(swarms, marks);
      const firstRetries = after.filter((e) => e.msg === "Retrying" && e.attempt === 1)
        .map((e) => parseInt(String(e.in), 10));
      const attempts = after.filter((e) => e.msg === "Dialing proxy").length;
      return { firstRetries, attempts };
    };
    await waitOutput(
      swarms,
      () => count().firstRetries.length >= TOTAL && count().attempts >= TOTAL,
      `each of ${TOTAL} agents logged its first retry and a dial`,
      () => `${count().firstRetries.length} first retries, ${count().attempts} dial attempts`,
    );
    const { firstRetries, attempts } = count();
    // The first retry waits at most the first delay (1 s), and never zero.
    for (const d of firstRetries) assert(d > 0 && d <= 1000, `first retry in ${d} ms`);
    // Jitter: no 100 ms window holds most of them (a herd would put all in one).
    firstRetries.sort((x, y) => x - y);
    let densest = 0;
    for (let i = 0, j = 0; i < firstRetries.length; i++) {
      while (firstRetries[i] - firstRetries[j] >= 100) j++;
      densest = Math.max(densest, i - j + 1);
    }
    console.log(
      `restart: first retries of ${firstRetries.length} agents spread over ` +
        `${firstRetries[0]}–${firstRetries.at(-1)} ms, at most ${densest} within 100 ms; ` +
        `${attempts} dial attempts until all were back`,
    );
    assert(densest <= TOTAL / 2, `herd: ${densest} of ${TOTAL} retries within 100 ms`);
  } finally {
    for (const s of swarms) await s.stop();
    await proxy.stop();
  }
});
