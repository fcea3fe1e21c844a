/**
 * Certificate authority: generate a self-signed CA or load one from PEM,
 * refusing CAs that are expired, not yet valid, not CAs, or whose key does not
 * match the certificate.
 * @module
 */

import "reflect-metadata";
import {
  AuthorityKeyIdentifierExtension,
  BasicConstraintsExtension,
  KeyUsageFlags,
  KeyUsagesExtension,
  SubjectKeyIdentifierExtension,
  X509Certificate,
  X509CertificateGenerator,
} from "@peculiar/x509";
import { firstPemBlock } from "./pem.ts";
import {
  exportPkcs8Pem,
  importPrivateKeyPem,
  type KeyAlgorithmName,
  randomSerial,
} from "./keys.ts";

/** A certificate and its private key, both PEM. */
export interface KeyPairPem {
  /** `CERTIFICATE` PEM. */
  certPem: string;
  /** PKCS#8 `PRIVATE KEY` PEM. */
  keyPem: string;
}

/** A loaded or generated certificate authority, ready to sign. */
export interface CA extends KeyPairPem {
  cert: X509Certificate;
  privateKey: CryptoKey;
  publicKey: CryptoKey;
  algorithm: KeyAlgorithmName;
}

/** Options for {@link generateCA}. */
export interface GenerateCAOptions {
  /** Subject CN; default `tower-ca`. */
  commonName?: string;
  /** Validity in days; default 3650. */
  validDays?: number;
  /** Key algorithm; default ECDSA (P-256). RSA uses 2048-bit keys. */
  algorithm?: KeyAlgorithmName;
}

const DAY_MS = 24 * 60 * 60 * 1000;
/** Certificates are back-dated this much to tolerate clock skew between hosts. */
export const BACKDATE_MS = 5 * 60 * 1000;

function escapeDnValue(v: string): string {
  return v.replace(/([,+"\\<>;=])/g, "\\$1").replace(/^([ #])/, "\\$1").replace(/ $/, "\\ ");
}

/** Build an RFC 4514 subject string from a CN and optional organizations. */
export function subjectName(commonName: string, organizations: string[] = []): string {
  const parts = [`CN=${escapeDnValue(commonName)}`];
  for (const o of organizations) parts.push(`O=${escapeDnValue(o)}`);
  return parts.join(", ");
}

/** Generate a new self-signed CA. */
export async function generateCA(opts: GenerateCAOptions = {}): Promise<CA> {
  const algorithm = opts.algorithm ?? "ECDSA";
  const validDays = opts.validDays ?? 3650;
  const keyParams: RsaHashedKeyGenParams | EcKeyGenParams = algorithm === "RSA"
    ? {
      name: "RSASSA-PKCS1-v1_5",
      hash: "SHA-256",
      modulusLength: 2048,
      publicExponent: new Uint8Array([1, 0, 1]),
    }
    : { name: "ECDSA", namedCurve: "P-256" };
  const keys = await crypto.subtle.generateKey(keyParams, true, ["sign", "verify"]);
  const now = Date.now();
  const cert = await X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: subjectName(opts.commonName ?? "tower-ca"),
    notBefore: new Date(now - BACKDATE_MS),
    notAfter: new Date(now + validDays * DAY_MS),
    keys,
    signingAlgorithm: algorithm === "RSA"
      ? { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" } as Algorithm
      : { name: "ECDSA", hash: "SHA-256" } as EcdsaParams,
    extensions: [
      new BasicConstraintsExtension(true, undefined, true),
      new KeyUsagesExtension(
        KeyUsageFlags.keyCertSign | KeyUsageFlags.cRLSign | KeyUsageFlags.digitalSignature,
        true,
      ),
      await SubjectKeyIdentifierExtension.create(keys.publicKey),
      await AuthorityKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return {
    cert,
    certPem: cert.toString("pem") + "\n",
    keyPem: await exportPkcs8Pem(keys.privateKey),
    privateKey: keys.privateKey,
    publicKey: keys.publicKey,
    algorithm,
  };
}

function parseCert(certPem: string, what: string): X509Certificate {
  const block = firstPemBlock(certPem, ["CERTIFICATE"], what);
  try {
    return new X509Certificate(block.der);
  } catch (err) {
    throw new Error(`${what}: unparsable certificate: ${(err as Error).message}`);
  }
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Load a CA from PEM: the first `CERTIFICATE` of `certPem` and a private key in
 * PKCS#8, PKCS#1 (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`) form, RSA or
 * ECDSA P-256/P-384. Throws a descriptive Error when the CA is expired or not
 * yet valid at `now`, is not a CA (basicConstraints), has a key usage that
 * forbids certificate signing, the key does not match, or anything is unparsable.
 */
export async function loadCA(certPem: string, keyPem: string, now: Date = new Date()): Promise<CA> {
  const cert = parseCert(certPem, "CA certificate");
  const subject = cert.subject;
  if (now.getTime() < cert.notBefore.getTime()) {
    throw new Error(
      `CA certificate ${subject}: not yet valid (notBefore ${cert.notBefore.toISOString()}, now ${now.toISOString()})`,
    );
  }
  if (now.getTime() > cert.notAfter.getTime()) {
    throw new Error(
      `CA certificate ${subject}: expired (notAfter ${cert.notAfter.toISOString()}, now ${now.toISOString()})`,
    );
  }
  const bc = cert.getExtension(BasicConstraintsExtension);
  if (!bc || !bc.ca) {
    throw new Error(`CA certificate ${subject}: not a CA (basicConstraints CA:TRUE missing)`);
  }
  const ku = cert.getExtension(KeyUsagesExtension);
  if (ku && (ku.usages & KeyUsageFlags.keyCertSign) === 0) {
    throw new Error(`CA certificate ${subject}: keyUsage does not allow keyCertSign`);
  }
  let key;
  try {
    key = await importPrivateKeyPem(keyPem);
  } catch (err) {
    throw new Error(`CA key: ${(err as Error).message}`);
  }
  if (!bytesEqual(new Uint8Array(cert.publicKey.rawData), key.spki)) {
    throw new Error(`CA certificate ${subject}: private key does not match the certificate`);
  }
  return {
    cert,
    certPem: cert.toString("pem") + "\n",
    keyPem: key.pkcs8Pem,
    privateKey: key.privateKey,
    publicKey: key.publicKey,
    algorithm: key.algorithm,
  };
}
