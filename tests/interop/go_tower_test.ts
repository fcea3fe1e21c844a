/**
 * Our SSH hooks (lib/tunnel: ssh_ident.ts, channel_open.ts and channel_accept.ts, ssh_requests.ts:
 * idents, raw channel extra data, global requests, open failures) against golang.org/x/crypto/ssh with the original tower's SSH settings, over
 * 127.0.0.1 TCP: the ssh-probe-* modes of tests/interop/go_tower (probe.go). The original's
 * own agent and proxy are exercised in go_agent_test.ts and go_proxy_test.ts.
 *
 * Skipped, with a message, only when Go or its packages are missing (see go_build.ts), and
 * never in CI (tests/helpers/tools.ts). Both directions also rekey (lib/tunnel/rekey.ts) every
 * 256 KiB while the data flows: x/crypto/ssh answers.
 */

import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import net from "node:net";
import type { Duplex } from "node:stream";
import assert from "node:assert/strict";
// @ts-types="@types/ssh2"
import ssh2 from "ssh2";
import type { Connection } from "ssh2";
import { onKubesphereChannel } from "../../lib/tunnel/channel_accept.ts";
import { ChannelOpenError, openKubesphereChannel } from "../../lib/tunnel/channel_open.ts";
import { OPEN_FAILURE } from "../../lib/tunnel/protocol.ts";
import { acceptAnyIdent, sendCustomIdent } from "../../lib/tunnel/ssh_ident.ts";
import { GlobalRequester, serveGlobalRequests } from "../../lib/tunnel/ssh_requests.ts";
import { keepRekeying, type Rekeyer } from "../../lib/tunnel/rekey.ts";
import { requireTools } from "../helpers/tools.ts";
import { generateKeyPairSync } from "node:crypto";
import { buildGoTower, goMissing, INSTALL_HINT } from "./go_build.ts";
import { deadline } from "../helpers/deadline.ts";

const { Client, Server } = ssh2;
type Server = InstanceType<typeof Server>;

const ALLOWED = "10.96.0.1:443";
const FORBIDDEN = "169.254.169.254:80";

/** Skipped with a message where Go is missing; under TOWER_CI=1 failed instead. */
const GO = await requireTools("go interop", goMissing, INSTALL_HINT);

/** A running go_tower; `line(prefix)` waits for the first stdout line starting with it. */
class GoProcess {
  readonly lines: string[] = [];
  #waiters: { prefix: string; resolve: (l: string) => void }[] = [];
  #child: Deno.ChildProcess;
  readonly done: Promise<{ code: number; stderr: string }>;

  constructor(bin: string, args: string[]) {
    this.#child = new Deno.Command(bin, { args, stdout: "piped", stderr: "piped" }).spawn();
    const stdout = this.#readLines();
    const stderr = new Response(this.#child.stderr).text();
    this.done = Promise.all([this.#child.status, stdout, stderr]).then(([s, , e]) => {
      for (const w of this.#waiters) w.resolve(`EXITED ${s.code}`);
      return { code: s.code, stderr: e };
    });
  }

  async #readLines(): Promise<void> {
    let buf = "";
    for await (const chunk of this.#child.stdout.pipeThrough(new TextDecoderStream())) {
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf("\n")) !== -1) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        this.lines.push(line);
        this.#waiters = this.#waiters.filter((w) => {
          if (!line.startsWith(w.prefix)) return true;
          w.resolve(line);
          return false;
        });
      }
    }
  }

  line(prefix: string): Promise<string> {
    const seen = this.lines.find((l) => l.startsWith(prefix));
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve) => this.#waiters.push({ prefix, resolve }));
  }

  kill(): void {
    try {
      this.#child.kill("SIGKILL");
    } catch {
      // already exited
    }
  }
}

function once<T = unknown>(
  em: { once(ev: string, fn: (...a: unknown[]) => void): unknown },
  ev: string,
): Promise<T> {
  return new Promise((resolve) => em.once(ev, (...args: unknown[]) => resolve(args[0] as T)));
}

function readAll(ch: Duplex): Promise<Buffer> {
  const parts: Buffer[] = [];
  ch.on("data", (d: Buffer) => parts.push(d));
  return new Promise((resolve, reject) => {
    ch.once("end", () => resolve(Buffer.concat(parts)));
    ch.once("error", reject);
  });
}

/** Same bytes as go_tower's pattern(): byte i is i*7 mod 251. */
function pattern(n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (i * 7) % 251;
  return b;
}

const sha = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");

