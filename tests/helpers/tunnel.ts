/**
 * Fixtures for tunnel tests: a proxy on a clusters file (in-process or not), TCP
 * upstream servers, agent kubeconfigs, and stream helpers.
 * @module
 */

import type { Duplex } from "node:stream";
import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import { ProxyApp } from "../../lib/proxy/app.ts";
import { FileClusterSource } from "../../lib/proxy/clusters_file.ts";
import { generateHostKeyPem, parseHostKey } from "../../lib/tunnel/hostkey.ts";
import type { RekeyLimits } from "../../lib/tunnel/rekey.ts";
import { denoRun, freePort, type Proc } from "./proc.ts";

/** A cluster entry for a clusters file. */
export interface TestCluster {
  name: string;
  token: string;
  joinFederation?: boolean;
  /** Endpoint ports (default: the proxy allocates them, from 6001/16001). */
  kubernetesPort?: number;
  kubespherePort?: number;
}

/** Clusters file text for `clusters`. */
export function clustersYaml(clusters: TestCluster[]): string {
  return JSON.stringify({
    apiVersion: "cluster.kubesphere.io/v1alpha1",
    kind: "ClusterList",
    items: clusters.map((c) => ({
      apiVersion: "cluster.kubesphere.io/v1alpha1",
      kind: "Cluster",
      metadata: { name: c.name },
      spec: {
        joinFederation: c.joinFederation ?? true,
        connection: {
          type: "proxy",
          token: c.token,
          ...(c.kubernetesPort ? { kubernetesAPIServerPort: c.kubernetesPort } : {}),
          ...(c.kubespherePort ? { kubesphereAPIServerPort: c.kubespherePort } : {}),
        },
      },
    })),
  });
}

/** An in-process proxy listening on 127.0.0.1. */
export interface TestProxy {
  app: ProxyApp;
  url: string;
  dir: string;
  clustersPath: string;
  close(): Promise<void>;
}

/** Start a proxy in this process with a clusters file in a fresh temp dir. */
export async function startTestProxy(
  clusters: TestCluster[],
  opts: {
    handshakeTimeoutMs?: number;
    keepaliveMs?: number;
    maxPendingHandshakes?: number;
    maxConfigBytes?: number;
    maxChannelsPerSession?: number;
    rekey?: RekeyLimits;
  } = {},
): Promise<TestProxy> {
  const dir = await Deno.makeTempDir({ prefix: "tower-proxy-" });
  const clustersPath = `${dir}/clusters.json`;
  await Deno.writeTextFile(clustersPath, clustersYaml(clusters));
  const source = new FileClusterSource({ path: clustersPath, watch: false });
  const app = new ProxyApp({
    host: "127.0.0.1",
    port: 0,
    hostKey: parseHostKey(generateHostKeyPem()),
    clusters: source,
    ...opts,
  });
  await app.start();
  return {
    app,
    url: `http://127.0.0.1:${app.addr.port}`,
    dir,
    clustersPath,
    close: async () => {
      await app.close();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}

/** A kubeconfig for an agent whose "kube-apiserver" is `127.0.0.1:port`. */
export function memberKubeconfig(port: number): string {
  return JSON.stringify({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{ name: "m", cluster: { server: `https://127.0.0.1:${port}` } }],
    users: [{ name: "u", user: { token: "member-bearer-token" } }],
    contexts: [{ name: "c", context: { cluster: "m", user: "u" } }],
    "current-context": "c",
  });
}

/**
 * Start `proxy.ts` as a subprocess on a clusters file in `dir` holding cluster `name`/`token`
 * (endpoint ports from `freePort()`), listening for agents on 127.0.0.1:`port`; resolves once
 * it listens, with its host key fingerprint.
 */
export async function startProxyProc(opts: {
  dir: string;
  port: number;
  name: string;
  token: string;
  label?: string;
  /** Host key file (default: beside the clusters file). */
  hostKey?: string;
  /** More proxy flags (e.g. `--keepalive 1s`). */
  args?: string[];
}): Promise<{ proc: Proc; fingerprint: string }> {
  await Deno.writeTextFile(
    `${opts.dir}/clusters.json`,
    clustersYaml([{
      name: opts.name,
      token: opts.token,
      kubernetesPort: freePort(),
      kubespherePort: freePort(),
    }]),
  );
  const proc = denoRun(opts.label ?? "proxy", "proxy.ts", [
    "--clusters-file",
    `${opts.dir}/clusters.json`,
    ...(opts.hostKey ? ["--host-key", opts.hostKey] : []),
    "--host",
    "127.0.0.1",
    "--port",
    String(opts.port),
    "--metrics-address",
    "",
    ...(opts.args ?? []),
  ]);
  const line = await proc.waitFor(/SSH host key/);
  await proc.waitFor(/Listening on/);
  return { proc, fingerprint: line.match(/SHA256:[A-Za-z0-9+/]{43}/)![0] };
}

/** Start `agent.ts` as a subprocess against `proxyUrl`, targets on local ports. */
export async function startAgent(
  opts: {
    name: string;
    token: string;
    proxyUrl: string;
    dir: string;
    kubernetesPort: number;
    kubespherePort: number;
    extra?: string[];
    label?: string;
    env?: Record<string, string>;
  },
): Promise<Proc> {
  const kc = `${opts.dir}/member-${opts.label ?? opts.name}.kubeconfig`;
  await Deno.writeTextFile(kc, memberKubeconfig(opts.kubernetesPort));
  return denoRun(opts.label ?? `agent-${opts.name}`, "agent.ts", [
    "--name",
    opts.name,
    "--token",
    opts.token,
    "--proxy-server",
    opts.proxyUrl,
    "--kubeconfig",
    kc,
    "--kubesphere-service",
    `127.0.0.1:${opts.kubespherePort}`,
    "--max-retry-interval",
    "2s",
    ...(opts.extra ?? []),
  ], opts.env);
}

/** A TCP server on 127.0.0.1 running `handler` per connection. */
export interface TcpServer {
  port: number;
  connections: number;
  close(): Promise<void>;
}

/** Start a TCP server; `handler` owns each connection. */
export function startTcpServer(handler: (conn: Deno.TcpConn) => Promise<void>): TcpServer {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.TcpConn>();
  const tasks = new Set<Promise<void>>();
  const server: TcpServer = {
    port: (listener.addr as Deno.NetAddr).port,
    connections: 0,
    close: async () => {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch {
          // closed by handler
        }
      }
      await Promise.allSettled([...tasks, loop]);
    },
  };
  const loop = (async () => {
    try {
      for await (const conn of listener) {
        server.connections++;
        conns.add(conn);
        const t = handler(conn).catch(() => {}).finally(() => {
          conns.delete(conn);
          try {
            conn.close();
          } catch {
            // already closed
          }
        });
        tasks.add(t);
        t.finally(() => tasks.delete(t));
      }
    } catch {
      // listener closed
    }
  })();
  return server;
}

