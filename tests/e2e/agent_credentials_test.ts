/**
 * The agent process connects and serves with every form of member credentials: embedded and
 * file client certificates, bearer token, token file, exec plugins returning a token or a client
 * certificate, and in-cluster service-account credentials. For each, a request through the
 * proxy's kubernetes endpoint reaches the member API server as that form's user (the member's
 * audit log says so): the credentials the agent read are the ones the proxy presented.
 * @module
 */

import { assertEquals } from "../helpers/assert.ts";
import { denoRun, type Proc, tempDir } from "../helpers/proc.ts";
import { startStandaloneStack } from "../helpers/stack.ts";
import { type Shape, writeShapes } from "../kube/kubeconfig_shapes.ts";

const TOKEN = "c7".repeat(32);

Deno.test("agent process: connects and serves with every credential form", async (t) => {
  await using dir = await tempDir();
  const stack = await startStandaloneStack({ dir: dir.path, token: TOKEN });
  const proxyUrl = `http://127.0.0.1:${stack.agentPort}`;
  try {
    await Deno.mkdir(`${dir.path}/shapes`);
    const shapes: (Shape & { start?: () => Proc })[] = await writeShapes(
      stack.member,
      `${dir.path}/shapes`,
    );
    const sa = `${dir.path}/serviceaccount`;
    await Deno.mkdir(sa);
    await Deno.writeTextFile(`${sa}/ca.crt`, stack.member.caPem);
    await Deno.writeTextFile(`${sa}/token`, stack.member.issueToken("sa-user", ["system:masters"]));
    shapes.push({
      name: "in-cluster service account",
      path: "",
      user: "sa-user",
      start: () =>
        denoRun("agent-in-cluster", "tests/helpers/in_cluster_agent.ts", [
          "--proxy",
          proxyUrl,
          "--name",
          "alpha",
          "--token",
          TOKEN,
          "--sa-dir",
          sa,
        ], {
          KUBERNETES_SERVICE_HOST: "127.0.0.1",
          KUBERNETES_SERVICE_PORT: String(stack.member.port),
        }),
    });

    let attempt = 0;
    for (const shape of shapes) {
      await t.step(shape.name, async () => {
        const agent = shape.start?.() ??
          denoRun(`agent-${shape.user}`, "agent.ts", [
            "--name",
            "alpha",
            "--token",
            TOKEN,
            "--proxy-server",
            proxyUrl,
            "--kubeconfig",
            shape.path,
            "--kubesphere-service",
            "127.0.0.1:1",
          ]);
        try {
          await agent.waitFor(/Connected\./, 30_000);
          const { server, client } = await stack.kubeconfigClient();
          // The previous form's agent has exited, but the proxy may not have dropped its
          // session yet: ask until a request is served by this agent (bounded).
          let seen = "";
          for (let i = 0; i < 50 && seen !== shape.user; i++) {
            const limit = 1000 + ++attempt;
            const r = await fetch(`${server}/api/v1/namespaces?limit=${limit}`, { client });
            assertEquals(r.status, 200, await r.text());
            seen = stack.member.audit.where({ uri: `/api/v1/namespaces?limit=${limit}` })[0]
              ?.user ?? "";
            if (seen !== shape.user) await new Promise((res) => setTimeout(res, 100));
          }
          assertEquals(seen, shape.user);
        } finally {
          await agent.stop();
        }
      });
    }
  } finally {
    await stack.close();
  }
});
