/**
 * Write backpressure for the tunnel's SSH channels (ssh2 1.17.0), and a `destroy()` that really
 * destroys. ssh2 writes every packet to the transport and ignores its `write()` result, and
 * during a key exchange it queues every packet in memory (`Protocol._queue`) until the new keys
 * are in use. Either way, channels with open windows would pile up data without bound: hundreds
 * of MiB with a thousand streams, and the garbage collector's work grows with it. Here a channel
 * write reaches ssh2 only when the transport is not congested and no key exchange is under way,
 * in turn with the other channels of that transport, so `channel.write()` returns false and
 * `drain` follows, and callers need not change. A channel's write buffer is its share of
 * {@link SESSION_WRITE_BUFFER}, so what writers hold unsent stays bounded per connection.
 *
 * ssh2 internals used: a channel's `_write` and `_writableState.highWaterMark`; the connection's
 * `_sock` and `_protocol._kexinit` (set from our KEXINIT until the new keys are in use); its
 * `handshake` event (emitted once they are, after ssh2 has sent what it queued).
 * @module
 */

import type { Buffer } from "node:buffer";
import { Duplex } from "node:stream";
import type { EventEmitter } from "node:events";
// @ts-types="@types/ssh2"
import type { Client, ClientChannel, Connection, ServerChannel } from "ssh2";
import { logger } from "../log.ts";

const log = logger("ssh-flow");

/** Most bytes a channel's writable side buffers before `write()` returns false. */
export const CHANNEL_WRITE_BUFFER = 256 * 1024;
/** Least: with many channels each gets a share of {@link SESSION_WRITE_BUFFER}, not below this. */
const MIN_CHANNEL_WRITE_BUFFER = 16 * 1024;
/**
 * What a connection's channels buffer unsent together, as their writers see it: each channel's
 * `write()` returns false past its share of this (between the two bounds above), so a thousand
 * channels with uploads waiting for their windows hold ~16 MiB, not 256 MiB.
 */
export const SESSION_WRITE_BUFFER = 16 * 1024 * 1024;

/** Open channels per connection (Client or Connection), for their write buffer shares. */
const channelCounts = new WeakMap<object, { n: number }>();

/** The write buffer share of a channel of a connection with `n` channels. */
export function writeBufferShare(n: number): number {
  const even = Math.floor(SESSION_WRITE_BUFFER / Math.max(1, n));
  return Math.max(MIN_CHANNEL_WRITE_BUFFER, Math.min(CHANNEL_WRITE_BUFFER, even));
}

type WriteFn = (chunk: Buffer, encoding: BufferEncoding, cb: (err?: Error | null) => void) => void;

/** One SSH connection's transport, as the write gate sees it. */
interface Transport {
  sock: Duplex;
  /** ssh2's Protocol: `_kexinit` is set while a key exchange is under way. */
  proto: { _kexinit?: unknown } | undefined;
  /** The Client or Connection: emits `handshake` when a key exchange is done. */
  ssh: EventEmitter;
}

/** Per connection (Client or Connection): run before each channel write, see below. */
const writeHooks = new WeakMap<object, () => void>();

/**
 * Have `hook` run before each channel write on `ssh` reaches ssh2, outside ssh2's own code: a
 * safe moment to start a key exchange (./rekey.ts does), which then holds that write and the
 * ones after it until the new keys are in use.
 */
export function beforeChannelWrites(ssh: Client | Connection, hook: () => void): void {
  writeHooks.set(ssh, hook);
}

/** Whether a channel write has to wait. */
function congested(t: Transport): boolean {
  writeHooks.get(t.ssh)?.();
  return t.sock.writableNeedDrain || (t.proto !== undefined && t.proto._kexinit !== undefined);
}

/** Channel writes waiting for a congested transport, in arrival order, per transport. */
const transportWaiters = new WeakMap<Duplex, (() => void)[]>();

/**
 * Run `fn` (a channel write) now if the transport is free and nobody is queued before it, else
 * once it is its turn: on `drain` (or the end of a key exchange) the queued writes run in
 * arrival order until the transport is congested again, and the rest wait for the next one. So
 * with a thousand channels the transport holds its high-water mark plus one write, not one
 * write per channel, and every channel gets its turn. On `close` everything queued runs (and
 * fails).
 */
