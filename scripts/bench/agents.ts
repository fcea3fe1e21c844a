/**
 * Worker of the scale figure: runs many agent sessions in one process with the
 * agent library, and reports how many are connected.
 *
 *     deno run -A scripts/bench/agents.ts --proxy-server URL --prefix scale- \
 *       --from 0 --count 250 --token-seed S
 *
 * Agent `i` is cluster `<prefix><i>` with token {@link scaleToken}(seed, i), or with line `i` of
 * `--tokens-file` (tokens the controller generated; the replicas figure).
 * Prints `connected <n>` whenever the count changes (at most every 50 ms) and
 * `ready` once all agents have been started.
 * @module
 */

import { parseArgs } from "node:util";
import { createHash } from "node:crypto";
import { Agent } from "../../lib/agent/agent.ts";
import { setupLogging } from "../../lib/log.ts";

/** The token of scale cluster `i` (hex, 64 chars). */
export function scaleToken(seed: string, i: number): string {
  return createHash("sha256").update(`${seed}/${i}`).digest("hex");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      "proxy-server": { type: "string" },
      prefix: { type: "string", default: "scale-" },
      from: { type: "string", default: "0" },
      count: { type: "string", default: "1" },
      "token-seed": { type: "string", default: "bench" },
      "tokens-file": { type: "string" },
    },
  });
  const tokens = values["tokens-file"]
    ? (await Deno.readTextFile(values["tokens-file"])).split("\n")
    : undefined;
  // Thousands of agents' info lines are not worth printing.
  setupLogging({ verbosity: 0, write: () => {} });
  const from = Number(values.from);
  const count = Number(values.count);
  const ctl = new AbortController();
  let connected = 0;
  let reported = -1;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const report = () => {
    timer = undefined;
    if (connected !== reported) {
      reported = connected;
      console.log(`connected ${connected}`);
    }
  };
  const changed = () => {
    if (timer === undefined) timer = setTimeout(report, 50);
  };
  const runs: Promise<void>[] = [];
  for (let i = from; i < from + count; i++) {
    const name = `${values.prefix}${i}`;
    const token = tokens ? tokens[i] : scaleToken(values["token-seed"]!, i);
    const agent = new Agent({
      proxyServer: values["proxy-server"]!,
      config: () =>
        Promise.resolve({
          Version: "bench",
          Name: name,
          Token: token,
          KubernetesSvcHost: "127.0.0.1:9",
          KubeSphereSvcHost: "127.0.0.1:9",
        }),
      onState: (state) => {
        connected += state === "connected" ? 1 : -1;
        changed();
      },
    });
    runs.push(agent.run(ctl.signal).catch((err) => console.error(`${name}: ${err.message}`)));
  }
  console.log("ready");
  const stop = () => ctl.abort();
  Deno.addSignalListener("SIGTERM", stop);
  Deno.addSignalListener("SIGINT", stop);
  await Promise.all(runs);
  clearTimeout(timer);
}
