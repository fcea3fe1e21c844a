/**
 * Informer against the test API server: initial sync and events, resume
 * after dropped watches without relisting, 410 → relist with a diff that
 * reports deletions missed while disconnected, failing lists retried, a dead
 * server never throws, stop is prompt.
 * @module
 */

import nodeAssert from "node:assert/strict";
import { CONFIGMAPS, Informer, KubeClient, type KubeObject } from "../../lib/kube/mod.ts";
import { startEnv } from "./helpers.ts";
import { deadline } from "../helpers/deadline.ts";

const CM_PATH = "/api/v1/namespaces/default/configmaps";

/** Records events and lets a test await a predicate over them. */
class Recorder {
  events: string[] = [];
  errors = 0;
  #waiters: { pred: () => boolean; resolve: () => void }[] = [];
  push(e: string): void {
    this.events.push(e);
    this.#check();
  }
  error(): void {
    this.errors++;
    this.#check();
  }
  until(pred: () => boolean, what: string): Promise<void> {
    if (pred()) return Promise.resolve();
    const d = Promise.withResolvers<void>();
    this.#waiters.push({ pred, resolve: d.resolve });
    return deadline(d.promise, 10_000, what);
  }
  #check(): void {
    for (const w of [...this.#waiters]) {
      if (w.pred()) {
        this.#waiters = this.#waiters.filter((x) => x !== w);
        w.resolve();
      }
    }
  }
}

function record(inf: Informer<KubeObject>): Recorder {
  const r = new Recorder();
  inf.addHandlers({
    onAdd: (o) => r.push(`add ${o.metadata.name}`),
    onUpdate: (_, o) => r.push(`update ${o.metadata.name}`),
    onDelete: (o) => r.push(`delete ${o.metadata.name}`),
    onSync: () => r.push("sync"),
    onError: () => r.error(),
  });
  return r;
}

Deno.test("Informer: sync, events, resume, 410 relist with diff, failing lists", async (t) => {
  const env = await startEnv({ bookmarkIntervalMs: 50 });
  const s = env.server;
  const client = await env.newClient({ retries: 0 });
  await s.request("POST", CM_PATH, { metadata: { name: "pre" } });
  const inf = new Informer(client, CONFIGMAPS, {
    namespace: "default",
    backoffInitialMs: 5,
    backoffMaxMs: 20,
  });
  const r = record(inf);
  try {
    await t.step("initial list fills the cache and calls onAdd, then onSync", async () => {
      nodeAssert.equal(inf.hasSynced(), false);
      inf.start();
      nodeAssert.equal(await deadline(inf.waitForSync(), 5000, "sync"), true);
      nodeAssert.equal(inf.hasSynced(), true);
      nodeAssert.deepEqual(r.events, ["add pre", "sync"]);
      nodeAssert.equal(inf.get("pre", "default")?.metadata.name, "pre");
    });

    await t.step("watch events update the cache", async () => {
      await s.request("POST", CM_PATH, { metadata: { name: "a" } });
      await s.request(
        "PATCH",
        `${CM_PATH}/a`,
        { data: { x: "1" } },
        "application/merge-patch+json",
      );
      await s.request("DELETE", `${CM_PATH}/pre`);
      await r.until(() => r.events.includes("delete pre"), "delete event");
      nodeAssert.deepEqual(r.events.slice(2), ["add a", "update a", "delete pre"]);
      nodeAssert.deepEqual(inf.list().map((o) => o.metadata.name), ["a"]);
      nodeAssert.equal((inf.get("a", "default") as { data?: unknown }).data !== undefined, true);
    });

    await t.step(
      "a dropped watch resumes from the last resourceVersion without relisting",
      async () => {
        const lists = inf.stats.lists;
        const watches = inf.stats.watches;
        s.faults.dropWatches();
        await s.request("POST", CM_PATH, { metadata: { name: "b" } });
        await r.until(() => r.events.includes("add b"), "event after drop");
        nodeAssert.equal(inf.stats.lists, lists);
        nodeAssert.ok(inf.stats.watches > watches);
        nodeAssert.equal(r.events.filter((e) => e === "add b").length, 1);
      },
    );

    await t.step("410 Gone: relist and report what changed while disconnected", async () => {
      const errorsBefore = r.errors;
      s.faults.failNext(100_000, 503, (m, p) => m === "GET" && p === CM_PATH);
      s.faults.dropWatches();
      await r.until(() => r.errors > errorsBefore, "informer failing while the server refuses");
      await s.request("DELETE", `${CM_PATH}/a`);
      await s.request(
        "PATCH",
        `${CM_PATH}/b`,
        { data: { y: "2" } },
        "application/merge-patch+json",
      );
      await s.request("POST", CM_PATH, { metadata: { name: "c" } });
      s.compact();
      const relists = inf.stats.relists410;
      s.faults.reset();
      await r.until(() => r.events.includes("add c"), "relist after 410");
      nodeAssert.equal(inf.stats.relists410, relists + 1);
      const tail = r.events.slice(r.events.lastIndexOf("sync") - 3);
      nodeAssert.deepEqual(new Set(tail), new Set(["update b", "add c", "delete a", "sync"]));
      nodeAssert.deepEqual(inf.list().map((o) => o.metadata.name).sort(), ["b", "c"]);
    });

    await t.step("restart keeping state: watch resumes, new events arrive", async () => {
      await s.restart({ keepState: true });
      await s.request("POST", CM_PATH, { metadata: { name: "d" } });
      await r.until(() => r.events.includes("add d"), "event after restart");
    });
  } finally {
    await inf.stop();
    await env.close();
  }
});

