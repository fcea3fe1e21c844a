/**
 * The agent's host-key policy from its flags: `--proxy-fingerprint` or
 * `--proxy-fingerprint-file` pin; `--insecure-accept-any-proxy-key` turns the
 * check off (for Go proxies, which make a new key at every start); otherwise
 * trust on first use, recorded in `--known-proxy-file`, or — in a pod (no
 * `--kubeconfig`) — in the Secret `--known-proxy-secret` of the agent's own
 * namespace, else in the default file (`known_proxies.ts`).
 * @module
 */

import { FlagError } from "../cli.ts";
import type { KubeConnection } from "../kube/config.ts";
import { defaultKnownProxyFile, FileKnownProxies, FINGERPRINT_RE } from "./known_proxies.ts";
import { SecretKnownProxies } from "./known_proxies_secret.ts";
import { ProxyTrust } from "./proxy_trust.ts";

/** The placeholder `deploy/agent` ships in the Secret's `proxy-fingerprint`. */
const FINGERPRINT_PLACEHOLDER = "REPLACE-WITH-THE-PROXY-FINGERPRINT";

/** The flags that decide the policy. */
export interface TrustFlags {
  proxyFingerprint?: string;
  proxyFingerprintFile?: string;
  insecureAcceptAny?: boolean;
  knownProxyFile?: string;
  knownProxySecret: string;
  /** `--kubeconfig` given: not running on the pod's own service account. */
  kubeconfig: string;
  /** The pod's service-account directory (its `namespace` file names the Secret's namespace). */
  serviceAccountDir: string;
  /** A connection to this cluster with the pod's credentials (Secret store only). */
  connect: () => Promise<KubeConnection>;
  env?: (name: string) => string | undefined;
}

/**
 * Decide the policy.
 * @throws FlagError for contradictory flags or an unusable fingerprint file.
 */
export async function proxyTrustFromFlags(f: TrustFlags): Promise<ProxyTrust> {
  const pins = [f.proxyFingerprint, f.proxyFingerprintFile].filter((x) => x !== undefined);
  if (pins.length > 1) {
    throw new FlagError("give --proxy-fingerprint or --proxy-fingerprint-file, not both");
  }
  if (pins.length && f.insecureAcceptAny) {
    throw new FlagError("--insecure-accept-any-proxy-key contradicts a pinned fingerprint");
  }
  if (f.proxyFingerprint) return new ProxyTrust({ kind: "pin", fingerprint: f.proxyFingerprint });
  if (f.proxyFingerprintFile) {
    const fingerprint = await readFingerprintFile(f.proxyFingerprintFile);
    return new ProxyTrust({ kind: "pin", fingerprint });
  }
  if (f.insecureAcceptAny) return new ProxyTrust({ kind: "any" });
  const env = f.env ?? ((n: string) => Deno.env.get(n));
  if (f.knownProxyFile) {
    return new ProxyTrust({ kind: "tofu", store: new FileKnownProxies(f.knownProxyFile) });
  }
  if (!f.kubeconfig) {
    const namespace = await podNamespace(f.serviceAccountDir);
    const store = new SecretKnownProxies({
      namespace,
      name: f.knownProxySecret,
      connect: f.connect,
    });
    return new ProxyTrust({ kind: "tofu", store });
  }
  let path: string;
  try {
    path = defaultKnownProxyFile(env);
  } catch (err) {
    throw new FlagError((err as Error).message);
  }
  return new ProxyTrust({ kind: "tofu", store: new FileKnownProxies(path) });
}

/** Read a pinned fingerprint from a file (a mounted Secret key), refusing the placeholder. */
async function readFingerprintFile(path: string): Promise<string> {
  let text: string;
  try {
    text = (await Deno.readTextFile(path)).trim();
  } catch (err) {
    throw new FlagError(`--proxy-fingerprint-file ${path}: ${(err as Error).message}`);
  }
  if (text === FINGERPRINT_PLACEHOLDER) {
    throw new FlagError(
      `--proxy-fingerprint-file ${path} still holds the placeholder ${FINGERPRINT_PLACEHOLDER}: ` +
        "put the proxy's host key fingerprint there (the proxy logs it at start as " +
        '`SSH host key fingerprint="SHA256:…"`; `proxy join` fills it in)',
    );
  }
  if (!FINGERPRINT_RE.test(text)) {
    throw new FlagError(
      `--proxy-fingerprint-file ${path}: want SHA256:<43 base64 chars>, as the proxy logs it`,
    );
  }
  return text;
}

/** The pod's namespace, from the service-account directory. */
async function podNamespace(dir: string): Promise<string> {
  try {
    const ns = (await Deno.readTextFile(`${dir}/namespace`)).trim();
    if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(ns)) throw new Error("not a namespace name");
    return ns;
  } catch (err) {
    throw new FlagError(
      `in a pod the proxy host key is recorded in a Secret of the agent's namespace, but ` +
        `${dir}/namespace: ${(err as Error).message} (outside a pod pass --kubeconfig, ` +
        `--known-proxy-file or --proxy-fingerprint)`,
    );
  }
}
