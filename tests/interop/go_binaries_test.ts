/**
 * Interop with the original Go tower at the binary level: our `proxy.ts` and `agent.ts`
 * processes against tests/interop/go_tower in its ws-agent / ws-proxy modes, which speak the
 * original wire (gorilla/websocket, subprotocol kubesphere-v1, binary messages, SSH inside,
 * golang.org/x/crypto/ssh), with real HTTP requests going through the tunnel to an origin.
 *
 * Needs Go, x/crypto/ssh and gorilla/websocket; on Debian, offline from the distribution:
 *   apt-get install -y golang-go golang-golang-x-crypto-dev golang-github-gorilla-websocket-dev
 * Built in GOPATH mode with `-tags websocket`. Skipped, with a message, only when `go` or the
 * websocket package is not installed.
 * @module
 */

import { createHash } from "node:crypto";
import { assertEquals, assertMatch } from "../helpers/assert.ts";
import { denoRun, freePort, Proc, tempDir } from "../helpers/proc.ts";
import { startAgent } from "../helpers/tunnel.ts";
import { requireTools } from "../helpers/tools.ts";

const GO_SRC = new URL("./go_tower/", import.meta.url).pathname;
const GOPATH = Deno.env.get("GO_TOWER_GOPATH") ?? "/usr/share/gocode";
const INSTALL_HINT =
  "apt-get install -y golang-go golang-golang-x-crypto-dev golang-github-gorilla-websocket-dev";
const TOKEN = "c3".repeat(32);
/** Safety net for the Go processes (they are stopped by the tests long before). */
const GO_ENV = { GO_TOWER_TIMEOUT: "90s", GO_TOWER_PING: "1s" };

/** Why the tests cannot run here, or undefined when they can. */
async function missing(): Promise<string | undefined> {
  try {
    const out = await new Deno.Command("go", { args: ["version"], stdout: "null", stderr: "null" })
      .output();
    if (!out.success) return "`go version` failed";
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return "`go` is not installed";
    throw err;
  }
  for (const pkg of ["golang.org/x/crypto/ssh", "github.com/gorilla/websocket"]) {
    try {
      await Deno.stat(`${GOPATH}/src/${pkg}`);
    } catch {
      return `${pkg} is not in ${GOPATH}/src`;
    }
  }
  return undefined;
}

/** Skipped with a message where Go is missing; under TOWER_CI=1 failed instead. */
const GO = await requireTools("go binary interop", missing, INSTALL_HINT);

let built: Promise<string> | undefined;
let buildDir: string | undefined;
globalThis.addEventListener("unload", () => {
  if (buildDir) Deno.removeSync(buildDir, { recursive: true });
});

/** Build go_tower with the websocket modes once per run; returns the binary path. */
function buildGoTower(): Promise<string> {
  built ??= (async () => {
    const dir = buildDir = await Deno.makeTempDir({ prefix: "go_tower_ws_" });
    const bin = `${dir}/go_tower`;
    const out = await new Deno.Command("go", {
      args: ["build", "-tags", "websocket", "-o", bin, "."],
      cwd: GO_SRC,
      env: { GO111MODULE: "off", GOPATH, GOCACHE: `${dir}/cache`, GOFLAGS: "" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) {
      throw new Error(
        `go build -tags websocket go_tower failed (need: ${INSTALL_HINT}):\n${
          new TextDecoder().decode(out.stderr)
        }`,
      );
    }
    return bin;
  })();
  return built;
}

/** Within `ms`, or reject naming `what`. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout: ${what}`)), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** What the origin saw of one request. */
interface Seen {
  method: string;
  path: string;
  bodySha: string;
}

/**
 * The HTTP origin behind the tunnel (the member's "ks-apiserver"): answers
 * `origin <method> <path> <sha256 of the request body>`.
 */
function startOrigin(): { port: number; seen: Seen[]; close(): Promise<void> } {
  const seen: Seen[] = [];
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    async (req) => {
      const body = new Uint8Array(await req.arrayBuffer());
      const s = {
        method: req.method,
        path: new URL(req.url).pathname + new URL(req.url).search,
        bodySha: sha(body),
      };
      seen.push(s);
      return new Response(`origin ${s.method} ${s.path} ${s.bodySha}`);
    },
  );
  return { port: server.addr.port, seen, close: () => server.shutdown() };
}

const sha = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");

/** Start go_tower with `args`, output collected like our own processes'. */
function goTower(bin: string, name: string, args: string[]): Proc {
  return new Proc(name, bin, args, GO_ENV);
}

Deno.test({
  name: "go binaries: the original Go agent (ws-agent) against our proxy.ts",
  ignore: GO.ignore,
  fn: async () => {
    GO.check();
    const bin = await within(buildGoTower(), 120_000, "go build");
    await using dir = await tempDir();
    const agentPort = freePort();
    const kubernetesPort = freePort();
    const kubespherePort = freePort();
    await Deno.writeTextFile(
      `${dir.path}/clusters.json`,
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
    const origin = startOrigin();
    const procs: Proc[] = [];
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
      ]);
      procs.push(proxy);
      await proxy.waitFor(/Listening on/, 30_000);

      // A wrong token: refused with the original's message, and the Go agent leaves.
      const bad = goTower(bin, "go-agent-bad", [
        "ws-agent",
        `http://127.0.0.1:${agentPort}`,
        "alpha",
        "d4".repeat(32),
        "127.0.0.1:1",
        `127.0.0.1:${origin.port}`,
      ]);
      procs.push(bad);
      assertEquals(await bad.waitFor(/^CONFIG /, 20_000), "CONFIG refused Unauthorized agent");
      assertEquals((await within(bad.status(), 10_000, "refused go agent exit")).code, 0);
      await proxy.waitFor(/Unauthorized agent.*wrong token/, 10_000);

      const go = goTower(bin, "go-agent", [
        "ws-agent",
        `http://127.0.0.1:${agentPort}`,
        "alpha",
        TOKEN,
        "127.0.0.1:1",
        `127.0.0.1:${origin.port}`,
      ]);
      procs.push(go);
      assertEquals(await go.waitFor(/^WEBSOCKET /, 20_000), "WEBSOCKET kubesphere-v1");
      assertMatch(await go.waitFor(/^SERVER-VERSION /), /^SERVER-VERSION SSH-/);
      assertEquals(await go.waitFor(/^CONFIG /, 20_000), "CONFIG ok");
      await proxy.waitFor(/Serving cluster endpoints/, 20_000);
      // The keepalive the Go agent sends is answered.
      assertEquals(await go.waitFor(/^PING /, 10_000), "PING true");

      const base = `http://127.0.0.1:${kubespherePort}`;
      const get = await within(fetch(`${base}/kapis/interop?x=1`), 20_000, "GET via go agent");
      const empty = sha(new Uint8Array());
      assertEquals(get.status, 200);
      assertEquals(await get.text(), `origin GET /kapis/interop?x=1 ${empty}`);
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
      assertEquals(await post.text(), `origin POST /kapis/upload ${sha(payload)}`);
      assertEquals(origin.seen.length, 2);
    } finally {
      for (const p of procs.reverse()) await p.stop();
      await origin.close();
    }
  },
});

