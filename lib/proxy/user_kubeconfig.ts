/**
 * `proxy kubeconfig CLUSTER --user U [--group G]…`: a kubeconfig for one person on one member
 * cluster. Its client certificate (CN = user, O = groups) is bound to the cluster and the
 * current generation of its credentials with role `user` (`lib/pki/binding.ts`), so the proxy
 * forwards its requests impersonating that user and those groups: the member's own RBAC then
 * decides what the person may do (the agent's identity needs the `impersonate` verb). It is
 * valid for a bounded time and refused from the moment the cluster's credentials rotate.
 * Minting takes Tower's CA key: whoever may read it is, in effect, admin of every member.
 * @module
 */

import { parse } from "yaml";
import { readCA } from "../controller/persist.ts";
import { TOWER_NAMESPACE } from "../controller/types.ts";
import type { KubeClient } from "../kube/client.ts";
import { CLUSTERS, type KubeObject } from "../kube/types.ts";
import { bindingUri, type CA, credentialEpoch, issueClientCert } from "../pki/mod.ts";
import { IDENTITY_NAME } from "./client_access.ts";
import { CREDENTIAL_GENERATION_ANNOTATION } from "./clusters.ts";
import { parseClustersFile } from "./clusters_file.ts";
import { renderKubeconfig } from "./kubeconfig.ts";

/** Default validity of a user kubeconfig. */
export const DEFAULT_USER_VALIDITY_MS = 24 * 3600_000;

/** What a user kubeconfig is made from. */
export interface UserKubeconfigInput {
  ca: CA;
  cluster: string;
  /** The cluster's agent token and credential generation (they make the binding). */
  token: string;
  generation: string;
  /** `https://host:port` of the cluster's kubernetes endpoint. */
  server: string;
  user: string;
  groups: string[];
  validityMs: number;
}

/**
 * The kubeconfig for `input.user`.
 * @throws Error for a user or group name that cannot be impersonated.
 */
export async function mintUserKubeconfig(input: UserKubeconfigInput): Promise<string> {
  for (const [what, v] of [["user", input.user], ...input.groups.map((g) => ["group", g])]) {
    if (!IDENTITY_NAME.test(v)) {
      throw new Error(`${what} ${JSON.stringify(v)}: want 1–256 printable ASCII characters`);
    }
  }
  const epoch = credentialEpoch(input.ca, {
    cluster: input.cluster,
    token: input.token,
    generation: input.generation,
  });
  const cert = await issueClientCert(input.ca, {
    commonName: input.user,
    organizations: input.groups,
    uris: [bindingUri({ cluster: input.cluster, epoch, role: "user" })],
    validMs: input.validityMs,
  });
  return renderKubeconfig({
    cluster: input.cluster,
    user: input.user,
    server: input.server,
    caPem: input.ca.certPem,
    certPem: cert.certPem,
    keyPem: cert.keyPem,
  });
}

/** The cluster facts a user kubeconfig needs. */
export type ClusterFacts = Omit<UserKubeconfigInput, "user" | "groups" | "validityMs">;

type ClusterObject = KubeObject & {
  spec?: { connection?: { token?: string; kubernetesAPIEndpoint?: string } };
};

/** Kubernetes mode: the Cluster object, and the CA from `ca` or the proxy's Secret. */
export async function clusterFactsFromApi(
  client: KubeClient,
  cluster: string,
  ca?: CA,
  namespace = TOWER_NAMESPACE,
): Promise<ClusterFacts> {
  const obj = await client.tryGet<ClusterObject>(CLUSTERS, cluster);
  if (!obj) throw new Error(`cluster ${cluster}: no such Cluster object`);
  const conn = obj.spec?.connection ?? {};
  if (!conn.token) throw new Error(`cluster ${cluster}: no token yet (is the proxy running?)`);
  if (!conn.kubernetesAPIEndpoint) {
    throw new Error(`cluster ${cluster}: no kubernetesAPIEndpoint yet (is the proxy running?)`);
  }
  return {
    ca: ca ?? await readCA(client, namespace),
    cluster,
    token: conn.token,
    generation: obj.metadata.annotations?.[CREDENTIAL_GENERATION_ANNOTATION] ?? "",
    server: conn.kubernetesAPIEndpoint,
  };
}

/**
 * Standalone mode: the cluster's entry in the clusters file, and its endpoint from the admin
 * kubeconfig the proxy wrote into `kubeconfigDir` (ports may have been allocated at run time).
 */
export async function clusterFactsFromFile(
  clustersFile: string,
  kubeconfigDir: string,
  cluster: string,
  ca: CA,
): Promise<ClusterFacts> {
  const entry = parseClustersFile(await Deno.readTextFile(clustersFile), clustersFile)
    .find((e) => e.name === cluster);
  if (!entry) throw new Error(`cluster ${cluster}: not in ${clustersFile}`);
  const adminPath = `${kubeconfigDir}/${cluster}.kubeconfig`;
  let server: string | undefined;
  try {
    const kc = parse(await Deno.readTextFile(adminPath)) as {
      clusters?: { cluster?: { server?: string } }[];
    };
    server = kc?.clusters?.[0]?.cluster?.server;
  } catch (err) {
    throw new Error(
      `cluster ${cluster}: ${adminPath}: ${(err as Error).message} (has an agent connected yet?)`,
    );
  }
  if (!server) throw new Error(`cluster ${cluster}: ${adminPath} names no server`);
  return {
    ca,
    cluster,
    token: entry.token,
    generation: entry.credentialGeneration ?? "",
    server,
  };
}
