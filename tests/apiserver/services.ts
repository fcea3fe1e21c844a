/**
 * Service semantics: ClusterIP allocation from the service CIDR, `nodePort`
 * allocation for NodePort/LoadBalancer Services, defaults (protocol,
 * targetPort, sessionAffinity, ipFamilies) and keeping allocations across
 * updates, as the real registry does.
 * @module
 */

import { invalid, type KubeObject, type ResourceDef } from "./types.ts";

type Obj = Record<string, unknown>;

/** Service CIDR and node-port range. */
export interface ServiceNetwork {
  /** IPv4 CIDR, e.g. `10.96.0.0/12`. */
  cidr: string;
  nodePortMin: number;
  nodePortMax: number;
}

/** The default network (kubeadm's). */
export const DEFAULT_NETWORK: ServiceNetwork = {
  cidr: "10.96.0.0/12",
  nodePortMin: 30000,
  nodePortMax: 32767,
};

function ipToInt(ip: string): number {
  const p = ip.split(".").map(Number);
  if (p.length !== 4 || p.some((x) => !(x >= 0 && x <= 255))) return NaN;
  return ((p[0] << 24) >>> 0) + (p[1] << 16) + (p[2] << 8) + p[3];
}

function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join(".");
}

function cidrRange(cidr: string): { first: number; last: number } {
  const [base, bits] = cidr.split("/");
  const size = 2 ** (32 - Number(bits));
  const first = ipToInt(base);
  return { first, last: first + size - 1 };
}

function needsNodePorts(type: unknown): boolean {
  return type === "NodePort" || type === "LoadBalancer";
}

/**
 * Default and allocate `svc` (mutated) given the other Services and, on
 * update, the previous version. Throws 422 Invalid like the real server.
 */
export function prepareService(
  def: ResourceDef,
  svc: KubeObject,
  old: KubeObject | undefined,
  others: readonly Readonly<KubeObject>[],
  net: ServiceNetwork,
): void {
  const name = svc.metadata.name ?? "";
  const spec = (svc.spec ??= {}) as Obj;
  const oldSpec = (old?.spec ?? {}) as Obj;
  spec.type ??= "ClusterIP";
  spec.sessionAffinity ??= "None";
  const ports = (spec.ports ??= []) as Obj[];
  const usedIps = new Set(
    others.map((o) => (o.spec as Obj | undefined)?.clusterIP).filter(Boolean),
  );
  const usedPorts = new Set<number>();
  for (const o of others) {
    for (const p of ((o.spec as Obj | undefined)?.ports ?? []) as Obj[]) {
      if (typeof p.nodePort === "number") usedPorts.add(p.nodePort);
    }
  }
  // ClusterIP: immutable once set; an update that omits it keeps the old one.
  if (old && (spec.clusterIP === undefined || spec.clusterIP === "")) {
    if (oldSpec.clusterIP) spec.clusterIP = oldSpec.clusterIP;
  }
  if (old && oldSpec.clusterIP && spec.clusterIP !== oldSpec.clusterIP) {
    throw invalid(def, name, [{
      field: "spec.clusterIP",
      message: `Invalid value: ${JSON.stringify(spec.clusterIP)}: field is immutable`,
    }]);
  }
  if (spec.type === "ExternalName") {
    delete spec.clusterIP;
  } else if (!old || !oldSpec.clusterIP) {
    const range = cidrRange(net.cidr);
    if (spec.clusterIP === undefined || spec.clusterIP === "") {
      let ip = "";
      // .0 is the network, .1 is the `kubernetes` Service's; scan deterministically.
      const used = new Set([...usedIps].map((x) => ipToInt(String(x))));
      for (let n = range.first + 1; n < range.last; n++) {
        if (!used.has(n)) {
          ip = intToIp(n);
          break;
        }
      }
      if (!ip) {
        throw invalid(def, name, [{
          field: "spec.clusterIPs",
          message: "Internal error: range is full",
        }]);
      }
      spec.clusterIP = ip;
    } else if (spec.clusterIP !== "None") {
      const n = ipToInt(String(spec.clusterIP));
      if (!(n >= range.first && n <= range.last)) {
        throw invalid(def, name, [{
          field: "spec.clusterIPs",
          message:
            `Invalid value: ${
              JSON.stringify(spec.clusterIP)
            }: failed to allocate IP ${spec.clusterIP}: the provided IP (${spec.clusterIP}) ` +
            `is not in the valid range. The range of valid IPs is ${net.cidr}`,
        }]);
      }
      if (usedIps.has(spec.clusterIP)) {
        throw invalid(def, name, [{
          field: "spec.clusterIPs",
          message: `Invalid value: ${
            JSON.stringify(spec.clusterIP)
          }: failed to allocate IP ${spec.clusterIP}: provided IP is already allocated`,
        }]);
      }
    }
  }
  if (spec.clusterIP !== undefined) {
    spec.clusterIPs = [spec.clusterIP];
    spec.ipFamilies ??= ["IPv4"];
    spec.ipFamilyPolicy ??= "SingleStack";
    spec.internalTrafficPolicy ??= "Cluster";
  }
  const oldPorts = (oldSpec.ports ?? []) as Obj[];
  for (const p of ports) {
    p.protocol ??= "TCP";
    if (p.targetPort === undefined) p.targetPort = p.port;
    if (!needsNodePorts(spec.type)) {
      delete p.nodePort;
      continue;
    }
    if (p.nodePort === undefined || p.nodePort === 0) {
      const same = oldPorts.find((o) =>
        o.nodePort && o.port === p.port && (o.protocol ?? "TCP") === p.protocol
      );
      if (same) {
        p.nodePort = same.nodePort;
        usedPorts.add(Number(same.nodePort));
        continue;
      }
      let port = 0;
      for (let n = net.nodePortMin; n <= net.nodePortMax; n++) {
        if (!usedPorts.has(n)) {
          port = n;
          break;
        }
      }
      if (!port) {
        throw invalid(def, name, [{
          field: "spec.ports[0].nodePort",
          message: "Internal error: range is full",
        }]);
      }
      p.nodePort = port;
      usedPorts.add(port);
    } else {
      const n = Number(p.nodePort);
      const mine = oldPorts.some((o) => o.nodePort === n);
      if (n < net.nodePortMin || n > net.nodePortMax) {
        throw invalid(def, name, [{
          field: "spec.ports[0].nodePort",
          message: `Invalid value: ${n}: provided port is not in the valid range. ` +
            `The range of valid ports is ${net.nodePortMin}-${net.nodePortMax}`,
        }]);
      }
      if (usedPorts.has(n) && !mine) {
        throw invalid(def, name, [{
          field: "spec.ports[0].nodePort",
          message: `Invalid value: ${n}: provided port is already allocated`,
        }]);
      }
      usedPorts.add(n);
    }
  }
  if (spec.type === "LoadBalancer" || spec.type === "NodePort") {
    spec.externalTrafficPolicy ??= "Cluster";
  }
  if (spec.type === "LoadBalancer") spec.allocateLoadBalancerNodePorts ??= true;
  svc.status ??= { loadBalancer: {} };
}
