/**
 * The original walkthrough end to end, every piece real except the clusters:
 * a host and a member test API server, `proxy.ts` in Kubernetes mode, an
 * `agent.ts` process, and the real `kubectl` on both sides — install the CRD,
 * create a Cluster with an empty token, read the token, start the agent, read
 * the kubeconfig back and use it through the tunnel.
 */

import { Buffer } from "node:buffer";
import { parse } from "yaml";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "../helpers/assert.ts";
import { denoRun, freePort, type Proc, run, tempDir } from "../helpers/proc.ts";
import { startTestApiServer, type TestApiServer } from "../apiserver/server.ts";
import { kubectl } from "../apiserver/testing.ts";
import { loadCA, verifyClientCert } from "../../lib/pki/mod.ts";

/** kubectl with any kubeconfig and a private cache. */
function kubectlWith(kubeconfig: string, cacheDir: string, args: string[], stdin?: string) {
  return run("kubectl", [
    `--kubeconfig=${kubeconfig}`,
    `--cache-dir=${cacheDir}`,
    "--request-timeout=20s",
    ...args,
  ], { stdin, timeoutMs: 60_000 });
}

/** Wait until `kubectl get <what> -o jsonpath=<path>` prints something matching `re`. */
async function waitJsonpath(
  host: TestApiServer,
  what: string[],
  path: string,
  re: RegExp,
  timeoutMs = 30_000,
) {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  while (Date.now() < deadline) {
    // `kubectl wait` blocks on a watch until the condition holds: no polling sleep.
    const r = await kubectl(host, [
      "wait",
      ...what,
      `--for=jsonpath=${path}`,
      `--timeout=${Math.max(1, Math.round((deadline - Date.now()) / 1000))}s`,
    ]);
    const got = await kubectl(host, [
      "get",
      ...what,
      "-o",
      `jsonpath=${path.replace(/\}=[^}]*$/, "}")}`,
    ]);
    last = got.stdout;
    if (r.code === 0 || re.test(last)) return last;
  }
  throw new Error(`${what.join(" ")} ${path}: still ${JSON.stringify(last)} after ${timeoutMs} ms`);
}

/** `proxy.ts` in Kubernetes mode against `host`, agents on 127.0.0.1:`agentPort`. */
function kubeModeProxy(host: TestApiServer, agentPort: number, metricsAddress = ""): Proc {
  return denoRun("proxy", "proxy.ts", [
    "--kubeconfig",
    host.kubeconfigPath,
    "--host",
    "127.0.0.1",
    "--port",
    String(agentPort),
    "--publish-service-address",
    "127.0.0.1",
    "--metrics-address",
    metricsAddress,
  ]);
}

/** `agent.ts` for cluster `name` against the proxy on `agentPort`, dialling `member`. */
function memberAgent(
  label: string,
  name: string,
  token: string,
  agentPort: number,
  member: TestApiServer,
  extra: string[] = [],
): Proc {
  return denoRun(label, "agent.ts", [
    "--name",
    name,
    "--token",
    token,
    "--proxy-server",
    `http://127.0.0.1:${agentPort}`,
    "--kubeconfig",
    member.kubeconfigPath,
    ...extra,
  ]);
}

/** A Cluster object as JSON, `connection.type: proxy`, empty token unless given. */
function clusterJson(name: string, connection: Record<string, unknown> = {}): string {
  return JSON.stringify({
    apiVersion: "cluster.kubesphere.io/v1alpha1",
    kind: "Cluster",
    metadata: { name },
    spec: { connection: { type: "proxy", token: "", ...connection }, joinFederation: true },
  });
}

