/**
 * Builds the agent's `config` from the member cluster's credentials: a
 * kubeconfig file, or in-cluster service-account credentials when no path is
 * given. Called before every connection, so rotated token files and expired
 * exec-plugin credentials are fresh in each session's config.
 *
 * The kubeconfig is read with Tower's own code (`lib/kube/kubeconfig.ts`);
 * `@kubernetes/client-node` is loaded only for an `auth-provider` user.
 * @module
 */

import type { AgentConfig } from "../tunnel/handshake.ts";
import { serviceHostPort } from "../tunnel/handshake.ts";
import { VERSION } from "../version.ts";
import { userCredentials } from "../kube/credentials.ts";
import {
  type KubeconfigSelection,
  readKubeconfig,
  SERVICE_ACCOUNT_DIR,
} from "../kube/kubeconfig.ts";

export { SERVICE_ACCOUNT_DIR };
import { logger } from "../log.ts";

/** Inputs from the agent's flags. */
export interface MemberConfigInput {
  name: string;
  token: string;
  /** Kubeconfig path; empty = in-cluster. */
  kubeconfig: string;
  /** `--kubernetes-service`, used in-cluster when the service env vars are absent. */
  kubernetesService: string;
  /** `--kubesphere-service`. */
  kubesphereService: string;
  /** Service-account directory (tests override). */
  serviceAccountDir?: string;
  /** Environment lookup (tests override). */
  env?: (name: string) => string | undefined;
}

const enc = new TextEncoder();
const log = logger("agent");
/** Warnings already given (the config is built before every connection). */
const warned = new Set<string>();

function warnOnce(msg: string, fields: Record<string, unknown>): void {
  const key = `${msg} ${JSON.stringify(fields)}`;
  if (warned.has(key)) return;
  warned.add(key);
  log.warn(msg, fields);
}

/**
 * Read credentials and produce the config the agent sends.
 * @throws Error with the file or field at fault.
 */
export async function buildAgentConfig(input: MemberConfigInput): Promise<AgentConfig> {
  const base = {
    Version: VERSION,
    Name: input.name,
    Token: input.token,
    KubeSphereSvcHost: serviceHostPort(input.kubesphereService, 80),
  };
  if (input.kubeconfig) {
    return { ...base, ...await fromKubeconfig(await readKubeconfig(input.kubeconfig)) };
  }
  return { ...base, ...await fromServiceAccount(input) };
}

type Member = Pick<
  AgentConfig,
  "KubernetesSvcHost" | "CertData" | "KeyData" | "CAData" | "BearerToken"
>;

/** What the proxy needs of the selected cluster and user (the config has no other fields). */
async function fromKubeconfig(sel: KubeconfigSelection): Promise<Member> {
  const { cluster } = sel;
  let server: URL;
  try {
    server = new URL(cluster.server);
  } catch {
    throw new Error(`${sel.source}: cluster ${cluster.name}: invalid server ${cluster.server}`);
  }
  const fields = { cluster: cluster.name };
  if (server.pathname !== "/") {
    warnOnce("The server URL's path is dropped: the proxy reaches host:port", fields);
  }
  if (cluster.insecureSkipTlsVerify && !cluster.caPem) {
    warnOnce(
      "insecure-skip-tls-verify cannot be passed to the proxy; it verifies the API server " +
        "with the system's roots",
      fields,
    );
  }
  if (cluster.tlsServerName) {
    warnOnce("tls-server-name is not passed to the proxy; it verifies the server's host", fields);
  }
  const creds = await userCredentials(sel);
  if (creds.authorization?.startsWith("Basic ")) {
    warnOnce("Basic authentication cannot be passed to the proxy; none is sent", {
      user: sel.user.name,
    });
  }
  const bytes = (s?: string) => (s ? enc.encode(s) : undefined);
  return {
    KubernetesSvcHost: serviceHostPort(server.host, server.protocol === "http:" ? 80 : 443),
    CAData: bytes(cluster.caPem),
    CertData: bytes(creds.certPem),
    KeyData: bytes(creds.keyPem),
    BearerToken: bytes(creds.bearerToken),
  };
}

async function fromServiceAccount(input: MemberConfigInput): Promise<Member> {
  const env = input.env ?? ((n: string) => Deno.env.get(n));
  const dir = input.serviceAccountDir ?? SERVICE_ACCOUNT_DIR;
  const host = env("KUBERNETES_SERVICE_HOST");
  const port = env("KUBERNETES_SERVICE_PORT");
  const svc = host
    ? serviceHostPort(`${host.includes(":") ? `[${host}]` : host}:${port || "443"}`, 443)
    : serviceHostPort(input.kubernetesService, 443);
  const readSa = async (file: string) => {
    try {
      return await Deno.readFile(`${dir}/${file}`);
    } catch (err) {
      throw new Error(
        `in-cluster credentials: ${dir}/${file}: ${(err as Error).message} ` +
          `(not running in a pod? pass --kubeconfig)`,
      );
    }
  };
  const token = new TextDecoder().decode(await readSa("token")).trim();
  return {
    KubernetesSvcHost: svc,
    CAData: await readSa("ca.crt"),
    BearerToken: enc.encode(token),
  };
}
