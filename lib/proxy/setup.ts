/**
 * Where the proxy gets its clusters, CA and host key, in each mode:
 * standalone (`--clusters-file`: files beside it) or Kubernetes (Cluster
 * objects, with the CA and host key kept in Secrets unless given as files).
 * @module
 */

import { dirname, join } from "node:path";
import { loadOrCreateCA, loadOrCreateHostKeyPem } from "../controller/persist.ts";
import type { PortRange } from "../controller/ports.ts";
import type { ReplicaIdentity } from "../controller/slices.ts";
import { TOWER_NAMESPACE } from "../controller/types.ts";
import { errorText, KubeClient, loadKubeConnection, PODS } from "../kube/mod.ts";
import { logger } from "../log.ts";
import type { CA } from "../pki/mod.ts";
import { type HostKey, loadOrCreateHostKeyFile, parseHostKey } from "../tunnel/hostkey.ts";
import { loadCAFiles, loadOrCreateCADir } from "./ca_store.ts";
import type { ClusterSource } from "./clusters.ts";
import { FileClusterSource } from "./clusters_file.ts";
import { KubeClusterSource } from "./clusters_kube.ts";

const log = logger("proxy");

/** What the proxy runs on. */
export interface ProxySetup {
  clusters: ClusterSource;
  ca: CA;
  hostKey: HostKey;
  /** Release what the setup opened (after the app closed). */
  close(): void;
}

/** Flags that shape the setup. */
export interface SetupFlags {
  caCert: string;
  caKey: string;
  hostKeyPath: string;
  publishAddress: string;
  clustersFile: string;
  kubeconfigDir: string;
  kubeconfig: string;
  leaderElect: boolean;
  /** `--port-range`. */
  portRange?: PortRange;
  /** Ports never handed out: the agent port and the metrics port. */
  reservedPorts?: ReadonlySet<number>;
  /** This replica's pod (`--pod-name`/`POD_NAME`), IP (`--pod-ip`/`POD_IP`), namespace (`POD_NAMESPACE`). */
  podName?: string;
  podIP?: string;
  podNamespace?: string;
  /** Replica Lease renewal period and duration (ms). */
  replicaLease?: { renewMs?: number; durationMs?: number };
}

/**
 * This replica's identity, when it has a pod IP: its Pod read once for the uid (owner of its
 * EndpointSlices and Lease) and node name. A Pod that cannot be read leaves them out (the slices
 * then go only through the leader's reaping), with a warning.
 * @throws Error when the identity is incomplete or in another namespace than the Services.
 */
export async function resolveReplica(
  client: KubeClient,
  f: Pick<SetupFlags, "podName" | "podIP" | "podNamespace">,
  signal?: AbortSignal,
): Promise<ReplicaIdentity | undefined> {
  if (!f.podIP) return undefined;
  if (!f.podName) throw new Error("--pod-ip (POD_IP) needs --pod-name (POD_NAME) too");
  if (!/^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$/.test(f.podName)) {
    throw new Error(`pod name ${JSON.stringify(f.podName)}: want a label value (63 characters)`);
  }
  if (!/^(\d{1,3}(\.\d{1,3}){3}|[0-9a-fA-F:]*:[0-9a-fA-F:]+)$/.test(f.podIP)) {
    throw new Error(`pod IP ${JSON.stringify(f.podIP)}: want an IPv4 or IPv6 address`);
  }
  const namespace = f.podNamespace || TOWER_NAMESPACE;
  if (namespace !== TOWER_NAMESPACE) {
    throw new Error(
      `POD_NAMESPACE ${namespace}: the proxy must run in ${TOWER_NAMESPACE}, beside the ` +
        "mc-<name> Services its EndpointSlices belong to",
    );
  }
  const replica: ReplicaIdentity = { name: f.podName, namespace, ip: f.podIP };
  try {
    const pod = await client.get<{ metadata: { uid?: string }; spec?: { nodeName?: string } }>(
      PODS,
      f.podName,
      { namespace, signal },
    );
    replica.uid = pod.metadata.uid;
    if (pod.spec?.nodeName) replica.nodeName = pod.spec.nodeName;
  } catch (err) {
    log.warn("Cannot read this replica's Pod: its EndpointSlices get no owner reference", {
      pod: `${namespace}/${f.podName}`,
      err: errorText(err),
    });
  }
  log.info("Replica", { pod: replica.name, address: replica.ip, uid: replica.uid ?? "" });
  return replica;
}

function logHostKey(hostKey: HostKey, where: string, created: boolean): void {
  log.info("SSH host key", { source: where, fingerprint: hostKey.fingerprint, created });
}

/** Standalone mode: clusters, CA and host key from files. */
export async function standaloneSetup(f: SetupFlags): Promise<ProxySetup> {
  const dir = f.kubeconfigDir || dirname(f.clustersFile);
  const hostKeyPath = f.hostKeyPath || join(dirname(f.clustersFile), "proxy_host_key");
  const hostKey = await loadOrCreateHostKeyFile(hostKeyPath);
  logHostKey(hostKey, hostKeyPath, hostKey.created);
  const ca = f.caCert ? await loadCAFiles(f.caCert, f.caKey) : await loadOrCreateCADir(dir);
  const clusters = new FileClusterSource({
    path: f.clustersFile,
    kubeconfigDir: f.kubeconfigDir || undefined,
    publishAddress: f.publishAddress || undefined,
    portRange: f.portRange,
    reservedPorts: f.reservedPorts,
  });
  return { clusters, ca, hostKey, close: () => {} };
}

/** Kubernetes mode: Cluster objects; CA and host key in Secrets unless given as files. */
export async function kubernetesSetup(f: SetupFlags, signal: AbortSignal): Promise<ProxySetup> {
  const conn = await loadKubeConnection(f.kubeconfig);
  log.info("Using the host cluster API", { server: conn.server });
  const client = new KubeClient(conn);
  const wait = { waitForApi: true, signal };
  const ca = f.caCert
    ? await loadCAFiles(f.caCert, f.caKey)
    : await loadOrCreateCA(client, TOWER_NAMESPACE, undefined, wait);
  let hostKey: HostKey;
  if (f.hostKeyPath) {
    const k = await loadOrCreateHostKeyFile(f.hostKeyPath);
    logHostKey(k, f.hostKeyPath, k.created);
    hostKey = k;
  } else {
    const k = await loadOrCreateHostKeyPem(client, TOWER_NAMESPACE, undefined, wait);
    hostKey = parseHostKey(k.pem, `Secret ${TOWER_NAMESPACE}/tower-host-key`);
    logHostKey(hostKey, `Secret ${TOWER_NAMESPACE}/tower-host-key`, k.created);
  }
  const replica = await resolveReplica(client, f, signal);
  const clusters = new KubeClusterSource({
    client,
    publishAddress: f.publishAddress || undefined,
    leaderElection: f.leaderElect ? {} : undefined,
    portRange: f.portRange,
    reservedPorts: f.reservedPorts,
    replica,
    replicaLease: f.replicaLease,
    // In the cluster without a pod IP (an old manifest): one replica, selected by the Services.
    selectPods: !replica && !f.publishAddress && !f.kubeconfig,
  });
  return { clusters, ca, hostKey, close: () => conn.close() };
}
