/**
 * The real `kubectl` against the test API server: get/apply/delete of a
 * namespace and a Service, installing the project's Cluster CRD with
 * `kubectl kustomize crd | kubectl create -f -`, Cluster objects with their
 * printer columns, `kubectl get clusters -w` seeing another client's update,
 * `kubectl exec -i -- cat`, `kubectl logs [-f]`.
 * @module
 */

import { assert, assertEquals, assertMatch, assertStringIncludes } from "../helpers/assert.ts";
import { startTestApiServer } from "./server.ts";
import { deadline, kubectl, kubectlOk as ok, kubectlProc } from "./testing.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

async function kustomizeIn(dir: string, target: string): Promise<string> {
  const out = await new Deno.Command("kubectl", {
    args: ["kustomize", target],
    cwd: dir,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert(out.success, `kubectl kustomize ${target}: ${new TextDecoder().decode(out.stderr)}`);
  return new TextDecoder().decode(out.stdout);
}

const NAMESPACE_AND_SERVICE = `
apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
spec:
  selector: {app: web}
  ports:
  - name: http
    port: 80
    targetPort: TARGET
`;

const CLUSTER = `
apiVersion: cluster.kubesphere.io/v1alpha1
kind: Cluster
metadata:
  name: alpha
spec:
  joinFederation: true
  provider: kubesphere
  connection:
    type: proxy
    token: ""
`;

Deno.test("kubectl against the test API server", async (t) => {
  const s = await startTestApiServer();
  try {
    await t.step("get/apply/delete a namespace and a Service (ClusterIP assigned)", async () => {
      ok(await kubectl(s, ["get", "namespaces"]), "get ns");
      const first = ok(
        await kubectl(s, ["apply", "-f", "-"], {
          stdin: NAMESPACE_AND_SERVICE.replace("TARGET", "8080"),
        }),
        "apply",
      );
      assertStringIncludes(first, "namespace/demo created");
      assertStringIncludes(first, "service/web created");
      const again = ok(
        await kubectl(s, ["apply", "-f", "-"], {
          stdin: NAMESPACE_AND_SERVICE.replace("TARGET", "8080"),
        }),
        "apply again",
      );
      assertStringIncludes(again, "service/web unchanged");
      const changed = ok(
        await kubectl(s, ["apply", "-f", "-"], {
          stdin: NAMESPACE_AND_SERVICE.replace("TARGET", "9090"),
        }),
        "apply change",
      );
      assertStringIncludes(changed, "service/web configured");
      const ip = ok(
        await kubectl(s, [
          "get",
          "svc",
          "web",
          "-n",
          "demo",
          "-o",
          "jsonpath={.spec.clusterIP} {.spec.ports[0].targetPort}",
        ]),
        "get svc",
      );
      assertMatch(ip, /^10\.\d+\.\d+\.\d+ 9090$/);
      const table = ok(await kubectl(s, ["get", "svc", "-n", "demo"]), "get svc table");
      assertMatch(table, /web\s+ClusterIP\s+10\.\d+\.\d+\.\d+\s+<none>\s+80\/TCP/);
      ok(await kubectl(s, ["delete", "namespace", "demo", "--timeout=20s"]), "delete ns");
      const gone = await kubectl(s, ["get", "namespace", "demo"]);
      assertEquals(gone.code, 1);
      assertStringIncludes(gone.stderr, 'namespaces "demo" not found');
      assertEquals((await s.request("GET", "/api/v1/namespaces/demo/services/web")).status, 404);
    });

    await t.step(
      "kubectl kustomize crd | kubectl create -f - installs the Cluster CRD",
      async () => {
        const manifests = await kustomizeIn(ROOT, "crd");
        const created = ok(
          await kubectl(s, ["create", "-f", "-"], { stdin: manifests }),
          "create crd",
        );
        assertStringIncludes(
          created,
          "customresourcedefinition.apiextensions.k8s.io/clusters.cluster.kubesphere.io created",
        );
        ok(await kubectl(s, ["get", "crd", "clusters.cluster.kubesphere.io"]), "get crd");
        ok(await kubectl(s, ["delete", "crd", "clusters.cluster.kubesphere.io"]), "delete crd");
        // The README's form: `cd crd && kustomize build | kubectl create -f -`.
        const fromDir = await kustomizeIn(`${ROOT}crd`, ".");
        ok(await kubectl(s, ["create", "-f", "-"], { stdin: fromDir }), "create crd from crd/");
        const established = ok(
          await kubectl(s, [
            "get",
            "crd",
            "clusters.cluster.kubesphere.io",
            "-o",
            'jsonpath={.status.conditions[?(@.type=="Established")].status}',
          ]),
          "crd established",
        );
        assertEquals(established, "True");
        // and with apply, as `kubectl kustomize crd | kubectl apply -f -`
        const applied = ok(await kubectl(s, ["apply", "-f", "-"], { stdin: manifests }), "apply");
        assertStringIncludes(applied, "clusters.cluster.kubesphere.io");
        const again = ok(await kubectl(s, ["apply", "-f", "-"], { stdin: manifests }), "apply 2");
        assertStringIncludes(again, "clusters.cluster.kubesphere.io unchanged");
      },
    );

    await t.step("Cluster objects: apply, printer columns, validation, delete", async () => {
      assertStringIncludes(
        ok(await kubectl(s, ["apply", "-f", "-"], { stdin: CLUSTER }), "apply cluster"),
        "cluster.cluster.kubesphere.io/alpha created",
      );
      assertStringIncludes(
        ok(await kubectl(s, ["apply", "-f", "-"], { stdin: CLUSTER }), "apply cluster again"),
        "unchanged",
      );
      const table = ok(await kubectl(s, ["get", "clusters"]), "get clusters");
      assertMatch(
        table,
        /^NAME\s+FEDERATED\s+PROVIDER\s+ACTIVE\s+VERSION\s+TYPE\s+AGENT\s+ENDPOINT\s+AGE/,
      );
      assertMatch(table, /\nalpha\s+true\s+kubesphere\s+proxy\s+\d+s/);
      const bogus = await kubectl(s, ["apply", "-f", "-"], {
        stdin: CLUSTER.replace("provider: kubesphere", "provider: kubesphere\n  bogus: 1"),
      });
      assertEquals(bogus.code, 1, "unknown field refused by server-side validation");
      assertStringIncludes(bogus.stderr, 'unknown field "spec.bogus"');
      const beta = CLUSTER.replace("name: alpha", "name: beta");
      ok(await kubectl(s, ["create", "-f", "-"], { stdin: beta }), "create beta");
      ok(await kubectl(s, ["delete", "cluster", "beta"]), "delete beta");
      const names = ok(await kubectl(s, ["get", "clusters", "-o", "name"]), "names");
      assertEquals(names.trim(), "cluster.cluster.kubesphere.io/alpha");
    });

    await t.step("kubectl get clusters -w sees an update made by another client", async () => {
      const w = kubectlProc(s, "kubectl-watch", ["get", "clusters", "-w", "--request-timeout=0"]);
      try {
        await w.waitFor(/^alpha\s+true\s+kubesphere\s+proxy\s+\d+s/, 20_000);
        const from = w.lines.length;
        const r = await s.request("PATCH", "/apis/cluster.kubesphere.io/v1alpha1/clusters/alpha", {
          spec: { connection: { kubernetesAPIEndpoint: "https://10.96.0.20:6443" } },
          status: {
            kubernetesVersion: "v1.31.2",
            conditions: [{ type: "AgentAvailable", status: "True", reason: "AgentConnected" }],
          },
        }, "application/merge-patch+json");
        assertEquals(r.status, 200);
        await w.waitFor(
          /^alpha\s+true\s+kubesphere\s+v1\.31\.2\s+proxy\s+True\s+https:\/\/10\.96\.0\.20:6443/,
          20_000,
          from,
        );
      } finally {
        await w.stop();
      }
    });

    await t.step("kubectl exec -i -- cat echoes stdin", async () => {
      const r = ok(
        await kubectl(s, ["exec", "-i", "web-0", "--", "cat"], {
          stdin: "hello through exec\nsecond line\n",
        }),
        "exec cat",
      );
      assertEquals(r, "hello through exec\nsecond line\n");
      assertEquals(s.streams.execSessions, 1);
      const fail = await kubectl(s, ["exec", "web-0", "--", "false"]);
      assertEquals(fail.code, 1);
      const missing = await kubectl(s, ["exec", "nope", "--", "cat"]);
      assertEquals(missing.code, 1);
      assertStringIncludes(missing.stderr, 'pods "nope" not found');
    });

    await t.step("kubectl logs, and logs -f until the client goes away", async () => {
      const r = ok(await kubectl(s, ["logs", "web-1"]), "logs");
      assertEquals(
        r,
        "default/web-1/main line 1\ndefault/web-1/main line 2\ndefault/web-1/main line 3\n",
      );
      const f = kubectlProc(s, "kubectl-logs", ["logs", "-f", "web-1"]);
      try {
        await f.waitFor(/line 5$/, 20_000);
        assertEquals(s.core.openLogStreams, 1);
      } finally {
        await f.stop();
      }
      await deadline(s.core.logStreamsIdle(), 10_000, "log stream closed after client left");
      assertEquals(s.core.openLogStreams, 0);
    });
  } finally {
    await s.close();
  }
});
