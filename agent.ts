/**
 * `agent`: runs in a member cluster, dials out to the Tower proxy and carries
 * the host cluster's requests to this cluster's kube-apiserver and ks-apiserver.
 * @module
 */

import { Agent, logStartup } from "./lib/agent/agent.ts";
import { FINGERPRINT_RE } from "./lib/agent/known_proxies.ts";
import {
  connectionFromMember,
  DEFAULT_KNOWN_PROXY_SECRET,
} from "./lib/agent/known_proxies_secret.ts";
import { buildAgentConfig, SERVICE_ACCOUNT_DIR } from "./lib/agent/member_config.ts";
import { proxyTrustFromFlags } from "./lib/agent/trust_setup.ts";
import { FlagError, type FlagSpecs, parseCommandLine } from "./lib/cli.ts";
import { logger, setupLogging } from "./lib/log.ts";
import { startHealthServer } from "./lib/health_server.ts";
import { VERSION } from "./lib/version.ts";
import { REKEY_FLAGS, rekeyLimitsFromFlags } from "./lib/tunnel/rekey.ts";

/** The agent's flags (README.md "Flags"; the original's: tests/interop/README.md). */
export const AGENT_FLAGS: FlagSpecs = {
  name: { kind: "string", help: "name of this member cluster (the Cluster object's name)" },
  token: { kind: "string", help: "token from the Cluster's spec.connection.token" },
  "token-file": { kind: "string", help: "read the token from this file instead of --token" },
  "proxy-server": {
    kind: "string",
    default: "http://127.0.0.1:8080",
    help: "proxy URL (http, https, ws or wss); HTTPS_PROXY/NO_PROXY are honoured",
  },
  "proxy-fingerprint": {
    kind: "string",
    help: "pin the proxy host key (SHA256:… as the proxy logs it); refuse any other",
    validate: (v) => FINGERPRINT_RE.test(String(v)) ? undefined : "want SHA256:<43 base64 chars>",
  },
  "proxy-fingerprint-file": {
    kind: "string",
    help: "read the pinned fingerprint from this file (e.g. a mounted Secret key)",
  },
  "known-proxy-file": {
    kind: "string",
    help: "record the proxy host key seen first here and refuse any other later (default: " +
      "$XDG_STATE_HOME/tower/known_proxies, else ~/.local/state/tower/known_proxies; " +
      "in a pod: the Secret --known-proxy-secret)",
  },
  "known-proxy-secret": {
    kind: "string",
    default: DEFAULT_KNOWN_PROXY_SECRET,
    help:
      "in a pod (no --kubeconfig): Secret of the agent's namespace recording the proxy host key",
  },
  "insecure-accept-any-proxy-key": {
    kind: "bool",
    help: "do not check the proxy host key at all (Go proxies make a new one at every start)",
  },
  "proxy-ca": {
    kind: "string",
    default: "",
    help: "PEM file of extra CAs to trust for a wss:// or https:// proxy (private CA)",
  },
  kubeconfig: {
    kind: "string",
    default: "",
    help: "kubeconfig of this cluster (empty: in-cluster)",
  },
  "service-account-dir": {
    kind: "string",
    default: SERVICE_ACCOUNT_DIR,
    help: "the pod's service-account token, ca.crt and namespace (without --kubeconfig)",
  },
  "kubernetes-service": {
    kind: "string",
    default: "kubernetes.default.svc",
    help: "kube-apiserver address when in-cluster env vars are absent",
  },
  "kubesphere-service": {
    kind: "string",
    default: "ks-apiserver.kubesphere-system.svc",
    help: "ks-apiserver address (port 80 if none)",
  },
  keepalive: { kind: "duration", default: 30_000, help: "interval of keepalive pings" },
  "max-retry": {
    kind: "int",
    default: 0,
    min: 0,
    help: "give up after this many failed attempts (0: never)",
  },
  "max-retry-interval": {
    kind: "duration",
    default: 120_000,
    help: "longest wait between attempts",
  },
  ...REKEY_FLAGS,
  "metrics-address": {
    kind: "string",
    default: "",
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

const USAGE = "Usage: agent --name NAME --token TOKEN [--proxy-server URL] [flags]";

async function main(args: string[]): Promise<number> {
  const flags = parseCommandLine("agent", args, AGENT_FLAGS, USAGE, { version: VERSION });
  if (typeof flags === "number") return flags;
  const v = flags.values;
  setupLogging({ verbosity: v.v as number, format: v["log-format"] as "text" | "json" });
  const log = logger("agent");
  let token = (v.token as string | undefined) ?? "";
  try {
    if (!v.name) throw new FlagError("flag --name is required");
    if (v["token-file"]) token = (await Deno.readTextFile(v["token-file"] as string)).trim();
    if (!token) throw new FlagError("flag --token (or --token-file) is required");
  } catch (err) {
    console.error(`agent: ${(err as Error).message}`);
    return 2;
  }
  const configInput = {
    name: v.name as string,
    token,
    kubeconfig: v.kubeconfig as string,
    kubernetesService: v["kubernetes-service"] as string,
    kubesphereService: v["kubesphere-service"] as string,
    serviceAccountDir: v["service-account-dir"] as string,
  };
  let agent: Agent;
  try {
    const first = await buildAgentConfig(configInput);
    logStartup(first, v["proxy-server"] as string);
    agent = new Agent({
      proxyServer: v["proxy-server"] as string,
      trust: await proxyTrustFromFlags({
        proxyFingerprint: v["proxy-fingerprint"] as string | undefined,
        proxyFingerprintFile: v["proxy-fingerprint-file"] as string | undefined,
        insecureAcceptAny: v["insecure-accept-any-proxy-key"] === true,
        knownProxyFile: v["known-proxy-file"] as string | undefined,
        knownProxySecret: v["known-proxy-secret"] as string,
        kubeconfig: v.kubeconfig as string,
        serviceAccountDir: v["service-account-dir"] as string,
        connect: async () => connectionFromMember(await buildAgentConfig(configInput)),
      }),
      proxyCaCerts: v["proxy-ca"] ? [await Deno.readTextFile(v["proxy-ca"] as string)] : undefined,
      keepaliveMs: v.keepalive as number,
      maxRetry: v["max-retry"] as number,
      maxRetryIntervalMs: v["max-retry-interval"] as number,
      rekey: rekeyLimitsFromFlags(v),
      config: () => buildAgentConfig(configInput),
    });
  } catch (err) {
    if (err instanceof FlagError) {
      console.error(`agent: ${err.message}`);
      return 2;
    }
    log.error("Cannot start", { err: (err as Error).message });
    return 1;
  }

  let connected = false;
  let health: { close(): Promise<void> } | undefined;
  if (v["metrics-address"]) {
    try {
      health = await startHealthServer(v["metrics-address"] as string, () => ({
        ok: connected,
        detail: [`proxy: ${connected ? "connected" : "not connected"}`],
      }));
    } catch (err) {
      log.error("Cannot serve metrics", { err: (err as Error).message });
      return 1;
    }
  }
  agent.onState((state) => {
    connected = state === "connected";
  });
  const stop = new AbortController();
  const onStop = (sig: string) => () => {
    log.info("Shutting down", { signal: sig });
    stop.abort();
  };
  const onTerm = onStop("SIGTERM");
  const onInt = onStop("SIGINT");
  const onHup = () => {
    log.info("SIGHUP: reconnecting now");
    agent.retryNow();
  };
  Deno.addSignalListener("SIGTERM", onTerm);
  Deno.addSignalListener("SIGINT", onInt);
  Deno.addSignalListener("SIGHUP", onHup);
  try {
    await agent.run(stop.signal);
    return 0;
  } catch (err) {
    log.error("Agent stopped", { err: (err as Error).message });
    return 1;
  } finally {
    Deno.removeSignalListener("SIGTERM", onTerm);
    Deno.removeSignalListener("SIGINT", onInt);
    Deno.removeSignalListener("SIGHUP", onHup);
    await health?.close();
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
