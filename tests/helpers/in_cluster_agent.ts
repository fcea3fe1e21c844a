/**
 * The agent with in-cluster credentials, as a process, for end-to-end tests: `agent.ts` reads
 * the service account from its fixed path in a pod, so this runs the same `Agent` class and
 * `buildAgentConfig` (no `--kubeconfig`: `KUBERNETES_SERVICE_HOST/PORT` from the environment,
 * token and CA from `--sa-dir`). Prints `Connected.` on each connection.
 *
 * Usage: deno run -A tests/helpers/in_cluster_agent.ts --proxy URL --name N --token T --sa-dir D
 * @module
 */

import { parseArgs } from "node:util";
import { Agent } from "../../lib/agent/agent.ts";
import { buildAgentConfig } from "../../lib/agent/member_config.ts";
import { setupLogging } from "../../lib/log.ts";

const { values } = parseArgs({
  options: {
    proxy: { type: "string" },
    name: { type: "string" },
    token: { type: "string" },
    "sa-dir": { type: "string" },
  },
});
setupLogging({ verbosity: 0 });
const stop = new AbortController();
Deno.addSignalListener("SIGTERM", () => stop.abort());
const agent = new Agent({
  proxyServer: values.proxy!,
  maxRetryIntervalMs: 2_000,
  config: () =>
    buildAgentConfig({
      name: values.name!,
      token: values.token!,
      kubeconfig: "",
      kubernetesService: "kubernetes.default.svc",
      kubesphereService: "127.0.0.1:1",
      serviceAccountDir: values["sa-dir"],
    }),
  onState: (state) => {
    if (state === "connected") console.log("Connected.");
  },
});
await agent.run(stop.signal);
