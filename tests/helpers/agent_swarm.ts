/**
 * Many agents in one process, for scale and herd tests (1,000 Deno processes
 * do not fit in memory). Runs `--count` agents of `--clusters` clusters named
 * `<prefix>0…` against `--proxy`, each with the real `Agent` class, and logs
 * JSON lines (one per dial attempt and per connection) on stderr.
 *
 * Usage: deno run -A tests/helpers/agent_swarm.ts --proxy URL --token T --count N
 *        [--clusters C] [--prefix swarm-] [--max-retry-interval 5s] [--keepalive 30s]
 *        [--kubesphere HOST:PORT[,HOST:PORT…]] (ks-apiserver targets: cluster i gets entry
 *        i modulo their number; default 127.0.0.1:2)
 * @module
 */

import { parseArgs } from "node:util";
import { Agent } from "../../lib/agent/agent.ts";
import { parseDuration } from "../../lib/duration.ts";
import { setupLogging } from "../../lib/log.ts";

const { values } = parseArgs({
  options: {
    proxy: { type: "string" },
    token: { type: "string" },
    count: { type: "string", default: "10" },
    clusters: { type: "string", default: "1" },
    prefix: { type: "string", default: "swarm-" },
    "max-retry-interval": { type: "string", default: "5s" },
    keepalive: { type: "string", default: "30s" },
    kubesphere: { type: "string", default: "127.0.0.1:2" },
  },
});
setupLogging({ verbosity: 1, format: "json" });
const count = Number(values.count);
const targets = values.kubesphere!.split(",");
const clusters = Number(values.clusters);
const stop = new AbortController();
Deno.addSignalListener("SIGTERM", () => stop.abort());
let connected = 0;
const runs = Array.from({ length: count }, (_, i) => {
  const name = `${values.prefix}${i % clusters}`;
  const agent = new Agent({
    proxyServer: values.proxy!,
    keepaliveMs: parseDuration(values.keepalive!),
    maxRetryIntervalMs: parseDuration(values["max-retry-interval"]!),
    config: () =>
      Promise.resolve({
        Version: "v0.1.0",
        Name: name,
        Token: values.token!,
        KubernetesSvcHost: "127.0.0.1:1",
        KubeSphereSvcHost: targets[(i % clusters) % targets.length],
      }),
    onState: (state) => {
      connected += state === "connected" ? 1 : -1;
      console.log(
        JSON.stringify({ event: state, agent: i, cluster: name, connected, t: Date.now() }),
      );
    },
  });
  return agent.run(stop.signal);
});
await Promise.allSettled(runs);
