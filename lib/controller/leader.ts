/**
 * `--leader-elect` wiring: run the Cluster controller only while this
 * replica holds the `tower` Lease (docs/protocol.md §7: lease 30 s, renew deadline 15 s,
 * retry 5 s). Losing the lease aborts the controller's signal, which stops
 * its worker and in-flight request at once; a standby that acquires the
 * lease starts reconciling. Without leader election the controller simply
 * runs until stopped.
 * @module
 */

import type { KubeClient } from "../kube/client.ts";
import { LeaderElector } from "../kube/leader.ts";
import { logger } from "../log.ts";
import type { ClusterController } from "./controller.ts";
import { TOWER_NAMESPACE } from "./types.ts";

const log = logger("controller/leader");

/** Lease settings. */
export interface LeaderElectionOptions {
  /** Unique per process (default `<hostname>_<uuid>`). */
  identity?: string;
  /** Lease name (default `tower`). */
  leaseName?: string;
  /** Lease namespace (default `kubesphere-system`). */
  namespace?: string;
  /** Default 30 000 ms. */
  leaseDurationMs?: number;
  /** Default 15 000 ms. */
  renewDeadlineMs?: number;
  /** Default 5 000 ms. */
  retryPeriodMs?: number;
  /** Told when this replica starts (true) or stops (false) leading. */
  onChange?(leading: boolean): void;
}

/** A default identity: host name plus a random suffix. */
function defaultIdentity(): string {
  let host = "tower";
  try {
    host = Deno.hostname();
  } catch {
    // no permission: keep the default
  }
  return `${host}_${crypto.randomUUID()}`;
}

/** Runs a controller, gated by a Lease when leader election is on. */
export class ControllerRunner {
  readonly #controller: ClusterController;
  readonly #elector?: LeaderElector;
  readonly identity: string;
  #ac?: AbortController;
  #runs = new Set<Promise<void>>();
  #started = false;

  /** `election` undefined: no leader election (always reconcile). */
  constructor(
    controller: ClusterController,
    client: KubeClient,
    election?: LeaderElectionOptions,
  ) {
    this.#controller = controller;
    this.identity = election?.identity ?? defaultIdentity();
    if (election) {
      this.#elector = new LeaderElector({
        client,
        identity: this.identity,
        name: election.leaseName ?? "tower",
        namespace: election.namespace ?? TOWER_NAMESPACE,
        leaseDurationMs: election.leaseDurationMs ?? 30_000,
        renewDeadlineMs: election.renewDeadlineMs ?? 15_000,
        retryPeriodMs: election.retryPeriodMs ?? 5_000,
        onStartedLeading: (signal) => {
          this.#run(signal);
          election.onChange?.(true);
        },
        onStoppedLeading: () => {
          log.info("stopped leading: no longer reconciling");
          election.onChange?.(false);
        },
        onNewLeader: (id) => {
          if (id !== this.identity) log.info("another replica leads", { leader: id });
        },
      });
    }
  }

  #run(signal: AbortSignal): void {
    const p = this.#controller.run(signal).catch((err) =>
      log.error("cluster controller stopped with an error", { err: (err as Error).message })
    ).finally(() => this.#runs.delete(p));
    this.#runs.add(p);
  }

  /** Start (campaigning for the lease, or reconciling at once). Idempotent. */
  start(): void {
    if (this.#started) return;
    this.#started = true;
    if (this.#elector) {
      this.#elector.start();
    } else {
      this.#ac = new AbortController();
      this.#run(this.#ac.signal);
    }
  }

  /** Whether this replica reconciles now (always true without leader election, once started). */
  isLeader(): boolean {
    if (this.#elector) return this.#elector.isLeader();
    return this.#started && !this.#ac?.signal.aborted;
  }

  /** The elector, when leader election is on. */
  get elector(): LeaderElector | undefined {
    return this.#elector;
  }

  /** Resolves once no controller run is active (e.g. after losing the lease). */
  async settled(): Promise<void> {
    while (this.#runs.size > 0) await Promise.all([...this.#runs]);
  }

  /**
   * Stop reconciling and wait for the controller to finish. With leader
   * election the lease is released (unless `release` is false, which
   * simulates a crash) so a standby takes over at once.
   */
  async stop(opts: { release?: boolean } = {}): Promise<void> {
    this.#ac?.abort();
    await this.#elector?.stop(opts);
    await this.settled();
  }
}
