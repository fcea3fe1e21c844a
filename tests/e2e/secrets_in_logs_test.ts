/**
 * No secret ever reaches the logs, at any verbosity: cluster token, member
 * bearer token, Tower's CA key, the proxy host key, issued client keys.
 * Real processes at `--v 10` carrying real traffic, in both log formats.
 */

import { Buffer } from "node:buffer";
import { parse } from "yaml";
import { assert, assertEquals } from "../helpers/assert.ts";
import { denoRun, freePort, type Proc, tempDir } from "../helpers/proc.ts";
import { startTestApiServer } from "../apiserver/server.ts";

const TOKEN = "e1".repeat(32);
const MEMBER_BEARER = "member-bearer-s3cr3t-0123456789abcdef";

/** Distinctive fragments of a PEM body (the header lines are not secret). */
function pemFragments(pem: string): string[] {
  const body = pem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, "");
  return [body.slice(8, 40), body.slice(-40, -8)];
}

for (const format of ["text", "json"]) {
  Deno.test(`no secrets in logs at --v 10 (${format})`, async () => {
    await using dir = await tempDir();
    const member = await startTestApiServer({ tokens: [MEMBER_BEARER] });
    const memberKc = `${dir.path}/member.kubeconfig`;
    await Deno.writeTextFile(
      memberKc,
      JSON.stringify({
        apiVersion: "v1",
        kind: "Config",
        clusters: [{
          name: "m",
          cluster: {
            server: member.url,
            "certificate-authority-data": Buffer.from(member.caPem).toString("base64"),
          },
        }],
        users: [{ name: "u", user: { token: MEMBER_BEARER } }],
        contexts: [{ name: "c", context: { cluster: "m", user: "u" } }],
        "current-context": "c",
      }),
    );
    const agentPort = freePort();
    const k8sPort = freePort();
    await Deno.writeTextFile(
      `${dir.path}/clusters.json`,
      JSON.stringify([{
        metadata: { name: "alpha" },
        spec: {
          joinFederation: true,
          connection: {
            type: "proxy",
            token: TOKEN,
            kubernetesAPIServerPort: k8sPort,
            kubesphereAPIServerPort: freePort(),
          },
        },
      }]),
    );
    const procs: Proc[] = [];
    let client: Deno.HttpClient | undefined;
    try {
      const proxy = denoRun("proxy", "proxy.ts", [
        "--clusters-file",
        `${dir.path}/clusters.json`,
        "--host",
        "127.0.0.1",
        "--port",
        String(agentPort),
        "--publish-service-address",
        "127.0.0.1",
        "--metrics-address",
        "",
        "--v",
        "10",
        "--log-format",
        format,
      ]);
      procs.push(proxy);
      const agent = denoRun("agent", "agent.ts", [
        "--name",
        "alpha",
        "--token",
        TOKEN,
        "--proxy-server",
        `http://127.0.0.1:${agentPort}`,
        "--kubeconfig",
        memberKc,
        "--kubesphere-service",
        "127.0.0.1:1",
        "--v",
        "10",
        "--log-format",
        format,
      ]);
      procs.push(agent);
      // A refused agent with a wrong token exercises the failure paths too.
      const wrong = denoRun("agent-wrong", "agent.ts", [
        "--name",
        "alpha",
        "--token",
        "f".repeat(64),
        "--proxy-server",
        `http://127.0.0.1:${agentPort}`,
        "--kubeconfig",
        memberKc,
        "--v",
        "10",
        "--log-format",
        format,
        "--max-retry",
        "1",
      ]);
      procs.push(wrong);
      await agent.waitFor(/Connected\./, 30_000);
      await proxy.waitFor(/Wrote kubeconfig/, 30_000);
      await wrong.status();

      const kc = parse(await Deno.readTextFile(`${dir.path}/alpha.kubeconfig`));
      const unb64 = (s: string) => Buffer.from(s, "base64").toString("utf8");
      const clientKey = unb64(kc.users[0].user["client-key-data"]);
      client = Deno.createHttpClient({
        caCerts: [unb64(kc.clusters[0].cluster["certificate-authority-data"])],
        cert: unb64(kc.users[0].user["client-certificate-data"]),
        key: clientKey,
      });
      // Traffic: a request the member authorises with the bearer token, and a 404.
      for (const path of ["/api/v1/namespaces", "/api/v1/namespaces/nope"]) {
        const r = await fetch(`https://127.0.0.1:${k8sPort}${path}`, {
          client,
          headers: { authorization: "Bearer client-supplied-should-not-be-logged-either" },
        });
        await r.body?.cancel();
        assert(r.status === 200 || r.status === 404, `${path}: ${r.status}`);
      }
      await proxy.waitFor(/request.*\/api\/v1\/namespaces\/nope/, 10_000);

      const secrets: [string, string][] = [
        ["cluster token", TOKEN],
        ["wrong token", "f".repeat(64)],
        ["member bearer token", MEMBER_BEARER],
        ["client Authorization", "client-supplied-should-not-be-logged-either"],
        ...pemFragments(await Deno.readTextFile(`${dir.path}/ca.key`)).map((f) =>
          ["CA key", f] as [string, string]
        ),
        ...pemFragments(await Deno.readTextFile(`${dir.path}/proxy_host_key`)).map((f) =>
          ["host key", f] as [string, string]
        ),
        ...pemFragments(clientKey).map((f) => ["client key", f] as [string, string]),
      ];
      for (const p of procs) {
        assert(p.lines.length > 3, `${p.name} logged at --v 10`);
        for (const [what, secret] of secrets) {
          assertEquals(p.output.includes(secret), false, `${p.name} logged the ${what}`);
        }
      }
    } finally {
      client?.close();
      for (const p of procs.reverse()) await p.stop();
      await member.close();
    }
  });
}
