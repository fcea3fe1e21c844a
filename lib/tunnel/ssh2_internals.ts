/**
 * The ssh2 private parts Tower's hooks touch, in one place, and the checks that refuse to run on
 * anything else. ssh2 (pinned {@link SSH2_VERSION} in deno.json) has no API for what the tunnel
 * needs (non-standard idents, `kubesphere` channels with raw extra data, global requests with
 * payloads, write backpressure, rekeying, a faster ChaCha20-Poly1305), so these modules reach
 * into its objects:
 *
 * - ./ssh_ident.ts: idents;
 * - ./channel_open.ts, ./channel_accept.ts: `kubesphere` channels (shapes: ./ssh2_shapes.ts);
 * - ./channel_half_close.ts: half-close;
 * - ./ssh_requests.ts: global requests and their replies;
 * - ./channel_flow.ts: channel writes held while the transport is congested or rekeying;
 * - ./receive_budget.ts: window grants decided per connection, what channel readers take counted;
 * - ./rekey.ts: starting key exchanges, counting packets;
 * - ./ssh_cipher.ts: ssh2's ChaCha20-Poly1305 packet methods replaced;
 * - ./poly1305.ts, lib/proxy/tunnel_server.ts: ssh2's Poly1305 build, a connection's transport.
 *
 * {@link SSH2_INTERNALS} lists every field; {@link checkSsh2} checks the version and, on objects
 * made for the purpose, every field that exists before a connection does (the link's start,
 * `installFastChaChaPoly`, calls it: a process refuses to start on anything else);
 * {@link checkConnection} checks a live connection's. A field that moved or vanished is named in
 * the error instead of surfacing later as a hang or a wrong byte on the wire.
 * @module
 */

import { Buffer } from "node:buffer";
import ssh2Package from "ssh2/package.json" with { type: "json" };
// @ts-types="@types/ssh2"
import type ssh2 from "ssh2";
// @ts-types="@types/ssh2"
import type { Client, Connection } from "ssh2";
// ssh2's `Client` from its own module, not from the package's index: the index also loads its
// server, SSH-agent, HTTP-agent and key-generation modules, and with them Deno's `node:http`,
// `node:https` and `node:child_process` polyfills (see SSH2_CLIENT).
import clientModule from "ssh2/lib/client.js";
import channelModule from "ssh2/lib/Channel.js";
import utilsModule from "ssh2/lib/utils.js";
import cryptoModule from "ssh2/lib/protocol/crypto.js";
import handlersModule from "ssh2/lib/protocol/handlers.js";
import protocolModule from "ssh2/lib/protocol/Protocol.js";
import protocolUtilsModule from "ssh2/lib/protocol/utils.js";
import poly1305Module from "ssh2/lib/protocol/crypto/poly1305.js";
import { SSH_ALGORITHMS } from "./protocol.ts";

/** The one ssh2 version the hooks are written and tested for. */
export const SSH2_VERSION = "1.17.0";

/** SSH message numbers whose entries in ssh2's handler table ./ssh_requests.ts relies on. */
const MSG_GLOBAL_REQUEST = 80;
const MSG_REQUEST_SUCCESS = 81;
const MSG_REQUEST_FAILURE = 82;

