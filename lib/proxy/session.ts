/**
 * One authenticated agent session on the proxy: the ssh2 server-side
 * connection after a successful `config`, able to open `kubesphere` channels
 * to the agent's two configured targets and nothing else.
 * @module
 */

// @ts-types="@types/ssh2"
import type { Connection } from "ssh2";
import type { Duplex } from "node:stream";
import type { AgentConfig } from "../tunnel/handshake.ts";
import { openKubesphereChannel } from "../tunnel/channel_open.ts";
import type { AgentSession } from "./registry.ts";
import { logger } from "../log.ts";
import { channelsGauge } from "../metrics.ts";
import { StreamLimitError } from "./http/upstream.ts";

const log = logger("proxy/session");
let counter = 0;

/** Limits for one session. */
export interface SessionLimits {
  /** Most channels open at once (default 1024). */
  maxChannels?: number;
  /** SSH window for each channel (bytes). */
  channelWindow?: number;
  /** SSH max packet size for each channel (bytes). */
  channelPacket?: number;
  /**
   * Bytes the session's channels may hold on their way in, all together (default
   * `PROXY_RECEIVE_BUDGET`, see lib/tunnel/receive_budget.ts).
   */
  receiveBudget?: number;
}

/** Thrown by {@link ProxySession.openStream} when the session cannot take the stream. */
export class SessionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SessionError";
  }
}

/** An agent session backed by an ssh2 server connection. */
export class ProxySession implements AgentSession {
  readonly id: string;
  readonly cluster: string;
  readonly token: string;
  readonly config: AgentConfig;
  readonly remoteAddress: string;
  #conn: Connection;
  #limits: SessionLimits;
  #channels = 0;
  /** The channels counted in `#channels` once open. */
  #open = new Set<Duplex>();
  /**
   * Openers waiting at the channel limit, each for a channel on its way out: a channel that goes
   * hands its place in `#channels` to the first of them (false: the session ended).
   */
  #waiting: ((ok: boolean) => void)[] = [];
  #closed = false;
  #onClose: (() => void)[] = [];

  constructor(
    conn: Connection,
    config: AgentConfig,
    remoteAddress: string,
    limits: SessionLimits = {},
  ) {
    this.id = `${config.Name}#${++counter}`;
    this.cluster = config.Name;
    this.token = config.Token;
    this.config = config;
    this.remoteAddress = remoteAddress;
    this.#conn = conn;
    this.#limits = limits;
  }

  get alive(): boolean {
    return !this.#closed;
  }

  get channels(): number {
    return this.#channels;
  }

  /** Called once when the session ends. */
  onClose(fn: () => void): void {
    if (this.#closed) fn();
    else this.#onClose.push(fn);
  }

  /** The transport ended: mark closed and run close callbacks (idempotent). */
  ended(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const wake of this.#waiting.splice(0)) wake(false);
    for (const fn of this.#onClose.splice(0)) {
      try {
        fn();
      } catch (err) {
        log.error("session close callback failed", { session: this.id, err });
      }
    }
  }

  /**
   * Open a `kubesphere` channel to `target` (one the agent announced). At the channel limit it
   * takes the place of a channel this end destroyed once that one is gone; with none going spare
   * it rejects with {@link StreamLimitError} (what then: `cluster_dialer.ts`).
   */
  async openStream(target: string): Promise<Duplex> {
    if (this.#closed) throw new SessionError(`session ${this.id}: closed`);
    if (target !== this.config.KubernetesSvcHost && target !== this.config.KubeSphereSvcHost) {
      throw new SessionError(`session ${this.id}: target ${target} is not one the agent announced`);
    }
    const max = this.#limits.maxChannels ?? 1024;
    if (this.#channels < max) this.#channels++;
    else {
      // A channel this end has destroyed counts until the agent's CLOSE is back (a round trip,
      // longer under load). When one is on its way out that no earlier opener waits for, wait to
      // take its place rather than fail: a burst of keep-alive clients would otherwise get 502s
      // for a limit held by abandoned streams.
      if (this.#closing() <= this.#waiting.length) {
        throw new StreamLimitError(`session ${this.id}: channel limit ${max} reached`);
      }
      const ok = await new Promise<boolean>((resolve) => this.#waiting.push(resolve));
      if (!ok) throw new SessionError(`session ${this.id}: closed`);
    }
    let channel: Duplex;
    try {
      channel = await openKubesphereChannel(this.#conn, target, {
        window: this.#limits.channelWindow,
        packetSize: this.#limits.channelPacket,
      }) as unknown as Duplex;
    } catch (err) {
      this.#release();
      throw new SessionError(`session ${this.id}: open ${target}: ${(err as Error).message}`);
    }
    channelsGauge.inc();
    this.#open.add(channel);
    channel.once("close", () => {
      this.#open.delete(channel);
      channelsGauge.dec();
      this.#release();
    });
    return channel;
  }

  /** A counted channel is gone (or never opened): its place goes to the first waiter, else frees. */
  #release(): void {
    const next = this.#waiting.shift();
    if (next) next(true);
    else this.#channels--;
  }

  /** Channels this end has destroyed whose close has not come back yet. */
  #closing(): number {
    let n = 0;
    for (const c of this.#open) if (c.destroyed) n++;
    return n;
  }

  close(reason: string): void {
    if (this.#closed) return;
    log.info("Closing agent session", { cluster: this.cluster, session: this.id, reason });
    try {
      this.#conn.end();
    } catch {
      // already gone
    }
    this.ended();
  }
}
