/**
 * The system under test, on 127.0.0.1: the origin server, the proxy and the
 * agent, each in its own process, and the paths a client can take to the
 * origin (direct, or through one of Tower's endpoints). A "raw" variant runs
 * the proxy inside the bench process and opens tunnel streams directly, which
 * measures the tunnel without any HTTP engine in front of it.
 * @module
 */

import { Buffer } from "node:buffer";
import type { Duplex } from "node:stream";
import { parse as parseYaml } from "yaml";
import { denoRun, envFlags, freePort, type Proc } from "../../tests/helpers/proc.ts";
import { clustersYaml } from "../../tests/helpers/tunnel.ts";
import { ProxyApp } from "../../lib/proxy/app.ts";
import { FileClusterSource } from "../../lib/proxy/clusters_file.ts";
import { loadOrCreateHostKeyFile } from "../../lib/tunnel/hostkey.ts";
import { randomToken } from "../../lib/secret.ts";
import type { ByteConn } from "./http_client.ts";
import { makeOriginTls, type OriginTls } from "./tls.ts";
import { V8_FLAGS } from "../build.ts";

/** How a client reaches the origin. */
export interface BenchPath {
  /** `direct`, `direct-tls`, `kubesphere`, `kubernetes`, `raw`, or `against`. */
  name: string;
  /** Host header to send. */
  host: string;
  /** Open one connection. */
  connect(): Promise<ByteConn>;
}

export { rssMiB } from "./rss.ts";

/** The running origin server process. */
export interface Origin {
  proc: Proc;
  httpPort: number;
  httpsPort: number;
  tls: OriginTls;
}

/** Start the origin server in its own process. */
export async function startOrigin(dir: string, httpPort = 0): Promise<Origin> {
  const tls = await makeOriginTls(dir);
  const proc = denoRun("origin", "scripts/bench/origin.ts", [
    "--port",
    String(httpPort),
    "--tls-port",
    "0",
    "--cert",
    tls.certPath,
    "--key",
    tls.keyPath,
  ]);
  const line = await proc.waitFor(/^origin http=\d+ https=\d+/, 30_000);
  const m = /http=(\d+) https=(\d+)/.exec(line)!;
  return { proc, httpPort: Number(m[1]), httpsPort: Number(m[2]), tls };
}

/** A plain TCP path to `port`. */
export function tcpPath(name: string, port: number): BenchPath {
  return {
    name,
    host: `127.0.0.1:${port}`,
    connect: async () => {
      const c = await Deno.connect({ hostname: "127.0.0.1", port });
      c.setNoDelay(true);
      return c;
    },
  };
}

/** A TLS path to `port`, trusting `caPem`, optionally with a client certificate. */
export function tlsPath(
  name: string,
  port: number,
  caPem: string,
  client?: { certPem: string; keyPem: string },
  serverName = "127.0.0.1",
): BenchPath {
  return {
    name,
    host: `${serverName}:${port}`,
    connect: async () => {
      // Deno.startTls (which would let us set TCP_NODELAY first) cannot send a client
      // certificate; the client writes each request in one piece, so Nagle costs nothing here.
      const c = await Deno.connectTls({
        hostname: "127.0.0.1",
        port,
        caCerts: [caPem],
        ...(client ? { cert: client.certPem, key: client.keyPem } : {}),
      });
      await c.handshake();
      return c;
    },
  };
}

/** A Node Duplex (a tunnel channel) seen as a {@link ByteConn}. */
export class DuplexConn implements ByteConn {
  #d: Duplex;
  #chunks: Buffer[] = [];
  #queued = 0;
  #ended = false;
  #error: Error | undefined;
  #wake: (() => void) | undefined;

