/**
 * The agent: dial the proxy, run SSH over the WebSocket, present the cluster's
 * `config`, keep the session alive with `ping`, serve `kubesphere` channels to
 * the two configured targets only, and reconnect with jittered exponential
 * backoff when anything fails.
 * @module
 */

// @ts-types="@types/ssh2"
import ssh2 from "ssh2";
import { Buffer } from "node:buffer";
import type { Duplex } from "node:stream";
import { logger, redact } from "../log.ts";
import { type AgentConfig, encodeAgentConfig } from "../tunnel/handshake.ts";
import { fingerprintOf } from "../tunnel/hostkey.ts";
import { SSH_ALGORITHMS } from "../tunnel/protocol.ts";
import { installFastChaChaPoly, keepsNoInput } from "../tunnel/ssh_cipher.ts";
import type { WsConnStream } from "../tunnel/ws_stream.ts";
import { keepRekeying, type RekeyLimits } from "../tunnel/rekey.ts";
import { acceptAnyIdent, onKubesphereChannel } from "../tunnel/ssh_compat.ts";
import { GlobalRequester } from "../tunnel/ssh_requests.ts";
import { VERSION } from "../version.ts";
import { Backoff } from "./backoff.ts";
import { dialTarget, pipeChannel } from "./forward.ts";
import { SendBudget } from "../tunnel/send_budget.ts";
import { limitReceive } from "../tunnel/receive_budget.ts";
import { MemoryKnownProxies } from "./known_proxies.ts";
import { HostKeyRefused, ProxyTrust } from "./proxy_trust.ts";
import { dialProxy, tunnelUrl } from "./transport.ts";

const log = logger("agent");

/** SSH channel open-failure reason codes (RFC 4254 §5.1). */
const OPEN_ADMINISTRATIVELY_PROHIBITED = 1;
const OPEN_CONNECT_FAILED = 2;
const OPEN_RESOURCE_SHORTAGE = 4;

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
  /** Observer: session state changes (tests and metrics). */
  onState?: (state: "connected" | "disconnected", detail?: string) => void;
}

/**
 * Bytes the session's streams may hold on their way to the targets (windows granted plus what
 * the proxy sent that is not yet written to a target), see lib/tunnel/receive_budget.ts.
 */
export const AGENT_RECEIVE_BUDGET = 32 * 1024 * 1024;

