/**
 * An agent in a pod (simulated: the in-cluster service env vars and a
 * service-account directory with a token the test API server accepts) records
 * the proxy host key it trusts on first use in the Secret deploy/agent ships,
 * with only deploy/agent's narrow Role (the cluster-admin binding removed, RBAC
 * enforced). An impostor is refused before any secret; a record that is
 * garbage or cannot be read (RBAC) means no connection at all, not "trust
 * anything"; removing the record as the error says accepts the new key.
 */

import { Buffer } from "node:buffer";
import { startTestApiServer, type TestApiServer } from "../apiserver/server.ts";
import { kubectl } from "../apiserver/testing.ts";
import { assert, assertEquals, assertStringIncludes } from "../helpers/assert.ts";
import { denoRun, freePort, type Proc, tempDir } from "../helpers/proc.ts";
import { startProxyProc } from "../helpers/tunnel.ts";
import { parseKnownProxies } from "../../lib/agent/known_proxies.ts";
import { startImpostor } from "./impostor.ts";

const TOKEN = "d8".repeat(32);
const NS = "kubesphere-system";
const SA = `system:serviceaccount:${NS}:tower-agent`;
const SECRET = `/api/v1/namespaces/${NS}/secrets/tower-agent-known-proxy`;
const ROLEBINDING = `/apis/rbac.authorization.k8s.io/v1/namespaces/${NS}/rolebindings/tower-agent`;

/** deploy/agent applied, then its cluster-admin binding removed: only the agent's own Role left. */
async function memberCluster(): Promise<TestApiServer> {
  const s = await startTestApiServer({ rbac: true });
  const applied = await kubectl(s, ["apply", "-k", "deploy/agent"]);
  assertEquals(applied.code, 0, applied.stderr);
  const crb = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/tower-agent";
  assertEquals((await s.request("DELETE", crb)).status, 200);
  return s;
}

/** What the kubelet mounts in the pod: the ServiceAccount's token, the CA, the namespace. */
async function serviceAccountDir(s: TestApiServer, dir: string): Promise<string> {
  const sa = `${dir}/serviceaccount`;
  await Deno.mkdir(sa);
  const token = s.issueToken(SA, ["system:serviceaccounts", `system:serviceaccounts:${NS}`]);
  await Deno.writeTextFile(`${sa}/token`, token);
  await Deno.writeTextFile(`${sa}/ca.crt`, s.caPem);
  await Deno.writeTextFile(`${sa}/namespace`, NS);
  return sa;
}

async function recorded(s: TestApiServer): Promise<Map<string, string>> {
  const data = (await s.request("GET", SECRET)).body.data as Record<string, string> | undefined;
  const text = Buffer.from(data?.known_proxies ?? "", "base64").toString("utf8");
  return parseKnownProxies(text, "secret");
}

