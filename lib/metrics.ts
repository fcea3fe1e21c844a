/**
 * Prometheus metrics of both binaries (prom-client, which runs under Deno).
 * One registry per process; components import the metric they update.
 * @module
 */

import process from "node:process";
import type client from "prom-client";
// The classes from their own modules, not from prom-client's index: the index also loads its
// Pushgateway (Deno's `node:http`, `node:https` and `node:zlib` polyfills), its cluster
// aggregator (`node:cluster`) and the default-metrics module, none of which Tower uses.
import registryModule from "prom-client/lib/registry.js";
import counterModule from "prom-client/lib/counter.js";
import gaugeModule from "prom-client/lib/gauge.js";
import histogramModule from "prom-client/lib/histogram.js";
import heapSizeAndUsed from "prom-client/lib/metrics/heapSizeAndUsed.js";
import heapSpacesSizeAndUsed from "prom-client/lib/metrics/heapSpacesSizeAndUsed.js";
import osMemoryHeap from "prom-client/lib/metrics/osMemoryHeap.js";
import processCpuTotal from "prom-client/lib/metrics/processCpuTotal.js";
import processHandles from "prom-client/lib/metrics/processHandles.js";
import processMaxFileDescriptors from "prom-client/lib/metrics/processMaxFileDescriptors.js";
import processOpenFileDescriptors from "prom-client/lib/metrics/processOpenFileDescriptors.js";
import processRequests from "prom-client/lib/metrics/processRequests.js";
import processResources from "prom-client/lib/metrics/processResources.js";
import gc from "prom-client/lib/metrics/gc.js";
import processStartTime from "prom-client/lib/metrics/processStartTime.js";
import version from "prom-client/lib/metrics/version.js";

const Registry = registryModule as unknown as typeof client.Registry;
const Counter = counterModule as unknown as typeof client.Counter;
const Gauge = gaugeModule as unknown as typeof client.Gauge;
const Histogram = histogramModule as unknown as typeof client.Histogram;

/** The process-wide registry served on `/metrics`. */
export const registry: client.Registry = new Registry();

/**
 * prom-client's default metrics but one: its event-loop delay histogram samples every 10 ms, and
 * under Deno that woke an idle process 100 times a second and cost an idle agent ~10 MiB of
 * resident memory (connected agent, four runs each: 77 MiB with it, 67 without; once a second
 * still cost ~4.5 MiB and left the first second's summary NaN). The lag gauge below measures the
 * delay of one `setImmediate` at each scrape instead (prom-client's own way where the histogram
 * is missing), with no timer in between. The other collectors are prom-client's own modules.
 */
const defaultCollectors = [
  processCpuTotal,
  processStartTime,
  osMemoryHeap,
  processOpenFileDescriptors,
  processMaxFileDescriptors,
  // prom-client's condition for this one.
  ...(typeof process.getActiveResourcesInfo === "function" ? [processResources] : []),
  processHandles,
  processRequests,
  heapSizeAndUsed,
  heapSpacesSizeAndUsed,
  version,
  gc,
];
for (const collect of defaultCollectors) collect(registry, { prefix: "tower_" });

/** Event-loop lag at scrape time (seconds). */
export const eventLoopLag: client.Gauge = new Gauge({
  name: "tower_nodejs_eventloop_lag_seconds",
  help: "Lag of event loop in seconds.",
  registers: [registry],
  async collect() {
    const start = performance.now();
    await new Promise<void>((resolve) => setImmediate(resolve));
    this.set((performance.now() - start) / 1000);
  },
});

/** Live agent sessions by cluster. */
export const sessionsGauge: client.Gauge<"cluster"> = new Gauge({
  name: "tower_agent_sessions",
  help: "Agent sessions currently connected, by cluster.",
  labelNames: ["cluster"],
  registers: [registry],
});

/** Agent session starts and ends. */
export const agentConnects: client.Counter<"cluster"> = new Counter({
  name: "tower_agent_connects_total",
  help: "Agent sessions established, by cluster.",
  labelNames: ["cluster"],
  registers: [registry],
});

/** Agent session ends. */
export const agentDisconnects: client.Counter<"cluster"> = new Counter({
  name: "tower_agent_disconnects_total",
  help: "Agent sessions ended, by cluster.",
  labelNames: ["cluster"],
  registers: [registry],
});

/** Failed agent handshakes by reason. */
export const handshakeFailures: client.Counter<"reason"> = new Counter({
  name: "tower_handshake_failures_total",
  help: "Agent handshakes that failed, by reason.",
  labelNames: ["reason"],
  registers: [registry],
});

/** Open tunnel channels. */
export const channelsGauge: client.Gauge = new Gauge({
  name: "tower_tunnel_channels",
  help: "Tunnel channels currently open.",
  registers: [registry],
});

/** SSH key exchanges after the first, by who started them and why (lib/tunnel/rekey.ts). */
export const rekeysCounter: client.Counter<"reason"> = new Counter({
  name: "tower_ssh_rekeys_total",
  help: "SSH key exchanges after the first; reason is the limit that started it, or peer.",
  labelNames: ["reason"],
  registers: [registry],
});

/** Bytes carried by proxied requests, by cluster and direction. */
export const bytesCounter: client.Counter<"cluster" | "direction"> = new Counter({
  name: "tower_proxied_bytes_total",
  help: "Bytes carried for proxied requests; direction is in (client to member) or out.",
  labelNames: ["cluster", "direction"],
  registers: [registry],
});

/** Proxied requests by cluster, endpoint and status code. */
export const requestsCounter: client.Counter<"cluster" | "endpoint" | "code"> = new Counter({
  name: "tower_proxied_requests_total",
  help: "Requests proxied to member clusters, by cluster, endpoint and HTTP status code.",
  labelNames: ["cluster", "endpoint", "code"],
  registers: [registry],
});

/**
 * Requests refused because every live session of their cluster was at its channel limit
 * (`--max-channels-per-session`): the dial gave up (502) with nothing else wrong.
 */
export const channelLimitRefusals: client.Counter<"cluster"> = new Counter({
  name: "tower_channel_limit_refusals_total",
  help: "Requests refused because every agent session of the cluster was at its channel limit.",
  labelNames: ["cluster"],
  registers: [registry],
});

/** Latency of proxied requests until the response headers (upgrades and watches excluded). */
export const requestDuration: client.Histogram<"cluster" | "endpoint"> = new Histogram({
  name: "tower_proxied_request_duration_seconds",
  help: "Duration of proxied requests, by cluster and endpoint.",
  labelNames: ["cluster", "endpoint"],
  buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  registers: [registry],
});

/** Reconciles of Cluster objects and their errors. */
export const reconciles: client.Counter<"result"> = new Counter({
  name: "tower_reconciles_total",
  help: "Cluster reconciles, by result (success or error).",
  labelNames: ["result"],
  registers: [registry],
});
