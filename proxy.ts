/**
 * `proxy`: runs in (or beside) the host cluster, accepts agents of member
 * clusters and serves each member's kube-apiserver and ks-apiserver.
 * @module
 */

import { type FlagSpecs, parseCommandLine } from "./lib/cli.ts";
import { logger, setupLogging } from "./lib/log.ts";
import { ProxyApp } from "./lib/proxy/app.ts";
import {
  kubernetesSetup,
  type ProxySetup,
  type SetupFlags,
  standaloneSetup,
} from "./lib/proxy/setup.ts";
import { startHealthServer } from "./lib/health_server.ts";
import { VERSION } from "./lib/version.ts";
import {
  joinCommand,
  joinCommandTokenNote,
  joinInputFromCluster,
  joinManifest,
} from "./lib/proxy/join.ts";
import { KubeClient, loadKubeConnection } from "./lib/kube/mod.ts";
import {
  clusterFactsFromApi,
  clusterFactsFromFile,
  DEFAULT_USER_VALIDITY_MS,
  mintUserKubeconfig,
} from "./lib/proxy/user_kubeconfig.ts";
import { loadCAFiles } from "./lib/proxy/ca_store.ts";
import { dirname } from "node:path";
import { FINGERPRINT_RE } from "./lib/agent/known_proxies.ts";
import { REKEY_FLAGS, rekeyLimitsFromFlags } from "./lib/tunnel/rekey.ts";
import { parsePortRange } from "./lib/controller/ports.ts";
import { parseListenAddress } from "./lib/health_server.ts";

/** The proxy's flags (README.md "Flags": the original's and this project's). */
export const PROXY_FLAGS: FlagSpecs = {
  "ca-cert": {
    kind: "string",
    default: "",
    help: "CA certificate used to issue serving certs and kubeconfigs",
  },
  "ca-key": { kind: "string", default: "", help: "private key of --ca-cert" },
  host: { kind: "string", default: "0.0.0.0", help: "address to listen on for agents" },
  "endpoints-host": {
    kind: "string",
    default: "",
    help: "address the per-cluster endpoints listen on (default: --host)",
  },
  port: {
    kind: "port",
    default: 8080,
    min: 1024,
    max: 49151,
    help: "port to listen on for agents",
  },
  "publish-service-address": {
    kind: "string",
    default: "",
    help: "address clients reach the per-cluster endpoints at (instead of the Service ClusterIP)",
  },
  kubeconfig: { kind: "string", default: "", help: "host cluster kubeconfig (empty: in-cluster)" },
  "leader-elect": {
    kind: "bool",
    default: false,
    help: "elect a leader with a Lease before reconciling",
  },
  "clusters-file": {
    kind: "string",
    default: "",
    help: "standalone mode: read Cluster objects from this YAML/JSON file instead of the host API",
  },
  "kubeconfig-dir": {
    kind: "string",
    default: "",
    help: "standalone mode: where to write kubeconfigs (default: beside --clusters-file)",
  },
  "host-key": {
    kind: "string",
    default: "",
    help: "SSH host key file, created on first start (standalone default: beside --clusters-file)",
  },
  keepalive: {
    kind: "duration",
    default: 30_000,
    help: "SSH keepalive; silent agents are dropped after 2 intervals",
  },
  "handshake-timeout": {
    kind: "duration",
    default: 10_000,
    help:
      "deadline from connect to accepted config (the request head included); and for endpoint clients' TLS handshakes",
  },
  "max-pending-handshakes": {
    kind: "int",
    default: 256,
    min: 1,
    help: "unauthenticated connections at once, shared fairly between source addresses",
  },
  "max-agent-connections": {
    kind: "int",
    default: 8192,
    min: 1,
    help: "connections open on the agent port at once, established agents included",
  },
  "max-sessions-per-cluster": {
    kind: "int",
    default: 16,
    min: 1,
    help: "agent sessions per cluster; one more closes the oldest (failing ones first)",
  },
  "max-config-bytes": {
    kind: "int",
    default: 32768,
    min: 1024,
    max: 34000,
    help: "largest accepted config payload (ssh2 drops SSH packets over 35000 bytes anyway)",
  },
  "max-channels-per-session": {
    kind: "int",
    default: 1024,
    min: 1,
    help: "open streams per agent session",
  },
  "http-idle-timeout": {
    kind: "duration",
    default: 120_000,
    help: "endpoint clients must send a complete request head within this long (slowloris guard)",
  },
  "max-endpoint-connections": {
    kind: "int",
    default: 1024,
    min: 1,
    help: "client connections each per-cluster endpoint keeps at once (more are closed)",
  },
  "max-request-head": {
    kind: "int",
    default: 64 * 1024,
    min: 4096,
    max: 1 << 20,
    help: "largest request head on the per-cluster endpoints, bytes (431 beyond)",
  },
  "kubesphere-max-body": {
    kind: "int",
    default: 100 << 20,
    min: 0,
    help: "largest request body on the kubesphere endpoints, bytes (0: no limit)",
  },
  "client-cert-validity": {
    kind: "duration",
    default: 720 * 3600_000,
    help: "validity of the admin kubeconfigs' client certificates; re-issued when a third is left",
    validate: (v) => (v as number) >= 5_000 ? undefined : "want at least 5s",
  },
  ...REKEY_FLAGS,
  "shutdown-grace": {
    kind: "duration",
    default: 20_000,
    help: "on SIGTERM, how long in-flight requests may take to finish",
  },
  "shutdown-delay": {
    kind: "duration",
    default: 2_000,
    help: "on SIGTERM, after this replica's EndpointSlices are withdrawn, keep serving this long " +
      "before closing the endpoints (clients' routing catches up meanwhile)",
  },
  "port-range": {
    kind: "string",
    default: "6000-20080",
    help: "kubernetes ports new clusters get (kubesphere: +10000)",
    validate: (v) => {
      try {
        parsePortRange(String(v));
        return undefined;
      } catch (err) {
        return (err as Error).message;
      }
    },
  },
  "pod-name": {
    kind: "string",
    default: "",
    help: "this replica's pod (default $POD_NAME): names its EndpointSlices and Lease",
  },
  "pod-ip": {
    kind: "string",
    default: "",
    help: "this replica's pod IP (default $POD_IP): with it the replica publishes an " +
      "EndpointSlice for each cluster it serves",
  },
  "replica-lease-duration": {
    kind: "duration",
    default: 2_000,
    help: "how long a silent replica's EndpointSlices are kept before the leader removes them",
    validate: (v) => (v as number) >= 1_000 ? undefined : "want at least 1s",
  },
  "replica-lease-renew": {
    kind: "duration",
    default: 500,
    help: "how often a replica renews its Lease (well below --replica-lease-duration)",
    validate: (v) => (v as number) >= 100 ? undefined : "want at least 100ms",
  },
  "metrics-address": {
    kind: "string",
    default: ":9090",
    help: "where to serve /metrics, /healthz and /readyz (empty: off)",
  },
  v: { kind: "int", default: 0, min: 0, max: 10, help: "log verbosity (klog levels)" },
  "log-format": {
    kind: "string",
    default: "text",
    help: "text (klog) or json",
    validate: (v) => v === "text" || v === "json" ? undefined : "want text or json",
  },
  version: { kind: "bool", help: "print the version and exit" },
};

