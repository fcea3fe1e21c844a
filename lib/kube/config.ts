/**
 * Kubernetes credentials for Deno's `fetch`: a kubeconfig file (or the
 * in-cluster service account when the path is empty) is loaded with
 * `@kubernetes/client-node`'s `KubeConfig`, whose authenticators (client
 * certificates, static and file tokens, exec plugins, basic auth) fill in TLS
 * material and headers; those become a `Deno.HttpClient` plus per-request
 * headers.
 * @module
 */

import type { KubeConfig } from "@kubernetes/client-node";
import type { RequestOptions } from "node:https";
import { Buffer } from "node:buffer";
import { logger } from "../log.ts";

/**
 * `@kubernetes/client-node`, loaded on first use: it costs ~80 MiB of resident memory, which a
 * proxy on a clusters file (no Kubernetes at all) should not pay. A literal specifier keeps it in
 * the static module graph that `deno compile` bundles.
 */
export function loadClientNode(): Promise<typeof import("@kubernetes/client-node")> {
  return import("@kubernetes/client-node");
}

const log = logger("kube/config");

/** How to reach one API server: base URL, HTTP client and auth headers. */
export interface KubeConnection {
  /** Base URL without a trailing slash, e.g. `https://10.0.0.1:6443`. */
  readonly server: string;
  /** Default namespace of the kubeconfig context (`default` when unset). */
  readonly namespace: string;
  /** The HTTP client carrying CA and client certificate (undefined for plain http). */
  readonly httpClient?: Deno.HttpClient;
  /** Headers to send on every request (Authorization, impersonation); refreshed as needed. */
  headers(): Promise<Record<string, string>>;
  /** Release the HTTP client. */
  close(): void;
}

/** Options of {@link loadKubeConnection}. */
export interface LoadOptions {
  /** Context to use instead of the kubeconfig's current context. */
  context?: string;
  /** How long computed auth headers are reused (ms, default 10 000; tokens files rotate). */
  headerTtlMs?: number;
  /** Prefix for the in-cluster service-account paths (tests). */
  inClusterPathPrefix?: string;
}

type Material = string | Buffer | (string | Buffer)[] | undefined;

function toPem(m: Material): string | undefined {
  if (m === undefined) return undefined;
  const parts = Array.isArray(m) ? m : [m];
  const text = parts.map((p) => typeof p === "string" ? p : p.toString("utf8")).join("\n");
  return text.trim() === "" ? undefined : text;
}

function headerRecord(h: RequestOptions["headers"]): Record<string, string> {
  const out: Record<string, string> = {};
  if (!h || Array.isArray(h)) return out;
  for (const [k, v] of Object.entries(h)) {
    if (v === undefined) continue;
    out[k] = (Array.isArray(v) ? v.join(", ") : String(v)).trim();
  }
  return out;
}

/**
 * Load credentials from a kubeconfig file, or from the pod's service account
 * when `path` is empty. Throws with context when the file, context, cluster or
 * credentials are unusable (including `insecure-skip-tls-verify`, which Deno's
 * fetch cannot honour).
 */
export async function loadKubeConnection(
  path: string,
  opts: LoadOptions = {},
): Promise<KubeConnection> {
  const kc = new (await loadClientNode()).KubeConfig();
  const where = path === "" ? "in-cluster config" : `kubeconfig ${path}`;
  try {
    if (path === "") {
      if (!Deno.env.get("KUBERNETES_SERVICE_HOST") || !Deno.env.get("KUBERNETES_SERVICE_PORT")) {
        throw new Error(
          "KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set (not running in a pod?)",
        );
      }
      kc.loadFromCluster(opts.inClusterPathPrefix);
    } else {
      kc.loadFromFile(path);
    }
    if (opts.context) kc.setCurrentContext(opts.context);
  } catch (err) {
    throw new Error(`${where}: ${(err as Error).message}`);
  }
  try {
    return await connectionFromKubeConfig(kc, opts);
  } catch (err) {
    throw new Error(`${where}: ${(err as Error).message}`);
  }
}

/** Turn an already loaded `KubeConfig` into a {@link KubeConnection}. */
export async function connectionFromKubeConfig(
  kc: KubeConfig,
  opts: Pick<LoadOptions, "headerTtlMs"> = {},
): Promise<KubeConnection> {
  const cluster = kc.getCurrentCluster();
  if (!cluster) throw new Error(`context ${JSON.stringify(kc.getCurrentContext())}: no cluster`);
  if (!cluster.server) throw new Error(`cluster ${cluster.name}: no server URL`);
  const server = cluster.server.replace(/\/+$/, "");
  const url = new URL(server);
  const ctx = kc.getContextObject(kc.getCurrentContext());
  const namespace = ctx?.namespace || "default";

  const probe: RequestOptions = { headers: {} };
  await kc.applyToHTTPSOptions(probe);
  if (cluster.tlsServerName) {
    log.warn("tls-server-name is not supported by Deno fetch; the server URL host is verified", {
      cluster: cluster.name,
    });
  }
  if (cluster.proxyUrl) {
    log.warn("proxy-url is ignored", { cluster: cluster.name });
  }

  let httpClient: Deno.HttpClient | undefined;
  if (url.protocol === "https:") {
    if (probe.rejectUnauthorized === false) {
      throw new Error(
        `cluster ${cluster.name}: insecure-skip-tls-verify is not supported; set certificate-authority(-data)`,
      );
    }
    const ca = toPem(probe.ca as Material);
    const cert = toPem(probe.cert as Material);
    const key = toPem(probe.key as Material);
    if ((cert === undefined) !== (key === undefined)) {
      throw new Error(
        `user ${kc.getCurrentUser()?.name}: client certificate without key or key without certificate`,
      );
    }
    const clientOpts: Deno.CreateHttpClientOptions & { cert?: string; key?: string } = {};
    if (ca) clientOpts.caCerts = [ca];
    if (cert && key) {
      clientOpts.cert = cert;
      clientOpts.key = key;
    }
    try {
      httpClient = Deno.createHttpClient(clientOpts);
    } catch (err) {
      throw new Error(`cluster ${cluster.name}: TLS material: ${(err as Error).message}`);
    }
  } else if (url.protocol !== "http:") {
    throw new Error(`cluster ${cluster.name}: unsupported server URL scheme ${url.protocol}`);
  }

  const ttl = opts.headerTtlMs ?? 10_000;
  const basic = (o: RequestOptions): Record<string, string> => {
    const h = headerRecord(o.headers);
    if (o.auth && !h.Authorization && !h.authorization) {
      h.Authorization = `Basic ${Buffer.from(o.auth).toString("base64")}`;
    }
    return h;
  };
  let cached = basic(probe);
  let cachedAt = Date.now();
  let inflight: Promise<Record<string, string>> | undefined;
  const refresh = async (): Promise<Record<string, string>> => {
    const o: RequestOptions = { headers: {} };
    await kc.applyToHTTPSOptions(o);
    cached = basic(o);
    cachedAt = Date.now();
    return cached;
  };
  return {
    server,
    namespace,
    get httpClient(): Deno.HttpClient | undefined {
      return httpClient;
    },
    headers(): Promise<Record<string, string>> {
      if (Date.now() - cachedAt < ttl) return Promise.resolve({ ...cached });
      inflight ??= refresh().finally(() => inflight = undefined);
      return inflight.then((h) => ({ ...h }));
    },
    close(): void {
      httpClient?.close();
      httpClient = undefined;
    },
  };
}
