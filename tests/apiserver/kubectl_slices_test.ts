/**
 * The real kubectl with EndpointSlices and their owner Pods on the test API
 * server: apply, `get -l` with kubectl's columns, apply of a changed port
 * list (replaced whole), `describe` (protobuf), validation errors, `get -w`
 * seeing the slices go when their Pod is deleted; and RBAC for a replica's
 * ServiceAccount that may only create/update/delete EndpointSlices in its
 * namespace and get Pods, through kubectl and HTTPS.
 * @module
 */

import { assertEquals, assertMatch, assertStringIncludes } from "../helpers/assert.ts";
import { startTestApiServer, type TestApiServer } from "./server.ts";
import {
  callJson,
  kubectl,
  kubectlFails as fails,
  kubectlOk as ok,
  kubectlProc,
} from "./testing.ts";

const NS = "kubesphere-system";
const SA_USER = `system:serviceaccount:${NS}:tower`;
const PB = "application/vnd.kubernetes.protobuf";

const POD = `
apiVersion: v1
kind: Pod
metadata:
  name: tower-proxy-0
  namespace: ${NS}
  labels: { app: tower-proxy }
spec:
  containers: [{ name: proxy, image: "kubesphere/tower:v0.1.0" }]
`;

/** The slices replica tower-proxy-0 publishes (owner: its Pod, uid filled in). */
function slices(uid: string, kubernetesPort = 6443): string {
  const owner = `[{ apiVersion: v1, kind: Pod, name: tower-proxy-0, uid: "${uid}" }]`;
  const labels = (svc: string) =>
    `{ kubernetes.io/service-name: ${svc}, endpointslice.kubernetes.io/managed-by: tower.kubesphere.io }`;
  return `
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: mc-alpha-tower-proxy-0
  namespace: ${NS}
  labels: ${labels("mc-alpha")}
  ownerReferences: ${owner}
addressType: IPv4
endpoints:
- addresses: ["10.244.1.5"]
  conditions: { ready: true, serving: true, terminating: false }
ports:
- { name: kubernetes, port: ${kubernetesPort}, protocol: TCP }
- { name: kubesphere, port: 80, protocol: TCP }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: mc-beta-tower-proxy-0
  namespace: ${NS}
  labels: ${labels("mc-beta")}
  ownerReferences: ${owner}
addressType: IPv4
endpoints:
- addresses: ["10.244.1.5", "10.244.1.6"]
- addresses: ["10.244.1.7"]
- addresses: ["10.244.1.8"]
ports:
- { name: kubernetes, port: 6002 }
`;
}

const k = (s: TestApiServer, ...args: string[]) => kubectl(s, args);

/** The requests in kubectl's `-v=8` log: URL, Accept and the answer's Content-Type. */
function exchanges(log: string): { url: string; accept: string; type: string }[] {
  return log.split(/round_trippers\.go:\d+\] (?=(?:GET|POST|PUT|PATCH|DELETE) https:)/).slice(1)
    .map((block) => ({
      url: block.split(/\s+/)[1],
      accept: /Accept: (\S+)/.exec(block)?.[1] ?? "",
      type: /Response Headers:[\s\S]*?Content-Type: (\S+)/.exec(block)?.[1] ?? "",
    }));
}

