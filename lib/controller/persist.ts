/**
 * State the proxy keeps in the host cluster so that restarts and replicas
 * agree: the CA (Secret `tower-ca`, when no `--ca-cert/--ca-key` is given)
 * and the SSH host key (Secret `tower-host-key`). Both are create-if-absent:
 * when two replicas race, the loser of the create (409 AlreadyExists) reads
 * and uses the winner's. An existing Secret that does not load is an error,
 * never silently replaced (that would invalidate issued kubeconfigs or
 * change the fingerprint agents pin).
 * @module
 */

import { Buffer } from "node:buffer";
import { Backoff, sleep } from "../backoff.ts";
import type { KubeClient } from "../kube/client.ts";
import { isAlreadyExists, KubeApiError } from "../kube/errors.ts";
import { type KubeObject, SECRETS } from "../kube/types.ts";
import { logger } from "../log.ts";
import { type CA, generateCA, loadCA } from "../pki/mod.ts";
import { generateHostKeyPem, parseHostKey } from "../tunnel/hostkey.ts";
import { TOWER_NAMESPACE } from "./types.ts";

const log = logger("controller/persist");

/** Default name of the CA Secret. */
export const CA_SECRET = "tower-ca";
/** Default name of the host key Secret. */
export const HOST_KEY_SECRET = "tower-host-key";

/** A core/v1 Secret. */
export interface SecretObject extends KubeObject {
  type?: string;
  data?: Record<string, string>;
}

/** Options of {@link loadOrCreateCA} and {@link loadOrCreateHostKeyPem}. */
export interface PersistOptions {
  /**
   * Keep retrying (with backoff) while the API server is unreachable or
   * answers 429/5xx, instead of throwing (default false). Errors about the
   * Secret itself (unusable content, 403) still throw at once.
   */
  waitForApi?: boolean;
  /** Stops waiting (the call then throws). */
  signal?: AbortSignal;
  /** Backoff between attempts (default 500 ms doubling up to 30 s). */
  backoff?: { initialMs: number; maxMs: number };
}

function transient(err: unknown): boolean {
  return err instanceof KubeApiError ? err.isRetryable : !(err instanceof DOMException);
}

function b64(s: string): string {
  return Buffer.from(s, "utf8").toString("base64");
}

function unb64(s: string | undefined): string | undefined {
  return s === undefined ? undefined : Buffer.from(s, "base64").toString("utf8");
}

/**
 * Read Secret `name`, or create it from `make()` when absent; on losing a
 * create race, read the winner's. Returns the Secret's data and whether this
 * call created it.
 */
async function readOrCreateSecret(
  client: KubeClient,
  namespace: string,
  name: string,
  make: () => Promise<SecretObject>,
  opts: PersistOptions,
): Promise<{ secret: SecretObject; created: boolean }> {
  const where = `Secret ${namespace}/${name}`;
  const backoff = new Backoff(opts.backoff ?? { initialMs: 500, maxMs: 30_000 });
  for (;;) {
    try {
      return await readOrCreateOnce(client, namespace, name, make, opts.signal);
    } catch (err) {
      if (!opts.waitForApi || opts.signal?.aborted || !transient(err)) {
        throw new Error(`${where}: ${(err as Error).message}`);
      }
      const delay = backoff.next();
      log.warn("cannot reach the API server; retrying", {
        secret: where,
        err: (err as Error).message,
        retryInMs: delay,
      });
      await sleep(delay, opts.signal);
      if (opts.signal?.aborted) throw new Error(`${where}: aborted while waiting for the API`);
    }
  }
}

async function readOrCreateOnce(
  client: KubeClient,
  namespace: string,
  name: string,
  make: () => Promise<SecretObject>,
  signal?: AbortSignal,
): Promise<{ secret: SecretObject; created: boolean }> {
  const existing = await client.tryGet<SecretObject>(SECRETS, name, { namespace, signal });
  if (existing) return { secret: existing, created: false };
  const fresh = await make();
  try {
    const created = await client.create<SecretObject>(SECRETS, fresh, { namespace, signal });
    return { secret: created, created: true };
  } catch (err) {
    if (!isAlreadyExists(err)) throw err;
    log.info("another replica created it first; using theirs", {
      secret: `${namespace}/${name}`,
    });
    const theirs = await client.get<SecretObject>(SECRETS, name, { namespace, signal });
    return { secret: theirs, created: false };
  }
}

