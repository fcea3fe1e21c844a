/**
 * Rekeying for the tunnel's SSH link. ssh2 1.17.0 never starts a key exchange by itself (its
 * Protocol has `rekey()`, the server `Connection#rekey()` calls it, and both ends answer a
 * peer's KEXINIT); with chacha20-poly1305 the packet sequence number is the nonce, so after
 * 2^32 packets under one key it would repeat. {@link keepRekeying} starts a key exchange from
 * our side whenever, since the last one (whoever started it):
 *
 * - either direction carried {@link RekeyLimits.bytes} (default 1 GiB, as strict as OpenSSH's
 *   `RekeyLimit` default for any cipher; x/crypto/ssh, which the Go tower used, also rekeys by
 *   volume),
 * - or either direction's sequence number advanced {@link RekeyLimits.packets} (default 2^31,
 *   RFC 4344 §3.1 asks for at most 2^32),
 * - or {@link RekeyLimits.intervalMs} passed (default 1 h; OpenSSH has none by default).
 *
 * Bytes are counted where the transport is written and read (SSH packets as they go over the
 * wire); packets from ssh2's sequence numbers. The exchange is started outside whatever call
 * noticed the limit, never from inside ssh2's packet code (mid-encrypt, before the sequence
 * number advances): before the next channel write (./channel_flow.ts), or in a microtask.
 * During an exchange ssh2 queues outgoing packets and sends them, in order, under the new keys,
 * and channel writes wait (./channel_flow.ts); ./ssh_cipher.ts keeps its keys per cipher
 * object, which ssh2 replaces at each exchange.
 * @module
 */

// @ts-types="@types/ssh2"
import type { Client, Connection } from "ssh2";
import type { Duplex } from "node:stream";
import type { FlagSpecs, FlagValues } from "../cli.ts";
import { logger } from "../log.ts";
import { rekeysCounter } from "../metrics.ts";
import { beforeChannelWrites } from "./channel_flow.ts";
import { checkConnection, checkSsh2 } from "./ssh2_internals.ts";

const log = logger("ssh-rekey");

/** When to start a key exchange; each limit counts from the last exchange. */
export interface RekeyLimits {
  /** Bytes in either direction (default {@link DEFAULT_REKEY_BYTES}). */
  bytes?: number;
  /** Packets in either direction (default {@link DEFAULT_REKEY_PACKETS}). */
  packets?: number;
  /** Time (default {@link DEFAULT_REKEY_INTERVAL_MS}; 0: no time limit). */
  intervalMs?: number;
}

/** 1 GiB: OpenSSH's default `RekeyLimit` is 1–4 GB depending on the cipher. */
const DEFAULT_REKEY_BYTES = 1 << 30;
/** 2^31 packets, half of what RFC 4344 §3.1 allows under one key. */
const DEFAULT_REKEY_PACKETS = 2 ** 31;
/** One hour. */
const DEFAULT_REKEY_INTERVAL_MS = 3_600_000;

/** Why a key exchange was started by us. */
type RekeyReason = "bytes_out" | "bytes_in" | "packets_out" | "packets_in" | "interval";

/** The ssh2 1.17.0 Protocol fields this module reads or calls (./ssh2_internals.ts). */
interface ProtocolInternals {
  rekey(): void;
  _kexinit: unknown;
  _cipher: { outSeqno: number } | undefined;
  _decipher: { inSeqno: number } | undefined;
}

/** A running rekey policy on one connection (see {@link keepRekeying}). */
export interface Rekeyer {
  /** Key exchanges completed since {@link keepRekeying}, whoever started them. */
  readonly exchanges: number;
  /** Of those (and any in progress), the ones this side started. */
  readonly started: number;
  /** Stop watching (also happens when the connection closes). */
  stop(): void;
}

/**
 * Rekey `ssh` (a `Client` after `ready`, or a server `Connection` after authentication) by
 * `limits`. Call once per connection. `label` goes into log lines (e.g. the cluster name).
 */
export function keepRekeying(
  ssh: Client | Connection,
  limits: RekeyLimits = {},
  label: Record<string, unknown> = {},
): Rekeyer {
  return new Rekeying(ssh, limits, label);
}

