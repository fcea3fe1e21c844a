/**
 * The contract between the per-cluster HTTP endpoints and the tunnel: a dialer
 * that opens raw byte streams to a member's API server (an SSH `kubesphere`
 * channel in production, plain TCP in tests), each with the credentials of the
 * agent session that carries it.
 * @module
 */

import type { Duplex } from "node:stream";

/** A fresh raw stream to the member's API server and the session it rides on. */
export interface DialedStream {
  stream: Duplex;
  /** Identifies the session (agent link) carrying the stream; pooled streams are keyed by it. */
  key: string;
  /**
   * The credentials of that session (what its agent sent in `config`) to present on the
   * stream; `{}` for none (plain HTTP, the caller's own `Authorization` passes).
   */
  auth: UpstreamAuth;
}

/** Opens a raw byte stream to the member's API server (through an SSH `kubesphere` channel, in production). */
export interface UpstreamDialer {
  /**
   * Resolves a fresh raw stream. Rejects with {@link NoAgentError} (→ 503 Status naming the
   * cluster) when no agent is connected, {@link StreamLimitError} when the link is at its stream
   * limit, or another Error (→ 502 Status with the cause) when the agent cannot dial. `key`
   * identifies the session the stream rides on, so pooled streams of a dead session are never
   * reused.
   */
  dial(signal?: AbortSignal): Promise<DialedStream>;
  /**
   * Optional: whether the session `key` is still alive. When given, an idle pooled stream is only
   * reused if its session is live (streams of a dead session are destroyed instead).
   */
  isLive?(key: string): boolean;
}

/** No agent of the cluster is connected (answered with 503). */
export class NoAgentError extends Error {
  constructor(message = "no agent connected") {
    super(message);
    this.name = "NoAgentError";
  }
}

/**
 * The agent link has no room for another stream (its channel limit), even after giving up idle
 * ones: the dialer then tries the cluster's other agents, and a request none can take gets 502
 * (`lib/proxy/cluster_dialer.ts` decides).
 */
export class StreamLimitError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "StreamLimitError";
  }
}

/** TLS settings for the upstream connection (kubernetes endpoint). */
export interface UpstreamTls {
  /** CA bundle (PEM) that must have signed the member API server's certificate; default: system roots. */
  caPem?: string;
  /** Client certificate (PEM) to present. */
  certPem?: string;
  /** Key (PEM) of `certPem`. */
  keyPem?: string;
  /** Name (DNS name or IP) the server certificate must carry; also sent as SNI when it is a DNS name. */
  serverName: string;
  /**
   * Skip verifying the server certificate (only when the agent's kubeconfig says
   * `insecure-skip-tls-verify`); default false.
   */
  insecureSkipVerify?: boolean;
}

/** Credentials to present upstream (from one agent session's `config`). */
export interface UpstreamAuth {
  /** Speak TLS to the upstream (over the raw stream) with these settings; absent: plain HTTP. */
  tls?: UpstreamTls;
  /** Set as `Authorization: Bearer <token>` on every forwarded request. */
  bearerToken?: string;
}
