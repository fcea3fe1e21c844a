/**
 * Shared setup for lib/kube tests: a test API server and a `KubeClient`
 * authenticated through its admin kubeconfig, closed together.
 * @module
 */

import { KubeClient, type KubeClientOptions, loadKubeConnection } from "../../lib/kube/mod.ts";
import {
  startTestApiServer,
  type TestApiServer,
  type TestApiServerOptions,
} from "../apiserver/server.ts";

/** A running server and a client for it. */
export interface Env {
  server: TestApiServer;
  client: KubeClient;
  /** Another client on its own connection (e.g. a second elector). */
  newClient(opts?: KubeClientOptions): Promise<KubeClient>;
  close(): Promise<void>;
}

/** Start a test API server and connect a client with fast retries. */
export async function startEnv(
  serverOpts: TestApiServerOptions = {},
  clientOpts: KubeClientOptions = {},
): Promise<Env> {
  const server = await startTestApiServer(serverOpts);
  const conns: { close(): void }[] = [];
  const newClient = async (opts: KubeClientOptions = clientOpts) => {
    const conn = await loadKubeConnection(server.kubeconfigPath);
    conns.push(conn);
    return new KubeClient(conn, { retryInitialMs: 10, retryMaxMs: 50, ...opts });
  };
  const client = await newClient();
  return {
    server,
    client,
    newClient,
    async close() {
      for (const c of conns) c.close();
      await server.close();
    },
  };
}
