/**
 * Leader election on a `coordination.k8s.io/v1` Lease, after client-go's
 * leaderelection: candidates try to acquire every retry period; the leader
 * renews every retry period and steps down (callback, aborted signal) as soon
 * as it has failed to renew for the renew deadline or sees another holder; a
 * lease counts as expired when its record has not changed for the lease
 * duration (measured on the local clock, so clock skew does not matter).
 * `stop()` releases a held lease so a standby takes over at once.
 * @module
 */

import { logger } from "../log.ts";
import { sleep } from "../backoff.ts";
import { errorText, type KubeClient } from "./client.ts";
import { KubeApiError } from "./errors.ts";
import { type KubeObject, LEASES } from "./types.ts";

const log = logger("kube/leader");

/** `spec` of a Lease. */
export interface LeaseSpec {
  holderIdentity?: string;
  leaseDurationSeconds?: number;
  acquireTime?: string;
  renewTime?: string;
  leaseTransitions?: number;
}

/** A `coordination.k8s.io/v1` Lease. */
export interface Lease extends KubeObject {
  spec?: LeaseSpec;
}

/** Options of a {@link LeaderElector}. */
export interface LeaderElectorOptions {
  client: KubeClient;
  /** This candidate's identity (unique per process, e.g. `<hostname>_<uuid>`). */
  identity: string;
  /** Lease name (default `tower`). */
  name?: string;
  /** Lease namespace (default `kubesphere-system`). */
  namespace?: string;
  /** How long a non-renewed lease blocks other candidates (ms, default 30 000). */
  leaseDurationMs?: number;
  /** How long the leader keeps trying to renew before stepping down (ms, default 15 000). */
  renewDeadlineMs?: number;
  /** Interval between acquire/renew attempts (ms, default 5 000). */
  retryPeriodMs?: number;
  /** Called on becoming leader; `signal` aborts when leadership ends. */
  onStartedLeading?(signal: AbortSignal): void | Promise<void>;
  /** Called when leadership ends (renew failure, lost lease, or stop). */
  onStoppedLeading?(): void;
  /** Called when the observed holder changes (including to this identity). */
  onNewLeader?(identity: string): void;
}

/** RFC 3339 with microseconds, as Kubernetes MicroTime. */
export function microTime(d: Date): string {
  return d.toISOString().replace(/\.(\d{3})Z$/, ".$1000Z");
}

/** A leader-election participant. */
export class LeaderElector {
  readonly #o: Required<
    Omit<LeaderElectorOptions, "onStartedLeading" | "onStoppedLeading" | "onNewLeader">
  >;
  readonly #cb: LeaderElectorOptions;
  #ac?: AbortController;
  #loop?: Promise<void>;
  #leading = false;
  #leadAc?: AbortController;
  #observedKey = "";
  #observedAt = 0;
  #observedHolder = "";
  #leaderWaiters: (() => void)[] = [];

