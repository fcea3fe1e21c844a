/**
 * The original Go agent (rendition: tests/interop/go_tower, agent mode — gorilla/websocket, SSH
 * inside with golang.org/x/crypto/ssh, the original's flags, defaults, config JSON, retries and
 * channel handling) against our `proxy.ts` process, with real HTTP requests through the tunnel.
 * tests/interop/README.md maps each behaviour of the original to the test that covers it.
 *
 * Skipped, with a message, only when Go or its packages are missing (see go_build.ts).
 * @module
 */

import { requireTools } from "../helpers/tools.ts";
import { Buffer } from "node:buffer";
import { parse } from "yaml";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { denoRun, freePort, Proc, tempDir } from "../helpers/proc.ts";
import { decodeAgentConfig, encodeAgentConfig } from "../../lib/tunnel/handshake.ts";
import { buildGoTower, goMissing, goTower, INSTALL_HINT } from "./go_build.ts";
import { EMPTY, sha, startOrigin, startTlsOrigin } from "./origins.ts";
import { deadline } from "../helpers/deadline.ts";

const TOKEN = "c3".repeat(32);
const BAD_TOKEN = "d4".repeat(32);
/** Skipped with a message where Go is missing; under TOWER_CI=1 failed instead. */
const GO = await requireTools("Go agent interop", goMissing, INSTALL_HINT);

/** Our proxy on a clusters file with `alpha` on explicit ports. */
async function startOurProxy(dir: string, extra: string[] = []) {
  const agentPort = freePort();
  const kubernetesPort = freePort();
  const kubespherePort = freePort();
  await Deno.writeTextFile(
    `${dir}/clusters.json`,
    JSON.stringify([{
      metadata: { name: "alpha" },
      spec: {
        joinFederation: true,
        connection: {
          type: "proxy",
          token: TOKEN,
          kubernetesAPIServerPort: kubernetesPort,
          kubesphereAPIServerPort: kubespherePort,
        },
      },
    }]),
  );
  const proc = denoRun("proxy", "proxy.ts", [
    "--clusters-file",
    `${dir}/clusters.json`,
    "--host",
    "127.0.0.1",
    "--port",
    String(agentPort),
    "--publish-service-address",
    "127.0.0.1",
    "--metrics-address",
    "",
    ...extra,
  ]);
  await proc.waitFor(/Listening on/, 30_000);
  return { proc, url: `http://127.0.0.1:${agentPort}`, kubernetesPort, kubespherePort };
}

/** A client with the kubeconfig our proxy writes for `alpha` once an agent is connected. */
async function issuedClient(proxy: Proc, dir: string): Promise<Deno.HttpClient> {
  await proxy.waitFor(/Wrote kubeconfig/, 30_000);
  const kc = parse(await Deno.readTextFile(`${dir}/alpha.kubeconfig`)) as {
    clusters: { cluster: Record<string, string> }[];
    users: { user: Record<string, string> }[];
  };
  const unb64 = (s: string) => Buffer.from(s, "base64").toString("utf8");
  return Deno.createHttpClient({
    caCerts: [unb64(kc.clusters[0].cluster["certificate-authority-data"])],
    cert: unb64(kc.users[0].user["client-certificate-data"]),
    key: unb64(kc.users[0].user["client-key-data"]),
  });
}

/** The Go agent's config as it marshalled it (its CONFIG-SENT line). */
function sentConfig(line: string): string {
  return line.replace(/^CONFIG-SENT /, "");
}

