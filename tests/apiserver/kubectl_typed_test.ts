/**
 * The real kubectl's typed commands against the test API server, which send
 * protobuf bodies and ask for protobuf answers (`create namespace`, `create
 * configmap|secret|service|serviceaccount`, `describe`, `auth can-i`), mixed
 * with the JSON ones (`replace`, `patch`, `get` with selectors, `get -w` and
 * `--watch-only`, `apply`, `delete`), each outcome as a real kube-apiserver
 * gives it: AlreadyExists and Conflict exit codes and messages, ClusterIP and
 * nodePort allocated, watch events in order.
 * @module
 */

import { assert, assertEquals, assertMatch, assertStringIncludes } from "../helpers/assert.ts";
import { startTestApiServer, type TestApiServer } from "./server.ts";
import { kubectl, kubectlFails as fails, kubectlOk as ok, kubectlProc } from "./testing.ts";

const NS = "typed";

const k = (s: TestApiServer, ...args: string[]) => kubectl(s, args);

/** The Content-Type of each response in kubectl's `-v=8` log, in order. */
function responseTypes(log: string): string[] {
  return log.split("Response Headers:").slice(1).map((part) =>
    /Content-Type: (\S+)/.exec(part)?.[1] ?? ""
  );
}

const PROTOBUF = "application/vnd.kubernetes.protobuf";

/** Whether `ip` lies in 10.96.0.0/12 (the server's service CIDR). */
function inServiceCidr(ip: string): boolean {
  const [a, b] = ip.split(".").map(Number);
  return a === 10 && b >= 96 && b <= 111;
}

const LEASE = `
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: tower-leader
  namespace: ${NS}
spec:
  holderIdentity: tower-0
  leaseDurationSeconds: 15
  leaseTransitions: 0
  acquireTime: "2024-05-06T07:08:09.000000Z"
  renewTime: "2024-05-06T07:08:39.123456Z"
`;

