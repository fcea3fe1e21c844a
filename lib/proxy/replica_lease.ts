/**
 * This replica's heartbeat: the Lease `tower-replica-<pod name>`, renewed
 * every `renewMs` (default 500 ms) with a short duration (default 2 s). The
 * leader reaps the EndpointSlices of a replica whose Lease stops moving
 * (`lib/controller/replicas.ts`), so a replica killed outright stops
 * receiving its clusters' traffic within seconds, long before its Pod is
 * deleted. One write per renewal (a PUT on the last version seen; a conflict
 * or a missing Lease costs a read or a create). A graceful stop deletes it.
 * @module
 */

import { sleep } from "../backoff.ts";
import type { KubeClient } from "../kube/client.ts";
import { errorText } from "../kube/client.ts";
import { KubeApiError } from "../kube/errors.ts";
import { type Lease, microTime } from "../kube/leader.ts";
import { LEASES } from "../kube/types.ts";
import { logger } from "../log.ts";
import { replicaLeaseName } from "../controller/replicas.ts";
import { REPLICA_LABEL } from "../controller/slices.ts";

const log = logger("proxy/replica-lease");

/** Options of a {@link ReplicaLease}. */
export interface ReplicaLeaseOptions {
  client: KubeClient;
  namespace: string;
  /** The replica (pod) name. */
  replica: string;
  /** The Pod's uid: the Lease is owned by the Pod, so deleting the Pod collects it. */
  podUid?: string;
  /** Renewal period (ms, default 500). */
  renewMs?: number;
  /** Lease duration (ms, default 2 000; rounded up to whole seconds in the Lease). */
  durationMs?: number;
}

/** Keeps this replica's Lease renewed while running. */
export class ReplicaLease {
  readonly #o: ReplicaLeaseOptions;
  readonly name: string;
  #ac?: AbortController;
  #loop?: Promise<void>;
  #last?: Lease;
  /** Renewals that reached the API (tests, logs). */
  renewals = 0;
  /** `performance.now()` when the last renewal was answered, and how long it took. */
  #renewedAt = -Infinity;
  #latencyMs = Infinity;

  constructor(opts: ReplicaLeaseOptions) {
    this.#o = opts;
    this.name = replicaLeaseName(opts.replica);
  }

  /** Renew once now (the first heartbeat before publishing slices), then keep renewing. */
  async start(): Promise<void> {
    if (this.#loop) return;
    this.#ac = new AbortController();
    let failing = false;
    await this.#renew(this.#ac.signal).catch((err) => {
      log.warn("Cannot renew the replica lease", { lease: this.name, err: errorText(err) });
      failing = true;
    });
    this.#loop = this.#run(this.#ac.signal, failing);
  }

  /** Renew every `renewMs`; a run of failures is logged once, and its end too. */
  async #run(signal: AbortSignal, failing: boolean): Promise<void> {
    while (!signal.aborted) {
      await sleep(this.#o.renewMs ?? 500, signal);
      if (signal.aborted) break;
      try {
        await this.#renew(signal);
        if (failing) log.info("Replica lease renewed again", { lease: this.name });
        failing = false;
      } catch (err) {
        if (signal.aborted) break;
        if (!failing) {
          log.warn("Cannot renew the replica lease", { lease: this.name, err: errorText(err) });
        }
        failing = true;
      }
    }
  }

  #body(base?: Lease): Lease {
    const durationMs = this.#o.durationMs ?? 2_000;
    const now = microTime(new Date());
    return {
      ...(base ?? {}),
      metadata: {
        ...(base?.metadata ?? {}),
        name: this.name,
        namespace: this.#o.namespace,
        labels: { ...(base?.metadata.labels ?? {}), [REPLICA_LABEL]: this.#o.replica },
        ...(this.#o.podUid && !base
          ? {
            ownerReferences: [{
              apiVersion: "v1",
              kind: "Pod",
              name: this.#o.replica,
              uid: this.#o.podUid,
              controller: false,
            }],
          }
          : {}),
      },
      spec: {
        ...(base?.spec ?? {}),
        holderIdentity: this.#o.replica,
        leaseDurationSeconds: Math.max(1, Math.ceil(durationMs / 1000)),
        renewTime: now,
        ...(base ? {} : { acquireTime: now }),
      },
    };
  }

  async #renew(signal: AbortSignal): Promise<void> {
    const { client, namespace } = this.#o;
    const sentAt = performance.now();
    const timeoutMs = this.#o.durationMs ?? 2_000;
    try {
      if (this.#last) {
        this.#last = await client.update<Lease>(LEASES, this.#body(this.#last), {
          namespace,
          signal,
          timeoutMs,
        });
      } else {
        this.#last = await client.create<Lease>(LEASES, this.#body(), {
          namespace,
          signal,
          timeoutMs,
        });
      }
    } catch (err) {
      if (
        !(err instanceof KubeApiError) || !(err.isConflict || err.isNotFound || err.status === 409)
      ) {
        throw err;
      }
      // Changed or deleted meanwhile (the leader reaps a Lease it judged expired): start over.
      const cur = await client.tryGet<Lease>(LEASES, this.name, { namespace, signal, timeoutMs });
      this.#last = cur
        ? await client.update<Lease>(LEASES, this.#body(cur), { namespace, signal, timeoutMs })
        : await client.create<Lease>(LEASES, this.#body(), { namespace, signal, timeoutMs });
    }
    this.renewals++;
    this.#renewedAt = performance.now();
    this.#latencyMs = this.#renewedAt - sentAt;
  }

  /**
   * Whether this replica's heartbeat gets through briskly: its last renewal was answered within
   * the Lease's duration and took at most a quarter of it. When renewals queue on a slow API
   * server, every replica's do alike, and peers' Leases then look stale for part of each cycle
   * even to a fresh read: its view of who is alive is no better than theirs of it (see
   * `mayJudge` of ../controller/replicas.ts).
   */
  renewedInTime(): boolean {
    const durationMs = this.#o.durationMs ?? 2_000;
    return performance.now() - this.#renewedAt <= durationMs && this.#latencyMs <= durationMs / 4;
  }

  /** Stop renewing; with `release` (default) delete the Lease so nobody waits for it to expire. */
  async stop(opts: { release?: boolean } = {}): Promise<void> {
    this.#ac?.abort();
    await this.#loop;
    this.#loop = undefined;
    if (!(opts.release ?? true) || !this.#last) return;
    try {
      await this.#o.client.delete(LEASES, this.name, {
        namespace: this.#o.namespace,
        timeoutMs: 5_000,
        preconditions: { uid: this.#last.metadata.uid },
      });
    } catch (err) {
      if (!(err instanceof KubeApiError && err.isNotFound)) {
        log.warn("Cannot delete the replica lease", { lease: this.name, err: errorText(err) });
      }
    }
  }
}
