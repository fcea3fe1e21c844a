/**
 * A session's budget for bytes in flight inward, HTTP/2-style connection-level flow control on
 * top of SSH's per-channel windows. SSH has no connection window, and every peer we meet (ssh2,
 * Go's x/crypto/ssh, OpenSSH) sends as much as each channel's window allows: with ssh2's 2 MiB
 * per channel, a thousand channels whose readers lag could bring 2 GiB into the receiving
 * process. We cannot shape what a peer sends; we can shape what we grant.
 *
 * A channel's `held` bytes are its open window (what the peer may still send) plus what it
 * received that its reader has not taken yet (`data` not emitted). The session's channels hold
 * at most `limit` together, with a floor: a channel holding less than {@link MIN_WINDOW} may
 * always be granted up to it, so that no channel waits on the others to make progress, and
 * nothing a stalled reader holds can starve the rest. Each channel aims at its fair share
 * (`limit` / the channels in use, between {@link MIN_WINDOW} and ssh2's 2 MiB window), or at the
 * whole 2 MiB while the budget stays at most half used with that; a new one starts with
 * {@link FIRST_WINDOW}. It is topped up once it has consumed half of its target (one WINDOW_ADJUST per half share, as ssh2 does per 1 MiB); when
 * the budget has no room, channels wait in line and are granted in turn as readers consume.
 * Bound: `limit` plus {@link MIN_WINDOW} per channel, whatever the peer (one that sends beyond a
 * window has that channel destroyed at the first packet over).
 *
 * How: ssh2 decides when to adjust a window (after data arrives, or when a reader drains a full
 * buffer) and has already raised `incoming.window` when it calls `Protocol.channelWindowAdjust`.
 * That call is wrapped per connection: for a channel of ours ssh2's raise is taken back and our
 * grant made instead (possibly none). A channel's `emit("data")` is wrapped to count what its
 * reader takes, unless the reader reports that itself ({@link deferConsumption}: bytes it
 * queues count until it has written them out).
 *
 * ssh2 internals used: a channel's `incoming.window` and `.state`, `outgoing.id` and `.state`,
 * `emit` and `push`; the connection's `_protocol.channelWindowAdjust` (listed and checked in
 * ./ssh2_internals.ts).
 * @module
 */

// @ts-types="@types/ssh2"
import type { Client, Connection } from "ssh2";
import type { Duplex } from "node:stream";

/** A channel may always hold this much (granted, or received and not taken). */
export const MIN_WINDOW = 64 * 1024;
/** Nor more than ssh2's window. */
export const MAX_WINDOW = 2 * 1024 * 1024;
/**
 * A new channel's window: it grows once its reader takes bytes. Channels opened in a burst and
 * left idle in a pool (small requests rarely top a window up) hold little of the budget, which
 * the channels in use need: with their shares as first windows, 64 pooled channels held an
 * agent's whole 32 MiB, and a bulk upload on another was held to the floor.
 */
export const FIRST_WINDOW = MIN_WINDOW;
/** A channel counts as active (for the shares) this long after its reader last took bytes. */
const ACTIVE_MS = 1_000;

/** The ssh2 channel fields used here. */
interface ChannelFields {
  incoming: { window: number; state: string };
  outgoing: { id: number; state: string };
}
type Channel = Duplex & ChannelFields;

interface Proto {
  channelWindowAdjust(chan: number, amount: number): void;
}

/** One channel's account. */
interface Account {
  ch: Channel;
  /** Window granted and not used, plus bytes received and not taken. */
  held: number;
  closed: boolean;
  /** In the waiting line (wants more than the budget had room for). */
  waiting: boolean;
  /** Its reader reports what it has taken ({@link deferConsumption}). */
  deferred: boolean;
  /** `performance.now()` when its reader last took bytes. */
  used: number;
  /** What it held after its last grant: it is topped up once it has used half of that. */
  size: number;
}

/** See the module doc. One per SSH connection, for the channels it receives on. */
export class ReceiveBudget {
  readonly limit: number;
  #held = 0;
  #accounts = new Map<number, Account>();
  #line: Account[] = [];
  #send: ((chan: number, amount: number) => void) | undefined;
  /** Channels whose readers took bytes in the last {@link ACTIVE_MS}, counted at `#countedAt`. */
  #active = 0;
  #countedAt = -Infinity;