Deno.test("walkthrough: CRD, proxy, Cluster, token, agent, kubeconfig, kubectl through the tunnel", async (t) => {
  await using dir = await tempDir();
  const host = await startTestApiServer({ namespaces: ["kubesphere-system"] });
  const member = await startTestApiServer({ namespaces: ["member-only"] });
  const agentPort = freePort();
  const procs: Proc[] = [];
  try {
    await t.step("install the CRD with kubectl kustomize | kubectl create", async () => {
      const rendered = await run("kubectl", ["kustomize", "crd"]);
      assertEquals(rendered.code, 0, rendered.stderr);
      const created = await kubectl(host, ["create", "-f", "-"], { stdin: rendered.stdout });
      assertEquals(created.code, 0, created.stderr);
      assertStringIncludes(
        created.stdout,
        "customresourcedefinition.apiextensions.k8s.io/clusters.cluster.kubesphere.io created",
      );
    });

    const proxy = kubeModeProxy(host, agentPort, "127.0.0.1:0");
    procs.push(proxy);
    await proxy.waitFor(/Listening on 127\.0\.0\.1/, 30_000);

    await t.step("/readyz says what it waits for: cache synced, controller role", async () => {
      const addr = /address="([^"]+)"/.exec(await proxy.waitFor(/Serving metrics and health/))![1];
      const r = await fetch(`http://${addr}/readyz`);
      const text = await r.text();
      assertEquals(r.status, 200, text);
      assertStringIncludes(text, "clusters cache: synced");
      assertStringIncludes(text, "controller: running");
    });

    let token = "";
    await t.step("create a Cluster with an empty token; the proxy fills it in", async () => {
      const r = await kubectl(host, ["create", "-f", "-"], { stdin: clusterJson("alpha") });
      assertEquals(r.code, 0, r.stderr);
      await waitJsonpath(
        host,
        ["cluster", "alpha"],
        '{.status.conditions[?(@.type=="Initialized")].status}=True',
        /True/,
      );
      token = (await kubectl(host, [
        "get",
        "cluster",
        "alpha",
        "-o",
        "jsonpath={.spec.connection.token}",
      ])).stdout;
      assertMatch(token, /^[0-9a-f]{64}$/);
      const svc = JSON.parse(
        (await kubectl(host, ["-n", "kubesphere-system", "get", "svc", "mc-alpha", "-o", "json"]))
          .stdout,
      );
      // No selector: a proxy outside the cluster is reached at --publish-service-address; in the
      // cluster each replica serving a cluster publishes an EndpointSlice for this Service.
      assertEquals(svc.spec.selector, undefined);
      const cl = JSON.parse(
        (await kubectl(host, ["get", "cluster", "alpha", "-o", "json"])).stdout,
      );
      const ports = Object.fromEntries(
        svc.spec.ports.map((
          p: { name: string; port: number; targetPort: number },
        ) => [p.name, [p.port, p.targetPort]]),
      );
      assertEquals(ports.kubernetes, [6443, cl.spec.connection.kubernetesAPIServerPort]);
      assertEquals(ports.kubesphere, [80, cl.spec.connection.kubesphereAPIServerPort]);
      assertEquals(
        cl.spec.connection.kubernetesAPIEndpoint,
        `https://127.0.0.1:${cl.spec.connection.kubernetesAPIServerPort}`,
      );
    });

    const agent = memberAgent("agent", "alpha", token, agentPort, member, [
      "--kubesphere-service",
      "127.0.0.1:1",
      "--v",
      "4",
    ]);
    procs.push(agent);

    const kubeconfigPath = `${dir.path}/config_alpha`;
    await t.step(
      "the agent connects; AgentAvailable turns True and a kubeconfig appears",
      async () => {
        for (
          const line of [
            /Handshaking\.\.\./,
            /Proxy host key fingerprint="SHA256:/,
            /Sending config/,
            /Connected\./,
          ]
        ) {
          await agent.waitFor(line, 30_000);
        }
        await waitJsonpath(
          host,
          ["cluster", "alpha"],
          '{.status.conditions[?(@.type=="AgentAvailable")].status}=True',
          /True/,
        );
        await waitJsonpath(host, ["cluster", "alpha"], "{.spec.connection.kubeconfig}", /.+/);
        const b64 = (await kubectl(host, [
          "get",
          "cluster",
          "alpha",
          "-o",
          "jsonpath={.spec.connection.kubeconfig}",
        ])).stdout;
        const kubeconfig = Buffer.from(b64, "base64").toString("utf8");
        await Deno.writeTextFile(kubeconfigPath, kubeconfig);
        // Its client certificate verifies against Tower's CA (kept in Secret tower-ca).
        const secret = JSON.parse(
          (await kubectl(host, [
            "-n",
            "kubesphere-system",
            "get",
            "secret",
            "tower-ca",
            "-o",
            "json",
          ])).stdout,
        );
        const ca = await loadCA(
          Buffer.from(secret.data["tls.crt"], "base64").toString(),
          Buffer.from(secret.data["tls.key"], "base64").toString(),
        );
        const kc = parse(kubeconfig);
        const cert = Buffer.from(kc.users[0].user["client-certificate-data"], "base64").toString();
        const verdict = await verifyClientCert(ca, cert);
        assert(verdict.ok, JSON.stringify(verdict));
        assertEquals([verdict.commonName, verdict.organizations], ["kubernetes-admin", [
          "system:masters",
        ]]);
      },
    );

    const cache = `${dir.path}/kubectl-cache`;
    await t.step("kubectl --kubeconfig config_alpha reaches the member cluster", async () => {
      const ns = await kubectlWith(kubeconfigPath, cache, ["get", "ns"]);
      assertEquals(ns.code, 0, ns.stderr);
      assertStringIncludes(ns.stdout, "member-only");
      const nodes = await kubectlWith(kubeconfigPath, cache, ["get", "node"]);
      assertEquals(nodes.code, 0, nodes.stderr);
      assertStringIncludes(nodes.stdout, "node-1");
      const clusters = await kubectl(host, ["get", "clusters"]);
      assertMatch(clusters.stdout, /alpha\s.*proxy\s+True\s+https:\/\/127\.0\.0\.1:\d+/);
      // Metrics moved with that traffic and with the reconciles behind it.
      const addr = /address="([^"]+)"/.exec(await proxy.waitFor(/Serving metrics and health/))![1];
      const metrics = await (await fetch(`http://${addr}/metrics`)).text();
      const value = (re: RegExp) => Number(re.exec(metrics)?.[1] ?? 0);
      assert(value(/^tower_reconciles_total\{result="success"\} (\d+)/m) > 0, "reconciles counted");
      assert(
        value(
          /^tower_proxied_requests_total\{cluster="alpha",endpoint="kubernetes",code="200"\} (\d+)/m,
        ) > 0,
        "proxied requests counted",
      );
      assert(value(/^tower_proxied_bytes_total\{cluster="alpha",direction="out"\} (\d+)/m) > 0);
    });

    await t.step("a client without Tower's client certificate gets 401", async () => {
      const kc = parse(await Deno.readTextFile(kubeconfigPath));
      delete kc.users[0].user["client-certificate-data"];
      delete kc.users[0].user["client-key-data"];
      kc.users[0].user.token = "not-a-tower-credential";
      const anon = `${dir.path}/anon`;
      await Deno.writeTextFile(anon, JSON.stringify(kc));
      const r = await kubectlWith(anon, `${dir.path}/anon-cache`, ["get", "ns"]);
      assert(r.code !== 0);
      assertMatch(r.stderr, /must be logged in|provide credentials|Unauthorized/);
    });

    await t.step("the agent stops: AgentAvailable turns False", async () => {
      await agent.stop();
      await waitJsonpath(
        host,
        ["cluster", "alpha"],
        '{.status.conditions[?(@.type=="AgentAvailable")].status}=False',
        /False/,
      );
      const r = await kubectlWith(kubeconfigPath, cache, ["get", "ns"]);
      assert(r.code !== 0);
      assertMatch(r.stderr + r.stdout, /alpha|503|Service Unavailable|no agent/i);
    });

    await t.step(
      "proxy join alpha: the manifest applies to the member and its agent connects",
      async () => {
        const join = await run(Deno.execPath(), [
          "run",
          "-A",
          "--quiet",
          "proxy.ts",
          "join",
          "alpha",
          "--proxy-server",
          `http://127.0.0.1:${agentPort}`,
          "--kubeconfig",
          host.kubeconfigPath,
        ]);
        assertEquals(join.code, 0, join.stderr);
        const applied = await kubectl(member, ["apply", "-f", "-"], { stdin: join.stdout });
        assertEquals(applied.code, 0, applied.stderr);
        assertStringIncludes(applied.stdout, "deployment.apps/tower-agent created");
        // No kubelet here: run the container the way the Deployment describes it.
        const docs = join.stdout.split(/^---$/m).map((d) => parse(d));
        const secret = docs.find((d) => d.kind === "Secret" && d.metadata.name === "tower-agent");
        const container = docs.find((d) =>
          d.kind === "Deployment"
        ).spec.template.spec.containers[0];
        assertEquals(secret.stringData.token, token);
        const tokenFile = `${dir.path}/token`;
        await Deno.writeTextFile(tokenFile, secret.stringData.token);
        const fpFile = `${dir.path}/proxy-fingerprint`;
        assertMatch(secret.stringData["proxy-fingerprint"], /^SHA256:/, "join pins the host key");
        await Deno.writeTextFile(fpFile, secret.stringData["proxy-fingerprint"]);
        const args = (container.args as string[]).map((a) =>
          a === "--token-file=/etc/tower/token"
            ? `--token-file=${tokenFile}`
            : a === "--proxy-fingerprint-file=/etc/tower/proxy-fingerprint"
            ? `--proxy-fingerprint-file=${fpFile}`
            : a
        ).filter((a) => !a.startsWith("--metrics-address"));
        assert(args.includes(`--proxy-fingerprint-file=${fpFile}`), args.join(" "));
        const joined = denoRun("joined-agent", "agent.ts", [
          ...args,
          "--kubeconfig",
          member.kubeconfigPath,
        ]);
        procs.push(joined);
        await joined.waitFor(/Connected\./, 30_000);
        await waitJsonpath(
          host,
          ["cluster", "alpha"],
          '{.status.conditions[?(@.type=="AgentAvailable")].status}=True',
          /True/,
        );
        await joined.stop();
      },
    );

    await t.step(
      "a port already in use is reported on the Cluster, and the proxy keeps running",
      async () => {
        const squatter = Deno.listen({ hostname: "0.0.0.0", port: 0 });
        try {
          const busy = (squatter.addr as Deno.NetAddr).port;
          const beta = clusterJson("beta", {
            token: "be".repeat(32),
            kubernetesAPIServerPort: busy,
            kubesphereAPIServerPort: freePort(),
          });
          assertEquals((await kubectl(host, ["create", "-f", "-"], { stdin: beta })).code, 0);
          await waitJsonpath(
            host,
            ["cluster", "beta"],
            '{.status.conditions[?(@.type=="Initialized")].status}=True',
            /True/,
          );
          const betaAgent = memberAgent("agent-beta", "beta", "be".repeat(32), agentPort, member);
          procs.push(betaAgent);
          await betaAgent.waitFor(/Connected\./, 30_000);
          const reason = await waitJsonpath(
            host,
            ["cluster", "beta"],
            '{.status.conditions[?(@.type=="AgentAvailable")].reason}=EndpointUnavailable',
            /EndpointUnavailable/,
          );
          assertStringIncludes(reason, "EndpointUnavailable");
          const msg = (await kubectl(host, [
            "get",
            "cluster",
            "beta",
            "-o",
            'jsonpath={.status.conditions[?(@.type=="AgentAvailable")].message}',
          ])).stdout;
          assertStringIncludes(msg, "address in use");
          await betaAgent.stop();
          assert(!proxy.exited, "the proxy must keep running");
        } finally {
          squatter.close();
        }
      },
    );

    // No secret of the member ever reached the proxy's logs.
    const memberKc = parse(await Deno.readTextFile(member.kubeconfigPath));
    const memberKey = memberKc.users[0].user["client-key-data"] as string;
    for (const p of procs) {
      assert(!p.output.includes(token), `${p.name} logged the cluster token`);
      assert(!p.output.includes(memberKey.slice(10, 60)), `${p.name} logged the member key`);
    }
  } finally {
    for (const p of procs.reverse()) await p.stop();
    await member.close();
    await host.close();
  }
});

