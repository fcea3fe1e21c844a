/**
 * Kubeconfigs Tower hands out for a member cluster: server = the cluster's
 * kubernetes endpoint on the proxy, CA = Tower's CA, and a client certificate
 * (CN `kubernetes-admin`, O `system:masters`) signed by Tower's CA.
 * @module
 */

import { Buffer } from "node:buffer";
import { stringify } from "yaml";

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
