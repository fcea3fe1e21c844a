/**
 * The agent-facing side of the proxy: WebSocket upgrades with subprotocol
 * `kubesphere-v1`, SSH inside (ssh2 server), user auth, the `config`
 * handshake, keepalive, and registration of authenticated sessions.
 *
 * Every unauthenticated connection is bounded: at most `maxPendingHandshakes`
 * at once and `handshakeTimeoutMs` each (SSH and `config` included); whatever
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
import { serveGlobalRequests } from "../tunnel/ssh_requests.ts";
import { acceptAnyIdent } from "../tunnel/ssh_compat.ts";
import { websocketStream } from "../tunnel/ws_stream.ts";
import { SSH_ALGORITHMS, WS_PROTOCOL } from "../tunnel/protocol.ts";
import type { ClusterSource } from "./clusters.ts";
import type { SessionRegistry } from "./registry.ts";
import { ProxySession, type SessionLimits } from "./session.ts";

const log = logger("proxy/tunnel");
const enc = new TextEncoder();

/** Why a handshake failed (metrics label). */
export type HandshakeFailure =
  | "timeout"
  | "too_many_pending"
  | "bad_protocol"
  | "ssh_error"
  | "bad_config"
  | "unauthorized";

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
  #pending = 0;
  #streams = new Set<Duplex>();
  /** Transport given to ssh2 → "handshake finished" callback. */
  #handshakes = new WeakMap<object, () => void>();
  #closing = false;

  constructor(opts: TunnelServerOptions) {
    this.#opts = opts;
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
    return this.#pending;
  }

  /** Whether `req` asks for the agent tunnel (any `kubesphere-*` subprotocol). */
  static wantsTunnel(req: Request): boolean {
    return (req.headers.get("upgrade") ?? "").toLowerCase() === "websocket" &&
      /(^|,)\s*kubesphere-/i.test(req.headers.get("sec-websocket-protocol") ?? "");
  }

  /** Handle an upgrade request for the tunnel (see {@link TunnelServer.wantsTunnel}). */
  handle(req: Request, remote: string): Response {
    const protocols = (req.headers.get("sec-websocket-protocol") ?? "").split(",").map((s) =>
      s.trim()
    );
    if (!protocols.includes(WS_PROTOCOL)) {
      log.warn("Refusing agent with an unsupported protocol version", {
        remote,
        offered: protocols.join(","),
        want: WS_PROTOCOL,
      });
      this.#opts.onHandshakeFailure?.("bad_protocol");
      return new Response(`unsupported protocol version, want ${WS_PROTOCOL}\n`, { status: 400 });
    }
    if (this.#closing) return new Response("shutting down\n", { status: 503 });
    const max = this.#opts.maxPendingHandshakes ?? 256;
    if (this.#pending >= max) {
      log.warn("Refusing agent: too many handshakes in progress", { remote, max });
      this.#opts.onHandshakeFailure?.("too_many_pending");
      return new Response("too many handshakes in progress\n", {
        status: 503,
        headers: { "retry-after": "5" },
      });
    }
    let upgraded;
    try {
      upgraded = Deno.upgradeWebSocket(req, { protocol: WS_PROTOCOL, idleTimeout: 0 });
    } catch (err) {
      return new Response(`bad websocket upgrade: ${(err as Error).message}\n`, { status: 400 });
    }
    const stream = websocketStream(upgraded.socket);
    this.accept(stream, remote);
    return upgraded.response;
  }

  /** Run the SSH server side over any byte stream (WebSocket or, in tests, a socket). */
  accept(stream: Duplex, remote: string): void {
    this.#pending++;
    this.#streams.add(stream);
    let settled = false;
    const settle = () => {
      if (!settled) {
        settled = true;
        this.#pending--;
        clearTimeout(timer);
      }
    };
    const timeoutMs = this.#opts.handshakeTimeoutMs ?? 10_000;
    const timer = setTimeout(() => {
      if (settled) return;
      log.warn("Agent handshake timed out", { remote, timeout: `${timeoutMs}ms` });
      this.#opts.onHandshakeFailure?.("timeout");
      settle();
      stream.destroy();
    }, timeoutMs);
    stream.once("close", () => {
      settle();
      this.#streams.delete(stream);
    });
    stream.on("error", (err: Error) => log.v(2, "agent transport error", { remote, err }));
    const transport = acceptAnyIdent(stream, this.#ssh);
    (transport as Duplex & { remoteAddress?: string }).remoteAddress = remote;
    this.#handshakes.set(transport, settle);
    this.#ssh.injectSocket(transport as unknown as Socket);
  }

  #onConnection(conn: ssh2.Connection, info: ssh2.ClientInfo): void {
    const remote = info.ip ?? "unknown";
    // The transport ssh2 runs on: the key of this connection's handshake timer.
    const transport = (conn as unknown as { _sock?: object })._sock;
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
          if (transport) this.#handshakes.get(transport)?.();
          log.info("Agent connected", {
            cluster: cfg.Name,
            session: session.id,
            remote,
            version: cfg.Version,
            token: redact(cfg.Token),
            kubernetes: cfg.KubernetesSvcHost,
            kubesphere: cfg.KubeSphereSvcHost,
          });
          this.#opts.registry.add(session);
          return { ok: true };
        }
        default:
          return { ok: false };
      }
    });
  }

  /** Refuse new agents (503) from now on; established sessions stay. */
  stopAccepting(): void {
    this.#closing = true;
  }

  /** Stop taking agents and close every connection. */
  close(): void {
    this.#closing = true;
    for (const s of this.#streams) s.destroy();
    this.#streams.clear();
  }
}

/** End a connection once the reply in flight has been written. */
function closeSoon(conn: ssh2.Connection): void {
  // The reply is written when the handler's promise settles; end after that turn.
  setTimeout(() => conn.end(), 0);
}
