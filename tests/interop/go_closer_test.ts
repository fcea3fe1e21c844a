/**
 * Streams ended the original Go tower's way, against x/crypto/ssh itself: tests/interop/go_closer
 * pipes every channel with two copies and closes both sides when either ends, the channel with
 * CLOSE and no EOF before it (issue 21: kubectl exec output truncated through our proxy with the
 * original agent). Real processes: our `proxy.ts` with the Go agent, our `agent.ts` with the Go
 * proxy; origins that close right after their last byte (tests/helpers/closing_origin.ts) and
 * the test API server's exec; random sizes and chunkings (fast-check, seeded); every byte checked.
 *
 * Needs Go, x/crypto/ssh and gorilla/websocket (`.ci/run` installs them from Debian); skipped,
 * with a message, when they are missing.
 * @module
 */

import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import net from "node:net";
import tls from "node:tls";
import fc from "fast-check";
import { parse } from "yaml";
import { generateCA, issueClientCert, issueServingCert } from "../../lib/pki/mod.ts";
import { deadline } from "../helpers/deadline.ts";
import { assert, assertEquals } from "../helpers/assert.ts";
import {
  type ClosingOrigin,
  patternBytes,
  startClosingOrigin,
  writeChunked,
} from "../helpers/closing_origin.ts";
import { Proc, run, tempDir } from "../helpers/proc.ts";
import { startStandaloneStack } from "../helpers/stack.ts";
import { startAgent } from "../helpers/tunnel.ts";
import { RawClient } from "../proxy/http/helpers.ts";

const GO_SRC = new URL("./go_closer/", import.meta.url).pathname;
const GOPATH = Deno.env.get("GO_TOWER_GOPATH") ?? "/usr/share/gocode";
const INSTALL_HINT =
  "apt-get install -y golang-go golang-golang-x-crypto-dev golang-github-gorilla-websocket-dev";
const TOKEN = "e5".repeat(32);
const SEED = 20261207;

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

const MISSING = await missing();
if (MISSING) console.warn(`SKIP go_closer interop tests: ${MISSING} (install: ${INSTALL_HINT})`);

let built: Promise<string> | undefined;
let buildDir: string | undefined;
globalThis.addEventListener("unload", () => {
  if (buildDir) Deno.removeSync(buildDir, { recursive: true });
});