Deno.test("kubectl with EndpointSlices owned by a replica's Pod", async (t) => {
  const s = await startTestApiServer({ namespaces: [NS] });
  let uid = "";
  try {
    await t.step("apply the Pod and its slices; get -l prints kubectl's columns", async () => {
      ok(await kubectl(s, ["apply", "-f", "-"], { stdin: POD }), "apply pod");
      uid = ok(
        await k(s, "get", "pod", "tower-proxy-0", "-n", NS, "-o", "jsonpath={.metadata.uid}"),
        "pod uid",
      );
      assertMatch(uid, /^[0-9a-f-]{36}$/);
      const applied = ok(await kubectl(s, ["apply", "-f", "-"], { stdin: slices(uid) }), "apply");
      assertStringIncludes(
        applied,
        "endpointslice.discovery.k8s.io/mc-alpha-tower-proxy-0 created",
      );
      assertStringIncludes(applied, "endpointslice.discovery.k8s.io/mc-beta-tower-proxy-0 created");
      const alpha = ok(
        await k(s, "get", "endpointslices", "-n", NS, "-l", "kubernetes.io/service-name=mc-alpha"),
        "get -l",
      );
      const lines = alpha.trim().split("\n");
      assertMatch(lines[0], /^NAME\s+ADDRESSTYPE\s+PORTS\s+ENDPOINTS\s+AGE$/);
      assertEquals(lines.length, 2);
      assertMatch(lines[1], /^mc-alpha-tower-proxy-0\s+IPv4\s+6443,80\s+10\.244\.1\.5\s+\d+s$/);
      const both = ok(
        await k(
          s,
          "get",
          "endpointslices",
          "-n",
          NS,
          "-l",
          "kubernetes.io/service-name in (mc-alpha,mc-beta),endpointslice.kubernetes.io/managed-by",
          "--no-headers",
        ),
        "get set-based",
      );
      assertMatch(both, /mc-alpha-tower-proxy-0\s+IPv4\s+6443,80/);
      assertMatch(
        both,
        /mc-beta-tower-proxy-0\s+IPv4\s+6002\s+10\.244\.1\.5,10\.244\.1\.6,10\.244\.1\.7 \+ 1 more\.\.\./,
      );
    });

    await t.step("apply with another port: the port list is replaced whole", async () => {
      const path = `/apis/discovery.k8s.io/v1/namespaces/${NS}/endpointslices`;
      const betaRv = (await s.request("GET", `${path}/mc-beta-tower-proxy-0`)).body.metadata
        .resourceVersion;
      const out = ok(
        await kubectl(s, ["apply", "-f", "-"], { stdin: slices(uid, 7443) }),
        "apply change",
      );
      assertStringIncludes(out, "endpointslice.discovery.k8s.io/mc-alpha-tower-proxy-0 configured");
      const ports = ok(
        await k(
          s,
          "get",
          "endpointslice",
          "mc-alpha-tower-proxy-0",
          "-n",
          NS,
          "-o",
          "jsonpath={range .ports[*]}{.name}:{.port}/{.protocol} {end}",
        ),
        "ports",
      );
      assertEquals(ports.trim(), "kubernetes:7443/TCP kubesphere:80/TCP");
      // mc-beta's manifest leaves out what the server fills in (conditions {}, protocol TCP):
      // kubectl sends its atomic lists again, and the server writes nothing new.
      const beta = (await s.request("GET", `${path}/mc-beta-tower-proxy-0`)).body;
      assertEquals(beta.metadata.resourceVersion, betaRv);
      const again = ok(
        await kubectl(s, ["apply", "-f", "-"], { stdin: slices(uid, 7443).split("---")[0] }),
        "apply same",
      );
      assertStringIncludes(
        again,
        "endpointslice.discovery.k8s.io/mc-alpha-tower-proxy-0 unchanged",
      );
    });

    await t.step("describe reads the slice in protobuf", async () => {
      const d = await k(s, "describe", "endpointslice", "mc-alpha-tower-proxy-0", "-n", NS, "-v=8");
      const out = ok(d, "describe");
      // The builder GETs it in JSON, the describer's typed client asks for protobuf.
      const typed = exchanges(d.stderr).filter((x) =>
        x.url.includes("/endpointslices/mc-alpha-tower-proxy-0") && x.accept.startsWith(PB)
      );
      assertEquals(typed.map((x) => x.type), [PB]);
      assertMatch(out, /AddressType:\s+IPv4/);
      assertMatch(out, /kubernetes\s+7443\s+TCP/);
      assertMatch(out, /kubesphere\s+80\s+TCP/);
      assertMatch(out, /Addresses:\s+10\.244\.1\.5/);
      assertMatch(out, /Ready:\s+true/);
      assertMatch(out, /Labels:\s+endpointslice\.kubernetes\.io\/managed-by=tower\.kubesphere\.io/);
    });

    await t.step("validation errors as kubectl reports them", async () => {
      const bad = `
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: bad, namespace: ${NS} }
addressType: IPv5
endpoints: [{ addresses: [] }]
`;
      const err = fails(await kubectl(s, ["apply", "-f", "-"], { stdin: bad }), "apply bad");
      assertStringIncludes(
        err,
        'addressType: Unsupported value: "IPv5": supported values: "FQDN", "IPv4", "IPv6"',
      );
      assertStringIncludes(
        err,
        "endpoints[0].addresses: Required value: must contain at least 1 address",
      );
      // kubectl asks for strict server-side field validation.
      const typo = fails(
        await kubectl(s, ["apply", "-f", "-"], {
          stdin: bad.replace("IPv5", "IPv4").replace(
            "addresses: []",
            `addresses: ["10.1.1.1"], ready: true`,
          ),
        }),
        "apply typo",
      );
      assertStringIncludes(typo, 'strict decoding error: unknown field "endpoints[0].ready"');
      assertStringIncludes(
        fails(await k(s, "get", "endpointslice", "bad", "-n", NS), "get bad"),
        'endpointslices.discovery.k8s.io "bad" not found',
      );
    });

    await t.step("get -w sees the slices DELETED when their Pod is deleted", async () => {
      const w = kubectlProc(s, "kubectl-watch", [
        "get",
        "endpointslices",
        "-n",
        NS,
        "-w",
        "--output-watch-events",
        "-l",
        "endpointslice.kubernetes.io/managed-by=tower.kubesphere.io",
      ]);
      try {
        await w.waitFor(/ADDED\s+mc-alpha-tower-proxy-0/);
        await w.waitFor(/ADDED\s+mc-beta-tower-proxy-0/);
        ok(await k(s, "delete", "pod", "tower-proxy-0", "-n", NS), "delete pod");
        await w.waitFor(/DELETED\s+mc-alpha-tower-proxy-0/);
        await w.waitFor(/DELETED\s+mc-beta-tower-proxy-0/);
      } finally {
        await w.stop();
      }
      assertStringIncludes(
        ok(await k(s, "get", "endpointslices", "-n", NS), "get none") +
          (await k(s, "get", "endpointslices", "-n", NS)).stderr,
        `No resources found in ${NS} namespace.`,
      );
    });
  } finally {
    await s.close();
  }
});

