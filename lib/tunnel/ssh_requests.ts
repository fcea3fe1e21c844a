/**
 * SSH global requests the way the Go tower uses them, on top of ssh2 1.17.0.
 *
 * The tunnel's handshake is a global request `config` whose reply carries a
 * payload even on failure (`Unauthorized agent`): Go's x/crypto/ssh sends
 * `SSH_MSG_REQUEST_FAILURE` followed by the message bytes and its client reads
 * them back. ssh2 neither sends nor surfaces that payload, and its Client has no
 * generic "send a global request" call. This module adds both by touching these
 * ssh2 internals (listed and checked in ./ssh2_internals.ts):
 *
 * - `lib/protocol/handlers.js` — the shared message table; its REQUEST_FAILURE
 *   entry is wrapped once so the payload after the type byte reaches the handler.
 * - `protocol._handlers.{GLOBAL_REQUEST,REQUEST_SUCCESS,REQUEST_FAILURE}` — the
 *   per-connection callbacks, replaced for connections we own.
 * - `protocol._packetRW.write.{allocStart,alloc,finalize}` and `sendPacket` from
 *   `lib/protocol/utils.js` — to write packets ssh2 has no method for.
 * @module
 */

// @ts-types="@types/ssh2"
import type { Client, Connection } from "ssh2";
import { Buffer } from "node:buffer";
import { checkConnection, checkSsh2, SSH2_MODULES } from "./ssh2_internals.ts";

const MSG_GLOBAL_REQUEST = 80;
const MSG_REQUEST_SUCCESS = 81;
const MSG_REQUEST_FAILURE = 82;

/** The parts of ssh2's Protocol object this module relies on. */
export interface SshProtocolInternals {
  _handlers: Record<string, ((...args: unknown[]) => void) | undefined>;
  _packetRW: {
    write: {
      allocStart: number;
      alloc(len: number, force?: boolean): Buffer;
      finalize(packet: Buffer, force?: boolean): Buffer;
    };
  };
  _destruct?: unknown;
}

type HandlerTable = Record<number, (self: SshProtocolInternals, payload: Buffer) => void>;
const sendPacket = SSH2_MODULES.protocolUtils.sendPacket as (
  proto: SshProtocolInternals,
  packet: Buffer,
  bypass?: boolean,
) => boolean;

let failurePatched = false;

/** Make ssh2 pass the REQUEST_FAILURE payload to connection handlers (idempotent). */
function patchRequestFailurePayload(): void {
  if (failurePatched) return;
  checkSsh2(); // the table has a REQUEST_FAILURE entry to replace, among the rest
  const table = SSH2_MODULES.handlers as HandlerTable;
  table[MSG_REQUEST_FAILURE] = (self, payload) => {
    const handler = self._handlers.REQUEST_FAILURE;
    if (handler) handler(self, payload.length > 1 ? payload.subarray(1) : null);
  };
  failurePatched = true;
}

/** The ssh2 Protocol object behind a Client or a server-side Connection. */
export function protocolOf(conn: Client | Connection): SshProtocolInternals {
  checkSsh2();
  checkConnection(conn);
  const proto = (conn as unknown as { _protocol?: SshProtocolInternals })._protocol;
  if (!proto) throw new Error("ssh requests: connection not started (no protocol yet)");
  return proto;
}

/** Write one packet `type + body` on an established connection. */
export function sendRawPacket(proto: SshProtocolInternals, type: number, body?: Uint8Array): void {
  if (proto._destruct === undefined) return; // connection already torn down
  const start = proto._packetRW.write.allocStart;
  const packet = proto._packetRW.write.alloc(1 + (body?.length ?? 0));
  packet[start] = type;
  if (body) packet.set(body, start + 1);
  sendPacket(proto, proto._packetRW.write.finalize(packet));
}

/** Reply to a global request; Go-style, the payload is sent on failure too. */
export interface GlobalReply {
  ok: boolean;
  payload?: Uint8Array;
}

/** Handler for a global request from the peer. Return a reply (or a promise of one). */
export type GlobalRequestHandler = (
  name: string,
  payload: Uint8Array,
) => GlobalReply | Promise<GlobalReply>;

/**
 * Server side: take over the global requests of a connection. Replies go out in
 * request order even when handlers finish out of order, as SSH requires.
 * Requests that do not want a reply are handled and their result dropped.
 */
export function serveGlobalRequests(conn: Connection, handler: GlobalRequestHandler): void {
  const proto = protocolOf(conn);
  const pending: { reply?: GlobalReply }[] = [];
  const flush = () => {
    while (pending.length > 0 && pending[0].reply) {
      const { reply } = pending.shift()!;
      sendRawPacket(
        proto,
        reply!.ok ? MSG_REQUEST_SUCCESS : MSG_REQUEST_FAILURE,
        reply!.payload,
      );
    }
  };
  proto._handlers.GLOBAL_REQUEST = (_p, name, wantReply, data) => {
    const slot: { reply?: GlobalReply } = {};
    if (wantReply) pending.push(slot);
    const payload = Buffer.isBuffer(data) ? data : new Uint8Array(0);
    let result: GlobalReply | Promise<GlobalReply>;
    try {
      result = handler(String(name), payload);
    } catch (err) {
      result = { ok: false, payload: utf8(`internal error: ${(err as Error).message}`) };
    }
    Promise.resolve(result).then(
      (reply) => {
        slot.reply = reply;
        flush();
      },
      (err) => {
        slot.reply = { ok: false, payload: utf8(`internal error: ${(err as Error).message}`) };
        flush();
      },
    );
  };
}

/** Client side: send global requests and read their replies, payload included. */
export class GlobalRequester {
  #proto: SshProtocolInternals;
  #waiting: ((reply: GlobalReply) => void)[] = [];

  /** Take over the reply handlers of `client` (after `connect`, before `ready`). */
  constructor(client: Client) {
    patchRequestFailurePayload();
    this.#proto = protocolOf(client);
    const answer = (ok: boolean) => (_p: unknown, data: unknown) => {
      const resolve = this.#waiting.shift();
      resolve?.({ ok, payload: data instanceof Uint8Array ? data : undefined });
    };
    this.#proto._handlers.REQUEST_SUCCESS = answer(true);
    this.#proto._handlers.REQUEST_FAILURE = answer(false);
    client.once("close", () => this.abort());
  }

  /** Send `name` with `payload`; resolves with the reply, or at once when no reply is wanted. */
  request(name: string, payload: Uint8Array, wantReply = true): Promise<GlobalReply> {
    const nameBytes = Buffer.from(name, "latin1");
    const body = Buffer.allocUnsafe(4 + nameBytes.length + 1 + payload.length);
    body.writeUInt32BE(nameBytes.length, 0);
    body.set(nameBytes, 4);
    body[4 + nameBytes.length] = wantReply ? 1 : 0;
    body.set(payload, 5 + nameBytes.length);
    const reply = wantReply
      ? new Promise<GlobalReply>((resolve) => this.#waiting.push(resolve))
      : Promise.resolve({ ok: true });
    sendRawPacket(this.#proto, MSG_GLOBAL_REQUEST, body);
    return reply;
  }

  /** Fail every outstanding request (the connection is gone). */
  abort(): void {
    for (const resolve of this.#waiting.splice(0)) {
      resolve({ ok: false, payload: utf8("connection closed") });
    }
  }
}

function utf8(s: string): Uint8Array {
  return new TextEncoder().encode(s);
}
