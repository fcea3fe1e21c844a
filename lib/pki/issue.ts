/**
 * Issue leaf certificates from a {@link CA}: serving certificates (SANs,
 * serverAuth) and client certificates (CN/O, clientAuth). Leaf keys are ECDSA
 * P-256; serials are random 128-bit values.
 * @module
 */

import "reflect-metadata";
import {
  AuthorityKeyIdentifierExtension,
  BasicConstraintsExtension,
  ExtendedKeyUsage,
  ExtendedKeyUsageExtension,
  type Extension,
  type JsonGeneralName,
  KeyUsageFlags,
  KeyUsagesExtension,
  SubjectAlternativeNameExtension,
  SubjectKeyIdentifierExtension,
  X509CertificateGenerator,
} from "@peculiar/x509";
import { BACKDATE_MS, type CA, type KeyPairPem, subjectName } from "./ca.ts";
import { exportPkcs8Pem, generateEcKeyPair, randomSerial, signingAlgorithmFor } from "./keys.ts";

/** Options for {@link issueServingCert}. */
export interface ServingCertOptions {
  commonName: string;
  dnsNames?: string[];
  ipAddresses?: string[];
  /** Default 365; never beyond the CA's notAfter. */
  validDays?: number;
}

/** Options for {@link issueClientCert}. */
export interface ClientCertOptions {
  commonName: string;
  /** Subject O values (Kubernetes groups). */
  organizations?: string[];
  /** URI subject alternative names (e.g. a cluster binding, `binding.ts`). */
  uris?: string[];
  /** Default 365; never beyond the CA's notAfter. */
  validDays?: number;
  /** Validity in milliseconds; takes precedence over `validDays`. */
  validMs?: number;
}

const DAY_MS = 24 * 60 * 60 * 1000;
const IPV4 = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/;

function isIp(s: string): boolean {
  return IPV4.test(s) || (s.includes(":") && /^[0-9a-fA-F:.]+$/.test(s));
}

/**
 * Each CA's authority key identifier extension, made once: making it parses the CA
 * certificate's extensions, ~0.5 ms and a heap of garbage per certificate when a thousand
 * clusters' serving certificates are issued at start.
 */
const authorityKeyIds = new WeakMap<CA, Promise<AuthorityKeyIdentifierExtension>>();

function authorityKeyId(ca: CA): Promise<AuthorityKeyIdentifierExtension> {
  let aki = authorityKeyIds.get(ca);
  if (aki === undefined) {
    aki = AuthorityKeyIdentifierExtension.create(ca.cert);
    authorityKeyIds.set(ca, aki);
  }
  return aki;
}

async function issue(
  ca: CA,
  subject: string,
  validMs: number,
  extensions: Extension[],
): Promise<KeyPairPem> {
  const keys = await generateEcKeyPair();
  const now = Date.now();
  const notAfter = Math.min(now + validMs, ca.cert.notAfter.getTime());
  const cert = await X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject,
    issuer: ca.cert.subjectName,
    notBefore: new Date(Math.max(now - BACKDATE_MS, ca.cert.notBefore.getTime())),
    notAfter: new Date(notAfter),
    publicKey: keys.publicKey,
    signingKey: ca.privateKey,
    signingAlgorithm: signingAlgorithmFor(ca.privateKey),
    extensions: [
      new BasicConstraintsExtension(false, undefined, true),
      ...extensions,
      await SubjectKeyIdentifierExtension.create(keys.publicKey),
      await authorityKeyId(ca),
    ],
  });
  return { certPem: cert.toString("pem") + "\n", keyPem: await exportPkcs8Pem(keys.privateKey) };
}

/**
 * Issue a TLS serving certificate with the given DNS and IP SANs (IP literals
 * in `dnsNames` become IP SANs; with no SANs at all the CN becomes the SAN).
 */
export async function issueServingCert(ca: CA, opts: ServingCertOptions): Promise<KeyPairPem> {
  const names: JsonGeneralName[] = [];
  const seen = new Set<string>();
  const add = (type: "dns" | "ip", value: string) => {
    const key = `${type}:${value.toLowerCase()}`;
    if (value === "" || seen.has(key)) return;
    seen.add(key);
    names.push({ type, value });
  };
  for (const d of opts.dnsNames ?? []) {
    if (isIp(d)) add("ip", d);
    else add("dns", d);
  }
  for (const ip of opts.ipAddresses ?? []) {
    if (!isIp(ip)) throw new Error(`serving cert ${opts.commonName}: invalid IP address ${ip}`);
    add("ip", ip);
  }
  if (names.length === 0) {
    if (isIp(opts.commonName)) add("ip", opts.commonName);
    else add("dns", opts.commonName);
  }
  return await issue(ca, subjectName(opts.commonName), (opts.validDays ?? 365) * DAY_MS, [
    new KeyUsagesExtension(KeyUsageFlags.digitalSignature, true),
    new ExtendedKeyUsageExtension([ExtendedKeyUsage.serverAuth]),
    new SubjectAlternativeNameExtension(names),
  ]);
}

/** Issue a TLS client certificate (e.g. CN `kubernetes-admin`, O `system:masters`). */
export async function issueClientCert(ca: CA, opts: ClientCertOptions): Promise<KeyPairPem> {
  const extensions: Extension[] = [
    new KeyUsagesExtension(KeyUsageFlags.digitalSignature, true),
    new ExtendedKeyUsageExtension([ExtendedKeyUsage.clientAuth]),
  ];
  if (opts.uris?.length) {
    extensions.push(
      new SubjectAlternativeNameExtension(
        opts.uris.map((value): JsonGeneralName => ({ type: "url", value })),
      ),
    );
  }
  return await issue(
    ca,
    subjectName(opts.commonName, opts.organizations ?? []),
    opts.validMs ?? (opts.validDays ?? 365) * DAY_MS,
    extensions,
  );
}
