/**
 * Changes to the clusters a proxy serves reach live sessions: a rotated token
 * closes the sessions that used the old one (and the agent is then refused),
 * a removed or no longer served cluster has its sessions closed.
 * Standalone mode: the clusters file is edited while the proxy runs.
 */

import { assertEquals } from "../helpers/assert.ts";
import { clustersYaml, startAgent, waitForSessions } from "../helpers/tunnel.ts";
import { ProxyApp } from "../../lib/proxy/app.ts";
import { FileClusterSource } from "../../lib/proxy/clusters_file.ts";
import { generateHostKeyPem, parseHostKey } from "../../lib/tunnel/hostkey.ts";
import { tempDir } from "../helpers/proc.ts";

const OLD = "0a".repeat(32);
const NEW = "0b".repeat(32);

Deno.test("token rotation closes old sessions; removal and joinFederation: false close them too", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/clusters.json`;
  await Deno.writeTextFile(
    path,
    clustersYaml([{ name: "alpha", token: OLD }, { name: "beta", token: OLD }]),
  );
  const app = new ProxyApp({
    host: "127.0.0.1",
    port: 0,
    hostKey: parseHostKey(generateHostKeyPem()),
    clusters: new FileClusterSource({ path }),
  });
  await app.start();
  const url = `http://127.0.0.1:${app.addr.port}`;
  const agents = await Promise.all(
    ["alpha", "beta"].map((name) =>
      startAgent({
        name,
        token: OLD,
        proxyUrl: url,
        dir: dir.path,
        kubernetesPort: 1,
        kubespherePort: 2,
      })
    ),
  );
  try {
    await Promise.all(agents.map((a) => a.waitFor(/Connected\./)));
    await waitForSessions(app, "alpha", 1);
    await waitForSessions(app, "beta", 1);

    // Rotate alpha's token: its session (old token) is closed, and it cannot come back.
    await Deno.writeTextFile(
      path,
      clustersYaml([{ name: "alpha", token: NEW }, { name: "beta", token: OLD }]),
    );
    await waitForSessions(app, "alpha", 0);
    await agents[0].waitFor(/Disconnected from proxy/);
    await agents[0].waitFor(/Proxy refused the agent/);
    assertEquals(app.registry.sessions("beta").length, 1, "other clusters are untouched");

    // An agent with the new token is accepted.
    const rotated = await startAgent({
      name: "alpha",
      token: NEW,
      proxyUrl: url,
      dir: dir.path,
      kubernetesPort: 1,
      kubespherePort: 2,
      label: "alpha-new",
    });
    agents.push(rotated);
    await rotated.waitFor(/Connected\./);
    await waitForSessions(app, "alpha", 1);

    // beta stops being served: its session is closed; removing alpha closes alpha's.
    await Deno.writeTextFile(
      path,
      clustersYaml([{ name: "beta", token: OLD, joinFederation: false }]),
    );
    await waitForSessions(app, "beta", 0);
    await waitForSessions(app, "alpha", 0);
  } finally {
    for (const a of agents) await a.stop();
    await app.close();
  }
});
