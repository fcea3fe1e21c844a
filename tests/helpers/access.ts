/**
 * Client access for endpoint tests that are not about certificate binding: every certificate
 * Tower's CA signed is admin, bound or not (production uses `clientAccess`, which also checks
 * the cluster binding).
 * @module
 */

import type { ClientCertVerdict } from "../../lib/pki/mod.ts";
import type { ClientAccess } from "../../lib/proxy/client_access.ts";

/** Admin access for any certificate that passed verification. */
export function anyVerifiedAsAdmin(v: ClientCertVerdict): ClientAccess {
  return v.ok ? { ok: true, role: "admin", user: v.commonName, groups: v.organizations } : v;
}