function whenTransportReady(t: Transport, fn: () => void): void {
  const { sock, ssh } = t;
  const queued = transportWaiters.get(sock);
  if (queued) return void queued.push(fn);
  if (!congested(t) || sock.destroyed) return fn();
  const list: (() => void)[] = [fn];
  transportWaiters.set(sock, list);
  const done = () => {
    transportWaiters.delete(sock);
    sock.off("drain", onDrain);
    sock.off("close", onClose);
    ssh.off("handshake", onDrain);
  };
  const run = (w: () => void) => {
    try {
      w();
    } catch (err) {
      // One channel's failure must not strand the channels queued behind it.
      log.v(2, "channel write failed", { error: String(err) });
    }
  };
  const onDrain = () => {
    while (list.length > 0 && !congested(t)) run(list.shift()!);
    if (list.length === 0) done();
  };
  const onClose = () => {
    done();
    for (const w of list.splice(0)) run(w);
  };
  sock.on("drain", onDrain);
  sock.on("close", onClose);
  ssh.on("handshake", onDrain);
}

/**
 * ssh2's `Channel.destroy()` only sends EOF and CLOSE: the stream is not destroyed (`destroyed`
 * stays false), and `close` is emitted once the peer's CLOSE has arrived *and* the readable side
 * has ended, which needs someone to read what is still buffered. A user that destroys a channel
 * has stopped reading it (a client went away in the middle of a response), so `close` never
 * came: the proxy session's channel count leaked one channel per abandoned response until
 * "channel limit reached". Here `destroy()` sends EOF and CLOSE as before and then really
 * destroys the stream (buffers dropped, `destroyed` true), so ssh2 emits `close` as soon as the
 * peer's CLOSE arrives. When the peer's CLOSE came first (without EOF, the original Go tower's
 * way) ssh2 is already waiting for an `end` that a destroyed stream never emits: `close` is
 * emitted here then.
 */
function realDestroy(stream: ClientChannel | ServerChannel): void {
  const ch = stream as unknown as Duplex;
  const incoming = (stream as unknown as { incoming: { state: string } }).incoming;
  const sshDestroy = ch.destroy;
  let closeEmitted = false;
  ch.once("close", () => closeEmitted = true);
  ch.destroy = function (this: Duplex, err?: Error): Duplex {
    if (this.destroyed) return this;
    sshDestroy.call(this);
    // ssh2 never turned destroy(err) into an error event; callers do not expect one now.
    void err;
    Duplex.prototype.destroy.call(this);
    if (incoming.state === "closed" && !closeEmitted) {
      queueMicrotask(() => {
        if (!closeEmitted) this.emit("close");
      });
    }
    return this;
  } as Duplex["destroy"];
}

/**
 * Make a channel of `ssh` wait for its transport (see the module doc) and give it a
 * `destroy()` that destroys ({@link realDestroy}).
 */
export function followTransport(
  stream: ClientChannel | ServerChannel,
  ssh: Client | Connection,
): void {
  // ssh2 sets the channel's writable high-water mark to its 2 MiB window: with a thousand
  // streams waiting on a congested transport that is 2 GiB queued. A channel's write buffer
  // only has to keep ssh2 fed; the window is what is in flight. Node reads the mark at every
  // write, so it follows the connection's channel count.
  const state = (stream as unknown as { _writableState?: { highWaterMark: number } })
    ._writableState;
  if (state) {
    let count = channelCounts.get(ssh);
    if (count === undefined) channelCounts.set(ssh, count = { n: 0 });
    const c = count;
    c.n++;
    (stream as unknown as Duplex).once("close", () => c.n--);
    Object.defineProperty(state, "highWaterMark", {
      configurable: true,
      enumerable: true,
      get: () => writeBufferShare(c.n),
      set: () => {},
    });
  }
  realDestroy(stream);
  const internals = ssh as unknown as { _sock?: Duplex; _protocol?: Transport["proto"] };
  const sock = internals._sock;
  if (!sock) return;
  const t: Transport = { sock, proto: internals._protocol, ssh: ssh as unknown as EventEmitter };
  const ch = stream as unknown as { _write: WriteFn };
  const write = ch._write;
  ch._write = function (this: unknown, chunk, encoding, cb) {
    whenTransportReady(t, () => write.call(this, chunk, encoding, cb));
  };
}
