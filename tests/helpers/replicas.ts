/**
 * Kubernetes' routing, played by the test for proxy replicas on loopback
 * addresses: a TCP load balancer in front of the replicas' agent ports (the
 * agent Service: each new connection goes to the next replica that accepts
 * it), and a kube-proxy-like client that resolves `mc-<name>` through the
 * EndpointSlices it watches (ready endpoints, the port by name) and sends each
 * request on a new connection to one of them, round-robin.
 * @module
 */

import type { TestApiServer } from "../apiserver/server.ts";
import { httpClient, watchEvents } from "../apiserver/testing.ts";
import { startTcpServer, type TcpServer, writeAll } from "./tunnel.ts";

/** A TCP load balancer over `backends` (host, port), skipping those that refuse. */
export interface LoadBalancer {
  port: number;
  server: TcpServer;
  close(): Promise<void>;
}

/**
 * Start a load balancer on 127.0.0.1 over `backends()` (read at each connection). A backend with
 * a `ready` URL takes connections only while that answers 200, as a Service sends only to ready
 * pods.
 */
export function startLoadBalancer(
  backends: () => { hostname: string; port: number; ready?: string }[],
): LoadBalancer {
  let next = 0;
  const pump = async (from: Deno.Conn, to: Deno.Conn) => {
    const buf = new Uint8Array(64 * 1024);
    try {
      for (;;) {
        const n = await from.read(buf);
        if (n === null) break;
        await writeAll(to, buf.subarray(0, n));
      }
      await to.closeWrite();
    } catch {
      // the other side went away
      try {
        to.close();
      } catch {
        // closed
      }
    }
  };
  const server = startTcpServer(async (conn) => {
    const list = backends();
    let up: Deno.Conn | undefined;
    for (let i = 0; i < list.length && !up; i++) {
      const b = list[(next++) % list.length];
      if (b.ready) {
        const ok = await fetch(b.ready).then(async (r) => {
          await r.body?.cancel();
          return r.ok;
        }, () => false);
        if (!ok) continue;
      }
      up = await Deno.connect({ hostname: b.hostname, port: b.port }).catch(() => undefined);
    }
    if (!up) return; // no replica takes agents: the agent retries
    try {
      await Promise.all([pump(conn, up), pump(up, conn)]);
    } finally {
      try {
        up.close();
      } catch {
        // closed
      }
    }
  });
  return { port: server.port, server, close: () => server.close() };
}

/** A ready endpoint of a Service, as kube-proxy programs it. */
export interface Backend {
  address: string;
  /** Port by name. */
  ports: Record<string, number>;
  /** The slice it came from (tests: which replica). */
  slice: string;
}

interface SliceJson {
  metadata: { name: string; labels?: Record<string, string> };
  endpoints: { addresses: string[]; conditions?: { ready?: boolean } }[] | null;
  ports: { name?: string; port?: number }[] | null;
}

/** Resolves `mc-<name>` Services through the EndpointSlices in `namespace`, kept by a watch. */
export class SliceResolver {
  readonly #slices = new Map<string, SliceJson>();
  readonly #ac = new AbortController();
  readonly #client: Deno.HttpClient;
  #rr = new Map<string, number>();
  #changed: (() => void)[] = [];
  readonly ready: Promise<void>;

  constructor(server: TestApiServer, namespace = "kubesphere-system") {
    this.#client = httpClient(server, "admin");
    const synced = Promise.withResolvers<void>();
    this.ready = synced.promise;
    const client = this.#client;
    (async () => {
      const res = await fetch(
        `${server.url}/apis/discovery.k8s.io/v1/namespaces/${namespace}/endpointslices?watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan`,
        { client, signal: this.#ac.signal },
      );
      for await (const e of watchEvents(res.body!)) {
        const s = e.object as unknown as SliceJson;
        if (e.type === "BOOKMARK") {
          synced.resolve();
          continue;
        }
        if (e.type === "DELETED") this.#slices.delete(s.metadata.name);
        else this.#slices.set(s.metadata.name, s);
        for (const f of this.#changed.splice(0)) f();
      }
    })().catch(() => {});
  }

  /** Ready backends of Service `service`. */
  backends(service: string): Backend[] {
    const out: Backend[] = [];
    for (const s of this.#slices.values()) {
      if (s.metadata.labels?.["kubernetes.io/service-name"] !== service) continue;
      const ports: Record<string, number> = {};
      for (const p of s.ports ?? []) if (p.port) ports[p.name ?? ""] = p.port;
      for (const e of s.endpoints ?? []) {
        if (e.conditions?.ready === false) continue;
        for (const a of e.addresses) out.push({ address: a, ports, slice: s.metadata.name });
      }
    }
    return out.sort((a, b) => a.slice.localeCompare(b.slice));
  }

  /** The next backend of `service`, round-robin (undefined: none, like a Service with no endpoints). */
  pick(service: string): Backend | undefined {
    const list = this.backends(service);
    if (list.length === 0) return undefined;
    const i = this.#rr.get(service) ?? 0;
    this.#rr.set(service, i + 1);
    return list[i % list.length];
  }

  /** Resolve once `ok()` holds, re-checked after every slice event (bounded by `ms`). */
  async until(ok: () => boolean, what: string, ms = 60_000): Promise<void> {
    const end = Date.now() + ms;
    while (!ok()) {
      if (Date.now() > end) throw new Error(`slices: still not ${what} after ${ms} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.max(0, end - Date.now()));
        this.#changed.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  close(): void {
    this.#ac.abort();
    this.#client.close();
  }
}

/** The answer of one request. */
export interface Answer {
  ok: boolean;
  status?: number;
  body?: string;
  error?: string;
  backend?: Backend;
}

/**
 * One plain HTTP GET to `service`'s port `portName` through `resolver`, on a new connection (as
 * a connection through kube-proxy picks its backend when it opens).
 */
export async function getThrough(
  resolver: SliceResolver,
  service: string,
  portName: string,
  path = "/",
  timeoutMs = 10_000,
): Promise<Answer> {
  const backend = resolver.pick(service);
  if (!backend) return { ok: false, error: "no endpoints" };
  const port = backend.ports[portName];
  let conn: Deno.TcpConn | undefined;
  const timer = setTimeout(() => conn?.close(), timeoutMs);
  try {
    conn = await Deno.connect({ hostname: backend.address, port });
    await writeAll(
      conn,
      new TextEncoder().encode(
        `GET ${path} HTTP/1.1\r\nHost: ${service}\r\nConnection: close\r\n\r\n`,
      ),
    );
    const chunks: Uint8Array[] = [];
    const buf = new Uint8Array(16 * 1024);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      chunks.push(buf.slice(0, n));
    }
    const text = new TextDecoder().decode(
      chunks.reduce((a, b) => {
        const c = new Uint8Array(a.length + b.length);
        c.set(a);
        c.set(b, a.length);
        return c;
      }, new Uint8Array()),
    );
    const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0);
    const body = text.slice(text.indexOf("\r\n\r\n") + 4);
    return { ok: status === 200, status, body, backend };
  } catch (err) {
    return { ok: false, error: (err as Error).message, backend };
  } finally {
    clearTimeout(timer);
    try {
      conn?.close();
    } catch {
      // closed
    }
  }
}
