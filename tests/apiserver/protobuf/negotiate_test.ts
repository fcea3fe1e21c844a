/**
 * Protobuf over HTTPS against the test API server, as client-go's typed
 * clients speak it: protobuf bodies in, objects/lists/`Status`/watch events
 * out when `Accept` prefers protobuf; custom resources and kinds without a
 * protobuf form refuse protobuf bodies (415) and answer JSON (406 when
 * nothing else is acceptable); plain JSON clients see no change.
 * @module
 */

import { assert, assertEquals, assertMatch, assertStringIncludes } from "../../helpers/assert.ts";
import { startTestApiServer, type TestApiServer } from "../server.ts";
import { deadline, httpClient } from "../testing.ts";
import { decodeObject, encodeObject, protobufWatchEvents } from "./codec.ts";

const PB = "application/vnd.kubernetes.protobuf";
const TYPED = `${PB}, application/json`;

type Obj = Record<string, unknown>;

async function call(
  s: TestApiServer,
  method: string,
  path: string,
  opts: { accept?: string; body?: Uint8Array<ArrayBuffer> | string; contentType?: string } = {},
): Promise<{ status: number; type: string; bytes: Uint8Array }> {
  const client = httpClient(s);
  try {
    const headers: Record<string, string> = {};
    if (opts.accept) headers.accept = opts.accept;
    if (opts.contentType) headers["content-type"] = opts.contentType;
    const r = await fetch(`${s.url}${path}`, { method, headers, body: opts.body, client });
    const bytes = new Uint8Array(await r.arrayBuffer());
    return { status: r.status, type: r.headers.get("content-type") ?? "", bytes };
  } finally {
    client.close();
  }
}

const json = (b: Uint8Array) => JSON.parse(new TextDecoder().decode(b));

const CLUSTER_CRD = {
  apiVersion: "apiextensions.k8s.io/v1",
  kind: "CustomResourceDefinition",
  metadata: { name: "clusters.cluster.kubesphere.io" },
  spec: {
    group: "cluster.kubesphere.io",
    scope: "Cluster",
    names: { plural: "clusters", singular: "cluster", kind: "Cluster", listKind: "ClusterList" },
    versions: [{
      name: "v1alpha1",
      served: true,
      storage: true,
      schema: {
        openAPIV3Schema: {
          type: "object",
          properties: { spec: { type: "object", x_kubernetes_preserve_unknown_fields: true } },
        },
      },
    }],
  },
};

