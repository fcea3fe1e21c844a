/**
 * The agent-facing side of the proxy: WebSocket upgrades with subprotocol
 * `kubesphere-v1`, SSH inside (ssh2 server), user auth, the `config`
 * handshake, keepalive, and registration of authenticated sessions.
 *
 * Every unauthenticated connection is bounded: it holds one of
 * `maxPendingHandshakes` slots, shared fairly between source addresses
 * (`admission.ts`), from TCP accept until its `config` is accepted, within
 * `handshakeTimeoutMs` (request head, SSH and `config` included); whatever
 * goes wrong closes that one connection and nothing else.
 * @module
 */

// @ts-types="@types/ssh2"
import ssh2 from "ssh2";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import { logger, redact } from "../log.ts";
import { secretsEqual } from "../secret.ts";
import { ConfigError, decodeAgentConfig } from "../tunnel/handshake.ts";
import type { HostKey } from "../tunnel/hostkey.ts";
import { keepRekeying, type RekeyLimits } from "../tunnel/rekey.ts";
import { protocolOf, sendRawPacket, serveGlobalRequests } from "../tunnel/ssh_requests.ts";
import { acceptAnyIdent } from "../tunnel/ssh_ident.ts";
import { keepsNoInput } from "../tunnel/ssh_cipher.ts";
import { limitReceive } from "../tunnel/receive_budget.ts";
import type { WsConnStream } from "../tunnel/ws_stream.ts";
import { SSH_ALGORITHMS, WS_PROTOCOL } from "../tunnel/protocol.ts";
import { DRAIN_REQUEST } from "../handover.ts";
import { AdmissionSlots } from "./admission.ts";
import type { ClusterSource } from "./clusters.ts";
import type { SessionRegistry } from "./registry.ts";
import { ProxySession, type SessionLimits } from "./session.ts";

const log = logger("proxy/tunnel");
/**
 * Bytes an agent session's channels may hold on their way in (windows granted plus responses
 * received and not yet written to the clients), see lib/tunnel/receive_budget.ts: 64 KiB each
 * for a thousand streams, 2 MiB each (ssh2's window) for up to 32.
 */
export const PROXY_RECEIVE_BUDGET = 64 * 1024 * 1024;
/** Warnings a flood can repeat (refusals, evictions) are logged at most this often. */
const WARN_EVERY_MS = 5_000;
const enc = new TextEncoder();
/** SSH_MSG_GLOBAL_REQUEST. */
const MSG_GLOBAL_REQUEST = 80;

/** Why a handshake failed (metrics label). */
export type HandshakeFailure =
  | "timeout"
  | "too_many_pending"
  | "bad_protocol"
  | "ssh_error"
  | "bad_config"
  | "unauthorized";

/**
 * An unauthenticated connection holding an admission slot (see {@link TunnelServer.admit}),
 * from TCP accept until its agent is accepted or it closes.
 */
export interface PendingConnection {
  /** `host:port` of the peer, for logs. */
  readonly remote: string;
  /** Ends the connection (deadline passed, evicted, proxy closing); its owner may replace it. */
  close: () => void;
  /** Set by its owner: lift the limits that hold only before authentication. */
  onAuthenticated?: () => void;
  /** Whether it has become a tunnel (logs say "handshake timed out" then). */
  upgraded: boolean;
  /** The connection ended or its agent was accepted: slot and deadline go (idempotent). */
  done(): void;
}

/** Options for {@link TunnelServer}. */
export interface TunnelServerOptions {
  hostKey: HostKey;
  clusters: ClusterSource;
  registry: SessionRegistry;
  /** SSH keepalive interval; a silent peer is dropped after 2 intervals (default 30 s). */
  keepaliveMs?: number;
  /** Deadline for WebSocket open → successful `config` (default 10 s). */
  handshakeTimeoutMs?: number;
  /** Most unauthenticated connections at once (default 256). */
  maxPendingHandshakes?: number;
  /**
   * Largest `config` payload (default 32 KiB). ssh2 drops any SSH packet over
   * 35,000 bytes before we see it, so larger values cannot take effect.
   */
  maxConfigBytes?: number;
  session?: SessionLimits;
  /** When sessions exchange SSH keys again (lib/tunnel/rekey.ts defaults). */
  rekey?: RekeyLimits;
  /** Observer hooks (metrics). */
  onHandshakeFailure?: (reason: HandshakeFailure) => void;
}

