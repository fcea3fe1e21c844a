/**
 * Hooks that let ssh2 1.17.0 speak the original Go tower's dialect of SSH (docs/protocol.md
 * §2 and §5):
 *
 * - identification lines that are not `SSH-2.0-…` (`SSH-kubesphere-v1-server`,
 *   `SSH-kubesphere-v1-client`), received and (for tests/interop emulation) sent, with the
 *   key-exchange hash computed over the line exactly as it went over the wire;
 * - the `kubesphere` channel type, opened by the SSH server (proxy) towards the SSH client
 *   (agent), whose channel-open extra data is the raw ASCII `host:port`.
 *
 * Nothing here edits ssh2's files or module-level state: every hook patches one object
 * (a transport stream, a `Protocol` instance, a `Client`/`Server` instance). The ssh2 1.17.0
 * internals relied on are listed in ./ssh2_internals.ts, whose checks the hooks run first: a
 * missing one fails loudly, naming it.
 *
 * How the ident hook works. ssh2's `parseHeader` (lib/protocol/Protocol.js) rejects any line
 * not matching `^SSH-(2\.0|1\.99)-…`, and remembers the line in `protocol._remoteIdentRaw`;
 * kex.js copies `_identRaw`/`_remoteIdentRaw` into the exchange hash when the peer's KEXINIT
 * arrives. So: (1) the transport's `emit("data")` is wrapped until the peer's ident line has
 * passed, and a non-standard line `SSH-x` is handed to ssh2 as `SSH-2.0-x`; (2) at the
 * moment ssh2 has parsed that header (client: the protocol's `_onHeader` callback; server:
 * the `connection` event, emitted from inside `_onHeader`), `_remoteIdentRaw` is put back to
 * the raw line, before the peer's KEXINIT is read. Sending a custom line works the same way
 * in reverse: the first write of the ident is replaced on the wire and `_identRaw` is set.
 * The hook also hands ssh2 the whole header in one chunk, which avoids an ssh2 bug with
 * headers split over three or more reads (see `hookIncomingIdent`).
 *
 * How the channel hooks work. Agent side: the client protocol's per-connection
 * `_handlers.CHANNEL_OPEN` is wrapped; the raw extra data (which ssh2 drops for unknown types)
 * is taken from the decoded packet as it leaves `_packetRW.read`. Proxy side: the CHANNEL_OPEN
 * packet is built like Protocol.js builds its own, and ssh2's confirmation/failure handling
 * is reused by registering a callback under our channel id, as server.js `openChannel` does.
 * Both kinds of channel get TCP-like half-close (see `enableHalfClose`).
 *
 * Transport requirement: the stream must deliver data asynchronously (as sockets and
 * WebSockets do). A Duplex that pushes into its peer synchronously from inside `write()`
 * re-enters ssh2 mid-update and stalls channel windows (ssh2 behaviour, not ours).
 * @module
 */

import { Buffer } from "node:buffer";
import { Duplex } from "node:stream";
// @ts-types="@types/ssh2"
import type { Client, ClientChannel, Connection, Server, ServerChannel } from "ssh2";
import { logger } from "../log.ts";
import { followTransport } from "./channel_flow.ts";
import { receiveBudgetOf } from "./receive_budget.ts";
import { KUBESPHERE_CHANNEL } from "./protocol.ts";
import { checkConnection, checkSsh2, SSH2_MODULES } from "./ssh2_internals.ts";
import { acceptsLargePackets, LARGE_PACKET_SIZE } from "./ssh_cipher.ts";

export { CHANNEL_WRITE_BUFFER } from "./channel_flow.ts";

const log = logger("ssh-compat");

/** RFC 4254 §5.1 channel open failure reason codes. */
export const OPEN_FAILURE = {
  ADMINISTRATIVELY_PROHIBITED: 1,
  CONNECT_FAILED: 2,
  UNKNOWN_CHANNEL_TYPE: 3,
  RESOURCE_SHORTAGE: 4,
} as const;

// ---------------------------------------------------------------------------------------------
// Private ssh2 shapes (see SSH2_INTERNALS in ./ssh2_internals.ts).