Deno.test({
  name: "go binaries: our agent.ts against the original Go proxy (ws-proxy)",
  ignore: GO.ignore,
  fn: async () => {
    GO.check();
    const bin = await within(buildGoTower(), 120_000, "go build");
    await using dir = await tempDir();
    const origin = startOrigin();
    const kubernetesPort = freePort();
    const procs: Proc[] = [];
    try {
      // A wrong token: the Go proxy refuses in its reply to `config`; our agent says why.
      const goBad = goTower(bin, "go-proxy-bad", ["ws-proxy", "alpha", "d4".repeat(32)]);
      procs.push(goBad);
      const badPort = Number((await goBad.waitFor(/^LISTEN /, 20_000)).split(" ")[1]);
      const refused = await startAgent({
        name: "alpha",
        token: TOKEN,
        proxyUrl: `http://127.0.0.1:${badPort}`,
        dir: dir.path,
        kubernetesPort,
        kubespherePort: origin.port,
        label: "agent-refused",
      });
      procs.push(refused);
      await refused.waitFor(/Proxy refused the agent reason="Unauthorized agent"/, 30_000);
      assertEquals(await goBad.waitFor(/^REFUSED /), "REFUSED alpha");
      await refused.stop();
      await goBad.stop();

      const go = goTower(bin, "go-proxy", ["ws-proxy", "alpha", TOKEN]);
      procs.push(go);
      const port = Number((await go.waitFor(/^LISTEN /, 20_000)).split(" ")[1]);
      const agent = await startAgent({
        name: "alpha",
        token: TOKEN,
        proxyUrl: `http://127.0.0.1:${port}`,
        dir: dir.path,
        kubernetesPort,
        kubespherePort: origin.port,
      });
      procs.push(agent);
      await agent.waitFor(/Connected\./, 30_000);
      // The config our agent sent, as the Go proxy decoded it (Go encoding/json).
      const cfg = await go.waitFor(/^CONFIG /);
      assertMatch(cfg, /^CONFIG Version=\S+ Name=alpha /);
      assertMatch(
        cfg,
        new RegExp(
          ` KubernetesSvcHost=127\\.0\\.0\\.1:${kubernetesPort}` +
            ` KubeSphereSvcHost=127\\.0\\.0\\.1:${origin.port}` +
            ` CAData=0 CertData=0 KeyData=0 BearerToken=${"member-bearer-token".length}$`,
        ),
      );
      assertEquals(await go.waitFor(/^RESPONSE /, 20_000), "RESPONSE HTTP/1.1 200 OK");
      assertEquals(
        await go.waitFor(/^BODY /),
        `BODY origin GET /interop ${sha(new Uint8Array())}`,
      );
      assertEquals(await go.waitFor(/^DONE$/), "DONE");
      assertEquals((await within(go.status(), 10_000, "go proxy exit")).code, 0);
      assertEquals(origin.seen.length, 1);
      assertMatch(await go.waitFor(/^CLIENT-VERSION /), /^CLIENT-VERSION SSH-/);
    } finally {
      for (const p of procs.reverse()) await p.stop();
      await origin.close();
    }
  },
});
