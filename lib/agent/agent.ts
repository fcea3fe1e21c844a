/**
 * The agent: dial the proxy, run SSH over the WebSocket, present the cluster's
 * `config`, keep the session alive with `ping`, serve `kubesphere` channels to
 * the two configured targets only, and reconnect with jittered exponential
 * backoff when anything fails.
 *
 * Handover: a Tower proxy replica shutting down sends the global request
 * `drain@tower.kubesphere.io` (no reply wanted; the original agent ignores
 * it). The agent then connects a second session at once (through the agent
 * Service, to another replica) and keeps the first until the proxy closes it,
 * so the cluster is served without a gap while the old replica drains.
 * @module
 */

// @ts-types="@types/ssh2"
import type ssh2 from "ssh2";
// @ts-types="@types/ssh2"
import type { ClientChannel } from "ssh2";
import { Buffer } from "node:buffer";
import type { Duplex } from "node:stream";
import { logger, redact } from "../log.ts";
import { type AgentConfig, encodeAgentConfig } from "../tunnel/handshake.ts";
import { fingerprintOf } from "../tunnel/hostkey.ts";
import { OPEN_FAILURE, SSH_ALGORITHMS } from "../tunnel/protocol.ts";
import { installFastChaChaPoly, keepsNoInput } from "../tunnel/ssh_cipher.ts";
import type { WsConnStream } from "../tunnel/ws_stream.ts";
import { keepRekeying, type RekeyLimits } from "../tunnel/rekey.ts";
import { onKubesphereChannel } from "../tunnel/channel_accept.ts";
import { acceptAnyIdent } from "../tunnel/ssh_ident.ts";
import { SSH2_CLIENT } from "../tunnel/ssh2_internals.ts";
import { GlobalRequester, serveGlobalRequests } from "../tunnel/ssh_requests.ts";
import { DRAIN_REQUEST } from "../handover.ts";
import { VERSION } from "../version.ts";
import { Backoff } from "../backoff.ts";
import { DIAL_TIMEOUT_MS, dialTarget, pipeChannel } from "./forward.ts";
import { SendBudget } from "../tunnel/send_budget.ts";
import { limitReceive } from "../tunnel/receive_budget.ts";
import { MemoryKnownProxies } from "./known_proxies.ts";
import { type HostKeyCheck, HostKeyRefused, ProxyTrust } from "./proxy_trust.ts";
import { dialProxy, tunnelUrl } from "./transport.ts";

const log = logger("agent");

/** Growth of the reconnect delay per failed attempt (the original tower's and chisel's). */
const RETRY_FACTOR = 1.4;

/** SSH user authentication methods tried, in order (the Go proxy takes "none"). */
const AUTH_METHODS = ["none", "password"] as const;

/** Agent settings (from flags). */
export interface AgentOptions {
  /** `--proxy-server`. */
  proxyServer: string;
  /** Produces the config to send; called before every connection (credentials may rotate). */
  config: () => Promise<AgentConfig>;
  /** `--keepalive` (default 30 s). */
  keepaliveMs?: number;
  /** `--max-retry`: consecutive failed attempts before giving up; 0 = forever. */
  maxRetry?: number;
  /** `--max-retry-interval` (default 2 min). */
  maxRetryIntervalMs?: number;
  /** First retry delay (default 1 s). */
  minRetryIntervalMs?: number;
  /** `--proxy-fingerprint`: `SHA256:…` the proxy host key must have (when `trust` is not given). */
  proxyFingerprint?: string;
  /**
   * Which proxy host keys to accept. Default: the pinned `proxyFingerprint`, else the first key
   * seen, remembered for the life of this process only.
   */
  trust?: ProxyTrust;
  /** `--proxy-ca`: extra trusted roots (PEM) for a `wss://` proxy. */
  proxyCaCerts?: string[];
  /** Deadline for connect + SSH + config (default 30 s). */
  handshakeTimeoutMs?: number;
  /**
   * Most tunnelled streams at once (default 1024): channels open (or their target being dialed),
   * as the proxy counts them. A stream whose channel is closed may still be finishing with its
   * target (writing what the channel brought, then waiting up to `LINGER_MS` for the target to
   * close): those count against twice this number, all streams together.
   */
  maxStreams?: number;
  /** How long a stream waits for its target to close once the channel is gone (`LINGER_MS`). */
  lingerMs?: number;
  /** When the session exchanges SSH keys again (lib/tunnel/rekey.ts defaults). */
  rekey?: RekeyLimits;
  /** How a target is dialled (default: TCP, `dialTarget` of ./forward.ts); tests wrap it. */
  dialTarget?: (target: string, timeoutMs: number) => Promise<Deno.TcpConn>;
  /** How long a target has to accept the connection (default `DIAL_TIMEOUT_MS`, 10 s). */
  dialTimeoutMs?: number;
  /** Observer: session state changes (tests and metrics). */
  onState?: (state: "connected" | "disconnected", detail?: string) => void;
}