/** The private parts of ssh2 touched, by object (what uses each: see the module doc). */
export const SSH2_INTERNALS = {
  "Client/Connection": ["_protocol", "_sock", "_chanMgr"],
  Protocol: [
    "_onHeader", // called by parseHeader once the peer's ident is parsed (ssh_ident)
    "_remoteIdentRaw", // peer ident in the exchange hash (ssh_ident)
    "_identRaw", // own ident in the exchange hash (ssh_ident)
    "_handlers", // per-connection message handlers (channel_accept, ssh_requests)
    "_packetRW.read.read", // decoded inbound packets (channel_accept)
    "_packetRW.write.allocStart", // packet building (channel_open, ssh_requests)
    "_packetRW.write.alloc",
    "_packetRW.write.finalize",
    "_cipher.outSeqno", // packets sent under the current keys (rekey)
    "_decipher", // inbound decipher, inSeqno (rekey) and whose it is (channel_open, ssh_cipher)
    "_kexinit", // set during a key exchange (channel_flow, rekey)
    "_destruct", // undefined once torn down (ssh_requests)
    "rekey()", // starts a key exchange (rekey)
    "channelOpenConfirm()", // (channel_accept)
    "channelOpenFail()", // (channel_accept)
    "channelWindowAdjust()", // wrapped: grants follow the receive budget (receive_budget)
  ],
  ChannelManager: ["add()", "update()", "remove()", "get()"],
  Channel: [
    "server", // which side made it (channel_half_close)
    "incoming.state", // 'closed' once the peer's CLOSE arrived (channel_flow)
    "incoming.window", // what the peer may still send (receive_budget)
    "outgoing.id", // the peer's number for it (receive_budget)
    "outgoing.state", // 'eof'/'closed' once we sent ours (receive_budget)
    "eof()", // (channel_half_close)
    "close()", // (channel_half_close)
    "_write()", // wrapped to wait for the transport (channel_flow)
    "_writableState.highWaterMark", // lowered (channel_flow)
    "'finish' listener onFinish", // server side: swapped for EOF only (channel_half_close)
    "emit()", // wrapped: what a reader takes is counted (receive_budget)
    "push()", // wrapped: called after the window is charged; past it, the channel ends (receive_budget)
  ],
  "cipher (each offered)": ["outSeqno"],
  "decipher (each offered)": ["inSeqno"],
  "chacha20-poly1305 cipher": [
    "class ChaChaPolyCipherNative",
    "_onWrite",
    "_encKeyMain",
    "_encKeyPktLen",
    "_dead",
    "allocPacket()",
    "encrypt()",
  ],
  "chacha20-poly1305 decipher": [
    "class ChaChaPolyDecipherNative",
    "_onPayload",
    "_decKeyMain",
    "_decKeyPktLen",
    "_len",
    "_lenBuf",
    "_lenPos",
    "_packet",
    "_pktLen",
    "_mac",
    "_calcMac",
    "_macPos",
    "decrypt()",
  ],
  "lib/Channel.js": ["Channel", "MAX_WINDOW", "PACKET_SIZE"],
  "lib/utils.js": ["ChannelManager"],
  "lib/protocol/utils.js": ["sendPacket"],
  "lib/protocol/handlers.js": [
    `[${MSG_GLOBAL_REQUEST}]`,
    `[${MSG_REQUEST_SUCCESS}]`,
    `[${MSG_REQUEST_FAILURE}] (wrapped by ssh_requests)`,
  ],
  "lib/protocol/crypto.js": ["CIPHER_INFO", "MAC_INFO", "createCipher", "createDecipher", "init"],
  "lib/protocol/crypto/poly1305.js": ["(default export: the module factory)"],
} as const;

type Ctor = new (...args: never[]) => unknown;

/** The ssh2 modules {@link checkSsh2} looks at; tests pass altered copies. */
export interface Ssh2Modules {
  /** `version` of ssh2's package.json. */
  version: string;
  Client: Ctor;
  Protocol: Ctor;
  channel: { Channel: Ctor; MAX_WINDOW: number; PACKET_SIZE: number };
  utils: { ChannelManager: Ctor };
  protocolUtils: { sendPacket: unknown };
  handlers: Record<number, unknown>;
  crypto: {
    CIPHER_INFO: Record<string, { keyLen: number; ivLen: number; authLen: number } | undefined>;
    MAC_INFO: Record<string, { len: number } | undefined>;
    createCipher: (config: unknown) => Record<string, unknown>;
    createDecipher: (config: unknown) => Record<string, unknown>;
    init: unknown;
  };
  poly1305: unknown;
}

/** The modules in use. */
export const SSH2_MODULES: Ssh2Modules = {
  version: (ssh2Package as { version: string }).version,
  Client: clientModule as unknown as Ctor,
  Protocol: protocolModule as unknown as Ctor,
  channel: channelModule as unknown as Ssh2Modules["channel"],
  utils: utilsModule as unknown as Ssh2Modules["utils"],
  protocolUtils: protocolUtilsModule as unknown as Ssh2Modules["protocolUtils"],
  handlers: handlersModule as unknown as Ssh2Modules["handlers"],
  crypto: cryptoModule as unknown as Ssh2Modules["crypto"],
  poly1305: poly1305Module,
};