/** Accepts agents and turns them into registered {@link ProxySession}s. */
export class TunnelServer {
  #opts: TunnelServerOptions;
  #ssh: ssh2.Server;
  #slots: AdmissionSlots;
  /** Connections holding a slot. */
  #pendings = new Set<PendingConnection>();
  #streams = new Set<Duplex>();
  /** Transport given to ssh2 → its pending connection. */
  #handshakes = new WeakMap<object, PendingConnection>();
  #closing = false;
  /** Each registered session's SSH connection (to ask its agent to move: {@link drain}). */
  #conns = new Map<ProxySession, ssh2.Connection>();
  /** Rate-limited warnings by kind: when the last was logged, how many left out since. */
  #warned = new Map<string, { at: number; skipped: number }>();

  constructor(opts: TunnelServerOptions) {
    this.#opts = opts;
    this.#slots = new AdmissionSlots(opts.maxPendingHandshakes ?? 256);
    const keepalive = opts.keepaliveMs ?? 30_000;
    this.#ssh = new ssh2.Server({
      hostKeys: [{ key: opts.hostKey.sshKey }],
      ident: "Tower_v0.1.0",
      algorithms: SSH_ALGORITHMS,
      keepaliveInterval: keepalive,
      keepaliveCountMax: 1,
    } as ssh2.ServerConfig);
    this.#ssh.on("error", (err: Error) => log.v(2, "ssh server error", { err }));
    this.#ssh.on("connection", (conn: ssh2.Connection, info: ssh2.ClientInfo) => {
      this.#onConnection(conn, info);
    });
  }

  /** The host key's `SHA256:…` fingerprint agents may pin. */
  get fingerprint(): string {
    return this.#opts.hostKey.fingerprint;
  }

  /** Number of connections that have not finished their handshake. */
  get pendingHandshakes(): number {
    return this.#slots.size;
  }

  /**
   * Whether a request with these `Upgrade` and `Sec-WebSocket-Protocol` values asks for the
   * agent tunnel (a WebSocket with any `kubesphere-*` subprotocol).
   */
  static wantsTunnel(upgrade: string | undefined, protocols: string | undefined): boolean {
    return /(^|,)\s*websocket\s*(,|$)/i.test(upgrade ?? "") &&
      /(^|,)\s*kubesphere-/i.test(protocols ?? "");
  }

  /**
   * Take a slot for a new connection from `hostname:port` (see `admission.ts`): from now on it
   * has `handshakeTimeoutMs` to get its agent accepted, and `close` ends it should the deadline
   * pass, a newcomer from a less busy source need the slot, or the proxy close. Refused (a
   * reason to answer with 503) when shutting down or when every slot is taken by sources no
   * busier than this one.
   */
  admit(hostname: string, port: number, close: () => void): PendingConnection | string {
    const remote = `${hostname}:${port}`;
    if (this.#closing) return "shutting down";
    const timeoutMs = this.#opts.handshakeTimeoutMs ?? 10_000;
    // The callbacks below run later (an eviction, the deadline), once `pending` exists.
    const slot = this.#slots.take(hostname, () => {
      this.#warnSome("evicted", "Closing an unauthenticated connection for a less busy source", {
        remote,
        held: this.#slots.held(hostname),
      });
      this.#opts.onHandshakeFailure?.("too_many_pending"); // the slots are full, as for a 503
      pending.done();
      pending.close();
    });
    if (!slot) {
      this.#warnSome("refused", "Refusing agent: too many handshakes in progress", {
        remote,
        max: this.#slots.max,
      });
      this.#opts.onHandshakeFailure?.("too_many_pending");
      return "too many handshakes in progress";
    }
    const timer = setTimeout(() => {
      if (pending.upgraded) {
        log.warn("Agent handshake timed out", { remote, timeout: `${timeoutMs}ms` });
      } else {
        log.v(2, "Closing a connection that sent no complete request head", {
          remote,
          timeout: `${timeoutMs}ms`,
        });
      }
      this.#opts.onHandshakeFailure?.("timeout");
      pending.done();
      pending.close();
    }, timeoutMs);
    let settled = false;
    const pending: PendingConnection = {
      remote,
      close,
      upgraded: false,
      done: () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        slot.release();
        this.#pendings.delete(pending);
      },
    };
    this.#pendings.add(pending);
    return pending;
  }

  /**
   * Log a warning of `kind` at most once per {@link WARN_EVERY_MS}, with how many were left out
   * since the last: a flood must not turn into a flood of log lines.
   */
  #warnSome(kind: string, msg: string, fields: Record<string, unknown>): void {
    const w = this.#warned.get(kind) ?? { at: -Infinity, skipped: 0 };
    this.#warned.set(kind, w);
    const now = performance.now();
    if (now - w.at < WARN_EVERY_MS) {
      w.skipped++;
      return;
    }
    log.warn(msg, w.skipped > 0 ? { ...fields, alsoSince: w.skipped } : fields);
    w.at = now;
    w.skipped = 0;
  }

  /** Whether an agent offering `offered` (a `Sec-WebSocket-Protocol` value) speaks ours. */
  checkProtocol(offered: string, remote: string): boolean {
    const protocols = offered.split(",").map((s) => s.trim());
    if (protocols.includes(WS_PROTOCOL)) return true;
    log.warn("Refusing agent with an unsupported protocol version", {
      remote,
      offered: protocols.join(","),
      want: WS_PROTOCOL,
    });
    this.#opts.onHandshakeFailure?.("bad_protocol");
    return false;
  }

  /**
   * Run the SSH server side over `stream` (the upgraded connection of `pending`). Its slot is
   * given back once the agent is accepted (`pending.onAuthenticated` runs first) or the stream
   * closes.
   */
  accept(stream: Duplex, pending: PendingConnection): void {
    const remote = pending.remote;
    pending.upgraded = true;
    pending.close = () => stream.destroy();
    this.#streams.add(stream);
    stream.once("close", () => {
      pending.done();
      this.#streams.delete(stream);
    });
    stream.on("error", (err: Error) => log.v(2, "agent transport error", { remote, err }));
    const transport = acceptAnyIdent(stream, this.#ssh);
    (transport as Duplex & { remoteAddress?: string }).remoteAddress = remote;
    this.#handshakes.set(transport, pending);
    this.#ssh.injectSocket(transport as unknown as Socket);
  }

  #onConnection(conn: ssh2.Connection, info: ssh2.ClientInfo): void {
    const remote = info.ip ?? "unknown";
    // The transport ssh2 runs on: the key of this connection's handshake timer.
    const transport = (conn as unknown as { _sock?: object })._sock;
    // Once our decipher opens the agent's packets, the WebSocket may read into one buffer.
    (transport as Partial<WsConnStream> | undefined)?.setReadReuse?.(() => keepsNoInput(conn));
    // What the agent's streams may have in flight towards us, all channels together.
    limitReceive(conn, this.#opts.session?.receiveBudget ?? PROXY_RECEIVE_BUDGET);
    let authUser = "";
    let session: ProxySession | undefined;
    conn.on("error", (err: Error & { level?: string }) => {
      if (err.level === "client-timeout") {
        log.warn("Agent stopped answering keepalives; dropping the session", {
          remote,
          cluster: session?.cluster,
        });
        // Do not wait for a close handshake the silent peer will never answer.
        (transport as Duplex | undefined)?.destroy();
        return;
      }
      log.v(2, "agent ssh error", { remote, err: err.message });
    });
    conn.on("authentication", (ctx: ssh2.AuthContext) => {
      const user = ctx.username;
      if (ctx.method === "none" && user === "") return ctx.accept(); // the Go agent
      if (ctx.method !== "password") return ctx.reject(["password"]);
      if (user === "") return ctx.accept(); // the Go agent: the `config` request decides
      const rec = this.#opts.clusters.lookup(user);
      if (!rec || !rec.enabled || !secretsEqual(ctx.password, rec.token)) {
        log.warn("Unauthorized agent", {
          remote,
          cluster: user,
          reason: !rec ? "unknown cluster" : !rec.enabled ? "cluster not served" : "wrong token",
        });
        this.#opts.onHandshakeFailure?.("unauthorized");
        return ctx.reject([]);
      }
      authUser = user;
      ctx.accept();
    });
    conn.on("session", (_accept: unknown, reject: () => void) => {
      log.warn("Refusing a session channel opened by an agent", { remote });
      reject();
    });
    conn.on("tcpip", (_accept: unknown, reject: () => void, dst: ssh2.TcpipRequestInfo) => {
      log.warn("Refusing a channel opened by an agent", {
        remote,
        target: `${dst.destIP}:${dst.destPort}`,
      });
      reject();
    });
    conn.on("openssh.streamlocal", (_a: unknown, reject: () => void) => reject());
    conn.on("close", () => {
      if (session) {
        this.#conns.delete(session);
        session.ended();
        this.#opts.registry.remove(session);
        log.info("Agent disconnected", { cluster: session.cluster, session: session.id, remote });
      }
    });

    serveGlobalRequests(conn, (name, payload) => {
      switch (name) {
        case "ping":
          return { ok: true };
        case "config": {
          if (session) return { ok: false, payload: enc.encode("config already sent") };
          let cfg;
          try {
            cfg = decodeAgentConfig(payload, { maxBytes: this.#opts.maxConfigBytes });
          } catch (err) {
            const msg = err instanceof ConfigError ? err.message : String(err);
            log.warn("Refusing agent: bad config", { remote, reason: msg });
            this.#opts.onHandshakeFailure?.("bad_config");
            closeSoon(conn);
            return { ok: false, payload: enc.encode(`Invalid config: ${msg}`) };
          }
          const rec = this.#opts.clusters.lookup(cfg.Name);
          const why = !rec
            ? "unknown cluster"
            : !rec.enabled
            ? "cluster not served by proxy"
            : !secretsEqual(cfg.Token, rec.token)
            ? "wrong token"
            : authUser !== "" && authUser !== cfg.Name
            ? "name differs from ssh user"
            : undefined;
          if (why) {
            log.warn("Unauthorized agent", { remote, cluster: cfg.Name, reason: why });
            this.#opts.onHandshakeFailure?.("unauthorized");
            closeSoon(conn);
            return { ok: false, payload: enc.encode("Unauthorized agent") };
          }
          session = new ProxySession(conn, cfg, remote, this.#opts.session);
          keepRekeying(conn, this.#opts.rekey, { cluster: cfg.Name, session: session.id });
          const pending = transport ? this.#handshakes.get(transport) : undefined;
          pending?.onAuthenticated?.();
          pending?.done();
          log.info("Agent connected", {
            cluster: cfg.Name,
            session: session.id,
            remote,
            version: cfg.Version,
            token: redact(cfg.Token),
            kubernetes: cfg.KubernetesSvcHost,
            kubesphere: cfg.KubeSphereSvcHost,
          });
          this.#conns.set(session, conn);
          this.#opts.registry.add(session);
          return { ok: true };
        }
        default:
          return { ok: false };
      }
    });
  }

  /**
   * Ask every agent to connect a second session elsewhere before this one closes (the global
   * request {@link DRAIN_REQUEST}, no reply wanted: agents that do not know it ignore it).
   * Returns the number of sessions asked.
   */
  drain(): number {
    const name = new TextEncoder().encode(DRAIN_REQUEST);
    const body = new Uint8Array(4 + name.length + 1);
    new DataView(body.buffer).setUint32(0, name.length);
    body.set(name, 4);
    body[4 + name.length] = 0; // want-reply: false
    let n = 0;
    for (const conn of this.#conns.values()) {
      try {
        sendRawPacket(protocolOf(conn), MSG_GLOBAL_REQUEST, body);
        n++;
      } catch (err) {
        log.v(2, "cannot ask an agent to move", { err: (err as Error).message });
      }
    }
    return n;
  }

  /** Refuse new agents (503) from now on; established sessions stay. */
  stopAccepting(): void {
    this.#closing = true;
  }

  /** Stop taking agents and close every connection. */
  close(): void {
    this.#closing = true;
    for (const p of [...this.#pendings]) {
      p.done();
      p.close();
    }
    for (const s of this.#streams) s.destroy();
    this.#streams.clear();
  }
}

/** End a connection once the reply in flight has been written. */
function closeSoon(conn: ssh2.Connection): void {
  // The reply is written when the handler's promise settles; end after that turn.
  setTimeout(() => conn.end(), 0);
}