Deno.test("protobuf negotiation over HTTPS", async (t) => {
  const s = await startTestApiServer({ namespaces: ["pb"] });
  try {
    await t.step("a protobuf create is stored and answered in protobuf", async () => {
      const body = encodeObject({
        apiVersion: "v1",
        kind: "ConfigMap",
        metadata: { name: "cfg", labels: { tier: "web" } },
        data: { a: "1" },
        binaryData: { raw: "AP8=" },
      });
      const r = await call(s, "POST", "/api/v1/namespaces/pb/configmaps", {
        accept: TYPED,
        contentType: PB,
        body,
      });
      assertEquals([r.status, r.type], [201, PB]);
      const created = decodeObject(r.bytes);
      const meta = created.metadata as Obj;
      assertEquals([created.kind, meta.name, meta.namespace], ["ConfigMap", "cfg", "pb"]);
      assertMatch(String(meta.uid), /^[0-9a-f-]{36}$/);
      assertMatch(String(meta.creationTimestamp), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
      const stored = await s.request("GET", "/api/v1/namespaces/pb/configmaps/cfg");
      assertEquals(stored.body.data, { a: "1" });
      assertEquals(stored.body.binaryData, { raw: "AP8=" });
      assertEquals(stored.body.metadata.resourceVersion, meta.resourceVersion);
    });

    await t.step("get and list answer protobuf; JSON clients still get JSON", async () => {
      const one = await call(s, "GET", "/api/v1/namespaces/pb", { accept: TYPED });
      assertEquals(one.type, PB);
      assertEquals((decodeObject(one.bytes).status as Obj).phase, "Active");
      const list = await call(s, "GET", "/api/v1/namespaces/pb/configmaps?labelSelector=tier", {
        accept: TYPED,
      });
      const decoded = decodeObject(list.bytes);
      assertEquals(decoded.kind, "ConfigMapList");
      assertEquals((decoded.items as Obj[]).map((i) => (i.metadata as Obj).name), ["cfg"]);
      assertMatch(String((decoded.metadata as Obj).resourceVersion), /^\d+$/);
      const plain = await call(s, "GET", "/api/v1/namespaces/pb/configmaps/cfg");
      assertEquals(plain.type, "application/json");
      assertEquals(json(plain.bytes).data, { a: "1" });
      const jsonFirst = await call(s, "GET", "/api/v1/namespaces/pb", {
        accept: `application/json, ${PB}`,
      });
      assertEquals(jsonFirst.type, "application/json");
    });

    await t.step("errors are a protobuf Status when protobuf was asked", async () => {
      const missing = await call(s, "GET", "/api/v1/namespaces/pb/secrets/nope", {
        accept: TYPED,
      });
      assertEquals([missing.status, missing.type], [404, PB]);
      const st = decodeObject(missing.bytes);
      assertEquals([st.kind, st.reason, st.code], ["Status", "NotFound", 404]);
      assertEquals(st.message, 'secrets "nope" not found');
      const exists = await call(s, "POST", "/api/v1/namespaces", {
        accept: TYPED,
        contentType: PB,
        body: encodeObject({ apiVersion: "v1", kind: "Namespace", metadata: { name: "pb" } }),
      });
      assertEquals(exists.status, 409);
      assertEquals(decodeObject(exists.bytes).reason, "AlreadyExists");
    });

    await t.step("DeleteOptions in protobuf: a stale precondition is a Conflict", async () => {
      const opts = (rv: string) =>
        encodeObject({
          apiVersion: "v1",
          kind: "DeleteOptions",
          preconditions: { resourceVersion: rv },
        });
      const path = "/api/v1/namespaces/pb/configmaps/cfg";
      const stale = await call(s, "DELETE", path, {
        accept: TYPED,
        contentType: PB,
        body: opts("1"),
      });
      assertEquals(stale.status, 409);
      assertStringIncludes(String(decodeObject(stale.bytes).message), "precondition");
      const rv = (await s.request("GET", path)).body.metadata.resourceVersion!;
      const ok = await call(s, "DELETE", path, { accept: TYPED, contentType: PB, body: opts(rv) });
      assertEquals(ok.status, 200);
      assertEquals((await s.request("GET", path)).status, 404);
    });

    await t.step("a body that is not protobuf is a 400 BadRequest", async () => {
      const r = await call(s, "POST", "/api/v1/namespaces/pb/secrets", {
        accept: TYPED,
        contentType: PB,
        body: '{"kind":"Secret"}',
      });
      assertEquals(r.status, 400);
      const st = decodeObject(r.bytes);
      assertEquals(st.reason, "BadRequest");
      assertStringIncludes(String(st.message), 'Secret in version "v1" cannot be handled');
      assertStringIncludes(String(st.message), "expected prefix [107 56 115 0]");
    });

    await t.step(
      "custom resources: protobuf body → 415, protobuf-first Accept → JSON",
      async () => {
        const crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
        assertEquals((await s.request("POST", crds, CLUSTER_CRD)).status, 201);
        const base = "/apis/cluster.kubesphere.io/v1alpha1/clusters";
        const cr = { apiVersion: "cluster.kubesphere.io/v1alpha1", kind: "Cluster" };
        const refused = await call(s, "POST", base, {
          accept: TYPED,
          contentType: PB,
          body: encodeObject({ apiVersion: "v1", kind: "ConfigMap", metadata: { name: "x" } }),
        });
        assertEquals([refused.status, refused.type], [415, "application/json"]);
        const st = json(refused.bytes);
        assertEquals([st.kind, st.reason, st.code], ["Status", "UnsupportedMediaType", 415]);
        assertEquals(
          st.message,
          "the body of the request was in an unknown format - accepted media types include: " +
            "application/json, application/yaml",
        );
        const made = await call(s, "POST", base, {
          accept: TYPED,
          contentType: "application/json",
          body: JSON.stringify({ ...cr, metadata: { name: "member" }, spec: {} }),
        });
        assertEquals([made.status, made.type], [201, "application/json"]);
        const got = await call(s, "GET", `${base}/member`, { accept: TYPED });
        assertEquals([got.status, got.type], [200, "application/json"]);
        assertEquals(json(got.bytes).metadata.name, "member");
        const only = await call(s, "GET", `${base}/member`, { accept: PB });
        assertEquals(only.status, 406);
        assertEquals(json(only.bytes).reason, "NotAcceptable");
        const missing = await call(s, "GET", `${base}/nope`, { accept: TYPED });
        assertEquals([missing.status, missing.type], [404, "application/json"]);
      },
    );

    await t.step("built-in kinds without a protobuf form here fall back to JSON", async () => {
      const pod = await call(s, "GET", "/api/v1/namespaces/default/pods/web-0", { accept: TYPED });
      assertEquals([pod.status, pod.type], [200, "application/json"]);
      const refused = await call(s, "POST", "/api/v1/namespaces/default/pods", {
        accept: TYPED,
        contentType: PB,
        body: encodeObject({ apiVersion: "v1", kind: "ConfigMap", metadata: { name: "x" } }),
      });
      assertEquals(refused.status, 415);
    });

    await t.step(
      "a watch in protobuf: length-prefixed WatchEvents, then 410 as ERROR",
      async () => {
        const list = await s.request("GET", "/api/v1/namespaces/pb/configmaps");
        const rv = list.body.metadata.resourceVersion;
        const client = httpClient(s);
        const ac = new AbortController();
        try {
          const r = await fetch(
            `${s.url}/api/v1/namespaces/pb/configmaps?watch=true&resourceVersion=${rv}`,
            { headers: { accept: TYPED }, client, signal: ac.signal },
          );
          assertEquals(r.headers.get("content-type"), `${PB};stream=watch`);
          const events = protobufWatchEvents(r.body!);
          const cm = { apiVersion: "v1", kind: "ConfigMap", metadata: { name: "w" } };
          assertEquals(
            (await s.request("POST", "/api/v1/namespaces/pb/configmaps", cm)).status,
            201,
          );
          await s.request(
            "PATCH",
            "/api/v1/namespaces/pb/configmaps/w",
            { data: { k: "v" } },
            "application/merge-patch+json",
          );
          await s.request("DELETE", "/api/v1/namespaces/pb/configmaps/w");
          const seen: string[] = [];
          for (let i = 0; i < 3; i++) {
            const { value } = await deadline(events.next(), 10_000, `watch event ${i}`);
            assert(value, "stream ended early");
            seen.push(
              `${value.type} ${(value.object.metadata as Obj).name} ${
                JSON.stringify(value.object.data ?? {})
              }`,
            );
          }
          assertEquals(seen, ["ADDED w {}", 'MODIFIED w {"k":"v"}', 'DELETED w {"k":"v"}']);
        } finally {
          ac.abort();
          client.close();
        }
        const initialClient = httpClient(s);
        try {
          const initial = await fetch(
            `${s.url}/api/v1/namespaces?watch=true&sendInitialEvents=true&allowWatchBookmarks=true` +
              "&resourceVersionMatch=NotOlderThan&timeoutSeconds=1",
            { headers: { accept: TYPED }, client: initialClient },
          );
          const kinds = [];
          for await (const ev of protobufWatchEvents(initial.body!)) {
            kinds.push(ev.type);
            if (ev.type !== "BOOKMARK") continue;
            assertEquals(ev.object.kind, "Namespace");
            const meta = ev.object.metadata as Obj;
            assertEquals(meta.annotations, { "k8s.io/initial-events-end": "true" });
            break;
          }
          assert(kinds.filter((k) => k === "ADDED").length >= 5, kinds.join());
          assertEquals(kinds.at(-1), "BOOKMARK");
        } finally {
          initialClient.close();
        }
        s.compact();
        const expired = await call(
          s,
          "GET",
          `/api/v1/namespaces/pb/configmaps?watch=true&resourceVersion=1`,
          {
            accept: TYPED,
          },
        );
        const [only] = await Array.fromAsync(
          protobufWatchEvents(ReadableStream.from([expired.bytes])),
        );
        assertEquals(only.type, "ERROR");
        assertEquals([only.object.kind, only.object.code, only.object.reason], [
          "Status",
          410,
          "Expired",
        ]);
      },
    );
  } finally {
    await s.close();
  }
});
