/**
 * Our `proxy.ts` and `agent.ts` processes against the rendition of the original Go tower
 * (tests/interop/go_tower, agent and proxy modes: gorilla/websocket, SSH inside with
 * golang.org/x/crypto/ssh, the original's flags, defaults, config JSON, replies and channel
 * handling), with real HTTP requests through the tunnel to an origin. tests/interop/README.md
 * maps each behaviour of the original to the test here that covers it.
 *
 * Skipped, with a message, only when Go or its packages are missing (see go_build.ts).
 * @module
 */

import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import { parse } from "yaml";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { denoRun, freePort, Proc, tempDir } from "../helpers/proc.ts";
import { startAgent } from "../helpers/tunnel.ts";
import { decodeAgentConfig, encodeAgentConfig } from "../../lib/tunnel/handshake.ts";
import { generateCA, issueServingCert } from "../../lib/pki/mod.ts";
import {
  buildGoTower,
  goMissing,
  goTower,
  INSTALL_HINT,
  startGoProxy,
  within,
} from "./go_build.ts";

const TOKEN = "c3".repeat(32);
const BAD_TOKEN = "d4".repeat(32);
const MISSING = await goMissing();
if (MISSING) console.warn(`SKIP go binary interop tests: ${MISSING} (install: ${INSTALL_HINT})`);

const sha = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");
const EMPTY = sha(new Uint8Array());

/** What the origin saw of one request. */
interface Seen {
  method: string;
  path: string;
  bodySha: string;
  authorization: string | null;
}

/**
 * The HTTP origin behind the tunnel (the member's "ks-apiserver"): answers
 * `origin <method> <path> <sha256 of the request body> auth=<Authorization or none>`.
 */
function startOrigin(): { port: number; seen: Seen[]; close(): Promise<void> } {
  const seen: Seen[] = [];
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    async (req) => {
      const body = new Uint8Array(await req.arrayBuffer());
      const url = new URL(req.url);
      const s = {
        method: req.method,
        path: url.pathname + url.search,
        bodySha: sha(body),
        authorization: req.headers.get("authorization"),
      };
      seen.push(s);
      return new Response(`origin ${s.method} ${s.path} ${s.bodySha} auth=${s.authorization}`);
    },
  );
  return { port: server.addr.port, seen, close: () => server.shutdown() };
}

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

/** An HTTPS origin (the member's "kube-apiserver"), answering like {@link startOrigin}. */
async function startTlsOrigin() {
  const ca = await generateCA({ commonName: "member-ca" });
  const serving = await issueServingCert(ca, {
    commonName: "kube-apiserver",
    ipAddresses: ["127.0.0.1"],
  });
  const seen: Seen[] = [];
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, cert: serving.certPem, key: serving.keyPem, onListen() {} },
    async (req) => {
      const body = new Uint8Array(await req.arrayBuffer());
      const url = new URL(req.url);
      const s = {
        method: req.method,
        path: url.pathname + url.search,
        bodySha: sha(body),
        authorization: req.headers.get("authorization"),
      };
      seen.push(s);
      return new Response(`member ${s.method} ${s.path} ${s.bodySha} auth=${s.authorization}`);
    },
  );
  return { port: server.addr.port, caPem: ca.certPem, seen, close: () => server.shutdown() };
}