Deno.test({
  name: "go agent: the original Go agent (in-cluster credentials) against our proxy.ts",
  ignore: GO.ignore,
  fn: async () => {
    GO.check();
    const bin = await deadline(buildGoTower(), 120_000, "go build");
    await using dir = await tempDir();
    const member = await startTlsOrigin();
    // A service-account mount as a pod has it, the token file ending in a newline.
    await Deno.mkdir(`${dir.path}/sa`);
    await Deno.writeTextFile(`${dir.path}/sa/token`, "sa-token-of-the-member\n");
    await Deno.writeTextFile(`${dir.path}/sa/ca.crt`, member.caPem);
    const inCluster = {
      KUBERNETES_SERVICE_HOST: "127.0.0.1",
      KUBERNETES_SERVICE_PORT: String(member.port),
      GO_TOWER_SA_DIR: `${dir.path}/sa`,
    };
    const origin = startOrigin();
    const procs: Proc[] = [];
    try {
      // Keepalive every second: the proxy pings the agent, which refuses every request it gets
      // (x/crypto/ssh's DiscardRequests); a refusal is an answer, so the session stays.
      const proxy = await startOurProxy(dir.path, ["--keepalive", "1s"]);
      procs.push(proxy.proc);
      const agentArgs = (token: string, extra: string[] = []) => [
        "agent",
        "--name",
        "alpha",
        "--token",
        token,
        "--proxy-server",
        proxy.url,
        "--kubesphere-service",
        `127.0.0.1:${origin.port}`,
        ...extra,
      ];

      // A wrong token: the reply's text is the error; the Go agent retries with backoff and,
      // with --max-retry 1, gives up after the second refusal and exits 0.
      const bad = goTower(
        bin,
        "go-agent-bad",
        agentArgs(BAD_TOKEN, ["--max-retry", "1", "--max-retry-interval", "1s"]),
        inCluster,
      );
      procs.push(bad);
      assertEquals(
        await bad.waitFor(/^CONNECTION-ERROR /, 20_000),
        "CONNECTION-ERROR Connection error: Unauthorized agent",
      );
      assertEquals(
        await bad.waitFor(/^CONNECTION-ERROR .*Attempt/, 20_000),
        "CONNECTION-ERROR Connection error: Unauthorized agent (Attempt: 1/1)",
      );
      assertEquals((await deadline(bad.status(), 10_000, "refused go agent exit")).code, 0);
      await proxy.proc.waitFor(/Unauthorized agent.*wrong token/, 10_000);

      const go = goTower(bin, "go-agent", agentArgs(TOKEN), inCluster);
      procs.push(go);
      // --proxy-server http://… becomes ws://… (a port is kept; none would mean :80).
      assertEquals(await go.waitFor(/^SERVER /), `SERVER ${proxy.url.replace("http:", "ws:")}`);
      assertEquals(await go.waitFor(/^WEBSOCKET /, 20_000), "WEBSOCKET kubesphere-v1");
      assertMatch(await go.waitFor(/^SERVER-VERSION /), /^SERVER-VERSION SSH-2\.0-/);
      // The config exactly as Go's encoding/json wrote it is what our encoder writes for the
      // same values (field order, base64, empty byte fields left out).
      const json = sentConfig(await go.waitFor(/^CONFIG-SENT /));
      const enc = new TextEncoder();
      assertEquals(
        json,
        new TextDecoder().decode(encodeAgentConfig({
          Version: "0.0.0-rc",
          Name: "alpha",
          Token: TOKEN,
          KubernetesSvcHost: `127.0.0.1:${member.port}`,
          KubeSphereSvcHost: `127.0.0.1:${origin.port}`,
          CAData: enc.encode(member.caPem),
          BearerToken: enc.encode("sa-token-of-the-member\n"),
        })),
      );
      // Our decoder drops the token file's newline (a header break otherwise).
      assertEquals(
        new TextDecoder().decode(decodeAgentConfig(enc.encode(json)).BearerToken),
        "sa-token-of-the-member",
      );
      await go.waitFor(/^CONNECTED$/, 20_000);
      await proxy.proc.waitFor(/Serving cluster endpoints/, 20_000);

      const base = `http://127.0.0.1:${proxy.kubespherePort}`;
      const get = await deadline(fetch(`${base}/kapis/interop?x=1`), 20_000, "GET via go agent");
      assertEquals(get.status, 200);
      assertMatch(await get.text(), new RegExp(`^origin GET /kapis/interop\\?x=1 ${EMPTY} auth=`));
      assertEquals(
        await go.waitFor(/^TARGET /),
        `TARGET 127.0.0.1:${origin.port}`,
        "the Go agent dials the kubesphere target it announced",
      );
      // A request body bigger than any single WebSocket message or SSH window.
      const payload = new Uint8Array(3 * 1024 * 1024 + 17).map((_, i) => (i * 7) % 251);
      const post = await deadline(
        fetch(`${base}/kapis/upload`, { method: "POST", body: payload }),
        20_000,
        "POST via go agent",
      );
      assertEquals(post.status, 200);
      assertMatch(await post.text(), new RegExp(`^origin POST /kapis/upload ${sha(payload)} `));

      // The kubernetes endpoint: TLS to the member verified with the agent's CA, its bearer
      // token attached, the request intact.
      const client = await issuedClient(proxy.proc, dir.path);
      const res = await deadline(
        fetch(`https://127.0.0.1:${proxy.kubernetesPort}/api?limit=1`, { client }),
        20_000,
        "kubernetes endpoint via go agent",
      );
      assertEquals(
        [res.status, await res.text()],
        [200, `member GET /api?limit=1 ${EMPTY} auth=Bearer sa-token-of-the-member`],
      );
      client.close();

      // Our proxy's keepalives reach the Go agent (whose own ping is every minute by default)
      // and its refusals keep the session: three of them, and the tunnel still serves.
      const keepalives = /^REQUEST keepalive@openssh\.com$/;
      for (let i = 0; i < 3; i++) {
        await go.waitFor(keepalives, 20_000, go.lines.findLastIndex((l) => keepalives.test(l)) + 1);
      }
      const after = await deadline(fetch(`${base}/kapis/after`), 20_000, "GET after keepalives");
      assertEquals(after.status, 200);
      await after.body?.cancel();
      assertEquals(proxy.proc.count(/stopped answering keepalives/), 0);
      assertEquals(go.count(/^DISCONNECTED|^CONNECTION-ERROR/), 0);
      assertEquals([origin.seen.length, member.seen.length], [3, 1]);
    } finally {
      for (const p of procs.reverse()) await p.stop();
      await origin.close();
      await member.close();
    }
  },
});

