/**
 * Proxy side of the `kubesphere` channel (docs/protocol.md §5): the SSH server opens it
 * towards the SSH client (agent), with the raw ASCII `host:port` as channel-open extra data,
 * which ssh2 1.17.0 has no API for.
 *
 * How it works. The CHANNEL_OPEN packet is built like Protocol.js builds its own, and ssh2's
 * confirmation/failure handling is reused by registering a callback under our channel id, as
 * server.js `openChannel` does. The channel gets TCP-like half-close (./channel_half_close.ts),
 * waits for its transport (./channel_flow.ts), and takes its receive window from the
 * connection's budget (./receive_budget.ts). The ssh2 internals relied on are listed and
 * checked in ./ssh2_internals.ts.
 *
 * Transport requirement: the stream must deliver data asynchronously (as sockets and
 * WebSockets do). A Duplex that pushes into its peer synchronously from inside `write()`
 * re-enters ssh2 mid-update and stalls channel windows (ssh2 behaviour, not ours).
 * @module
 */

import { Buffer } from "node:buffer";
import type { Duplex } from "node:stream";
// @ts-types="@types/ssh2"
import type { Connection, ServerChannel } from "ssh2";
import { enableHalfClose } from "./channel_half_close.ts";
import { followTransport } from "./channel_flow.ts";
import { receiveBudgetOf } from "./receive_budget.ts";
import { KUBESPHERE_CHANNEL } from "./protocol.ts";
import { checkConnection, checkSsh2 } from "./ssh2_internals.ts";
import {
  type ChannelInfo,
  DEFAULT_PACKET_SIZE,
  DEFAULT_WINDOW,
  internals,
  MSG_CHANNEL_OPEN,
  type ProtocolInternals,
  sendPacket,
} from "./ssh2_shapes.ts";
import { acceptsLargePackets, LARGE_PACKET_SIZE } from "./ssh_cipher.ts";

/** What ssh2 calls with the peer's answer to an open; `type` names the channel it builds. */
type OpenCallback = ((err: Error | undefined, ch?: ServerChannel) => void) & { type?: string };

/**
 * The largest data packet to announce for channels of `proto`: {@link LARGE_PACKET_SIZE} when
 * our own ChaCha20-Poly1305 opens its inbound packets, else ssh2's 32 KiB (its other ciphers
 * refuse packets over 35,000 bytes).
 */
export function localPacketSize(proto: { _decipher?: unknown }): number {
  return acceptsLargePackets(proto._decipher) ? LARGE_PACKET_SIZE : DEFAULT_PACKET_SIZE;
}

/** Options for {@link openKubesphereChannel}. */
export interface OpenChannelOptions {
  /**
   * Initial receive window we advertise (default: the connection's receive budget decides, see
   * receive_budget.ts; without one ssh2's 2 MiB). Without a budget ssh2 tops the window up to
   * 2 MiB whenever it falls to 1 MiB, so this only shapes the start of the stream.
   */
  window?: number;
  /** Largest data packet we accept (default ssh2's 32 KiB). */
  packetSize?: number;
}

/** Error of a refused channel open, carrying the peer's reason code and description. */
export class ChannelOpenError extends Error {
  /** RFC 4254 reason code (see {@link OPEN_FAILURE}). */
  readonly reason: number;
  /** The peer's description (may be empty). */
  readonly description: string;
  constructor(what: string, reason: number, description: string) {
    super(`${what}: refused (reason ${reason}): ${description}`);
    this.name = "ChannelOpenError";
    this.reason = reason;
    this.description = description;
  }
}

/**
 * Proxy side: open a `kubesphere` channel on a server-side connection, with `target`
 * (`host:port`) as raw extra data. Resolves to the channel stream once the peer confirms;
 * rejects with a {@link ChannelOpenError} when the peer refuses, or an Error when the
 * connection closes first.
 */
export function openKubesphereChannel(
  conn: Connection,
  target: string,
  opts: OpenChannelOptions = {},
): Promise<ServerChannel> {
  return openChannelWithExtraData(conn, KUBESPHERE_CHANNEL, target, opts);
}

/**
 * Open a channel of any `type` from the server side with raw (latin1) `extra` data after the
 * standard CHANNEL_OPEN fields. {@link openKubesphereChannel} is the one production use.
 */
export function openChannelWithExtraData(
  conn: Connection,
  type: string,
  extra: string,
  opts: OpenChannelOptions = {},
): Promise<ServerChannel> {
  checkSsh2();
  checkConnection(conn);
  const what = `open ${type} channel to ${extra}`;
  const { _protocol: proto, _chanMgr: mgr } = internals(conn);
  if (!proto) return Promise.reject(new Error(`${what}: no session`));
  const budget = receiveBudgetOf(conn);
  const window = budget?.reserve(opts.window) ?? opts.window ?? DEFAULT_WINDOW;
  const packetSize = opts.packetSize ?? localPacketSize(proto);
  return new Promise<ServerChannel>((resolve, reject) => {
    // ssh2's CHANNEL_OPEN_CONFIRMATION/FAILURE handlers call the function stored under our
    // channel id; `type` names the channel it then builds (server.js openChannel does this).
    const cb: OpenCallback = (err, ch) => {
      if (err || !ch) {
        budget?.unreserve(window);
        const e = err as (Error & { reason?: unknown }) | undefined;
        if (typeof e?.reason === "number") {
          const desc = e.message.replace(/^\(SSH\) Channel open failure: /, "");
          reject(new ChannelOpenError(what, e.reason, desc));
        } else {
          reject(new Error(`${what}: ${e?.message ?? "no channel"}`));
        }
        return;
      }
      const c = ch as unknown as ChannelInfo;
      c.incoming.window = window;
      c.incoming.packetSize = packetSize;
      try {
        enableHalfClose(ch);
        followTransport(ch, conn);
      } catch (e) {
        budget?.unreserve(window);
        ch.close();
        reject(e);
        return;
      }
      budget?.add(ch as unknown as Duplex, window, proto);
      resolve(ch);
    };
    cb.type = type;
    const localChan = mgr.add(cb);
    if (localChan === -1) {
      budget?.unreserve(window);
      reject(new Error(`${what}: no free channels`));
      return;
    }
    sendChannelOpen(proto, type, localChan, window, packetSize, extra);
  });
}

/** SSH_MSG_CHANNEL_OPEN with raw extra data, built the way Protocol.js builds its opens. */
function sendChannelOpen(
  proto: ProtocolInternals,
  type: string,
  chan: number,
  window: number,
  packetSize: number,
  extra: string,
): void {
  const typeBuf = Buffer.from(type, "latin1");
  const extraBuf = Buffer.from(extra, "latin1");
  const w = proto._packetRW.write;
  let p = w.allocStart;
  const packet = w.alloc(1 + 4 + typeBuf.length + 12 + extraBuf.length);
  packet[p++] = MSG_CHANNEL_OPEN;
  packet.writeUInt32BE(typeBuf.length, p);
  packet.set(typeBuf, p += 4);
  packet.writeUInt32BE(chan, p += typeBuf.length);
  packet.writeUInt32BE(window, p += 4);
  packet.writeUInt32BE(packetSize, p += 4);
  packet.set(extraBuf, p += 4);
  sendPacket(proto, w.finalize(packet));
}
