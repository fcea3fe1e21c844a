/**
 * Garbage collection by ownerReferences as watchers see it over HTTPS: a
 * replica's EndpointSlices go with its Pod (background, Foreground with
 * blocking dependents, Orphan), a reference to an owner already gone (or
 * recreated under the same name) gets its dependent collected, several
 * owners keep a dependent alive, cluster-scoped owners work across groups,
 * references the collector cannot resolve stay (with the
 * OwnerRefInvalidNamespace Event), and ownerReferences/DeleteOptions are
 * validated.
 * @module
 */

import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { startTestApiServer, type TestApiServer } from "./server.ts";
import { callJson, type OpenWatch, openWatch } from "./testing.ts";

type Obj = Record<string, unknown>;

const NS = "kubesphere-system";
const PODS = `/api/v1/namespaces/${NS}/pods`;
const SLICES = `/apis/discovery.k8s.io/v1/namespaces/${NS}/endpointslices`;

const meta = (o: Obj) => o.metadata as Obj;

/** A JSON call over HTTPS as the admin (DELETE bodies are DeleteOptions, as kubectl sends). */
const api = (s: TestApiServer, method: string, path: string, body?: unknown) =>
  callJson(s, method, path, body);

async function createPod(s: TestApiServer, name: string): Promise<Obj> {
  const r = await api(s, "POST", PODS, {
    metadata: { name, labels: { app: "tower-proxy" } },
    spec: { containers: [{ name: "proxy", image: "kubesphere/tower:v0.1.0" }] },
  });
  assertEquals(r.status, 201);
  return r.body;
}

/** The reference a replica puts on its slices (blockOwnerDeletion as the slice controllers do). */
function podRef(pod: Obj, block = false): Obj {
  return {
    apiVersion: "v1",
    kind: "Pod",
    name: meta(pod).name,
    uid: meta(pod).uid,
    ...(block ? { blockOwnerDeletion: true } : {}),
  };
}

async function createSlice(s: TestApiServer, name: string, owners: Obj[]): Promise<Obj> {
  const r = await api(s, "POST", SLICES, {
    metadata: {
      name,
      labels: { "kubernetes.io/service-name": name.replace(/-r\d$/, "") },
      ownerReferences: owners,
    },
    addressType: "IPv4",
    endpoints: [{ addresses: ["10.244.1.5"], conditions: { ready: true } }],
    ports: [{ name: "kubernetes", port: 6443 }],
  });
  assertEquals(r.status, 201, JSON.stringify(r.body));
  return r.body;
}

/** `TYPE name` of the watch's next `n` events. */
async function nextEvents(w: OpenWatch, n: number, what: string): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const e = await w.next(`${what} (event ${i + 1} of ${n})`);
    out.push(`${e.type} ${meta(e.object).name}`);
  }
  return out;
}

/** Watch slices and pods of the namespace from now on. */
async function watchBoth(s: TestApiServer): Promise<{ slices: OpenWatch; pods: OpenWatch }> {
  const rv = meta((await api(s, "GET", SLICES)).body).resourceVersion;
  return {
    slices: await openWatch(s, `${SLICES}?watch=true&resourceVersion=${rv}`),
    pods: await openWatch(s, `${PODS}?watch=true&resourceVersion=${rv}`),
  };
}

