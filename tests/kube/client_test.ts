/**
 * KubeClient against the test API server: CRUD for namespaced and
 * cluster-scoped resources, merge and JSON patches, typed errors, pagination,
 * updateWithRetry under injected 409s, retries on 500/429, watch streaming,
 * abort and 410.
 * @module
 */

import nodeAssert from "node:assert/strict";
import {
  CONFIGMAPS,
  KubeApiError,
  KubeClient,
  type KubeObject,
  NAMESPACES,
  type WatchEvent,
} from "../../lib/kube/mod.ts";
import { startEnv } from "./helpers.ts";
import { deadline } from "../helpers/deadline.ts";

interface ConfigMap extends KubeObject {
  data?: Record<string, string>;
}

const isPut = (m: string) => m === "PUT";

Deno.test("KubeClient CRUD, patches and typed errors", async (t) => {
  const env = await startEnv();
  const c = env.client;
  try {
    await t.step("namespaced create/get/list/update/delete", async () => {
      const created = await c.create<ConfigMap>(CONFIGMAPS, {
        metadata: { name: "a", namespace: "default", labels: { app: "x" } },
        data: { k: "v" },
      });
      nodeAssert.equal(created.kind, "ConfigMap");
      nodeAssert.match(String(created.metadata.resourceVersion), /^\d+$/);
      const got = await c.get<ConfigMap>(CONFIGMAPS, "a", { namespace: "default" });
      nodeAssert.deepEqual(got.data, { k: "v" });
      got.data = { k: "w" };
      const updated = await c.update(CONFIGMAPS, got);
      nodeAssert.deepEqual(updated.data, { k: "w" });
      nodeAssert.notEqual(updated.metadata.resourceVersion, got.metadata.resourceVersion);
      const l = await c.list<ConfigMap>(CONFIGMAPS, {
        namespace: "default",
        labelSelector: "app=x",
      });
      nodeAssert.deepEqual(l.items.map((i) => i.metadata.name), ["a"]);
      nodeAssert.match(String(l.metadata.resourceVersion), /^\d+$/);
      await c.delete(CONFIGMAPS, "a", { namespace: "default" });
      nodeAssert.equal(await c.tryGet(CONFIGMAPS, "a", { namespace: "default" }), undefined);
    });

    await t.step(
      "typed errors: NotFound, AlreadyExists, Conflict; namespace required",
      async () => {
        const nf = await c.get(CONFIGMAPS, "nope", { namespace: "default" }).catch((e) => e);
        nodeAssert.ok(nf instanceof KubeApiError && nf.isNotFound, String(nf));
        nodeAssert.equal(nf.reason, "NotFound");
        await c.create(CONFIGMAPS, { metadata: { name: "dup", namespace: "default" } });
        const ae = await c.create(CONFIGMAPS, { metadata: { name: "dup", namespace: "default" } })
          .catch((e) => e);
        nodeAssert.ok(ae instanceof KubeApiError && ae.isAlreadyExists, String(ae));
        const cur = await c.get(CONFIGMAPS, "dup", { namespace: "default" });
        await c.update(CONFIGMAPS, { ...cur, data: { a: "1" } });
        const cf = await c.update(CONFIGMAPS, { ...cur, data: { a: "2" } }).catch((e) => e);
        nodeAssert.ok(cf instanceof KubeApiError && cf.isConflict, String(cf));
        nodeAssert.equal(cf.status, 409);
        await nodeAssert.rejects(c.get(CONFIGMAPS, "x"), /namespace required/);
        const del = await c.delete(CONFIGMAPS, "gone", { namespace: "default" }).catch((e) => e);
        nodeAssert.ok(del instanceof KubeApiError && del.isNotFound);
      },
    );

    await t.step("cluster-scoped resources", async () => {
      await c.create(NAMESPACES, { metadata: { name: "team-a" } });
      const ns = await c.get(NAMESPACES, "team-a");
      nodeAssert.equal(ns.metadata.name, "team-a");
      nodeAssert.equal(ns.metadata.namespace, undefined);
      const l = await c.list(NAMESPACES);
      nodeAssert.ok(l.items.some((i) => i.metadata.name === "team-a"));
      await c.create(CONFIGMAPS, { metadata: { name: "in-a", namespace: "team-a" } });
      const all = await c.list(CONFIGMAPS); // all namespaces
      nodeAssert.ok(all.items.some((i) => i.metadata.namespace === "team-a"));
    });

    await t.step("merge and JSON patches", async () => {
      await c.create<ConfigMap>(CONFIGMAPS, {
        metadata: { name: "p", namespace: "default" },
        data: { a: "1", b: "2" },
      });
      const m = await c.patch<ConfigMap>(CONFIGMAPS, "p", { data: { b: null, c: "3" } }, "merge", {
        namespace: "default",
      });
      nodeAssert.deepEqual(m.data, { a: "1", c: "3" });
      const j = await c.patch<ConfigMap>(
        CONFIGMAPS,
        "p",
        [
          { op: "replace", path: "/data/a", value: "9" },
          { op: "add", path: "/metadata/labels", value: { l: "v" } },
        ],
        "json",
        { namespace: "default" },
      );
      nodeAssert.deepEqual(j.data, { a: "9", c: "3" });
      nodeAssert.deepEqual(j.metadata.labels, { l: "v" });
      const bad = await c.patch(
        CONFIGMAPS,
        "p",
        [{ op: "test", path: "/data/a", value: "0" }],
        "json",
        {
          namespace: "default",
        },
      ).catch((e) => e);
      nodeAssert.ok(bad instanceof KubeApiError, String(bad));
      await nodeAssert.rejects(
        c.patch(CONFIGMAPS, "p", { a: 1 }, "json", { namespace: "default" }),
        /json patch needs an array/,
      );
    });

    await t.step("list follows continue tokens", async () => {
      for (let i = 0; i < 7; i++) {
        await c.create(CONFIGMAPS, { metadata: { name: `page-${i}`, namespace: "team-a" } });
      }
      const l = await c.list(CONFIGMAPS, { namespace: "team-a", limit: 2 });
      nodeAssert.equal(l.items.length, 8);
      nodeAssert.equal(l.metadata.continue, undefined);
    });
  } finally {
    await env.close();
  }
});

