/**
 * The tunnel's SSH code against OpenSSH (Debian's openssh-server and openssh-client): ssh2 with
 * our ChaCha20-Poly1305 packet code, ident hook and rekeying, as the agent and proxy run it,
 * against a real `sshd` and a real `ssh`. Bytes go through forwarded channels to an echo server
 * and must all come back in order while keys are exchanged again and again, started by OpenSSH
 * (`RekeyLimit`) or by us. Under `TOWER_CI=1` a missing OpenSSH fails the tests.
 */

import { Buffer } from "node:buffer";
import { createHash, randomBytes } from "node:crypto";
import net from "node:net";
import type { Duplex } from "node:stream";
// @ts-types="@types/ssh2"
import ssh2 from "ssh2";
import type { ClientChannel, Connection } from "ssh2";
import { assert, assertEquals } from "../helpers/assert.ts";
import { requireOpenSsh, type Sshd, startSshd } from "../helpers/openssh.ts";
import { echoServer } from "../helpers/tunnel.ts";
import { generateHostKeyPem, parseHostKey } from "../../lib/tunnel/hostkey.ts";
import { SSH_ALGORITHMS } from "../../lib/tunnel/protocol.ts";
import { keepRekeying } from "../../lib/tunnel/rekey.ts";
import {
  acceptsLargePackets,
  CHACHA_POLY,
  installFastChaChaPoly,
} from "../../lib/tunnel/ssh_cipher.ts";
import { acceptAnyIdent } from "../../lib/tunnel/ssh_ident.ts";
import { followTransport } from "../../lib/tunnel/channel_flow.ts";
import { deadline } from "../helpers/deadline.ts";

const { Client, Server } = ssh2;
type Client = InstanceType<typeof Client>;
const ALGORITHMS = SSH_ALGORITHMS as ssh2.Algorithms;
const MiB = 1 << 20;

const openssh = await requireOpenSsh();
if (!openssh.ignore) await installFastChaChaPoly();

/** Our client (the agent's setup: TCP, ident hook, our algorithms) logged in to `sshd`. */
async function clientTo(sshd: Sshd): Promise<{ client: Client; handshakes: () => number }> {
  const sock = net.connect(sshd.port, "127.0.0.1");
  await new Promise((r, j) => sock.once("connect", r).once("error", j));
  const client = new Client();
  let handshakes = 0;
  const first = new Promise<ssh2.NegotiatedAlgorithms>((r) => client.once("handshake", r));
  client.on("handshake", () => handshakes++);
  const ready = new Promise<void>((resolve, reject) => {
    client.once("ready", () => resolve());
    client.once("error", reject);
  });
  client.connect({
    sock: acceptAnyIdent(sock, client),
    username: sshd.user,
    privateKey: sshd.clientKey,
    algorithms: ALGORITHMS,
  });
  await deadline(ready, 20_000, "logged in to sshd");
  assertEquals((await first).cs.cipher, CHACHA_POLY);
  const proto = (client as unknown as { _protocol: { _decipher: unknown } })._protocol;
  assert(acceptsLargePackets(proto._decipher), "our decipher opens sshd's packets");
  return { client, handshakes: () => handshakes - 1 };
}

/** Send `total` random bytes through `ch` and hash what comes back. */
async function echo(ch: Duplex, total: number): Promise<{ sent: string; got: string }> {
  const sent = createHash("sha256");
  const got = createHash("sha256");
  let back = 0;
  const done = new Promise<void>((resolve, reject) => {
    ch.on("data", (b: Buffer) => {
      got.update(b);
      back += b.length;
    });
    ch.once("end", resolve);
    ch.once("error", reject);
  });
  for (let off = 0; off < total; off += 64 * 1024) {
    const b = randomBytes(Math.min(64 * 1024, total - off));
    sent.update(b);
    if (!ch.write(b)) await new Promise((r) => ch.once("drain", r));
  }
  ch.end();
  await done;
  assertEquals(back, total);
  return { sent: sent.digest("hex"), got: got.digest("hex") };
}

function forwardOut(client: Client, port: number): Promise<ClientChannel> {
  return new Promise((resolve, reject) =>
    client.forwardOut(
      "127.0.0.1",
      0,
      "127.0.0.1",
      port,
      (err, ch) => err ? reject(err) : resolve(ch),
    )
  );
}

