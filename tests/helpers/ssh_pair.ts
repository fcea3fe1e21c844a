/**
 * An ssh2 server (the proxy's role) and client (the agent's role) connected over TCP on
 * 127.0.0.1, with the `kubesphere` channel hooks of lib/tunnel/channel_open.ts and
 * channel_accept.ts on both ends, for channel-level tests in one process. Also {@link goPipe}: a channel piped to a socket the way
 * the original Go tower does it.
 * @module
 */

import { Buffer } from "node:buffer";
import { generateKeyPairSync } from "node:crypto";
import net from "node:net";
import type { Duplex } from "node:stream";
// @ts-types="@types/ssh2"
import ssh2 from "ssh2";
import type { ClientChannel, Connection } from "ssh2";
import { onKubesphereChannel } from "../../lib/tunnel/channel_accept.ts";
import { deadline } from "./deadline.ts";

const { Client, Server } = ssh2;
type Client = InstanceType<typeof Client>;

const HOST_KEY = generateKeyPairSync("ec", { namedCurve: "prime256v1" }).privateKey.export({
  type: "sec1",
  format: "pem",
}) as string;

/** A connected pair. */
export interface SshPair {
  /** The server (proxy) side: open `kubesphere` channels on it. */
  conn: Connection;
  client: Client;
  /** The agent's TCP socket (the proxy's transport peer). */
  agentSock: net.Socket;
  /** Channels the agent accepted, in order. */
  accepted: ClientChannel[];
  /** Called with each channel the agent accepts, and its target. */
  onAccept: ((ch: ClientChannel, target: string) => void) | undefined;
  close(): Promise<void>;
}

/** Connect an ssh2 server and client over TCP; resolves once the client is authenticated. */
export async function sshPair(): Promise<SshPair> {
  const server = new Server({ hostKeys: [HOST_KEY] });
  const serverSocks: net.Socket[] = [];
  const tcp = net.createServer((sock) => {
    serverSocks.push(sock);
    server.injectSocket(sock);
  });
  await new Promise<void>((resolve) => tcp.listen(0, "127.0.0.1", resolve));
  const connP = new Promise<Connection>((resolve) => {
    server.on("connection", (conn: Connection) => {
      conn.on("authentication", (ctx) => ctx.accept());
      conn.on("error", () => {});
      conn.once("ready", () => resolve(conn));
    });
  });
  const agentSock = net.connect((tcp.address() as net.AddressInfo).port, "127.0.0.1");
  await new Promise((r) => agentSock.once("connect", r));
  const client = new Client();
  client.on("error", () => {});
  const pair: SshPair = {
    conn: undefined as unknown as Connection,
    client,
    agentSock,
    accepted: [],
    onAccept: undefined,
    close: async () => {
      const closed = Promise.all(
        [agentSock, ...serverSocks].map((s) =>
          s.destroyed ? Promise.resolve() : new Promise((r) => s.once("close", r))
        ),
      );
      client.end();
      agentSock.destroy();
      for (const s of serverSocks) s.destroy();
      await deadline(closed, 5_000, "sockets closed");
      await new Promise((r) => tcp.close(r));
    },
  };
  onKubesphereChannel(client, (target, accept) => {
    const ch = accept();
    pair.accepted.push(ch);
    pair.onAccept?.(ch, target);
  });
  client.connect({ sock: agentSock, username: "", password: "" });
  pair.conn = await deadline(connP, 10_000, "ssh ready");
  return pair;
}

/** A channel as the tests use it: a Duplex with ssh2's `close()` (CLOSE without EOF). */
export type SshChannel = Duplex & { close(): void };

/**
 * Pipe `channel` and `sock` the way the original Go tower does (`utils.Pipe`): one copy each
 * way, and when either copy ends (EOF or error) both are closed at once: the channel with
 * CLOSE and no EOF before it, the socket with a full close. Like Go's blocking `Write`, every
 * byte written to the channel is sent before its CLOSE. Resolves once both are closed.
 */
export function goPipe(channel: SshChannel, sock: net.Socket): Promise<void> {
  return new Promise((resolve) => {
    let done = false;
    const closeBoth = () => {
      if (done) return;
      done = true;
      channel.resume(); // read on (and drop): the peer's CLOSE then ends it
      // Go closes the socket with close(2): what the kernel holds is still sent, then FIN
      // (or a reset, with input unread).
      sock.end();
      sock.once("finish", () => sock.destroy());
      // A zero-length write completes after every write before it.
      channel.write(Buffer.alloc(0), () => {
        channel.close();
        resolve();
      });
    };
    sock.on("error", closeBoth);
    channel.on("error", closeBoth);
    sock.on("data", (d: Buffer) => {
      if (done) return;
      if (!channel.write(d)) {
        sock.pause();
        channel.once("drain", () => sock.resume());
      }
    });
    channel.on("data", (d: Buffer) => {
      if (done) return; // a closed Go channel drops what still arrives
      if (!sock.write(d)) {
        channel.pause();
        sock.once("drain", () => channel.resume());
      }
    });
    sock.once("end", closeBoth);
    sock.once("close", closeBoth);
    channel.once("end", closeBoth);
    channel.once("close", closeBoth);
  });
}
