/**
 * `deno task demo`: the tunnel end to end on 127.0.0.1 with no cluster.
 *
 * Starts an upstream HTTP server (standing in for a member's API server), a
 * proxy in standalone mode (`--clusters-file`), and an agent, then sends a
 * request through the tunnel and prints the answer. `--keep` leaves everything
 * running until Ctrl-C.
 * @module
 */

import { Buffer } from "node:buffer";
import { denoRun, type Proc } from "../tests/helpers/proc.ts";
import { clustersYaml, memberKubeconfig, readAllNode } from "../tests/helpers/tunnel.ts";
import { ProxyApp } from "../lib/proxy/app.ts";
import { FileClusterSource } from "../lib/proxy/clusters_file.ts";
import { loadOrCreateHostKeyFile } from "../lib/tunnel/hostkey.ts";
import { setupLogging } from "../lib/log.ts";
import { randomToken } from "../lib/secret.ts";

const keep = Deno.args.includes("--keep");
const say = (s: string) => console.log(`demo: ${s}`);

setupLogging({ verbosity: 0 });
const dir = await Deno.makeTempDir({ prefix: "tower-demo-" });
const token = randomToken();
const procs: Proc[] = [];
const cleanups: (() => Promise<void> | void)[] = [];

try {
  // 1. The "member API server": answers like a tiny kube-apiserver.
  const upstream = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    const url = new URL(req.url);
    return Response.json({ path: url.pathname, message: "hello from the member cluster" });
  });
  cleanups.push(() => upstream.shutdown());
  say(`member API server stand-in on 127.0.0.1:${upstream.addr.port}`);

  // 2. The proxy, standalone: one cluster "alpha" with a fresh token.
  const clustersPath = `${dir}/clusters.json`;
  await Deno.writeTextFile(clustersPath, clustersYaml([{ name: "alpha", token }]));
  const hostKey = await loadOrCreateHostKeyFile(`${dir}/proxy_host_key`);
  const app = new ProxyApp({
    host: "127.0.0.1",
    port: 0,
    hostKey,
    clusters: new FileClusterSource({ path: clustersPath }),
  });
  await app.start();
  cleanups.push(() => app.close());
  const proxyUrl = `http://127.0.0.1:${app.addr.port}`;
  say(`proxy listening for agents on ${proxyUrl} (host key ${hostKey.fingerprint})`);

  // 3. The agent, as its own process, pointed at the stand-in.
  const kubeconfig = `${dir}/member.kubeconfig`;
  await Deno.writeTextFile(kubeconfig, memberKubeconfig(upstream.addr.port));
  const agent = denoRun("agent", "agent.ts", [
    "--name=alpha",
    `--token=${token}`,
    `--proxy-server=${proxyUrl}`,
    `--kubeconfig=${kubeconfig}`,
    `--kubesphere-service=127.0.0.1:${upstream.addr.port}`,
    `--proxy-fingerprint=${hostKey.fingerprint}`,
  ]);
  procs.push(agent);
  await agent.waitFor(/Connected\./, 30_000);
  for (const l of agent.lines) console.log(`  agent| ${l}`);

  // 4. A request through the tunnel: proxy → SSH channel → agent → upstream.
  const session = app.registry.pick("alpha");
  if (!session) throw new Error("no agent session for alpha");
  const stream = await session.openStream(session.config.KubeSphereSvcHost);
  const response = readAllNode(stream);
  stream.end(
    Buffer.from(
      "GET /apis/tenant.kubesphere.io HTTP/1.1\r\nHost: ks-apiserver\r\nConnection: close\r\n\r\n",
    ),
  );
  const text = (await response).toString();
  say("response through the tunnel:");
  console.log(text.split("\r\n").map((l) => `  ${l}`).join("\n"));
  if (!text.startsWith("HTTP/1.1 200")) throw new Error("unexpected response");
  say("OK");

  if (keep) {
    say(`running; agent token ${token.slice(0, 8)}…; Ctrl-C to stop`);
    await new Promise<void>((resolve) => Deno.addSignalListener("SIGINT", () => resolve()));
  }
} finally {
  for (const p of procs) await p.stop();
  for (const c of cleanups.reverse()) await c();
  await Deno.remove(dir, { recursive: true }).catch(() => {});
}
