/**
 * `proxy join` renders the same objects as `deploy/agent` (checked against the
 * real `kubectl kustomize`), with the cluster's name, token, proxy and host key
 * fingerprint filled in; it fails (no output) when it cannot read the host
 * key; and `--print command` keeps the token out of argv and shell history
 * (run for real: the printed command in an interactive bash starts the agent,
 * which connects to a proxy with that host key).
 */

import { parseAllDocuments } from "yaml";
import { Buffer } from "node:buffer";
import { startTestApiServer, type TestApiServer } from "../apiserver/server.ts";
import { kubectl } from "../apiserver/testing.ts";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "../helpers/assert.ts";
import { freePort, Proc, run, tempDir } from "../helpers/proc.ts";
import { memberKubeconfig, startProxyProc } from "../helpers/tunnel.ts";
import { joinCommand, joinManifest, joinObjects } from "../../lib/proxy/join.ts";
import { generateHostKeyPem, parseHostKey } from "../../lib/tunnel/hostkey.ts";

const TOKEN = "6f".repeat(32);
const ROOT = new URL("../../", import.meta.url).pathname;

Deno.test("join objects are deploy/agent with the placeholders filled in", async () => {
  const r = await run("kubectl", ["kustomize", "deploy/agent"]);
  assertEquals(r.code, 0, r.stderr);
  const rendered = parseAllDocuments(r.stdout).map((d) => d.toJS());
  const ours = joinObjects({
    cluster: "REPLACE-WITH-THE-CLUSTER-NAME",
    token: "REPLACE-WITH-THE-CLUSTER-TOKEN",
    proxyServer: "http://REPLACE-WITH-THE-PROXY-ADDRESS:8080",
    fingerprint: "REPLACE-WITH-THE-PROXY-FINGERPRINT",
  });
  assertEquals(ours, rendered);
});

Deno.test("join manifest carries token, name, proxy and the pinned fingerprint, both from the Secret", () => {
  const input = {
    cluster: "alpha",
    token: "ab".repeat(32),
    proxyServer: "https://tower.example.com",
    fingerprint: "SHA256:" + "x".repeat(43),
  };
  const docs = parseAllDocuments(joinManifest(input)).map((d) => d.toJS());
  const secret = docs.find((d) => d.kind === "Secret" && d.metadata.name === "tower-agent");
  assertEquals(secret.stringData, { "proxy-fingerprint": input.fingerprint, token: input.token });
  const pod = docs.find((d) => d.kind === "Deployment").spec.template.spec;
  assertEquals(pod.containers[0].args, [
    "--name=alpha",
    "--proxy-server=https://tower.example.com",
    "--token-file=/etc/tower/token",
    "--proxy-fingerprint-file=/etc/tower/proxy-fingerprint",
    "--metrics-address=:9090",
  ]);
  assertEquals(pod.volumes[0].secret.items.map((i: { key: string }) => i.key), [
    "token",
    "proxy-fingerprint",
  ]);
  // The command holds neither the token nor any way to pass one on the command line.
  const cmd = joinCommand(input);
  assert(!cmd.includes(input.token), cmd);
  assert(!/--token=/.test(cmd), cmd);
  assertStringIncludes(cmd, `--proxy-fingerprint=${input.fingerprint}`);
  assertStringIncludes(joinCommand({ ...input, cluster: "it's" }), `--name='it'"'"'s'`);
});

/** A host cluster with the Cluster CRD and the Cluster `alpha` (token {@link TOKEN}). */
async function hostCluster(rbac = false): Promise<TestApiServer> {
  const s = await startTestApiServer({ namespaces: ["kubesphere-system"], rbac });
  const crd = await run("kubectl", ["kustomize", "crd"]);
  assertEquals(crd.code, 0, crd.stderr);
  const applied = await kubectl(s, ["apply", "-f", "-"], { stdin: crd.stdout });
  assertEquals(applied.code, 0, applied.stderr);
  const r = await s.request("POST", "/apis/cluster.kubesphere.io/v1alpha1/clusters", {
    apiVersion: "cluster.kubesphere.io/v1alpha1",
    kind: "Cluster",
    metadata: { name: "alpha" },
    spec: { joinFederation: true, connection: { type: "proxy", token: TOKEN } },
  });
  assertEquals(r.status, 201, r.text);
  return s;
}