/**
 * ssh2's `Client` class, loaded without the package's index (the agent's way in: it needs no
 * server, SSH agent, HTTP agent or key generation). Together with prom-client's classes taken
 * the same way (lib/metrics.ts), a connected idle agent's RSS fell by ~1 MiB: both indexes load
 * Deno's `node:http` and `node:https` polyfills, which neither binary otherwise needs in the agent.
 */
export const SSH2_CLIENT: typeof ssh2.Client = clientModule as unknown as typeof ssh2.Client;

/** ssh2 is not the version, or not the shape, the hooks are written for. */
export class Ssh2InternalsError extends Error {
  constructor(readonly problems: string[], version: string) {
    const what = version === SSH2_VERSION
      ? `ssh2 ${version} lacks private parts Tower's hooks use`
      : `Tower runs on ssh2 ${SSH2_VERSION} only, not ${version}: its hooks use ssh2's private parts`;
    super(
      `${what} (lib/tunnel/ssh2_internals.ts): ${problems.join("; ")}. Use ssh2@${SSH2_VERSION} ` +
        `(deno.json), or review every hook against the new version and then raise SSH2_VERSION.`,
    );
    this.name = "Ssh2InternalsError";
  }
}

let checked = false;

/**
 * Throw an {@link Ssh2InternalsError} unless `mods` (default: the ssh2 in use) is version
 * {@link SSH2_VERSION} with every private field the hooks touch. The check of the ssh2 in use
 * runs once per process; later calls return at once.
 */
export function checkSsh2(mods: Ssh2Modules = SSH2_MODULES): void {
  if (mods === SSH2_MODULES && checked) return;
  const problems: string[] = [];
  if (mods.version !== SSH2_VERSION) {
    problems.push(`version ${mods.version} is not the pinned ${SSH2_VERSION}`);
  }
  const p = (what: string) => (problem: string) => problems.push(`${what}: ${problem}`);
  checkModules(mods, p("module"));
  probe(p("Client"), () => checkClientShape(new mods.Client(), p("Client")));
  probe(p("Protocol"), () => {
    const proto = new mods.Protocol({ onWrite() {}, onError() {} } as never);
    checkProtocol(proto, p("Protocol"));
  });
  probe(p("ChannelManager"), () => {
    const mgr = new mods.utils.ChannelManager({} as never) as Record<string, unknown>;
    for (const m of SSH2_INTERNALS.ChannelManager) check(mgr, m, p("ChannelManager"));
  });
  for (const server of [true, false]) {
    const what = server ? "server Channel" : "client Channel";
    probe(p(what), () => checkChannel(newChannel(mods, server), server, p(what)));
  }
  probe(p("cipher"), () => checkCiphers(mods, p("cipher")));
  if (problems.length > 0) throw new Ssh2InternalsError(problems, mods.version);
  if (mods === SSH2_MODULES) checked = true;
}

/**
 * Throw an {@link Ssh2InternalsError} unless the live connection `ssh` (a `Client` or a
 * server-side `Connection`; its Protocol once `connect`ed) has the fields the hooks touch.
 */
export function checkConnection(ssh: Client | Connection): void {
  if (connectionsChecked.has(ssh)) return;
  const problems: string[] = [];
  const s = ssh as unknown as Record<string, unknown>;
  checkClientShape(s, (m) => problems.push(`connection: ${m}`));
  if (s._protocol) checkProtocol(s._protocol, (m) => problems.push(`connection._protocol: ${m}`));
  const mgr = s._chanMgr as Record<string, unknown> | undefined;
  if (mgr) {
    for (const m of SSH2_INTERNALS.ChannelManager) {
      check(mgr, m, (x) => problems.push(`connection._chanMgr: ${x}`));
    }
  }
  if (problems.length > 0) throw new Ssh2InternalsError(problems, SSH2_MODULES.version);
  if (s._protocol) connectionsChecked.add(ssh);
}