Deno.test("garbage collection: a replica's slices go with its Pod", async (t) => {
  const s = await startTestApiServer({ namespaces: [NS] });
  try {
    await t.step("background: DELETE the Pod, a watcher sees each slice DELETED", async () => {
      const [p0, p1] = [await createPod(s, "tower-0"), await createPod(s, "tower-1")];
      await createSlice(s, "mc-alpha-r0", [podRef(p0)]);
      await createSlice(s, "mc-beta-r0", [podRef(p0)]);
      await createSlice(s, "mc-alpha-r1", [podRef(p1)]);
      const { slices, pods } = await watchBoth(s);
      try {
        const del = await api(s, "DELETE", `${PODS}/tower-0`, {
          kind: "DeleteOptions",
          apiVersion: "v1",
          propagationPolicy: "Background",
        });
        assertEquals(del.status, 200);
        const podGone = await pods.next("pod DELETED");
        assertEquals([podGone.type, meta(podGone.object).name], ["DELETED", "tower-0"]);
        const events = [await slices.next("first slice"), await slices.next("second slice")];
        assertEquals(
          events.map((e) => `${e.type} ${meta(e.object).name}`).sort(),
          ["DELETED mc-alpha-r0", "DELETED mc-beta-r0"],
        );
        for (const e of events) {
          assert(
            Number(meta(e.object).resourceVersion) > Number(meta(podGone.object).resourceVersion),
            "dependents go after their owner",
          );
        }
        const left = await api(s, "GET", SLICES);
        assertEquals((left.body.items as Obj[]).map((o) => meta(o).name), ["mc-alpha-r1"]);
      } finally {
        await slices.stop();
        await pods.stop();
      }
    });

    await t.step("a slice owned by two Pods loses the dangling reference and stays", async () => {
      const p1 = (await api(s, "GET", `${PODS}/tower-1`)).body;
      const p2 = await createPod(s, "tower-2");
      await createSlice(s, "mc-gamma-r0", [podRef(p1), podRef(p2)]);
      const { slices, pods } = await watchBoth(s);
      try {
        assertEquals((await api(s, "DELETE", `${PODS}/tower-2`)).status, 200);
        const e = await slices.next("the reference removed");
        assertEquals([e.type, meta(e.object).name], ["MODIFIED", "mc-gamma-r0"]);
        assertEquals(meta(e.object).ownerReferences, [podRef(p1)]);
        const gone = await api(s, "DELETE", `${PODS}/tower-1`);
        assertEquals(gone.status, 200);
        assertEquals(
          (await nextEvents(slices, 2, "tower-1's slices")).sort(),
          ["DELETED mc-alpha-r1", "DELETED mc-gamma-r0"],
        );
      } finally {
        await slices.stop();
        await pods.stop();
      }
    });

    await t.step("Orphan: the Pod goes, its slices stay without the reference", async () => {
      const p = await createPod(s, "tower-3");
      await createSlice(s, "mc-alpha-r3", [podRef(p)]);
      const { slices, pods } = await watchBoth(s);
      try {
        const del = await api(s, "DELETE", `${PODS}/tower-3`, { propagationPolicy: "Orphan" });
        assertEquals(del.status, 200);
        assertEquals(
          meta(del.body).finalizers,
          ["orphan"],
          "answered while the orphan finalizer runs",
        );
        assert(meta(del.body).deletionTimestamp);
        const podEvents = await nextEvents(pods, 2, "pod with the orphan finalizer, then gone");
        assertEquals(podEvents, ["MODIFIED tower-3", "DELETED tower-3"]);
        const e = await slices.next("orphaned slice");
        assertEquals([e.type, meta(e.object).name], ["MODIFIED", "mc-alpha-r3"]);
        assertEquals(meta(e.object).ownerReferences, undefined);
        assertEquals((await api(s, "GET", `${SLICES}/mc-alpha-r3`)).status, 200);
        assertEquals((await api(s, "GET", `${PODS}/tower-3`)).status, 404);
      } finally {
        await slices.stop();
        await pods.stop();
      }
    });

    await t.step("?orphanDependents=true is Orphan too", async () => {
      const p = await createPod(s, "tower-4");
      await createSlice(s, "mc-beta-r4", [podRef(p)]);
      assertEquals((await api(s, "DELETE", `${PODS}/tower-4?orphanDependents=true`)).status, 200);
      const slice = await api(s, "GET", `${SLICES}/mc-beta-r4`);
      assertEquals([slice.status, meta(slice.body).ownerReferences], [200, undefined]);
    });

    await t.step("Foreground: slices first; a blocking dependent holds the Pod", async () => {
      const p = await createPod(s, "tower-5");
      await createSlice(s, "mc-alpha-r5", [podRef(p, true)]);
      await createSlice(s, "mc-beta-r5", [podRef(p)]);
      const held = await api(s, "POST", SLICES, {
        metadata: {
          name: "mc-gamma-r5",
          finalizers: ["example.com/hold"],
          ownerReferences: [podRef(p, true)],
        },
        addressType: "IPv4",
      });
      assertEquals(held.status, 201);
      const { slices, pods } = await watchBoth(s);
      try {
        const del = await api(s, "DELETE", `${PODS}/tower-5`, { propagationPolicy: "Foreground" });
        assertEquals(del.status, 200);
        assertEquals(meta(del.body).finalizers, ["foregroundDeletion"]);
        assertEquals(await nextEvents(pods, 1, "pod deleting"), ["MODIFIED tower-5"]);
        assertEquals(
          (await nextEvents(slices, 3, "dependents deleted")).sort(),
          ["DELETED mc-alpha-r5", "DELETED mc-beta-r5", "MODIFIED mc-gamma-r5"],
        );
        const waiting = await api(s, "GET", `${PODS}/tower-5`);
        assertEquals([waiting.status, meta(waiting.body).finalizers], [200, [
          "foregroundDeletion",
        ]]);
        const release = await api(s, "GET", `${SLICES}/mc-gamma-r5`);
        assert(meta(release.body).deletionTimestamp, "the held dependent is being deleted");
        (meta(release.body) as Obj).finalizers = [];
        assertEquals((await api(s, "PUT", `${SLICES}/mc-gamma-r5`, release.body)).status, 200);
        assertEquals(await nextEvents(slices, 1, "held slice gone"), ["DELETED mc-gamma-r5"]);
        assertEquals(await nextEvents(pods, 1, "finalizer removed: pod gone"), ["DELETED tower-5"]);
      } finally {
        await slices.stop();
        await pods.stop();
      }
    });
  } finally {
    await s.close();
  }
});

