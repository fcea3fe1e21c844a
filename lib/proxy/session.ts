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
    for (const fn of this.#onClose.splice(0)) {
      try {
        fn();
      } catch (err) {
        log.error("session close callback failed", { session: this.id, err });
      }
    }
  }

  async openStream(target: string): Promise<Duplex> {
    if (this.#closed) throw new SessionError(`session ${this.id}: closed`);
    if (target !== this.config.KubernetesSvcHost && target !== this.config.KubeSphereSvcHost) {
      throw new SessionError(`session ${this.id}: target ${target} is not one the agent announced`);
    }
    const max = this.#limits.maxChannels ?? 1024;
    if (this.#channels >= max) {
      throw new SessionError(`session ${this.id}: channel limit ${max} reached`);
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
      throw new SessionError(`session ${this.id}: open ${target}: ${(err as Error).message}`);
    }
    channelsGauge.inc();
    channel.once("close", () => {
      this.#channels--;
      channelsGauge.dec();
    });
    return channel;
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
