/**
 * Kubeconfigs Tower hands out for a member cluster: server = the cluster's
 * kubernetes endpoint on the proxy, CA = Tower's CA, and a client certificate
 * signed by Tower's CA and bound to the cluster (`lib/pki/binding.ts`): CN
 * `kubernetes-admin`, O `system:masters` for the admin kubeconfig Tower keeps
 * in the Cluster, or a user's name and groups for one minted for a person.
 * @module
 */

import { Buffer } from "node:buffer";
import { parse, stringify } from "yaml";
import { type CA, verifyClientCert } from "../pki/mod.ts";

/** The user name of the admin kubeconfig (its certificate's CN). */
export const ADMIN_USER = "kubernetes-admin";

/** What goes into a member kubeconfig. */
export interface MemberKubeconfigInput {
  cluster: string;
  /** The kubeconfig's user entry (default {@link ADMIN_USER}). */
  user?: string;
  /** `https://host:port` of the cluster's kubernetes endpoint. */
  server: string;
  caPem: string;
  certPem: string;
  keyPem: string;
}

/** Render the kubeconfig YAML. */
export function renderKubeconfig(input: MemberKubeconfigInput): string {
  const b64 = (s: string) => Buffer.from(s, "utf8").toString("base64");
  const user = input.user ?? ADMIN_USER;
  return stringify({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{
      name: input.cluster,
      cluster: { server: input.server, "certificate-authority-data": b64(input.caPem) },
    }],
    users: [{
      name: user,
      user: {
        "client-certificate-data": b64(input.certPem),
        "client-key-data": b64(input.keyPem),
      },
    }],
    contexts: [{
      name: `${user}@${input.cluster}`,
      context: { cluster: input.cluster, user },
    }],
    "current-context": `${user}@${input.cluster}`,
    preferences: {},
  });
}

/** What {@link kubeconfigStillValid} checks a kubeconfig against. */
export interface KubeconfigExpectation {
  /** The endpoint it must point at. */
  server: string;
  /** The CA that must have signed its client certificate. */
  ca: CA;
  /** The binding URI its certificate must carry. */
  binding: string;
  /** How long its certificate must stay valid from now. */
  minValidMs: number;
}

/**
 * Whether `yaml` is a kubeconfig for `want.server` whose client certificate `want.ca` signed,
 * carries `want.binding`, and is valid for at least `want.minValidMs` more.
 */
export async function kubeconfigStillValid(
  yaml: string,
  want: KubeconfigExpectation,
): Promise<boolean> {
  try {
    const kc = parse(yaml) as {
      clusters?: { cluster?: { server?: string } }[];
      users?: { user?: { "client-certificate-data"?: string } }[];
    };
    if (kc?.clusters?.[0]?.cluster?.server !== want.server) return false;
    const certB64 = kc.users?.[0]?.user?.["client-certificate-data"];
    if (!certB64) return false;
    const certPem = Buffer.from(certB64, "base64").toString("utf8");
    const later = new Date(Date.now() + want.minValidMs);
    const verdict = await verifyClientCert(want.ca, certPem, later);
    return verdict.ok && verdict.uris.includes(want.binding);
  } catch {
    // Not a kubeconfig we can read (hand-edited, truncated): not valid, so a fresh one is issued.
    return false;
  }
}
