/**
 * `@kubernetes/client-node` against the test API server: typed calls with
 * the admin kubeconfig (client certificate), 409 on a stale update, and an
 * informer that receives add → update → delete in order and recovers through
 * a dropped watch plus 410 Gone by relisting.
 * @module
 */

import {
  ApiException,
  CoreV1Api,
  KubeConfig,
  makeInformer,
  type V1ConfigMap,
} from "@kubernetes/client-node";
import { assertEquals } from "../helpers/assert.ts";
import { startTestApiServer } from "./server.ts";
import { deadline } from "./testing.ts";

/** Collects informer events and lets a test wait for the n-th one. */
class EventLog {
  readonly events: string[] = [];
  #waiters: { n: number; resolve: () => void }[] = [];

  push(e: string): void {
    this.events.push(e);
    this.#waiters = this.#waiters.filter((w) => {
      if (this.events.length >= w.n) w.resolve();
      return this.events.length < w.n;
    });
  }

  until(n: number, what: string): Promise<void> {
    if (this.events.length >= n) return Promise.resolve();
    const p = new Promise<void>((resolve) => this.#waiters.push({ n, resolve }));
    return deadline(p, 10_000, `${what} (events so far: ${this.events.join(", ")})`);
  }
}

Deno.test({
  name: "client-node informer and typed API against the test API server",
  // client-node's undici keep-alive sockets and its informer's reconnect timer outlive
  // the test body by design (no close API); the server side is closed and checked.
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async (t) => {
    const s = await startTestApiServer();
    const kc = new KubeConfig();
    kc.loadFromFile(s.kubeconfigPath);
    const api = kc.makeApiClient(CoreV1Api);
    const namespace = "default";
    const log = new EventLog();
    const informer = makeInformer<V1ConfigMap>(
      kc,
      "/api/v1/namespaces/default/configmaps",
      () => api.listNamespacedConfigMap({ namespace }),
    );
    for (const verb of ["add", "update", "delete"] as const) {
      informer.on(verb, (o) => log.push(`${verb} ${o.metadata?.name}`));
    }
    try {
      await t.step("typed calls and 409 Conflict on a stale update", async () => {
        const cm = await api.createNamespacedConfigMap({
          namespace,
          body: { metadata: { name: "seed" }, data: { a: "1" } },
        });
        const updated = await api.replaceNamespacedConfigMap({
          name: "seed",
          namespace,
          body: { ...cm, data: { a: "2" } },
        });
        assertEquals(updated.data, { a: "2" });
        let code = 0;
        try {
          await api.replaceNamespacedConfigMap({
            name: "seed",
            namespace,
            body: { ...cm, data: { a: "3" } },
          });
        } catch (err) {
          code = err instanceof ApiException ? err.code : -1;
        }
        assertEquals(code, 409);
      });

      await t.step("informer sees add, update, delete in order", async () => {
        await informer.start();
        await log.until(1, "initial add");
        assertEquals(log.events, ["add seed"]);
        await api.createNamespacedConfigMap({ namespace, body: { metadata: { name: "x" } } });
        await log.until(2, "add x");
        await api.patchNamespacedConfigMap(
          { name: "x", namespace, body: [{ op: "add", path: "/data", value: { k: "v" } }] },
        );
        await log.until(3, "update x");
        await api.deleteNamespacedConfigMap({ name: "x", namespace });
        await log.until(4, "delete x");
        assertEquals(log.events, ["add seed", "add x", "update x", "delete x"]);
      });

      await t.step("dropped watch and 410 Gone: the informer relists and goes on", async () => {
        // A write the informer does not see moves the revision past its resourceVersion.
        await api.createNamespacedSecret({ namespace, body: { metadata: { name: "unseen" } } });
        s.compact();
        s.faults.dropWatches();
        await api.createNamespacedConfigMap({ namespace, body: { metadata: { name: "y" } } });
        await log.until(5, "add y after relist");
        assertEquals(log.events.slice(4), ["add y"]);
        assertEquals(s.core.expiredWatches, 1, "the informer's re-watch got 410 Gone");
        assertEquals(informer.list().map((o) => o.metadata?.name).sort(), ["seed", "y"]);
      });
    } finally {
      await informer.stop();
      await s.close();
    }
  },
});
