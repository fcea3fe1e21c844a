/**
 * Kubeconfigs Tower hands out for a member cluster: server = the cluster's
 * kubernetes endpoint on the proxy, CA = Tower's CA, and a client certificate
 * (CN `kubernetes-admin`, O `system:masters`) signed by Tower's CA.
 * @module
 */

import { Buffer } from "node:buffer";
import { parse, stringify } from "yaml";
import { type CA, verifyClientCert } from "../pki/mod.ts";

/** What goes into a member kubeconfig. */
export interface MemberKubeconfigInput {
  cluster: string;
  /** `https://host:port` of the cluster's kubernetes endpoint. */
  server: string;
  caPem: string;
  certPem: string;
  keyPem: string;
}

/** Render the kubeconfig YAML. */
export function renderKubeconfig(input: MemberKubeconfigInput): string {
  const b64 = (s: string) => Buffer.from(s, "utf8").toString("base64");
  return stringify({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{
      name: input.cluster,
      cluster: { server: input.server, "certificate-authority-data": b64(input.caPem) },
    }],
    users: [{
      name: "kubernetes-admin",
      user: {
        "client-certificate-data": b64(input.certPem),
        "client-key-data": b64(input.keyPem),
      },
    }],
    contexts: [{
      name: `kubernetes-admin@${input.cluster}`,
      context: { cluster: input.cluster, user: "kubernetes-admin" },
    }],
    "current-context": `kubernetes-admin@${input.cluster}`,
    preferences: {},
  });
}

/**
 * Whether `yaml` is a kubeconfig this CA issued for `server` whose client
 * certificate is valid for at least `minValidMs` more (default 30 days).
 */
export async function kubeconfigStillValid(
  yaml: string,
  server: string,
  ca: CA,
  minValidMs = 30 * 24 * 3600 * 1000,
): Promise<boolean> {
  try {
    const kc = parse(yaml) as {
      clusters?: { cluster?: { server?: string } }[];
      users?: { user?: { "client-certificate-data"?: string } }[];
    };
    if (kc?.clusters?.[0]?.cluster?.server !== server) return false;
    const certB64 = kc.users?.[0]?.user?.["client-certificate-data"];
    if (!certB64) return false;
    const certPem = Buffer.from(certB64, "base64").toString("utf8");
    const verdict = await verifyClientCert(ca, certPem, new Date(Date.now() + minValidMs));
    return verdict.ok;
  } catch {
    return false;
  }
}
