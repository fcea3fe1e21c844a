/**
 * Every cluster's port claims, indexed so that one reconcile's questions —
 * is this port held by another cluster that keeps it against me, and what is
 * the lowest free pair — cost O(1) and O(log n) amortised instead of a scan
 * of every cluster (10,000 clusters × a scan per reconcile is 10^8 steps).
 *
 * Ports are owned by claim keys (a cluster can have two claims at once: the
 * informer's and the one just written, which the cache may not show yet).
 * The lowest free pair comes from a high-water mark that only moves up past
 * taken ports, plus a min-heap of ports below it that were released since;
 * heap entries are checked when they surface (a port may be taken again by
 * hand), so answers stay exact and deterministic: the same claims give the
 * same pair as the linear {@link allocatePorts}.
 * @module
 */

import {
  KUBESPHERE_PORT_OFFSET,
  pairAllowed,
  type PortPair,
  type PortRange,
  type PortView,
} from "./ports.ts";
import { type PortClaim, precedes } from "./claims.ts";

function validPort(p: unknown): p is number {
  return typeof p === "number" && Number.isInteger(p) && p >= 1 && p <= 65535;
}

/** A binary min-heap of numbers. */
class MinHeap {
  readonly #a: number[] = [];
  get size(): number {
    return this.#a.length;
  }
  peek(): number | undefined {
    return this.#a[0];
  }
  push(v: number): void {
    const a = this.#a;
    a.push(v);
    let i = a.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (a[parent] <= v) break;
      a[i] = a[parent];
      i = parent;
    }
    a[i] = v;
  }
  pop(): number | undefined {
    const a = this.#a;
    const top = a[0];
    const last = a.pop();
    if (a.length === 0 || last === undefined) return top;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= a.length) break;
      const r = l + 1;
      const c = r < a.length && a[r] < a[l] ? r : l;
      if (a[c] >= last) break;
      a[i] = a[c];
      i = c;
    }
    a[i] = last;
    return top;
  }
}

/** The port claims of every cluster, for allocation. */
export class PortIndex {
  readonly #range: PortRange;
  readonly #reserved: ReadonlySet<number>;
  readonly #claims = new Map<string, PortClaim>();
  /** Port → keys of the claims holding it. */
  readonly #owners = new Map<number, string[]>();
  /** Every kubernetes port below this is taken, not allowed, or in {@link #heap}. */
  #hwm: number;
  readonly #heap = new MinHeap();
  readonly #queued = new Set<number>();

  constructor(range: PortRange, reserved: ReadonlySet<number> = new Set()) {
    this.#range = range;
    this.#reserved = reserved;
    this.#hwm = range.min;
  }

  /** Number of claims. */
  get size(): number {
    return this.#claims.size;
  }

  /** Add or replace the claim under `key` (the cluster name, or any key naming one of its claims). */
  set(key: string, claim: PortClaim): void {
    const old = this.#claims.get(key);
    if (
      old && old.name === claim.name && old.created === claim.created &&
      old.kubernetesPort === claim.kubernetesPort && old.kubespherePort === claim.kubespherePort
    ) return;
    if (old) this.delete(key);
    this.#claims.set(key, claim);
    for (const p of [claim.kubernetesPort, claim.kubespherePort]) {
      if (!validPort(p)) continue;
      const owners = this.#owners.get(p);
      if (!owners) this.#owners.set(p, [key]);
      else if (!owners.includes(key)) owners.push(key);
    }
  }

  /** Drop the claim under `key`; its ports become free when nobody else holds them. */
  delete(key: string): void {
    const old = this.#claims.get(key);
    if (!old) return;
    this.#claims.delete(key);
    for (const p of [old.kubernetesPort, old.kubespherePort]) {
      if (!validPort(p)) continue;
      const owners = this.#owners.get(p);
      if (!owners) continue;
      const i = owners.indexOf(key);
      if (i >= 0) owners.splice(i, 1);
      if (owners.length === 0) {
        this.#owners.delete(p);
        this.#released(p);
      }
    }
  }

  /** The claim under `key`. */
  get(key: string): PortClaim | undefined {
    return this.#claims.get(key);
  }

  /** A released port may complete a pair below the high-water mark: remember it. */
  #released(port: number): void {
    for (const p of [port, port - KUBESPHERE_PORT_OFFSET]) {
      if (p < this.#hwm && pairAllowed(p, this.#range, this.#reserved) && !this.#queued.has(p)) {
        this.#queued.add(p);
        this.#heap.push(p);
      }
    }
  }

  #taken(p: number): boolean {
    return this.#owners.has(p);
  }

  /** Whether any claim holds `port`. */
  isTaken(port: number): boolean {
    return this.#owners.has(port);
  }

  #globallyFree(p: number): boolean {
    return pairAllowed(p, this.#range, this.#reserved) && !this.#taken(p) &&
      !this.#taken(p + KUBESPHERE_PORT_OFFSET);
  }

  /** The lowest pair nobody holds (undefined when none). */
  #lowestGlobal(): number | undefined {
    let top = this.#heap.peek();
    while (top !== undefined && !this.#globallyFree(top)) {
      this.#heap.pop();
      this.#queued.delete(top);
      top = this.#heap.peek();
    }
    while (this.#hwm <= this.#range.max && !this.#globallyFree(this.#hwm)) this.#hwm++;
    const above = this.#hwm <= this.#range.max ? this.#hwm : undefined;
    if (top === undefined) return above;
    return above === undefined ? top : Math.min(top, above);
  }

  /**
   * Whether `port` is held by a claim of another cluster that keeps it against `self`: every
   * other cluster's port counts, except that when two clusters hold the same port, the older one
   * (then the lower name) keeps it and only the other one sees it as used.
   */
  usedByOthers(self: PortClaim, port: number): boolean {
    const owners = this.#owners.get(port);
    if (!owners) return false;
    const mine = port === self.kubernetesPort || port === self.kubespherePort;
    for (const key of owners) {
      const o = this.#claims.get(key)!;
      if (o.name === self.name) continue;
      if (!mine || !precedes(self, o)) return true;
    }
    return false;
  }

  /** The questions of `self`'s reconcile. */
  viewFor(self: PortClaim): PortView {
    const used = (p: number) => this.usedByOthers(self, p);
    return {
      usedByOthers: used,
      lowestFreePair: (): PortPair => {
        // Pairs nobody holds, and pairs only `self` holds part of (its own ports are free to it).
        let best = this.#lowestGlobal();
        for (const q of [self.kubernetesPort, self.kubespherePort]) {
          if (!validPort(q)) continue;
          for (const p of [q, q - KUBESPHERE_PORT_OFFSET]) {
            if (best !== undefined && p >= best) continue;
            if (!pairAllowed(p, this.#range, this.#reserved)) continue;
            if (!used(p) && !used(p + KUBESPHERE_PORT_OFFSET)) best = p;
          }
        }
        if (best === undefined) {
          throw new Error(`no free port pair left in ${this.#range.min}-${this.#range.max}`);
        }
        return { kubernetes: best, kubesphere: best + KUBESPHERE_PORT_OFFSET };
      },
    };
  }
}