Deno.test("kubectl typed commands (protobuf) against the test API server", async (t) => {
  const s = await startTestApiServer();
  try {
    await t.step("create namespace, then AlreadyExists", async () => {
      assertEquals(
        ok(await k(s, "create", "namespace", NS), "create ns").trim(),
        `namespace/${NS} created`,
      );
      const again = fails(await k(s, "create", "namespace", NS), "create ns again");
      assertEquals(again, `Error from server (AlreadyExists): namespaces "${NS}" already exists`);
      const ns = JSON.parse(ok(await k(s, "get", "namespace", NS, "-o", "json"), "get ns"));
      assertEquals(ns.spec.finalizers, ["kubernetes"]);
      assertEquals(ns.status.phase, "Active");
    });

    let stale = "";
    await t.step("create configmap --from-literal (answered in protobuf)", async () => {
      const r = await k(
        s,
        "create",
        "configmap",
        "settings",
        "-n",
        NS,
        "--from-literal=mode=fast",
        "--from-literal=size=3",
        "-o",
        "json",
        "-v=8",
      );
      const out = ok(r, "create cm");
      // kubectl decoded a protobuf answer to its POST (the last response in its -v=8 log).
      assertEquals(responseTypes(r.stderr).at(-1), PROTOBUF);
      const cm = JSON.parse(out);
      assertEquals(cm.data, { mode: "fast", size: "3" });
      assertMatch(cm.metadata.uid, /^[0-9a-f-]{36}$/);
      assertMatch(cm.metadata.resourceVersion, /^\d+$/);
      assertMatch(cm.metadata.creationTimestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
      stale = out;
    });

    await t.step("patch --type merge, then a stale replace is a Conflict", async () => {
      assertEquals(
        ok(
          await k(
            s,
            "patch",
            "configmap",
            "settings",
            "-n",
            NS,
            "--type",
            "merge",
            "-p",
            '{"data":{"mode":"slow"}}',
          ),
          "merge patch",
        ).trim(),
        "configmap/settings patched",
      );
      const r = await kubectl(s, ["replace", "-f", "-"], { stdin: stale });
      assertEquals(
        fails(r, "stale replace"),
        'Error from server (Conflict): error when replacing "STDIN": Operation cannot be fulfilled on ' +
          'configmaps "settings": the object has been modified; please apply your changes to the ' +
          "latest version and try again",
      );
      const mode = ok(
        await k(s, "get", "cm", "settings", "-n", NS, "-o", "jsonpath={.data.mode}"),
        "get",
      );
      assertEquals(mode, "slow");
    });

    await t.step("patch --type json, then get with -l and --field-selector", async () => {
      ok(
        await k(
          s,
          "patch",
          "configmap",
          "settings",
          "-n",
          NS,
          "--type",
          "json",
          "-p",
          '[{"op":"add","path":"/metadata/labels","value":{"tier":"web"}}]',
        ),
        "json patch",
      );
      ok(
        await k(s, "create", "configmap", "other", "-n", NS, "--from-literal=x=y"),
        "create other",
      );
      const byLabel = ok(
        await k(s, "get", "cm", "-n", NS, "-l", "tier=web", "-o", "name"),
        "get -l",
      );
      assertEquals(byLabel.trim(), "configmap/settings");
      const byField = ok(
        await k(
          s,
          "get",
          "cm",
          "-n",
          NS,
          "--field-selector",
          "metadata.name!=settings",
          "-o",
          "name",
        ),
        "get --field-selector",
      );
      assertEquals(byField.trim(), "configmap/other");
      const none = await k(s, "get", "cm", "-n", NS, "-l", "tier=db");
      assertEquals(none.code, 0);
      assertEquals(none.stderr.trim(), `No resources found in ${NS} namespace.`);
    });

    await t.step(
      "create service clusterip and loadbalancer: IPs and nodePort allocated",
      async () => {
        const web = JSON.parse(
          ok(
            await k(
              s,
              "create",
              "service",
              "clusterip",
              "web",
              "-n",
              NS,
              "--tcp=80:8080",
              "-o",
              "json",
            ),
            "create svc",
          ),
        );
        assert(inServiceCidr(web.spec.clusterIP), `clusterIP ${web.spec.clusterIP}`);
        assertEquals(web.spec.clusterIPs, [web.spec.clusterIP]);
        assertEquals(web.spec.type, "ClusterIP");
        assertEquals(web.spec.ports, [{
          name: "80-8080",
          protocol: "TCP",
          port: 80,
          targetPort: 8080,
        }]);
        assertEquals(web.metadata.labels, { app: "web" });
        const edge = JSON.parse(
          ok(
            await k(
              s,
              "create",
              "service",
              "loadbalancer",
              "edge",
              "-n",
              NS,
              "--tcp=443:https",
              "-o",
              "json",
            ),
            "create lb",
          ),
        );
        assert(inServiceCidr(edge.spec.clusterIP), `clusterIP ${edge.spec.clusterIP}`);
        assert(edge.spec.clusterIP !== web.spec.clusterIP, "distinct cluster IPs");
        const [port] = edge.spec.ports;
        assertEquals(port.targetPort, "https", "a named targetPort stays a string");
        assert(port.nodePort >= 30000 && port.nodePort <= 32767, `nodePort ${port.nodePort}`);
        assertEquals(edge.status, { loadBalancer: {} });
        const table = ok(await k(s, "get", "svc", "edge", "-n", NS), "get svc");
        assertMatch(
          table,
          new RegExp(
            `edge\\s+LoadBalancer\\s+${edge.spec.clusterIP}\\s+<pending>\\s+443:${port.nodePort}/TCP`,
          ),
        );
      },
    );

    await t.step("get -w and --watch-only see later changes in order", async () => {
      const all = kubectlProc(s, "get-w", ["get", "configmaps", "-n", NS, "-w", "-o", "name"]);
      const only = kubectlProc(s, "watch-only", [
        "get",
        "services",
        "-n",
        NS,
        "--watch-only",
        "-o",
        "name",
        "-v=6",
      ]);
      try {
        await all.waitFor(/^configmap\/settings$/);
        // -v=6 logs the watch request once its response has started.
        await only.waitFor(/GET https:\/\/\S+\/services\?.*watch=true.* 200 OK/);
        const from = all.lines.length;
        ok(
          await k(s, "create", "configmap", "extra", "-n", NS, "--from-literal=a=b"),
          "create extra",
        );
        ok(await k(s, "label", "configmap", "extra", "-n", NS, "stage=2"), "label extra");
        ok(await k(s, "delete", "configmap", "extra", "-n", NS), "delete extra");
        ok(await k(s, "delete", "service", "web", "-n", NS), "delete svc");
        await all.waitFor(/^configmap\/extra$/, 20_000, from);
        await only.waitFor(/^service\/web$/);
        while (all.count(/^configmap\/extra$/) < 3) {
          await all.waitFor(/^configmap\/extra$/, 20_000, all.lines.length);
        }
        assertEquals(all.lines.slice(from).filter((l) => l.startsWith("configmap/")), [
          "configmap/extra",
          "configmap/extra",
          "configmap/extra",
        ]);
        assertEquals(
          only.lines.filter((l) => /^service\//.test(l)),
          ["service/web"],
          "no initial list",
        );
      } finally {
        await all.stop();
        await only.stop();
      }
    });

    await t.step("create secret generic: data base64, type Opaque", async () => {
      const sec = JSON.parse(
        ok(
          await k(
            s,
            "create",
            "secret",
            "generic",
            "token",
            "-n",
            NS,
            "--from-literal=token=abc123",
            "-o",
            "json",
          ),
          "create secret",
        ),
      );
      assertEquals(sec.data, { token: btoa("abc123") });
      assertEquals(sec.type, "Opaque");
      const got = ok(
        await k(s, "get", "secret", "token", "-n", NS, "-o", "jsonpath={.data.token}"),
        "get secret",
      );
      assertEquals(atob(got), "abc123");
    });

    await t.step("a Lease (kubectl has no create lease: apply)", async () => {
      assertEquals(
        ok(await kubectl(s, ["apply", "-f", "-"], { stdin: LEASE }), "apply lease").trim(),
        "lease.coordination.k8s.io/tower-leader created",
      );
      const spec = JSON.parse(
        ok(await k(s, "get", "lease", "tower-leader", "-n", NS, "-o", "json"), "get lease"),
      ).spec;
      assertEquals(spec.holderIdentity, "tower-0");
      assertEquals(spec.renewTime, "2024-05-06T07:08:39.123456Z");
      assertEquals(spec.leaseTransitions, 0);
    });

    await t.step(
      "create serviceaccount; describe shows an Event (protobuf EventList)",
      async () => {
        assertEquals(
          ok(await k(s, "create", "serviceaccount", "robot", "-n", NS), "create sa").trim(),
          "serviceaccount/robot created",
        );
        const cm = await s.request("GET", `/api/v1/namespaces/${NS}/configmaps/settings`);
        const ev = await s.request("POST", `/api/v1/namespaces/${NS}/events`, {
          apiVersion: "v1",
          kind: "Event",
          metadata: { name: "settings.1" },
          involvedObject: {
            kind: "ConfigMap",
            namespace: NS,
            name: "settings",
            uid: cm.body.metadata.uid,
          },
          reason: "Reloaded",
          message: "settings reloaded by tower",
          type: "Normal",
          source: { component: "tower" },
          count: 1,
          firstTimestamp: "2024-05-06T07:08:09Z",
          lastTimestamp: "2024-05-06T07:08:09Z",
        });
        assertEquals(ev.status, 201);
        const d = await k(s, "describe", "configmap", "settings", "-n", NS, "-v=8");
        const out = ok(d, "describe");
        assertMatch(
          d.stderr,
          /GET https:\/\/\S+\/namespaces\/typed\/events\?fieldSelector=involvedObject/,
        );
        assertEquals(responseTypes(d.stderr).at(-1), PROTOBUF, "the EventList came in protobuf");
        assertMatch(out, /Labels:\s+tier=web/);
        assertMatch(out, /Normal\s+Reloaded\s+.*tower\s+settings reloaded by tower/);
        assertEquals(
          ok(await k(s, "auth", "can-i", "create", "configmaps", "-n", NS), "can-i").trim(),
          "yes",
        );
      },
    );

    await t.step("delete", async () => {
      assertEquals(
        ok(await k(s, "delete", "configmap", "settings", "-n", NS), "delete cm").trim(),
        'configmap "settings" deleted',
      );
      const gone = fails(await k(s, "get", "configmap", "settings", "-n", NS), "get deleted");
      assertEquals(gone, 'Error from server (NotFound): configmaps "settings" not found');
      ok(await k(s, "delete", "namespace", NS, "--timeout=20s"), "delete ns");
      assertStringIncludes(fails(await k(s, "get", "namespace", NS), "get ns"), "not found");
    });
  } finally {
    await s.close();
  }
});
