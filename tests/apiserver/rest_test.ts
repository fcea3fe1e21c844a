/**
 * Semantics of the test API server that controllers depend on: metadata,
 * AlreadyExists/Conflict/NotFound, patches, finalizers, selectors, watch
 * (events, BOOKMARK, 410 Gone, timeoutSeconds), Services, CRDs, events,
 * authentication and the fault switches.
 * @module
 */

import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { startTestApiServer, type TestApiServer } from "./server.ts";
import { deadline, httpClient, watchEvents } from "./testing.ts";
import { serverTls } from "./tls.ts";

type Obj = Record<string, unknown>;

const CM = "/api/v1/namespaces/default/configmaps";

function meta(o: Obj): Obj {
  return o.metadata as Obj;
}

async function openWatch(
  s: TestApiServer,
  client: Deno.HttpClient,
  path: string,
): Promise<{ events: AsyncGenerator<{ type: string; object: Obj }>; stop: () => Promise<void> }> {
  const ac = new AbortController();
  const res = await fetch(`${s.url}${path}`, { client, signal: ac.signal });
  assertEquals(res.status, 200);
  const events = watchEvents(res.body!);
  return {
    events,
    stop: async () => {
      ac.abort();
      await events.return(undefined).catch(() => {});
    },
  };
}

async function next(
  events: AsyncGenerator<{ type: string; object: Obj }>,
  what: string,
): Promise<{ type: string; object: Obj }> {
  const r = await deadline(events.next(), 5000, what);
  assert(!r.done, `stream ended before ${what}`);
  return r.value;
}

