/**
 * Standalone mode (docs/protocol.md §7, last paragraph): clusters come from a YAML or JSON file of Cluster
 * objects (a list, a `kind: ClusterList`, or multi-document YAML), re-read when
 * it changes and never written to. Kubeconfigs of connected clusters are
 * written to a directory instead of into Cluster objects.
 * @module
 */

import { parseAllDocuments } from "yaml";
import { dirname, join } from "node:path";
import { logger } from "../log.ts";
import { PortIndex } from "../controller/port_index.ts";
import { DEFAULT_PORT_RANGE, type PortRange } from "../controller/ports.ts";
import type { AgentConfig } from "../tunnel/handshake.ts";
import {
  type ClusterChange,
  type ClusterRecord,
  type ClusterSource,
  CREDENTIAL_GENERATION_ANNOTATION,
} from "./clusters.ts";

const log = logger("proxy/clusters-file");

/** Options for {@link FileClusterSource}. */
export interface FileClusterSourceOptions {
  /** `--clusters-file`. */
  path: string;
  /** `--kubeconfig-dir` (default: the file's directory). */
  kubeconfigDir?: string;
  /** Address clients use to reach the endpoints (`--publish-service-address`, default 127.0.0.1). */
  publishAddress?: string;
  /** Watch the file for changes (default true). */
  watch?: boolean;
  /** `--port-range`: kubernetes ports missing pairs come from (default 6000–20080). */
  portRange?: PortRange;
  /** Ports never handed out (the proxy's own listeners). */
  reservedPorts?: ReadonlySet<number>;
}

interface Entry {
  name: string;
  token: string;
  enabled: boolean;
  kubernetesPort?: number;
  kubespherePort?: number;
  /** The credential generation annotation, when set. */
  credentialGeneration?: string;
}

/**
 * Parse the clusters file's text into entries.
 * @throws Error naming the document/entry at fault.
 */
export function parseClustersFile(text: string, source = "clusters file"): Entry[] {
  const docs = parseAllDocuments(text);
  const objects: unknown[] = [];
  for (const [i, doc] of docs.entries()) {
    if (doc.errors.length > 0) {
      throw new Error(`${source}: document ${i + 1}: ${doc.errors[0].message.split("\n")[0]}`);
    }
    const value = doc.toJS();
    if (value === null || value === undefined) continue;
    if (Array.isArray(value)) objects.push(...value);
    else if (typeof value === "object" && Array.isArray((value as { items?: unknown }).items)) {
      objects.push(...(value as { items: unknown[] }).items);
    } else objects.push(value);
  }
  const seen = new Set<string>();
  return objects.map((obj, i) => {
    const where = `${source}: entry ${i + 1}`;
    if (typeof obj !== "object" || obj === null) throw new Error(`${where}: not an object`);
    const o = obj as {
      metadata?: { name?: unknown; annotations?: Record<string, unknown> };
      spec?: {
        joinFederation?: unknown;
        connection?: {
          type?: unknown;
          token?: unknown;
          kubernetesAPIServerPort?: unknown;
          kubesphereAPIServerPort?: unknown;
        };
      };
    };
    const name = o.metadata?.name;
    if (typeof name !== "string" || !/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(name)) {
      throw new Error(`${where}: metadata.name missing or not a valid name`);
    }
    if (seen.has(name)) throw new Error(`${where}: duplicate cluster ${name}`);
    seen.add(name);
    const conn = o.spec?.connection ?? {};
    if (typeof conn.token !== "string" || conn.token.length === 0) {
      throw new Error(`${where} (${name}): spec.connection.token missing`);
    }
    const port = (v: unknown, field: string) => {
      if (v === undefined || v === null || v === 0) return undefined;
      if (typeof v !== "number" || !Number.isInteger(v) || v < 1 || v > 65535) {
        throw new Error(`${where} (${name}): spec.connection.${field}: not a port`);
      }
      return v;
    };
    const generation = o.metadata?.annotations?.[CREDENTIAL_GENERATION_ANNOTATION];
    return {
      name,
      token: conn.token,
      credentialGeneration: typeof generation === "string" && generation ? generation : undefined,
      enabled: o.spec?.joinFederation !== false && (conn.type ?? "proxy") === "proxy",
      kubernetesPort: port(conn.kubernetesAPIServerPort, "kubernetesAPIServerPort"),
      kubespherePort: port(conn.kubesphereAPIServerPort, "kubesphereAPIServerPort"),
    };
  });
}

