/**
 * A TCP forwarder for the benchmark's reference paths: each accepted connection is joined to a
 * new connection to `--to`, and bytes are copied both ways by Deno's own sockets and nothing
 * else. Two of them in a chain (client → A → B → origin) are the least any tunnel made of two
 * Deno processes can add on a machine: the same process crossings as Tower's proxy and agent,
 * with no HTTP, no multiplexing and no crypto.
 *
 * With `--sealed upstream` (A) and `--sealed downstream` (B), the bytes between the two travel
 * as `chacha20-poly1305@openssh.com` packets of up to 256 KiB, sealed and opened by the
 * tunnel's own cipher code (lib/tunnel/ssh_cipher.ts over ssh2's cipher objects, one pair per
 * connection and direction, as in a session): such a pair adds exactly the tunnel's per-byte
 * crypto to the copying. The 64-byte key comes from `PASSTHROUGH_KEY` (hex); both ends take the
 * same one.
 *
 *     deno run -A scripts/bench/passthrough.ts --port 0 --to 127.0.0.1:8080 [--sealed upstream]
 *
 * Prints `passthrough port=<port>` once listening.
 * @module
 */

import { Buffer } from "node:buffer";
import { parseArgs } from "node:util";
import cryptoModule from "ssh2/lib/protocol/crypto.js";
import { releaseBuffer } from "../../lib/buffer_pool.ts";
import {
  CHACHA_POLY,
  installFastChaChaPoly,
  LARGE_PACKET_SIZE,
} from "../../lib/tunnel/ssh_cipher.ts";

/** Which side of a forwarder carries sealed packets. */
export type SealedSide = "none" | "upstream" | "downstream";

interface Sealer {
  allocPacket(payloadLen: number): Buffer;
  encrypt(packet: Buffer): void;
}

interface Opener {
  decrypt(data: Uint8Array, p: number, dataLen: number): unknown;
  /** The packet being assembled (a view into the last read buffer when it arrived whole). */
  _packet: Uint8Array | null;
}

const ssh2 = cryptoModule as unknown as {
  CIPHER_INFO: Record<string, unknown>;
  createCipher(config: unknown): Sealer;
  createDecipher(config: unknown): Opener;
};

const READ_SIZE = LARGE_PACKET_SIZE;

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let off = 0; off < bytes.length;) off += await conn.write(bytes.subarray(off));
}

/** Copy `from` to `to` until `from` ends. */
async function copy(from: Deno.Conn, to: Deno.Conn): Promise<void> {
  const buf = new Uint8Array(READ_SIZE);
  for (;;) {
    const n = await from.read(buf);
    if (n === null) return;
    await writeAll(to, buf.subarray(0, n));
  }
}

/** Read plain bytes from `from`, write them to `to` as sealed packets. */
async function seal(from: Deno.Conn, to: Deno.Conn, key: Buffer): Promise<void> {
  let sealed: Buffer | undefined;
  const cipher = ssh2.createCipher({
    outbound: {
      seqno: 0,
      onWrite: (b: Buffer) => void (sealed = b),
      cipherInfo: ssh2.CIPHER_INFO[CHACHA_POLY],
      cipherKey: key,
    },
  });
  const buf = new Uint8Array(READ_SIZE);
  for (;;) {
    const n = await from.read(buf);
    if (n === null) return;
    const packet = cipher.allocPacket(n);
    packet.set(buf.subarray(0, n), 5);
    cipher.encrypt(packet);
    await writeAll(to, sealed!);
    releaseBuffer(sealed!);
    sealed = undefined;
  }
}

/** Read sealed packets from `from`, write their payloads to `to`; a bad packet throws. */
async function open(from: Deno.Conn, to: Deno.Conn, key: Buffer): Promise<void> {
  const payloads: Uint8Array[] = [];
  const decipher = ssh2.createDecipher({
    inbound: {
      seqno: 0,
      onPayload: (p: Uint8Array) => void payloads.push(p),
      decipherInfo: ssh2.CIPHER_INFO[CHACHA_POLY],
      decipherKey: key,
    },
  });
  let buf = new Uint8Array(READ_SIZE);
  for (;;) {
    const n = await from.read(buf);
    if (n === null) return;
    // ssh2 hands the decipher whole chunks (it takes `dataLen` as the chunk's length).
    decipher.decrypt(buf.subarray(0, n), 0, n);
    // A packet that arrived whole but without its MAC is kept as a view of this buffer.
    if (decipher._packet?.buffer === buf.buffer) buf = new Uint8Array(READ_SIZE);
    for (const p of payloads) await writeAll(to, p);
    payloads.length = 0;
  }
}