  constructor(opts: LeaderElectorOptions) {
    const leaseDurationMs = opts.leaseDurationMs ?? 30_000;
    const renewDeadlineMs = opts.renewDeadlineMs ?? 15_000;
    const retryPeriodMs = opts.retryPeriodMs ?? 5_000;
    if (!opts.identity) throw new Error("leader election: identity required");
    if (leaseDurationMs <= renewDeadlineMs) {
      throw new Error("leader election: lease duration must be greater than renew deadline");
    }
    if (renewDeadlineMs <= retryPeriodMs) {
      throw new Error("leader election: renew deadline must be greater than retry period");
    }
    this.#o = {
      client: opts.client,
      identity: opts.identity,
      name: opts.name ?? "tower",
      namespace: opts.namespace ?? "kubesphere-system",
      leaseDurationMs,
      renewDeadlineMs,
      retryPeriodMs,
    };
    this.#cb = opts;
  }

  /** Whether this candidate currently holds the lease. */
  isLeader(): boolean {
    return this.#leading;
  }

  /** The last observed holder identity (`""` when none). */
  get leader(): string {
    return this.#observedHolder;
  }

  /** Resolves when this candidate becomes leader (at once if it is). */
  waitForLeadership(): Promise<void> {
    if (this.#leading) return Promise.resolve();
    return new Promise((resolve) => this.#leaderWaiters.push(resolve));
  }

  /** Start campaigning in the background (idempotent). */
  start(): void {
    if (this.#loop) return;
    this.#ac = new AbortController();
    this.#loop = this.#run(this.#ac.signal);
  }

  /**
   * Stop: leadership ends (callback), and a held lease is released unless
   * `release` is false (false simulates a crash in tests).
   */
  async stop(opts: { release?: boolean } = {}): Promise<void> {
    this.#ac?.abort();
    const wasLeading = await this.#loop?.then(() => this.#leading) ?? false;
    this.#loop = undefined;
    if (wasLeading) {
      this.#stepDown("stopped");
      if (opts.release ?? true) await this.#release();
    }
  }

  async #run(stop: AbortSignal): Promise<void> {
    const o = this.#o;
    while (!stop.aborted) {
      // Candidate: try to acquire every retry period (jittered).
      const acquired = await this.#tryAcquireOrRenew(
        AbortSignal.any([stop, AbortSignal.timeout(o.renewDeadlineMs)]),
      );
      if (stop.aborted) return;
      if (!acquired) {
        await sleep(o.retryPeriodMs * (1 + 0.2 * Math.random()), stop);
        continue;
      }
      this.#becomeLeader();
      let lastRenew = Date.now();
      // Leader: renew every retry period; step down when the renew deadline passes.
      while (!stop.aborted) {
        await sleep(o.retryPeriodMs, stop);
        if (stop.aborted) return;
        const remaining = lastRenew + o.renewDeadlineMs - Date.now();
        const renewed = remaining > 0 &&
          await this.#tryAcquireOrRenew(AbortSignal.any([stop, AbortSignal.timeout(remaining)]));
        if (stop.aborted) return;
        if (renewed) {
          lastRenew = Date.now();
          continue;
        }
        const lost = this.#observedHolder !== "" && this.#observedHolder !== o.identity;
        if (lost || Date.now() - lastRenew >= o.renewDeadlineMs) {
          log.warn("lost leadership", {
            lease: `${o.namespace}/${o.name}`,
            identity: o.identity,
            reason: lost ? `held by ${this.#observedHolder}` : "renew deadline exceeded",
          });
          this.#stepDown(lost ? "lease taken" : "renew deadline exceeded");
          break;
        }
      }
    }
  }

  #becomeLeader(): void {
    this.#leading = true;
    this.#leadAc = new AbortController();
    log.info("became leader", {
      lease: `${this.#o.namespace}/${this.#o.name}`,
      identity: this.#o.identity,
    });
    for (const w of this.#leaderWaiters.splice(0)) w();
    const signal = this.#leadAc.signal;
    try {
      const r = this.#cb.onStartedLeading?.(signal);
      if (r instanceof Promise) {
        r.catch((err) => log.error("onStartedLeading failed", { error: String(err) }));
      }
    } catch (err) {
      log.error("onStartedLeading failed", { error: String(err) });
    }
  }

  #stepDown(why: string): void {
    if (!this.#leading) return;
    this.#leading = false;
    this.#leadAc?.abort(new Error(`leadership ended: ${why}`));
    this.#leadAc = undefined;
    try {
      this.#cb.onStoppedLeading?.();
    } catch (err) {
      log.error("onStoppedLeading failed", { error: String(err) });
    }
  }

  #observe(spec: LeaseSpec | undefined): void {
    const holder = spec?.holderIdentity ?? "";
    const key = JSON.stringify([holder, spec?.renewTime ?? "", spec?.acquireTime ?? ""]);
    if (key !== this.#observedKey) {
      this.#observedKey = key;
      this.#observedAt = Date.now();
    }
    if (holder !== this.#observedHolder) {
      this.#observedHolder = holder;
      if (holder !== "") {
        try {
          this.#cb.onNewLeader?.(holder);
        } catch (err) {
          log.error("onNewLeader failed", { error: String(err) });
        }
      }
    }
  }

  /** One attempt; false on any failure (logged at high verbosity), never throws. */
  async #tryAcquireOrRenew(signal: AbortSignal): Promise<boolean> {
    const o = this.#o;
    const now = new Date();
    const mySpec: LeaseSpec = {
      holderIdentity: o.identity,
      leaseDurationSeconds: Math.max(1, Math.ceil(o.leaseDurationMs / 1000)),
      renewTime: microTime(now),
    };
    try {
      const lease = await o.client.tryGet<Lease>(LEASES, o.name, {
        namespace: o.namespace,
        signal,
      });
      if (!lease) {
        const created = await o.client.create<Lease>(LEASES, {
          metadata: { name: o.name, namespace: o.namespace },
          spec: { ...mySpec, acquireTime: microTime(now), leaseTransitions: 0 },
        }, { signal });
        this.#observe(created.spec);
        return true;
      }
      this.#observe(lease.spec);
      const holder = lease.spec?.holderIdentity ?? "";
      if (
        holder !== "" && holder !== o.identity &&
        this.#observedAt + o.leaseDurationMs > Date.now()
      ) {
        return false; // held by someone else and not expired
      }
      const spec: LeaseSpec = { ...lease.spec, ...mySpec };
      if (holder !== o.identity) {
        spec.acquireTime = microTime(now);
        spec.leaseTransitions = (lease.spec?.leaseTransitions ?? 0) + 1;
      }
      const updated = await o.client.update<Lease>(LEASES, { ...lease, spec }, { signal });
      this.#observe(updated.spec);
      return true;
    } catch (err) {
      log.v(2, "lease acquire/renew failed", {
        lease: `${o.namespace}/${o.name}`,
        status: err instanceof KubeApiError ? err.status : undefined,
        error: errorText(err),
      });
      return false;
    }
  }

  async #release(): Promise<void> {
    const o = this.#o;
    try {
      const lease = await o.client.tryGet<Lease>(LEASES, o.name, {
        namespace: o.namespace,
        timeoutMs: o.renewDeadlineMs,
      });
      if (!lease || lease.spec?.holderIdentity !== o.identity) return;
      const now = microTime(new Date());
      await o.client.update<Lease>(LEASES, {
        ...lease,
        spec: {
          ...lease.spec,
          holderIdentity: "",
          leaseDurationSeconds: 1,
          renewTime: now,
          acquireTime: now,
        },
      }, { timeoutMs: o.renewDeadlineMs });
      log.info("released lease", { lease: `${o.namespace}/${o.name}`, identity: o.identity });
    } catch (err) {
      log.warn("could not release lease", {
        lease: `${o.namespace}/${o.name}`,
        error: errorText(err),
      });
    }
  }
}
