/**
 * The desired state of one Cluster and its `mc-<name>` Service (SPEC §3 steps
 * 1–5), computed by pure functions from what was observed: no I/O, no clock,
 * no randomness except through the injected token generator. The controller
 * applies the plan; a plan with nothing to do means the objects are already
 * right, so a reconcile of an up-to-date Cluster writes nothing.
 * @module
 */

import { randomToken } from "../secret.ts";
import { type PortView, portViewFromSet } from "./ports.ts";
import {
  AGENT_CONNECTED_MESSAGE,
  AGENT_NOT_CONNECTED_MESSAGE,
  type ClusterCondition,
  type ClusterObject,
  CONDITION_AGENT_AVAILABLE,
  CONDITION_EXTERNAL_ACCESS_READY,
  CONDITION_INITIALIZED,
  type ConditionStatus,
  isProxyCluster,
  LB_ANNOTATIONS_KEY,
  MANAGED_ANNOTATIONS_KEY,
  SERVICE_KUBERNETES_PORT,
  SERVICE_KUBESPHERE_PORT,
  serviceName,
  type ServiceObject,
  type ServicePort,
  TOWER_NAMESPACE,
} from "./types.ts";

export { type PortClaim, portClaim, portsUsedByOthers } from "./claims.ts";

/** What this proxy knows about a cluster's agents. */
export type AgentState = "connected" | "disconnected" | "unknown";

/** Everything one reconcile of cluster `name` looks at. */
export interface ReconcileInput {
  /** Cluster name (the work-queue key). */
  name: string;
  /** The Cluster as observed, or undefined when it does not exist. */
  cluster: ClusterObject | undefined;
  /** Its `mc-<name>` Service as observed, or undefined. */
  service: ServiceObject | undefined;
  /**
   * The ports question of this cluster: which ports others keep, the lowest free pair
   * (`PortIndex.viewFor`). Takes precedence over {@link portsUsedByOthers}.
   */
  ports?: PortView;
  /** Ports (both kinds) held by every other cluster, for small callers (the default range). */
  portsUsedByOthers?: ReadonlySet<number>;
  /**
   * Whether the `mc-<name>` Service selects the proxy pods (the single-replica layout of old,
   * where the proxy publishes no EndpointSlices). Default false: the Service selects nothing and
   * each replica serving the cluster publishes an EndpointSlice for it.
   */
  selectPods?: boolean;
  /**
   * Agents of this cluster: `unknown` leaves `AgentAvailable` as it is (e.g.
   * just after start, before agents had a chance to reconnect).
   */
  agent: AgentState;
  /**
   * Why this proxy cannot serve the cluster's endpoints although its agent is
   * connected (e.g. a port in use); shown on `AgentAvailable`.
   */
  endpointError?: string;
  /** Current time, for condition timestamps. */
  now: Date;
  /** `--publish-service-address`: endpoints use it and the allocated ports. */
  publishAddress?: string;
  /** Namespace of the Service (default `kubesphere-system`). */
  namespace?: string;
  /** Token generator (default: 32 CSPRNG bytes as hex). */
  newToken?: () => string;
}

/** An Event to record on the Cluster. */
export interface ClusterEvent {
  type: "Normal" | "Warning";
  reason: string;
  message: string;
}

/** What to do with the Service. */
export type ServiceAction =
  | { kind: "none" }
  | { kind: "create"; service: ServiceObject }
  | { kind: "update"; service: ServiceObject }
  | { kind: "delete"; name: string; namespace: string };

/** The outcome of {@link reconcileCluster}. */
export interface ReconcilePlan {
  /**
   * The whole Cluster to write back (spec and status changed together), or
   * undefined when nothing changed. Carries the observed resourceVersion.
   */
  cluster?: ClusterObject;
  /** The Service change. A create/update must be applied before {@link cluster}. */
  service: ServiceAction;
  /** Events describing the transitions in this plan. */
  events: ClusterEvent[];
}