Deno.test({
  name: "openssh: our client against sshd with RekeyLimit 1M: sshd rekeys, 8 MiB each way intact",
  ignore: openssh.ignore,
  fn: async () => {
    openssh.check();
    const target = echoServer();
    const sshd = await startSshd(["RekeyLimit 1M", `Ciphers ${CHACHA_POLY}`]);
    try {
      const { client, handshakes } = await clientTo(sshd);
      try {
        const ch = await forwardOut(client, target.port);
        const r = await deadline(echo(ch as unknown as Duplex, 8 * MiB), 120_000, "echo");
        assertEquals(r.got, r.sent);
        // sshd starts an exchange after 1 MiB either way (it checks after every packet), and
        // 8 MiB went each way.
        assert(handshakes() >= 7, `saw ${handshakes()} key exchanges started by sshd`);
      } finally {
        client.end();
      }
    } finally {
      await sshd.close();
      await target.close();
    }
  },
});

Deno.test({
  name: "openssh: our client rekeys against sshd (256 KiB limit), 8 MiB each way intact",
  ignore: openssh.ignore,
  fn: async () => {
    openssh.check();
    const target = echoServer();
    const sshd = await startSshd([`Ciphers ${CHACHA_POLY}`]);
    try {
      const { client, handshakes } = await clientTo(sshd);
      try {
        const rekeyer = keepRekeying(client, { bytes: 256 * 1024 });
        const ch = await forwardOut(client, target.port);
        followTransport(ch, client); // as the tunnel's own channels do
        const r = await deadline(echo(ch as unknown as Duplex, 8 * MiB), 120_000, "echo");
        assertEquals(r.got, r.sent);
        // 8 MiB each way in 64 KiB writes, a new key every 256 KiB plus at most one write.
        assert(rekeyer.started >= 16, `we started ${rekeyer.started} key exchanges`);
        assert(handshakes() >= 16, `saw ${handshakes()} key exchanges`);
      } finally {
        client.end();
      }
    } finally {
      await sshd.close();
      await target.close();
    }
  },
});

Deno.test({
  name: "openssh: ssh -W through our server (Tower's cipher code), both rekeying, 8 MiB intact",
  ignore: openssh.ignore,
  fn: async () => {
    openssh.check();
    const target = echoServer();
    const server = new Server({
      hostKeys: [{ key: parseHostKey(generateHostKeyPem()).sshKey }],
      algorithms: ALGORITHMS,
    });
    let handshakes = 0;
    let decipherIsOurs = false;
    server.on("connection", (conn: Connection) => {
      conn.on("error", () => {});
      conn.on("authentication", (ctx) => ctx.accept());
      conn.once("ready", () => {
        conn.on("handshake", () => handshakes++);
        keepRekeying(conn, { bytes: MiB });
        const proto = (conn as unknown as { _protocol: { _decipher: unknown } })._protocol;
        decipherIsOurs = acceptsLargePackets(proto._decipher);
      });
      conn.on("tcpip", (accept, _reject, info) => {
        const ch = accept();
        const up = net.connect(info.destPort, info.destIP);
        ch.pipe(up).pipe(ch);
      });
    });
    const tcp = net.createServer((sock) => {
      acceptAnyIdent(sock, server);
      server.injectSocket(sock);
    });
    await new Promise<void>((r) => tcp.listen(0, "127.0.0.1", r));
    const port = (tcp.address() as net.AddressInfo).port;
    const ssh = new Deno.Command("ssh", {
      args: [
        ...["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"],
        ...["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"],
        ...["-o", "RekeyLimit=1M", "-o", `Ciphers=${CHACHA_POLY}`],
        ...["-p", String(port), "-W", `127.0.0.1:${target.port}`, "tower@127.0.0.1"],
      ],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    try {
      const total = 8 * MiB;
      const sent = createHash("sha256");
      const writing = (async () => {
        const w = ssh.stdin.getWriter();
        for (let off = 0; off < total; off += 64 * 1024) {
          const b = randomBytes(64 * 1024);
          sent.update(b);
          await w.write(b);
        }
        await w.close();
      })();
      const got = createHash("sha256");
      let back = 0;
      for await (const b of ssh.stdout) {
        got.update(b);
        back += b.length;
      }
      await writing;
      const status = await deadline(ssh.status, 30_000, "ssh exit");
      const stderr = new TextDecoder().decode(
        await new Response(ssh.stderr).arrayBuffer(),
      );
      assertEquals(status.code, 0, stderr);
      assertEquals(back, total);
      assertEquals(got.digest("hex"), sent.digest("hex"));
      assert(decipherIsOurs, "our decipher opens ssh's packets");
      // ssh starts an exchange after 1 MiB either way, and so do we; 8 MiB went each way.
      assert(handshakes >= 7, `saw ${handshakes} key exchanges`);
    } finally {
      try {
        ssh.kill();
      } catch {
        // exited
      }
      await new Promise((r) => tcp.close(r));
      await target.close();
    }
  },
});
