/**
 * `proxy join <cluster>`: what a member cluster needs to connect, with the
 * cluster's token and the proxy's host key fingerprint filled in — the agent
 * manifest (the same objects as `deploy/agent`) or a shell command that asks
 * for the token at a silent prompt (never in argv or shell history). Without
 * a fingerprint there is no output: an agent that does not pin the key would
 * hand the token to whatever answers at the proxy's address.
 * @module
 */

import { Buffer } from "node:buffer";
import { stringify } from "yaml";
import { HOST_KEY_SECRET } from "../controller/persist.ts";
import { TOWER_NAMESPACE } from "../controller/types.ts";
import type { KubeClient } from "../kube/client.ts";
import { CLUSTERS, type KubeObject, SECRETS } from "../kube/types.ts";
import { KubeApiError } from "../kube/errors.ts";
import { parseHostKey } from "../tunnel/hostkey.ts";
import { DEFAULT_KNOWN_PROXY_SECRET } from "../agent/known_proxies_secret.ts";

/** What the join output is made of. */
export interface JoinInput {
  cluster: string;
  token: string;
  /** URL agents dial (`--proxy-server`). */
  proxyServer: string;
  /** `SHA256:…` of the proxy host key, pinned. */
  fingerprint: string;
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
    "--proxy-fingerprint-file=/etc/tower/proxy-fingerprint",
    "--metrics-address=:9090",
  ];
  const sa = [{ kind: "ServiceAccount", name: "tower-agent", namespace: ns }];
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
      kind: "Role",
      metadata: { labels: LABELS, name: "tower-agent", namespace: ns },
      rules: [{
        apiGroups: [""],
        resourceNames: [DEFAULT_KNOWN_PROXY_SECRET],
        resources: ["secrets"],
        verbs: ["get", "update"],
      }],
    },
    {
      apiVersion: "rbac.authorization.k8s.io/v1",
      kind: "RoleBinding",
      metadata: { labels: LABELS, name: "tower-agent", namespace: ns },
      roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "tower-agent" },
      subjects: sa,
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
      subjects: sa,
    },
    {
      apiVersion: "v1",
      kind: "Secret",
      metadata: { labels: LABELS, name: "tower-agent", namespace: ns },
      stringData: { "proxy-fingerprint": input.fingerprint, token: input.token },
      type: "Opaque",
    },
    {
      apiVersion: "v1",
      kind: "Secret",
      metadata: { labels: LABELS, name: DEFAULT_KNOWN_PROXY_SECRET, namespace: ns },
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
                limits: { cpu: "1", memory: "384Mi" },
                requests: { cpu: "50m", memory: "128Mi" },
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
              secret: {
                items: [
                  { key: "token", path: "token" },
                  { key: "proxy-fingerprint", path: "proxy-fingerprint" },
                ],
                secretName: "tower-agent",
              },
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

/** Where the printed command keeps the token on the agent's machine. */
function tokenPath(cluster: string): string {
  return `"$HOME"/.config/tower/${sh(`${cluster}.token`)}`;
}

/**
 * The command to run the agent by hand with a kubeconfig (bash or zsh). It holds no token: the
 * first part asks for it at a silent prompt (once; kept in a 0600 file) so the token is in no
 * command line, `ps` output or shell history; {@link joinCommandTokenNote} says what to paste.
 */
export function joinCommand(input: JoinInput): string {
  const file = tokenPath(input.cluster);
  return [
    `# Tower agent for cluster ${input.cluster}: asks once for the cluster token at a silent prompt`,
    "# and keeps it in a 0600 file, so the token never appears in a command line or shell history.",
    `{ [ -s ${file} ] || (umask 077 && mkdir -p "$HOME"/.config/tower &&`,
    `  printf 'cluster token for %s: ' ${sh(input.cluster)} >&2 && IFS= read -rs t && echo >&2 &&`,
    `  [ -n "$t" ] && printf '%s\\n' "$t" > ${file}); } &&`,
    [
      "agent",
      `--name=${sh(input.cluster)}`,
      `--token-file=${file}`,
      `--proxy-server=${sh(input.proxyServer)}`,
      `--proxy-fingerprint=${sh(input.fingerprint)}`,
      `--kubeconfig="$HOME"/.kube/config`,
    ].join(" "),
  ].join("\n");
}

/** What `--print command` writes to stderr: the token to paste at the command's prompt. */
export function joinCommandTokenNote(input: JoinInput): string {
  return `cluster token for ${input.cluster} (paste it at the command's prompt, not into a ` +
    `command line): ${input.token}`;
}

/**
 * Read the cluster's token and the proxy's fingerprint (unless `opts.fingerprint` gives it) from
 * the host cluster.
 * @throws Error when either cannot be read: the output is never made without the pin.
 */
export async function joinInputFromCluster(
  client: KubeClient,
  cluster: string,
  proxyServer: string,
  opts: { namespace?: string; fingerprint?: string } = {},
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
  const fingerprint = opts.fingerprint ??
    await hostKeyFingerprint(client, opts.namespace ?? TOWER_NAMESPACE);
  return { cluster, token: conn.token, proxyServer, fingerprint };
}

/**
 * The fingerprint of the proxy's host key, from its Secret.
 * @throws Error saying why it cannot be read (missing, forbidden, malformed) and what to do.
 */
async function hostKeyFingerprint(client: KubeClient, namespace: string): Promise<string> {
  const where = `Secret ${namespace}/${HOST_KEY_SECRET}`;
  const instead = "or pass --proxy-fingerprint SHA256:… as the proxy logs it at start " +
    '(`SSH host key … fingerprint="SHA256:…"`)';
  let secret: (KubeObject & { data?: Record<string, string> }) | undefined;
  try {
    secret = await client.tryGet(SECRETS, HOST_KEY_SECRET, { namespace });
  } catch (err) {
    const why = err instanceof KubeApiError && err.status === 403
      ? "not allowed to read it (the agent must pin the proxy's key: use an identity that may " +
        "get this Secret, "
      : "cannot read it (";
    throw new Error(`the proxy's host key: ${where}: ${why}${instead}): ${(err as Error).message}`);
  }
  if (!secret) {
    throw new Error(
      `the proxy's host key: ${where} does not exist: start the proxy once in this cluster ` +
        `(it creates the key), ${instead}`,
    );
  }
  const pem = secret.data?.["ssh-privatekey"];
  if (!pem) throw new Error(`the proxy's host key: ${where} has no ssh-privatekey`);
  return parseHostKey(Buffer.from(pem, "base64").toString("utf8"), where).fingerprint;
}