interface PacketReader {
  read(payload: Buffer): Buffer;
}
interface PacketWriter {
  allocStart: number;
  alloc(len: number): Buffer;
  finalize(packet: Buffer): Buffer;
}
interface ChannelOpenInfo {
  type: string;
  sender: number;
  window: number;
  packetSize: number;
  data: unknown;
}
interface ProtocolInternals {
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
type OpenCallback = ((err: Error | undefined, ch?: ServerChannel) => void) & { type?: string };
interface ChanMgr {
  add(val?: unknown): number;
  update(id: number, val: unknown): void;
  remove(id: number): void;
  get(id: number): unknown;
}
interface SshInternals {
  _protocol: ProtocolInternals | undefined;
  _sock: Duplex | undefined;
  _chanMgr: ChanMgr;
}
interface ChannelInfo {
  type: string;
  incoming: { id: number; window: number; packetSize: number; state: string };
  outgoing: { id: number; window: number; packetSize: number; state: string };
}
interface ChannelLib {
  Channel: new (client: unknown, info: ChannelInfo, opts?: { server?: boolean }) => ClientChannel;
  MAX_WINDOW: number;
  PACKET_SIZE: number;
}
const chanLib = SSH2_MODULES.channel as unknown as ChannelLib;
const sendPacket = SSH2_MODULES.protocolUtils.sendPacket as (
  proto: ProtocolInternals,
  packet: Buffer,
) => boolean;

/** ssh2's channel window (2 MiB) and largest packet (32 KiB). */
const DEFAULT_WINDOW: number = chanLib.MAX_WINDOW;
/** ssh2's channel maximum packet size (32 KiB). */
const DEFAULT_PACKET_SIZE: number = chanLib.PACKET_SIZE;

const MSG_CHANNEL_OPEN = 90;

function internals(ssh: Client | Connection): SshInternals {
  return ssh as unknown as SshInternals;
}

// ---------------------------------------------------------------------------------------------
// Identification lines.

/** ssh2's own acceptance test for an ident line (Protocol.js RE_IDENT). */
const RE_STANDARD_IDENT = /^SSH-(2\.0|1\.99)-([^ ]+)(?: (.*))?$/;
/** Longest line ssh2 accepts in the header (Protocol.js MAX_LINE_LEN). */
const MAX_HEADER_LINE = 8192;
/** Most header bytes (greeting lines and ident) held back before giving up on finding the ident. */
const MAX_HELD_HEADER = 64 * 1024;
const SSH_DASH = Buffer.from("SSH-", "latin1");

/** Per-transport state shared between the stream hooks and the protocol fix-up. */
interface IdentState {
  /** The peer's ident as received, when it had to be rewritten for ssh2's parser. */
  remoteRaw?: Buffer;
  /** Our ident as sent, when it is not ssh2's own. */
  localRaw?: Buffer;
  /** Tests only: leave ssh2's hash over the rewritten line (proves the fix matters). */
  hashRewritten: boolean;
}
const identStates = new WeakMap<Duplex, IdentState>();
const patchedServers = new WeakSet<Server>();
const patchedClients = new WeakSet<Client>();
const patchedProtocols = new WeakSet<ProtocolInternals>();

/** Options for {@link acceptAnyIdent}. */
export interface IdentOptions {
  /**
   * Send this identification line (no CR LF) instead of ssh2's `SSH-2.0-ssh2js…`; the
   * exchange hash uses it. Meant for tests and interop emulation, e.g.
   * `SSH-kubesphere-v1-client`. A server `greeting` is still written before it.
   */
  sendIdent?: string;
  /**
   * Tests only: hash the rewritten `SSH-2.0-…` form of a non-standard peer ident instead of
   * the raw line. Key exchange with such a peer then fails; never set it in real code.
   */
  hashRewrittenIdent?: boolean;
}

/**
 * Prepare a transport stream for `ssh` so that a peer identification line like
 * `SSH-kubesphere-v1-client` is accepted, with the exchange hash computed over the raw line as
 * received. Call it before handing the stream to ssh2 (`client.connect({ sock })` or
 * `server.injectSocket(sock)`); it may also be called after `client.connect()` in the same
 * tick. Returns the same stream (patched in place), for chaining.
 *
 * On a `Server`, this adds (once) a listener on `connection` that runs first; note that this
 * listener means ssh2 no longer auto-rejects connections when no other listener exists.
 */
export function acceptAnyIdent(
  sock: Duplex,
  ssh: Client | Server,
  opts: IdentOptions = {},
): Duplex {
  checkSsh2();
  if (identStates.has(sock)) throw new Error("ssh compat: acceptAnyIdent called twice on a stream");
  const state: IdentState = { hashRewritten: opts.hashRewrittenIdent === true };
  identStates.set(sock, state);
  hookIncomingIdent(sock, state, isServer(ssh));
  if (opts.sendIdent !== undefined) hookOutgoingIdent(sock, state, opts.sendIdent);
  if (isServer(ssh)) {
    patchServer(ssh);
  } else {
    patchClient(ssh);
  }
  return sock;
}

/**
 * Make our side send `ident` (e.g. `SSH-kubesphere-v1-client`, no CR LF) instead of ssh2's
 * own line, also accepting any peer ident. Shorthand for
 * `acceptAnyIdent(sock, ssh, { sendIdent: ident })`. For tests and interop emulation.
 */
export function sendCustomIdent(sock: Duplex, ssh: Client | Server, ident: string): Duplex {
  return acceptAnyIdent(sock, ssh, { sendIdent: ident });
}

function isServer(ssh: Client | Server): ssh is Server {
  return typeof (ssh as Server).injectSocket === "function";
}

/**
 * Rewrite the peer's ident line in the data ssh2 reads, until that line has gone by.
 *
 * The whole header (client side: optional greeting lines, then the ident) is held back and
 * handed to ssh2 in one chunk. Besides making the rewrite simple, this works around an ssh2
 * 1.17.0 bug: parseHeader keeps only the first partial chunk in `_buffer`, so a header split
 * over three or more reads (possible over WebSocket, where message boundaries mean nothing)
 * loses bytes. Anything ssh2 would refuse anyway (a server seeing a non-ident line, a line
 * longer than ssh2's limit, an oversized header) is passed through untouched for ssh2 to
 * report.
 */
function hookIncomingIdent(sock: Duplex, state: IdentState, server: boolean): void {
  const hadOwnEmit = Object.prototype.hasOwnProperty.call(sock, "emit");
  const ownEmit = sock.emit;
  const origEmit = sock.emit.bind(sock) as (event: string | symbol, ...args: unknown[]) => boolean;
  let pending: Buffer | undefined;
  let lineStart = 0; // start of the first line of `pending` not yet known to be a greeting
  const finish = (): void => {
    if (hadOwnEmit) sock.emit = ownEmit;
    else delete (sock as { emit?: unknown }).emit;
    pending = undefined;
  };
  const passThrough = (buf: Buffer): void => {
    finish();
    origEmit("data", buf);
  };
  const scan = (chunk: Buffer): void => {
    const buf = pending ? Buffer.concat([pending, chunk]) : chunk;
    for (;;) {
      const nl = buf.indexOf(10, lineStart);
      if (nl === -1) break;
      if (startsWithSshDash(buf, lineStart)) {
        const end = nl > lineStart && buf[nl - 1] === 13 ? nl - 1 : nl;
        const raw = buf.subarray(lineStart, end);
        const line = raw.toString("latin1");
        if (RE_STANDARD_IDENT.test(line)) return passThrough(buf);
        state.remoteRaw = Buffer.from(raw);
        const rest = line.slice(4);
        const soft = /^[^ ]+( .*)?$/.test(rest) ? rest : "unknown";
        const fixed = Buffer.from(`SSH-2.0-${soft}\r\n`, "latin1");
        log.v(4, "accepting non-standard SSH identification", { ident: line.slice(0, 80) });
        return passThrough(
          Buffer.concat([buf.subarray(0, lineStart), fixed, buf.subarray(nl + 1)]),
        );
      }
      if (server) return passThrough(buf); // ssh2 servers refuse greeting lines
      lineStart = nl + 1;
    }
    const tail = buf.subarray(lineStart);
    const maybeIdent = tail.length < 4
      ? SSH_DASH.subarray(0, tail.length).equals(tail)
      : startsWithSshDash(tail, 0);
    if (
      tail.length >= MAX_HEADER_LINE || buf.length > MAX_HELD_HEADER || (server && !maybeIdent)
    ) {
      return passThrough(buf);
    }
    pending = buf === chunk ? Buffer.from(buf) : buf;
  };
  sock.emit = function (this: Duplex, event: string | symbol, ...args: unknown[]): boolean {
    if (event === "data") {
      const chunk = args[0];
      scan(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array));
      return true;
    }
    if (event === "end" && pending) passThrough(pending);
    return origEmit(event, ...args);
  } as Duplex["emit"];
}