/** Connections whose Protocol has been checked (its fields do not go away later). */
const connectionsChecked = new WeakSet<object>();

// ---------------------------------------------------------------------------------------------

/** Run `fn`; a throw (a constructor that changed its arguments, say) is a problem too. */
function probe(problem: (m: string) => void, fn: () => void): void {
  try {
    fn();
  } catch (err) {
    problem(`cannot make one to look at (${(err as Error).message})`);
  }
}

/**
 * Check `obj` for one entry of {@link SSH2_INTERNALS}: `a.b.c` (a path that must exist: the
 * last key present, possibly undefined), `m()` (a method), other words (a key present).
 */
function check(obj: unknown, entry: string, problem: (m: string) => void): void {
  const method = entry.endsWith("()");
  const path = (method ? entry.slice(0, -2) : entry).split(".");
  let cur: unknown = obj;
  for (let i = 0; i < path.length; i++) {
    if (typeof cur !== "object" && typeof cur !== "function" || cur === null) {
      return problem(`${path.slice(0, i).join(".")} is not an object (for ${entry})`);
    }
    if (!(path[i] in (cur as object))) return problem(`no ${path.slice(0, i + 1).join(".")}`);
    cur = (cur as Record<string, unknown>)[path[i]];
  }
  if (method && typeof cur !== "function") problem(`${entry.slice(0, -2)} is not a function`);
}

function checkModules(mods: Ssh2Modules, problem: (m: string) => void): void {
  const fn = (v: unknown, what: string) => {
    if (typeof v !== "function") problem(`${what} is not a function`);
  };
  fn(mods.channel?.Channel, "lib/Channel.js Channel");
  for (const k of ["MAX_WINDOW", "PACKET_SIZE"] as const) {
    if (typeof mods.channel?.[k] !== "number") problem(`lib/Channel.js ${k} is not a number`);
  }
  fn(mods.utils?.ChannelManager, "lib/utils.js ChannelManager");
  fn(mods.protocolUtils?.sendPacket, "lib/protocol/utils.js sendPacket");
  for (const t of [MSG_GLOBAL_REQUEST, MSG_REQUEST_SUCCESS, MSG_REQUEST_FAILURE]) {
    fn(mods.handlers?.[t], `lib/protocol/handlers.js [${t}]`);
  }
  for (const k of ["createCipher", "createDecipher"] as const) {
    fn(mods.crypto?.[k], `lib/protocol/crypto.js ${k}`);
  }
  if (!(mods.crypto?.init instanceof Promise)) problem("lib/protocol/crypto.js init");
  fn(mods.poly1305, "lib/protocol/crypto/poly1305.js");
}

function checkClientShape(obj: unknown, problem: (m: string) => void): void {
  for (const k of SSH2_INTERNALS["Client/Connection"]) check(obj, k, problem);
}

function checkProtocol(proto: unknown, problem: (m: string) => void): void {
  for (const k of SSH2_INTERNALS.Protocol) check(proto, k, problem);
  const allocStart = (proto as { _packetRW?: { write?: { allocStart?: unknown } } })
    ._packetRW?.write?.allocStart;
  if (allocStart !== undefined && typeof allocStart !== "number") {
    problem("_packetRW.write.allocStart is not a number");
  }
}

/** A channel made the way ./channel_accept.ts makes one (not attached to any connection). */
function newChannel(mods: Ssh2Modules, server: boolean): Record<string, unknown> {
  const side = () => ({ id: 0, window: 1024, packetSize: 1024, state: "open" });
  const info = { type: "kubesphere", incoming: side(), outgoing: side() };
  return new mods.channel.Channel({} as never, info as never, { server } as never) as Record<
    string,
    unknown
  >;
}

