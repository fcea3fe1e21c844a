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

  say("$ kubectl kustomize crd | kubectl create -f -          (host)");
  const crd = await must("kubectl kustomize crd", run("kubectl", ["kustomize", "crd"]));
  show("", await must("install CRD", kubectl(host, ["create", "-f", "-"], { stdin: crd })));

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
  show(
    "",
    await must(
      "create cluster",
      kubectl(host, ["create", "-f", "-"], { stdin: JSON.stringify(cluster) }),
    ),
  );
  await waitFor(host, '{.status.conditions[?(@.type=="Initialized")].status}=True');

  say("$ kubectl get cluster alpha -o jsonpath='{.spec.connection.token}'");
  const token = await must(
    "get token",
    kubectl(host, ["get", "cluster", "alpha", "-o", "jsonpath={.spec.connection.token}"]),
  );
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
  await waitFor(host, '{.status.conditions[?(@.type=="AgentAvailable")].status}=True');
  await waitFor(host, "{.spec.connection.kubeconfig}");

  say(
    "$ kubectl get cluster alpha -o jsonpath='{.spec.connection.kubeconfig}' | base64 -d > config_alpha",
  );
  const b64 = await must(
    "get kubeconfig",
    kubectl(host, ["get", "cluster", "alpha", "-o", "jsonpath={.spec.connection.kubeconfig}"]),
  );
  const configAlpha = `${dir}/config_alpha`;
  await Deno.writeTextFile(configAlpha, Buffer.from(b64, "base64").toString("utf8"));

  say(
    "$ kubectl --kubeconfig config_alpha get ns               (through the tunnel, to the member)",
  );
  const ns = await must(
    "kubectl get ns through the tunnel",
    run("kubectl", [`--kubeconfig=${configAlpha}`, `--cache-dir=${dir}/cache`, "get", "ns"]),
  );
  show("", ns);
  if (!ns.includes("member-team-a")) throw new Error("the namespaces are not the member's");

  say("$ kubectl get clusters                                  (host)");
  show("", await must("get clusters", kubectl(host, ["get", "clusters"])));
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
