/**
 * The known-proxy record in a Secret, against the test API server: created
 * when missing (where RBAC allows), writers racing on it keep every entry
 * (conditional updates), and two different keys for one proxy: the first
 * wins, the second is refused.
 */

import { startTestApiServer } from "../apiserver/server.ts";
import { assertEquals, assertRejects } from "../helpers/assert.ts";
import { KnownProxyMismatch } from "../../lib/agent/known_proxies.ts";
import { connectionFromMember, SecretKnownProxies } from "../../lib/agent/known_proxies_secret.ts";

const FP = (c: string) => "SHA256:" + c.repeat(43);

Deno.test("Secret store: created when missing, racing writers keep their entries, a second key refused", async () => {
  const s = await startTestApiServer({ namespaces: ["agents"] });
  try {
    const token = s.issueToken("someone", ["system:masters"]);
    const connect = () =>
      Promise.resolve(connectionFromMember({
        Version: "t",
        Name: "alpha",
        Token: "x",
        KubernetesSvcHost: `127.0.0.1:${s.port}`,
        KubeSphereSvcHost: "127.0.0.1:1",
        CAData: new TextEncoder().encode(s.caPem),
        BearerToken: new TextEncoder().encode(token),
      }));
    const store = () => new SecretKnownProxies({ namespace: "agents", name: "kp", connect });
    assertEquals(await store().lookup("ws://a:1/"), undefined);
    const urls = Array.from({ length: 6 }, (_, i) => `ws://127.0.0.1:${9000 + i}/`);
    await Promise.all(urls.map((u) => store().remember(u, FP("a"))));
    for (const u of urls) assertEquals(await store().lookup(u), FP("a"));
    const secret = (await s.request("GET", "/api/v1/namespaces/agents/secrets/kp")).body;
    assertEquals(Object.keys(secret.data as object), ["known_proxies"]);

    const results = await Promise.allSettled(
      ["b", "c", "d"].map((c) => store().remember("ws://contested:1/", FP(c))),
    );
    const won = results.filter((r) => r.status === "fulfilled");
    assertEquals(won.length, 1, JSON.stringify(results));
    const winner = await store().lookup("ws://contested:1/");
    for (const r of results) {
      if (r.status === "rejected") {
        const err = r.reason as KnownProxyMismatch;
        assertEquals(err instanceof KnownProxyMismatch, true, String(err));
        assertEquals(err.recorded, winner);
      }
    }
    await assertRejects(() => store().remember(urls[0], FP("e")), KnownProxyMismatch);
  } finally {
    await s.close();
  }
});