const USAGE = "Usage: proxy [--clusters-file FILE | --kubeconfig FILE] [flags]\n" +
  "       proxy join CLUSTER --proxy-server URL [--kubeconfig FILE] [--print manifest|command]\n" +
  "       proxy kubeconfig CLUSTER --user USER [--group GROUP]... [flags]";

/** Flags of `proxy join`. */
export const JOIN_FLAGS: FlagSpecs = {
  "proxy-server": { kind: "string", required: true, help: "URL agents use to reach this proxy" },
  kubeconfig: { kind: "string", default: "", help: "host cluster kubeconfig (empty: in-cluster)" },
  print: {
    kind: "string",
    default: "manifest",
    help: "manifest (for kubectl apply -f -) or command (run the agent by hand)",
    validate: (v) => v === "manifest" || v === "command" ? undefined : "want manifest or command",
  },
  image: { kind: "string", default: "kubesphere/tower:v0.1.0", help: "agent image" },
  "proxy-fingerprint": {
    kind: "string",
    help: "the proxy's host key fingerprint (SHA256:… as it logs it), instead of reading the " +
      "Secret tower-host-key",
    validate: (v) => FINGERPRINT_RE.test(String(v)) ? undefined : "want SHA256:<43 base64 chars>",
  },
};

/** `proxy join CLUSTER`: print what the member cluster needs, token filled in. */
async function joinMain(args: string[]): Promise<number> {
  const flags = parseCommandLine(
    "proxy join",
    args,
    JOIN_FLAGS,
    "Usage: proxy join CLUSTER --proxy-server URL [flags]",
    { allowPositionals: true },
  );
  if (typeof flags === "number") return flags;
  if (flags.positionals.length !== 1) {
    console.error("proxy join: takes exactly one cluster name (see --help)");
    return 2;
  }
  const v = flags.values;
  try {
    const client = new KubeClient(await loadKubeConnection(v.kubeconfig as string));
    const input = await joinInputFromCluster(
      client,
      flags.positionals[0],
      v["proxy-server"] as string,
      { fingerprint: v["proxy-fingerprint"] as string | undefined },
    );
    input.image = v.image as string;
    if (v.print === "command") {
      // The command holds no token; the token goes to stderr, to paste at its prompt.
      console.log(joinCommand(input));
      console.error(joinCommandTokenNote(input));
    } else console.log(joinManifest(input));
    return 0;
  } catch (err) {
    console.error(`proxy join: ${(err as Error).message}`);
    return 1;
  }
}

