/**
 * Reads a kubeconfig file, or the pod's in-cluster configuration, into the
 * selected context's cluster and user, with Tower's own code: the agent and
 * the proxy used to load `@kubernetes/client-node` for this alone, ~60 MiB of
 * resident memory in a process that otherwise needs ~60.
 *
 * What kubectl does is followed where it matters: relative file paths
 * (`certificate-authority`, `client-certificate`, `client-key`, `token-file`,
 * and an `exec` command containing a `/`) are taken relative to the
 * kubeconfig's directory; `*-data` fields are base64; the first entry of a
 * name wins (as in client-node before). Files named by the cluster and the
 * user's certificate are read here; a `token-file` is read when credentials
 * are asked for (it rotates), see `credentials.ts`.
 * @module
 */

import { Buffer } from "node:buffer";

/** `users[].user.exec`: a client-go credential plugin (client.authentication.k8s.io). */
export interface ExecConfig {
  apiVersion: string;
  /** Absolute, or looked up on `PATH` (no `/` in it). */
  command: string;
  args: string[];
  /** Added to the agent's own environment. */
  env: { name: string; value: string }[];
  /** Pass the cluster's server and CA in `KUBERNETES_EXEC_INFO`. */
  provideClusterInfo: boolean;
  /** `Never`, `IfAvailable` or `Always` (we never have a terminal: `Always` fails). */
  interactiveMode: string;
  /** Shown when the command cannot be started. */
  installHint?: string;
}

/** The selected cluster. */
export interface KubeCluster {
  name: string;
  /** Server URL without trailing slashes. */
  server: string;
  /** CA bundle (PEM) from `certificate-authority-data` or the `certificate-authority` file. */
  caPem?: string;
  insecureSkipTlsVerify: boolean;
  tlsServerName?: string;
  proxyUrl?: string;
}

/** The selected user ("" name: the context names none, i.e. anonymous). */
export interface KubeUser {
  name: string;
  /** Client certificate and key (PEM), from `*-data` or files. */
  certPem?: string;
  keyPem?: string;
  token?: string;
  /** Absolute path of `token-file`, read on use. */
  tokenFile?: string;
  username?: string;
  password?: string;
  /** `as`: sent as `Impersonate-User`. */
  impersonate?: string;
  exec?: ExecConfig;
  /** `auth-provider` (gcp, azure, oidc; deprecated in kubectl), as written. */
  authProvider?: { name: string; config?: Record<string, string> };
}

/** A kubeconfig with its context chosen. */
export interface KubeconfigSelection {
  /** For error messages: `kubeconfig <path>` or `in-cluster config`. */
  source: string;
  /** The kubeconfig file (absolute), when there is one. */
  path?: string;
  context: string;
  /** The context's namespace, `default` when unset. */
  namespace: string;
  cluster: KubeCluster;
  user: KubeUser;
}

/** Where the pod's service-account files are. */
export const SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";

type Obj = Record<string, unknown>;

const isObj = (v: unknown): v is Obj => typeof v === "object" && v !== null && !Array.isArray(v);

function str(v: unknown, where: string): string | undefined {
  if (v === undefined || v === null || v === "") return undefined;
  if (typeof v !== "string") throw new Error(`${where}: want a string, got ${typeof v}`);
  return v;
}

function base64Text(v: unknown, where: string): string | undefined {
  const s = str(v, where)?.replace(/\s+/g, "");
  if (s === undefined) return undefined;
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(s) || s.length % 4 === 1) {
    throw new Error(`${where}: not base64`);
  }
  return Buffer.from(s, "base64").toString("utf8");
}

function dirOf(path: string): string {
  const i = path.lastIndexOf("/");
  return i <= 0 ? (i === 0 ? "/" : ".") : path.slice(0, i);
}

function absolute(dir: string, file: string): string {
  return file.startsWith("/") ? file : `${dir.replace(/\/+$/, "")}/${file}`;
}

async function readText(file: string, what: string): Promise<string> {
  try {
    return await Deno.readTextFile(file);
  } catch (err) {
    throw new Error(`${what} ${file}: ${(err as Error).message}`);
  }
}

