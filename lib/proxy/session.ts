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
import { openKubesphereChannel } from "../tunnel/ssh_compat.ts";
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
  /** Openers waiting at the channel limit for a channel being closed to be gone. */
  #waiting: (() => void)[] = [];
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
    this.#wakeWaiting();
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
   * waits for a channel this end destroyed to be gone, after asking `reclaim` (when given) to
   * destroy an idle one of its own; with neither it rejects with {@link StreamLimitError}.
   */
  async openStream(target: string, opts: { reclaim?: () => boolean } = {}): Promise<Duplex> {
    if (this.#closed) throw new SessionError(`session ${this.id}: closed`);
    if (target !== this.config.KubernetesSvcHost && target !== this.config.KubeSphereSvcHost) {
      throw new SessionError(`session ${this.id}: target ${target} is not one the agent announced`);
    }
    const max = this.#limits.maxChannels ?? 1024;
    while (this.#channels >= max) {
      // A channel this end has destroyed counts until the agent's CLOSE is back (a round trip,
      // longer under load): when some are on their way out, or an idle pooled stream can be
      // given up, wait for one rather than fail. A burst of keep-alive clients would otherwise
      // get 502s for a limit taken by streams abandoned or idle.
      if (![...this.#open].some((c) => c.destroyed) && !opts.reclaim?.()) {
        throw new StreamLimitError(`session ${this.id}: channel limit ${max} reached`);
      }
      await new Promise<void>((resolve) => this.#waiting.push(resolve));
      if (this.#closed) throw new SessionError(`session ${this.id}: closed`);
    }
    this.#channels++;
    let channel: Duplex;
    try {
      channel = await openKubesphereChannel(this.#conn, target, {
        window: this.#limits.channelWindow,
        packetSize: this.#limits.channelPacket,
      }) as unknown as Duplex;
    } catch (err) {
      this.#channels--;
      this.#wakeWaiting();
      throw new SessionError(`session ${this.id}: open ${target}: ${(err as Error).message}`);
    }
    channelsGauge.inc();
    this.#open.add(channel);
    channel.once("close", () => {
      this.#open.delete(channel);
      this.#channels--;
      channelsGauge.dec();
      this.#wakeWaiting();
    });
    return channel;
  }

  /** A channel is gone: waiting openers look again (one takes it; the rest wait or fail). */
  #wakeWaiting(): void {
    for (const wake of this.#waiting.splice(0)) wake();
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