Deno.test({
  name: "go interop: our ssh2 client against x/crypto/ssh with the Go proxy's SSH settings",
  ignore: GO.ignore,
  fn: async () => {
    GO.check();
    const bin = await deadline(buildGoTower(), 120_000, "go build");
    const go = new GoProcess(bin, ["ssh-probe-server"]);
    try {
      const port = Number((await deadline(go.line("LISTEN "), 10_000, "listen")).split(" ")[1]);
      const sock = net.connect(port, "127.0.0.1");
      await deadline(once(sock, "connect"), 5_000, "tcp connect");
      const client = new Client();
      client.on("error", () => {});
      // Emulate the original agent on the wire too: send SSH-kubesphere-v1-client.
      sendCustomIdent(sock, client, "SSH-kubesphere-v1-client");
      const echoed: Promise<void>[] = [];
      const targets: string[] = [];
      onKubesphereChannel(client, (target, accept, reject) => {
        targets.push(target);
        if (target !== ALLOWED) {
          reject(OPEN_FAILURE.CONNECT_FAILED, "target not allowed");
          return;
        }
        const ch = accept();
        echoed.push(
          readAll(ch).then((got) => {
            ch.end(Buffer.concat([Buffer.from("echo:"), got]));
          }),
        );
      });
      const closed = once(client, "close");
      client.connect({ sock, username: "", password: "" });
      const requester = new GlobalRequester(client);
      await deadline(once(client, "ready"), 10_000, "ssh ready");
      const rekeyer = keepRekeying(client, { bytes: 256 * 1024 });
      const reply = await deadline(
        requester.request("config", new TextEncoder().encode('{"Name":"alpha"}')),
        5_000,
        "config reply",
      );
      assert.equal(reply.ok, true);

      const got = await deadline(go.line("GOT "), 20_000, "go GOT");
      const payload = pattern(3 * 1024 * 1024 + 17);
      const expected = Buffer.concat([Buffer.from("echo:"), payload]);
      assert.equal(got, `GOT ${expected.length} ${sha(expected)}`);
      await deadline(Promise.all(echoed), 5_000, "echo done");
      // 3 MiB each way, new keys after 256 KiB: the Go proxy took part in every exchange (it
      // may send up to a window, 2 MiB, before it sees our KEXINIT: at least one each way).
      assert.ok(rekeyer.exchanges >= 2, `${rekeyer.exchanges} key exchanges`);
      assert.deepEqual(targets, [FORBIDDEN, ALLOWED]);
      assert.equal(await go.line("CLIENT-VERSION "), "CLIENT-VERSION SSH-kubesphere-v1-client");
      assert.equal(await go.line("CONFIG "), 'CONFIG {"Name":"alpha"}');
      assert.match(await go.line("REJECTED "), /target_not_allowed/);
      await deadline(go.line("DONE"), 5_000, "go done");
      await deadline(closed, 5_000, "client close");
      const { code, stderr } = await deadline(go.done, 5_000, "go exit");
      assert.equal(code, 0, `go_tower proxy failed: ${go.lines.join("\n")}\n${stderr}`);
    } finally {
      go.kill();
      await go.done;
    }
  },
});

Deno.test({
  name: "go interop: x/crypto/ssh with the Go agent's SSH settings against our ssh2 server",
  ignore: GO.ignore,
  fn: async () => {
    GO.check();
    const bin = await deadline(buildGoTower(), 120_000, "go build");
    const hostKey = generateKeyPairSync("ec", { namedCurve: "prime256v1" }).privateKey.export({
      type: "sec1",
      format: "pem",
    }) as string;
    const server: Server = new Server({ hostKeys: [hostKey] });
    const configs: string[] = [];
    const configured = Promise.withResolvers<Connection>();
    let rekeyer: Rekeyer | undefined;
    server.on("connection", (conn: Connection) => {
      conn.on("error", () => {});
      conn.on("authentication", (ctx) => ctx.accept());
      conn.on("ready", () => {
        rekeyer = keepRekeying(conn, { bytes: 256 * 1024 });
        serveGlobalRequests(conn, (name, payload) => {
          if (name === "config") {
            configs.push(new TextDecoder().decode(payload));
            queueMicrotask(() => configured.resolve(conn));
          }
          return { ok: true };
        });
      });
    });
    const tcp = net.createServer((sock) => {
      // Our proxy sends a standard SSH-2.0 line; it must accept SSH-kubesphere-v1-client.
      acceptAnyIdent(sock, server);
      server.injectSocket(sock);
    });
    await new Promise<void>((resolve) => tcp.listen(0, "127.0.0.1", resolve));
    const port = (tcp.address() as net.AddressInfo).port;
    const go = new GoProcess(bin, ["ssh-probe-client", String(port)]);
    try {
      const conn = await deadline(configured.promise, 10_000, "config request");
      assert.match(configs[0], /"Name":"alpha"/);
      assert.match(await go.line("SERVER-VERSION "), /^SERVER-VERSION SSH-2\.0-ssh2js/);

      const refused = await openKubesphereChannel(conn, FORBIDDEN).then(() => undefined, (e) => e);
      assert.ok(refused instanceof ChannelOpenError, String(refused));
      assert.equal(refused.reason, OPEN_FAILURE.CONNECT_FAILED);
      assert.equal(refused.description, "target not allowed");

      const ch = await deadline(openKubesphereChannel(conn, ALLOWED), 5_000, "open");
      const chClosed = once(ch, "close");
      const payload = pattern(3 * 1024 * 1024 + 17);
      const back = readAll(ch);
      ch.end(payload);
      const got = await deadline(back, 20_000, "echo");
      assert.equal(got.length, payload.length + 5);
      assert.equal(got.subarray(0, 5).toString(), "echo:");
      assert.equal(sha(got.subarray(5)), sha(payload));
      // 3 MiB each way, new keys after 256 KiB: the Go agent took part in every exchange (it
      // may send up to a window, 2 MiB, before it sees our KEXINIT: at least one each way).
      assert.ok(rekeyer!.exchanges >= 2, `${rekeyer!.exchanges} key exchanges`);
      assert.equal(await go.line("GOT "), `GOT ${payload.length} ${sha(payload)}`);
      assert.equal(await go.line("TARGET "), `TARGET ${FORBIDDEN}`);
      assert.equal(await go.line("CONFIG "), 'CONFIG true ""');
      assert.equal(await go.line("PING "), "PING true");
      await deadline(chClosed, 5_000, "channel close");
      await deadline(go.line("DONE"), 5_000, "go done");
      const { code, stderr } = await deadline(go.done, 5_000, "go exit");
      assert.equal(code, 0, `go_tower agent failed: ${go.lines.join("\n")}\n${stderr}`);
    } finally {
      go.kill();
      await go.done;
      await new Promise((resolve) => tcp.close(resolve));
    }
  },
});
