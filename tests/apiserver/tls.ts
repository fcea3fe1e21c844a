/**
 * TLS material of the test API server, from `lib/pki`: its CA, a serving
 * certificate for 127.0.0.1/localhost/kubernetes.default.svc, the admin
 * client certificate (CN `kubernetes-admin`, O `system:masters`),
 * client-certificate verification and the admin kubeconfig.
 * @module
 */

import { stringify as toYaml } from "yaml";
import {
  type CA,
  type ClientCertVerdict,
  generateCA,
  issueClientCert,
  issueServingCert,
  type KeyPairPem,
  verifyClientCert,
} from "../../lib/pki/mod.ts";

/** Certificates and keys (PEM) of a server, and its verifier. */
export interface ServerTls {
  /** The CA (signs the serving and client certificates). */
  ca: CA;
  caPem: string;
  servingCertPem: string;
  servingKeyPem: string;
  /** Client certificate CN `kubernetes-admin`, O `system:masters`. */
  adminCertPem: string;
  adminKeyPem: string;
  /** Verify a client certificate (DER) against the CA. */
  verify(der: Uint8Array): Promise<ClientCertVerdict>;
  /** Issue another client certificate signed by the CA. */
  issueClient(commonName: string, organizations: string[]): Promise<KeyPairPem>;
  /** The admin kubeconfig for `url`. */
  kubeconfig(url: string): string;
}

/** Generate the TLS material, with a new CA unless `ca` is given. */
export async function serverTls(ca?: CA): Promise<ServerTls> {
  const authority = ca ?? await generateCA({ commonName: "test-apiserver-ca" });
  const serving = await issueServingCert(authority, {
    commonName: "kube-apiserver",
    dnsNames: [
      "localhost",
      "kubernetes",
      "kubernetes.default",
      "kubernetes.default.svc",
      "kubernetes.default.svc.cluster.local",
    ],
    ipAddresses: ["127.0.0.1", "10.96.0.1"],
  });
  const admin = await issueClientCert(authority, {
    commonName: "kubernetes-admin",
    organizations: ["system:masters"],
  });
  return {
    ca: authority,
    caPem: authority.certPem,
    servingCertPem: serving.certPem,
    servingKeyPem: serving.keyPem,
    adminCertPem: admin.certPem,
    adminKeyPem: admin.keyPem,
    verify: (der) => verifyClientCert(authority, der),
    issueClient: (commonName, organizations) =>
      issueClientCert(authority, { commonName, organizations }),
    kubeconfig: (url) => adminKubeconfig(url, authority.certPem, admin.certPem, admin.keyPem),
  };
}

/** A kubeconfig with one cluster/user/context named `test-apiserver`. */
export function adminKubeconfig(
  url: string,
  caPem: string,
  certPem: string,
  keyPem: string,
): string {
  return userKubeconfig(url, caPem, "kubernetes-admin", { certPem, keyPem });
}

/** How a kubeconfig user authenticates: a client certificate or a bearer token. */
export type KubeconfigCredentials = { certPem: string; keyPem: string } | { token: string };

/**
 * A kubeconfig with cluster and context `test-apiserver` and one user named
 * `userName` authenticating with `credentials`.
 */
export function userKubeconfig(
  url: string,
  caPem: string,
  userName: string,
  credentials: KubeconfigCredentials,
): string {
  const user = "token" in credentials ? { token: credentials.token } : {
    "client-certificate-data": btoa(credentials.certPem),
    "client-key-data": btoa(credentials.keyPem),
  };
  return toYaml({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{
      name: "test-apiserver",
      cluster: { server: url, "certificate-authority-data": btoa(caPem) },
    }],
    users: [{ name: userName, user }],
    contexts: [{
      name: "test-apiserver",
      context: { cluster: "test-apiserver", user: userName },
    }],
    "current-context": "test-apiserver",
    preferences: {},
  });
}
