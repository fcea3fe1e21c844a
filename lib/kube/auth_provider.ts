/**
 * `users[].user.auth-provider` (gcp, azure, oidc): the one kind of kubeconfig
 * user for which `@kubernetes/client-node` is still loaded, on first use only.
 *
 * Why not ours: these providers are deprecated (kubectl dropped gcp and azure
 * in 1.26 for exec plugins), each has its own refresh protocol (a command
 * with JSONPath keys, or an OIDC refresh-token grant), and a process that
 * never meets one never pays client-node's ~60 MiB. client-node computes the
 * `Authorization` header; its `KubeConfig` is kept per user so a refreshed
 * token is reused until it expires, as before.
 * @module
 */

import type { KubeConfig } from "@kubernetes/client-node";
import type { KubeconfigSelection } from "./kubeconfig.ts";

/**
 * `@kubernetes/client-node`, loaded on first use. A literal specifier keeps it in the static
 * module graph that `deno compile` bundles.
 */
export function loadClientNode(): Promise<typeof import("@kubernetes/client-node")> {
  return import("@kubernetes/client-node");
}

const configs = new Map<string, KubeConfig>();

/**
 * The `Authorization` header value client-node computes for the selected user's auth
 * provider (undefined when it computes none).
 */
export async function authProviderHeader(sel: KubeconfigSelection): Promise<string | undefined> {
  const provider = sel.user.authProvider;
  if (!provider) return undefined;
  const key = JSON.stringify([sel.path ?? sel.source, sel.user.name, provider]);
  let kc = configs.get(key);
  if (!kc) {
    kc = new (await loadClientNode()).KubeConfig();
    kc.loadFromOptions({
      // client-node refuses plain http unless TLS verification is off; it only builds an
      // agent here, which is not used.
      clusters: [{
        name: sel.cluster.name,
        server: sel.cluster.server,
        skipTLSVerify: sel.cluster.server.startsWith("http:"),
      }],
      users: [{ name: sel.user.name, authProvider: structuredClone(provider) }],
      contexts: [{ name: "tower", cluster: sel.cluster.name, user: sel.user.name }],
      currentContext: "tower",
    });
    configs.set(key, kc);
  }
  const opts: { headers: Record<string, string | string[] | undefined> } = { headers: {} };
  try {
    await kc.applyToHTTPSOptions(opts);
  } catch (err) {
    throw new Error(
      `user ${sel.user.name}: auth-provider ${provider.name}: ${(err as Error).message}`,
    );
  }
  const v = opts.headers.Authorization ?? opts.headers.authorization;
  return Array.isArray(v) ? v[0] : v;
}
