/**
 * `deno task demo`: Tower end to end on 127.0.0.1 with no cluster.
 *
 * Starts two test Kubernetes API servers (a "host" and a "member"), installs
 * the Cluster CRD in the host, runs the proxy against it (Kubernetes mode) and
 * an agent against the member, creates the Cluster `alpha` with an empty token
 * exactly as the original walkthrough does, reads the token and the kubeconfig
 * back, and runs the real `kubectl --kubeconfig config_alpha get ns` through
 * the tunnel. `--keep` leaves everything running until Ctrl-C.
 *
 * To tunnel to a real member cluster instead, run the agent yourself with
 * `--kubeconfig ~/.kube/config` (see README) against a proxy.
 * @module
 */

import { Buffer } from "node:buffer";
import { denoRun, freePort, type Proc, run } from "../tests/helpers/proc.ts";
import { startTestApiServer, type TestApiServer } from "../tests/apiserver/server.ts";
import { kubectl } from "../tests/apiserver/testing.ts";
import { parseAllDocuments } from "yaml";
import {
  CLUSTERS,
  KubeClient,
  type KubeObject,
  loadKubeConnection,
  NAMESPACES,
} from "../lib/kube/mod.ts";

const keep = Deno.args.includes("--keep");
const say = (s: string) => console.log(`\ndemo: ${s}`);
const show = (prefix: string, text: string) =>
  console.log(text.trimEnd().split("\n").map((l) => `  ${prefix}${l}`).join("\n"));

async function must(what: string, p: Promise<{ code: number; stdout: string; stderr: string }>) {
  const r = await p;
  if (r.code !== 0) throw new Error(`${what} failed: ${r.stderr || r.stdout}`);
  return r.stdout;
}

/** `kubectl wait` for a jsonpath condition on the host (blocks on a watch, bounded). */
function waitFor(host: TestApiServer, jsonpath: string) {
  return must(
    `wait for ${jsonpath}`,
    kubectl(host, ["wait", "cluster/alpha", `--for=jsonpath=${jsonpath}`, "--timeout=60s"], {
      timeoutMs: 70_000,
    }),
  );
}

/** Whether the real `kubectl` is on the PATH (else the demo uses Tower's own client). */
async function haveKubectl(): Promise<boolean> {
  try {
    return (await new Deno.Command("kubectl", {
      args: ["version", "--client"],
      stdout: "null",
      stderr: "null",
    })
      .output()).success;
  } catch {
    return false;
  }
}

type ClusterObj = KubeObject & {
  spec?: { connection?: { token?: string; kubeconfig?: string; kubernetesAPIEndpoint?: string } };
  status?: { conditions?: { type: string; status: string }[] };
};

/** Without kubectl: watch Cluster alpha with lib/kube until `done` holds (bounded). */
async function watchAlpha(
  client: KubeClient,
  done: (c: ClusterObj) => boolean,
): Promise<ClusterObj> {
  for await (
    const ev of client.watch<ClusterObj>(CLUSTERS, {
      fieldSelector: "metadata.name=alpha",
      timeoutSeconds: 60,
    })
  ) {
    if (ev.type !== "BOOKMARK" && done(ev.object)) return ev.object;
  }
  throw new Error("Cluster alpha did not reach the expected state within 60 s");
}

const condition = (c: ClusterObj, type: string) =>
  c.status?.conditions?.find((x) => x.type === type)?.status;