Deno.test("garbage collection: references to owners that are not there", async (t) => {
  const s = await startTestApiServer({ namespaces: [NS] });
  try {
    await t.step("owner already gone: 201, then the dependent is collected", async () => {
      const p = await createPod(s, "tower-0");
      assertEquals((await api(s, "DELETE", `${PODS}/tower-0`)).status, 200);
      const { slices, pods } = await watchBoth(s);
      try {
        await createSlice(s, "mc-alpha-r0", [podRef(p)]);
        assertEquals(
          await nextEvents(slices, 2, "created, then collected"),
          ["ADDED mc-alpha-r0", "DELETED mc-alpha-r0"],
        );
      } finally {
        await slices.stop();
        await pods.stop();
      }
    });

    await t.step("same name, another uid: the old reference is dangling", async () => {
      const old = await createPod(s, "tower-1");
      assertEquals((await api(s, "DELETE", `${PODS}/tower-1`)).status, 200);
      const now = await createPod(s, "tower-1");
      assert(meta(old).uid !== meta(now).uid);
      const { slices, pods } = await watchBoth(s);
      try {
        await createSlice(s, "mc-alpha-r1", [podRef(old)]);
        await createSlice(s, "mc-beta-r1", [podRef(now)]);
        assertEquals(
          await nextEvents(slices, 3, "stale reference collected"),
          ["ADDED mc-alpha-r1", "DELETED mc-alpha-r1", "ADDED mc-beta-r1"],
        );
      } finally {
        await slices.stop();
        await pods.stop();
      }
    });

    await t.step("cross-namespace reference: dangling, with OwnerRefInvalidNamespace", async () => {
      const other = await api(s, "POST", "/api/v1/namespaces/default/configmaps", {
        metadata: { name: "not-here" },
      });
      const r = await api(s, "POST", `/api/v1/namespaces/${NS}/configmaps`, {
        metadata: {
          name: "cross",
          ownerReferences: [{
            apiVersion: "v1",
            kind: "ConfigMap",
            name: "not-here",
            uid: meta(other.body).uid,
          }],
        },
      });
      assertEquals(r.status, 201);
      assertEquals((await api(s, "GET", `/api/v1/namespaces/${NS}/configmaps/cross`)).status, 404);
      const ev = await api(
        s,
        "GET",
        `/api/v1/namespaces/${NS}/events?fieldSelector=reason%3DOwnerRefInvalidNamespace`,
      );
      const items = ev.body.items as Obj[];
      assertEquals(items.length, 1);
      assertEquals(items[0].type, "Warning");
      assertEquals((items[0].involvedObject as Obj).name, "cross");
      assertEquals(
        items[0].message,
        `ownerRef [v1/ConfigMap, namespace: ${NS}, name: not-here, uid: ${
          meta(other.body).uid
        }] does not exist in namespace "${NS}"`,
      );
    });

    await t.step("unresolvable references are left alone", async () => {
      const unknown = await api(s, "POST", `/api/v1/namespaces/${NS}/configmaps`, {
        metadata: {
          name: "widget-owned",
          ownerReferences: [{
            apiVersion: "example.com/v1",
            kind: "Widget",
            name: "w",
            uid: crypto.randomUUID(),
          }],
        },
      });
      assertEquals(unknown.status, 201);
      const p = await createPod(s, "tower-2");
      const role = await api(s, "POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", {
        metadata: { name: "tower-replica", ownerReferences: [podRef(p)] },
        rules: [],
      });
      assertEquals(role.status, 201);
      assertEquals((await api(s, "DELETE", `${PODS}/tower-2`)).status, 200);
      // The collector has run before a write is answered.
      const widget = await api(s, "GET", `/api/v1/namespaces/${NS}/configmaps/widget-owned`);
      assertEquals(widget.status, 200, "unserved owner kind: never collected");
      const kept = await api(
        s,
        "GET",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/tower-replica",
      );
      assertEquals(
        kept.status,
        200,
        "cluster-scoped dependent of a namespaced kind: never collected",
      );
      const ev = await api(
        s,
        "GET",
        "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dtower-replica",
      );
      assertEquals(
        (ev.body.items as Obj[]).map((e) => e.reason).at(-1),
        "OwnerRefInvalidNamespace",
      );
    });
  } finally {
    await s.close();
  }
});