// In this file so that it never runs beside the walkthrough above: both let the
// controller allocate the first port pair (6001/16001) on this machine.
Deno.test("deno task demo runs the whole flow and exits 0", async () => {
  const r = await run(Deno.execPath(), ["run", "-A", "--quiet", "scripts/demo.ts"], {
    timeoutMs: 120_000,
  });
  assertEquals(r.code, 0, r.stdout + r.stderr);
  assertStringIncludes(r.stdout, "member-team-a");
  assertStringIncludes(r.stdout, "Connected.");
  assertStringIncludes(r.stdout, "OK: the host reached the member's API");
});

Deno.test("host API server failing: tunnels keep serving; the controller converges when it is back", async () => {
  await using dir = await tempDir();
  const host = await startTestApiServer({ namespaces: ["kubesphere-system"] });
  const member = await startTestApiServer({ namespaces: ["member-only"] });
  const agentPort = freePort();
  const procs: Proc[] = [];
  try {
    const crd = await run("kubectl", ["kustomize", "crd"]);
    assertEquals((await kubectl(host, ["create", "-f", "-"], { stdin: crd.stdout })).code, 0);
    const proxy = kubeModeProxy(host, agentPort);
    procs.push(proxy);
    await proxy.waitFor(/Listening on/, 30_000);
    assertEquals(
      (await kubectl(host, ["create", "-f", "-"], { stdin: clusterJson("alpha") })).code,
      0,
    );
    await waitJsonpath(host, ["cluster", "alpha"], "{.spec.connection.token}", /^[0-9a-f]{64}$/);
    const token =
      (await kubectl(host, ["get", "cluster", "alpha", "-o", "jsonpath={.spec.connection.token}"]))
        .stdout;
    const agent = memberAgent("agent", "alpha", token, agentPort, member);
    procs.push(agent);
    await agent.waitFor(/Connected\./, 30_000);
    await waitJsonpath(host, ["cluster", "alpha"], "{.spec.connection.kubeconfig}", /.+/);
    const b64 = (await kubectl(host, [
      "get",
      "cluster",
      "alpha",
      "-o",
      "jsonpath={.spec.connection.kubeconfig}",
    ])).stdout;
    const kubeconfigPath = `${dir.path}/config_alpha`;
    await Deno.writeTextFile(kubeconfigPath, Buffer.from(b64, "base64").toString("utf8"));

    // The host API fails every read and update (500, then 429) and drops its watches.
    for (const status of [500, 429]) {
      host.faults.failNext(1_000_000, status, (method) => method !== "POST");
      host.faults.dropWatches();
      for (let i = 0; i < 3; i++) {
        const r = await kubectlWith(kubeconfigPath, `${dir.path}/cache`, ["get", "ns"]);
        assertEquals(
          r.code,
          0,
          `through the tunnel while the host API answers ${status}: ${r.stderr}`,
        );
        assertStringIncludes(r.stdout, "member-only");
      }
      // Meanwhile someone creates another Cluster (written behind the faults).
      if (status === 500) {
        assertEquals(
          (await host.request(
            "POST",
            "/apis/cluster.kubesphere.io/v1alpha1/clusters",
            JSON.parse(clusterJson("beta")),
          )).status,
          201,
        );
      }
      host.faults.reset();
    }
    assert(!proxy.exited, "a failing host API never takes the proxy down");

    // Back to normal: the controller converges on what it missed, without duplicates.
    await waitJsonpath(
      host,
      ["cluster", "beta"],
      '{.status.conditions[?(@.type=="Initialized")].status}=True',
      /True/,
    );
    const services = JSON.parse(
      (await kubectl(host, ["-n", "kubesphere-system", "get", "svc", "-o", "json"])).stdout,
    );
    const names = services.items.map((s: { metadata: { name: string } }) => s.metadata.name).sort();
    assertEquals(names.filter((n: string) => n.startsWith("mc-")), ["mc-alpha", "mc-beta"]);
    const alpha = JSON.parse(
      (await kubectl(host, ["get", "cluster", "alpha", "-o", "json"])).stdout,
    );
    const available = alpha.status.conditions.find((c: { type: string }) =>
      c.type === "AgentAvailable"
    );
    assertEquals(available.status, "True");
  } finally {
    for (const p of procs.reverse()) await p.stop();
    await member.close();
    await host.close();
  }
});