class Rekeying implements Rekeyer {
  exchanges = 0;
  started = 0;
  #ssh: Client | Connection;
  #proto: ProtocolInternals;
  #sock: Duplex;
  #label: Record<string, unknown>;
  #maxBytes: number;
  #maxPackets: number;
  #intervalMs: number;
  #bytesOut = 0;
  #bytesIn = 0;
  #baseOut: number;
  #baseIn: number;
  #since = Date.now();
  /** A limit was seen reached; the exchange starts at the next safe moment. */
  #scheduled = false;
  #stopped = false;
  /** Why we started the exchange under way, if we did. */
  #pending: RekeyReason | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #ownWrite: Duplex["write"] | undefined;
  #onData = (chunk: Uint8Array): void => {
    this.#bytesIn += chunk.length;
    this.#check();
  };
  #onHandshake = (): void => this.#exchanged();
  #stop = (): void => this.stop();

  constructor(ssh: Client | Connection, limits: RekeyLimits, label: Record<string, unknown>) {
    checkSsh2();
    checkConnection(ssh);
    const internals = ssh as unknown as { _protocol?: ProtocolInternals; _sock?: Duplex };
    const proto = internals._protocol;
    const sock = internals._sock;
    if (!proto || !sock) throw new Error("ssh rekey: not connected");
    this.#maxBytes = positive(limits.bytes, DEFAULT_REKEY_BYTES, "bytes");
    this.#maxPackets = positive(limits.packets, DEFAULT_REKEY_PACKETS, "packets");
    this.#intervalMs = limits.intervalMs ?? DEFAULT_REKEY_INTERVAL_MS;
    if (!(this.#intervalMs >= 0)) throw new Error(`ssh rekey: bad interval ${limits.intervalMs}`);
    this.#ssh = ssh;
    this.#proto = proto;
    this.#sock = sock;
    this.#label = label;
    this.#baseOut = proto._cipher?.outSeqno ?? 0;
    this.#baseIn = proto._decipher?.inSeqno ?? 0;
    this.#hookWrites();
    sock.on("data", this.#onData);
    ssh.on("handshake", this.#onHandshake);
    // A burst of channel writes (a window's worth, written in one run) would otherwise all go
    // out under the old keys before a microtask could start the exchange.
    beforeChannelWrites(ssh, () => {
      if (this.#scheduled) this.#start();
    });
    ssh.once("close", this.#stop);
    this.#armTimer();
  }

  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#sock.off("data", this.#onData);
    this.#ssh.off("handshake", this.#onHandshake);
    this.#ssh.off("close", this.#stop);
    beforeChannelWrites(this.#ssh, () => {});
    if (this.#ownWrite) this.#sock.write = this.#ownWrite;
    else delete (this.#sock as { write?: unknown }).write;
  }

  /** Count what ssh2 writes: it writes each packet with `sock.write(data)`. */
  #hookWrites(): void {
    const sock = this.#sock;
    this.#ownWrite = Object.prototype.hasOwnProperty.call(sock, "write") ? sock.write : undefined;
    const write = sock.write as (c: unknown, e: unknown, cb: unknown) => boolean;
    const wrote = (n: number) => {
      this.#bytesOut += n;
      this.#check();
    };
    sock.write = function (this: Duplex, chunk: Uint8Array, encoding: unknown, cb: unknown) {
      const ok = write.call(this, chunk, encoding, cb);
      wrote(chunk.length);
      return ok;
    } as Duplex["write"];
  }

  /** The limit reached since the last exchange, if any. */
  #over(): RekeyReason | undefined {
    if (this.#bytesOut >= this.#maxBytes) return "bytes_out";
    if (this.#bytesIn >= this.#maxBytes) return "bytes_in";
    const { _cipher: c, _decipher: d } = this.#proto;
    if (c && ((c.outSeqno - this.#baseOut) >>> 0) >= this.#maxPackets) return "packets_out";
    if (d && ((d.inSeqno - this.#baseIn) >>> 0) >= this.#maxPackets) return "packets_in";
    return undefined;
  }

  /**
   * Called with every read and write: cheap unless a limit has been reached. The exchange is
   * not started from here (this runs inside ssh2's packet code, or the transport's read) but
   * before the next channel write, or once the current run of code is done, whichever is first.
   */
  #check(): void {
    if (this.#scheduled || this.#stopped || this.#proto._kexinit !== undefined) return;
    if (this.#over() === undefined) return;
    this.#scheduled = true;
    queueMicrotask(() => {
      if (this.#scheduled) this.#start();
    });
  }

  /** Start an exchange now for `forced`, or for a limit still reached (a check can be stale). */
  #start(forced?: "interval"): void {
    this.#scheduled = false;
    if (this.#stopped || this.#proto._kexinit !== undefined) return; // one is under way
    // ssh2 sends what it queued during an exchange (through our write hook) just before the
    // counters are reset, so a check from then must not start another one.
    const reason = forced ?? this.#over();
    if (reason === undefined) return;
    this.started++;
    this.#pending = reason;
    log.v(2, "Starting SSH key exchange", { ...this.#label, reason, ...this.#counts() });
    try {
      this.#proto.rekey();
    } catch (err) {
      log.warn("Cannot start SSH key exchange", { ...this.#label, reason, error: String(err) });
    }
  }

  /** A key exchange completed (ours or the peer's): count afresh. */
  #exchanged(): void {
    this.exchanges++;
    const by = this.#pending;
    rekeysCounter.inc({ reason: by ?? "peer" });
    log.v(2, "SSH key exchange done", {
      ...this.#label,
      startedBy: by ? `us (${by})` : "peer",
      exchanges: this.exchanges,
      ...this.#counts(),
    });
    this.#pending = undefined;
    this.#bytesOut = 0;
    this.#bytesIn = 0;
    this.#baseOut = this.#proto._cipher?.outSeqno ?? 0;
    this.#baseIn = this.#proto._decipher?.inSeqno ?? 0;
    this.#since = Date.now();
    this.#armTimer();
  }

  #counts(): Record<string, unknown> {
    return {
      bytesOut: this.#bytesOut,
      bytesIn: this.#bytesIn,
      after: `${Date.now() - this.#since}ms`,
    };
  }

  #armTimer(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#intervalMs === 0 || this.#stopped) return;
    const t = setTimeout(() => this.#start("interval"), this.#intervalMs);
    Deno.unrefTimer(t as unknown as number); // sessions, not this timer, keep the process up
    this.#timer = t;
  }
}

function positive(v: number | undefined, dflt: number, what: string): number {
  if (v === undefined) return dflt;
  if (!(v >= 1)) throw new Error(`ssh rekey: ${what} limit must be at least 1, got ${v}`);
  return v;
}

const SIZE = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?$/i;

/**
 * A byte size as flags take it: `1073741824`, `512K`, `64M`, `1G`, `1GiB` (K, M, G, T are
 * powers of 1024, as in OpenSSH's `RekeyLimit`).
 * @throws Error naming the bad input.
 */
export function parseByteSize(input: string): number {
  const m = SIZE.exec(input.trim());
  if (!m) throw new Error(`invalid size "${input}": want a number with optional K, M, G or T`);
  const n = Number(m[1]) * 1024 ** " kmgt".indexOf((m[2] || " ").toLowerCase());
  if (!Number.isFinite(n) || n < 1) throw new Error(`invalid size "${input}"`);
  return Math.floor(n);
}

/** The flags both binaries take for {@link RekeyLimits} (OpenSSH's `RekeyLimit`, split in two). */
export const REKEY_FLAGS: FlagSpecs = {
  "rekey-limit": {
    kind: "string",
    default: "1G",
    help: "start an SSH key exchange after this much data either way (K, M, G suffixes)",
    validate: (v) => {
      try {
        parseByteSize(String(v));
        return undefined;
      } catch (err) {
        return (err as Error).message;
      }
    },
  },
  "rekey-interval": {
    kind: "duration",
    default: DEFAULT_REKEY_INTERVAL_MS,
    help: "and after this long (0: no time limit); also every 2^31 packets",
  },
};

/** {@link RekeyLimits} from parsed {@link REKEY_FLAGS}. */
export function rekeyLimitsFromFlags(v: FlagValues): RekeyLimits {
  return {
    bytes: parseByteSize(String(v["rekey-limit"] ?? "1G")),
    intervalMs: (v["rekey-interval"] as number | undefined) ?? DEFAULT_REKEY_INTERVAL_MS,
  };
}