/** `data` (base64) or else the file, as PEM text. */
async function material(
  entry: Obj,
  field: string,
  dir: string,
  where: string,
): Promise<string | undefined> {
  const data = base64Text(entry[`${field}-data`], `${where}.${field}-data`);
  if (data !== undefined) return data;
  const file = str(entry[field], `${where}.${field}`);
  return file === undefined ? undefined : await readText(absolute(dir, file), `${where}.${field}`);
}

/** The first `list[i].name === name` entry's `key` object. */
function named(doc: Obj, list: string, key: string, name: string): Obj | undefined {
  const entries = doc[list];
  if (entries === undefined || entries === null) return undefined;
  if (!Array.isArray(entries)) throw new Error(`${list}: want a list`);
  for (const e of entries) {
    if (isObj(e) && e.name === name) {
      const inner = e[key];
      if (inner !== undefined && inner !== null && !isObj(inner)) {
        throw new Error(`${list}[${JSON.stringify(name)}].${key}: want a mapping`);
      }
      return (inner as Obj | undefined) ?? {};
    }
  }
  return undefined;
}

function execConfig(v: unknown, dir: string, where: string): ExecConfig | undefined {
  if (v === undefined || v === null) return undefined;
  if (!isObj(v)) throw new Error(`${where}: want a mapping`);
  const command = str(v.command, `${where}.command`);
  if (!command) throw new Error(`${where}.command: missing`);
  const apiVersion = str(v.apiVersion, `${where}.apiVersion`);
  if (!apiVersion) throw new Error(`${where}.apiVersion: missing`);
  const list = (x: unknown, what: string): unknown[] => {
    if (x === undefined || x === null) return [];
    if (!Array.isArray(x)) throw new Error(`${where}.${what}: want a list`);
    return x;
  };
  const args = list(v.args, "args").map((a, i) => str(a, `${where}.args[${i}]`) ?? "");
  const env = list(v.env, "env").map((e, i) => {
    if (!isObj(e)) throw new Error(`${where}.env[${i}]: want {name, value}`);
    const name = str(e.name, `${where}.env[${i}].name`);
    if (!name) throw new Error(`${where}.env[${i}].name: missing`);
    return { name, value: str(e.value, `${where}.env[${i}].value`) ?? "" };
  });
  return {
    apiVersion,
    // kubectl: a command with a path separator is relative to the kubeconfig; else PATH.
    command: command.includes("/") ? absolute(dir, command) : command,
    args,
    env,
    provideClusterInfo: v.provideClusterInfo === true,
    interactiveMode: str(v.interactiveMode, `${where}.interactiveMode`) ?? "IfAvailable",
    installHint: str(v.installHint, `${where}.installHint`),
  };
}

function authProvider(v: unknown, where: string): KubeUser["authProvider"] {
  if (v === undefined || v === null) return undefined;
  if (!isObj(v)) throw new Error(`${where}: want a mapping`);
  const name = str(v.name, `${where}.name`);
  if (!name) throw new Error(`${where}.name: missing`);
  const config: Record<string, string> = {};
  if (isObj(v.config)) {
    for (const [k, x] of Object.entries(v.config)) config[k] = String(x);
  }
  return { name, config };
}

async function selectUser(doc: Obj, name: string, dir: string): Promise<KubeUser> {
  if (name === "") return { name };
  const u = named(doc, "users", "user", name);
  if (!u) throw new Error(`user ${JSON.stringify(name)} not found`);
  const where = `user ${name}`;
  const tokenFile = str(u["token-file"], `${where}.token-file`);
  return {
    name,
    certPem: await material(u, "client-certificate", dir, where),
    keyPem: await material(u, "client-key", dir, where),
    token: str(u.token, `${where}.token`),
    tokenFile: tokenFile === undefined ? undefined : absolute(dir, tokenFile),
    username: str(u.username, `${where}.username`),
    password: str(u.password, `${where}.password`),
    impersonate: str(u.as, `${where}.as`),
    exec: execConfig(u.exec, dir, `${where}.exec`),
    authProvider: authProvider(u["auth-provider"], `${where}.auth-provider`),
  };
}

async function selectCluster(doc: Obj, name: string, dir: string): Promise<KubeCluster> {
  const c = named(doc, "clusters", "cluster", name);
  if (!c) throw new Error(`cluster ${JSON.stringify(name)} not found`);
  const where = `cluster ${name}`;
  const server = str(c.server, `${where}.server`);
  if (!server) throw new Error(`${where}: no server URL`);
  return {
    name,
    server: server.replace(/\/+$/, ""),
    caPem: await material(c, "certificate-authority", dir, where),
    insecureSkipTlsVerify: c["insecure-skip-tls-verify"] === true,
    tlsServerName: str(c["tls-server-name"], `${where}.tls-server-name`),
    proxyUrl: str(c["proxy-url"], `${where}.proxy-url`),
  };
}

