/**
 * Verify a peer (client) certificate against a CA: issuer and signature,
 * validity window and, when present, the clientAuth extended key usage.
 * Deno's `node:tls` server does not check a requested client certificate, so
 * callers pass the peer's DER here.
 * @module
 */

import "reflect-metadata";
import {
  BasicConstraintsExtension,
  ExtendedKeyUsage,
  ExtendedKeyUsageExtension,
  SubjectAlternativeNameExtension,
  X509Certificate,
} from "@peculiar/x509";
import type { CA } from "./ca.ts";
import { firstPemBlock } from "./pem.ts";

/** A client certificate that passed {@link verifyClientCert}. */
export interface VerifiedClient {
  ok: true;
  commonName: string;
  organizations: string[];
  /** URI subject alternative names (where a cluster binding lives). */
  uris: string[];
  notAfter: Date;
}

/** Result of {@link verifyClientCert}. */
export type ClientCertVerdict = VerifiedClient | { ok: false; reason: string };

function parsePeer(cert: Uint8Array | string): X509Certificate {
  if (typeof cert === "string") {
    return new X509Certificate(firstPemBlock(cert, ["CERTIFICATE"], "client certificate").der);
  }
  return new X509Certificate(new Uint8Array(cert));
}

/**
 * Check that `cert` (DER bytes or PEM) was issued and signed by `ca`, is
 * within its validity window at `now`, is not itself a CA, and allows
 * clientAuth if it carries an extended key usage. Never throws.
 */
export async function verifyClientCert(
  ca: CA | X509Certificate,
  cert: Uint8Array | string,
  now: Date = new Date(),
): Promise<ClientCertVerdict> {
  const caCert = ca instanceof X509Certificate ? ca : ca.cert;
  let peer: X509Certificate;
  try {
    peer = parsePeer(cert);
  } catch (err) {
    return { ok: false, reason: `unparsable certificate: ${(err as Error).message}` };
  }
  const subject = peer.subject;
  if (peer.issuer !== caCert.subject) {
    return { ok: false, reason: `certificate ${subject}: issuer ${peer.issuer} is not the CA` };
  }
  let signed = false;
  try {
    signed = await peer.verify({ publicKey: caCert.publicKey, signatureOnly: true });
  } catch (err) {
    return { ok: false, reason: `certificate ${subject}: signature check failed: ${err}` };
  }
  if (!signed) {
    return { ok: false, reason: `certificate ${subject}: signature is not from the CA` };
  }
  const t = now.getTime();
  if (t < peer.notBefore.getTime()) {
    return {
      ok: false,
      reason: `certificate ${subject}: not yet valid (notBefore ${peer.notBefore.toISOString()})`,
    };
  }
  if (t > peer.notAfter.getTime()) {
    return {
      ok: false,
      reason: `certificate ${subject}: expired (notAfter ${peer.notAfter.toISOString()})`,
    };
  }
  const bc = peer.getExtension(BasicConstraintsExtension);
  if (bc?.ca) return { ok: false, reason: `certificate ${subject}: is a CA, not a client` };
  const eku = peer.getExtension(ExtendedKeyUsageExtension);
  if (eku && !eku.usages.map(String).includes(ExtendedKeyUsage.clientAuth)) {
    return { ok: false, reason: `certificate ${subject}: extended key usage lacks clientAuth` };
  }
  const name = peer.subjectName;
  const san = peer.getExtension(SubjectAlternativeNameExtension);
  const uris = san ? san.names.items.filter((n) => n.type === "url").map((n) => n.value) : [];
  return {
    ok: true,
    commonName: name.getField("CN")[0] ?? "",
    organizations: name.getField("O"),
    uris,
    notAfter: peer.notAfter,
  };
}