function checkChannel(
  ch: Record<string, unknown>,
  server: boolean,
  problem: (m: string) => void,
): void {
  for (const k of SSH2_INTERNALS.Channel) {
    if (k.startsWith("'finish'")) continue;
    check(ch, k, problem);
  }
  if (ch.server !== server) problem(`server is ${String(ch.server)}, want ${server}`);
  const listeners = (ch as { listeners?: (e: string) => { name: string }[] }).listeners;
  if (typeof listeners !== "function") return problem("not an EventEmitter");
  const onFinish = listeners.call(ch, "finish").filter((l) => l.name === "onFinish");
  if (onFinish.length !== 1) problem(`${onFinish.length} 'finish' listeners named onFinish`);
}

/** Each cipher Tower offers, made with zero keys: sequence numbers, and ChaCha20's fields. */
function checkCiphers(mods: Ssh2Modules, problem: (m: string) => void): void {
  const c = mods.crypto;
  const mac = c.MAC_INFO?.["hmac-sha2-256"];
  for (const name of SSH_ALGORITHMS.cipher) {
    const info = c.CIPHER_INFO?.[name];
    if (!info) {
      problem(`no CIPHER_INFO for ${name}`);
      continue;
    }
    const macInfo = info.authLen > 0 ? null : mac;
    const keys = {
      seqno: 0,
      macInfo,
      macKey: macInfo ? Buffer.alloc(macInfo.len) : undefined,
    };
    let cipher: Record<string, unknown>;
    let decipher: Record<string, unknown>;
    try {
      cipher = c.createCipher({
        outbound: {
          ...keys,
          onWrite() {},
          cipherInfo: info,
          cipherKey: Buffer.alloc(info.keyLen),
          cipherIV: Buffer.alloc(info.ivLen),
        },
      });
      decipher = c.createDecipher({
        inbound: {
          ...keys,
          onPayload() {},
          decipherInfo: info,
          decipherKey: Buffer.alloc(info.keyLen),
          decipherIV: Buffer.alloc(info.ivLen),
        },
      });
    } catch (err) {
      problem(`${name}: cannot make one to look at (${(err as Error).message})`);
      continue;
    }
    if (name === "chacha20-poly1305@openssh.com") {
      checkChaChaPolyShape(cipher, decipher, (m) => problem(`${name} ${m}`));
    } else {
      for (const k of SSH2_INTERNALS["cipher (each offered)"]) check(cipher, k, problem);
      for (const k of SSH2_INTERNALS["decipher (each offered)"]) check(decipher, k, problem);
    }
    (cipher.free as (() => void) | undefined)?.();
    (decipher.free as (() => void) | undefined)?.();
  }
}

/**
 * Check a `chacha20-poly1305@openssh.com` cipher and decipher made by ssh2 against
 * {@link SSH2_INTERNALS}: their classes, sequence numbers, and every field and method of theirs
 * that ./ssh_cipher.ts's replacement packet methods use. Each problem is reported with
 * `cipher: ` or `decipher: ` in front.
 */
export function checkChaChaPolyShape(
  cipher: object,
  decipher: object,
  problem: (m: string) => void,
): void {
  const c = cipher as Record<string, unknown>;
  const d = decipher as Record<string, unknown>;
  for (const k of SSH2_INTERNALS["cipher (each offered)"]) {
    check(c, k, (m) => problem(`cipher: ${m}`));
  }
  for (const k of SSH2_INTERNALS["decipher (each offered)"]) {
    check(d, k, (m) => problem(`decipher: ${m}`));
  }
  checkFields(c, SSH2_INTERNALS["chacha20-poly1305 cipher"], "cipher", problem);
  checkFields(d, SSH2_INTERNALS["chacha20-poly1305 decipher"], "decipher", problem);
}

function checkFields(
  obj: Record<string, unknown>,
  entries: readonly string[],
  what: string,
  problem: (m: string) => void,
): void {
  for (const k of entries) {
    if (k.startsWith("class ")) {
      const name = (Object.getPrototypeOf(obj) as { constructor?: { name?: string } })
        ?.constructor?.name;
      if (name !== k.slice(6)) problem(`${what} is a ${name}, not a ${k.slice(6)}`);
    } else {
      check(obj, k, (m) => problem(`${what}: ${m}`));
    }
  }
}
