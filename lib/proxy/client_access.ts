/**
 * Who a caller of a cluster's kubernetes endpoint is, and what it may do there, decided from
 * its verified client certificate (`lib/pki/verify.ts`) and the certificate's cluster binding
 * (`lib/pki/binding.ts`):
 *
 * - a certificate not bound to this cluster, or bound to an earlier generation of its
 *   credentials (token rotated, generation bumped), is refused (401);
 * - `admin` (the kubeconfig Tower writes into the Cluster): requests run as the agent and the
 *   client's `Impersonate-*` headers pass through, so `kubectl --as` behaves as it does
 *   straight to the member;
 * - `user` (a kubeconfig minted for one person): requests impersonate the certificate's CN and
 *   O values, so the member's RBAC applies to that person; the client may not impersonate
 *   anyone itself (403).
 * @module
 */

import { timingSafeEqual } from "node:crypto";
import { Buffer } from "node:buffer";
import { type ClientCertVerdict, findBinding } from "../pki/mod.ts";

/** What a request through the kubernetes endpoint runs as. */
export type ClientAccess =
  | { ok: true; role: "admin" | "user"; user: string; groups: string[] }
  | { ok: false; reason: string };

/**
 * Printable ASCII without surrounding spaces, at most 256 characters: what may go into an
 * `Impersonate-*` header as is. Certificates naming anything else are refused.
 */
export const IDENTITY_NAME = /^[\x21-\x7e](?:[\x20-\x7e]{0,254}[\x21-\x7e])?$/;

function sameEpoch(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/**
 * The access `verdict`'s certificate gives on `cluster`'s endpoint while the cluster's
 * credential epoch is `epoch` (undefined: no credentials yet, nothing is accepted).
 */
export function clientAccess(
  verdict: ClientCertVerdict,
  cluster: string,
  epoch: string | undefined,
): ClientAccess {
  if (!verdict.ok) return verdict;
  const who = `certificate CN=${verdict.commonName}`;
  const binding = findBinding(verdict.uris);
  if (!binding) return { ok: false, reason: `${who}: not bound to a cluster` };
  if (binding.cluster !== cluster) {
    return { ok: false, reason: `${who}: issued for cluster ${binding.cluster}` };
  }
  if (epoch === undefined || !sameEpoch(binding.epoch, epoch)) {
    return { ok: false, reason: `${who}: issued for earlier credentials of the cluster` };
  }
  const names = [verdict.commonName, ...verdict.organizations];
  if (binding.role === "user" && !names.every((n) => IDENTITY_NAME.test(n))) {
    return { ok: false, reason: `${who}: a user or group name cannot be impersonated` };
  }
  return {
    ok: true,
    role: binding.role,
    user: verdict.commonName,
    groups: verdict.organizations,
  };
}