/** Build go_closer once per run; returns the binary path. */
function buildGoCloser(): Promise<string> {
  built ??= (async () => {
    const dir = buildDir = await Deno.makeTempDir({ prefix: "go_closer_" });
    const bin = `${dir}/go_closer`;
    const out = await new Deno.Command("go", {
      args: ["build", "-o", bin, "."],
      cwd: GO_SRC,
      env: { GO111MODULE: "off", GOPATH, GOCACHE: `${dir}/cache`, GOFLAGS: "" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) {
      throw new Error(
        `go build go_closer failed (need: ${INSTALL_HINT}):\n${
          new TextDecoder().decode(out.stderr)
        }`,
      );
    }
    return bin;
  })();
  return built;
}

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

/** A member's CA and a client identity for the Go agent's `config`, as PEM files in `dir`. */
async function writePems(dir: string, pems: { ca: string; cert: string; key: string }) {
  const paths = { ca: `${dir}/ca.pem`, cert: `${dir}/cert.pem`, key: `${dir}/key.pem` };
  await Deno.writeTextFile(paths.ca, pems.ca);
  await Deno.writeTextFile(paths.cert, pems.cert);
  await Deno.writeTextFile(paths.key, pems.key);
  return [paths.ca, paths.cert, paths.key];
}

/** The kubeconfig the proxy wrote for `alpha`: its CA and client identity. */
async function towerIdentity(path: string) {
  const kc = parse(await Deno.readTextFile(path));
  const unb64 = (s: string) => Buffer.from(s, "base64").toString("utf8");
  return {
    ca: unb64(kc.clusters[0].cluster["certificate-authority-data"]),
    cert: unb64(kc.users[0].user["client-certificate-data"]),
    key: unb64(kc.users[0].user["client-key-data"]),
  };
}

Deno.test({
  name: "go_closer: the original agent's CLOSE without EOF, through proxy.ts: every byte arrives",
  ignore: MISSING !== undefined,
  fn: async () => {
    const bin = await deadline(buildGoCloser(), 120_000, "go build");
    await using dir = await tempDir();
    const memberCA = await generateCA({ commonName: "member-ca" });
    const serving = await issueServingCert(memberCA, {
      commonName: "member",
      ipAddresses: ["127.0.0.1"],
    });
    const agentId = await issueClientCert(memberCA, { commonName: "agent" });
    const origins = { plain: startClosingOrigin(), tls: startClosingOrigin({ tls: serving }) };
    const stack = await startStandaloneStack({ dir: dir.path, token: TOKEN });
    let go: Proc | undefined;
    try {
      await stack.proxy.waitFor(/Listening on/, 30_000);
      go = new Proc("go-agent", bin, [
        "agent",
        `http://127.0.0.1:${stack.agentPort}`,
        "alpha",
        TOKEN,
        `127.0.0.1:${origins.tls.port}`,
        `127.0.0.1:${origins.plain.port}`,
        ...await writePems(dir.path, {
          ca: memberCA.certPem,
          cert: agentId.certPem,
          key: agentId.keyPem,
        }),
      ]);
      await go.waitFor(/^CONFIG ok/, 30_000);
      const id = await towerIdentity((await stack.kubeconfigClient()).path);
      const connect = async (secure: boolean) => {
        const sock = secure
          ? tls.connect({ host: "127.0.0.1", port: stack.kubernetesPort, ...id })
          : net.connect(stack.kubespherePort, "127.0.0.1");
        await new Promise<void>((resolve, reject) => {
          sock.once(secure ? "secureConnect" : "connect", () => resolve());
          sock.once("error", reject);
        });
        const clean = { end: false };
        sock.once("end", () => clean.end = true);
        return { c: RawClient.of(sock), clean };
      };
      await fc.assert(
        fc.asyncProperty(
          fc.record({
            tls: fc.boolean(),
            echo: fc.boolean(),
            n: fc.integer({ min: 0, max: 1536 * 1024 }),
            seed: fc.integer({ min: 1, max: 0x7fffffff }),
            sizes: fc.array(fc.integer({ min: 1, max: 96 * 1024 }), {
              minLength: 1,
              maxLength: 16,
            }),
            trailing: fc.integer({ min: 1, max: 200 }),
            /** Wait for the agent to have closed before reading (and sending the tail). */
            stall: fc.boolean(),
            at: fc.double({ min: 0, max: 1, noNaN: true }),
            body: fc.integer({ min: 0, max: 256 * 1024 }),
          }),
          async (p) => {
            const origin: ClosingOrigin = p.tls ? origins.tls : origins.plain;
            const { c, clean } = await connect(p.tls);
            try {
              if (p.echo) {
                const stdin = patternBytes(p.seed, p.n);
                c.write(
                  `POST /echo/${p.n} HTTP/1.1\r\nHost: member\r\nConnection: Upgrade\r\n` +
                    `Upgrade: SPDY/3.1\r\n\r\n`,
                );
                assertEquals((await deadline(c.readHead(), 20_000, "101")).status, 101);
                writeChunked(c, stdin, p.sizes);
                const trailing = patternBytes(p.seed + 1, p.trailing);
                let got: Buffer;
                if (p.stall) {
                  c.sock.pause();
                  await deadline(origin.next(), 30_000, "origin done (the agent closed)");
                  c.write(trailing);
                  c.sock.resume();
                  got = await deadline(c.readToEnd(), 30_000, "echo");
                } else {
                  const first = await deadline(
                    c.readBytes(Math.floor(p.at * p.n)),
                    30_000,
                    "echo",
                  );
                  c.write(trailing);
                  got = Buffer.concat([first, await deadline(c.readToEnd(), 30_000, "echo")]);
                  await deadline(origin.next(), 30_000, "origin done");
                }
                assertEquals(got.length, p.n, "echoed bytes");
                assertEquals(sha(got), sha(stdin), "echoed bytes");
              } else {
                c.write(
                  `PUT /close/${p.n}/${p.seed} HTTP/1.0\r\nHost: member\r\n` +
                    `Content-Length: ${p.body}\r\n\r\n`,
                );
                writeChunked(c, patternBytes(p.seed + 2, p.body), p.sizes);
                if (p.stall) {
                  c.sock.pause();
                  await deadline(origin.next(), 30_000, "origin done (the agent closed)");
                  c.sock.resume();
                }
                const res = await deadline(c.readHead(), 30_000, "answer head");
                assertEquals(res.status, 200);
                const body = await deadline(c.readToEnd(), 30_000, "answer body");
                assertEquals(body.length, p.n, "answer bytes");
                assertEquals(sha(body), sha(patternBytes(p.seed, p.n)), "answer bytes");
                if (!p.stall) await deadline(origin.next(), 30_000, "origin done");
              }
              assert(clean.end, "the client side ended cleanly");
            } finally {
              await c.close();
            }
          },
        ),
        // A failure is a hang or a short read: report the first one, no shrinking through timeouts.
        { seed: SEED, numRuns: 16, endOnFailure: true },
      );
    } finally {
      await go?.stop();
      await stack.close();
      await origins.plain.close();
      await origins.tls.close();
    }
  },
});

Deno.test({
  name: "go_closer: kubectl exec -i cat through proxy.ts and the original agent returns its input",
  ignore: MISSING !== undefined,
  fn: async () => {
    const bin = await deadline(buildGoCloser(), 120_000, "go build");
    await using dir = await tempDir();
    const stack = await startStandaloneStack({ dir: dir.path, token: TOKEN });
    let go: Proc | undefined;
    try {
      await stack.proxy.waitFor(/Listening on/, 30_000);
      // The Go agent reaches the member with the member's own admin identity.
      const member = parse(await Deno.readTextFile(stack.member.kubeconfigPath));
      const unb64 = (s: string) => Buffer.from(s, "base64").toString("utf8");
      go = new Proc("go-agent", bin, [
        "agent",
        `http://127.0.0.1:${stack.agentPort}`,
        "alpha",
        TOKEN,
        new URL(member.clusters[0].cluster.server).host,
        "127.0.0.1:1",
        ...await writePems(dir.path, {
          ca: unb64(member.clusters[0].cluster["certificate-authority-data"]),
          cert: unb64(member.users[0].user["client-certificate-data"]),
          key: unb64(member.users[0].user["client-key-data"]),
        }),
      ]);
      await go.waitFor(/^CONFIG ok/, 30_000);
      const { path } = await stack.kubeconfigClient();
      for (let i = 0; i < 5; i++) {
        // ~400 KB of text, as in the report (kubectl's stdout is read as text here).
        const input = Array.from(
          { length: 3200 },
          (_, l) => `${i}:${l}:${sha(patternBytes(SEED + i * 4096 + l, 32)).repeat(2)}\n`,
        ).join("");
        const r = await run("kubectl", [
          `--kubeconfig=${path}`,
          `--cache-dir=${dir.path}/cache`,
          "--request-timeout=60s",
          "exec",
          "-i",
          "web-0",
          "--",
          "cat",
        ], { stdin: input, timeoutMs: 90_000, env: { HOME: dir.path } });
        assertEquals(r.code, 0, `kubectl exec: ${r.stderr}`);
        assertEquals(r.stdout.length, input.length, `run ${i}: output length`);
        assertEquals(sha(new TextEncoder().encode(r.stdout)), sha(new TextEncoder().encode(input)));
      }
    } finally {
      await go?.stop();
      await stack.close();
    }
  },
});

Deno.test({
  name: "go_closer: our agent.ts under the original proxy's CLOSE without EOF loses no byte",
  ignore: MISSING !== undefined,
  fn: async () => {
    const bin = await deadline(buildGoCloser(), 120_000, "go build");
    await using dir = await tempDir();
    const origin = startClosingOrigin();
    const goProxy = new Proc("go-proxy", bin, ["proxy", "alpha", TOKEN]);
    let agent: Proc | undefined;
    try {
      const port = Number((await goProxy.waitFor(/^LISTEN /, 30_000)).split(" ")[1]);
      agent = await startAgent({
        name: "alpha",
        token: TOKEN,
        proxyUrl: `http://127.0.0.1:${port}`,
        dir: dir.path,
        kubernetesPort: 1,
        kubespherePort: origin.port,
      });
      const clients = Number((await goProxy.waitFor(/^CLIENTS /, 30_000)).split(" ")[1]);
      await fc.assert(
        fc.asyncProperty(
          fc.record({
            upload: fc.boolean(),
            n: fc.integer({ min: 0, max: 3 << 20 }),
            seed: fc.integer({ min: 1, max: 0x7fffffff }),
            sizes: fc.array(fc.integer({ min: 1, max: 96 * 1024 }), {
              minLength: 1,
              maxLength: 16,
            }),
            /** What the origin sends meanwhile, into a stream about to be closed. */
            out: fc.integer({ min: 0, max: 2 << 20 }),
            slow: fc.constantFrom(0, 0, 1, 3),
          }),
          async (p) => {
            const sock = net.connect(clients, "127.0.0.1");
            await new Promise<void>((resolve, reject) => {
              sock.once("connect", () => resolve());
              sock.once("error", reject);
            });
            const c = RawClient.of(sock);
            try {
              if (p.upload) {
                // The client's FIN ends the Go proxy's copy up: it closes the channel right
                // behind the last bytes, while the origin is still answering.
                const stdin = patternBytes(p.seed, p.n);
                c.write(
                  `GET /sink/${p.out}/${p.slow} HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n` +
                    `Upgrade: SPDY/3.1\r\n\r\n`,
                );
                writeChunked(c, stdin, p.sizes);
                sock.end();
                const seen = await deadline(origin.next(), 30_000, "the origin's record");
                assertEquals(seen.how, "eof", "the origin was reset");
                assertEquals(seen.bytes, p.n, "bytes at the origin");
                assertEquals(seen.sha, sha(stdin), "bytes at the origin");
              } else {
                c.write(`GET /close/${p.n}/${p.seed} HTTP/1.1\r\nHost: t\r\n\r\n`);
                const res = await deadline(c.readHead(), 30_000, "answer head");
                const body = await deadline(c.readToEnd(), 30_000, "answer body");
                assertEquals(res.status, 200);
                assertEquals(sha(body), sha(patternBytes(p.seed, p.n)), "answer bytes");
                await deadline(origin.next(), 30_000, "the origin's record");
              }
            } finally {
              await c.close();
            }
          },
        ),
        { seed: SEED, numRuns: 16, endOnFailure: true },
      );
    } finally {
      await agent?.stop();
      await goProxy.stop();
      await origin.close();
    }
  },
});
