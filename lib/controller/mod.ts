/**
 * The host control plane: the pure Cluster reconcile, the controller that
 * applies it, the work queue, Events, leader-gated running, and the CA and
 * host key kept in Secrets. The proxy's Kubernetes cluster source
 * (`lib/proxy/clusters_kube.ts`) puts these together.
 * @module
 */

export {
  ClusterController,
  type ClusterControllerOptions,
  type ControllerStats,
} from "./controller.ts";
export { EventRecorder, type EventRecorderOptions } from "./events.ts";
export { ControllerRunner, defaultIdentity, type LeaderElectionOptions } from "./leader.ts";
export {
  CA_SECRET,
  HOST_KEY_SECRET,
  loadOrCreateCA,
  loadOrCreateHostKeyPem,
  type PersistOptions,
  type SecretObject,
} from "./persist.ts";
export {
  allocatePorts,
  DEFAULT_PORT_RANGE,
  KUBERNETES_PORT_MAX,
  KUBERNETES_PORT_MIN,
  KUBESPHERE_PORT_OFFSET,
  pairIsFree,
  parsePortRange,
  type PortPair,
  type PortRange,
  type PortView,
  portViewFromSet,
} from "./ports.ts";
export { PortIndex } from "./port_index.ts";
export { WorkQueue, type WorkQueueOptions } from "./queue.ts";
export {
  type AgentState,
  type ClusterEvent,
  type DesiredCondition,
  desiredService,
  findCondition,
  ingressAddress,
  kubeTime,
  lbAnnotations,
  type PortClaim,
  portClaim,
  portsUsedByOthers,
  reconcileCluster,
  type ReconcileInput,
  type ReconcilePlan,
  SERVICE_SELECTOR,
  type ServiceAction,
  serviceLabels,
  setCondition,
  urlHost,
} from "./reconcile.ts";
export * from "./types.ts";
