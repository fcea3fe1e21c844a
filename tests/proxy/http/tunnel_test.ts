/**
 * The HTTP engine over real tunnel streams: an in-process proxy, the agent as
 * a subprocess, and SSH `kubesphere` channels as upstream streams (TLS to the
 * test API server inside them). Checks what only a real channel can show:
 * TLS over an ssh2 channel, keep-alive reuse of channels, 50 MiB each way,
 * channels released when a client leaves a watch, and a killed agent ending
 * the response promptly.
 * @module
 */

import { createHash } from "node:crypto";
import { type ClusterEndpoints, startClusterEndpoints } from "../../../lib/proxy/endpoint.ts";
import {
  type DialedStream,
  NoAgentError,
  type UpstreamAuth,
  type UpstreamDialer,
} from "../../../lib/proxy/http/upstream.ts";
import { anyVerifiedAsAdmin } from "../../helpers/access.ts";
import type { ProxyApp } from "../../../lib/proxy/app.ts";
import type { AgentSession } from "../../../lib/proxy/registry.ts";
import {
  generateCA,
  issueClientCert,
  issueServingCert,
  verifyClientCert,
} from "../../../lib/pki/mod.ts";
import { startTestApiServer } from "../../apiserver/server.ts";
import { deadline } from "../../helpers/deadline.ts";
import { assert, assertEquals } from "../../helpers/assert.ts";
import { startAgent, startTestProxy, waitForSessions } from "../../helpers/tunnel.ts";
import { RawClient } from "./helpers.ts";
import { BLOCK, blockHash, startHttpOrigin } from "./origin.ts";

/** Channels opened by the dialers and not yet closed, with a way to wait for a count. */
class ChannelCount {
  open = 0;
  #waiters: (() => void)[] = [];

  add(stream: { once(ev: "close", fn: () => void): unknown }): void {
    this.open++;
    stream.once("close", () => {
      this.open--;
      for (const w of this.#waiters.splice(0)) w();
    });
  }

  wait(n: number): Promise<void> {
    return deadline(
      new Promise<void>((resolve) => {
        const check = () => (this.open === n ? resolve() : this.#waiters.push(check));
        check();
      }),
      10_000,
      `open channels ${n}`,
    );
  }
}

/** Dial through the cluster's sessions, as the proxy does. */
function sessionDialer(
  app: ProxyApp,
  cluster: string,
  which: "k8s" | "ks",
  count: ChannelCount,
  auth: UpstreamAuth = {},
): UpstreamDialer {
  return {
    async dial(): Promise<DialedStream> {
      const s: AgentSession | undefined = app.registry.pick(cluster);
      if (!s) throw new NoAgentError();
      const target = which === "k8s" ? s.config.KubernetesSvcHost : s.config.KubeSphereSvcHost;
      const stream = await s.openStream(target);
      count.add(stream);
      return { stream, key: s.id, auth };
    },
    isLive: (key) => app.registry.sessions(cluster).some((s) => s.id === key && s.alive),
  };
}

Deno.test("HTTP engine over SSH kubesphere channels to a real agent", async (t) => {
  const token = "0123456789abcdef0123456789abcdef";
  const api = await startTestApiServer({ tokens: ["member-bearer-token"] });
  const ks = await startHttpOrigin();
  const proxy = await startTestProxy([{ name: "alpha", token }]);
  const tower = await generateCA({ commonName: "tower" });
  const serving = await issueServingCert(tower, { commonName: "a", ipAddresses: ["127.0.0.1"] });
  const agent = await startAgent({
    name: "alpha",
    token,
    proxyUrl: proxy.url,
    dir: proxy.dir,
    kubernetesPort: api.port,
    kubespherePort: ks.port,
  });
  let ep: ClusterEndpoints | undefined;
  const count = new ChannelCount();
  try {
    await waitForSessions(proxy.app, "alpha", 1);
    ep = await startClusterEndpoints({
      cluster: "alpha",
      host: "127.0.0.1",
      kubernetesPort: 0,
      kubespherePort: 0,
      servingCert: serving,
      verifyClient: (der) => verifyClientCert(tower, der),
      access: anyVerifiedAsAdmin,
      kubernetes: sessionDialer(proxy.app, "alpha", "k8s", count, {
        tls: { caPem: api.caPem, serverName: "127.0.0.1" },
        bearerToken: "member-bearer-token",
      }),
      kubesphere: sessionDialer(proxy.app, "alpha", "ks", count),
    });
    const endpoints = ep;
    const ksUrl = `http://127.0.0.1:${endpoints.kubespherePort}`;
    const client = Deno.createHttpClient({});

    try {
      await t.step("kubernetes API over TLS inside a channel; channels reused", async () => {
        const user = await issueClientCert(tower, { commonName: "u" });
        const c = Deno.createHttpClient({
          caCerts: [tower.certPem],
          cert: user.certPem,
          key: user.keyPem,
        } as Deno.CreateHttpClientOptions);
        try {
          for (let i = 0; i < 5; i++) {
            const res = await fetch(
              `https://127.0.0.1:${endpoints.kubernetesPort}/api/v1/namespaces`,
              { client: c },
            );
            assertEquals(res.status, 200);
            assertEquals((await res.json()).kind, "NamespaceList");
          }
        } finally {
          c.close();
        }
        assertEquals(count.open, 1, "one pooled channel served all five");
      });

      await t.step("50 MiB up and 50 MiB down through a channel", async () => {
        let i = 0;
        const up = await fetch(`${ksUrl}/echo`, {
          method: "POST",
          client,
          body: new ReadableStream<Uint8Array>({
            pull(ctl) {
              if (i++ < 50) ctl.enqueue(new Uint8Array(BLOCK));
              else ctl.close();
            },
          }),
        });
        const echo = await up.json();
        assertEquals(echo.bodyBytes, 50 << 20);
        assertEquals(echo.sha256, blockHash(50));
        const down = await fetch(`${ksUrl}/big?mib=50`, { client });
        const h = createHash("sha256");
        for await (const chunk of down.body!) h.update(chunk);
        assertEquals(h.digest("hex"), blockHash(50));
      });

      await t.step("client leaving a watch closes its channel", async () => {
        endpoints.dropSession(proxy.app.registry.sessions("alpha")[0].id);
        await count.wait(0);
        const c = await RawClient.connect(endpoints.kubespherePort);
        c.write("GET /watch HTTP/1.1\r\nHost: a\r\n\r\n");
        await c.readHead();
        await c.readSome();
        assertEquals(count.open, 1);
        await c.close();
        await count.wait(0);
        await deadline(ks.watchClosed, 10_000, "origin saw the watch end");
      });

      await t.step("killing the agent mid-watch ends the response promptly; then 503", async () => {
        const c = await RawClient.connect(endpoints.kubespherePort);
        try {
          c.write("GET /watch HTTP/1.1\r\nHost: a\r\n\r\n");
          await c.readHead();
          await c.readSome();
          agent.signal("SIGKILL");
          await deadline(c.readToEnd(), 15_000, "response ended after the agent died");
          assert(c.ended);
        } finally {
          await c.close();
        }
        await waitForSessions(proxy.app, "alpha", 0);
        const res = await fetch(`${ksUrl}/echo`, { client });
        assertEquals(res.status, 503);
        await res.body?.cancel();
      });
    } finally {
      client.close();
    }
  } finally {
    await agent.stop();
    await ep?.close();
    await proxy.close();
    await ks.close();
    await api.close();
  }
});
