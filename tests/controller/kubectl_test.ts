/**
 * The README walkthrough's host side with the real `kubectl`: create the
 * Cluster from the README's manifest, read the generated token with
 * jsonpath, see the agent column flip, and read the kubeconfig back.
 */
import { Buffer } from "node:buffer";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { KubeClusterSource } from "../../lib/proxy/clusters_kube.ts";
import type { ClusterObject } from "../../lib/controller/types.ts";
import { kubectl } from "../apiserver/testing.ts";
import { cond, startEnv } from "./helpers.ts";

const AGENT_YAML = `apiVersion: cluster.kubesphere.io/v1alpha1
kind: Cluster
metadata:
  name: alpha
  namespace: kubesphere-system
spec:
  connection:
    type: proxy
    token: ""
  joinFederation: true
`;

Deno.test("README walkthrough (host side) with the real kubectl", async () => {
  const env = await startEnv();
  const src = new KubeClusterSource({
    client: env.client,
    controller: { agentGraceMs: 600_000, retryInitialMs: 10, retryMaxMs: 200 },
    informer: { backoffInitialMs: 10, backoffMaxMs: 100 },
  });
  const ok = (r: { code: number; stdout: string; stderr: string }, what: string) => {
    assertEquals(r.code, 0, `${what}: ${r.stderr}`);
    return r.stdout;
  };
  try {
    ok(
      await kubectl(env.server, ["-n", "kubesphere-system", "create", "-f", "-"], {
        stdin: AGENT_YAML,
      }),
      "create cluster",
    );
    await env.clusters.until(
      "alpha",
      (c: ClusterObject | undefined) => cond(c, "Initialized")?.status === "True",
      "Initialized",
    );
    const token = ok(
      await kubectl(env.server, [
        "get",
        "cluster",
        "alpha",
        "-o",
        "jsonpath={.spec.connection.token}",
      ]),
      "get token",
    );
    assertMatch(token, /^[0-9a-f]{64}$/);
    const svc = ok(
      await kubectl(env.server, [
        "-n",
        "kubesphere-system",
        "get",
        "svc",
        "mc-alpha",
        "-o",
        "jsonpath={.spec.ports[*].targetPort}",
      ]),
      "get svc",
    );
    assertEquals(svc, "6001 16001");

    await src.agentConnected("alpha", {
      Version: "v0.1.0",
      Name: "alpha",
      Token: token,
      KubernetesSvcHost: "10.96.0.1:443",
      KubeSphereSvcHost: "ks-apiserver.kubesphere-system.svc:80",
    });
    await env.clusters.until(
      "alpha",
      (c) => cond(c, "AgentAvailable")?.status === "True",
      "AgentAvailable True",
    );
    const table = ok(await kubectl(env.server, ["get", "clusters"]), "get clusters");
    const [header, row] = table.split("\n");
    const at = header.indexOf("AGENT");
    assert(at > 0, table);
    assertEquals(row.slice(at).split(/\s+/)[0], "True", table);

    const kc = "apiVersion: v1\nkind: Config\n";
    await src.publishKubeconfig("alpha", kc);
    const b64 = ok(
      await kubectl(env.server, [
        "-n",
        "kubesphere-system",
        "get",
        "cluster",
        "alpha",
        "-o",
        "jsonpath={.spec.connection.kubeconfig}",
      ]),
      "get kubeconfig",
    );
    assertEquals(Buffer.from(b64, "base64").toString("utf8"), kc);
    await src.controller.whenIdle();
  } finally {
    await src.close();
    await env.close();
  }
});