/**
 * Turn entries into records, allocating missing ports without collisions: a port given in the
 * file is kept, a cluster without one keeps the pair it had (`previous`) while nobody else holds
 * it, and otherwise gets the lowest free pair of `range`.
 */
export function recordsFromEntries(
  entries: Entry[],
  publishAddress: string,
  previous: ReadonlyMap<string, ClusterRecord> = new Map(),
  range: PortRange = DEFAULT_PORT_RANGE,
  reserved: ReadonlySet<number> = new Set(),
): Map<string, ClusterRecord> {
  const index = new PortIndex(range, reserved);
  for (const e of entries) {
    index.set(e.name, {
      name: e.name,
      kubernetesPort: e.kubernetesPort,
      kubespherePort: e.kubespherePort,
    });
  }
  const out = new Map<string, ClusterRecord>();
  for (const e of entries) {
    let k = e.kubernetesPort;
    let s = e.kubespherePort;
    const prev = previous.get(e.name);
    if (!k && prev?.kubernetesPort && !index.isTaken(prev.kubernetesPort)) k = prev.kubernetesPort;
    if (!s && prev?.kubespherePort && !index.isTaken(prev.kubespherePort)) s = prev.kubespherePort;
    if (!k || !s) {
      try {
        const pair = index.viewFor({ name: e.name }).lowestFreePair();
        k ??= pair.kubernetes;
        s ??= pair.kubesphere;
      } catch (err) {
        // The agents of this cluster may still connect; its endpoints wait for ports.
        log.warn("No ports for the cluster's endpoints", {
          cluster: e.name,
          err: (err as Error).message,
        });
        k = s = undefined;
      }
    }
    index.set(e.name, { name: e.name, kubernetesPort: k, kubespherePort: s });
    out.set(e.name, {
      name: e.name,
      token: e.token,
      enabled: e.enabled,
      kubernetesPort: k,
      kubespherePort: s,
      endpointHosts: [publishAddress],
      kubernetesEndpoint: k ? `https://${hostForUrl(publishAddress)}:${k}` : undefined,
      credentialGeneration: e.credentialGeneration,
    });
  }
  return out;
}

function hostForUrl(h: string): string {
  return h.includes(":") && !h.startsWith("[") ? `[${h}]` : h;
}

/** Clusters from a file. */
export class FileClusterSource implements ClusterSource {
  #opts: FileClusterSourceOptions;
  #records = new Map<string, ClusterRecord>();
  #listeners: ClusterChange[] = [];
  #watcher: Deno.FsWatcher | undefined;
  #reloadTimer: ReturnType<typeof setTimeout> | undefined;
  #closed = false;
  #loaded: Promise<void>;

  constructor(opts: FileClusterSourceOptions) {
    this.#opts = opts;
    this.#loaded = this.#load(true);
  }

  ready(): Promise<void> {
    return this.#loaded;
  }

  lookup(name: string): ClusterRecord | undefined {
    return this.#records.get(name);
  }