Deno.test("KubeClient retries: updateWithRetry on 409, GET on 500/429, no retry for create on 500", async (t) => {
  const env = await startEnv();
  const c = env.client;
  const s = env.server;
  try {
    await c.create<ConfigMap>(CONFIGMAPS, {
      metadata: { name: "r", namespace: "default" },
      data: {},
    });

    await t.step("updateWithRetry re-reads after conflicts from another writer", async () => {
      let calls = 0;
      const out = await c.updateWithRetry<ConfigMap>(CONFIGMAPS, "r", async (cm) => {
        calls++;
        if (calls <= 2) {
          // Another client writes in between our read and our write.
          const other = await c.get<ConfigMap>(CONFIGMAPS, "r", { namespace: "default" });
          await c.update(CONFIGMAPS, { ...other, data: { ...other.data, [`other${calls}`]: "x" } });
        }
        cm.data = { ...cm.data, mine: "yes" };
        return cm;
      }, { namespace: "default" });
      nodeAssert.equal(calls, 3);
      nodeAssert.deepEqual(out.data, { other1: "x", other2: "x", mine: "yes" });
    });

    await t.step(
      "updateWithRetry: injected 409s, bounded attempts, no write without change",
      async () => {
        s.faults.failNext(2, 409, isPut);
        const out = await c.updateWithRetry<ConfigMap>(CONFIGMAPS, "r", (cm) => {
          cm.data = { ...cm.data, n: "1" };
          return cm;
        }, { namespace: "default" });
        nodeAssert.equal(out.data?.n, "1");
        s.faults.failNext(10, 409, isPut);
        await nodeAssert.rejects(
          c.updateWithRetry<ConfigMap>(CONFIGMAPS, "r", (cm) => {
            cm.data = { ...cm.data, n: "2" };
            return cm;
          }, { namespace: "default", attempts: 3 }),
          /still conflicting after 3 attempts/,
        );
        s.faults.reset();
        const before = await c.get(CONFIGMAPS, "r", { namespace: "default" });
        const same = await c.updateWithRetry<ConfigMap>(CONFIGMAPS, "r", (cm) => cm, {
          namespace: "default",
        });
        nodeAssert.equal(same.metadata.resourceVersion, before.metadata.resourceVersion);
        const none = await c.updateWithRetry<ConfigMap>(CONFIGMAPS, "r", () => undefined, {
          namespace: "default",
        });
        nodeAssert.equal(none.metadata.resourceVersion, before.metadata.resourceVersion);
      },
    );

    await t.step("GET retries 500 and 429; gives up after the retry budget", async () => {
      const failedBefore = s.faults.failed;
      s.faults.failNext(2, 500, (m) => m === "GET");
      await c.get(CONFIGMAPS, "r", { namespace: "default" });
      s.faults.failNext(1, 429, (m) => m === "GET");
      await c.get(CONFIGMAPS, "r", { namespace: "default" });
      nodeAssert.equal(s.faults.failed - failedBefore, 3);
      s.faults.failNext(100, 503, (m) => m === "GET");
      const err = await c.get(CONFIGMAPS, "r", { namespace: "default" }).catch((e) => e);
      nodeAssert.ok(err instanceof KubeApiError && err.status === 503, String(err));
      s.faults.reset();
    });

    await t.step("create is not repeated on 500 but is on 429", async () => {
      s.faults.failNext(1, 500, (m) => m === "POST");
      const err = await c.create(CONFIGMAPS, { metadata: { name: "once", namespace: "default" } })
        .catch((e) => e);
      nodeAssert.ok(err instanceof KubeApiError && err.status === 500);
      s.faults.failNext(1, 429, (m) => m === "POST");
      await c.create(CONFIGMAPS, { metadata: { name: "once", namespace: "default" } });
      s.faults.reset();
    });

    await t.step("network errors carry context; idempotent calls retry them", async () => {
      const conn = env.client.connection;
      const dead = new KubeClient({
        ...conn,
        server: "https://127.0.0.1:1",
        headers: () => conn.headers(),
        close: () => {},
      }, { retries: 1, retryInitialMs: 1, retryMaxMs: 2 });
      await nodeAssert.rejects(
        dead.get(CONFIGMAPS, "r", { namespace: "default" }),
        /GET \/api\/v1/,
      );
    });
  } finally {
    await env.close();
  }
});

