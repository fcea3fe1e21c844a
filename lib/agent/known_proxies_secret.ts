/**
 * The known-proxy record of an agent in a pod: data key `known_proxies` of a
 * Secret in the agent's own namespace (the text format of `known_proxies.ts`),
 * read and written with the pod's service account through `lib/kube`'s REST
 * client. Writes are conditional on the resourceVersion read, so two agent
 * replicas recording at once cannot overwrite each other's entry unseen.
 * @module
 */

import { Buffer } from "node:buffer";
import type { KubeConnection } from "../kube/config.ts";
import { KubeClient } from "../kube/client.ts";
import { KubeApiError } from "../kube/errors.ts";
import { type KubeObject, SECRETS } from "../kube/types.ts";
import type { AgentConfig } from "../tunnel/handshake.ts";
import {
  formatKnownProxies,
  KnownProxyMismatch,
  type KnownProxyStore,
  parseKnownProxies,
} from "./known_proxies.ts";

/** The Secret's data key holding the record. */
const KNOWN_PROXIES_KEY = "known_proxies";

/** Default `--known-proxy-secret`. */
export const DEFAULT_KNOWN_PROXY_SECRET = "tower-agent-known-proxy";

type SecretObject = KubeObject & { data?: Record<string, string>; type?: string };

/** Where the Secret lives and how to reach the API server. */
export interface SecretStoreOptions {
  namespace: string;
  name: string;
  /** A fresh connection per use (service-account tokens rotate); closed after the call. */
  connect: () => Promise<KubeConnection>;
}

/** The record in a Secret. */
export class SecretKnownProxies implements KnownProxyStore {
  readonly where: string;
  readonly #opts: SecretStoreOptions;

  constructor(opts: SecretStoreOptions) {
    this.#opts = opts;
    this.where = `Secret ${opts.namespace}/${opts.name}`;
  }

  forgetHint(key: string): string {
    const { namespace, name } = this.#opts;
    return `delete the line for ${key} from data.${KNOWN_PROXIES_KEY} of ${this.where} ` +
      `(all of it: kubectl -n ${namespace} patch secret ${name} --type=json ` +
      `-p '[{"op":"remove","path":"/data/${KNOWN_PROXIES_KEY}"}]')`;
  }

  async lookup(key: string): Promise<string | undefined> {
    return await this.#with(async (client) => (await this.#read(client)).entries.get(key));
  }

  async remember(key: string, fingerprint: string): Promise<void> {
    await this.#with(async (client) => {
      for (let attempt = 0; attempt < 10; attempt++) {
        const { secret, entries } = await this.#read(client);
        const seen = entries.get(key);
        if (seen !== undefined) {
          if (seen !== fingerprint) throw new KnownProxyMismatch(key, seen, fingerprint);
          return;
        }
        entries.set(key, fingerprint);
        const data = {
          ...secret?.data,
          [KNOWN_PROXIES_KEY]: Buffer.from(formatKnownProxies(entries)).toString("base64"),
        };
        try {
          if (secret) await client.update(SECRETS, { ...secret, data });
          else {
            await this.#create(client, data);
          }
          return;
        } catch (err) {
          // Someone else wrote first: read again (after a moment, so racing writers spread out)
          // and look at what they recorded.
          if (!(err instanceof KubeApiError && (err.isConflict || err.isAlreadyExists))) throw err;
          await new Promise((r) => setTimeout(r, 10 + Math.random() * 50));
        }
      }
      throw new Error(`the entry for ${key} kept being overwritten by another writer`);
    }, "cannot record the proxy host key");
  }

  /** Create the Secret (deploy/agent ships it; an agent without the right to create says so). */
  async #create(client: KubeClient, data: Record<string, string>): Promise<void> {
    try {
      await client.create(SECRETS, {
        metadata: {
          name: this.#opts.name,
          namespace: this.#opts.namespace,
          labels: { "app.kubernetes.io/part-of": "tower" },
        },
        type: "Opaque",
        data,
      } as SecretObject);
    } catch (err) {
      if (!(err instanceof KubeApiError && err.status === 403)) throw err;
      throw new Error(
        `it does not exist and this ServiceAccount may not create Secrets: apply deploy/agent ` +
          `(or the output of proxy join) again, which ships it empty: ${err.message}`,
      );
    }
  }

  async #read(
    client: KubeClient,
  ): Promise<{ secret?: SecretObject; entries: Map<string, string> }> {
    const secret = await client.tryGet<SecretObject>(SECRETS, this.#opts.name, {
      namespace: this.#opts.namespace,
    });
    const b64 = secret?.data?.[KNOWN_PROXIES_KEY];
    if (b64 === undefined) return { secret, entries: new Map() };
    const text = new TextDecoder("utf-8", { fatal: true }).decode(Buffer.from(b64, "base64"));
    return { secret, entries: parseKnownProxies(text, `data.${KNOWN_PROXIES_KEY}`) };
  }

  async #with<T>(fn: (client: KubeClient) => Promise<T>, what = "cannot read"): Promise<T> {
    let conn: KubeConnection | undefined;
    try {
      conn = await this.#opts.connect();
      return await fn(new KubeClient(conn, { retries: 2, requestTimeoutMs: 10_000 }));
    } catch (err) {
      if (err instanceof KnownProxyMismatch) throw err;
      const hint = err instanceof KubeApiError && err.status === 403
        ? " (the agent's ServiceAccount needs get and update on this Secret: see deploy/agent)"
        : "";
      throw new Error(`${this.where}: ${what}: ${(err as Error).message}${hint}`);
    } finally {
      conn?.close();
    }
  }
}

/**
 * A connection to this cluster's API server from the member credentials the agent already
 * reads in a pod (its `config`: service address, service-account CA and token).
 */
export function connectionFromMember(cfg: AgentConfig): KubeConnection {
  if (!cfg.BearerToken) throw new Error("no service-account token to reach the API server with");
  const caCerts = cfg.CAData ? [new TextDecoder().decode(cfg.CAData)] : undefined;
  let httpClient: Deno.HttpClient | undefined = Deno.createHttpClient({ caCerts });
  const token = new TextDecoder().decode(cfg.BearerToken);
  return {
    server: `https://${cfg.KubernetesSvcHost}`,
    namespace: "default",
    get httpClient() {
      return httpClient;
    },
    headers: () => Promise.resolve({ Authorization: `Bearer ${token}` }),
    close() {
      httpClient?.close();
      httpClient = undefined;
    },
  };
}
