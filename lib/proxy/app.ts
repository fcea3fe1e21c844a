/**
 * The proxy process wired together: host key, cluster source, tunnel server,
 * agent port, endpoints, the kubeconfig keeper, this replica's EndpointSlices
 * (through the cluster source), and reactions to cluster changes (token
 * rotation, removal).
 *
 * Shutdown order ("its slices go away before its sockets do"): readiness
 * turns false and new agents are refused; agents are asked to hand over
 * (`lib/handover.ts`: they connect to another replica first) and, for up to
 * `handoverMs`, this replica waits until each cluster it serves is served by
 * another live replica too; this replica's EndpointSlices and Lease are
 * withdrawn; the endpoints keep listening for `shutdownDelayMs` so
 * connections routed on a stale view still land; then they stop listening and
 * let in-flight requests finish (`graceMs`); only then are the agent sessions
 * closed (agents reconnect to another replica) and the sockets closed.
 * @module
 */

import { logger } from "../log.ts";
import { agentConnects, agentDisconnects, handshakeFailures, sessionsGauge } from "../metrics.ts";
import type { CA } from "../pki/mod.ts";
import type { HostKey } from "../tunnel/hostkey.ts";
import { EndpointsManager } from "./endpoints_manager.ts";
import { EpochCache } from "./epochs.ts";
import { KubeconfigKeeper } from "./kubeconfig_keeper.ts";
import { startAgentPort } from "./agent_port.ts";
import type { AgentPort } from "./agent_port.ts";
import type { ClusterSource } from "./clusters.ts";
import { SessionRegistry } from "./registry.ts";
import { TunnelServer, type TunnelServerOptions } from "./tunnel_server.ts";
import { installFastChaChaPoly } from "../tunnel/ssh_cipher.ts";

const log = logger("proxy");

/** Options for {@link ProxyApp}. */
export interface ProxyAppOptions {
  host: string;
  port: number;
  hostKey: HostKey;
  clusters: ClusterSource;
  /** Tower's CA: with it, connected clusters get their API endpoints and kubeconfigs. */
  ca?: CA;
  /** Address the per-cluster endpoints bind (default 0.0.0.0). */
  endpointsHost?: string;
  /** Largest request body on kubesphere endpoints (undefined: no limit). */
  kubesphereMaxRequestBody?: number;
  /** Endpoint clients must send a complete request head within this long. */
  httpIdleMs?: number;
  /** On shutdown, keep the endpoints listening this long after the slices are withdrawn. */
  shutdownDelayMs?: number;
  /** On shutdown, wait at most this long for agents to hand over to other replicas (default 10 s). */
  handoverMs?: number;
  /** Validity of the admin kubeconfigs' client certificates. */
  clientCertValidityMs?: number;
  /** Client connections each per-cluster endpoint keeps at once. */
  maxEndpointConnections?: number;
  /** Largest request head on the per-cluster endpoints. */
  maxRequestHead?: number;
  keepaliveMs?: number;
  handshakeTimeoutMs?: number;
  maxPendingHandshakes?: number;
  /** Most connections open on the agent port at once, agents' included. */
  maxAgentConnections?: number;
  /** Most sessions per cluster; the next one closes the oldest (see {@link SessionRegistry}). */
  maxSessionsPerCluster?: number;
  maxConfigBytes?: number;
  maxChannelsPerSession?: number;
  /** When agent sessions exchange SSH keys again (default: 1 GiB, 2^31 packets, 1 h). */
  rekey?: TunnelServerOptions["rekey"];
  onHandshakeFailure?: TunnelServerOptions["onHandshakeFailure"];
}

/** A running proxy. */
export class ProxyApp {
  readonly registry: SessionRegistry;
  readonly tunnel: TunnelServer;
  #opts: ProxyAppOptions;
  #port: AgentPort | undefined;
  #unsubscribe: (() => void) | undefined;
  #started = false;
  /** Per-cluster API endpoints (when a CA was given). */
  endpoints: EndpointsManager | undefined;
  /** Admin kubeconfigs (when a CA was given). */
  kubeconfigs: KubeconfigKeeper | undefined;
  #draining = false;
  #unwatch: (() => void)[] = [];

