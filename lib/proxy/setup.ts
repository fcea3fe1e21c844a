/**
 * Where the proxy gets its clusters, CA and host key, in each mode:
 * standalone (`--clusters-file`: files beside it) or Kubernetes (Cluster
 * objects, with the CA and host key kept in Secrets unless given as files).
 * @module
 */

import { dirname, join } from "node:path";
import { loadOrCreateCA, loadOrCreateHostKeyPem } from "../controller/persist.ts";
import { TOWER_NAMESPACE } from "../controller/types.ts";
import { KubeClient, loadKubeConnection } from "../kube/mod.ts";
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
  const clusters = new KubeClusterSource({
    client,
    publishAddress: f.publishAddress || undefined,
    leaderElection: f.leaderElect ? {} : undefined,
  });
  return { clusters, ca, hostKey, close: () => conn.close() };
}