function startsWithSshDash(buf: Buffer, at: number): boolean {
  return buf.length - at >= 4 && buf[at] === 0x53 && buf[at + 1] === 0x53 &&
    buf[at + 2] === 0x48 && buf[at + 3] === 0x2d;
}

/** Replace ssh2's ident line on the wire (its first write starting with `SSH-`). */
function hookOutgoingIdent(sock: Duplex, state: IdentState, ident: string): void {
  if (!ident.startsWith("SSH-") || /[\r\n]/.test(ident) || ident.length > 253) {
    throw new Error(`ssh compat: invalid identification line ${JSON.stringify(ident)}`);
  }
  state.localRaw = Buffer.from(ident, "latin1");
  const wire = Buffer.from(`${ident}\r\n`, "latin1");
  const hadOwnWrite = Object.prototype.hasOwnProperty.call(sock, "write");
  const ownWrite = sock.write;
  const origWrite = sock.write.bind(sock) as (...args: unknown[]) => boolean;
  sock.write = function (this: Duplex, chunk: unknown, ...rest: unknown[]): boolean {
    if (Buffer.isBuffer(chunk) && startsWithSshDash(chunk, 0)) {
      if (hadOwnWrite) sock.write = ownWrite;
      else delete (sock as { write?: unknown }).write;
      return origWrite(wire, ...rest);
    }
    return origWrite(chunk, ...rest);
  } as Duplex["write"];
}

