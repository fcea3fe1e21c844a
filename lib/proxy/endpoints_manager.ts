/**
 * Runs each connected cluster's two API endpoints: started when the cluster's
 * first agent connects, kept while the cluster is served, stopped when it goes
 * away or stops being served, restarted when its ports change. Issues the
 * serving certificate from Tower's CA; client certificates must be bound to
 * the cluster and the current generation of its credentials
 * (`lib/pki/binding.ts`): when the credentials change, certificates of the old
 * generation are refused and their open connections closed. Each stream
 * carries the upstream credentials of the agent session it rides on. (The
 * admin kubeconfig is the kubeconfig keeper's: `kubeconfig_keeper.ts`.)
 *
 * A cluster is *served* here while its endpoints listen and it has a live
 * session: what this replica's EndpointSlice says (`onServing` tells).
 * @module
 */

import { Buffer } from "node:buffer";
import { logger } from "../log.ts";
import {
  bytesCounter,
  channelLimitRefusals,
  requestDuration,
  requestsCounter,
} from "../metrics.ts";
import { type CA, issueServingCert, verifyClientCert } from "../pki/mod.ts";
import type { AgentConfig } from "../tunnel/handshake.ts";
import { clientAccess } from "./client_access.ts";
import type { ClusterRecord, ClusterSource } from "./clusters.ts";
import { type ClusterEndpoints, startClusterEndpoints } from "./endpoint.ts";
import type { UpstreamAuth, UpstreamDialer } from "./http/upstream.ts";
import { clusterDialer } from "./cluster_dialer.ts";
import type { EpochCache } from "./epochs.ts";
import type { AgentSession, SessionRegistry } from "./registry.ts";
import { Slots } from "../slots.ts";

/** Clusters whose endpoints are set up at the same time (see `#syncSlots`). */
const SYNC_CONCURRENCY = 4;

const log = logger("proxy/endpoints");

/** Hosts every serving certificate also names (as a kube-apiserver's does). */
const IN_CLUSTER_NAMES = ["kubernetes", "kubernetes.default", "kubernetes.default.svc"];

/** Options for {@link EndpointsManager}. */
export interface EndpointsManagerOptions {
  ca: CA;
  clusters: ClusterSource;
  registry: SessionRegistry;
  /** Address the per-cluster listeners bind (default 0.0.0.0). */
  bindHost?: string;
  /** Largest request body on kubesphere endpoints (undefined: no limit). */
  kubesphereMaxRequestBody?: number;
  /** A client must send a complete request head within this long (idle keep-alive included). */
  httpIdleMs?: number;
  /** A client must complete its TLS handshake within this long. */
  tlsHandshakeMs?: number;
  /** Client connections each endpoint keeps at once. */
  maxConnections?: number;
  /** Largest request head on the endpoints. */
  maxRequestHead?: number;
  /** Credential epochs client certificates are checked against. */
  epochs: EpochCache;
  /** Told when whether `cluster` is served here may have changed (endpoints up or down). */
  onServing?(cluster: string): void;
}

interface Running {
  endpoints: ClusterEndpoints;
  kubernetesPort: number;
  kubespherePort: number;
  hosts: string;
  /** The credential epoch its connections were last checked against. */
  epoch?: string;
}

/** The SAN lists of a serving certificate for `rec`. */
function servingNames(rec: ClusterRecord): { dnsNames: string[]; ipAddresses: string[] } {
  const ip = /^(\d{1,3}(\.\d{1,3}){3}|[0-9a-fA-F:]*:[0-9a-fA-F:]+)$/;
  const hosts = [...new Set([...rec.endpointHosts, "127.0.0.1", "localhost"])];
  return {
    dnsNames: [...new Set([...hosts.filter((h) => !ip.test(h)), ...IN_CLUSTER_NAMES])],
    ipAddresses: hosts.filter((h) => ip.test(h)),
  };
}

/**
 * The kube-apiserver credentials an agent sent in its `config`: TLS verified with its CA,
 * presenting its client certificate, else its bearer token. (Its ks-apiserver gets none: the
 * kubesphere endpoint has no authentication of its own, so the caller's `Authorization` passes.)
 */
function kubernetesAuth(cfg: AgentConfig): UpstreamAuth {
  const text = (b?: Uint8Array) => (b && b.length ? Buffer.from(b).toString("utf8") : undefined);
  const host = cfg.KubernetesSvcHost.replace(/:\d+$/, "").replace(/^\[|\]$/g, "");
  return {
    tls: {
      caPem: text(cfg.CAData),
      certPem: text(cfg.CertData),
      keyPem: text(cfg.KeyData),
      serverName: host,
    },
    bearerToken: cfg.CertData?.length ? undefined : text(cfg.BearerToken),
  };
}

