/**
 * client-go credential plugins (`users[].user.exec` in a kubeconfig, as EKS,
 * GKE, AKS and kubelogin write them), run by Tower itself.
 *
 * Why ours and not `@kubernetes/client-node`'s: the protocol is small and
 * fully specified (client.authentication.k8s.io `ExecCredential`: run the
 * command with its args and env, read one JSON object on stdout, take
 * `status.token` or `status.clientCertificateData`/`clientKeyData`, reuse it
 * until `status.expirationTimestamp`), while loading client-node for it costs
 * ~60 MiB of resident memory in every agent that has such a user.
 *
 * As client-go does: `KUBERNETES_EXEC_INFO` carries the request (never
 * interactive here: `interactiveMode: Always` fails with a message), the
 * plugin's answer must name the same apiVersion, a credential is reused until
 * it expires (forever when it names no expiry), and concurrent callers share
 * one run. Unlike client-go, a run is bounded: {@link EXEC_TIMEOUT_MS} and
 * {@link MAX_OUTPUT_BYTES}.
 * @module
 */

import { Buffer } from "node:buffer";
import type { ExecConfig, KubeCluster } from "./kubeconfig.ts";

/** A credential returned by a plugin. */
export interface ExecCredential {
  token?: string;
  /** Client certificate and key (PEM). */
  certPem?: string;
  keyPem?: string;
  /** When it expires (ms since the epoch); undefined: it does not. */
  expiresAt?: number;
}

/** Longest a plugin may run. */
export const EXEC_TIMEOUT_MS = 60_000;
/** Most output read from a plugin (its stdout; stderr keeps its last 4 KiB). */
export const MAX_OUTPUT_BYTES = 1 << 20;

const API_VERSIONS = ["client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1"];
const MODES = ["Never", "IfAvailable", "Always"];
/** Distinct plugin configurations remembered (a process has one or two). */
const CACHE_SIZE = 16;

const cache = new Map<string, ExecCredential>();
const running = new Map<string, Promise<ExecCredential>>();

/** True once `cred` has expired at `now`. */
export function isExpired(cred: ExecCredential, now = Date.now()): boolean {
  return cred.expiresAt !== undefined && cred.expiresAt <= now;
}

/**
 * The plugin's current credential: the cached one while it has not expired, else a new run.
 * @throws Error naming the command and what went wrong (never the credential).
 */
export function execCredential(
  exec: ExecConfig,
  cluster: KubeCluster,
  opts: { timeoutMs?: number } = {},
): Promise<ExecCredential> {
  const key = JSON.stringify([exec, exec.provideClusterInfo ? cluster : null]);
  const hit = cache.get(key);
  if (hit && !isExpired(hit)) return Promise.resolve(hit);
  let run = running.get(key);
  if (!run) {
    run = runPlugin(exec, cluster, opts.timeoutMs ?? EXEC_TIMEOUT_MS).then((cred) => {
      cache.delete(key);
      cache.set(key, cred);
      if (cache.size > CACHE_SIZE) cache.delete(cache.keys().next().value!);
      return cred;
    }).finally(() => running.delete(key));
    running.set(key, run);
  }
  return run;
}

/** Forget cached credentials (tests). */
export function clearExecCredentialCache(): void {
  cache.clear();
}

/** The `KUBERNETES_EXEC_INFO` a plugin gets: never interactive, the cluster when asked for. */
function execInfo(exec: ExecConfig, cluster: KubeCluster): string {
  const spec: Record<string, unknown> = { interactive: false };
  if (exec.provideClusterInfo) {
    spec.cluster = {
      server: cluster.server,
      "tls-server-name": cluster.tlsServerName,
      "insecure-skip-tls-verify": cluster.insecureSkipTlsVerify || undefined,
      "certificate-authority-data": cluster.caPem
        ? Buffer.from(cluster.caPem).toString("base64")
        : undefined,
      "proxy-url": cluster.proxyUrl,
    };
  }
  return JSON.stringify({ apiVersion: exec.apiVersion, kind: "ExecCredential", spec });
}

/** Read a stream to its end, keeping at most `max` bytes (the first or the last ones). */
async function drain(
  stream: ReadableStream<Uint8Array>,
  max: number,
  keep: "head" | "tail",
): Promise<{ bytes: Uint8Array; over: boolean }> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  let over = false;
  for await (const c of stream) {
    chunks.push(c);
    size += c.length;
    while (size > max && chunks.length > 0) {
      over = true;
      if (keep === "head") return { bytes: concat(chunks).subarray(0, max), over };
      size -= chunks.shift()!.length;
    }
  }
  return { bytes: concat(chunks), over };
}

