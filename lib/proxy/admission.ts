/**
 * Slots for unauthenticated agent-port connections, shared fairly between
 * source addresses.
 *
 * Every connection holds a slot from TCP accept until its agent is accepted
 * (or it closes). While slots are free anyone gets one, so a fleet of agents
 * behind one NAT address or load balancer can use them all (after a proxy
 * restart, say). When they are all taken, a newcomer from a source holding
 * fewer than the busiest source less one takes the busiest source's oldest
 * slot, whose connection is closed; otherwise it is refused. So one source
 * flooding the port holds, under contention, about its share of the slots
 * and cannot keep an agent from another address out. IPv6 sources count by
 * /64 prefix (one host usually has the whole prefix).
 * @module
 */

/** A taken slot. */
export interface Slot {
  /** The source address group the slot counts against. */
  readonly source: string;
  /** Give the slot back (idempotent). */
  release(): void;
}

interface Entry extends Slot {
  /** Close the connection holding the slot (eviction). */
  evict: () => void;
  released: boolean;
}

/** The address group a remote address counts in: the IPv4 address, or an IPv6 /64. */
export function sourceKey(address: string): string {
  let a = address.replace(/^\[|\]$/g, "");
  const zone = a.indexOf("%");
  if (zone >= 0) a = a.slice(0, zone);
  if (!a.includes(":")) return a;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(a);
  if (mapped) return mapped[1];
  const [head, tail] = a.split("::");
  const left = head ? head.split(":") : [];
  const right = tail !== undefined && tail !== "" ? tail.split(":") : [];
  const groups = tail === undefined
    ? left
    : [...left, ...Array(Math.max(0, 8 - left.length - right.length)).fill("0"), ...right];
  return `${groups.slice(0, 4).map((g) => (parseInt(g, 16) || 0).toString(16)).join(":")}::/64`;
}

/** At most `max` slots, shared between sources as described in the module doc. */
export class AdmissionSlots {
  readonly max: number;
  /** Slots by source, oldest first. */
  #bySource = new Map<string, Entry[]>();
  #size = 0;

  constructor(max: number) {
    if (!Number.isInteger(max) || max < 1) {
      throw new Error(`admission: need a positive slot count, got ${max}`);
    }
    this.max = max;
  }

  /** Slots taken. */
  get size(): number {
    return this.#size;
  }

  /** Slots taken by `source`'s group (for tests and logs). */
  held(source: string): number {
    return this.#bySource.get(sourceKey(source))?.length ?? 0;
  }

  /**
   * Take a slot for a connection from `address`; `evict` closes that connection should a
   * newcomer from a less busy source need the slot. Undefined: refused (all slots taken and
   * the source already holds its share).
   */
  take(address: string, evict: () => void): Slot | undefined {
    const source = sourceKey(address);
    if (this.#size >= this.max && !this.#evictFor(source)) return undefined;
    const entry: Entry = {
      source,
      evict,
      released: false,
      release: () => this.#release(entry),
    };
    let list = this.#bySource.get(source);
    if (list === undefined) this.#bySource.set(source, list = []);
    list.push(entry);
    this.#size++;
    return entry;
  }

  /** Free a slot for `source` by evicting the busiest source's oldest; false if it may not. */
  #evictFor(source: string): boolean {
    const mine = this.#bySource.get(source)?.length ?? 0;
    let busiest: Entry[] | undefined;
    for (const list of this.#bySource.values()) {
      if (busiest === undefined || list.length > busiest.length) busiest = list;
    }
    if (busiest === undefined || busiest.length <= mine + 1) return false;
    const victim = busiest[0];
    this.#release(victim);
    try {
      victim.evict();
    } catch {
      // closing an already-broken connection: the slot is free either way
    }
    return true;
  }

  #release(entry: Entry): void {
    if (entry.released) return;
    entry.released = true;
    const list = this.#bySource.get(entry.source)!;
    list.splice(list.indexOf(entry), 1);
    if (list.length === 0) this.#bySource.delete(entry.source);
    this.#size--;
  }
}
