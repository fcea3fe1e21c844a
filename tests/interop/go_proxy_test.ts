/**
 * Our `agent.ts` process against the original Go proxy (rendition: tests/interop/go_tower, proxy
 * mode — its agent port, an upgrade naming no subprotocol, the first-request rule, its replies,
 * ping, and its two endpoints), with real HTTP requests through the tunnel.
 * tests/interop/README.md maps each behaviour of the original to the test that covers it.
 *
 * Skipped, with a message, only when Go or its packages are missing (see go_build.ts).
 * @module
 */

import { requireTools } from "../helpers/tools.ts";
import { Buffer } from "node:buffer";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { freePort, Proc, tempDir } from "../helpers/proc.ts";
import { startAgent } from "../helpers/tunnel.ts";
import { buildGoTower, goMissing, INSTALL_HINT, startGoProxy } from "./go_build.ts";
import { EMPTY, startOrigin } from "./origins.ts";
import { deadline } from "../helpers/deadline.ts";

const TOKEN = "c3".repeat(32);
const BAD_TOKEN = "d4".repeat(32);
/** Skipped with a message where Go is missing; under TOWER_CI=1 failed instead. */
const GO = await requireTools("Go proxy interop", goMissing, INSTALL_HINT);

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
      const n = await deadline(conn.read(buf), 10_000, "upgrade response");
      if (n === null) break;
      head += new TextDecoder().decode(buf.subarray(0, n));
    }
    return head.split("\r\n\r\n")[0];
  } finally {
    conn.close();
  }
}

Deno.test({
  name: "go proxy: our agent.ts against the original Go proxy (its 101 names no subprotocol)",
  ignore: GO.ignore,
  fn: async () => {
    GO.check();
    const bin = await deadline(buildGoTower(), 120_000, "go build");
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
      const plain = await deadline(fetch(`${base}/kapis/a?b=c`), 20_000, "GET via go proxy");
      assertEquals(
        [plain.status, await plain.text()],
        [200, `origin GET /kapis/a?b=c ${EMPTY} auth=null`],
      );
      const own = await deadline(
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
      const again = await deadline(fetch(`${base}/kapis/again`), 20_000, "GET after pings");
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