  constructor(opts: ProxyAppOptions) {
    this.#opts = opts;
    this.registry = new SessionRegistry({ maxPerCluster: opts.maxSessionsPerCluster });
    this.tunnel = new TunnelServer({
      hostKey: opts.hostKey,
      clusters: opts.clusters,
      registry: this.registry,
      keepaliveMs: opts.keepaliveMs,
      handshakeTimeoutMs: opts.handshakeTimeoutMs,
      maxPendingHandshakes: opts.maxPendingHandshakes,
      maxConfigBytes: opts.maxConfigBytes,
      session: { maxChannels: opts.maxChannelsPerSession },
      rekey: opts.rekey,
      onHandshakeFailure: (reason) => {
        handshakeFailures.inc({ reason });
        opts.onHandshakeFailure?.(reason);
      },
    });
  }

  /** The agent port's bound address (after {@link start}). */
  get addr(): Deno.NetAddr {
    if (!this.#port) throw new Error("proxy not started");
    return this.#port.addr;
  }

  /** Load clusters, then listen for agents. */
  async start(): Promise<void> {
    const { clusters } = this.#opts;
    // Both at once: a source that fails to load must be awaited before the rejection is seen.
    await Promise.all([clusters.ready(), installFastChaChaPoly()]);
    this.#unsubscribe = clusters.subscribe((name, rec) => {
      if (!rec || !rec.enabled) {
        const n = this.registry.closeCluster(
          name,
          rec ? "cluster no longer served" : "cluster removed",
        );
        if (n) {
          log.info("Closed sessions of a cluster that is no longer served", {
            cluster: name,
            sessions: n,
          });
        }
        return;
      }
      const n = this.registry.closeCluster(name, "token changed", (s) => s.token !== rec.token);
      if (n) {
        log.info("Token changed: closed sessions that used the old one", {
          cluster: name,
          sessions: n,
        });
      }
    });
    const counts = new Map<string, number>();
    this.registry.listen({
      changed: (cluster, n) => {
        const before = counts.get(cluster) ?? 0;
        if (n > before) agentConnects.inc({ cluster });
        else if (n < before) agentDisconnects.inc({ cluster });
        if (n === 0) counts.delete(cluster);
        else counts.set(cluster, n);
        sessionsGauge.set({ cluster }, n);
      },
      clusterUp: (cluster, session) => {
        clusters.agentConnected(cluster, session.config).catch((err) =>
          log.error("cannot record agent connection", { cluster, err: (err as Error).message })
        );
        clusters.servingChanged?.(cluster);
      },
      clusterDown: (cluster) => {
        clusters.agentDisconnected(cluster).catch((err) =>
          log.error("cannot record agent disconnection", { cluster, err: (err as Error).message })
        );
        clusters.servingChanged?.(cluster);
      },
    });
    if (this.#opts.ca) this.#startEndpoints(this.#opts.ca);
    await clusters.startPublishing?.((cluster) => {
      const s = this.endpoints?.serving(cluster);
      return s && { cluster, ...s };
    });
    this.#port = await startAgentPort(this.#opts.host, this.#opts.port, this.tunnel, {
      maxConnections: this.#opts.maxAgentConnections,
    });
    this.#started = true;
  }

  #startEndpoints(ca: CA): void {
    const { clusters } = this.#opts;
    const epochs = new EpochCache(ca, clusters);
    const keeper = this.kubeconfigs = new KubeconfigKeeper({
      ca,
      clusters,
      epochs,
      validityMs: this.#opts.clientCertValidityMs,
      // As before replicas: from the first agent on (the endpoints then run, answering 503
      // while no agent is there), or wherever another replica serves it.
      available: (c) => !!this.endpoints?.running(c) || (clusters.servedElsewhere?.(c) ?? false),
      mayWrite: () => clusters.mayWrite?.() ?? true,
    });
    this.endpoints = new EndpointsManager({
      ca,
      clusters,
      epochs,
      registry: this.registry,
      bindHost: this.#opts.endpointsHost,
      kubesphereMaxRequestBody: this.#opts.kubesphereMaxRequestBody,
      httpIdleMs: this.#opts.httpIdleMs,
      tlsHandshakeMs: this.#opts.handshakeTimeoutMs,
      maxConnections: this.#opts.maxEndpointConnections,
      maxRequestHead: this.#opts.maxRequestHead,
      onServing: (c) => {
        clusters.servingChanged?.(c);
        keeper.check(c);
      },
    });
    this.#unwatch.push(clusters.subscribe((name) => keeper.check(name)));
    const unwatch = clusters.watchServing?.((name) =>
      name ? keeper.check(name) : keeper.checkAll()
    );
    if (unwatch) this.#unwatch.push(unwatch);
    keeper.checkAll();
  }

  /**
   * Ask the agents to move, then wait (at most `ms`) until every cluster with a session here is
   * also served by another live replica, so withdrawing this replica's slices leaves no gap.
   */
  async #handOver(ms: number): Promise<void> {
    const { clusters } = this.#opts;
    const asked = this.tunnel.drain();
    if (asked === 0 || !clusters.servedElsewhere) return;
    const t0 = performance.now();
    const waiting = () => this.registry.clusters().filter((c) => !clusters.servedElsewhere!(c));
    let left = waiting();
    while (left.length > 0 && performance.now() - t0 < ms) {
      await new Promise((r) => setTimeout(r, 50));
      left = waiting();
    }
    log.info(left.length === 0 ? "Agents handed over" : "Handover incomplete", {
      sessions: asked,
      waitedMs: Math.round(performance.now() - t0),
      clustersOnlyHere: left.length,
    });
  }

  /** Ready: listening for agents, not draining, and the cluster source has loaded. */
  readiness(): { ok: boolean; detail: string[] } {
    const listening = this.#port !== undefined && !this.#draining;
    const source = this.#opts.clusters.readiness?.() ?? { ok: true, detail: [] };
    return {
      ok: listening && this.#started && source.ok,
      detail: [
        `agent port: ${this.#draining ? "draining" : this.#port ? "listening" : "not listening"}`,
        `clusters: ${this.#started ? `${this.#opts.clusters.list().length} known` : "loading"}`,
        ...source.detail,
        `sessions: ${this.registry.size}`,
      ],
    };
  }

  /**
   * Shut down: take no new agents; withdraw this replica's EndpointSlices; keep listening
   * `shutdownDelayMs` more; let in-flight requests finish for up to `graceMs`; then close every
   * session cleanly (agents reconnect to another replica at once) and stop watching clusters.
   */
  async close(graceMs = 0): Promise<void> {
    this.#draining = true;
    this.#unsubscribe?.();
    for (const u of this.#unwatch.splice(0)) u();
    this.tunnel.stopAccepting();
    if (this.#opts.clusters.withdraw) {
      await this.#handOver(Math.min(this.#opts.handoverMs ?? 10_000, Math.max(graceMs, 1_000)));
      await this.#opts.clusters.withdraw(Math.max(graceMs, 5_000));
      const delay = this.#opts.shutdownDelayMs ?? 0;
      if (delay > 0) {
        log.info("EndpointSlices withdrawn; still serving while clients catch up", {
          delayMs: delay,
        });
        await new Promise((r) => setTimeout(r, delay));
      }
    }
    await this.kubeconfigs?.close();
    await this.endpoints?.close(graceMs);
    this.registry.closeAll("proxy shutting down");
    await this.#port?.close();
    await this.#opts.clusters.close();
  }
}