/** Put the idents as they went over the wire into the protocol's exchange-hash inputs. */
function fixIdents(proto: ProtocolInternals, state: IdentState | undefined): void {
  if (!state) return;
  if (state.remoteRaw && !state.hashRewritten) proto._remoteIdentRaw = state.remoteRaw;
  if (state.localRaw) proto._identRaw = state.localRaw;
}

function patchServer(server: Server): void {
  if (patchedServers.has(server)) return;
  patchedServers.add(server);
  // ssh2 emits `connection` from inside the protocol's onHeader, after parseHeader set
  // _remoteIdentRaw and before it reads the client's KEXINIT.
  server.prependListener(
    "connection",
    (conn: Connection, info: { header: { identRaw: string } }) => {
      checkConnection(conn);
      const { _protocol: proto, _sock: sock } = internals(conn);
      const state = sock ? identStates.get(sock) : undefined;
      if (!proto || !state) return;
      fixIdents(proto, state);
      if (state.remoteRaw) info.header.identRaw = state.remoteRaw.toString("latin1");
    },
  );
}

function patchClient(client: Client): void {
  const patchProto = (): void => {
    checkConnection(client);
    const { _protocol: proto, _sock: sock } = internals(client);
    if (!proto || !sock || patchedProtocols.has(proto)) return;
    const state = identStates.get(sock);
    if (!state) return;
    patchedProtocols.add(proto);
    const origOnHeader = proto._onHeader;
    proto._onHeader = (header) => {
      fixIdents(proto, state);
      if (state.remoteRaw) header.identRaw = state.remoteRaw.toString("latin1");
      origOnHeader(header);
    };
  };
  // connect({ sock }) creates the Protocol and emits `connect` synchronously; data is only
  // parsed later (after crypto init), so either moment is early enough.
  if (internals(client)._protocol) patchProto();
  if (!patchedClients.has(client)) {
    patchedClients.add(client);
    client.prependListener("connect", patchProto);
  }
}

// ---------------------------------------------------------------------------------------------
// The `kubesphere` channel.

/**
 * Handler of incoming `kubesphere` channel opens. `target` is the raw extra data (latin1),
 * normally `host:port`. Call exactly one of `accept()` (returns the channel stream) or
 * `reject(reason, description)`; if the handler throws before answering, the open is
 * rejected with CONNECT_FAILED.
 */
