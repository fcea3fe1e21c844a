/**
 * Builds the agent's `config` (SPEC §1) from the member cluster's credentials:
 * a kubeconfig file, or in-cluster service-account credentials when no path is
 * given.
 * @module
 */

import { Buffer } from "node:buffer";
import type { AgentConfig } from "../tunnel/handshake.ts";
import { serviceHostPort } from "../tunnel/handshake.ts";
import { VERSION } from "../version.ts";
import { loadClientNode } from "../kube/config.ts";

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

/** Where a pod's service-account credentials are mounted. */
export const SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";
const enc = new TextEncoder();

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
    return { ...base, ...await fromKubeconfig(input.kubeconfig) };
  }
  return { ...base, ...await fromServiceAccount(input) };
}

type Member = Pick<
  AgentConfig,
  "KubernetesSvcHost" | "CertData" | "KeyData" | "CAData" | "BearerToken"
>;

async function fromKubeconfig(path: string): Promise<Member> {
  const kc = new (await loadClientNode()).KubeConfig();
  try {
    kc.loadFromFile(path);
  } catch (err) {
    throw new Error(`kubeconfig ${path}: ${(err as Error).message}`);
  }
  const cluster = kc.getCurrentCluster();
  if (!cluster) throw new Error(`kubeconfig ${path}: no current cluster`);
  let server: URL;
  try {
    server = new URL(cluster.server);
  } catch {
    throw new Error(
      `kubeconfig ${path}: cluster ${cluster.name}: invalid server ${cluster.server}`,
    );
  }
  const user = kc.getCurrentUser();
  const out: Member = {
    KubernetesSvcHost: serviceHostPort(server.host, server.protocol === "http:" ? 80 : 443),
  };
  const read = async (what: string, data?: string, file?: string) => {
    if (data) return new Uint8Array(Buffer.from(data, "base64"));
    if (file) {
      try {
        return await Deno.readFile(file);
      } catch (err) {
        throw new Error(`kubeconfig ${path}: ${what} ${file}: ${(err as Error).message}`);
      }
    }
    return undefined;
  };
  out.CAData = await read("certificate-authority", cluster.caData, cluster.caFile);
  if (user) {
    out.CertData = await read("client-certificate", user.certData, user.certFile);
    out.KeyData = await read("client-key", user.keyData, user.keyFile);
    let token = user.token;
    if (!token && !out.CertData) {
      // exec/auth-provider users: let client-node compute the header.
      const opts: { headers?: Record<string, string> } = { headers: {} };
      try {
        await kc.applyToHTTPSOptions(opts);
      } catch (err) {
        throw new Error(`kubeconfig ${path}: user ${user.name}: ${(err as Error).message}`);
      }
      const auth = (opts.headers ?? {})["Authorization"] ?? (opts.headers ?? {})["authorization"];
      if (auth?.startsWith("Bearer ")) token = auth.slice(7);
    }
    if (token) out.BearerToken = enc.encode(token);
  }
  return out;
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
