/**
 * Binds a client certificate Tower issues to one member cluster, one generation of that
 * cluster's credentials, and one role, with a URI subject alternative name:
 *
 *     urn:tower:cluster:<cluster>:<epoch>:<role>
 *
 * `<epoch>` is an HMAC-SHA256 (truncated to 128 bits, base64url) keyed by a secret derived from
 * Tower's CA private key, over the cluster's name, its agent token and its credential generation
 * (an annotation an operator bumps to revoke). Rotating the token or bumping the generation
 * changes the epoch, and every certificate carrying the old one is refused from then on. Only a
 * holder of the CA key can compute an epoch (so only Tower can mint a valid binding), and an
 * epoch reveals nothing about the token. `<role>` is `admin` (the kubeconfig Tower writes into
 * the Cluster: requests run as the agent, client impersonation headers pass through) or `user`
 * (a kubeconfig minted for one person: requests impersonate the certificate's CN and O).
 * @module
 */

import { Buffer } from "node:buffer";
import { createHmac, createPrivateKey, hkdfSync } from "node:crypto";
import type { CA } from "./ca.ts";

/** What a bound certificate lets its holder do. */
export type BindingRole = "admin" | "user";

/** A parsed binding URI. */
export interface Binding {
  cluster: string;
  epoch: string;
  role: BindingRole;
}

const PREFIX = "urn:tower:cluster:";
/** Cluster names are DNS-1123 subdomains: no `:` in them, so the URI splits unambiguously. */
const BINDING =
  /^urn:tower:cluster:([a-z0-9]([-a-z0-9.]*[a-z0-9])?):([A-Za-z0-9_-]{22}):(admin|user)$/;

/** The secret epochs are keyed with, derived once per CA. */
const keys = new WeakMap<CA, Buffer>();

function bindingKey(ca: CA): Buffer {
  let key = keys.get(ca);
  if (!key) {
    const der = createPrivateKey(ca.keyPem).export({ type: "pkcs8", format: "der" });
    key = Buffer.from(hkdfSync("sha256", der, "", "tower client certificate binding v1", 32));
    keys.set(ca, key);
  }
  return key;
}

/** What an epoch is computed from. */
export interface EpochInput {
  cluster: string;
  /** The cluster's agent token. */
  token: string;
  /** The cluster's credential generation (empty when never bumped). */
  generation: string;
}

/** The epoch of `input`'s credentials under `ca` (22 base64url characters). */
export function credentialEpoch(ca: CA, input: EpochInput): string {
  const mac = createHmac("sha256", bindingKey(ca));
  // Length-prefixed fields: no two different inputs hash the same bytes.
  for (const field of [input.cluster, input.token, input.generation]) {
    const bytes = Buffer.from(field, "utf8");
    const len = Buffer.alloc(4);
    len.writeUInt32BE(bytes.length);
    mac.update(len).update(bytes);
  }
  return mac.digest().subarray(0, 16).toString("base64url");
}

/** The URI SAN for `b`. */
export function bindingUri(b: Binding): string {
  const uri = `${PREFIX}${b.cluster}:${b.epoch}:${b.role}`;
  if (!BINDING.test(uri)) throw new Error(`cannot bind a certificate to cluster ${b.cluster}`);
  return uri;
}

/** The binding in `uris` (a certificate's URI SANs); undefined when none or more than one. */
export function findBinding(uris: readonly string[]): Binding | undefined {
  let found: Binding | undefined;
  for (const uri of uris) {
    if (!uri.startsWith(PREFIX)) continue;
    const m = BINDING.exec(uri);
    if (!m || found) return undefined; // malformed, or ambiguous
    found = { cluster: m[1], epoch: m[3], role: m[4] as BindingRole };
  }
  return found;
}
