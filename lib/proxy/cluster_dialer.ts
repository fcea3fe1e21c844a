/**
 * How a request to a cluster's member API server gets a stream through the tunnel: the one owner
 * of the channel-limit path ({@link clusterDialer}). It decides which of the cluster's agent
 * sessions to try and in what order (the registry's pick: round-robin, sessions whose opens have
 * been failing last), what to do when a session is at its channel limit (give back one of that
 * session's idle pooled streams and wait for its place, else try the next session), and when to
 * give up: no session at all is {@link NoAgentError} (503); otherwise the last failure, a
 * {@link StreamLimitError} when every session tried was full (502, see `http/exchange.ts`).
 * `ProxySession` only counts its channels and refuses at its limit; the endpoints' HTTP pool
 * only gives up an idle stream when asked.
 * @module
 */

import type { Duplex } from "node:stream";
import {
  type DialedStream,
  NoAgentError,
  StreamLimitError,
  type UpstreamAuth,
  type UpstreamDialer,
} from "./http/upstream.ts";
import type { AgentSession, SessionRegistry } from "./registry.ts";
import { within } from "../within.ts";

/** How long an agent may take to confirm a channel (its dial of the target included). */
const OPEN_TIMEOUT_MS = 15_000;

/** Options of {@link clusterDialer}. */
export interface ClusterDialerOptions {
  registry: SessionRegistry;
  cluster: string;
  /** Which of each agent's two targets the streams go to. */
  kind: "kubernetes" | "kubesphere";
  /** The upstream credentials of a stream riding on `session`. */
  auth(session: AgentSession): UpstreamAuth;
  /**
   * Destroy one idle pooled stream riding on session `key`, so that its channel's place goes to
   * a new stream; false when there is none.
   */
  reclaimIdle(key: string): boolean;
  /**
   * The dial gave up because every session it tried was at its channel limit (the request is
   * answered 502). Called once per such refusal.
   */
  onChannelLimitRefusal?(): void;
  /** Default {@link OPEN_TIMEOUT_MS}. */
  openTimeoutMs?: number;
}

/** `p`, or an error after `ms` or on abort; a stream that arrives too late is destroyed. */
function openWithin(
  p: Promise<Duplex>,
  ms: number,
  target: string,
  signal?: AbortSignal,
): Promise<Duplex> {
  return within(p, ms, {
    what: `open ${target}`,
    signal,
    timedOut: `agent did not answer within ${ms} ms`,
    aborted: "client went away",
    late: (stream) => stream.destroy(),
    // A full session stays recognisable: the dialer then tries elsewhere.
    error: (message, cause) =>
      cause instanceof StreamLimitError
        ? new StreamLimitError(message)
        : new Error(message, { cause }),
  });
}

/** The dialer of one endpoint of `o.cluster` (see the module doc). */
export function clusterDialer(o: ClusterDialerOptions): UpstreamDialer {
  const { registry, cluster } = o;
  const ms = o.openTimeoutMs ?? OPEN_TIMEOUT_MS;

  /**
   * A stream on `session`. A channel this end destroyed counts against the limit until the
   * agent's CLOSE is back, and the session waits for such a place rather than refuse; when none
   * is on its way out, one idle pooled stream of the session is given back and the open made
   * again, once: a burst of keep-alive clients would otherwise get 502s for a limit held by idle
   * streams.
   */
  const openOn = async (session: AgentSession, signal?: AbortSignal): Promise<Duplex> => {
    const target = o.kind === "kubernetes"
      ? session.config.KubernetesSvcHost
      : session.config.KubeSphereSvcHost;
    try {
      return await openWithin(session.openStream(target), ms, target, signal);
    } catch (err) {
      if (!(err instanceof StreamLimitError) || signal?.aborted) throw err;
      if (!session.alive || !o.reclaimIdle(session.id)) throw err;
    }
    return await openWithin(session.openStream(target), ms, target, signal);
  };

  return {
    isLive: (key) => registry.sessions(cluster).some((s) => s.id === key && s.alive),
    dial: async (signal?: AbortSignal): Promise<DialedStream> => {
      // Try each live session once, those whose opens have been failing last: a session that
      // dies between pick and open, is at its stream limit, or whose agent refuses the
      // channel must not fail the request when another agent can take it.
      const tried = new Set<string>();
      let full = 0;
      let lastErr: Error | undefined;
      for (;;) {
        const session = registry.pick(cluster, tried);
        if (!session) break;
        tried.add(session.id);
        try {
          const stream = await openOn(session, signal);
          registry.reportOpen(session, true);
          return { stream, key: session.id, auth: o.auth(session) };
        } catch (err) {
          if (signal?.aborted) throw err; // the client went away: nothing to try elsewhere
          lastErr = err as Error;
          // The agent refused the channel or never answered (its dial failed: → 502 unless
          // another session takes it); a full or dead session says nothing about its agent.
          if (err instanceof StreamLimitError) full++;
          else if (session.alive) registry.reportOpen(session, false);
        }
      }
      if (lastErr === undefined) throw new NoAgentError(`cluster ${cluster}: no agent connected`);
      // Where the dialer gives up at the channel limit: every session it tried was full.
      if (full === tried.size) o.onChannelLimitRefusal?.();
      throw lastErr;
    },
  };
}
