/**
 * What authenticates the selected kubeconfig user right now: client
 * certificate, bearer token (static, `token-file`, `exec` plugin or
 * `auth-provider`), basic auth, impersonation. Asked again before each use:
 * token files are re-read (the kubelet rotates service-account tokens) and an
 * exec plugin runs again once its credential has expired.
 *
 * Precedence is client-node's, as Tower had it: a static certificate over an
 * exec plugin's, a static token or `token-file` over an exec plugin's or an
 * auth provider's, any token over basic auth.
 * @module
 */

import { Buffer } from "node:buffer";
import { authProviderHeader } from "./auth_provider.ts";
import { execCredential } from "./exec_credential.ts";
import type { KubeconfigSelection } from "./kubeconfig.ts";

/** Credentials of one moment. */
export interface UserCredentials {
  /** Client certificate and key (PEM). */
  certPem?: string;
  keyPem?: string;
  /** The `Authorization` header value (`Bearer …` or `Basic …`). */
  authorization?: string;
  /** The bearer token alone, when the header is one. */
  bearerToken?: string;
  /** `Impersonate-User`. */
  impersonate?: string;
  /** When an exec plugin's credential expires (ms since the epoch). */
  expiresAt?: number;
}

/**
 * The selected user's credentials.
 * @throws Error starting with the kubeconfig (`sel.source`), naming the user and the file or
 * plugin at fault (never a secret).
 */
export async function userCredentials(sel: KubeconfigSelection): Promise<UserCredentials> {
  try {
    return await resolve(sel);
  } catch (err) {
    throw new Error(`${sel.source}: ${(err as Error).message}`);
  }
}

async function resolve(sel: KubeconfigSelection): Promise<UserCredentials> {
  const u = sel.user;
  const out: UserCredentials = { certPem: u.certPem, keyPem: u.keyPem, impersonate: u.impersonate };
  if (u.exec) {
    const cred = await execCredential(u.exec, sel.cluster);
    if (!out.certPem && !out.keyPem) {
      out.certPem = cred.certPem;
      out.keyPem = cred.keyPem;
    }
    if (cred.token) out.authorization = `Bearer ${cred.token}`;
    out.expiresAt = cred.expiresAt;
  } else if (u.authProvider) {
    out.authorization = await authProviderHeader(sel);
  }
  let token = u.token;
  if (!token && u.tokenFile) {
    try {
      token = (await Deno.readTextFile(u.tokenFile)).trim();
    } catch (err) {
      throw new Error(`user ${u.name}: token-file ${u.tokenFile}: ${(err as Error).message}`);
    }
  }
  if (token) out.authorization = `Bearer ${token}`;
  if (!out.authorization && u.username) {
    out.authorization = `Basic ${
      Buffer.from(`${u.username}:${u.password ?? ""}`).toString("base64")
    }`;
  }
  if (out.authorization?.startsWith("Bearer ")) out.bearerToken = out.authorization.slice(7);
  if ((out.certPem === undefined) !== (out.keyPem === undefined)) {
    throw new Error(`user ${u.name}: client certificate without key or key without certificate`);
  }
  return out;
}
