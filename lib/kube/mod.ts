/**
 * Tower's small Kubernetes REST layer: credentials from kubeconfig or the
 * pod's service account, a typed client with watch, an informer and a
 * Lease-based leader elector.
 * @module
 */

export {
  type CallOptions,
  type DeleteOptions,
  errorText,
  jsonEqual,
  type JsonPatchOp,
  KubeClient,
  type KubeClientOptions,
  type ListOptions,
  type PatchType,
  type RawRequest,
  resourcePath,
  type RetryPolicy,
  type UpdateWithRetryOptions,
  type WatchOptions,
  type WriteOptions,
} from "./client.ts";
export { type KubeConnection, loadKubeConnection, type LoadOptions } from "./config.ts";
export {
  inClusterConfig,
  type KubeCluster,
  type KubeconfigSelection,
  type KubeUser,
  readKubeconfig,
} from "./kubeconfig.ts";
export { type UserCredentials, userCredentials } from "./credentials.ts";
export { isAlreadyExists, isConflict, isGone, isNotFound, KubeApiError } from "./errors.ts";
export {
  Informer,
  type InformerHandlers,
  type InformerOptions,
  type InformerStats,
} from "./informer.ts";
export {
  LeaderElector,
  type LeaderElectorOptions,
  type Lease,
  type LeaseSpec,
  microTime,
} from "./leader.ts";
export * from "./types.ts";