function closeWrite(conn: Deno.Conn): void {
  try {
    conn.closeWrite();
  } catch {
    // already closed
  }
}

function close(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // already closed
  }
}

/** Join `down` (accepted) to a new connection to `to`; resolves once both directions end. */
async function forward(
  down: Deno.TcpConn,
  to: { hostname: string; port: number },
  sealedSide: SealedSide,
  key: Buffer,
  say: (msg: string) => void,
): Promise<void> {
  let up: Deno.TcpConn;
  try {
    up = await Deno.connect(to);
  } catch (err) {
    say(`connect ${to.hostname}:${to.port}: ${(err as Error).message}`);
    close(down);
    return;
  }
  down.setNoDelay(true);
  up.setNoDelay(true);
  const run = async (
    from: Deno.Conn,
    toConn: Deno.Conn,
    sealedFrom: boolean,
    sealedTo: boolean,
  ) => {
    try {
      if (sealedTo) await seal(from, toConn, key);
      else if (sealedFrom) await open(from, toConn, key);
      else await copy(from, toConn);
      closeWrite(toConn);
    } catch (err) {
      // A refused packet or a reset: the pair is done.
      if (!(err instanceof Deno.errors.BadResource)) say(`stream: ${(err as Error).message}`);
      close(from);
      close(toConn);
    }
  };
  await Promise.all([
    run(down, up, sealedSide === "downstream", sealedSide === "upstream"),
    run(up, down, sealedSide === "upstream", sealedSide === "downstream"),
  ]);
  close(down);
  close(up);
}

/** A running forwarder. */
export interface Passthrough {
  port: number;
  close(): void;
}

/** Listen on 127.0.0.1:`port` and forward every connection to `to`. */
export async function startPassthrough(opts: {
  port: number;
  to: { hostname: string; port: number };
  sealed: SealedSide;
  key?: Uint8Array;
  say?: (msg: string) => void;
}): Promise<Passthrough> {
  const say = opts.say ?? ((msg: string) => console.error(`passthrough: ${msg}`));
  let key = Buffer.alloc(64);
  if (opts.sealed !== "none") {
    if (opts.key?.length !== 64) throw new Error("a sealed passthrough needs a 64-byte key");
    key = Buffer.from(opts.key);
    await installFastChaChaPoly();
  }
  const listener = Deno.listen({ hostname: "127.0.0.1", port: opts.port });
  (async () => {
    for await (const conn of listener) void forward(conn, opts.to, opts.sealed, key, say);
  })().catch(() => {});
  return { port: listener.addr.port, close: () => listener.close() };
}

function hexBytes(hex: string): Uint8Array {
  if (!/^([0-9a-f]{2})*$/i.test(hex)) throw new Error("PASSTHROUGH_KEY: not hex");
  return Buffer.from(hex, "hex");
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      port: { type: "string", default: "0" },
      to: { type: "string" },
      sealed: { type: "string", default: "none" },
    },
  });
  const m = /^(.+):(\d+)$/.exec(values.to ?? "");
  if (!m) throw new Error("--to host:port is required");
  const sealed = values.sealed as SealedSide;
  if (!["none", "upstream", "downstream"].includes(sealed)) {
    throw new Error(`--sealed ${sealed}: want none, upstream or downstream`);
  }
  const p = await startPassthrough({
    port: Number(values.port),
    to: { hostname: m[1], port: Number(m[2]) },
    sealed,
    key: sealed === "none" ? undefined : hexBytes(Deno.env.get("PASSTHROUGH_KEY") ?? ""),
  });
  console.log(`passthrough port=${p.port}`);
}

if (import.meta.main) await main();
