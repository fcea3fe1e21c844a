/**
 * Kubernetes credentials for Deno's `fetch`: a kubeconfig file (or the
 * in-cluster service account when the path is empty) becomes a
 * `Deno.HttpClient` (CA, client certificate) plus per-request headers. The
 * kubeconfig is read by `kubeconfig.ts` and the user's credentials come from
 * `credentials.ts`, Tower's own code: `@kubernetes/client-node` is loaded only
 * for an `auth-provider` user.
 * @module
 */

import { logger } from "../log.ts";
import { type UserCredentials, userCredentials } from "./credentials.ts";
import {
  inClusterConfig,
  type KubeconfigSelection,
  readKubeconfig,
  SERVICE_ACCOUNT_DIR,
} from "./kubeconfig.ts";

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
  /**
   * How long computed auth headers are reused (ms, default 10 000; token files rotate). An
   * exec plugin's credential is asked for again sooner when it expires sooner.
   */
  headerTtlMs?: number;
  /** Prefix for the in-cluster service-account paths (tests). */
  inClusterPathPrefix?: string;
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
  const sel = path === ""
    ? await inClusterConfig({
      serviceAccountDir: opts.inClusterPathPrefix !== undefined
        ? `${opts.inClusterPathPrefix}${SERVICE_ACCOUNT_DIR}`
        : undefined,
    })
    : await readKubeconfig(path, { context: opts.context });
  return await connectionFor(sel, opts);
}

function headerRecord(c: UserCredentials): Record<string, string> {
  const h: Record<string, string> = {};
  if (c.authorization) h.Authorization = c.authorization;
  if (c.impersonate) h["Impersonate-User"] = c.impersonate;
  return h;
}

/** A `Deno.HttpClient` for the cluster's CA and the user's client certificate. */
function httpClientFor(sel: KubeconfigSelection, c: UserCredentials): Deno.HttpClient {
  const clientOpts: Deno.CreateHttpClientOptions & { cert?: string; key?: string } = {};
  if (sel.cluster.caPem) clientOpts.caCerts = [sel.cluster.caPem];
  if (c.certPem && c.keyPem) {
    clientOpts.cert = c.certPem;
    clientOpts.key = c.keyPem;
  }
  try {
    return Deno.createHttpClient(clientOpts);
  } catch (err) {
    throw new Error(
      `${sel.source}: cluster ${sel.cluster.name}: TLS material: ${(err as Error).message}`,
    );
  }
}

/** Turn a selected kubeconfig context into a {@link KubeConnection}. */
async function connectionFor(
  sel: KubeconfigSelection,
  opts: Pick<LoadOptions, "headerTtlMs">,
): Promise<KubeConnection> {
  const { cluster } = sel;
  let url: URL;
  try {
    url = new URL(cluster.server);
  } catch {
    throw new Error(`${sel.source}: cluster ${cluster.name}: invalid server ${cluster.server}`);
  }
  if (cluster.tlsServerName) {
    log.warn("tls-server-name is not supported by Deno fetch; the server URL host is verified", {
      cluster: cluster.name,
    });
  }
  if (cluster.proxyUrl) log.warn("proxy-url is ignored", { cluster: cluster.name });
  const tls = url.protocol === "https:";
  if (!tls && url.protocol !== "http:") {
    throw new Error(
      `${sel.source}: cluster ${cluster.name}: unsupported server URL scheme ${url.protocol}`,
    );
  }
  if (tls && cluster.insecureSkipTlsVerify) {
    throw new Error(
      `${sel.source}: cluster ${cluster.name}: insecure-skip-tls-verify is not supported; ` +
        "set certificate-authority(-data)",
    );
  }
  let creds = await userCredentials(sel);
  let httpClient = tls ? httpClientFor(sel, creds) : undefined;
  /** The client before the last certificate change: requests may still be using it. */
  let previousClient: Deno.HttpClient | undefined;
  const ttl = opts.headerTtlMs ?? 10_000;
  const validUntil = () => Math.min(Date.now() + ttl, creds.expiresAt ?? Infinity);
  let cached = headerRecord(creds);
  let until = validUntil();
  let inflight: Promise<Record<string, string>> | undefined;
  const refresh = async (): Promise<Record<string, string>> => {
    const next = await userCredentials(sel);
    if (tls && (next.certPem !== creds.certPem || next.keyPem !== creds.keyPem)) {
      // An exec plugin issued a new client certificate: new requests use it.
      previousClient?.close();
      previousClient = httpClient;
      httpClient = httpClientFor(sel, next);
    }
    creds = next;
    cached = headerRecord(creds);
    until = validUntil();
    return cached;
  };
  return {
    server: cluster.server,
    namespace: sel.namespace,
    get httpClient(): Deno.HttpClient | undefined {
      return httpClient;
    },
    headers(): Promise<Record<string, string>> {
      if (Date.now() < until) return Promise.resolve({ ...cached });
      inflight ??= refresh().finally(() => inflight = undefined);
      return inflight.then((h) => ({ ...h }));
    },
    close(): void {
      previousClient?.close();
      httpClient?.close();
      previousClient = httpClient = undefined;
    },
  };
}
