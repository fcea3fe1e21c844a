/**
 * Shared setup for controller tests: a test API server with the
 * `kubesphere-system` namespace and the project's Cluster CRD installed, a
 * client factory, and a watcher that resolves when a Cluster or Service
 * reaches a wanted state (event-driven, no polling).
 * @module
 */

import { parse } from "yaml";
import {
  CLUSTERS,
  Informer,
  KubeClient,
  type KubeClientOptions,
  type KubeObject,
  loadKubeConnection,
  SERVICES,
} from "../../lib/kube/mod.ts";
import type { ClusterObject, ServiceObject } from "../../lib/controller/types.ts";
import { startTestApiServer, type TestApiServer } from "../apiserver/server.ts";

const CRD_PATH = new URL("../../crd/cluster.kubesphere.io_clusters.yaml", import.meta.url);

/** A server, clients, and watchers, closed together. */
export interface Env {
  server: TestApiServer;
  client: KubeClient;
  newClient(opts?: KubeClientOptions): Promise<KubeClient>;
  /** Cache of Clusters seen by an independent watcher. */
  clusters: Watcher<ClusterObject>;
  /** Cache of Services in kubesphere-system seen by an independent watcher. */
  services: Watcher<ServiceObject>;
  close(): Promise<void>;
}

/** Resolves when an object satisfies a predicate. */
export class Watcher<T extends KubeObject> {
  readonly informer: Informer<T>;
  #waits: { check: () => boolean }[] = [];

  constructor(client: KubeClient, inf: Informer<T>) {
    this.informer = inf;
    void client;
    const poke = () => {
      this.#waits = this.#waits.filter((w) => !w.check());
    };
    inf.addHandlers({ onAdd: poke, onUpdate: poke, onDelete: poke, onSync: poke });
  }

  /** The cached object. */
  get(name: string, namespace?: string): T | undefined {
    return this.informer.get(name, namespace);
  }

  /**
   * Resolve with the object (or undefined when `pred` accepts absence) once
   * `pred` holds; reject after `ms` (a safety net) naming `what`.
   */
  until(
    name: string,
    pred: (obj: T | undefined) => boolean,
    what: string,
    opts: { namespace?: string; ms?: number } = {},
  ): Promise<T | undefined> {
    return new Promise((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined = undefined;
      const w = {
        check: () => {
          const obj = this.informer.get(name, opts.namespace);
          if (!this.informer.hasSynced() || !pred(obj)) return false;
          clearTimeout(timer);
          resolve(obj);
          return true;
        },
      };
      if (w.check()) return;
      timer = setTimeout(() => {
        this.#waits = this.#waits.filter((x) => x !== w);
        const obj = this.informer.get(name, opts.namespace);
        reject(
          new Error(
            `timed out after ${opts.ms ?? 10_000} ms waiting for ${what}; last: ${
              JSON.stringify(obj)?.slice(0, 1500)
            }`,
          ),
        );
      }, opts.ms ?? 10_000);
      this.#waits.push(w);
    });
  }
}

/**
 * Install the Cluster CRD from `crd/` into the server; `statusSubresource`
 * adds a status subresource (KubeSphere's own CRD has none).
 */
export async function installCrd(server: TestApiServer, statusSubresource = false): Promise<void> {
  const crd = parse(await Deno.readTextFile(CRD_PATH));
  if (statusSubresource) {
    for (const v of crd.spec.versions) v.subresources = { ...v.subresources, status: {} };
  }
  const r = await server.request(
    "POST",
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
    crd,
  );
  if (r.status !== 201) throw new Error(`install CRD: ${r.status} ${JSON.stringify(r.body)}`);
}

/** Start the environment. */
export async function startEnv(opts: { statusSubresource?: boolean } = {}): Promise<Env> {
  const server = await startTestApiServer({
    namespaces: ["kubesphere-system"],
    bookmarkIntervalMs: 200,
  });
  const conns: { close(): void }[] = [];
  const newClient = async (opts: KubeClientOptions = {}) => {
    const conn = await loadKubeConnection(server.kubeconfigPath);
    conns.push(conn);
    return new KubeClient(conn, { retryInitialMs: 10, retryMaxMs: 50, ...opts });
  };
  await installCrd(server, opts.statusSubresource);
  const client = await newClient();
  const watchClient = await newClient();
  const fast = { backoffInitialMs: 10, backoffMaxMs: 100 };
  const ci = new Informer<ClusterObject>(watchClient, CLUSTERS, fast);
  const si = new Informer<ServiceObject>(watchClient, SERVICES, {
    ...fast,
    namespace: "kubesphere-system",
  });
  const clusters = new Watcher(watchClient, ci);
  const services = new Watcher(watchClient, si);
  ci.start();
  si.start();
  return {
    server,
    client,
    newClient,
    clusters,
    services,
    async close() {
      await Promise.all([ci.stop(), si.stop()]);
      for (const c of conns) c.close();
      await server.close();
    },
  };
}

/** A Cluster manifest as in the README. */
export function clusterManifest(
  name: string,
  spec: Record<string, unknown> = {},
  annotations?: Record<string, string>,
): ClusterObject {
  return {
    apiVersion: "cluster.kubesphere.io/v1alpha1",
    kind: "Cluster",
    metadata: { name, ...(annotations ? { annotations } : {}) },
    spec: { joinFederation: true, connection: { type: "proxy", token: "" }, ...spec },
  };
}

/** The condition of `type` on a Cluster. */
export function cond(c: ClusterObject | undefined, type: string) {
  return c?.status?.conditions?.find((x) => x.type === type);
}