/** No credentials (the kubesphere endpoint's streams). */
const NO_AUTH: UpstreamAuth = Object.freeze({});

/** Keeps the endpoints of every connected cluster running. */
export class EndpointsManager {
  #opts: EndpointsManagerOptions;
  #running = new Map<string, Running>();
  #pending = new Map<string, Promise<void>>();
  /**
   * Clusters set up at once. A proxy restart brings a thousand agents back within seconds, and
   * setting up each cluster's endpoints (a serving certificate, listeners, the kubeconfig check)
   * all at once starved the handshakes and held every half-built setup in memory: with four at a
   * time the agents were back in 6 s instead of 13, every cluster was served sooner (10 s
   * instead of 13) and the proxy peaked 30 MiB lower.
   */
  readonly #syncSlots = new Slots(SYNC_CONCURRENCY);
  #closed = false;
  #unsubscribe: (() => void)[] = [];
  /** Each session's kube-apiserver credentials, made once; gone with the session. */
  readonly #sessionAuth = new WeakMap<AgentSession, UpstreamAuth>();

  constructor(opts: EndpointsManagerOptions) {
    this.#opts = opts;
    this.#unsubscribe.push(opts.registry.listen({
      clusterUp: (cluster) => this.#queue(cluster),
      removed: (session) => this.#running.get(session.cluster)?.endpoints.dropSession(session.id),
    }));
    this.#unsubscribe.push(opts.clusters.subscribe((name) => {
      if (this.#running.has(name) || opts.registry.sessions(name).length > 0) this.#queue(name);
    }));
  }

  /** The current credential epoch of `cluster` (certificates bound to any other are refused). */
  epoch(cluster: string): string | undefined {
    return this.#opts.epochs.epoch(cluster);
  }

  /** Whether `cluster`'s endpoints run here (from its first agent on, sessions or not). */
  running(cluster: string): boolean {
    return this.#running.has(cluster) && !this.#closed;
  }

  /**
   * What this replica serves of `cluster`: its endpoints listen and a live session can carry
   * requests (undefined otherwise).
   */
  serving(cluster: string): { kubernetesPort: number; kubespherePort: number } | undefined {
    const r = this.#running.get(cluster);
    if (!r || this.#closed) return undefined;
    if (!this.#opts.registry.sessions(cluster).some((s) => s.alive)) return undefined;
    return {
      kubernetesPort: r.endpoints.kubernetesPort,
      kubespherePort: r.endpoints.kubespherePort,
    };
  }

  /** Ports of a running cluster (tests, logs). */
  ports(cluster: string): { kubernetes: number; kubesphere: number } | undefined {
    const r = this.#running.get(cluster);
    return r && { kubernetes: r.endpoints.kubernetesPort, kubesphere: r.endpoints.kubespherePort };
  }

  /** Wait for pending work on `cluster` (tests). */
  settled(cluster: string): Promise<void> {
    return this.#pending.get(cluster) ?? Promise.resolve();
  }

  /** Serialise work per cluster: each change waits for the previous one. */
  #queue(cluster: string): void {
    const prev = this.#pending.get(cluster) ?? Promise.resolve();
    const next = prev.then(() => this.#syncSlots.run(() => this.#sync(cluster))).catch((err) => {
      const message = (err as Error).message;
      log.error("Cannot serve cluster endpoints", { cluster, err: message });
      this.#opts.clusters.endpointsStatus?.(cluster, message);
    });
    this.#pending.set(cluster, next);
    next.finally(() => {
      if (this.#pending.get(cluster) === next) this.#pending.delete(cluster);
    });
  }

  async #sync(cluster: string): Promise<void> {
    if (this.#closed) return;
    const rec = this.#opts.clusters.lookup(cluster);
    const running = this.#running.get(cluster);
    if (!rec || !rec.enabled || !rec.kubernetesPort || !rec.kubespherePort) {
      if (running) await this.#stop(cluster, rec ? "cluster no longer served" : "cluster removed");
      if (!rec) this.#opts.epochs.forget(cluster);
      return;
    }
    const hosts = JSON.stringify(servingNames(rec));
    if (
      running && running.kubernetesPort === rec.kubernetesPort &&
      running.kubespherePort === rec.kubespherePort
    ) {
      if (running.hosts !== hosts) {
        running.endpoints.updateServingCert(await this.#servingCert(rec));
        running.hosts = hosts;
      }
      const epoch = this.epoch(cluster);
      if (running.epoch !== epoch) {
        running.epoch = epoch;
        await running.endpoints.revalidate();
        log.info("Cluster credentials changed: earlier certificates refused", { cluster });
      }
      return;
    }
    if (running) await this.#stop(cluster, "ports changed");
    if (!this.#opts.registry.pick(cluster)) return; // starts when an agent connects
    const endpoints = await startClusterEndpoints({
      cluster,
      host: this.#opts.bindHost ?? "0.0.0.0",
      kubernetesPort: rec.kubernetesPort,
      kubespherePort: rec.kubespherePort,
      servingCert: await this.#servingCert(rec),
      verifyClient: (der) => verifyClientCert(this.#opts.ca, der),
      access: (verdict) => clientAccess(verdict, cluster, this.epoch(cluster)),
      kubesphereMaxRequestBody: this.#opts.kubesphereMaxRequestBody,
      clientIdleMs: this.#opts.httpIdleMs,
      tlsHandshakeMs: this.#opts.tlsHandshakeMs,
      maxConnections: this.#opts.maxConnections,
      maxRequestHead: this.#opts.maxRequestHead,
      kubernetes: this.#dialer(cluster, "kubernetes"),
      kubesphere: this.#dialer(cluster, "kubesphere"),
      onRequest: (r) => {
        const endpoint = r.endpoint;
        requestsCounter.inc({ cluster, endpoint, code: String(r.status) });
        if (!r.upgrade) requestDuration.observe({ cluster, endpoint }, r.durationMs / 1000);
        bytesCounter.inc({ cluster, direction: "in" }, r.bytesIn);
        bytesCounter.inc({ cluster, direction: "out" }, r.bytesOut);
      },
    });
    // The series exists from the start, so that the alert's increase() sees the first refusal.
    channelLimitRefusals.inc({ cluster }, 0);
    this.#running.set(cluster, {
      endpoints,
      kubernetesPort: rec.kubernetesPort,
      kubespherePort: rec.kubespherePort,
      hosts,
      epoch: this.epoch(cluster),
    });
    this.#opts.clusters.endpointsStatus?.(cluster, undefined);
    log.info("Serving cluster endpoints", {
      cluster,
      kubernetes: endpoints.kubernetesPort,
      kubesphere: endpoints.kubespherePort,
    });
    this.#opts.onServing?.(cluster);
  }

  #servingCert(rec: ClusterRecord) {
    return issueServingCert(this.#opts.ca, {
      commonName: `tower-${rec.name}`,
      ...servingNames(rec),
    });
  }

  /** The kube-apiserver credentials of `session` (its own `config`, nobody else's). */
  #authOf(session: AgentSession): UpstreamAuth {
    let auth = this.#sessionAuth.get(session);
    if (!auth) {
      auth = kubernetesAuth(session.config);
      this.#sessionAuth.set(session, auth);
    }
    return auth;
  }

  /** The dialer of one endpoint of `cluster`: `cluster_dialer.ts` decides which session. */
  #dialer(cluster: string, kind: "kubernetes" | "kubesphere"): UpstreamDialer {
    return clusterDialer({
      registry: this.#opts.registry,
      cluster,
      kind,
      auth: (session) => kind === "kubernetes" ? this.#authOf(session) : NO_AUTH,
      // At the limit, an idle pooled stream of the session gives its channel back.
      reclaimIdle: (key) => this.#running.get(cluster)?.endpoints.dropIdle(key) ?? false,
      onChannelLimitRefusal: () => {
        channelLimitRefusals.inc({ cluster });
        log.v(2, "every agent session is at its channel limit", { cluster, endpoint: kind });
      },
    });
  }

  async #stop(cluster: string, reason: string, graceMs = 0): Promise<void> {
    const r = this.#running.get(cluster);
    if (!r) return;
    this.#running.delete(cluster);
    this.#opts.onServing?.(cluster);
    await r.endpoints.close(graceMs);
    log.info("Stopped cluster endpoints", { cluster, reason });
  }

  /** Stop every endpoint, letting in-flight requests finish for up to `graceMs`. */
  async close(graceMs = 0): Promise<void> {
    this.#closed = true;
    for (const u of this.#unsubscribe) u();
    await Promise.allSettled([...this.#pending.values()]);
    await Promise.all(
      [...this.#running.keys()].map((c) => this.#stop(c, "proxy shutting down", graceMs)),
    );
  }
}