const SECRETS = "/api/v1/namespaces/kubesphere-system/secrets";

async function putHostKey(s: TestApiServer, pem: string) {
  const r = await s.request("POST", SECRETS, {
    metadata: { name: "tower-host-key" },
    data: { "ssh-privatekey": Buffer.from(pem).toString("base64") },
  });
  assertEquals(r.status, 201, r.text);
}

function join(kubeconfig: string, extra: string[] = [], proxyServer = "http://127.0.0.1:8080") {
  return run(Deno.execPath(), [
    "run",
    "-A",
    "--quiet",
    "proxy.ts",
    "join",
    "alpha",
    "--proxy-server",
    proxyServer,
    "--kubeconfig",
    kubeconfig,
    ...extra,
  ]);
}

Deno.test("proxy join without a readable host key fails with a clear error and prints nothing", async () => {
  const s = await hostCluster(true);
  try {
    // Someone allowed to read Clusters but not Secrets.
    for (
      const [path, body] of [
        ["/apis/rbac.authorization.k8s.io/v1/clusterroles", {
          metadata: { name: "cluster-reader" },
          rules: [{
            apiGroups: ["cluster.kubesphere.io"],
            resources: ["clusters"],
            verbs: ["get"],
          }],
        }],
        ["/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
          metadata: { name: "joiner" },
          roleRef: {
            apiGroup: "rbac.authorization.k8s.io",
            kind: "ClusterRole",
            name: "cluster-reader",
          },
          subjects: [{ kind: "User", name: "joiner", apiGroup: "rbac.authorization.k8s.io" }],
        }],
      ] as const
    ) assertEquals((await s.request("POST", path, body)).status, 201);
    const joiner = await s.kubeconfigFor("joiner");

    let r = await join(s.kubeconfigPath);
    assertEquals([r.code, r.stdout], [1, ""]);
    assertMatch(
      r.stderr,
      /Secret kubesphere-system\/tower-host-key does not exist: start the proxy once/,
    );
    assertStringIncludes(r.stderr, "--proxy-fingerprint");

    await putHostKey(s, "not a key");
    r = await join(s.kubeconfigPath);
    assertEquals([r.code, r.stdout], [1, ""]);
    assertMatch(r.stderr, /tower-host-key: not a usable SSH private key/);

    assertEquals((await s.request("DELETE", `${SECRETS}/tower-host-key`)).status, 200);
    const pem = generateHostKeyPem();
    await putHostKey(s, pem);
    r = await join(joiner);
    assertEquals([r.code, r.stdout], [1, ""]);
    assertMatch(r.stderr, /tower-host-key: not allowed to read it/);
    assertStringIncludes(r.stderr, "--proxy-fingerprint");

    // The fingerprint given by hand works without the Secret; the admin reads it from there.
    const fp = parseHostKey(pem).fingerprint;
    r = await join(joiner, ["--proxy-fingerprint", fp]);
    assertEquals(r.code, 0, r.stderr);
    assertStringIncludes(r.stdout, `proxy-fingerprint: ${fp}`);
    r = await join(s.kubeconfigPath);
    assertEquals(r.code, 0, r.stderr);
    assertStringIncludes(r.stdout, `proxy-fingerprint: ${fp}`);
    r = await join(joiner, ["--proxy-fingerprint", "SHA256:short"]);
    assertEquals(r.code, 2, r.stderr);
  } finally {
    await s.close();
  }
});

