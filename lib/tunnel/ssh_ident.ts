/**
 * Identification lines that are not `SSH-2.0-…` for ssh2 1.17.0 (docs/protocol.md §2): the
 * original Go tower's `SSH-kubesphere-v1-server` and `SSH-kubesphere-v1-client`, received and
 * (for tests and interop emulation) sent, with the key-exchange hash computed over the line
 * exactly as it went over the wire.
 *
 * Nothing here edits ssh2's files or module-level state: every hook patches one object (a
 * transport stream, a `Protocol` instance, a `Client`/`Server` instance). The ssh2 internals
 * relied on are listed in ./ssh2_internals.ts, whose checks the hooks run first.
 *
 * How it works. ssh2's `parseHeader` (lib/protocol/Protocol.js) rejects any line not matching
 * `^SSH-(2\.0|1\.99)-…`, and remembers the line in `protocol._remoteIdentRaw`; kex.js copies
 * `_identRaw`/`_remoteIdentRaw` into the exchange hash when the peer's KEXINIT arrives. So:
 * (1) the transport's `emit("data")` is wrapped until the peer's ident line has passed, and a
 * non-standard line `SSH-x` is handed to ssh2 as `SSH-2.0-x`; (2) at the moment ssh2 has
 * parsed that header (client: the protocol's `_onHeader` callback; server: the `connection`
 * event, emitted from inside `_onHeader`), `_remoteIdentRaw` is put back to the raw line,
 * before the peer's KEXINIT is read. Sending a custom line works the same way in reverse: the
 * first write of the ident is replaced on the wire and `_identRaw` is set. The hook also hands
 * ssh2 the whole header in one chunk, which avoids an ssh2 bug with headers split over three
 * or more reads (see `hookIncomingIdent`).
 * @module
 */

import { Buffer } from "node:buffer";
import type { Duplex } from "node:stream";
// @ts-types="@types/ssh2"
import type { Client, Connection, Server } from "ssh2";
import { logger } from "../log.ts";
import { checkConnection, checkSsh2 } from "./ssh2_internals.ts";
import { internals, type ProtocolInternals } from "./ssh2_shapes.ts";

const log = logger("ssh-compat");

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