Deno.test("KubeClient.watch: events in order, bookmarks, abort, 410, server drop ends stream", async (t) => {
  const env = await startEnv({ bookmarkIntervalMs: 50 });
  const c = env.client;
  const s = env.server;
  try {
    const l = await c.list(CONFIGMAPS, { namespace: "default" });
    const rv0 = l.metadata.resourceVersion;

    await t.step("ADDED/MODIFIED/DELETED from a resourceVersion, then abort", async () => {
      const ac = new AbortController();
      const events: WatchEvent[] = [];
      const done = Promise.withResolvers<void>();
      const consumer = (async () => {
        for await (
          const ev of c.watch(CONFIGMAPS, {
            namespace: "default",
            resourceVersion: rv0,
            signal: ac.signal,
          })
        ) {
          if (ev.type === "BOOKMARK") continue;
          events.push(ev);
          if (events.length === 3) done.resolve();
        }
      })();
      await c.create(CONFIGMAPS, { metadata: { name: "w", namespace: "default" } });
      await c.patch(CONFIGMAPS, "w", { data: { a: "b" } }, "merge", { namespace: "default" });
      await c.delete(CONFIGMAPS, "w", { namespace: "default" });
      await deadline(done.promise, 5000, "three watch events");
      ac.abort();
      await deadline(consumer, 5000, "watch ends on abort");
      nodeAssert.deepEqual(events.map((e) => e.type), ["ADDED", "MODIFIED", "DELETED"]);
      nodeAssert.ok(events.every((e) => e.object.metadata.name === "w"));
    });

    await t.step("bookmarks arrive when asked for", async () => {
      const ac = new AbortController();
      for await (
        const ev of c.watch(CONFIGMAPS, {
          namespace: "default",
          resourceVersion: rv0,
          signal: ac.signal,
        })
      ) {
        if (ev.type === "BOOKMARK") {
          nodeAssert.match(String(ev.object.metadata.resourceVersion), /^\d+$/);
          break;
        }
      }
      ac.abort();
    });

    await t.step("a compacted resourceVersion throws isGone", async () => {
      await c.create(CONFIGMAPS, { metadata: { name: "c1", namespace: "default" } });
      s.compact();
      const err = await (async () => {
        for await (const _ of c.watch(CONFIGMAPS, { namespace: "default", resourceVersion: rv0 })) {
          // nothing expected before the error
        }
      })().catch((e) => e);
      nodeAssert.ok(err instanceof KubeApiError && err.isGone, String(err));
    });

    await t.step("dropWatches ends the iterator normally", async () => {
      const cur = await c.list(CONFIGMAPS, { namespace: "default" });
      const opened = Promise.withResolvers<void>();
      const consumer = (async () => {
        let n = 0;
        for await (
          const _ of c.watch(CONFIGMAPS, {
            namespace: "default",
            resourceVersion: cur.metadata.resourceVersion,
          })
        ) {
          n++;
          opened.resolve();
        }
        return n;
      })();
      await deadline(opened.promise, 5000, "first bookmark");
      s.faults.dropWatches();
      const n = await deadline(consumer, 5000, "stream end after drop");
      nodeAssert.ok(n >= 1);
    });

    await t.step("idle timeout reports a dead stream", async () => {
      const cur = await c.list(CONFIGMAPS, { namespace: "default" });
      const err = await (async () => {
        for await (
          const _ of c.watch(CONFIGMAPS, {
            namespace: "default",
            resourceVersion: cur.metadata.resourceVersion,
            allowWatchBookmarks: false,
            idleTimeoutMs: 100,
          })
        ) {
          // no events: nobody writes
        }
      })().catch((e) => e);
      nodeAssert.match(String(err), /no data for 100 ms/);
    });
  } finally {
    await env.close();
  }
});