/** The proxy refused this agent's config (bad token, unknown name, …). */
export class RefusedError extends Error {
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
  #client: ssh2.Client | undefined;
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
    const backoff = new Backoff({
      minMs: this.#opts.minRetryIntervalMs ?? 1000,
      maxMs: this.#opts.maxRetryIntervalMs ?? 120_000,
    });
    const maxRetry = this.#opts.maxRetry ?? 0;
    let failures = 0;
    const onAbort = () => this.#client?.end();
    signal.addEventListener("abort", onAbort);
    try {
      while (!signal.aborted) {
        let connected = false;
        try {
          connected = await this.#connectOnce(signal);
        } catch (err) {
          if (signal.aborted) break;
          const msg = (err as Error).message;
          if (err instanceof RefusedError) log.error("Proxy refused the agent", { reason: msg });
          else if (err instanceof HostKeyRefused) log.error(msg);
          else log.error("Connection to proxy failed", { err: msg });
        }
        if (signal.aborted) break;
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
    } finally {
      signal.removeEventListener("abort", onAbort);
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

  /** One connection; resolves true if it got to `Connected.` (then ended), false otherwise. */
  async #connectOnce(signal: AbortSignal): Promise<boolean> {
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
    const client = new ssh2.Client();
    this.#client = client;
    const allowed = new Set([cfg.KubernetesSvcHost, cfg.KubeSphereSvcHost].filter(Boolean));
    let connected = false;
    let hostKeyRefused: HostKeyRefused | undefined;
    let requester: GlobalRequester | undefined;
    let authMethod = 0;

    return await new Promise<boolean>((resolve, reject) => {
      let pingTimer: ReturnType<typeof setInterval> | undefined;
      let settled = false;
      const handshakeTimer = setTimeout(() => {
        finish(new Error(`handshake not finished within ${handshakeMs} ms`));
      }, handshakeMs);
      const finish = (err?: Error) => {
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
      client.on("error", (err: Error & { level?: string }) => {
        if (hostKeyRefused) return finish(hostKeyRefused);
        if (err.level === "client-authentication") {
          return finish(new RefusedError("Unauthorized agent: check --name and --token"));
        }
        finish(err);
      });
      client.on("close", () => finish());
      client.on("ready", async () => {
        log.info("Sending config");
        const reply = await requester!.request("config", encodeAgentConfig(cfg));
        if (settled) return;
        if (!reply.ok) {
          const msg = reply.payload ? new TextDecoder().decode(reply.payload) : "refused";
          return finish(new RefusedError(msg));
        }
        clearTimeout(handshakeTimer);
        connected = true;
        keepRekeying(client, this.#opts.rekey);
        log.info("Connected.");
        this.#opts.onState?.("connected");
        const keepalive = this.#opts.keepaliveMs ?? 30_000;
        let outstanding = false;
        pingTimer = setInterval(() => {
          if (outstanding) {
            return finish(new Error(`proxy did not answer ping within ${keepalive} ms`));
          }
          outstanding = true;
          requester!.request("ping", new Uint8Array(0)).then((r) => {
            outstanding = false;
            if (!r.ok) log.v(4, "ping refused by proxy");
          });
        }, keepalive);
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
        // Runs in every key exchange (rekeys included), before user authentication (the token)
        // and `config` on the first.
        hostVerifier: (key: Buffer) => {
          const fp = fingerprintOf(new Uint8Array(key));
          if (connected) log.v(2, "Proxy host key (key exchange)", { fingerprint: fp });
          else log.info("Proxy host key", { fingerprint: fp });
          hostKeyRefused = check.verify(fp);
          return hostKeyRefused === undefined;
        },
        // ssh2's own order ("none", then the password); before the first message, record a
        // first-seen host key (its signature is checked by now), or stop if that fails.
        authHandler: (_left: unknown, _partial: unknown, next: (m: string | false) => void) => {
          if (authMethod >= AUTH_METHODS.length) return false;
          const method = AUTH_METHODS[authMethod++];
          if (authMethod > 1) return method;
          check.commit().then(() => settled || next(method), (err: Error) => finish(err));
        },
      } as ssh2.ConnectConfig);
      requester = new GlobalRequester(client);
      // What this session's streams hold read from their targets and not yet sent.
      const budget = new SendBudget();
      onKubesphereChannel(client, (target, accept, rejectOpen) => {
        if (!allowed.has(target)) {
          log.warn("Refusing to dial a target that is not configured", { target });
          return rejectOpen(OPEN_ADMINISTRATIVELY_PROHIBITED, `target ${target} not allowed`);
        }
        // The proxy counts a channel until our CLOSE: a limit on pipes still finishing with
        // their targets after that refused its opens below its own limit of channels.
        const max = this.#opts.maxStreams ?? 1024;
        if (this.#streams >= max || this.#pipes >= 2 * max) {
          return rejectOpen(OPEN_RESOURCE_SHORTAGE, "too many streams");
        }
        this.#streams++;
        this.#pipes++;
        dialTarget(target).then(
          (conn) => {
            const channel = accept() as unknown as Duplex;
            // Counted out at the channel's close, or at the end of the pipe at the latest.
            let counted = true;
            const channelDone = () => {
              if (counted) this.#streams--;
              counted = false;
            };
            channel.once("close", channelDone);
            log.v(4, "Stream opened", { target, streams: this.#streams });
            pipeChannel(channel, conn, { budget, lingerMs: this.#opts.lingerMs }).finally(() => {
              channelDone();
              this.#pipes--;
              log.v(4, "Stream closed", { target, streams: this.#streams, pipes: this.#pipes });
            });
          },
          (err: Error) => {
            this.#streams--;
            this.#pipes--;
            log.warn("Cannot dial target", { target, err: err.message });
            rejectOpen(OPEN_CONNECT_FAILED, `dial ${target}: ${err.message}`);
          },
        );
      });
    });
  }
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