/** Choose `context` (default: `current-context`) of a parsed kubeconfig. */
export async function selectContext(
  doc: unknown,
  dir: string,
  context?: string,
): Promise<Omit<KubeconfigSelection, "source" | "path">> {
  if (!isObj(doc)) throw new Error("not a kubeconfig (want a YAML or JSON mapping)");
  const name = context || str(doc["current-context"], "current-context");
  if (!name) throw new Error("no current-context set and no context chosen");
  const ctx = named(doc, "contexts", "context", name);
  if (!ctx) throw new Error(`context ${JSON.stringify(name)} not found`);
  const clusterName = str(ctx.cluster, `context ${name}.cluster`);
  if (!clusterName) throw new Error(`context ${name}: no cluster`);
  return {
    context: name,
    namespace: str(ctx.namespace, `context ${name}.namespace`) ?? "default",
    cluster: await selectCluster(doc, clusterName, dir),
    user: await selectUser(doc, str(ctx.user, `context ${name}.user`) ?? "", dir),
  };
}

/**
 * Read the kubeconfig at `path` and select `context` (default: its current context).
 * The YAML parser is loaded only for a YAML file: an agent in a pod never reads a kubeconfig.
 * @throws Error starting with `kubeconfig <path>:` and naming the entry at fault.
 */
export async function readKubeconfig(
  path: string,
  opts: { context?: string } = {},
): Promise<KubeconfigSelection> {
  const file = absolute(Deno.cwd(), path);
  const source = `kubeconfig ${path}`;
  try {
    const doc = await parseDocument(await Deno.readTextFile(file));
    return { source, path: file, ...await selectContext(doc, dirOf(file), opts.context) };
  } catch (err) {
    throw new Error(`${source}: ${(err as Error).message}`);
  }
}

/**
 * JSON first (JSON is YAML, and a JSON kubeconfig is read without loading the YAML parser, ~2.3
 * MiB of an agent's idle RSS), YAML otherwise.
 */
async function parseDocument(text: string): Promise<unknown> {
  if (/^\s*\{/.test(text)) {
    try {
      return JSON.parse(text);
    } catch {
      // YAML flow mappings start with `{` too.
    }
  }
  const { parse } = await import("yaml");
  try {
    return parse(text);
  } catch (err) {
    throw new Error(`not YAML: ${(err as Error).message.split("\n")[0]}`);
  }
}

/** Inputs of {@link inClusterConfig} (tests override them). */
export interface InClusterOptions {
  /** Service-account directory (default {@link SERVICE_ACCOUNT_DIR}). */
  serviceAccountDir?: string;
  env?: (name: string) => string | undefined;
}

/**
 * The pod's own configuration: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`, the
 * service account's CA, token file (read on use: the kubelet rotates it) and namespace.
 * @throws Error starting with `in-cluster config:`.
 */
export async function inClusterConfig(opts: InClusterOptions = {}): Promise<KubeconfigSelection> {
  const source = "in-cluster config";
  const env = opts.env ?? ((n: string) => Deno.env.get(n));
  const dir = opts.serviceAccountDir ?? SERVICE_ACCOUNT_DIR;
  const host = env("KUBERNETES_SERVICE_HOST");
  const port = env("KUBERNETES_SERVICE_PORT");
  try {
    if (!host || !port) {
      throw new Error(
        "KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set (not running in a pod?)",
      );
    }
    const namespace = await Deno.readTextFile(`${dir}/namespace`).then((s) => s.trim(), () => "");
    return {
      source,
      context: "in-cluster",
      namespace: namespace || "default",
      cluster: {
        name: "in-cluster",
        server: `https://${host.includes(":") ? `[${host}]` : host}:${port}`,
        caPem: await readText(`${dir}/ca.crt`, "service-account CA"),
        insecureSkipTlsVerify: false,
      },
      user: { name: "in-cluster", tokenFile: `${dir}/token` },
    };
  } catch (err) {
    throw new Error(`${source}: ${(err as Error).message}`);
  }
}