function concat(chunks: Uint8Array[]): Uint8Array {
  return chunks.length === 1 ? chunks[0] : new Uint8Array(Buffer.concat(chunks));
}

async function runPlugin(
  exec: ExecConfig,
  cluster: KubeCluster,
  timeoutMs: number,
): Promise<ExecCredential> {
  const what = `exec plugin ${exec.command}`;
  if (!API_VERSIONS.includes(exec.apiVersion)) {
    throw new Error(
      `${what}: apiVersion ${exec.apiVersion} not supported (want one of ${
        API_VERSIONS.join(", ")
      })`,
    );
  }
  if (!MODES.includes(exec.interactiveMode)) {
    throw new Error(`${what}: interactiveMode ${exec.interactiveMode}: want ${MODES.join(", ")}`);
  }
  if (exec.interactiveMode === "Always") {
    throw new Error(`${what}: interactiveMode Always needs a terminal, and there is none`);
  }
  const env: Record<string, string> = { KUBERNETES_EXEC_INFO: execInfo(exec, cluster) };
  for (const e of exec.env) env[e.name] = e.value;
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(exec.command, {
      args: exec.args,
      env,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (err) {
    const hint = exec.installHint ? `\n${exec.installHint.trim()}` : "";
    throw new Error(`${what}: cannot start: ${(err as Error).message}${hint}`);
  }
  const kill = () => {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
  };
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    kill();
  }, timeoutMs);
  let out, errOut, status;
  try {
    [out, errOut] = await Promise.all([
      drain(child.stdout, MAX_OUTPUT_BYTES, "head").then((r) => {
        if (r.over) kill();
        return r;
      }),
      drain(child.stderr, 4096, "tail"),
    ]);
    status = await child.status;
  } finally {
    clearTimeout(timer);
  }
  const stderr = new TextDecoder().decode(errOut.bytes).trim();
  if (timedOut) throw new Error(`${what}: still running after ${timeoutMs} ms, killed`);
  if (out.over) throw new Error(`${what}: more than ${MAX_OUTPUT_BYTES} bytes of output`);
  if (!status.success) {
    throw new Error(`${what}: exit code ${status.code}${stderr ? `: ${stderr}` : ""}`);
  }
  return parseExecCredential(new TextDecoder().decode(out.bytes), exec.apiVersion, what);
}

/**
 * Check and read a plugin's answer.
 * @throws Error prefixed with `what`.
 */
export function parseExecCredential(
  text: string,
  apiVersion: string,
  what: string,
): ExecCredential {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new Error(`${what}: output is not JSON`);
  }
  const o = doc as Record<string, unknown> | null;
  if (typeof o !== "object" || o === null || o.kind !== "ExecCredential") {
    throw new Error(`${what}: output is not an ExecCredential`);
  }
  if (o.apiVersion !== apiVersion) {
    throw new Error(`${what}: answered apiVersion ${o.apiVersion}, configured ${apiVersion}`);
  }
  const st = o.status as Record<string, unknown> | undefined;
  if (typeof st !== "object" || st === null) throw new Error(`${what}: no status in its output`);
  const s = (k: string) => {
    const v = st[k];
    if (v === undefined || v === null || v === "") return undefined;
    if (typeof v !== "string") throw new Error(`${what}: status.${k} is not a string`);
    return v;
  };
  const cred: ExecCredential = {
    token: s("token"),
    certPem: s("clientCertificateData"),
    keyPem: s("clientKeyData"),
  };
  if ((cred.certPem === undefined) !== (cred.keyPem === undefined)) {
    throw new Error(`${what}: status has a client certificate or key without the other`);
  }
  if (!cred.token && !cred.certPem) {
    throw new Error(`${what}: status has neither a token nor a client certificate and key`);
  }
  const exp = s("expirationTimestamp");
  if (exp !== undefined) {
    const t = Date.parse(exp);
    if (Number.isNaN(t)) {
      throw new Error(`${what}: status.expirationTimestamp ${exp} is not a time`);
    }
    cred.expiresAt = t;
  }
  return cred;
}
