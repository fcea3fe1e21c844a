/**
 * Keeps each available cluster's admin kubeconfig issued, bound and valid,
 * in one place per deployment: wherever the cluster source may write (the
 * clusters file's directory in standalone mode; the Cluster object, by the
 * leader, in Kubernetes mode). The leader may hold no session of a cluster
 * that another replica serves, so this cannot live with the endpoints.
 *
 * A kubeconfig is (re-)issued when the one published is not for the
 * cluster's kubernetes endpoint, not bound to its current credential epoch
 * (token or credential generation changed), or has less than a third of its
 * validity left. Checks are cheap when nothing changed (the verdict on a
 * kubeconfig text is remembered until its renewal time), so every cluster
 * can be checked again every tenth of the validity (at most an hour). A check
 * that fails (the write was refused, the file system full) is tried again
 * after a backoff (1 s doubling to a minute), not at the next sweep: a cluster
 * must not go without its kubeconfig for hours because one write failed.
 * @module
 */

import { backoffDelay } from "../backoff.ts";
import { logger } from "../log.ts";
import { bindingUri, type CA, issueClientCert } from "../pki/mod.ts";
import { Slots } from "../slots.ts";
import type { ClusterSource } from "./clusters.ts";
import type { EpochCache } from "./epochs.ts";
import { ADMIN_USER, kubeconfigStillValid, renderKubeconfig } from "./kubeconfig.ts";

const log = logger("proxy/kubeconfig");

/** Default validity of the admin kubeconfig's client certificate. */
export const DEFAULT_CLIENT_CERT_VALIDITY_MS = 30 * 24 * 3600 * 1000;

/** A freshly written kubeconfig is not re-issued for this long while a cache still shows the old one. */
const CACHE_LAG_MS = 30_000;

/** Options of a {@link KubeconfigKeeper}. */
export interface KubeconfigKeeperOptions {
  ca: CA;
  clusters: ClusterSource;
  epochs: EpochCache;
  /** Validity of the client certificates (default 30 days); re-issued with a third left. */
  validityMs?: number;
  /** Whether some replica serves (or has served) `cluster`: only those get a kubeconfig. */
  available(cluster: string): boolean;
  /** Whether this process may write now (standalone: always; Kubernetes: the leader). */
  mayWrite(): boolean;
  /** Clusters checked at once (default 4). */
  concurrency?: number;
  /** First retry delay after a failed check (ms, default 1 000; doubles up to a minute). */
  retryInitialMs?: number;
  /** How long a cache may show the text from before our write (ms, default 30 000; tests). */
  cacheLagMs?: number;
}

interface Verdict {
  text: string;
  key: string;
  /** `Date.now()` after which the text needs renewing. */
  renewAt: number;
}

/** Issues and renews admin kubeconfigs. */
export class KubeconfigKeeper {
  readonly #o: KubeconfigKeeperOptions;
  readonly #validityMs: number;
  readonly #slots: Slots;
  readonly #pending = new Map<string, Promise<void>>();
  readonly #again = new Set<string>();
  /** The last verdict on each cluster's published text. */
  readonly #valid = new Map<string, Verdict>();
  /** What this process wrote last, and when (a cache may lag behind it). */
  readonly #written = new Map<
    string,
    { key: string; text: string; at: number; before: string | undefined }
  >();
  readonly #timer: ReturnType<typeof setInterval>;
  /** Consecutive failed checks by cluster, and the timer of the retry. */
  readonly #failures = new Map<string, number>();
  /** A check of the cluster due later (a retry, or the end of a cache's lag). */
  readonly #later = new Map<string, ReturnType<typeof setTimeout>>();
  #closed = false;
  /** Kubeconfigs issued (tests, logs). */
  issued = 0;

  constructor(opts: KubeconfigKeeperOptions) {
    this.#o = opts;
    this.#validityMs = opts.validityMs ?? DEFAULT_CLIENT_CERT_VALIDITY_MS;
    this.#slots = new Slots(opts.concurrency ?? 4);
    // A tenth of the validity (at most an hour) between sweeps: well inside the last third.
    this.#timer = setInterval(() => this.checkAll(), Math.min(this.#validityMs / 10, 3600_000));
  }