  constructor(d: Duplex) {
    this.#d = d;
    const wake = () => {
      const w = this.#wake;
      this.#wake = undefined;
      w?.();
    };
    d.on("data", (c: Buffer) => {
      this.#chunks.push(c);
      this.#queued += c.length;
      if (this.#queued > 1 << 20) d.pause();
      wake();
    });
    d.on("end", () => {
      this.#ended = true;
      wake();
    });
    d.on("close", () => {
      this.#ended = true;
      wake();
    });
    d.on("error", (e: Error) => {
      this.#error = e;
      wake();
    });
  }

  async read(p: Uint8Array): Promise<number | null> {
    while (this.#chunks.length === 0) {
      if (this.#error) throw this.#error;
      if (this.#ended) return null;
      await new Promise<void>((r) => this.#wake = r);
    }
    let n = 0;
    while (n < p.length && this.#chunks.length > 0) {
      const c = this.#chunks[0];
      const k = Math.min(c.length, p.length - n);
      p.set(k === c.length ? c : c.subarray(0, k), n);
      n += k;
      if (k === c.length) this.#chunks.shift();
      else this.#chunks[0] = c.subarray(k);
    }
    this.#queued -= n;
    if (this.#d.isPaused() && this.#queued < 256 << 10) this.#d.resume();
    return n;
  }

  async write(p: Uint8Array): Promise<number> {
    if (this.#error) throw this.#error;
    if (!this.#d.write(p)) {
      await new Promise<void>((resolve) => {
        const done = () => {
          this.#d.off("drain", done);
          this.#d.off("close", done);
          resolve();
        };
        this.#d.on("drain", done);
        this.#d.on("close", done);
      });
    }
    return p.length;
  }

  close(): void {
    this.#d.destroy();
  }
}

/** The agent's kubeconfig: the origin's TLS port as "kube-apiserver". */
function agentKubeconfig(origin: Origin): string {
  const b64 = (s: string) => Buffer.from(s).toString("base64");
  return JSON.stringify({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{
      name: "m",
      cluster: {
        server: `https://127.0.0.1:${origin.httpsPort}`,
        "certificate-authority-data": b64(origin.tls.caPem),
      },
    }],
    users: [{ name: "u", user: { token: "bench-bearer-token" } }],
    contexts: [{ name: "c", context: { cluster: "m", user: "u" } }],
    "current-context": "c",
  });
}

/** Start `agent.ts` for cluster `name` against `proxyUrl`. */
export async function startAgentProc(
  dir: string,
  name: string,
  token: string,
  proxyUrl: string,
  origin: Origin,
  extraArgs: string[] = [],
): Promise<Proc> {
  const kc = `${dir}/agent-${name}.kubeconfig`;
  await Deno.writeTextFile(kc, agentKubeconfig(origin));
  const proc = denoRun(
    `agent-${name}`,
    "agent.ts",
    [
      "--name",
      name,
      "--token",
      token,
      "--proxy-server",
      proxyUrl,
      "--kubeconfig",
      kc,
      "--kubesphere-service",
      `127.0.0.1:${origin.httpPort}`,
      "--max-retry-interval",
      "2s",
      // As deploy/agent runs it (metrics on): the idle figure then includes prom-client.
      "--metrics-address",
      "127.0.0.1:0",
      ...extraArgs,
    ],
    undefined,
    [`--v8-flags=${V8_FLAGS}`, ...envFlags("BENCH_AGENT_FLAGS")],
  );
  await proc.waitFor(/Connected\./, 30_000);
  return proc;
}

/** The in-process proxy of the raw path, with its agent. */
export interface RawTunnel {
  app: ProxyApp;
  agent: Proc;
  path: BenchPath;
  close(): Promise<void>;
}

/** Proxy in this process, agent in its own; streams opened straight on the session. */
export async function startRawTunnel(
  dir: string,
  origin: Origin,
  token: string,
  agentArgs: string[] = [],
): Promise<RawTunnel> {
  const clustersPath = `${dir}/raw-clusters.json`;
  await Deno.writeTextFile(clustersPath, clustersYaml([{ name: "raw", token }]));
  const app = new ProxyApp({
    host: "127.0.0.1",
    port: 0,
    hostKey: await loadOrCreateHostKeyFile(`${dir}/raw_host_key`),
    clusters: new FileClusterSource({ path: clustersPath, watch: false }),
  });
  await app.start();
  const agent = await startAgentProc(
    dir,
    "raw",
    token,
    `http://127.0.0.1:${app.addr.port}`,
    origin,
    agentArgs,
  );
  const target = `127.0.0.1:${origin.httpPort}`;
  const path: BenchPath = {
    name: "raw",
    host: target,
    connect: async () => {
      const s = app.registry.pick("raw");
      if (!s) throw new Error("raw path: no agent session");
      return new DuplexConn(await s.openStream(target));
    },
  };
  return {
    app,
    agent,
    path,
    close: async () => {
      await agent.stop();
      await app.close();
    },
  };
}

/** Tower as deployed: `proxy.ts` and `agent.ts` processes, clients on the endpoints. */
export interface TowerStack {
  proxy: Proc;
  agent: Proc;
  kubesphere: BenchPath;
  kubernetes: BenchPath;
  close(): Promise<void>;
}

/** Client credentials and address read from a kubeconfig the proxy wrote. */
export interface KubeconfigAccess {
  server: URL;
  caPem: string;
  certPem: string;
  keyPem: string;
}

/** Read server, CA and client certificate out of a kubeconfig. */
export function readKubeconfig(text: string): KubeconfigAccess {
  const kc = parseYaml(text) as {
    clusters: { cluster: { server: string; "certificate-authority-data": string } }[];
    users: { user: { "client-certificate-data": string; "client-key-data": string } }[];
  };
  const d = (s: string) => Buffer.from(s, "base64").toString("utf8");
  return {
    server: new URL(kc.clusters[0].cluster.server),
    caPem: d(kc.clusters[0].cluster["certificate-authority-data"]),
    certPem: d(kc.users[0].user["client-certificate-data"]),
    keyPem: d(kc.users[0].user["client-key-data"]),
  };
}

/** Start `proxy.ts` in standalone mode with one cluster on fixed endpoint ports. */
export async function startProxyProc(
  dir: string,
  port: number,
  clustersPath: string,
  label = "proxy",
): Promise<Proc> {
  const proc = denoRun(
    label,
    "proxy.ts",
    [
      "--clusters-file",
      clustersPath,
      "--host",
      "127.0.0.1",
      "--port",
      String(port),
      "--kubeconfig-dir",
      dir,
      "--host-key",
      `${dir}/proxy_host_key`,
      "--publish-service-address",
      "127.0.0.1",
      // The bulk PUT (256 MiB with --full) is over the endpoint's default 100 MiB body limit.
      "--kubesphere-max-body",
      "0",
      // Metrics on, as deployed, on a port of its own (the default :9090 may be taken).
      "--metrics-address",
      "127.0.0.1:0",
    ],
    undefined,
    [`--v8-flags=${V8_FLAGS}`, ...envFlags("BENCH_PROXY_FLAGS")],
  );
  await proc.waitFor(/Listening on/, 60_000);
  return proc;
}

/** Wait until `path` answers `GET /health` with 200 (bounded). */
export async function waitHealthy(path: BenchPath, timeoutMs = 30_000): Promise<void> {
  const { HttpConnection } = await import("./http_client.ts");
  const deadline = Date.now() + timeoutMs;
  let last = "";
  while (Date.now() < deadline) {
    try {
      const c = new HttpConnection(await path.connect(), path.host);
      try {
        const r = await c.request("GET", "/health");
        if (r.status === 200) return;
        last = `status ${r.status}`;
      } finally {
        c.close();
      }
    } catch (err) {
      last = (err as Error).message;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${path.name}: not healthy within ${timeoutMs} ms: ${last}`);
}

/**
 * Start proxy and agent processes and find the cluster's two endpoints.
 *
 * The endpoint ports are picked here and bound by the proxy a second later: on a shared machine
 * another process may take one meanwhile (every `port: 0` listener draws from the same range).
 * The proxy then cannot serve the cluster, so it never issues its kubeconfig, and whatever holds
 * the port may even answer the health check. So the proxy's own word is awaited, and when it
 * could not listen the stack is started again on other ports.
 */
export async function startTowerStack(
  dir: string,
  origin: Origin,
  token: string,
): Promise<TowerStack> {
  for (let attempt = 1;; attempt++) {
    const stack = await startTowerStackOnce(dir, origin, token);
    if (typeof stack !== "string") return stack;
    if (attempt === 3) throw new Error(`proxy could not serve the endpoints 3 times: ${stack}`);
    console.error(`bench: endpoint ports taken meanwhile, trying others: ${stack}`);
  }
}

/** One try of {@link startTowerStack}: the stack, or why the proxy could not serve. */
async function startTowerStackOnce(
  dir: string,
  origin: Origin,
  token: string,
): Promise<TowerStack | string> {
  const kubernetesPort = freePort();
  const kubespherePort = freePort();
  const clustersPath = `${dir}/clusters.json`;
  const clusters = JSON.parse(clustersYaml([{ name: "bench", token }]));
  clusters.items[0].spec.connection.kubernetesAPIServerPort = kubernetesPort;
  clusters.items[0].spec.connection.kubesphereAPIServerPort = kubespherePort;
  await Deno.writeTextFile(clustersPath, JSON.stringify(clusters));
  const proxyPort = freePort();
  const proxy = await startProxyProc(dir, proxyPort, clustersPath);
  const agent = await startAgentProc(dir, "bench", token, `http://127.0.0.1:${proxyPort}`, origin);
  const said = await proxy.waitFor(
    /Serving cluster endpoints|Cannot serve cluster endpoints/,
    30_000,
  )
    .catch((err: Error) => err.message);
  if (!/Serving cluster endpoints/.test(said)) {
    await agent.stop();
    await proxy.stop();
    return said;
  }
  const kubesphere = tcpPath("kubesphere", kubespherePort);
  await waitHealthy(kubesphere);
  const kcPath = `${dir}/bench.kubeconfig`;
  const deadline = Date.now() + 30_000;
  let kcText: string | undefined;
  while (kcText === undefined) {
    kcText = await Deno.readTextFile(kcPath).catch(() => undefined);
    if (kcText === undefined) {
      if (Date.now() > deadline) {
        throw new Error(`proxy wrote no kubeconfig at ${kcPath}; proxy said:\n${proxy.tail(20)}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  const access = readKubeconfig(kcText);
  const kubernetes = tlsPath(
    "kubernetes",
    Number(access.server.port) || kubernetesPort,
    access.caPem,
    { certPem: access.certPem, keyPem: access.keyPem },
    access.server.hostname,
  );
  await waitHealthy(kubernetes);
  return {
    proxy,
    agent,
    kubesphere,
    kubernetes,
    close: async () => {
      await agent.stop();
      await proxy.stop();
    },
  };
}

/** A chain of two {@link ./passthrough.ts} processes in front of the origin. */
export interface PassthroughPair {
  path: BenchPath;
  close(): Promise<void>;
}

/**
 * Start two forwarder processes, client side and origin side, chained to the origin's HTTP
 * port: path `passthrough`, or `passthrough-sealed` with ChaCha20-Poly1305 packets between them.
 */
export async function startPassthroughPair(
  origin: Origin,
  sealed: boolean,
): Promise<PassthroughPair> {
  const name = sealed ? "passthrough-sealed" : "passthrough";
  const env = { PASSTHROUGH_KEY: randomToken(64) };
  const started: Proc[] = [];
  const start = async (side: string, to: number, sealedSide: string) => {
    const proc = denoRun(`${name}-${side}`, "scripts/bench/passthrough.ts", [
      "--to",
      `127.0.0.1:${to}`,
      "--sealed",
      sealed ? sealedSide : "none",
    ], env);
    started.push(proc);
    const line = await proc.waitFor(/^passthrough port=\d+/, 30_000);
    return Number(/port=(\d+)/.exec(line)![1]);
  };
  const close = async () => {
    for (const p of [...started].reverse()) await p.stop();
  };
  try {
    const originSide = await start("origin-side", origin.httpPort, "downstream");
    const clientSide = await start("client-side", originSide, "upstream");
    const path = tcpPath(name, clientSide);
    await waitHealthy(path);
    return { path, close };
  } catch (err) {
    await close();
    throw err;
  }
}