Deno.test({
  name: "go agent: with its default --kubesphere-service it joins our proxy, " +
    "which names host:80",
  ignore: GO.ignore,
  fn: async () => {
    GO.check();
    const bin = await deadline(buildGoTower(), 120_000, "go build");
    await using dir = await tempDir();
    await Deno.mkdir(`${dir.path}/sa`);
    await Deno.writeTextFile(`${dir.path}/sa/token`, "t");
    await Deno.writeTextFile(`${dir.path}/sa/ca.crt`, "");
    const procs: Proc[] = [];
    try {
      const proxy = await startOurProxy(dir.path);
      procs.push(proxy.proc);
      const go = goTower(
        bin,
        "go-agent-defaults",
        ["agent", "--name", "alpha", "--token", TOKEN, "--proxy-server", proxy.url],
        {
          KUBERNETES_SERVICE_HOST: "127.0.0.1",
          KUBERNETES_SERVICE_PORT: "1",
          GO_TOWER_SA_DIR: `${dir.path}/sa`,
        },
      );
      procs.push(go);
      const json = sentConfig(await go.waitFor(/^CONFIG-SENT /, 20_000));
      assertMatch(json, /"KubeSphereSvcHost":"ks-apiserver\.kubesphere-system\.svc"/);
      // An empty ca.crt is an empty []byte: left out, as omitempty does.
      assert(!json.includes("CAData"), json);
      // Before the fix: CONNECTION-ERROR Connection error: Invalid config: … expected host:port.
      assertEquals(await go.waitFor(/^CONNECTED$|^CONNECTION-ERROR /, 20_000), "CONNECTED");
      await proxy.proc.waitFor(/Serving cluster endpoints/, 20_000);
      // The channel for the kubesphere endpoint names the completed target, which the Go agent
      // dials as given (the original proxy would name the bare host, which no dial accepts).
      const abort = new AbortController();
      const pending = fetch(`http://127.0.0.1:${proxy.kubespherePort}/kapis/x`, {
        signal: abort.signal,
      }).then((r) => r.body?.cancel(), () => {});
      assertEquals(
        await go.waitFor(/^TARGET /, 20_000),
        "TARGET ks-apiserver.kubesphere-system.svc:80",
      );
      abort.abort();
      await pending;
    } finally {
      for (const p of procs.reverse()) await p.stop();
    }
  },
});