/** Flags of `proxy kubeconfig`. */
export const KUBECONFIG_FLAGS: FlagSpecs = {
  user: { kind: "string", required: true, help: "user the member cluster sees (certificate CN)" },
  group: {
    kind: "string",
    multiple: true,
    help: "a group of the user (certificate O); repeat for several",
  },
  validity: {
    kind: "duration",
    default: DEFAULT_USER_VALIDITY_MS,
    help: "how long the kubeconfig is valid",
    validate: (v) => (v as number) >= 60_000 ? undefined : "want at least 1m",
  },
  kubeconfig: { kind: "string", default: "", help: "host cluster kubeconfig (empty: in-cluster)" },
  "clusters-file": {
    kind: "string",
    default: "",
    help: "standalone mode: the proxy's clusters file",
  },
  "kubeconfig-dir": {
    kind: "string",
    default: "",
    help: "standalone mode: the proxy's --kubeconfig-dir (default: beside --clusters-file)",
  },
  "ca-cert": { kind: "string", default: "", help: "the proxy's --ca-cert, when it has one" },
  "ca-key": { kind: "string", default: "", help: "the proxy's --ca-key" },
};

/** `proxy kubeconfig CLUSTER --user U`: print a kubeconfig for one person on one member cluster. */
async function kubeconfigMain(args: string[]): Promise<number> {
  const flags = parseCommandLine(
    "proxy kubeconfig",
    args,
    KUBECONFIG_FLAGS,
    "Usage: proxy kubeconfig CLUSTER --user USER [--group GROUP]... [flags]",
    { allowPositionals: true },
  );
  if (typeof flags === "number") return flags;
  if (flags.positionals.length !== 1) {
    console.error("proxy kubeconfig: takes exactly one cluster name (see --help)");
    return 2;
  }
  const v = flags.values;
  const cluster = flags.positionals[0];
  try {
    const caFiles = v["ca-cert"]
      ? await loadCAFiles(v["ca-cert"] as string, v["ca-key"] as string)
      : undefined;
    const file = v["clusters-file"] as string;
    const dir = (v["kubeconfig-dir"] as string) || dirname(file);
    const facts = file
      ? await clusterFactsFromFile(
        file,
        dir,
        cluster,
        caFiles ?? await loadCAFiles(`${dir}/ca.crt`, `${dir}/ca.key`),
      )
      : await clusterFactsFromApi(
        new KubeClient(await loadKubeConnection(v.kubeconfig as string)),
        cluster,
        caFiles,
      );
    console.log(
      await mintUserKubeconfig({
        ...facts,
        user: v.user as string,
        groups: (v.group as string[] | undefined) ?? [],
        validityMs: v.validity as number,
      }),
    );
    return 0;
  } catch (err) {
    console.error(`proxy kubeconfig: ${(err as Error).message}`);
    return 1;
  }
}

/** Ports the allocator never hands out: the proxy's own agent and metrics ports. */
function reservedPorts(agentPort: number, metricsAddress: string): Set<number> {
  const out = new Set([agentPort]);
  if (metricsAddress) {
    try {
      out.add(parseListenAddress(metricsAddress).port);
    } catch {
      // reported when the listener starts
    }
  }
  out.delete(0);
  return out;
}

