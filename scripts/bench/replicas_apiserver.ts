/**
 * The replicas figure's API server, in a process of its own (so its CPU and
 * memory are told apart from the replicas'): the test API server with the
 * Cluster CRD, `--clusters` Cluster objects `<prefix>0…` as a user creates
 * them (no token, no ports: the controller does the rest), and one Pod per
 * `--pod name=ip` with that pod IP in its status (the replicas' owners).
 *
 *     deno run -A scripts/bench/replicas_apiserver.ts --clusters 10000 \
 *       --pod tower-0=127.0.0.2 --pod tower-1=127.0.0.3
 *
 * Prints `kubeconfig=<path>`, `url=<url>`, then `ready clusters=<n> ms=<t>`;
 * runs until SIGTERM.
 * @module
 */

import { parseArgs } from "node:util";
import { parse } from "yaml";
import { setupLogging } from "../../lib/log.ts";
import { startTestApiServer, type TestApiServer } from "../../tests/apiserver/server.ts";

const NAMESPACE = "kubesphere-system";
const CRD = new URL("../../crd/cluster.kubesphere.io_clusters.yaml", import.meta.url);

async function must(
  server: TestApiServer,
  method: string,
  path: string,
  body: unknown,
  want: number,
): Promise<Record<string, unknown>> {
  const r = await server.request(method, path, body);
  if (r.status !== want) throw new Error(`${method} ${path}: ${r.status} ${r.text}`);
  return r.body as Record<string, unknown>;
}

/** Create `count` Clusters named `<prefix><i>`, as `kubectl create` would (spec only). */
export async function createClusters(
  server: TestApiServer,
  prefix: string,
  count: number,
): Promise<void> {
  for (let i = 0; i < count; i++) {
    await must(server, "POST", "/apis/cluster.kubesphere.io/v1alpha1/clusters", {
      apiVersion: "cluster.kubesphere.io/v1alpha1",
      kind: "Cluster",
      metadata: { name: `${prefix}${i}` },
      spec: { joinFederation: true, connection: { type: "proxy", token: "" } },
    }, 201);
  }
}

/** Create Pod `name` in the Tower namespace with `ip` as its pod IP. */
export async function createPod(server: TestApiServer, name: string, ip: string): Promise<void> {
  const path = `/api/v1/namespaces/${NAMESPACE}/pods`;
  await must(server, "POST", path, {
    metadata: { name, labels: { app: "tower" } },
    spec: { containers: [{ name: "proxy", image: "kubesphere/tower" }] },
  }, 201);
  const pod = await must(server, "GET", `${path}/${name}`, undefined, 200);
  pod.status = { ...(pod.status as object), podIP: ip, podIPs: [{ ip }] };
  await must(server, "PUT", `${path}/${name}/status`, pod, 200);
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      clusters: { type: "string", default: "0" },
      prefix: { type: "string", default: "rep-" },
      pod: { type: "string", multiple: true, default: [] },
    },
  });
  setupLogging({ verbosity: 0, write: () => {} });
  const t0 = performance.now();
  const server = await startTestApiServer({
    namespaces: [NAMESPACE],
    allowLoopbackEndpoints: true,
  });
  console.log(`kubeconfig=${server.kubeconfigPath}`);
  console.log(`url=${server.url}`);
  await must(
    server,
    "POST",
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
    parse(await Deno.readTextFile(CRD)),
    201,
  );
  for (const p of values.pod) {
    const [name, ip] = p.split("=");
    await createPod(server, name, ip);
  }
  const count = Number(values.clusters);
  await createClusters(server, values.prefix!, count);
  console.log(`ready clusters=${count} ms=${Math.round(performance.now() - t0)}`);
  const stop = Promise.withResolvers<void>();
  Deno.addSignalListener("SIGTERM", () => stop.resolve());
  Deno.addSignalListener("SIGINT", () => stop.resolve());
  await stop.promise;
  await server.close();
}
