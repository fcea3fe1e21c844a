/**
 * Port claims: which ports a Cluster's spec holds, and who keeps a port two
 * clusters hold (pure).
 * @module
 */

import type { ClusterObject } from "./types.ts";

function validPort(p: unknown): p is number {
  return typeof p === "number" && Number.isInteger(p) && p >= 1 && p <= 65535;
}

/** The port claim of one cluster, as read from its spec. */
export interface PortClaim {
  name: string;
  /** `metadata.creationTimestamp` (older claims win a collision). */
  created?: string;
  kubernetesPort?: number;
  kubespherePort?: number;
}

/** Whether `a` wins a port collision against `b`: older first, then name order. */
export function precedes(a: PortClaim, b: PortClaim): boolean {
  const ca = a.created ?? "";
  const cb = b.created ?? "";
  if (ca !== cb) return ca !== "" && (cb === "" || ca < cb);
  return a.name < b.name;
}

/**
 * Ports (both kinds) cluster `self` must avoid. Every other cluster's ports
 * count, except that when two clusters hold the same port (e.g. set by hand,
 * or by the Go tower's random pick), the older one (then the lower name)
 * keeps it and only the other one sees it as used and moves.
 */
export function portsUsedByOthers(self: PortClaim, all: Iterable<PortClaim>): Set<number> {
  const mine = new Set([self.kubernetesPort, self.kubespherePort].filter(validPort));
  const used = new Set<number>();
  for (const o of all) {
    if (o.name === self.name) continue;
    const iWin = precedes(self, o);
    for (const p of [o.kubernetesPort, o.kubespherePort]) {
      if (!validPort(p)) continue;
      if (iWin && mine.has(p)) continue;
      used.add(p);
    }
  }
  return used;
}

/** The port claim of a Cluster object. */
export function portClaim(c: ClusterObject): PortClaim {
  return {
    name: c.metadata.name,
    created: c.metadata.creationTimestamp,
    kubernetesPort: c.spec?.connection?.kubernetesAPIServerPort,
    kubespherePort: c.spec?.connection?.kubesphereAPIServerPort,
  };
}