/**
 * Bytes the session's streams may hold on their way to the targets (windows granted plus what
 * the proxy sent that is not yet written to a target), see lib/tunnel/receive_budget.ts.
 */
export const AGENT_RECEIVE_BUDGET = 32 * 1024 * 1024;

/** The proxy refused this agent's config (bad token, unknown name, …). */
class RefusedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RefusedError";
  }
}

/** A running agent. */
export class Agent {
  #opts: AgentOptions;
  #trust: ProxyTrust;
  #wakeUp: (() => void) | undefined;
  readonly #clients = new Set<ssh2.Client>();
  /** Reconnect loops running: one, or two during a handover. */
  #lanes = 0;
  /** Channels open, or whose target is being dialed. */
  #streams = 0;
  /** Pipes running, including those still finishing with their target after the channel. */
  #pipes = 0;

  constructor(opts: AgentOptions) {
    this.#opts = opts;
    tunnelUrl(opts.proxyServer); // validate early
    this.#trust = opts.trust ?? new ProxyTrust(
      opts.proxyFingerprint
        ? { kind: "pin", fingerprint: opts.proxyFingerprint }
        : { kind: "tofu", store: new MemoryKnownProxies() },
    );
  }

  /** Open tunnelled streams right now (channels open, or their target being dialed). */
  get streams(): number {
    return this.#streams;
  }

  /** Be told when the session comes up or goes down (in addition to `onState` in options). */
  onState(fn: (state: "connected" | "disconnected", detail?: string) => void): void {
    const prev = this.#opts.onState;
    this.#opts = {
      ...this.#opts,
      onState: (s, d) => {
        prev?.(s, d);
        fn(s, d);
      },
    };
  }

  /** Skip the current backoff wait and reconnect now (SIGHUP). */
  retryNow(): void {
    this.#wakeUp?.();
  }

  /**
   * Connect and stay connected until `signal` aborts.
   * @throws Error when `--max-retry` consecutive attempts failed.
   */
  async run(signal: AbortSignal): Promise<void> {
    await installFastChaChaPoly();
    const onAbort = () => {
      for (const c of this.#clients) c.end();
    };
    signal.addEventListener("abort", onAbort);
    const lanes = new Set<Promise<void>>();
    const failures: Error[] = [];
    const { promise: allDone, resolve: finished } = Promise.withResolvers<void>();
    const start = () => {
      this.#lanes++;
      const lane = this.#lane(signal, () => {
        // The proxy asks to move: a second lane connects now; this one ends with its session.
        if (this.#lanes < 2 && !signal.aborted) {
          log.info("Proxy is draining: connecting a second session before this one closes");
          start();
          return true;
        }
        return false;
      }).catch((err) => {
        failures.push(err as Error);
      }).finally(() => {
        this.#lanes--;
        lanes.delete(lane);
        if (lanes.size === 0) finished();
      });
      lanes.add(lane);
    };
    try {
      start();
      await allDone;
      if (failures.length > 0 && !signal.aborted) throw failures[0];
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
  }

  /**
   * One reconnect loop. `onDrain` is called when the proxy asks this lane's session to move; when
   * it answers true, the lane ends with that session instead of reconnecting.
   */
  async #lane(signal: AbortSignal, onDrain: () => boolean): Promise<void> {
    const backoff = new Backoff({
      initialMs: this.#opts.minRetryIntervalMs ?? 1000,
      maxMs: this.#opts.maxRetryIntervalMs ?? 120_000,
      factor: RETRY_FACTOR,
    });
    const maxRetry = this.#opts.maxRetry ?? 0;
    let failures = 0;
    let retiring = false;
    while (!signal.aborted) {
      let connected = false;
      try {
        connected = await this.#connectOnce(signal, () => {
          if (!retiring) retiring = onDrain();
        });
      } catch (err) {
        if (signal.aborted) break;
        const msg = (err as Error).message;
        if (err instanceof RefusedError) log.error("Proxy refused the agent", { reason: msg });
        else if (err instanceof HostKeyRefused) log.error(msg);
        else log.error("Connection to proxy failed", { err: msg });
      }
      if (signal.aborted || retiring) break;
      if (connected) {
        backoff.reset();
        failures = 0;
      } else {
        failures++;
        if (maxRetry > 0 && failures >= maxRetry) {
          throw new Error(
            `giving up after ${failures} failed attempts (--max-retry ${maxRetry})`,
          );
        }
      }
      const delay = backoff.next();
      log.info("Retrying", { in: `${Math.round(delay)}ms`, attempt: failures + 1 });
      await this.#sleep(delay, signal);
    }
  }

  #sleep(ms: number, signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", done);
        this.#wakeUp = undefined;
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal.addEventListener("abort", done);
      this.#wakeUp = done;
    });
  }

  /**
   * One connection; resolves true if it got to `Connected.` (then ended), false otherwise.
   * `onDrain` runs when the proxy asks this session to move elsewhere.
   */
  async #connectOnce(signal: AbortSignal, onDrain: () => void): Promise<boolean> {
    const cfg = await this.#opts.config();
    const url = tunnelUrl(this.#opts.proxyServer);
    let check;
    try {
      check = await this.#trust.begin(url);
    } catch (err) {
      throw new HostKeyRefused(
        `Cannot read the proxy host keys recorded on first use, so no key could be checked: ` +
          `${(err as Error).message}. Fix that, or run the agent with --proxy-fingerprint`,
      );
    }
    log.v(1, "Dialing proxy", { url: url.toString() });
    const handshakeMs = this.#opts.handshakeTimeoutMs ?? 30_000;
    const stream = await dialProxy(url, {
      signal,
      timeoutMs: handshakeMs,
      caCerts: this.#opts.proxyCaCerts,
    });
    log.info("Handshaking...");
    const client = new SSH2_CLIENT();
    this.#clients.add(client);
    const allowed = new Set([cfg.KubernetesSvcHost, cfg.KubeSphereSvcHost].filter(Boolean));
    let connected = false;
    let requester: GlobalRequester | undefined;

    return await new Promise<boolean>((resolve, reject) => {
      let pingTimer: ReturnType<typeof setInterval> | undefined;
      let settled = false;
      const handshakeTimer = setTimeout(() => {
        finish(new Error(`handshake not finished within ${handshakeMs} ms`));
      }, handshakeMs);
      const finish = (err?: Error) => {
        this.#clients.delete(client);
        clearTimeout(handshakeTimer);
        clearInterval(pingTimer);
        requester?.abort();
        client.end();
        stream.destroy();
        if (settled) return;
        settled = true;
        if (connected) {
          log.info("Disconnected from proxy", err ? { reason: err.message } : {});
          this.#opts.onState?.("disconnected", err?.message);
          resolve(true);
        } else reject(err ?? new Error("connection closed during handshake"));
      };
      const keyCallbacks = hostKeyCallbacks(check, () => connected, () => settled, finish);
      client.on("error", (err: Error & { level?: string }) => {
        const refused = keyCallbacks.refused();
        if (refused) return finish(refused);
        if (err.level === "client-authentication") {
          return finish(new RefusedError("Unauthorized agent: check --name and --token"));
        }
        finish(err);
      });
      client.on("close", () => finish());
      client.on("ready", () => {
        // Anything thrown here (a request on a connection torn down meanwhile, a rekey setup
        // that fails) ends this connection; it must not become an unhandled rejection.
        this.#sendConfig(requester!, cfg, () => settled).then((refusal) => {
          if (settled) return;
          if (refusal) return finish(refusal);
          clearTimeout(handshakeTimer);
          connected = true;
          keepRekeying(client, this.#opts.rekey);
          log.info("Connected.");
          this.#opts.onState?.("connected");
          pingTimer = this.#keepPinging(requester!, finish);
        }).catch((err: Error) => finish(err));
      });

      // Once our decipher opens the proxy's packets, the WebSocket may read into one buffer.
      (stream as Partial<WsConnStream>).setReadReuse?.(() => keepsNoInput(client));
      // What the proxy may have in flight towards our targets, all streams together.
      limitReceive(client, AGENT_RECEIVE_BUDGET);
      client.connect({
        sock: acceptAnyIdent(stream, client),
        username: cfg.Name,
        password: cfg.Token,
        ident: `Tower_${VERSION}`,
        algorithms: SSH_ALGORITHMS,
        readyTimeout: handshakeMs,
        hostVerifier: keyCallbacks.hostVerifier,
        authHandler: keyCallbacks.authHandler,
      } as ssh2.ConnectConfig);
      requester = new GlobalRequester(client);
      // What this session's streams hold read from their targets and not yet sent.
      const budget = new SendBudget();
      // The proxy's requests: its keepalives are refused as ssh2 does (proof enough that we are
      // alive), a drain starts the handover.
      serveGlobalRequests(client as unknown as ssh2.Connection, (name) => {
        if (name === DRAIN_REQUEST && connected) onDrain();
        return { ok: false };
      });
      onKubesphereChannel(client, (target, accept, rejectOpen) => {
        if (!allowed.has(target)) {
          log.warn("Refusing to dial a target that is not configured", { target });
          return rejectOpen(
            OPEN_FAILURE.ADMINISTRATIVELY_PROHIBITED,
            `target ${target} not allowed`,
          );
        }
        // The proxy counts a channel until our CLOSE: a limit on pipes still finishing with
        // their targets after that refused its opens below its own limit of channels.
        const max = this.#opts.maxStreams ?? 1024;
        if (this.#streams >= max || this.#pipes >= 2 * max) {
          return rejectOpen(OPEN_FAILURE.RESOURCE_SHORTAGE, "too many streams");
        }
        this.#serveStream(target, accept, rejectOpen, () => !settled, budget);
      });
    });
  }

  /** Send `config`; resolves with the proxy's refusal, or undefined when it accepted. */
  async #sendConfig(
    requester: GlobalRequester,
    cfg: AgentConfig,
    settled: () => boolean,
  ): Promise<RefusedError | undefined> {
    log.info("Sending config");
    const reply = await requester.request("config", encodeAgentConfig(cfg));
    if (reply.ok || settled()) return undefined;
    return new RefusedError(reply.payload ? new TextDecoder().decode(reply.payload) : "refused");
  }

  /** Ping every keepalive interval; `finish` the connection when a ping goes unanswered. */
  #keepPinging(
    requester: GlobalRequester,
    finish: (err: Error) => void,
  ): ReturnType<typeof setInterval> {
    const keepalive = this.#opts.keepaliveMs ?? 30_000;
    let outstanding = false;
    return setInterval(() => {
      if (outstanding) return finish(new Error(`proxy did not answer ping within ${keepalive} ms`));
      outstanding = true;
      try {
        requester.request("ping", new Uint8Array(0)).then((r) => {
          outstanding = false;
          if (!r.ok) log.v(4, "ping refused by proxy");
        });
      } catch (err) {
        finish(new Error(`cannot send ping: ${(err as Error).message}`));
      }
    }, keepalive);
  }

  /**
   * Dial `target` for a channel the proxy opened, then accept the channel and pipe it, or refuse
   * it. The session may end while the dial is under way (`live()` turns false): a channel
   * accepted then would belong to no connection and never close, so the target connection is
   * closed instead. Nothing here may reject unhandled (that ends the process).
   */
  #serveStream(
    target: string,
    accept: () => ClientChannel,
    rejectOpen: (reason?: number, description?: string) => void,
    live: () => boolean,
    budget: SendBudget,
  ): void {
    this.#streams++;
    this.#pipes++;
    const dialMs = this.#opts.dialTimeoutMs ?? DIAL_TIMEOUT_MS;
    (this.#opts.dialTarget ?? dialTarget)(target, dialMs).then(
      (conn) => {
        let channel: ClientChannel;
        try {
          if (!live()) throw new Error("the session ended during the dial");
          channel = accept();
        } catch (err) {
          this.#streams--;
          this.#pipes--;
          conn.close();
          log.v(2, "Dialled the target, but the channel is gone", {
            target,
            err: (err as Error).message,
          });
          return;
        }
        // Counted out at the channel's close, or at the end of the pipe at the latest.
        let counted = true;
        const channelDone = () => {
          if (counted) this.#streams--;
          counted = false;
        };
        channel.once("close", channelDone);
        log.v(4, "Stream opened", { target, streams: this.#streams });
        const lingerMs = this.#opts.lingerMs;
        pipeChannel(channel as unknown as Duplex, conn, { budget, lingerMs }).finally(() => {
          channelDone();
          this.#pipes--;
          log.v(4, "Stream closed", { target, streams: this.#streams, pipes: this.#pipes });
        });
      },
      (err: Error) => {
        this.#streams--;
        this.#pipes--;
        log.warn("Cannot dial target", { target, err: err.message });
        try {
          rejectOpen(OPEN_FAILURE.CONNECT_FAILED, `dial ${target}: ${err.message}`);
        } catch (e) {
          log.v(2, "Cannot refuse the channel: the session is gone", {
            target,
            err: (e as Error).message,
          });
        }
      },
    ).catch((err: Error) => log.error("Stream setup failed", { target, err: err.message }));
  }
}

/**
 * ssh2's `hostVerifier` and `authHandler` for one connection: the proxy's host key is judged in
 * every key exchange (rekeys included), before user authentication (the token) and `config` on
 * the first; a first-seen key is recorded before the first authentication message (its
 * signature is checked by then), or the connection stops if that fails. `refused()` is the
 * verdict that made `hostVerifier` say no.
 */
function hostKeyCallbacks(
  check: HostKeyCheck,
  connected: () => boolean,
  settled: () => boolean,
  finish: (err: Error) => void,
) {
  let refused: HostKeyRefused | undefined;
  let authMethod = 0;
  return {
    refused: () => refused,
    hostVerifier: (key: Buffer) => {
      const fp = fingerprintOf(new Uint8Array(key));
      if (connected()) log.v(2, "Proxy host key (key exchange)", { fingerprint: fp });
      else log.info("Proxy host key", { fingerprint: fp });
      refused = check.verify(fp);
      return refused === undefined;
    },
    // ssh2's own order ("none", then the password).
    authHandler: (_left: unknown, _partial: unknown, next: (m: string | false) => void) => {
      if (authMethod >= AUTH_METHODS.length) return false;
      const method = AUTH_METHODS[authMethod++];
      if (authMethod > 1) return method;
      check.commit().then(() => settled() || next(method)).catch((err: Error) => finish(err));
    },
  };
}

/** Log what the agent is about to do, secrets redacted. */
export function logStartup(cfg: AgentConfig, proxyServer: string): void {
  log.info("Agent starting", {
    name: cfg.Name,
    token: redact(cfg.Token),
    proxy: proxyServer,
    kubernetes: cfg.KubernetesSvcHost,
    kubesphere: cfg.KubeSphereSvcHost,
    version: VERSION,
  });
}
