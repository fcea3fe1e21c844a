/**
 * The original Go agent accepts every channel first and dials afterwards; when the dial fails
 * it closes the channel at once, CLOSE without EOF, before a byte went either way. Our proxy
 * must answer 502 promptly on both endpoints — it used to wait for ever (kubesphere) or for the
 * 30 s upstream TLS deadline (kubernetes).
 * @module
 */

import { Buffer } from "node:buffer";
import { parse } from "yaml";
import { encodeAgentConfig } from "../../lib/tunnel/handshake.ts";
import { onKubesphereChannel } from "../../lib/tunnel/channel_accept.ts";
import { deadline } from "../helpers/deadline.ts";
import { assertEquals } from "../helpers/assert.ts";
import { denoRun, freePort, tempDir } from "../helpers/proc.ts";
import { connectRawAgent } from "../helpers/raw_agent.ts";

const TOKEN = "fd".repeat(32);

Deno.test("a channel the agent accepts and closes at once is a prompt 502 on both endpoints", async () => {
  await using dir = await tempDir();
  const [agentPort, kubernetes, kubesphere] = [freePort(), freePort(), freePort()];
  await Deno.writeTextFile(
    `${dir.path}/clusters.json`,
    JSON.stringify([{
      metadata: { name: "alpha" },
      spec: {
        joinFederation: true,
        connection: {
          type: "proxy",
          token: TOKEN,
          kubernetesAPIServerPort: kubernetes,
          kubesphereAPIServerPort: kubesphere,
        },
      },
    }]),
  );
  const proxy = denoRun("proxy", "proxy.ts", [
    "--clusters-file",
    `${dir.path}/clusters.json`,
    "--host",
    "127.0.0.1",
    "--port",
    String(agentPort),
    "--metrics-address",
    "",
  ]);
  try {
    await proxy.waitFor(/Listening on/);
    const agent = await connectRawAgent(`http://127.0.0.1:${agentPort}`, {
      ident: "SSH-kubesphere-v1-client",
    });
    let opened = 0;
    onKubesphereChannel(agent.client, (_target, accept) => {
      opened++;
      (accept() as unknown as { close(): void }).close(); // same tick: nothing sent, no EOF
    });
    const reply = await agent.request(
      "config",
      encodeAgentConfig({
        Version: "v0.2.2",
        Name: "alpha",
        Token: TOKEN,
        KubernetesSvcHost: "127.0.0.1:1",
        KubeSphereSvcHost: "127.0.0.1:2",
      }),
    );
    assertEquals(reply.ok, true);
    await proxy.waitFor(/Wrote kubeconfig/);
    const kc = parse(await Deno.readTextFile(`${dir.path}/alpha.kubeconfig`));
    const unb64 = (s: string) => Buffer.from(s, "base64").toString("utf8");
    const client = Deno.createHttpClient({
      caCerts: [unb64(kc.clusters[0].cluster["certificate-authority-data"])],
      cert: unb64(kc.users[0].user["client-certificate-data"]),
      key: unb64(kc.users[0].user["client-key-data"]),
    });
    try {
      for (
        const url of [
          `http://127.0.0.1:${kubesphere}/kapis/x`,
          `https://127.0.0.1:${kubernetes}/api/v1/namespaces`,
        ]
      ) {
        for (let i = 0; i < 3; i++) {
          // The deadline is only a safety net: a hang fails here instead of at the test's end.
          const res = await deadline(fetch(url, { client }), 10_000, `answer from ${url}`);
          assertEquals(res.status, 502, url);
          assertEquals((await res.json()).kind, "Status");
        }
      }
      assertEquals(opened >= 6, true, `${opened} channels opened`);
    } finally {
      client.close();
      agent.close();
    }
  } finally {
    await proxy.stop();
  }
});