export type KubesphereChannelHandler = (
  target: string,
  accept: () => ClientChannel,
  reject: (reason?: number, description?: string) => void,
) => void;

const kubeHandlers = new WeakMap<Client, KubesphereChannelHandler>();
const channelPatchedProtocols = new WeakSet<ProtocolInternals>();

/**
 * Agent side: receive `kubesphere` channel opens from the server on `client`. Call before or
 * right after `client.connect()`; a second call replaces the handler. Other unknown channel
 * types keep being rejected by ssh2; without a handler, `kubesphere` opens are rejected with
 * UNKNOWN_CHANNEL_TYPE like any unknown type.
 */
export function onKubesphereChannel(client: Client, handler: KubesphereChannelHandler): void {
  checkSsh2();
  const first = !kubeHandlers.has(client);
  kubeHandlers.set(client, handler);
  const patchProto = (): void => {
    checkConnection(client);
    const proto = internals(client)._protocol;
    if (!proto || channelPatchedProtocols.has(proto)) return;
    channelPatchedProtocols.add(proto);
    const capture = captureChannelOpenPayloads(proto);
    const orig = proto._handlers.CHANNEL_OPEN;
    proto._handlers.CHANNEL_OPEN = (p, info) => {
      const payload = capture.take();
      const h = kubeHandlers.get(client);
      if (info.type !== KUBESPHERE_CHANNEL || !h || !payload) {
        if (orig) orig(p, info);
        else proto.channelOpenFail(info.sender, OPEN_FAILURE.UNKNOWN_CHANNEL_TYPE, "");
        return;
      }
      dispatchKubesphereOpen(client, proto, info, extraData(payload), h);
    };
  };
  if (internals(client)._protocol) patchProto();
  if (first) client.prependListener("connect", patchProto);
}

/**
 * ssh2 parses CHANNEL_OPEN into `{ data: {} }` for unknown types, dropping the extra data. Keep
 * the last CHANNEL_OPEN payload as it leaves the (possibly decompressing) packet reader;
 * `_packetRW.read` is replaced by ssh2 when compression starts, hence the accessor.
 */
function captureChannelOpenPayloads(proto: ProtocolInternals): { take(): Buffer | undefined } {
  let last: Buffer | undefined;
  const wrap = (reader: PacketReader): PacketReader => {
    const read = reader.read;
    reader.read = function (this: PacketReader, data: Buffer): Buffer {
      const out = read.call(this, data);
      last = out.length > 0 && out[0] === MSG_CHANNEL_OPEN ? out : undefined;
      return out;
    };
    return reader;
  };
  const rw = proto._packetRW;
  let reader = wrap(rw.read);
  Object.defineProperty(rw, "read", {
    configurable: true,
    enumerable: true,
    get: () => reader,
    set: (r: PacketReader) => {
      reader = wrap(r);
    },
  });
  return {
    take: () => {
      const out = last;
      last = undefined;
      return out;
    },
  };
}

/** Extra data of a CHANNEL_OPEN payload: after type string, sender, window, packet size. */
function extraData(payload: Buffer): string {
  const typeLen = payload.readUInt32BE(1);
  return payload.subarray(1 + 4 + typeLen + 12).toString("latin1");
}

