/**
 * Each cluster's credential epoch (`lib/pki/binding.ts`), computed from the
 * Cluster this process sees (token and credential generation) and cached
 * until they change. Every replica checks client certificates against it, and
 * the kubeconfig keeper binds the certificates it issues to it.
 * @module
 */

import { type CA, credentialEpoch } from "../pki/mod.ts";
import type { ClusterSource } from "./clusters.ts";

/** Credential epochs by cluster. */
export class EpochCache {
  readonly #ca: CA;
  readonly #clusters: ClusterSource;
  readonly #epochs = new Map<string, { token: string; generation: string; epoch: string }>();

  constructor(ca: CA, clusters: ClusterSource) {
    this.#ca = ca;
    this.#clusters = clusters;
  }

  /**
   * The current epoch of `cluster` (undefined without a token: nothing is accepted).
   * Certificates bound to any other epoch are refused.
   */
  epoch(cluster: string): string | undefined {
    const rec = this.#clusters.lookup(cluster);
    if (!rec?.token) return undefined;
    const generation = rec.credentialGeneration ?? "";
    const known = this.#epochs.get(cluster);
    if (known && known.token === rec.token && known.generation === generation) return known.epoch;
    const epoch = credentialEpoch(this.#ca, { cluster, token: rec.token, generation });
    this.#epochs.set(cluster, { token: rec.token, generation, epoch });
    return epoch;
  }

  /** Drop what is cached for a cluster that is gone. */
  forget(cluster: string): void {
    this.#epochs.delete(cluster);
  }
}