Deno.test("test API server semantics", async (t) => {
  const s = await startTestApiServer({ tokens: ["s3cret-token"], bookmarkIntervalMs: 100 });
  const client = httpClient(s);
  try {
    await t.step("create sets metadata; second create is 409 AlreadyExists", async () => {
      const r = await s.request("POST", CM, { metadata: { name: "a" }, data: { k: "v" } });
      assertEquals(r.status, 201);
      const m = meta(r.body);
      assertMatch(String(m.uid), /^[0-9a-f-]{36}$/);
      assertMatch(String(m.creationTimestamp), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
      assertEquals(m.generation, undefined, "ConfigMaps have no generation");
      assertMatch(String(m.resourceVersion), /^\d+$/);
      const again = await s.request("POST", CM, { metadata: { name: "a" } });
      assertEquals(again.status, 409);
      assertEquals(again.body.kind, "Status");
      assertEquals(again.body.reason, "AlreadyExists");
      assertEquals(again.body.message, 'configmaps "a" already exists');
    });

    await t.step("get of a missing object is 404 NotFound Status", async () => {
      const r = await s.request("GET", `${CM}/missing`);
      assertEquals(r.status, 404);
      assertEquals(r.body.reason, "NotFound");
      assertEquals(r.body.status, "Failure");
      assertEquals((r.body.details as Obj).name, "missing");
      const ns = await s.request("POST", "/api/v1/namespaces/nope/configmaps", {
        metadata: { name: "x" },
      });
      assertEquals(ns.status, 404);
    });

    await t.step("stale resourceVersion is 409 Conflict; revisions increase", async () => {
      const cur = (await s.request("GET", `${CM}/a`)).body;
      const rv0 = Number(meta(cur).resourceVersion);
      const ok = await s.request("PUT", `${CM}/a`, { ...cur, data: { k: "v2" } });
      assertEquals(ok.status, 200);
      assert(Number(meta(ok.body).resourceVersion) > rv0, "resourceVersion must increase");
      const stale = await s.request("PUT", `${CM}/a`, { ...cur, data: { k: "v3" } });
      assertEquals(stale.status, 409);
      assertEquals(stale.body.reason, "Conflict");
      // A no-op update writes nothing.
      const same = await s.request("PUT", `${CM}/a`, ok.body);
      assertEquals(meta(same.body).resourceVersion, meta(ok.body).resourceVersion);
    });

    await t.step("merge patch, JSON patch and strategic merge patch", async () => {
      const mp = await s.request(
        "PATCH",
        `${CM}/a`,
        { data: { k: null, m: "1" } },
        "application/merge-patch+json",
      );
      assertEquals(mp.body.data, { m: "1" });
      const jp = await s.request(
        "PATCH",
        `${CM}/a`,
        [{ op: "add", path: "/data/j", value: "2" }, { op: "remove", path: "/data/m" }],
        "application/json-patch+json",
      );
      assertEquals(jp.body.data, { j: "2" });
      const svc = await s.request("POST", "/api/v1/namespaces/default/services", {
        metadata: { name: "smp" },
        spec: { ports: [{ name: "a", port: 80 }, { name: "b", port: 81 }] },
      });
      assertEquals(svc.status, 201);
      const sp = await s.request(
        "PATCH",
        "/api/v1/namespaces/default/services/smp",
        { spec: { ports: [{ port: 81, targetPort: 9091 }] } },
        "application/strategic-merge-patch+json",
      );
      const ports = (sp.body.spec as Obj).ports as Obj[];
      assertEquals(ports.map((p) => [p.port, p.targetPort]), [[80, 80], [81, 9091]]);
    });

    await t.step("built-ins like Leases have no generation", async () => {
      const r = await s.request("POST", "/apis/coordination.k8s.io/v1/namespaces/default/leases", {
        metadata: { name: "l" },
        spec: { holderIdentity: "a" },
      });
      assertEquals(r.status, 201);
      assertEquals(meta(r.body).generation, undefined);
    });

    await t.step("finalizers: delete sets deletionTimestamp, last finalizer removes", async () => {
      await s.request("POST", CM, { metadata: { name: "fin", finalizers: ["x/y", "x/z"] } });
      const d = await s.request("DELETE", `${CM}/fin`);
      assertEquals(d.status, 200);
      assert(meta(d.body).deletionTimestamp, "deletionTimestamp set");
      assertEquals((await s.request("GET", `${CM}/fin`)).status, 200);
      const one = await s.request(
        "PATCH",
        `${CM}/fin`,
        { metadata: { finalizers: ["x/z"] } },
        "application/merge-patch+json",
      );
      assertEquals(one.status, 200);
      assertEquals((await s.request("GET", `${CM}/fin`)).status, 200);
      const added = await s.request(
        "PATCH",
        `${CM}/fin`,
        { metadata: { finalizers: ["x/z", "x/new"] } },
        "application/merge-patch+json",
      );
      assertEquals(added.status, 422, "no new finalizers while deleting");
      await s.request(
        "PATCH",
        `${CM}/fin`,
        { metadata: { finalizers: null } },
        "application/merge-patch+json",
      );
      assertEquals((await s.request("GET", `${CM}/fin`)).status, 404);
    });

    await t.step("garbage collection of dependents by ownerReferences", async () => {
      const owner = (await s.request("POST", CM, { metadata: { name: "owner" } })).body;
      const ref = [{ apiVersion: "v1", kind: "ConfigMap", name: "owner", uid: meta(owner).uid }];
      await s.request("POST", "/api/v1/namespaces/default/secrets", {
        metadata: { name: "dep", ownerReferences: ref },
      });
      await s.request("POST", CM, { metadata: { name: "dep2", ownerReferences: ref } });
      await s.request("DELETE", `${CM}/owner`);
      assertEquals((await s.request("GET", "/api/v1/namespaces/default/secrets/dep")).status, 404);
      assertEquals((await s.request("GET", `${CM}/dep2`)).status, 404);
      const owner2 = (await s.request("POST", CM, { metadata: { name: "owner2" } })).body;
      await s.request("POST", CM, {
        metadata: {
          name: "dep3",
          ownerReferences: [{
            apiVersion: "v1",
            kind: "ConfigMap",
            name: "owner2",
            uid: meta(owner2).uid,
          }],
        },
      });
      await s.request("DELETE", `${CM}/owner2?propagationPolicy=Orphan`);
      const orphan = await s.request("GET", `${CM}/dep3`);
      assertEquals([orphan.status, meta(orphan.body).ownerReferences], [200, undefined]);
    });

    await t.step("labelSelector, fieldSelector and list resourceVersion", async () => {
      for (const [name, tier] of [["l1", "web"], ["l2", "db"], ["l3", "web"]]) {
        await s.request("POST", CM, { metadata: { name, labels: { tier } } });
      }
      const names = async (q: string) =>
        ((await s.request("GET", `${CM}?${q}`)).body.items as Obj[]).map((o) => meta(o).name);
      assertEquals(await names("labelSelector=tier%3Dweb"), ["l1", "l3"]);
      assertEquals(await names("labelSelector=tier%20in%20(db)"), ["l2"]);
      assertEquals(await names("labelSelector=tier!%3Dweb,tier"), ["l2"]);
      assertEquals(await names("fieldSelector=metadata.name%3Dl3"), ["l3"]);
      const unsupported = await s.request("GET", `${CM}?fieldSelector=data.k%3Dv`);
      assertEquals([unsupported.status, unsupported.body.message], [
        400,
        "field label not supported: data.k",
      ]);
      const list = await s.request("GET", CM);
      assertEquals(meta(list.body).resourceVersion, String(s.core.store.revision));
      const page = await s.request("GET", `${CM}?limit=2`);
      assertEquals((page.body.items as Obj[]).length, 2);
      assert(meta(page.body).continue, "continue token");
    });

    await t.step("watch streams ADDED/MODIFIED/DELETED and BOOKMARK over HTTPS", async () => {
      const list = await s.request("GET", CM);
      const rv = meta(list.body).resourceVersion;
      const w = await openWatch(
        s,
        client,
        `${CM}?watch=true&resourceVersion=${rv}&allowWatchBookmarks=true`,
      );
      try {
        await s.request("POST", CM, { metadata: { name: "w" } });
        await s.request("PATCH", `${CM}/w`, { data: { a: "b" } }, "application/merge-patch+json");
        await s.request("DELETE", `${CM}/w`);
        const seen: string[] = [];
        while (seen.filter((x) => x !== "BOOKMARK").length < 3) {
          const e = await next(w.events, "watch events");
          if (e.type !== "BOOKMARK") assertEquals(meta(e.object).name, "w");
          seen.push(e.type);
        }
        assertEquals(seen.filter((x) => x !== "BOOKMARK"), ["ADDED", "MODIFIED", "DELETED"]);
        let e = await next(w.events, "bookmark");
        while (e.type !== "BOOKMARK") e = await next(w.events, "bookmark");
        assertEquals(meta(e.object).resourceVersion, String(s.core.store.revision));
      } finally {
        await w.stop();
      }
    });

    await t.step("watch from a compacted resourceVersion gets 410 Gone", async () => {
      const rv = s.core.store.revision;
      await s.request("POST", CM, { metadata: { name: "after-compaction" } });
      s.compact();
      const w = await openWatch(s, client, `${CM}?watch=true&resourceVersion=${rv}`);
      try {
        const e = await next(w.events, "error event");
        assertEquals(e.type, "ERROR");
        assertEquals(e.object.code, 410);
        assertEquals(e.object.reason, "Expired");
        assertEquals((await deadline(w.events.next(), 5000, "end")).done, true);
      } finally {
        await w.stop();
      }
      const exact = await s.request(
        "GET",
        `${CM}?resourceVersion=${rv}&resourceVersionMatch=Exact`,
      );
      assertEquals(exact.status, 410);
    });

    await t.step(
      "watch without resourceVersion starts with ADDED; timeoutSeconds ends it",
      async () => {
        const w = await openWatch(
          s,
          client,
          `${CM}?watch=true&timeoutSeconds=1&fieldSelector=metadata.name%3Da`,
        );
        try {
          const e = await next(w.events, "initial ADDED");
          assertEquals([e.type, meta(e.object).name], ["ADDED", "a"]);
          assertEquals((await deadline(w.events.next(), 5000, "timeout end")).done, true);
        } finally {
          await w.stop();
        }
      },
    );

    await t.step("services: ClusterIP, nodePorts, status subresource", async () => {
      const base = "/api/v1/namespaces/default/services";
      const lb = await s.request("POST", base, {
        metadata: { name: "lb" },
        spec: { type: "LoadBalancer", ports: [{ name: "k", port: 6443 }] },
      });
      const spec = lb.body.spec as Obj;
      assertMatch(String(spec.clusterIP), /^10\.(9[6-9]|10[0-9]|11[01])\.\d+\.\d+$/);
      const np = (spec.ports as Obj[])[0].nodePort as number;
      assert(np >= 30000 && np <= 32767, `nodePort ${np}`);
      const clash = await s.request("POST", base, {
        metadata: { name: "clash" },
        spec: { type: "NodePort", ports: [{ port: 1, nodePort: np }] },
      });
      assertEquals([clash.status, clash.body.reason], [422, "Invalid"]);
      const ignored = await s.request("PATCH", `${base}/lb`, {
        status: { loadBalancer: { ingress: [{ ip: "1.2.3.4" }] } },
      }, "application/merge-patch+json");
      assertEquals(ignored.body.status, { loadBalancer: {} });
      const st = await s.request("PATCH", `${base}/lb/status`, {
        status: { loadBalancer: { ingress: [{ ip: "1.2.3.4" }] } },
      }, "application/merge-patch+json");
      assertEquals(st.body.status, { loadBalancer: { ingress: [{ ip: "1.2.3.4" }] } });
      const upd = await s.request("PUT", `${base}/lb`, {
        ...st.body,
        spec: { type: "LoadBalancer", ports: [{ name: "k", port: 6443 }] },
      });
      assertEquals((upd.body.spec as Obj).clusterIP, spec.clusterIP, "clusterIP kept");
      assertEquals(((upd.body.spec as Obj).ports as Obj[])[0].nodePort, np, "nodePort kept");
    });

    await t.step("CRDs serve their resources, with or without status", async () => {
      const crd = (scope: string, status: boolean) => ({
        apiVersion: "apiextensions.k8s.io/v1",
        kind: "CustomResourceDefinition",
        metadata: { name: `widgets${status ? "s" : ""}.example.com` },
        spec: {
          group: "example.com",
          scope,
          names: { kind: `Widget${status ? "S" : ""}`, plural: `widgets${status ? "s" : ""}` },
          versions: [{
            name: "v1",
            served: true,
            storage: true,
            subresources: status ? { status: {} } : undefined,
            schema: {
              openAPIV3Schema: {
                type: "object",
                properties: {
                  spec: { type: "object", properties: { size: { type: "integer" } } },
                  status: { type: "object", properties: { ok: { type: "boolean" } } },
                },
              },
            },
          }],
        },
      });
      const crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
      assertEquals((await s.request("POST", crds, crd("Namespaced", true))).status, 201);
      assertEquals((await s.request("POST", crds, crd("Cluster", false))).status, 201);
      const nsBase = "/apis/example.com/v1/namespaces/default/widgetss";
      const w = await s.request("POST", nsBase, {
        apiVersion: "example.com/v1",
        kind: "WidgetS",
        metadata: { name: "w1" },
        spec: { size: 1, extra: "pruned" },
        status: { ok: true },
      });
      assertEquals(w.status, 201);
      assertEquals(w.body.spec, { size: 1 }, "unknown fields pruned");
      assertEquals(w.body.status, undefined, "status dropped on create with subresource");
      const st = await s.request(
        "PATCH",
        `${nsBase}/w1/status`,
        { status: { ok: true } },
        "application/merge-patch+json",
      );
      assertEquals(st.body.status, { ok: true });
      assertEquals(meta(st.body).generation, 1, "status writes leave generation alone");
      const lbl = await s.request(
        "PATCH",
        `${nsBase}/w1`,
        { metadata: { labels: { a: "b" } } },
        "application/merge-patch+json",
      );
      assertEquals(meta(lbl.body).generation, 1, "metadata writes leave generation alone");
      const sp = await s.request(
        "PATCH",
        `${nsBase}/w1`,
        { spec: { size: 2 } },
        "application/merge-patch+json",
      );
      assertEquals(meta(sp.body).generation, 2, "spec writes bump generation");
      const noRv = { ...sp.body, metadata: { ...meta(sp.body), resourceVersion: undefined } };
      const uncond = await s.request("PUT", `${nsBase}/w1`, noRv);
      assertEquals(
        [uncond.status, uncond.body.reason],
        [422, "Invalid"],
        "CRs need a resourceVersion",
      );
      const bad = await s.request(
        "PATCH",
        `${nsBase}/w1`,
        { spec: { size: "big" } },
        "application/merge-patch+json",
      );
      assertEquals([bad.status, bad.body.reason], [422, "Invalid"]);
      const cl = await s.request("POST", "/apis/example.com/v1/widgets", {
        apiVersion: "example.com/v1",
        kind: "Widget",
        metadata: { name: "c1" },
        status: { ok: true },
      });
      assertEquals(cl.body.status, { ok: true }, "no status subresource: status kept");
      const cs = await s.request("PATCH", "/apis/example.com/v1/widgets/c1", {
        status: { ok: false },
      }, "application/merge-patch+json");
      assertEquals(
        meta(cs.body).generation,
        2,
        "no status subresource: status writes bump generation",
      );
      await s.request("PATCH", "/apis/example.com/v1/widgets/c1", {
        metadata: { finalizers: ["x/y"] },
      }, "application/merge-patch+json");
      const dl = await s.request("DELETE", "/apis/example.com/v1/widgets/c1");
      assertEquals(meta(dl.body).generation, 3, "deletion with finalizers bumps generation");
      assertEquals((await s.request("GET", "/apis/example.com/v1/widgets/c1/status")).status, 404);
      const del = await s.request("DELETE", `${crds}/widgetss.example.com`);
      assertEquals(del.status, 200);
      assertEquals((await s.request("GET", `${nsBase}/w1`)).status, 404);
    });

    await t.step("core/v1 and events.k8s.io/v1 events share storage", async () => {
      await s.request("POST", "/api/v1/namespaces/default/events", {
        metadata: { name: "e1" },
        involvedObject: { kind: "Pod", name: "web-0" },
        reason: "Test",
        message: "hello",
        type: "Normal",
      });
      const v1 = await s.request("GET", "/apis/events.k8s.io/v1/namespaces/default/events/e1");
      assertEquals([v1.body.note, (v1.body.regarding as Obj).name], ["hello", "web-0"]);
    });

    await t.step("authentication: client cert or token, else 401 Status", async () => {
      const anon = httpClient(s, "none");
      try {
        const r = await fetch(`${s.url}/api/v1/namespaces`, { client: anon });
        const body = await r.json();
        assertEquals([r.status, body.kind, body.reason], [401, "Status", "Unauthorized"]);
        const tok = await fetch(`${s.url}/api/v1/namespaces`, {
          client: anon,
          headers: { authorization: "Bearer s3cret-token" },
        });
        assertEquals(tok.status, 200);
        await tok.body?.cancel();
        const bad = await fetch(`${s.url}/api/v1/namespaces`, {
          client: anon,
          headers: { authorization: "Bearer wrong" },
        });
        assertEquals(bad.status, 401);
        await bad.body?.cancel();
      } finally {
        anon.close();
      }
      const foreign = await serverTls();
      const stranger = await foreign.issueClient("kubernetes-admin", ["system:masters"]);
      const c3 = httpClient(s, stranger);
      try {
        const r = await fetch(`${s.url}/api/v1/namespaces`, { client: c3 });
        assertEquals(r.status, 401, "a certificate from another CA is refused");
        await r.body?.cancel();
      } finally {
        c3.close();
      }
      const other = await s.tls.issueClient("someone", ["devs"]);
      const c2 = httpClient(s, other);
      try {
        const r = await fetch(`${s.url}/api/v1/namespaces`, { client: c2 });
        assertEquals(r.status, 200);
        await r.body?.cancel();
      } finally {
        c2.close();
      }
    });

    await t.step("faults: failNext, dropWatches, restart", async () => {
      s.faults.failNext(2, 429);
      for (let i = 0; i < 2; i++) {
        const r = await fetch(`${s.url}${CM}/a`, { client });
        assertEquals([r.status, r.headers.get("retry-after")], [429, "1"]);
        assertEquals((await r.json()).reason, "TooManyRequests");
      }
      const ok = await fetch(`${s.url}${CM}/a`, { client });
      assertEquals(ok.status, 200);
      await ok.body?.cancel();
      s.faults.failNext(1, 500, (m) => m === "PUT");
      const g = await fetch(`${s.url}${CM}/a`, { client });
      assertEquals(g.status, 200, "GET not matched");
      const cur = await g.json();
      const put = await fetch(`${s.url}${CM}/a`, {
        client,
        method: "PUT",
        body: JSON.stringify(cur),
      });
      assertEquals(put.status, 500);
      await put.body?.cancel();

      s.faults.failNext(1, 409);
      const c409 = await fetch(`${s.url}${CM}/a`, { client });
      assertEquals([c409.status, (await c409.json()).reason], [409, "Conflict"]);
      s.faults.delay(150);
      const t0 = performance.now();
      const slow = await fetch(`${s.url}${CM}/a`, { client });
      await slow.body?.cancel();
      assert(performance.now() - t0 >= 140, "delayed response");
      s.faults.delay(0);

      const w = await openWatch(
        s,
        client,
        `${CM}?watch=true&resourceVersion=${s.core.store.revision}`,
      );
      try {
        assertEquals(s.faults.openWatches, 1);
        s.faults.dropWatches();
        assertEquals((await deadline(w.events.next(), 5000, "dropped")).done, true);
      } finally {
        await w.stop();
      }

      await s.restart({ keepState: true });
      const kept = await fetch(`${s.url}${CM}/a`, { client });
      assertEquals(kept.status, 200);
      await kept.body?.cancel();
      const rvBefore = s.core.store.revision;
      await s.restart({ keepState: false });
      const lost = await fetch(`${s.url}${CM}/a`, { client });
      assertEquals(lost.status, 404);
      await lost.body?.cancel();
      const fixture = await fetch(`${s.url}/api/v1/namespaces/default/pods/web-0`, { client });
      assertEquals(fixture.status, 200);
      await fixture.body?.cancel();
      assert(s.core.store.revision > rvBefore, "revisions keep increasing after a state loss");
    });
  } finally {
    client.close();
    await s.close();
  }
});