Deno.test({
  name: "go binaries: the original Go agent (in-cluster credentials) against our proxy.ts",
  ignore: MISSING !== undefined,
  fn: async () => {
    const bin = await within(buildGoTower(), 120_000, "go build");
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
      assertEquals((await within(bad.status(), 10_000, "refused go agent exit")).code, 0);
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
      const get = await within(fetch(`${base}/kapis/interop?x=1`), 20_000, "GET via go agent");
      assertEquals(get.status, 200);
      assertMatch(await get.text(), new RegExp(`^origin GET /kapis/interop\\?x=1 ${EMPTY} auth=`));
      assertEquals(
        await go.waitFor(/^TARGET /),
        `TARGET 127.0.0.1:${origin.port}`,
        "the Go agent dials the kubesphere target it announced",
      );
      // A request body bigger than any single WebSocket message or SSH window.
      const payload = new Uint8Array(3 * 1024 * 1024 + 17).map((_, i) => (i * 7) % 251);
      const post = await within(
        fetch(`${base}/kapis/upload`, { method: "POST", body: payload }),
        20_000,
        "POST via go agent",
      );
      assertEquals(post.status, 200);
      assertMatch(await post.text(), new RegExp(`^origin POST /kapis/upload ${sha(payload)} `));

      // The kubernetes endpoint: TLS to the member verified with the agent's CA, its bearer
      // token attached, the request intact.
      const client = await issuedClient(proxy.proc, dir.path);
      const res = await within(
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
      const after = await within(fetch(`${base}/kapis/after`), 20_000, "GET after keepalives");
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
  name: "go binaries: a Go agent with its default --kubesphere-service joins our proxy, " +
    "which names host:80",
  ignore: MISSING !== undefined,
  fn: async () => {
    const bin = await within(buildGoTower(), 120_000, "go build");
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

/** The response head to a WebSocket upgrade offering `protocol` (the connection then closed). */
async function upgradeHead(port: number, protocol: string): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(new TextEncoder().encode(
      `GET / HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n` +
        `Sec-WebSocket-Protocol: ${protocol}\r\n\r\n`,
    ));
    let head = "";
    const buf = new Uint8Array(4096);
    while (!head.includes("\r\n\r\n")) {
      const n = await within(conn.read(buf), 10_000, "upgrade response");
      if (n === null) break;
      head += new TextDecoder().decode(buf.subarray(0, n));
    }
    return head.split("\r\n\r\n")[0];
  } finally {
    conn.close();
  }
}

Deno.test({
  name: "go binaries: our agent.ts against the original Go proxy (its 101 names no subprotocol)",
  ignore: MISSING !== undefined,
  fn: async () => {
    const bin = await within(buildGoTower(), 120_000, "go build");
    await using dir = await tempDir();
    const origin = startOrigin();
    const kubernetesPort = freePort();
    const procs: Proc[] = [];
    try {
      // A wrong token: the Go proxy refuses in its reply to `config`; our agent says why.
      const goBad = await startGoProxy(bin, dir.path, "go-proxy-bad", BAD_TOKEN);
      procs.push(goBad.proc);
      const refused = await startAgent({
        name: "alpha",
        token: TOKEN,
        proxyUrl: `http://127.0.0.1:${goBad.port}`,
        dir: dir.path,
        kubernetesPort,
        kubespherePort: origin.port,
        label: "agent-refused",
      });
      procs.push(refused);
      await refused.waitFor(/Proxy refused the agent reason="Unauthorized agent"/, 30_000);
      assertEquals(
        await goBad.proc.waitFor(/^CONFIG-REFUSED /),
        "CONFIG-REFUSED Unauthorized agent alpha",
      );
      await refused.stop();
      await goBad.proc.stop();

      const go = await startGoProxy(bin, dir.path, "go-proxy", TOKEN);
      procs.push(go.proc);
      // Its agent port: /health, /version, 404, and a kubesphere-v2 upgrade falls through to them.
      const agentPort = `http://127.0.0.1:${go.port}`;
      const health = await fetch(`${agentPort}/health`);
      assertEquals([health.status, await health.text()], [200, "OK\n"]);
      const version = await fetch(`${agentPort}/version`);
      assertEquals([version.status, await version.text()], [200, "0.0.0-rc"]);
      const v2 = await fetch(`${agentPort}/`, {
        headers: {
          upgrade: "websocket",
          connection: "upgrade",
          "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
          "sec-websocket-version": "13",
          "sec-websocket-protocol": "kubesphere-v2",
        },
      });
      assertEquals([v2.status, await v2.text()], [404, "Not Found"]);
      assertEquals(await go.proc.waitFor(/^IGNORED-PROTOCOL /), "IGNORED-PROTOCOL kubesphere-v2");
      // Its 101 names no subprotocol.
      const head = await upgradeHead(go.port, "kubesphere-v1");
      assertMatch(head, /^HTTP\/1\.1 101 /);
      assertEquals(/^sec-websocket-protocol:/im.test(head), false, head);
      const agent = await startAgent({
        name: "alpha",
        token: TOKEN,
        proxyUrl: `http://127.0.0.1:${go.port}`,
        dir: dir.path,
        kubernetesPort,
        kubespherePort: origin.port,
        extra: ["--keepalive", "1s"],
      });
      procs.push(agent);
      // Before the fix: "server did not accept subprotocol kubesphere-v1", retried for ever.
      await agent.waitFor(/Connected\./, 30_000);
      assertMatch(await go.proc.waitFor(/^CLIENT-VERSION /), /^CLIENT-VERSION SSH-2\.0-/);
      // The config our agent sent, as the Go proxy received it; every field decodes in Go.
      const cfg = JSON.parse((await go.proc.waitFor(/^CONFIG /)).replace(/^CONFIG /, ""));
      assertEquals(Object.keys(cfg), [
        "Version",
        "Name",
        "Token",
        "KubernetesSvcHost",
        "KubeSphereSvcHost",
        "BearerToken",
      ]);
      assertEquals(
        [cfg.Name, cfg.KubernetesSvcHost, cfg.KubeSphereSvcHost],
        ["alpha", `127.0.0.1:${kubernetesPort}`, `127.0.0.1:${origin.port}`],
      );
      assertEquals(Buffer.from(cfg.BearerToken, "base64").toString(), "member-bearer-token");
      await go.proc.waitFor(/^SERVING alpha /, 20_000);

      // The kubesphere endpoint: the channel names the host string our agent sent, which our
      // agent accepts; no credential is attached, the caller's own passes through.
      const base = `http://127.0.0.1:${go.kubespherePort}`;
      const plain = await within(fetch(`${base}/kapis/a?b=c`), 20_000, "GET via go proxy");
      assertEquals(
        [plain.status, await plain.text()],
        [200, `origin GET /kapis/a?b=c ${EMPTY} auth=null`],
      );
      const own = await within(
        fetch(`${base}/kapis/own`, { headers: { authorization: "Bearer caller" } }),
        20_000,
        "GET with the caller's token via go proxy",
      );
      assertEquals(await own.text(), `origin GET /kapis/own ${EMPTY} auth=Bearer caller`);

      // Our agent's pings (every second here) are answered: three of them, still connected.
      const pings = /^PING$/;
      for (let i = 0; i < 3; i++) {
        await go.proc.waitFor(pings, 20_000, go.proc.lines.findLastIndex((l) => pings.test(l)) + 1);
      }
      assertEquals(agent.count(/Disconnected from proxy/), 0);
      const again = await within(fetch(`${base}/kapis/again`), 20_000, "GET after pings");
      assertEquals(again.status, 200);
      await again.body?.cancel();
      assertEquals(origin.seen.length, 3);

      // Our agent with a port-less --kubesphere-service sends it completed (:80); the Go proxy
      // names that string as it is, and our agent takes it as its own target (it dials, rather
      // than refusing a target it did not announce).
      await agent.stop();
      await go.proc.waitFor(/^STOPPED alpha$/, 20_000);
      const mark = go.proc.lines.length;
      const portless = await startAgent({
        name: "alpha",
        token: TOKEN,
        proxyUrl: `http://127.0.0.1:${go.port}`,
        dir: dir.path,
        kubernetesPort,
        kubespherePort: origin.port,
        label: "agent-portless",
        extra: ["--kubesphere-service", "localhost", "--v", "4"],
      });
      procs.push(portless);
      await portless.waitFor(/Connected\./, 30_000);
      const config = await go.proc.waitFor(/^CONFIG /, 20_000, mark);
      assertEquals(JSON.parse(config.slice(7)).KubeSphereSvcHost, "localhost:80");
      await go.proc.waitFor(/^SERVING alpha /, 20_000, mark);
      const abort = new AbortController();
      const pending = fetch(`${base}/kapis/portless`, { signal: abort.signal })
        .then((r) => r.body?.cancel(), () => {});
      const seen = await portless.waitFor(
        /Cannot dial target.*localhost:80|Stream opened.*localhost:80|Refusing to dial/,
        20_000,
      );
      assert(!seen.includes("Refusing"), seen);
      abort.abort();
      await pending;
    } finally {
      for (const p of procs.reverse()) await p.stop();
      await origin.close();
    }
  },
});
