/**
 * TypeScript shapes of the ssh2 1.17.0 private objects the ident and channel hooks
 * (./ssh_ident.ts, ./channel_accept.ts, ./channel_open.ts) touch, and the private ssh2 pieces
 * they call, typed. Which fields exist, and the start-up checks that they do, live in
 * ./ssh2_internals.ts (`SSH2_INTERNALS`); keep the two in step.
 * @module
 */

import type { Buffer } from "node:buffer";
import type { Duplex } from "node:stream";
// @ts-types="@types/ssh2"
import type { Client, ClientChannel, Connection } from "ssh2";
import { SSH2_MODULES } from "./ssh2_internals.ts";

/** The inbound packet reader (`_packetRW.read`); replaced when compression starts. */
export interface PacketReader {
  read(payload: Buffer): Buffer;
}
interface PacketWriter {
  allocStart: number;
  alloc(len: number): Buffer;
  finalize(packet: Buffer): Buffer;
}
/** What ssh2's CHANNEL_OPEN handler is given about an open. */
export interface ChannelOpenInfo {
  type: string;
  sender: number;
  window: number;
  packetSize: number;
  data: unknown;
}
/** A `Protocol` instance's private fields. */
export interface ProtocolInternals {
  _onHeader: (header: { identRaw: string }) => void;
  _remoteIdentRaw: Buffer | undefined;
  _identRaw: Buffer;
  _handlers: { CHANNEL_OPEN?: (p: unknown, info: ChannelOpenInfo) => void };
  _packetRW: { read: PacketReader; write: PacketWriter };
  /** The inbound packet decipher (replaced at each key exchange). */
  _decipher: unknown;
  channelOpenConfirm(remote: number, local: number, window: number, packetSize: number): void;
  channelWindowAdjust(chan: number, amount: number): void;
  channelOpenFail(remote: number, reason: number, desc: string): void;
}
interface ChanMgr {
  add(val?: unknown): number;
  update(id: number, val: unknown): void;
  remove(id: number): void;
  get(id: number): unknown;
}
/** A `Client`'s or server-side `Connection`'s private fields. */
export interface SshInternals {
  _protocol: ProtocolInternals | undefined;
  _sock: Duplex | undefined;
  _chanMgr: ChanMgr;
}
/** The channel description ssh2's `Channel` constructor takes. */
export interface ChannelInfo {
  type: string;
  incoming: { id: number; window: number; packetSize: number; state: string };
  outgoing: { id: number; window: number; packetSize: number; state: string };
}
interface ChannelLib {
  Channel: new (client: unknown, info: ChannelInfo, opts?: { server?: boolean }) => ClientChannel;
  MAX_WINDOW: number;
  PACKET_SIZE: number;
}
/** ssh2's lib/Channel.js. */
export const chanLib = SSH2_MODULES.channel as unknown as ChannelLib;
/** ssh2's packet sender (lib/protocol/utils.js). */
export const sendPacket = SSH2_MODULES.protocolUtils.sendPacket as (
  proto: ProtocolInternals,
  packet: Buffer,
) => boolean;

/** ssh2's channel window (2 MiB) and largest packet (32 KiB). */
export const DEFAULT_WINDOW: number = chanLib.MAX_WINDOW;
/** ssh2's channel maximum packet size (32 KiB). */
export const DEFAULT_PACKET_SIZE: number = chanLib.PACKET_SIZE;

/** SSH_MSG_CHANNEL_OPEN (RFC 4254 §5.1). */
export const MSG_CHANNEL_OPEN = 90;

/** `ssh`'s private fields. */
export function internals(ssh: Client | Connection): SshInternals {
  return ssh as unknown as SshInternals;
}