Deno.test("garbage collection is general: cluster-scoped owners, any kind", async () => {
  const s = await startTestApiServer({ namespaces: [NS] });
  try {
    const node = (await api(s, "GET", "/api/v1/nodes/node-2")).body;
    const deploy = await api(s, "POST", `/apis/apps/v1/namespaces/${NS}/deployments`, {
      metadata: {
        name: "tower-proxy",
        ownerReferences: [{ apiVersion: "v1", kind: "Node", name: "node-2", uid: meta(node).uid }],
      },
      spec: {
        selector: { matchLabels: { app: "p" } },
        template: { metadata: { labels: { app: "p" } } },
      },
    });
    assertEquals(deploy.status, 201);
    const svc = await api(s, "POST", `/api/v1/namespaces/${NS}/services`, {
      metadata: {
        name: "mc-alpha",
        ownerReferences: [{
          apiVersion: "apps/v1",
          kind: "Deployment",
          name: "tower-proxy",
          uid: meta(deploy.body).uid,
          controller: true,
        }],
      },
      spec: { ports: [{ port: 6443 }] },
    });
    assertEquals(svc.status, 201);
    const w = await openWatch(
      s,
      `/api/v1/namespaces/${NS}/services?watch=true&resourceVersion=${
        meta(svc.body).resourceVersion
      }`,
    );
    try {
      assertEquals((await api(s, "DELETE", "/api/v1/nodes/node-2")).status, 200);
      const e = await w.next("the Service, two levels down");
      assertEquals([e.type, meta(e.object).name], ["DELETED", "mc-alpha"]);
      assertEquals(
        (await api(s, "GET", `/apis/apps/v1/namespaces/${NS}/deployments/tower-proxy`)).status,
        404,
      );
    } finally {
      await w.stop();
    }
  } finally {
    await s.close();
  }
});

Deno.test("ownerReferences and DeleteOptions are validated as the real server", async () => {
  const s = await startTestApiServer({ namespaces: [NS] });
  try {
    const bad = await api(s, "POST", `/api/v1/namespaces/${NS}/configmaps`, {
      metadata: {
        name: "bad",
        ownerReferences: [{ apiVersion: "v1", kind: "Pod", name: "tower-0" }],
      },
    });
    assertEquals(bad.status, 422);
    assertEquals(
      bad.body.message,
      'ConfigMap "bad" is invalid: metadata.ownerReferences.uid: Invalid value: "": uid must not be empty',
    );
    const two = await api(s, "POST", `/api/v1/namespaces/${NS}/configmaps`, {
      metadata: {
        name: "bad",
        ownerReferences: ["a", "b"].map((n) => ({
          apiVersion: "v1",
          kind: "ConfigMap",
          name: n,
          uid: crypto.randomUUID(),
          controller: true,
        })),
      },
    });
    assertEquals(two.status, 422);
    assertMatch(
      String(two.body.message),
      /Only one reference can have Controller set to true\. Found "true" in references for ConfigMap\/a and ConfigMap\/b/,
    );
    const policy = await api(s, "DELETE", "/api/v1/namespaces/default/pods/web-0", {
      propagationPolicy: "Cascade",
    });
    assertEquals(policy.status, 422);
    assertEquals(
      policy.body.message,
      'DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Unsupported value: "Cascade": supported values: "Foreground", "Background", "Orphan", "nil"',
    );
    const both = await api(s, "DELETE", "/api/v1/namespaces/default/pods/web-0", {
      propagationPolicy: "Orphan",
      orphanDependents: true,
    });
    assertEquals(both.status, 422);
    assertEquals((await api(s, "GET", "/api/v1/namespaces/default/pods/web-0")).status, 200);
  } finally {
    await s.close();
  }
});