const procs: Proc[] = [];
const servers: TestApiServer[] = [];
const dir = await Deno.makeTempDir({ prefix: "tower-demo-" });
let ok = false;
try {
  say("starting a host and a member test Kubernetes API server on 127.0.0.1");
  const host = await startTestApiServer({ namespaces: ["kubesphere-system"] });
  servers.push(host);
  const member = await startTestApiServer({ namespaces: ["member-team-a", "member-team-b"] });
  servers.push(member);
  console.log(`  host   ${host.url}\n  member ${member.url}`);

  const useKubectl = await haveKubectl();
  if (!useKubectl) say("kubectl is not on the PATH: the host-side steps use Tower's own client");
  const hostClient = new KubeClient(await loadKubeConnection(host.kubeconfigPath));
  say("$ kubectl kustomize crd | kubectl create -f -          (host)");
  if (useKubectl) {
    const crd = await must("kubectl kustomize crd", run("kubectl", ["kustomize", "crd"]));
    show("", await must("install CRD", kubectl(host, ["create", "-f", "-"], { stdin: crd })));
  } else {
    const text = await Deno.readTextFile("crd/cluster.kubesphere.io_clusters.yaml");
    const crd = parseAllDocuments(text).map((d) => d.toJS()).find((o) =>
      o?.kind === "CustomResourceDefinition"
    );
    const r = await host.request(
      "POST",
      "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
      crd,
    );
    if (r.status !== 201) throw new Error(`install CRD: ${r.status}`);
    show(
      "",
      "customresourcedefinition.apiextensions.k8s.io/clusters.cluster.kubesphere.io created",
    );
  }

  const agentPort = freePort();
  say(
    `$ proxy --kubeconfig host --host 127.0.0.1 --port ${agentPort} --publish-service-address 127.0.0.1`,
  );
  const proxy = denoRun("proxy", "proxy.ts", [
    "--kubeconfig",
    host.kubeconfigPath,
    "--host",
    "127.0.0.1",
    "--port",
    String(agentPort),
    "--publish-service-address",
    "127.0.0.1",
    "--metrics-address",
    "127.0.0.1:0",
  ]);
  procs.push(proxy);
  await proxy.waitFor(/Listening on/, 60_000);
  show("proxy| ", proxy.output);

  say("$ kubectl create -f agent.yaml                          (host: Cluster alpha, empty token)");
  const cluster = {
    apiVersion: "cluster.kubesphere.io/v1alpha1",
    kind: "Cluster",
    metadata: { name: "alpha" },
    spec: { connection: { type: "proxy", token: "" }, joinFederation: true },
  };
  let token: string;
  if (useKubectl) {
    show(
      "",
      await must(
        "create cluster",
        kubectl(host, ["create", "-f", "-"], { stdin: JSON.stringify(cluster) }),
      ),
    );
    await waitFor(host, '{.status.conditions[?(@.type=="Initialized")].status}=True');
    say("$ kubectl get cluster alpha -o jsonpath='{.spec.connection.token}'");
    token = await must(
      "get token",
      kubectl(host, ["get", "cluster", "alpha", "-o", "jsonpath={.spec.connection.token}"]),
    );
  } else {
    await hostClient.create(CLUSTERS, cluster);
    show("", "cluster.cluster.kubesphere.io/alpha created");
    say("$ kubectl get cluster alpha -o jsonpath='{.spec.connection.token}'");
    const c = await watchAlpha(hostClient, (c) => condition(c, "Initialized") === "True");
    token = c.spec!.connection!.token!;
  }
  show("", token);

  say(
    `$ agent --kubeconfig member --token ${
      token.slice(0, 8)
    }… --name alpha --proxy-server http://127.0.0.1:${agentPort}`,
  );
  const agent = denoRun("agent", "agent.ts", [
    "--kubeconfig",
    member.kubeconfigPath,
    "--token",
    token,
    "--name",
    "alpha",
    "--proxy-server",
    `http://127.0.0.1:${agentPort}`,
    "--kubesphere-service",
    "127.0.0.1:1",
  ]);
  procs.push(agent);
  await agent.waitFor(/Connected\./, 60_000);
  show("agent| ", agent.output);
  say(
    "$ kubectl get cluster alpha -o jsonpath='{.spec.connection.kubeconfig}' | base64 -d > config_alpha",
  );
  let b64: string;
  if (useKubectl) {
    await waitFor(host, '{.status.conditions[?(@.type=="AgentAvailable")].status}=True');
    await waitFor(host, "{.spec.connection.kubeconfig}");
    b64 = await must(
      "get kubeconfig",
      kubectl(host, ["get", "cluster", "alpha", "-o", "jsonpath={.spec.connection.kubeconfig}"]),
    );
  } else {
    const c = await watchAlpha(
      hostClient,
      (c) => condition(c, "AgentAvailable") === "True" && !!c.spec?.connection?.kubeconfig,
    );
    b64 = c.spec!.connection!.kubeconfig!;
  }
  const configAlpha = `${dir}/config_alpha`;
  await Deno.writeTextFile(configAlpha, Buffer.from(b64, "base64").toString("utf8"));

  say(
    "$ kubectl --kubeconfig config_alpha get ns               (through the tunnel, to the member)",
  );
  let ns: string;
  if (useKubectl) {
    ns = await must(
      "kubectl get ns through the tunnel",
      run("kubectl", [`--kubeconfig=${configAlpha}`, `--cache-dir=${dir}/cache`, "get", "ns"]),
    );
  } else {
    const memberClient = new KubeClient(await loadKubeConnection(configAlpha));
    const list = await memberClient.list(NAMESPACES);
    ns = ["NAME", ...list.items.map((n) => n.metadata.name)].join("\n");
    memberClient.connection.close();
  }
  show("", ns);
  if (!ns.includes("member-team-a")) throw new Error("the namespaces are not the member's");

  say("$ kubectl get clusters                                  (host)");
  if (useKubectl) show("", await must("get clusters", kubectl(host, ["get", "clusters"])));
  else {
    const c = await hostClient.get<ClusterObj>(CLUSTERS, "alpha");
    show(
      "",
      `alpha  proxy  AgentAvailable=${
        condition(c, "AgentAvailable")
      }  ${c.spec?.connection?.kubernetesAPIEndpoint}`,
    );
  }
  hostClient.connection.close();
  say("OK: the host reached the member's API through the agent's outbound tunnel");
  ok = true;

  if (keep) {
    say(`running; kubeconfig for the member through Tower: ${configAlpha}; Ctrl-C to stop`);
    await new Promise<void>((resolve) => Deno.addSignalListener("SIGINT", () => resolve()));
  }
} finally {
  for (const p of procs.reverse()) await p.stop();
  for (const s of servers.reverse()) await s.close();
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  if (!ok && !keep) {
    for (const p of procs) console.error(`--- ${p.name} output ---\n${p.tail(30)}`);
  }
}
if (!ok) Deno.exit(1);
