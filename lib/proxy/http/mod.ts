/**
 * The HTTP engine of the per-cluster endpoints: an upgrade-aware HTTP/1.1
 * reverse proxy over tunnel streams (see `forward.ts`), and the contract with
 * the tunnel (`upstream.ts`).
 * @module
 */

export {
  type ClientInfo,
  type ClientVerdict,
  type EndpointKind,
  HttpProxy,
  type HttpProxyOptions,
  type RequestRecord,
} from "./forward.ts";
export { DEFAULT_POOL_OPTIONS, type PoolOptions } from "./pool.ts";
export { type KubeStatus, kubeStatus, statusResponse } from "./status.ts";
export {
  type DialedStream,
  NoAgentError,
  StreamLimitError,
  type UpstreamAuth,
  type UpstreamDialer,
  type UpstreamTls,
} from "./upstream.ts";