  list(): ClusterRecord[] {
    return [...this.#records.values()];
  }

  subscribe(listener: ClusterChange): () => void {
    this.#listeners.push(listener);
    return () => {
      this.#listeners = this.#listeners.filter((l) => l !== listener);
    };
  }

  agentConnected(name: string, config: AgentConfig): Promise<void> {
    log.v(2, "cluster agent up", { cluster: name, version: config.Version });
    return Promise.resolve();
  }

  agentDisconnected(name: string): Promise<void> {
    log.v(2, "cluster agent down", { cluster: name });
    return Promise.resolve();
  }

  /** Directory kubeconfigs are written to. */
  get kubeconfigDir(): string {
    return this.#opts.kubeconfigDir ?? dirname(this.#opts.path);
  }

  /** Path of the kubeconfig file of `name`. */
  kubeconfigPath(name: string): string {
    return join(this.kubeconfigDir, `${name}.kubeconfig`);
  }

  /**
   * The kubeconfig written for `name` so far; undefined when there is none yet, or when it cannot
   * be read (logged: a fresh one is then written over it).
   */
  async currentKubeconfig(name: string): Promise<string | undefined> {
    const path = this.kubeconfigPath(name);
    try {
      return await Deno.readTextFile(path);
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) {
        log.warn("Cannot read the cluster's kubeconfig; writing a new one", {
          cluster: name,
          path,
          err: (err as Error).message,
        });
      }
      return undefined;
    }
  }

  async publishKubeconfig(name: string, kubeconfig: string): Promise<void> {
    const path = this.kubeconfigPath(name);
    const tmp = `${path}.tmp-${crypto.randomUUID()}`;
    try {
      await Deno.writeTextFile(tmp, kubeconfig, { mode: 0o600 });
      await Deno.rename(tmp, path);
    } catch (err) {
      await Deno.remove(tmp).catch(() => {});
      throw new Error(`cluster ${name}: write kubeconfig ${path}: ${(err as Error).message}`);
    }
    log.info("Wrote kubeconfig", { cluster: name, path });
  }

  async #load(initial: boolean): Promise<void> {
    const path = this.#opts.path;
    let next: Map<string, ClusterRecord>;
    try {
      const text = await Deno.readTextFile(path);
      next = recordsFromEntries(
        parseClustersFile(text, path),
        this.#opts.publishAddress ?? "127.0.0.1",
        this.#records,
        this.#opts.portRange,
        this.#opts.reservedPorts,
      );
    } catch (err) {
      const msg = `clusters file ${path}: ${(err as Error).message.replace(`${path}: `, "")}`;
      if (initial) throw new Error(msg);
      log.error("Keeping the previous clusters: cannot reload", { err: msg });
      return;
    }
    const before = this.#records;
    this.#records = next;
    log.info("Loaded clusters", { path, clusters: next.size });
    for (const name of new Set([...before.keys(), ...next.keys()])) {
      const a = before.get(name);
      const b = next.get(name);
      if (JSON.stringify(a) !== JSON.stringify(b)) {
        for (const l of this.#listeners) l(name, b);
      }
    }
    if (initial && this.#opts.watch !== false) this.#startWatch();
  }

  #startWatch(): void {
    const dir = dirname(this.#opts.path);
    try {
      this.#watcher = Deno.watchFs(dir, { recursive: false });
    } catch (err) {
      log.warn("Cannot watch the clusters file; changes need a restart", {
        err: (err as Error).message,
      });
      return;
    }
    (async () => {
      try {
        for await (const ev of this.#watcher!) {
          if (!ev.paths.some((p) => p.endsWith(this.#opts.path.split("/").pop()!))) continue;
          // Coalesce the bursts editors and `mv` produce into one reload.
          clearTimeout(this.#reloadTimer);
          this.#reloadTimer = setTimeout(() => this.#reload(), 50);
        }
      } catch (err) {
        if (this.#closed) return; // close() ended the watcher
        log.error("Stopped watching the clusters file; changes need a restart", {
          path: this.#opts.path,
          err: (err as Error).message,
        });
      }
    })();
  }

  /** Reload after a change; a listener's failure is logged, not left to end the process. */
  #reload(): void {
    this.#load(false).catch((err) => {
      log.error("Applying the reloaded clusters file failed", {
        path: this.#opts.path,
        err: (err as Error).message,
      });
    });
  }

  close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#reloadTimer);
    try {
      this.#watcher?.close();
    } catch {
      // already closed
    }
    return Promise.resolve();
  }
}