async function main(args: string[]): Promise<number> {
  if (args[0] === "join") return await joinMain(args.slice(1));
  if (args[0] === "kubeconfig") return await kubeconfigMain(args.slice(1));
  const flags = parseCommandLine("proxy", args, PROXY_FLAGS, USAGE, { version: VERSION });
  if (typeof flags === "number") return flags;
  const v = flags.values;
  setupLogging({ verbosity: v.v as number, format: v["log-format"] as "text" | "json" });
  const log = logger("proxy");
  for (const [k, val] of Object.entries(v)) {
    if (!["v", "log-format", "version"].includes(k)) log.info(`Flag --${k} set`, { value: val });
  }
  if ((v["ca-cert"] === "") !== (v["ca-key"] === "")) {
    console.error("proxy: --ca-cert and --ca-key go together");
    return 2;
  }
  const setupFlags: SetupFlags = {
    caCert: v["ca-cert"] as string,
    caKey: v["ca-key"] as string,
    hostKeyPath: v["host-key"] as string,
    publishAddress: v["publish-service-address"] as string,
    clustersFile: v["clusters-file"] as string,
    kubeconfigDir: v["kubeconfig-dir"] as string,
    kubeconfig: v.kubeconfig as string,
    leaderElect: v["leader-elect"] as boolean,
    portRange: parsePortRange(v["port-range"] as string),
    reservedPorts: reservedPorts(v.port as number, v["metrics-address"] as string),
    podName: (v["pod-name"] as string) || Deno.env.get("POD_NAME") || "",
    podIP: (v["pod-ip"] as string) || Deno.env.get("POD_IP") || "",
    podNamespace: Deno.env.get("POD_NAMESPACE") || "",
    replicaLease: {
      durationMs: v["replica-lease-duration"] as number,
      renewMs: v["replica-lease-renew"] as number,
    },
  };
  if (setupFlags.replicaLease!.renewMs! * 2 > setupFlags.replicaLease!.durationMs!) {
    console.error("proxy: --replica-lease-renew must be at most half of --replica-lease-duration");
    return 2;
  }
  const starting = new AbortController();
  const onEarlyStop = () => starting.abort();
  Deno.addSignalListener("SIGTERM", onEarlyStop);
  Deno.addSignalListener("SIGINT", onEarlyStop);
  let app: ProxyApp | undefined;
  let setup: ProxySetup | undefined;
  let health: { close(): Promise<void> } | undefined;
  try {
    if (v["metrics-address"]) {
      health = await startHealthServer(
        v["metrics-address"] as string,
        () => app?.readiness() ?? { ok: false, detail: ["starting"] },
      );
    }
    setup = setupFlags.clustersFile
      ? await standaloneSetup(setupFlags)
      : await kubernetesSetup(setupFlags, starting.signal);
    app = new ProxyApp({
      host: v.host as string,
      port: v.port as number,
      endpointsHost: (v["endpoints-host"] as string) || (v.host as string),
      maxEndpointConnections: v["max-endpoint-connections"] as number,
      maxRequestHead: v["max-request-head"] as number,
      hostKey: setup.hostKey,
      clusters: setup.clusters,
      ca: setup.ca,
      keepaliveMs: v.keepalive as number,
      handshakeTimeoutMs: v["handshake-timeout"] as number,
      maxPendingHandshakes: v["max-pending-handshakes"] as number,
      maxAgentConnections: v["max-agent-connections"] as number,
      maxSessionsPerCluster: v["max-sessions-per-cluster"] as number,
      maxConfigBytes: v["max-config-bytes"] as number,
      maxChannelsPerSession: v["max-channels-per-session"] as number,
      kubesphereMaxRequestBody: (v["kubesphere-max-body"] as number) || undefined,
      httpIdleMs: v["http-idle-timeout"] as number,
      shutdownDelayMs: v["shutdown-delay"] as number,
      clientCertValidityMs: v["client-cert-validity"] as number,
      rekey: rekeyLimitsFromFlags(v),
    });
    await app.start();
  } catch (err) {
    log.error("Cannot start", { err: (err as Error).message });
    await app?.close().catch((e) =>
      log.warn("Cannot close after a failed start", { err: String(e) })
    );
    setup?.close();
    await health?.close();
    return 1;
  } finally {
    Deno.removeSignalListener("SIGTERM", onEarlyStop);
    Deno.removeSignalListener("SIGINT", onEarlyStop);
  }
  const stopped = Promise.withResolvers<string>();
  const onTerm = () => stopped.resolve("SIGTERM");
  const onInt = () => stopped.resolve("SIGINT");
  Deno.addSignalListener("SIGTERM", onTerm);
  Deno.addSignalListener("SIGINT", onInt);
  const sig = await stopped.promise;
  log.info("Shutting down", { signal: sig });
  Deno.removeSignalListener("SIGTERM", onTerm);
  Deno.removeSignalListener("SIGINT", onInt);
  await app.close(v["shutdown-grace"] as number);
  setup.close();
  await health?.close();
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