Deno.test("in a pod: the first key is recorded in the agent's Secret under deploy/agent's Role; an impostor is refused; an unreadable record means no dial", async () => {
  await using dir = await tempDir();
  const s = await memberCluster();
  const port = freePort();
  const key = `ws://127.0.0.1:${port}/`;
  const procs: Proc[] = [];
  try {
    const { proc: proxy, fingerprint: fp } = await startProxyProc({
      dir: dir.path,
      port,
      name: "alpha",
      token: TOKEN,
    });
    procs.push(proxy);
    const agent = denoRun("agent", "agent.ts", [
      "--name",
      "alpha",
      "--token",
      TOKEN,
      "--proxy-server",
      `http://127.0.0.1:${port}`,
      "--service-account-dir",
      await serviceAccountDir(s, dir.path),
      "--kubesphere-service",
      "127.0.0.1:1",
      "--max-retry-interval",
      "1s",
    ], { KUBERNETES_SERVICE_HOST: "127.0.0.1", KUBERNETES_SERVICE_PORT: String(s.port) });
    procs.push(agent);
    await agent.waitFor(/Connected\./, 30_000);
    assertStringIncludes(
      await agent.waitFor(/first use/),
      `recordedIn="Secret ${NS}/tower-agent-known-proxy"`,
    );
    assertEquals(await recorded(s), new Map([[key, fp]]));
    assertEquals(s.audit.where({ user: SA, status: 403 }), []);
    const calls = s.audit.calls(SA);
    assert(calls.includes(`update core/secrets ${NS}/tower-agent-known-proxy`), calls.join("\n"));

    // An impostor at the proxy's address.
    proxy.signal("SIGKILL");
    await proxy.status();
    const impostor = startImpostor(port);
    try {
      const from = agent.lines.length;
      const refusal = await agent.waitFor(/Proxy host key changed/, 30_000, from);
      assertStringIncludes(
        refusal,
        `${key} presented ${impostor.fingerprint}, but ${fp} was recorded`,
      );
      assertStringIncludes(refusal, `Secret ${NS}/tower-agent-known-proxy`);
      assertStringIncludes(refusal, `kubectl -n ${NS} patch secret tower-agent-known-proxy`);
      assertEquals([impostor.auths, impostor.requests], [[], []]);

      // A record that is garbage, or that the agent may no longer read: it does not even dial.
      const shipped = (await s.request("GET", SECRET)).body;
      const garbage = { known_proxies: Buffer.from("garbage\n").toString("base64") };
      assertEquals((await s.request("PUT", SECRET, { ...shipped, data: garbage })).status, 200);
      // The attempt after the first refusal started after the change: it must not dial.
      const noDial = async (re: RegExp) => {
        const cannot = /Cannot read the proxy host keys/;
        await agent.waitFor(cannot, 30_000, agent.lines.length);
        const dialled = impostor.connections;
        const line = await agent.waitFor(cannot, 30_000, agent.lines.length);
        assert(re.test(line), line);
        assertEquals(impostor.connections, dialled, "the agent dialled without a record");
      };
      await noDial(/tower-agent-known-proxy: cannot read: data\.known_proxies line 1/);
      const binding = (await s.request("GET", ROLEBINDING)).body;
      assertEquals((await s.request("DELETE", ROLEBINDING)).status, 200);
      await noDial(/403|forbidden.*needs get and update on this Secret/i);
      assertEquals([impostor.auths, impostor.requests], [[], []]);

      // The Role back; the Secret gone (and the agent may not create it): seen first, the
      // impostor's key cannot be recorded, so it is not used either.
      const { metadata: { resourceVersion: _rv, ...meta }, ...rest } = binding;
      assertEquals(
        (await s.request("POST", ROLEBINDING.replace(/\/tower-agent$/, ""), {
          ...rest,
          metadata: meta,
        })).status,
        201,
      );
      assertEquals((await s.request("DELETE", SECRET)).status, 200);
      const unrecorded = await agent.waitFor(
        /Cannot record the proxy host key/,
        30_000,
        agent.lines.length,
      );
      assertStringIncludes(unrecorded, `${impostor.fingerprint} for ${key}, so it is not trusted`);
      assertStringIncludes(unrecorded, "may not create Secrets: apply deploy/agent");
      assertEquals([impostor.auths, impostor.requests], [[], []]);

      // Applied again with the old record, then the operator accepts the new key as the error says.
      const { metadata: { resourceVersion: _v, uid: _u, ...secretMeta }, ...secretRest } = shipped;
      const known = { known_proxies: Buffer.from(`${key} ${fp}\n`).toString("base64") };
      assertEquals(
        (await s.request("POST", SECRET.replace(/\/tower-agent-known-proxy$/, ""), {
          ...secretRest,
          metadata: secretMeta,
          data: known,
        })).status,
        201,
      );
      await agent.waitFor(/Proxy host key changed/, 30_000, agent.lines.length);
      const patched = await kubectl(s, [
        "-n",
        NS,
        "patch",
        "secret",
        "tower-agent-known-proxy",
        "--type=json",
        "-p",
        '[{"op":"remove","path":"/data/known_proxies"}]',
      ]);
      assertEquals(patched.code, 0, patched.stderr);
      const at = agent.lines.length;
      await agent.waitFor(/Connected\./, 30_000, at);
      assertEquals(await recorded(s), new Map([[key, impostor.fingerprint]]));
    } finally {
      await impostor.close();
    }
  } finally {
    for (const p of procs.reverse()) await p.stop();
    await s.close();
  }
});