Deno.test("Informer: a dead API server never throws; stop is prompt", async () => {
  const env = await startEnv();
  const conn = env.client.connection;
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = l.addr.port;
  l.close(); // nothing listens there any more: connection refused
  const dead = new KubeClient({
    server: `https://127.0.0.1:${port}`,
    namespace: "default",
    httpClient: conn.httpClient,
    headers: () => conn.headers(),
    close: () => {},
  }, { retries: 0 });
  const inf = new Informer(dead, CONFIGMAPS, { backoffInitialMs: 1, backoffMaxMs: 5 });
  const r = record(inf);
  try {
    inf.start();
    await r.until(() => r.errors >= 5, "five failed attempts");
    nodeAssert.equal(inf.hasSynced(), false);
    const ac = new AbortController();
    const waiting = inf.waitForSync(ac.signal);
    ac.abort();
    nodeAssert.equal(await waiting, false);
  } finally {
    await deadline(inf.stop(), 5000, "stop");
    await env.close();
  }
  nodeAssert.equal(await inf.waitForSync(), false);
});

Deno.test("Informer: initial list failures are retried until the list succeeds", async () => {
  const env = await startEnv();
  const client = await env.newClient({ retries: 0 });
  env.server.faults.failNext(3, 500, (m, p) => m === "GET" && p === CM_PATH);
  const inf = new Informer(client, CONFIGMAPS, {
    namespace: "default",
    backoffInitialMs: 1,
    backoffMaxMs: 5,
  });
  const r = record(inf);
  try {
    inf.start();
    nodeAssert.equal(await deadline(inf.waitForSync(), 5000, "sync"), true);
    nodeAssert.equal(r.errors, 3);
    // A handler added after sync sees the cached objects as adds.
    await env.server.request("POST", CM_PATH, { metadata: { name: "late" } });
    await r.until(() => r.events.includes("add late"), "add late");
    const seen: string[] = [];
    inf.addHandlers({ onAdd: (o) => void seen.push(String(o.metadata.name)) });
    nodeAssert.deepEqual(seen, ["late"]);
  } finally {
    await inf.stop();
    await env.close();
  }
});
