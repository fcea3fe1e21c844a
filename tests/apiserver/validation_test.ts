/** Validation of names, labels, Secrets and Service ports, through the REST core. */

import { assertEquals } from "../helpers/assert.ts";
import { startTestApiServer } from "./server.ts";

Deno.test("validation as the real API server", async (t) => {
  const s = await startTestApiServer();
  try {
    await t.step("names: Services are DNS-1035 labels, Namespaces DNS labels", async () => {
      const svc = (name: string) =>
        s.request("POST", "/api/v1/namespaces/default/services", {
          metadata: { name },
          spec: { ports: [{ port: 80 }] },
        });
      assertEquals((await svc("mc-alpha")).status, 201);
      assertEquals((await svc("mc-a.b")).status, 422);
      assertEquals((await svc("1abc")).status, 422);
      assertEquals((await svc(`x${"a".repeat(63)}`)).status, 422);
      assertEquals(
        (await s.request("POST", "/api/v1/namespaces", { metadata: { name: "a.b" } })).status,
        422,
      );
      assertEquals(
        (await s.request("POST", "/api/v1/namespaces/default/configmaps", {
          metadata: { name: "a.b" },
        })).status,
        201,
      );
    });

    await t.step("labels: keys and values", async () => {
      const cm = (labels: Record<string, string>) =>
        s.request("POST", "/api/v1/namespaces/default/configmaps", {
          metadata: { generateName: "l-", labels },
        });
      assertEquals((await cm({ "app.kubernetes.io/name": "mc-alpha", empty: "" })).status, 201);
      assertEquals((await cm({ app: "has space" })).status, 422);
      assertEquals((await cm({ app: "x".repeat(64) })).status, 422);
      assertEquals((await cm({ "bad/key/x": "v" })).status, 422);
    });

    await t.step("secrets: stringData folds into data; data must be base64", async () => {
      const ok = await s.request("POST", "/api/v1/namespaces/default/secrets", {
        metadata: { name: "s1" },
        data: { a: btoa("x") },
        stringData: { b: "hello" },
      });
      assertEquals(ok.status, 201);
      assertEquals(ok.body.data, { a: btoa("x"), b: btoa("hello") });
      assertEquals([ok.body.stringData, ok.body.type], [undefined, "Opaque"]);
      const bad = await s.request("POST", "/api/v1/namespaces/default/secrets", {
        metadata: { name: "s2" },
        data: { a: "not base64!" },
      });
      assertEquals([bad.status, bad.body.reason], [400, "BadRequest"]);
    });

    await t.step("service ports: range, names required and unique with several", async () => {
      const svc = (name: string, ports: unknown[]) =>
        s.request("POST", "/api/v1/namespaces/default/services", {
          metadata: { name },
          spec: { ports },
        });
      assertEquals((await svc("p1", [{ port: 0 }])).status, 422);
      assertEquals((await svc("p2", [{ port: 80 }, { port: 81 }])).status, 422);
      assertEquals(
        (await svc("p3", [{ name: "a", port: 80 }, { name: "a", port: 81 }])).status,
        422,
      );
      assertEquals(
        (await svc("p4", [{ name: "kubernetes", port: 6443 }, { name: "kubesphere", port: 80 }]))
          .status,
        201,
      );
    });
    await t.step("events: namespaces must match; events.k8s.io/v1 needs its fields", async () => {
      const core = (ns: string, involvedNs?: string) =>
        s.request("POST", `/api/v1/namespaces/${ns}/events`, {
          metadata: { generateName: "e-" },
          involvedObject: { kind: "Cluster", name: "alpha", namespace: involvedNs },
          reason: "Test",
        });
      assertEquals((await core("default")).status, 201, "cluster-scoped object: default ns");
      assertEquals((await core("kube-system")).status, 422);
      assertEquals((await core("kube-system", "kube-system")).status, 201);
      const v1 = (extra: Record<string, unknown>) =>
        s.request("POST", "/apis/events.k8s.io/v1/namespaces/default/events", {
          metadata: { generateName: "e-" },
          regarding: { kind: "Cluster", name: "alpha" },
          ...extra,
        });
      assertEquals((await v1({ reason: "X" })).status, 422);
      const full = {
        reason: "AgentConnected",
        note: "agent connected",
        type: "Normal",
        action: "Connect",
        eventTime: "2026-11-23T07:00:00.000000Z",
        reportingController: "kubesphere.io/tower",
        reportingInstance: "tower-0",
      };
      assertEquals((await v1(full)).status, 201);
    });

    await t.step("custom resources need apiVersion and kind in the body", async () => {
      await s.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", {
        metadata: { name: "things.example.com" },
        spec: {
          group: "example.com",
          scope: "Cluster",
          names: { kind: "Thing", plural: "things" },
          versions: [{
            name: "v1",
            served: true,
            storage: true,
            schema: { openAPIV3Schema: { type: "object" } },
          }],
        },
      });
      const base = "/apis/example.com/v1/things";
      assertEquals((await s.request("POST", base, { metadata: { name: "a" } })).status, 400);
      const wrong = { apiVersion: "example.com/v2", kind: "Thing", metadata: { name: "a" } };
      assertEquals((await s.request("POST", base, wrong)).status, 400);
      const right = { apiVersion: "example.com/v1", kind: "Thing", metadata: { name: "a" } };
      assertEquals((await s.request("POST", base, right)).status, 201);
    });
    await t.step("request() returns non-JSON bodies as text", async () => {
      const r = await s.request("GET", "/api/v1/namespaces/default/pods/web-0/log?tailLines=1");
      assertEquals([r.status, r.text], [200, "default/web-0/main line 3\n"]);
    });
  } finally {
    await s.close();
  }
});