/**
 * Reads everything until EOF, then answers with `sha256:<hex> bytes:<n>\n` and
 * closes: proves half-close travels (the answer comes only after EOF).
 */
export function hashAfterEofServer(): TcpServer {
  return startTcpServer(async (conn) => {
    const hasher = new Sha256Stream();
    const buf = new Uint8Array(256 * 1024);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      hasher.update(buf.subarray(0, n));
    }
    await writeAll(
      conn,
      new TextEncoder().encode(`sha256:${hasher.hex()} bytes:${hasher.bytes}\n`),
    );
  });
}

/** Echo server: writes back whatever it reads; closes its side after EOF. */
export function echoServer(): TcpServer {
  return startTcpServer(async (conn) => {
    const buf = new Uint8Array(256 * 1024);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      await writeAll(conn, buf.subarray(0, n));
    }
  });
}

/** Server that sends `size` pseudo-random bytes derived from `seed` then closes. */
export function sourceServer(size: number, seed = 1): TcpServer {
  return startTcpServer(async (conn) => {
    let left = size;
    const chunk = patternChunk(seed);
    while (left > 0) {
      const n = Math.min(left, chunk.length);
      await writeAll(conn, chunk.subarray(0, n));
      left -= n;
    }
  });
}

/** 1 MiB of deterministic bytes for `seed`. */
export function patternChunk(seed: number): Uint8Array {
  const out = new Uint8Array(1 << 20);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < out.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** Write all of `data` to a Deno connection. */
export async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await conn.write(data.subarray(off));
}

/** Incremental SHA-256 over node:crypto. */
export class Sha256Stream {
  #h = createHash("sha256");
  bytes = 0;
  update(b: Uint8Array): void {
    this.#h.update(b);
    this.bytes += b.length;
  }
  hex(): string {
    return this.#h.digest("hex");
  }
}

/** Collect exactly `n` bytes from `stream` (rejects if it errors or closes first). */
export function readBytes(stream: Duplex, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let got = 0;
    const onData = (c: Buffer) => {
      parts.push(c);
      got += c.length;
      if (got >= n) {
        stream.off("data", onData);
        resolve(Buffer.concat(parts).subarray(0, n));
      }
    };
    stream.on("data", onData);
    stream.once("error", reject);
    stream.once("close", () => reject(new Error(`closed after ${got} of ${n} bytes`)));
  });
}

/** Collect a Node readable stream into one Buffer (bounded by `max`). */
export function readAllNode(stream: Duplex, max = 256 << 20): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let size = 0;
    stream.on("data", (c: Buffer) => {
      size += c.length;
      if (size > max) {
        stream.destroy();
        reject(new Error(`stream exceeded ${max} bytes`));
      } else parts.push(c);
    });
    stream.once("end", () => resolve(Buffer.concat(parts)));
    stream.once("error", reject);
  });
}

/** Resolve when `cluster` has `n` sessions on `app` (bounded by `timeoutMs`). */
export function waitForSessions(
  app: ProxyApp,
  cluster: string,
  n: number,
  timeoutMs = 20_000,
): Promise<void> {
  if (app.registry.sessions(cluster).length === n) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(
        new Error(
          `cluster ${cluster}: ${app.registry.sessions(cluster).length} sessions, want ${n}`,
        ),
      );
    }, timeoutMs);
    const off = app.registry.listen({
      changed: (c, count) => {
        if (c === cluster && count === n) {
          clearTimeout(timer);
          off();
          resolve();
        }
      },
    });
  });
}
