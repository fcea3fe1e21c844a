/**
 * A standalone Tower stack of real processes for end-to-end tests: a member
 * test API server, `proxy.ts` on a clusters file with cluster `alpha` on
 * explicit free ports, and `agent.ts` processes pointed at the member.
 * @module
 */

import { Buffer } from "node:buffer";
import { parse } from "yaml";
import { startTestApiServer, type TestApiServer } from "../apiserver/server.ts";
import { denoRun, freePort, type Proc } from "./proc.ts";

/** A running stack; `close()` stops every process and server it started. */
export interface StandaloneStack {
  dir: string;
  token: string;
  member: TestApiServer;
  proxy: Proc;
  agentPort: number;
  kubernetesPort: number;
  kubespherePort: number;
  /** Kubeconfig the agents use to reach the member (default: the member's admin). */
  memberKubeconfig: string;
  /** Start an agent of `alpha` (more may be started: several agents of one cluster). */
  startAgent(name: string, extra?: string[], token?: string): Proc;
  /** Wait for the kubeconfig the proxy writes for `alpha`, and a client using it. */
  kubeconfigClient(): Promise<
    { path: string; server: string; client: Deno.HttpClient; clientKeyPem: string }
  >;
  close(): Promise<void>;
}

/** Options for {@link startStandaloneStack}. */
export interface StackOptions {
  dir: string;
  token: string;
  /** Extra proxy flags (e.g. `--v 10`, `--shutdown-grace 30s`). */
  proxyArgs?: string[];
  /** Options of the member test API server. */
  member?: Parameters<typeof startTestApiServer>[0];
  /** Write the agents' member kubeconfig yourself (given the member server). */
  memberKubeconfig?: (member: TestApiServer) => Promise<string>;
}

/** Start the member API server and the proxy; agents are started with `startAgent`. */
export async function startStandaloneStack(opts: StackOptions): Promise<StandaloneStack> {
  const member = await startTestApiServer(opts.member);
  const memberKubeconfig = opts.memberKubeconfig
    ? await opts.memberKubeconfig(member)
    : member.kubeconfigPath;
  const agentPort = freePort();
  const kubernetesPort = freePort();
  const kubespherePort = freePort();
  await Deno.writeTextFile(
    `${opts.dir}/clusters.json`,
    JSON.stringify([{
      metadata: { name: "alpha" },
      spec: {
        joinFederation: true,
        connection: {
          type: "proxy",
          token: opts.token,
          kubernetesAPIServerPort: kubernetesPort,
          kubesphereAPIServerPort: kubespherePort,
        },
      },
    }]),
  );
  const procs: Proc[] = [];
  const clients: Deno.HttpClient[] = [];
  const proxy = denoRun("proxy", "proxy.ts", [
    "--clusters-file",
    `${opts.dir}/clusters.json`,
    "--host",
    "127.0.0.1",
    "--port",
    String(agentPort),
    "--publish-service-address",
    "127.0.0.1",
    "--metrics-address",
    "",
    ...(opts.proxyArgs ?? []),
  ]);
  procs.push(proxy);
  return {
    dir: opts.dir,
    token: opts.token,
    member,
    proxy,
    agentPort,
    kubernetesPort,
    kubespherePort,
    memberKubeconfig,
    startAgent(name, extra = [], token = opts.token) {
      const agent = denoRun(name, "agent.ts", [
        "--name",
        "alpha",
        "--token",
        token,
        "--proxy-server",
        `http://127.0.0.1:${agentPort}`,
        "--kubeconfig",
        memberKubeconfig,
        "--kubesphere-service",
        "127.0.0.1:1",
        ...extra,
      ]);
      procs.push(agent);
      return agent;
    },
    async kubeconfigClient() {
      await proxy.waitFor(/Wrote kubeconfig/, 30_000);
      const path = `${opts.dir}/alpha.kubeconfig`;
      const kc = parse(await Deno.readTextFile(path));
      const unb64 = (s: string) => Buffer.from(s, "base64").toString("utf8");
      const clientKeyPem = unb64(kc.users[0].user["client-key-data"]);
      const client = Deno.createHttpClient({
        caCerts: [unb64(kc.clusters[0].cluster["certificate-authority-data"])],
        cert: unb64(kc.users[0].user["client-certificate-data"]),
        key: clientKeyPem,
      });
      clients.push(client);
      return { path, server: kc.clusters[0].cluster.server as string, client, clientKeyPem };
    },
    async close() {
      for (const c of clients) c.close();
      for (const p of procs.reverse()) await p.stop();
      await member.close();
    },
  };
}
