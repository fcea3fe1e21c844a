/**
 * No secret ever reaches the logs, at any verbosity: cluster token, member
 * bearer token, Tower's CA key, the proxy host key, issued client keys.
 * Real processes at `--v 10` carrying real traffic, in both log formats.
 */

import { Buffer } from "node:buffer";
import { assert, assertEquals } from "../helpers/assert.ts";
import { tempDir } from "../helpers/proc.ts";
import { startStandaloneStack } from "../helpers/stack.ts";

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
    const stack = await startStandaloneStack({
      dir: dir.path,
      token: TOKEN,
      member: { tokens: [MEMBER_BEARER] },
      proxyArgs: ["--v", "10", "--log-format", format],
      // The agents reach the member with a bearer token, which must never be logged either.
      memberKubeconfig: async (member) => {
        const path = `${dir.path}/member.kubeconfig`;
        await Deno.writeTextFile(
          path,
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
        return path;
      },
    });
    const verbose = ["--v", "10", "--log-format", format];
    try {
      const agent = stack.startAgent("agent", verbose);
      // A refused agent with a wrong token exercises the failure paths too.
      const wrong = stack.startAgent(
        "agent-wrong",
        [...verbose, "--max-retry", "1"],
        "f".repeat(64),
      );
      await agent.waitFor(/Connected\./, 30_000);
      await wrong.status();
      const { client, clientKeyPem: clientKey } = await stack.kubeconfigClient();
      // Traffic: a request the member authorises with the bearer token, and a 404.
      for (const path of ["/api/v1/namespaces", "/api/v1/namespaces/nope"]) {
        const r = await fetch(`https://127.0.0.1:${stack.kubernetesPort}${path}`, {
          client,
          headers: { authorization: "Bearer client-supplied-should-not-be-logged-either" },
        });
        await r.body?.cancel();
        assert(r.status === 200 || r.status === 404, `${path}: ${r.status}`);
      }
      // One audit line per request: cluster, client certificate CN, verb, path, status, bytes, time.
      const audit = await stack.proxy.waitFor(/request.*\/api\/v1\/namespaces\/nope/, 10_000);
      for (const part of ["alpha", "kubernetes-admin", "GET", "404", "bytesOut", "ms"]) {
        assert(audit.includes(part), `audit line lacks ${part}: ${audit}`);
      }

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
      for (const p of [stack.proxy, agent, wrong]) {
        assert(p.lines.length > 3, `${p.name} logged at --v 10`);
        for (const [what, secret] of secrets) {
          assertEquals(p.output.includes(secret), false, `${p.name} logged the ${what}`);
        }
      }
    } finally {
      await stack.close();
    }
  });
}