  constructor(limit: number) {
    this.limit = limit;
  }

  /** Bytes the session's channels hold now (granted window plus received, not taken). */
  get held(): number {
    return this.#held;
  }

  /** Channels accounted for. */
  get channels(): number {
    return this.#accounts.size;
  }

  /**
   * A channel's target: its share of the limit among the channels in use (whose readers took
   * bytes in the last second; idle ones keep what they hold but do not shrink the others' share),
   * between the floor and ssh2's window.
   */
  share(channels: number = this.#activeChannels()): number {
    const even = Math.floor(this.limit / Math.max(1, channels));
    return Math.max(MIN_WINDOW, Math.min(MAX_WINDOW, even));
  }

  /** Channels in use, recounted at most four times a second (a scan of the accounts). */
  #activeChannels(): number {
    const now = performance.now();
    if (now - this.#countedAt >= ACTIVE_MS / 4) {
      let n = 0;
      for (const a of this.#accounts.values()) if (now - a.used < ACTIVE_MS) n++;
      this.#active = n;
      this.#countedAt = now;
    }
    return this.#active;
  }

  /**
   * Reserve the window to announce for a channel about to be opened or accepted: its share
   * counting it, up to {@link FIRST_WINDOW}, or the floor when the budget has no room for that
   * (or `exactly` this, when the caller has to). Hand it to {@link add} with the channel, or
   * back to {@link unreserve} if the channel never opens.
   */
  reserve(exactly?: number): number {
    const first = Math.min(FIRST_WINDOW, this.share(this.#activeChannels() + 1));
    const window = exactly ?? (this.#held + first <= this.limit ? first : MIN_WINDOW);
    this.#held += window;
    return window;
  }

  /** A reserved window whose channel did not open. */
  unreserve(window: number): void {
    this.#held -= window;
    this.#serveLine();
  }

  /** Account for `ch`, opened with `window` (from {@link reserve}) announced, on `proto`. */
  add(ch: Duplex, window: number, proto: Proto): void {
    this.#hook(proto);
    const c = ch as Channel;
    const a: Account = {
      ch: c,
      held: window,
      closed: false,
      waiting: false,
      deferred: false,
      used: -Infinity,
      size: window,
    };
    this.#accounts.set(c.outgoing.id, a);
    const emit = c.emit;
    const consumed = (n: number) => this.#consumed(a, n);
    // `arguments` passed on as is: no array made per event (every event of the channel).
    c.emit = function (this: Channel, event: string | symbol, chunk?: { length: number }) {
      if (event === "data" && !a.deferred) consumed(chunk!.length);
      return emit.apply(this, arguments as unknown as Parameters<Channel["emit"]>);
    } as Channel["emit"];
    readers.set(c, {
      defer: () => a.deferred = true,
      taken: consumed,
    });
    // ssh2 drops a packet only when the window is exactly 0: a peer that sends more than it was
    // granted drives it below 0 and would have every later packet queued. ssh2 calls `push`
    // right after taking the packet off the window; a packet past it ends the channel instead.
    const push = c.push;
    c.push = function (this: Channel, chunk: unknown, encoding?: BufferEncoding) {
      if (c.incoming.window >= 0) return push.call(this, chunk, encoding);
      if (!c.destroyed) {
        c.destroy(new Error(`the peer sent ${-c.incoming.window} bytes beyond the channel window`));
      }
      return false;
    } as Channel["push"];
    c.once("close", () => this.#close(a));
  }

  /**
   * What `a` may hold: ssh2's whole window while the budget would stay at most half used with it
   * (a channel alone in use is not held back by a share among idle ones), else its share.
   */
  #target(a: Account): number {
    if (this.#held - a.held + MAX_WINDOW <= this.limit / 2) return MAX_WINDOW;
    return this.share();
  }

  /** The peer's window for `a`'s channel ran low (ssh2's call), or room was made: top it up. */
  #topUp(a: Account): void {
    // Only while the peer may still send, and never after our CLOSE: x/crypto/ssh takes a
    // message for a channel it has closed as a protocol error and drops the connection.
    const { incoming, outgoing } = a.ch;
    if (a.closed || incoming.state !== "open") return;
    if (outgoing.state !== "open" && outgoing.state !== "eof") return;
    // Batch, as ssh2 does: grant once half of the last window is used (a channel holding nothing
    // always gets some). Sized by use: a channel that took a few bytes keeps its small window.
    if (a.held > 0 && a.held > a.size / 2) return;
    const target = this.#target(a);
    const want = target - a.held;
    if (want <= 0) return;
    let grant = want;
    if (this.#held + want > this.limit) {
      // Up to the floor at any time; beyond it, only what the budget has room for (not in
      // slivers: half a target at least), and the rest when its turn in line comes.
      const room = this.limit - this.#held;
      grant = Math.max(0, Math.min(want, MIN_WINDOW - a.held), room >= target / 2 ? room : 0);
      if (grant < want && !a.waiting) {
        a.waiting = true;
        this.#line.push(a);
      }
      if (grant <= 0) return;
    }
    a.held += grant;
    a.size = a.held;
    this.#held += grant;
    a.ch.incoming.window += grant;
    this.#send!(a.ch.outgoing.id, grant);
  }

  /** Bytes of `a` were taken by its reader: room for others in line, then for `a` itself. */
  #consumed(a: Account, n: number): void {
    if (a.closed) return;
    a.used = performance.now();
    a.held -= n;
    this.#held -= n;
    this.#serveLine();
    this.#topUp(a);
  }

  /** Grant to the channels in line, in turn, while there is room for them. */
  #serveLine(): void {
    while (this.#line.length > 0) {
      const a = this.#line[0];
      if (!a.closed) {
        const target = this.#target(a);
        const want = target - a.held;
        if (want > 0 && this.#held + Math.min(want, target / 2) > this.limit) return;
      }
      this.#line.shift();
      a.waiting = false;
      this.#topUp(a);
    }
  }

  #close(a: Account): void {
    if (a.closed) return;
    a.closed = true;
    this.#held -= a.held;
    a.held = 0;
    // Peers may reuse a channel id once they have our CLOSE (x/crypto/ssh does at once), before
    // this channel's `close` (after its reader drained it): the id may be another's by now.
    if (this.#accounts.get(a.ch.outgoing.id) === a) this.#accounts.delete(a.ch.outgoing.id);
    this.#serveLine();
  }

  /** Route ssh2's window adjustments for our channels through {@link #topUp}. */
  #hook(proto: Proto): void {
    if (this.#send) return;
    const send = proto.channelWindowAdjust.bind(proto);
    this.#send = send;
    proto.channelWindowAdjust = (chan: number, amount: number) => {
      const a = this.#accounts.get(chan);
      if (a === undefined) return send(chan, amount); // not a channel of ours
      a.ch.incoming.window -= amount; // ssh2 raised it already: ours to decide
      this.#topUp(a);
    };
  }
}

/** Per channel with a budget: how its reader reports bytes taken (see {@link deferConsumption}). */
const readers = new WeakMap<object, { defer(): void; taken(n: number): void }>();

/**
 * For a reader that queues what a channel hands it (the agent's pipe to its target): bytes
 * emitted no longer count as taken; the reader calls the returned function with each count it
 * has written out. For a channel without a budget the function does nothing.
 */
export function deferConsumption(channel: Duplex): (taken: number) => void {
  const r = readers.get(channel);
  if (r === undefined) return () => {};
  r.defer();
  return r.taken;
}

/** The budgets of connections, for the channel hooks (channel_open.ts, channel_accept.ts). */
const budgets = new WeakMap<object, ReceiveBudget>();

/** Give `ssh`'s channels a receive budget of `limit` bytes (call before channels exist). */
export function limitReceive(ssh: Client | Connection, limit: number): ReceiveBudget {
  const b = new ReceiveBudget(limit);
  budgets.set(ssh, b);
  return b;
}

/** `ssh`'s receive budget, if it has one. */
export function receiveBudgetOf(ssh: object): ReceiveBudget | undefined {
  return budgets.get(ssh);
}