/** A condition Tower wants, without timestamps. */
export interface DesiredCondition {
  type: string;
  status: ConditionStatus;
  reason: string;
  message: string;
}

/** Kubernetes `metav1.Time` text: RFC 3339, second precision, UTC. */
export function kubeTime(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, "Z");
}

/**
 * Set a condition in a list, preserving every other entry and its position.
 * Unchanged (same status, reason, message) → the same array is returned.
 * `lastTransitionTime` moves only when the status flips.
 */
export function setCondition(
  conditions: readonly ClusterCondition[] | undefined,
  want: DesiredCondition,
  now: Date,
): { conditions: ClusterCondition[]; changed: boolean; flipped: boolean } {
  const list = [...(conditions ?? [])];
  const i = list.findIndex((c) => c.type === want.type);
  const ts = kubeTime(now);
  if (i < 0) {
    list.push({ ...want, lastUpdateTime: ts, lastTransitionTime: ts });
    return { conditions: list, changed: true, flipped: true };
  }
  const cur = list[i];
  if (
    cur.status === want.status && (cur.reason ?? "") === want.reason &&
    (cur.message ?? "") === want.message
  ) {
    return { conditions: conditions as ClusterCondition[], changed: false, flipped: false };
  }
  const flipped = cur.status !== want.status;
  list[i] = {
    ...cur,
    ...want,
    lastUpdateTime: ts,
    lastTransitionTime: flipped ? ts : (cur.lastTransitionTime ?? ts),
  };
  return { conditions: list, changed: true, flipped };
}

/** The condition of `type`, if present. */
export function findCondition(
  c: ClusterObject | undefined,
  type: string,
): ClusterCondition | undefined {
  return c?.status?.conditions?.find((x) => x.type === type);
}

function validPort(p: unknown): p is number {
  return typeof p === "number" && Number.isInteger(p) && p >= 1 && p <= 65535;
}

/** `host` as it goes into a URL (IPv6 in brackets). */
export function urlHost(h: string): string {
  return h.includes(":") && !h.startsWith("[") ? `[${h}]` : h;
}

/** Address of the first LoadBalancer ingress (IP, else hostname), if any. */
export function ingressAddress(svc: ServiceObject | undefined): string | undefined {
  const ing = svc?.status?.loadBalancer?.ingress?.[0];
  return ing?.ip || ing?.hostname || undefined;
}

/**
 * Annotations requested for the LoadBalancer Service, from the Cluster's
 * annotation JSON. Non-string values are stringified; invalid JSON yields an
 * error message and no annotations.
 */
export function lbAnnotations(
  c: ClusterObject,
): { annotations: Record<string, string>; error?: string } {
  const raw = c.metadata.annotations?.[LB_ANNOTATIONS_KEY];
  if (raw === undefined || raw.trim() === "") return { annotations: {} };
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch (err) {
    return {
      annotations: {},
      error: `annotation ${LB_ANNOTATIONS_KEY}: invalid JSON: ${(err as Error).message}`,
    };
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    return { annotations: {}, error: `annotation ${LB_ANNOTATIONS_KEY}: not a JSON object` };
  }
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(parsed)) {
    if (k === MANAGED_ANNOTATIONS_KEY) continue;
    out[k] = typeof v === "string" ? v : JSON.stringify(v);
  }
  return { annotations: out };
}

function managedKeys(svc: ServiceObject | undefined): string[] {
  const raw = svc?.metadata.annotations?.[MANAGED_ANNOTATIONS_KEY];
  if (!raw) return [];
  try {
    const v = JSON.parse(raw);
    return Array.isArray(v) ? v.filter((x): x is string => typeof x === "string") : [];
  } catch {
    return [];
  }
}

/** Labels of the Service of `cluster`. */
export function serviceLabels(cluster: string): Record<string, string> {
  const n = serviceName(cluster);
  return { app: n, "app.kubernetes.io/name": n };
}

/**
 * Selector of the `mc-*` Services when the proxy publishes no EndpointSlices (one replica in
 * the cluster without a pod IP): the proxy pods.
 */