  /** Check every known cluster (after gaining the right to write, and periodically). */
  checkAll(): void {
    for (const rec of this.#o.clusters.list()) this.check(rec.name);
  }

  /** Check `cluster` soon; checks of one cluster never overlap. */
  check(cluster: string): void {
    if (this.#closed) return;
    if (this.#pending.has(cluster)) {
      this.#again.add(cluster);
      return;
    }
    const p = this.#slots.run(() => this.#check(cluster)).then(() => {
      this.#failures.delete(cluster); // the next failure starts the backoff afresh
    }, (err) => this.#failed(cluster, err as Error)).finally(() => {
      this.#pending.delete(cluster);
      if (this.#again.delete(cluster)) this.check(cluster);
    });
    this.#pending.set(cluster, p);
  }

  /** Check `cluster` again after a backoff that grows with its consecutive failures. */
  #failed(cluster: string, err: Error): void {
    const failures = this.#failures.get(cluster) ?? 0;
    this.#failures.set(cluster, failures + 1);
    const retryInMs = backoffDelay(failures, {
      initialMs: this.#o.retryInitialMs ?? 1_000,
      maxMs: 60_000,
    });
    log.error("Cannot publish the cluster's kubeconfig, will retry", {
      cluster,
      err: err.message,
      retryInMs,
    });
    this.#checkLater(cluster, retryInMs);
  }

  /** Check `cluster` in `ms`, unless a check is already pending (which stands, sooner or later). */
  #checkLater(cluster: string, ms: number): void {
    if (this.#closed || this.#later.has(cluster)) return;
    this.#later.set(
      cluster,
      setTimeout(() => {
        this.#later.delete(cluster);
        this.check(cluster);
      }, ms),
    );
  }

  /** Wait for the checks in flight (tests). */
  async settled(): Promise<void> {
    while (this.#pending.size > 0) await Promise.all([...this.#pending.values()]);
  }

  async #check(cluster: string): Promise<void> {
    if (this.#closed || !this.#o.mayWrite()) return;
    const rec = this.#o.clusters.lookup(cluster);
    if (!rec) {
      this.#valid.delete(cluster);
      this.#written.delete(cluster);
      return;
    }
    if (!rec.enabled || !rec.kubernetesEndpoint || !this.#o.available(cluster)) return;
    const epoch = this.#o.epochs.epoch(cluster);
    if (epoch === undefined) return;
    const binding = bindingUri({ cluster, epoch, role: "admin" });
    const server = rec.kubernetesEndpoint;
    const key = `${server}\n${binding}`;
    const current = await this.#o.clusters.currentKubeconfig?.(cluster);
    const now = Date.now();
    if (current !== undefined) {
      const v = this.#valid.get(cluster);
      if (v && v.text === current && v.key === key && now < v.renewAt) return;
      if (
        await kubeconfigStillValid(current, {
          server,
          ca: this.#o.ca,
          binding,
          minValidMs: this.#validityMs / 3,
        })
      ) {
        // Valid now; at worst it needs renewing a tenth of the validity from now.
        this.#valid.set(cluster, { text: current, key, renewAt: now + this.#validityMs / 10 });
        return;
      }
    }
    const w = this.#written.get(cluster);
    // We wrote it and the source still shows what was there before (an informer's cache lags
    // behind our write): look again once the lag is over. Any other text is someone else's
    // write, replaced at once.
    if (
      w && w.key === key && w.text !== current && current === w.before &&
      now - w.at < (this.#o.cacheLagMs ?? CACHE_LAG_MS)
    ) {
      this.#checkLater(cluster, w.at + (this.#o.cacheLagMs ?? CACHE_LAG_MS) - now);
      return;
    }
    const client = await issueClientCert(this.#o.ca, {
      commonName: ADMIN_USER,
      organizations: ["system:masters"],
      uris: [binding],
      validMs: this.#validityMs,
    });
    if (this.#closed || !this.#o.mayWrite()) return;
    const text = renderKubeconfig({
      cluster,
      server,
      caPem: this.#o.ca.certPem,
      certPem: client.certPem,
      keyPem: client.keyPem,
    });
    await this.#o.clusters.publishKubeconfig(cluster, text);
    this.issued++;
    this.#written.set(cluster, { key, text, at: Date.now(), before: current });
  }

  /** Stop; checks in flight finish. */
  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#timer);
    for (const t of this.#later.values()) clearTimeout(t);
    this.#later.clear();
    await this.settled();
  }
}
