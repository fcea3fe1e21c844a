/**
 * `proxy join <cluster>`: what a member cluster needs to connect, with the
 * cluster's token filled in — the agent manifest (the same objects as
 * `deploy/agent`) or the one-line agent command.
 * @module
 */

import { Buffer } from "node:buffer";
import { stringify } from "yaml";
import { HOST_KEY_SECRET } from "../controller/persist.ts";
import { TOWER_NAMESPACE } from "../controller/types.ts";
import type { KubeClient } from "../kube/client.ts";
import { CLUSTERS, type KubeObject, SECRETS } from "../kube/types.ts";
import { parseHostKey } from "../tunnel/hostkey.ts";

/** What the join output is made of. */
export interface JoinInput {
  cluster: string;
  token: string;
  /** URL agents dial (`--proxy-server`). */
  proxyServer: string;
  /** `SHA256:…` of the proxy host key, pinned when known. */
  fingerprint?: string;
  image?: string;
  namespace?: string;
}

const LABELS = { "app.kubernetes.io/part-of": "tower" };
const AGENT_LABELS = { app: "tower-agent", "app.kubernetes.io/name": "tower-agent" };

/** The agent's Kubernetes objects (as `deploy/agent` renders them) for one cluster. */
export function joinObjects(input: JoinInput): Record<string, unknown>[] {
  const ns = input.namespace ?? "kubesphere-system";
  const args = [
    `--name=${input.cluster}`,
    `--proxy-server=${input.proxyServer}`,
    "--token-file=/etc/tower/token",
    "--metrics-address=:9090",
  ];
  if (input.fingerprint) args.push(`--proxy-fingerprint=${input.fingerprint}`);
  return [
    { apiVersion: "v1", kind: "Namespace", metadata: { labels: LABELS, name: ns } },
    {
      apiVersion: "v1",
      automountServiceAccountToken: true,
      kind: "ServiceAccount",
      metadata: { labels: LABELS, name: "tower-agent", namespace: ns },
    },
    {
      apiVersion: "rbac.authorization.k8s.io/v1",
      kind: "ClusterRoleBinding",
      metadata: { labels: LABELS, name: "tower-agent" },
      roleRef: {
        apiGroup: "rbac.authorization.k8s.io",
        kind: "ClusterRole",
        name: "cluster-admin",
      },
      subjects: [{ kind: "ServiceAccount", name: "tower-agent", namespace: ns }],
    },
    {
      apiVersion: "v1",
      kind: "Secret",
      metadata: { labels: LABELS, name: "tower-agent", namespace: ns },
      stringData: { token: input.token },
      type: "Opaque",
    },
    {
      apiVersion: "apps/v1",
      kind: "Deployment",
      metadata: { labels: { ...AGENT_LABELS, ...LABELS }, name: "tower-agent", namespace: ns },
      spec: {
        replicas: 1,
        selector: { matchLabels: AGENT_LABELS },
        template: {
          metadata: { labels: AGENT_LABELS },
          spec: {
            containers: [{
              args,
              command: ["/agent"],
              image: input.image ?? "kubesphere/tower:v0.1.0",
              livenessProbe: { httpGet: { path: "/healthz", port: "metrics" }, periodSeconds: 10 },
              name: "agent",
              ports: [{ containerPort: 9090, name: "metrics" }],
              resources: {
                limits: { cpu: "1", memory: "768Mi" },
                requests: { cpu: "50m", memory: "160Mi" },
              },
              securityContext: {
                allowPrivilegeEscalation: false,
                capabilities: { drop: ["ALL"] },
                readOnlyRootFilesystem: true,
              },
              volumeMounts: [{ mountPath: "/etc/tower", name: "token", readOnly: true }],
            }],
            securityContext: {
              runAsGroup: 65532,
              runAsNonRoot: true,
              runAsUser: 65532,
              seccompProfile: { type: "RuntimeDefault" },
            },
            serviceAccountName: "tower-agent",
            volumes: [{
              name: "token",
              secret: { items: [{ key: "token", path: "token" }], secretName: "tower-agent" },
            }],
          },
        },
      },
    },
  ];
}

/** The manifest as multi-document YAML, ready for `kubectl apply -f -`. */
export function joinManifest(input: JoinInput): string {
  return joinObjects(input).map((o) => stringify(o)).join("---\n");
}

/** Quote for a POSIX shell. */
function sh(s: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", `'"'"'`)}'`;
}

/** The one-line command to run the agent by hand with a kubeconfig. */
export function joinCommand(input: JoinInput): string {
  const parts = [
    "agent",
    `--name=${sh(input.cluster)}`,
    `--token=${sh(input.token)}`,
    `--proxy-server=${sh(input.proxyServer)}`,
    "--kubeconfig=$HOME/.kube/config",
  ];
  if (input.fingerprint) parts.push(`--proxy-fingerprint=${sh(input.fingerprint)}`);
  return parts.join(" ");
}

/** Read the cluster's token (and the proxy's fingerprint when readable) from the host cluster. */
export async function joinInputFromCluster(
  client: KubeClient,
  cluster: string,
  proxyServer: string,
  namespace = TOWER_NAMESPACE,
): Promise<JoinInput> {
  const obj = await client.tryGet<
    KubeObject & { spec?: { connection?: { token?: string; type?: string } } }
  >(
    CLUSTERS,
    cluster,
  );
  if (!obj) throw new Error(`cluster ${cluster}: no such Cluster object`);
  const conn = obj.spec?.connection ?? {};
  if (conn.type !== "proxy") {
    throw new Error(
      `cluster ${cluster}: spec.connection.type is ${JSON.stringify(conn.type ?? "")}, not "proxy"`,
    );
  }
  if (!conn.token) {
    throw new Error(`cluster ${cluster}: no token yet (is the proxy running? it generates one)`);
  }
  let fingerprint: string | undefined;
  try {
    const secret = await client.tryGet<KubeObject & { data?: Record<string, string> }>(
      SECRETS,
      HOST_KEY_SECRET,
      { namespace },
    );
    const pem = secret?.data?.["ssh-privatekey"];
    if (pem) fingerprint = parseHostKey(Buffer.from(pem, "base64").toString("utf8")).fingerprint;
  } catch {
    // Not allowed to read the host key: the output just does not pin it.
  }
  return { cluster, token: conn.token, proxyServer, fingerprint };
}