Deno.test("proxy join --print command: run in an interactive bash, the agent connects; the token is in no argv, environment or history", async () => {
  await using dir = await tempDir();
  const s = await hostCluster();
  const pem = generateHostKeyPem();
  const procs: Proc[] = [];
  try {
    await putHostKey(s, pem);
    const port = freePort();
    const j = await join(s.kubeconfigPath, ["--print", "command"], `http://127.0.0.1:${port}`);
    assertEquals(j.code, 0, j.stderr);
    assert(!j.stdout.includes(TOKEN), "the command itself holds no token");
    assertStringIncludes(j.stderr, `cluster token for alpha (paste it at the command's prompt`);
    assertStringIncludes(j.stderr, TOKEN);

    // The proxy, with the host key join pinned.
    await Deno.writeTextFile(`${dir.path}/host_key`, pem, { mode: 0o600 });
    const proxy = await startProxyProc({
      dir: dir.path,
      port,
      name: "alpha",
      token: TOKEN,
      hostKey: `${dir.path}/host_key`,
    });
    procs.push(proxy.proc);
    assertEquals(proxy.fingerprint, parseHostKey(pem).fingerprint);

    // The agent's machine: a home with a kubeconfig, `agent` on PATH (this checkout).
    const home = `${dir.path}/home`;
    await Deno.mkdir(`${home}/.kube`, { recursive: true });
    await Deno.writeTextFile(`${home}/.kube/config`, memberKubeconfig(1));
    await Deno.mkdir(`${dir.path}/bin`);
    // The same Deno cache as this test (the default one is under HOME).
    const info = await run(Deno.execPath(), ["info", "--json"]);
    const denoDir = JSON.parse(info.stdout).denoDir as string;
    await Deno.writeTextFile(
      `${dir.path}/bin/agent`,
      `#!/bin/sh\necho $$ > "${dir.path}/agent.pid"\n` +
        `DENO_DIR="${denoDir}" exec "${Deno.execPath()}" run -A --quiet "${ROOT}agent.ts" "$@"\n`,
      { mode: 0o755 },
    );
    // What a person types: the printed command, then the token at its prompt, then `exit`.
    await Deno.writeTextFile(`${dir.path}/typed`, `${j.stdout}${TOKEN}\nexit\n`);
    const bash = new Proc("bash", "sh", [
      "-c",
      `exec bash --norc -i < "${dir.path}/typed"`,
    ], {
      HOME: home,
      HISTFILE: `${dir.path}/history`,
      PATH: `${dir.path}/bin:${Deno.env.get("PATH")}`,
    });
    procs.push(bash);
    await bash.waitFor(/Connected\./, 30_000);
    const pid = Number((await Deno.readTextFile(`${dir.path}/agent.pid`)).trim());
    const argv = (await Deno.readTextFile(`/proc/${pid}/cmdline`)).split("\0");
    assert(argv.some((a) => a.endsWith("agent.ts")), argv.join(" "));
    assertStringIncludes(argv.join(" "), `--token-file=${home}/.config/tower/alpha.token`);
    assert(!argv.join(" ").includes(TOKEN), "token in the agent's argv");
    assert(!(await Deno.readTextFile(`/proc/${pid}/environ`)).includes(TOKEN), "token in its env");
    const tokenFile = `${home}/.config/tower/alpha.token`;
    assertEquals(await Deno.readTextFile(tokenFile), `${TOKEN}\n`);
    assertEquals((await Deno.stat(tokenFile)).mode! & 0o777, 0o600);
    assertEquals((await Deno.stat(`${home}/.config/tower`)).mode! & 0o777, 0o700);

    Deno.kill(pid, "SIGTERM");
    assertEquals((await bash.status()).code, 0, bash.tail());
    const history = await Deno.readTextFile(`${dir.path}/history`);
    assertStringIncludes(history, "agent --name=alpha");
    assert(!history.includes(TOKEN), `token in the shell history:\n${history}`);
    assert(!bash.output.includes(TOKEN), "the prompt echoed the token");
  } finally {
    for (const p of procs.reverse()) await p.stop();
    await s.close();
  }
});