export const SERVICE_SELECTOR: Readonly<Record<string, string>> = Object.freeze({
  app: "tower",
  "app.kubernetes.io/name": "tower",
});

function sameRecord(a: Record<string, string> | undefined, b: Record<string, string>): boolean {
  const ka = Object.keys(a ?? {});
  return ka.length === Object.keys(b).length && ka.every((k) => a![k] === b[k]);
}

function samePorts(have: ServicePort[] | undefined, want: ServicePort[]): boolean {
  if (!have || have.length !== want.length) return false;
  return want.every((w, i) => {
    const h = have[i];
    return h.name === w.name && (h.protocol ?? "TCP") === w.protocol && h.port === w.port &&
      String(h.targetPort ?? h.port) === String(w.targetPort);
  });
}

/**
 * The Service cluster `name` should have, given its ports and LB settings,
 * built on top of the existing one (so API-server-assigned fields such as
 * `clusterIP` and node ports stay). Returns the action to get there.
 */
export function desiredService(opts: {
  name: string;
  namespace: string;
  kubernetesPort: number;
  kubespherePort: number;
  loadBalancer: boolean;
  annotations: Record<string, string>;
  existing: ServiceObject | undefined;
  /** Select the proxy pods ({@link SERVICE_SELECTOR}); default: no selector. */
  selectPods?: boolean;
}): ServiceAction {
  const { name, namespace, existing } = opts;
  const type = opts.loadBalancer ? "LoadBalancer" : "ClusterIP";
  const keepNodePort = (portName: string): number | undefined =>
    opts.loadBalancer
      ? existing?.spec?.ports?.find((p) => p.name === portName)?.nodePort
      : undefined;
  const ports: ServicePort[] = [
    {
      name: "kubernetes",
      protocol: "TCP",
      port: SERVICE_KUBERNETES_PORT,
      targetPort: opts.kubernetesPort,
    },
    {
      name: "kubesphere",
      protocol: "TCP",
      port: SERVICE_KUBESPHERE_PORT,
      targetPort: opts.kubespherePort,
    },
  ];
  const labels = serviceLabels(name);
  // Annotations: keep others' keys, drop the ones we applied before and no
  // longer want, apply the wanted ones, and remember which ones are ours.
  const wantAnn = opts.loadBalancer ? opts.annotations : {};
  const wantKeys = Object.keys(wantAnn).sort();
  const annotations: Record<string, string> = { ...(existing?.metadata.annotations ?? {}) };
  for (const k of managedKeys(existing)) if (!(k in wantAnn)) delete annotations[k];
  Object.assign(annotations, wantAnn);
  if (wantKeys.length > 0) annotations[MANAGED_ANNOTATIONS_KEY] = JSON.stringify(wantKeys);
  else delete annotations[MANAGED_ANNOTATIONS_KEY];

  if (!existing) {
    const svc: ServiceObject = {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: serviceName(name), namespace, labels },
      spec: opts.selectPods ? { type, selector: { ...SERVICE_SELECTOR }, ports } : { type, ports },
    };
    if (Object.keys(annotations).length > 0) svc.metadata.annotations = annotations;
    return { kind: "create", service: svc };
  }

  const mergedLabels = { ...(existing.metadata.labels ?? {}), ...labels };
  const upToDate = (existing.spec?.type ?? "ClusterIP") === type &&
    sameRecord(existing.spec?.selector, opts.selectPods ? SERVICE_SELECTOR : {}) &&
    samePorts(existing.spec?.ports, ports) &&
    sameRecord(existing.metadata.labels, mergedLabels) &&
    sameRecord(existing.metadata.annotations, annotations);
  if (upToDate) return { kind: "none" };

  const svc: ServiceObject = structuredClone(existing);
  svc.metadata.labels = mergedLabels;
  if (Object.keys(annotations).length > 0) svc.metadata.annotations = annotations;
  else delete svc.metadata.annotations;
  const spec = { ...(svc.spec ?? {}) };
  spec.type = type;
  if (opts.selectPods) spec.selector = { ...SERVICE_SELECTOR };
  else delete spec.selector;
  spec.ports = ports.map((p) => {
    const np = keepNodePort(p.name!);
    return np ? { ...p, nodePort: np } : p;
  });
  if (!opts.loadBalancer) {
    // Fields only valid for NodePort/LoadBalancer Services.
    delete spec.externalTrafficPolicy;
    delete spec.healthCheckNodePort;
    delete spec.allocateLoadBalancerNodePorts;
    delete spec.loadBalancerClass;
  }
  svc.spec = spec;
  return { kind: "update", service: svc };
}

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * Compute what to do for cluster `name` (SPEC §3):
 * - gone, being deleted, `joinFederation` not true or type not `proxy`:
 *   delete the Service (if any), leave the Cluster alone;
 * - else: keep or allocate a port pair free of other clusters' ports,
 *   generate the token if empty, want the Service (ClusterIP, or LoadBalancer
 *   with the annotation JSON when `externalKubeAPIEnabled`), and once an
 *   address is known (publish address, or the Service's ClusterIP) write the
 *   endpoints and `Initialized=True`; set `AgentAvailable` from the agent
 *   state and the external endpoint / `ExternalAccessReady` from the
 *   Service's LoadBalancer ingress.
 * @throws Error when no port pair is left.
 */
export function reconcileCluster(input: ReconcileInput): ReconcilePlan {
  const ns = input.namespace ?? TOWER_NAMESPACE;
  const events: ClusterEvent[] = [];
  const observed = input.cluster;
  if (!isProxyCluster(observed)) {
    const service: ServiceAction = input.service
      ? { kind: "delete", name: serviceName(input.name), namespace: ns }
      : { kind: "none" };
    return { service, events };
  }

  const c: ClusterObject = structuredClone(observed);
  const spec = (c.spec ??= {});
  const conn = (spec.connection ??= {});
  const now = input.now;

  // Step 1a: ports.
  let k = conn.kubernetesAPIServerPort;
  let s = conn.kubesphereAPIServerPort;
  const ports = input.ports ?? portViewFromSet(input.portsUsedByOthers ?? new Set());
  if (
    !validPort(k) || !validPort(s) || k === s || ports.usedByOthers(k) || ports.usedByOthers(s)
  ) {
    let pair;
    try {
      pair = ports.lowestFreePair();
    } catch (err) {
      throw new Error(`cluster ${input.name}: allocate ports: ${(err as Error).message}`);
    }
    k = pair.kubernetes;
    s = pair.kubesphere;
    conn.kubernetesAPIServerPort = k;
    conn.kubesphereAPIServerPort = s;
    events.push({
      type: "Normal",
      reason: "PortsAllocated",
      message: `Allocated ports ${k} (kubernetes) and ${s} (kubesphere)`,
    });
  }

  // Step 1b: token.
  if (typeof conn.token !== "string" || conn.token === "") {
    conn.token = (input.newToken ?? randomToken)();
    events.push({
      type: "Normal",
      reason: "TokenGenerated",
      message: "Generated the token agents must present",
    });
  }

  // Step 1c / 3: the Service.
  const external = spec.externalKubeAPIEnabled === true;
  const lb = lbAnnotations(c);
  if (lb.error && external) {
    events.push({ type: "Warning", reason: "InvalidAnnotation", message: lb.error });
  }
  const service = desiredService({
    name: input.name,
    namespace: ns,
    kubernetesPort: k,
    kubespherePort: s,
    loadBalancer: external,
    annotations: lb.annotations,
    existing: input.service,
    selectPods: input.selectPods,
  });

  // Step 1d: endpoints and Initialized, once an address is known.
  let conditions = c.status?.conditions;
  const setCond = (want: DesiredCondition): { flipped: boolean; changed: boolean } => {
    const r = setCondition(conditions, want, now);
    conditions = r.conditions;
    return r;
  };
  const clusterIP = input.service?.spec?.clusterIP;
  const addr = input.publishAddress ||
    (clusterIP && clusterIP !== "None" ? clusterIP : undefined);
  if (addr) {
    const host = urlHost(addr);
    const kEndpoint = input.publishAddress
      ? `https://${host}:${k}`
      : `https://${host}:${SERVICE_KUBERNETES_PORT}`;
    const sEndpoint = input.publishAddress
      ? `http://${host}:${s}`
      : `http://${host}:${SERVICE_KUBESPHERE_PORT}`;
    if (conn.kubernetesAPIEndpoint !== kEndpoint) conn.kubernetesAPIEndpoint = kEndpoint;
    if (conn.kubesphereAPIEndpoint !== sEndpoint) conn.kubesphereAPIEndpoint = sEndpoint;
    const r = setCond({
      type: CONDITION_INITIALIZED,
      status: "True",
      reason: CONDITION_INITIALIZED,
      message: "Cluster has been initialized",
    });
    if (r.flipped) {
      events.push({
        type: "Normal",
        reason: "Initialized",
        message: `Endpoints ${kEndpoint} and ${sEndpoint} through Service ${
          serviceName(input.name)
        }`,
      });
    }
  }

  // Step 2: agent availability.
  if (input.agent !== "unknown") {
    const blocked = input.agent === "connected" && input.endpointError !== undefined;
    const up = input.agent === "connected" && !blocked;
    const r = setCond({
      type: CONDITION_AGENT_AVAILABLE,
      status: up ? "True" : "False",
      reason: up ? "AgentConnected" : blocked ? "EndpointUnavailable" : "AgentNotConnected",
      message: up
        ? AGENT_CONNECTED_MESSAGE
        : blocked
        ? `Agent has connected, but the proxy cannot serve its endpoints: ${input.endpointError}`
        : AGENT_NOT_CONNECTED_MESSAGE,
    });
    if (r.flipped && (up || findCondition(observed, CONDITION_AGENT_AVAILABLE))) {
      events.push({
        type: up ? "Normal" : "Warning",
        reason: up ? "AgentConnected" : "AgentDisconnected",
        message: up ? AGENT_CONNECTED_MESSAGE : AGENT_NOT_CONNECTED_MESSAGE,
      });
    }
  }

  // Step 3: external endpoint from the LoadBalancer ingress.
  const prevExternal = findCondition(observed, CONDITION_EXTERNAL_ACCESS_READY);
  if (external) {
    const ingress = ingressAddress(input.service);
    if (ingress) {
      const ep = `https://${urlHost(ingress)}:${SERVICE_KUBERNETES_PORT}`;
      if (conn.externalKubernetesAPIEndpoint !== ep) conn.externalKubernetesAPIEndpoint = ep;
      const r = setCond({
        type: CONDITION_EXTERNAL_ACCESS_READY,
        status: "True",
        reason: CONDITION_INITIALIZED,
        message: "Cluster external kubeapi has been initialized",
      });
      if (r.flipped) {
        events.push({
          type: "Normal",
          reason: "ExternalEndpointReady",
          message: `External kubernetes endpoint ${ep}`,
        });
      }
    } else {
      setCond({
        type: CONDITION_EXTERNAL_ACCESS_READY,
        status: "False",
        reason: "LoadBalancerPending",
        message: `Waiting for the load balancer of Service ${serviceName(input.name)}`,
      });
    }
  } else {
    if (conn.externalKubernetesAPIEndpoint !== undefined) {
      delete conn.externalKubernetesAPIEndpoint;
    }
    if (prevExternal) {
      setCond({
        type: CONDITION_EXTERNAL_ACCESS_READY,
        status: "False",
        reason: "Disabled",
        message: "externalKubeAPIEnabled is false",
      });
    }
  }

  if (conditions !== c.status?.conditions) (c.status ??= {}).conditions = conditions;
  const changed = !sameJson(c.spec, observed.spec) || !sameJson(c.status, observed.status);
  return { cluster: changed ? c : undefined, service, events };
}