function dispatchKubesphereOpen(
  client: Client,
  proto: ProtocolInternals,
  info: ChannelOpenInfo,
  target: string,
  handler: KubesphereChannelHandler,
): void {
  const mgr = internals(client)._chanMgr;
  const localChan = mgr.add();
  if (localChan === -1) {
    proto.channelOpenFail(info.sender, OPEN_FAILURE.RESOURCE_SHORTAGE, "no free channels");
    return;
  }
  let answered = false;
  const accept = (): ClientChannel => {
    if (answered) throw new Error(`ssh compat: kubesphere channel to ${target} already answered`);
    answered = true;
    const packetSize = localPacketSize(proto);
    const budget = receiveBudgetOf(client);
    const window = budget?.reserve() ?? DEFAULT_WINDOW;
    const chanInfo: ChannelInfo = {
      type: KUBESPHERE_CHANNEL,
      incoming: {
        id: localChan,
        window,
        packetSize,
        state: "open",
      },
      outgoing: {
        id: info.sender,
        window: info.window,
        packetSize: info.packetSize,
        state: "open",
      },
    };
    const stream = new chanLib.Channel(client, chanInfo);
    enableHalfClose(stream);
    followTransport(stream, client);
    budget?.add(stream as unknown as Duplex, window, proto);
    mgr.update(localChan, stream);
    proto.channelOpenConfirm(info.sender, localChan, window, packetSize);
    return stream;
  };
  const reject = (reason: number = OPEN_FAILURE.CONNECT_FAILED, description = ""): void => {
    if (answered) return;
    answered = true;
    mgr.remove(localChan);
    proto.channelOpenFail(info.sender, reason, description);
  };
  try {
    handler(target, accept, reject);
  } catch (err) {
    log.warn("kubesphere channel handler failed", { target, error: String(err) });
    reject(OPEN_FAILURE.CONNECT_FAILED, "internal error");
  }
}

/**
 * The largest data packet to announce for channels of `proto`: {@link LARGE_PACKET_SIZE} when
 * our own ChaCha20-Poly1305 opens its inbound packets, else ssh2's 32 KiB (its other ciphers
 * refuse packets over 35,000 bytes).
 */
function localPacketSize(proto: { _decipher?: unknown }): number {
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

type ChannelInternals = Duplex & { server: boolean; eof(): void; close(): void };

/**
 * Give a channel TCP-like half-close: `end()` sends EOF only, the peer's EOF ends the readable
 * side, and CHANNEL_CLOSE is sent once both directions are done (or when the peer closes).
 * ssh2 server-side channels send CLOSE right after EOF (Channel.js `onFinish`, meant for
 * sessions), which would cut off the agent's reply; that listener is swapped for EOF only.
 *
 * A peer's CLOSE without EOF first (the original Go tower's way of ending a stream) ends the
 * readable side after every byte received before it (ssh2 pushes the end behind them) and ends
 * the writable side (ssh2 calls `end()`). A write after that, from a pump that did not know
 * yet, would destroy the stream in Node's `write()` (write after end), dropping what is still
 * to be read; here it only fails (see {@link failLateWrites}).
 */
function enableHalfClose(stream: ClientChannel | ServerChannel): void {
  const ch = stream as unknown as ChannelInternals;
  failLateWrites(ch);
  if (ch.server) {
    const theirs = ch.listeners("finish").filter((l) => l.name === "onFinish");
    if (theirs.length !== 1) {
      throw new Error("ssh compat: ssh2 internals changed: no Channel onFinish listener");
    }
    ch.removeListener("finish", theirs[0] as () => void);
    for (const l of ch.listeners("prefinish")) {
      if (l.name === "onFinish") ch.removeListener("prefinish", l as () => void);
    }
    ch.on("finish", () => {
      ch.eof();
      ch.writable = false;
    });
  }
  let sentEof = false;
  let gotEof = false;
  const maybeClose = (): void => {
    if (sentEof && gotEof) ch.close();
  };
  ch.once("finish", () => {
    sentEof = true;
    maybeClose();
  });
  ch.once("end", () => {
    gotEof = true;
    maybeClose();
  });
}

/** Error of a channel write after the channel's writable side ended. */
export class ChannelEndedError extends Error {
  readonly code = "ERR_STREAM_WRITE_AFTER_END";
  constructor() {
    super("channel write after its end (the peer closed the channel)");
    this.name = "ChannelEndedError";
  }
}

/**
 * A write after the writable side ended calls back with {@link ChannelEndedError} and returns
 * false, and nothing else: the stream is not destroyed and emits no error. One direction's end
 * then stops that direction only.
 */
function failLateWrites(ch: Duplex): void {
  const write = ch.write;
  ch.write = function (this: Duplex, chunk: unknown, encoding?: unknown, cb?: unknown): boolean {
    if (!this.writableEnded) {
      return write.call(this, chunk, encoding as BufferEncoding, cb as () => void);
    }
    const done = typeof encoding === "function" ? encoding : cb;
    if (typeof done === "function") queueMicrotask(() => done(new ChannelEndedError()));
    return false;
  } as Duplex["write"];
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