/**
 * Tower's CA from Secret `tower-ca` (type `kubernetes.io/tls`, keys `tls.crt`
 * and `tls.key`), generating and storing a new one when the Secret does not
 * exist. Throws when the stored CA is unusable (expired, key mismatch, …).
 */
export async function loadOrCreateCA(
  client: KubeClient,
  namespace: string = TOWER_NAMESPACE,
  name: string = CA_SECRET,
  opts: PersistOptions = {},
): Promise<CA & { created: boolean }> {
  const { secret, created } = await readOrCreateSecret(client, namespace, name, async () => {
    const ca = await generateCA();
    return {
      apiVersion: "v1",
      kind: "Secret",
      metadata: {
        name,
        namespace,
        labels: { app: "tower", "app.kubernetes.io/name": "tower" },
      },
      type: "kubernetes.io/tls",
      data: { "tls.crt": b64(ca.certPem), "tls.key": b64(ca.keyPem), "ca.crt": b64(ca.certPem) },
    };
  }, opts);
  const where = `Secret ${namespace}/${name}`;
  const ca = await caFromSecret(secret, where);
  log.info(created ? "generated a CA and stored it" : "loaded the CA", { secret: where });
  return { ...ca, created };
}

/**
 * Tower's CA from Secret `tower-ca` as the proxy stored it, without ever creating one (for
 * commands that issue certificates the proxy must accept).
 */
export async function readCA(
  client: KubeClient,
  namespace: string = TOWER_NAMESPACE,
  name: string = CA_SECRET,
): Promise<CA> {
  const where = `Secret ${namespace}/${name}`;
  let secret: SecretObject | undefined;
  try {
    secret = await client.tryGet<SecretObject>(SECRETS, name, { namespace });
  } catch (err) {
    throw new Error(`${where}: ${(err as Error).message}`);
  }
  if (!secret) throw new Error(`${where}: not found (has the proxy started?)`);
  return await caFromSecret(secret, where);
}

async function caFromSecret(secret: SecretObject, where: string): Promise<CA> {
  const certPem = unb64(secret.data?.["tls.crt"]);
  const keyPem = unb64(secret.data?.["tls.key"]);
  if (!certPem || !keyPem) throw new Error(`${where}: missing tls.crt or tls.key`);
  try {
    return await loadCA(certPem, keyPem);
  } catch (err) {
    throw new Error(`${where}: ${(err as Error).message}`);
  }
}

/**
 * The proxy's SSH host key PEM from Secret `tower-host-key` (key
 * `ssh-privatekey`), generating and storing a new ECDSA P-256 key when the
 * Secret does not exist. Throws when the stored key does not parse.
 */
export async function loadOrCreateHostKeyPem(
  client: KubeClient,
  namespace: string = TOWER_NAMESPACE,
  name: string = HOST_KEY_SECRET,
  opts: PersistOptions = {},
): Promise<{ pem: string; created: boolean }> {
  const { secret, created } = await readOrCreateSecret(
    client,
    namespace,
    name,
    () =>
      Promise.resolve({
        apiVersion: "v1",
        kind: "Secret",
        metadata: {
          name,
          namespace,
          labels: { app: "tower", "app.kubernetes.io/name": "tower" },
        },
        type: "kubernetes.io/ssh-auth",
        data: { "ssh-privatekey": b64(generateHostKeyPem()) },
      }),
    opts,
  );
  const where = `Secret ${namespace}/${name}`;
  const pem = unb64(secret.data?.["ssh-privatekey"]);
  if (!pem) throw new Error(`${where}: missing ssh-privatekey`);
  parseHostKey(pem, where); // throws with context when unusable
  log.info(created ? "generated the host key and stored it" : "loaded the host key", {
    secret: where,
  });
  return { pem, created };
}