/** A JSON call over HTTPS as `identity`. */
const as = (
  s: TestApiServer,
  identity: { certPem: string; keyPem: string },
  method: string,
  path: string,
  body?: unknown,
  contentType?: string,
) => callJson(s, method, path, body, { identity, contentType });

Deno.test("RBAC: a replica may create/update/delete EndpointSlices in its namespace, and nothing else", async (t) => {
  const s = await startTestApiServer({ namespaces: [NS], rbac: true });
  try {
    const rbac = `
apiVersion: v1
kind: ServiceAccount
metadata: { name: tower, namespace: ${NS} }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: { name: tower-proxy-replica, namespace: ${NS} }
rules:
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [create, update, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: { name: tower-proxy-replica, namespace: ${NS} }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: Role, name: tower-proxy-replica }
subjects: [{ kind: ServiceAccount, name: tower }]
`;
    ok(await kubectl(s, ["apply", "-f", "-"], { stdin: rbac }), "apply rbac");
    ok(await kubectl(s, ["apply", "-f", "-"], { stdin: POD }), "apply pod");
    const uid = ok(
      await k(s, "get", "pod", "tower-proxy-0", "-n", NS, "-o", "jsonpath={.metadata.uid}"),
      "uid",
    );
    const kubeconfig = await s.kubeconfigForServiceAccount(NS, "tower");
    const sa = (...args: string[]) => kubectl(s, args, { kubeconfig });

    await t.step(
      "kubectl as the ServiceAccount: create, replace, delete; the rest is Forbidden",
      async () => {
        const one = slices(uid).split("---")[0];
        assertStringIncludes(
          ok(await kubectl(s, ["create", "-f", "-"], { stdin: one, kubeconfig }), "create"),
          "endpointslice.discovery.k8s.io/mc-alpha-tower-proxy-0 created",
        );
        assertStringIncludes(
          ok(
            await kubectl(s, ["replace", "-f", "-"], {
              stdin: one.replace("port: 6443", "port: 7443"),
              kubeconfig,
            }),
            "replace",
          ),
          "endpointslice.discovery.k8s.io/mc-alpha-tower-proxy-0 replaced",
        );
        assertEquals(
          ok(
            await sa("get", "pod", "tower-proxy-0", "-n", NS, "-o", "jsonpath={.metadata.uid}"),
            "get own pod",
          ),
          uid,
        );
        assertEquals(
          fails(await sa("get", "endpointslices", "-n", NS), "list"),
          `Error from server (Forbidden): endpointslices.discovery.k8s.io is forbidden: User ` +
            `"${SA_USER}" cannot list resource "endpointslices" in API group "discovery.k8s.io" ` +
            `in the namespace "${NS}"`,
        );
        const other = one.replace(`namespace: ${NS}`, "namespace: default");
        assertStringIncludes(
          fails(await kubectl(s, ["create", "-f", "-"], { stdin: other, kubeconfig }), "other ns"),
          `cannot create resource "endpointslices" in API group "discovery.k8s.io" in the namespace "default"`,
        );
        assertStringIncludes(
          fails(await sa("delete", "pod", "tower-proxy-0", "-n", NS), "delete pod"),
          `cannot delete resource "pods" in API group "" in the namespace "${NS}"`,
        );
        assertStringIncludes(
          fails(await sa("get", "services", "-n", NS), "services"),
          `cannot list resource "services"`,
        );
        for (
          const [args, answer] of [
            [["create", "endpointslices.discovery.k8s.io", "-n", NS], "yes"],
            [["update", "endpointslices.discovery.k8s.io", "-n", NS], "yes"],
            [["delete", "endpointslices.discovery.k8s.io", "-n", NS], "yes"],
            [["patch", "endpointslices.discovery.k8s.io", "-n", NS], "no"],
            [["watch", "endpointslices.discovery.k8s.io", "-n", NS], "no"],
            [["deletecollection", "endpointslices.discovery.k8s.io", "-n", NS], "no"],
            [["create", "endpointslices.discovery.k8s.io", "-n", "default"], "no"],
            [["create", "endpoints", "-n", NS], "no"],
            [["update", "pods", "-n", NS], "no"],
          ] as [string[], string][]
        ) {
          const r = await sa("auth", "can-i", ...args);
          assertEquals(r.stdout.trim(), answer, args.join(" "));
        }
        assertStringIncludes(
          ok(
            await sa("delete", "endpointslice", "mc-alpha-tower-proxy-0", "-n", NS, "--wait=false"),
            "delete",
          ),
          'endpointslice.discovery.k8s.io "mc-alpha-tower-proxy-0" deleted',
        );
      },
    );

    await t.step("HTTPS as the ServiceAccount: the same rules on every verb", async () => {
      const id = await s.tls.issueClient(SA_USER, [
        "system:serviceaccounts",
        `system:serviceaccounts:${NS}`,
      ]);
      const path = `/apis/discovery.k8s.io/v1/namespaces/${NS}/endpointslices`;
      const body = {
        metadata: {
          name: "mc-beta-tower-proxy-0",
          labels: { "kubernetes.io/service-name": "mc-beta" },
          ownerReferences: [{ apiVersion: "v1", kind: "Pod", name: "tower-proxy-0", uid }],
        },
        addressType: "IPv4",
        endpoints: [{ addresses: ["10.244.1.5"], conditions: { ready: true } }],
        ports: [{ name: "kubernetes", port: 6002 }],
      };
      const created = await as(s, id, "POST", path, body);
      assertEquals(created.status, 201);
      const updated = await as(s, id, "PUT", `${path}/mc-beta-tower-proxy-0`, {
        ...created.body,
        endpoints: [{ addresses: ["10.244.1.5"], conditions: { ready: false } }],
      });
      assertEquals(updated.status, 200);
      const forbidden = async (method: string, p: string, b?: unknown, ct?: string) => {
        const r = await as(s, id, method, p, b, ct);
        assertEquals([r.status, r.body.reason], [403, "Forbidden"], `${method} ${p}`);
      };
      await forbidden("PATCH", `${path}/mc-beta-tower-proxy-0`, {
        metadata: { labels: { x: "y" } },
      }, "application/merge-patch+json");
      await forbidden("GET", `${path}/mc-beta-tower-proxy-0`);
      await forbidden("GET", `${path}?watch=true`);
      await forbidden("DELETE", path);
      await forbidden("POST", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", body);
      await forbidden("DELETE", `/api/v1/namespaces/${NS}/pods/tower-proxy-0`);
      await forbidden("POST", `/api/v1/namespaces/${NS}/endpoints`, { metadata: { name: "x" } });
      assertEquals(
        (await as(s, id, "GET", `/api/v1/namespaces/${NS}/pods/tower-proxy-0`)).status,
        200,
      );
      assertEquals((await as(s, id, "DELETE", `${path}/mc-beta-tower-proxy-0`)).status, 200);
      assertEquals((await s.request("GET", `${path}/mc-beta-tower-proxy-0`)).status, 404);
    });
  } finally {
    await s.close();
  }
});
