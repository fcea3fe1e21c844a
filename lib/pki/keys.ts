/**
 * Private key import: PKCS#8, PKCS#1 (`RSA PRIVATE KEY`) and SEC1
 * (`EC PRIVATE KEY`) PEM become Web Crypto signing keys. `node:crypto` is used
 * only to convert between key formats.
 * @module
 */

import { createPrivateKey, createPublicKey, type KeyObject } from "node:crypto";
import { Buffer } from "node:buffer";
import { encodePem, firstPemBlock } from "./pem.ts";

/** Signature families the PKI supports. */
export type KeyAlgorithmName = "ECDSA" | "RSA";

/** A private key imported for signing, with its public half and PKCS#8 PEM. */
export interface ImportedKey {
  algorithm: KeyAlgorithmName;
  privateKey: CryptoKey;
  publicKey: CryptoKey;
  /** PKCS#8 `PRIVATE KEY` PEM. */
  pkcs8Pem: string;
  /** DER SubjectPublicKeyInfo of the public half (to match against a certificate). */
  spki: Uint8Array;
  /** Web Crypto parameters used to sign with this key. */
  signingAlgorithm: RsaHashedImportParams | EcdsaParams;
}

const CURVES: Record<string, { name: string; hash: string }> = {
  prime256v1: { name: "P-256", hash: "SHA-256" },
  "P-256": { name: "P-256", hash: "SHA-256" },
  secp384r1: { name: "P-384", hash: "SHA-384" },
  "P-384": { name: "P-384", hash: "SHA-384" },
};

const KEY_LABELS = ["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"];

function toKeyObject(keyPem: string): KeyObject {
  if (keyPem.includes("-----BEGIN ENCRYPTED PRIVATE KEY-----") || keyPem.includes("Proc-Type:")) {
    throw new Error("private key: encrypted private keys are not supported");
  }
  const block = firstPemBlock(keyPem, KEY_LABELS, "private key");
  const pem = encodePem(block.label, block.der);
  try {
    return createPrivateKey({ key: pem, format: "pem" });
  } catch (err) {
    throw new Error(`private key: unparsable ${block.label}: ${(err as Error).message}`);
  }
}

/** Import a PEM private key (PKCS#8, PKCS#1 or SEC1; RSA or ECDSA P-256/P-384). */
export async function importPrivateKeyPem(keyPem: string): Promise<ImportedKey> {
  const ko = toKeyObject(keyPem);
  const pkcs8 = new Uint8Array(ko.export({ format: "der", type: "pkcs8" }) as Buffer);
  const spki = new Uint8Array(
    createPublicKey(ko).export({ format: "der", type: "spki" }) as Buffer,
  );
  let importParams: RsaHashedImportParams | EcKeyImportParams;
  let signingAlgorithm: RsaHashedImportParams | EcdsaParams;
  let algorithm: KeyAlgorithmName;
  if (ko.asymmetricKeyType === "rsa") {
    const bits = ko.asymmetricKeyDetails?.modulusLength ?? 0;
    if (bits < 2048) throw new Error(`private key: RSA key of ${bits} bits is too small`);
    algorithm = "RSA";
    importParams = { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" };
    signingAlgorithm = importParams;
  } else if (ko.asymmetricKeyType === "ec") {
    const curve = CURVES[ko.asymmetricKeyDetails?.namedCurve ?? ""];
    if (!curve) {
      throw new Error(
        `private key: unsupported EC curve ${ko.asymmetricKeyDetails?.namedCurve} (want P-256 or P-384)`,
      );
    }
    algorithm = "ECDSA";
    importParams = { name: "ECDSA", namedCurve: curve.name };
    signingAlgorithm = { name: "ECDSA", hash: curve.hash };
  } else {
    throw new Error(`private key: unsupported key type ${ko.asymmetricKeyType} (want RSA or EC)`);
  }
  const privateKey = await crypto.subtle.importKey("pkcs8", pkcs8, importParams, true, ["sign"]);
  const publicKey = await crypto.subtle.importKey("spki", spki, importParams, true, ["verify"]);
  return {
    algorithm,
    privateKey,
    publicKey,
    pkcs8Pem: encodePem("PRIVATE KEY", pkcs8),
    spki,
    signingAlgorithm,
  };
}

/** Signing parameters for a Web Crypto key generated or imported by this module. */
export function signingAlgorithmFor(key: CryptoKey): RsaHashedImportParams | EcdsaParams {
  const alg = key.algorithm as EcKeyAlgorithm | RsaHashedKeyAlgorithm;
  if (alg.name === "ECDSA") {
    const curve = CURVES[(alg as EcKeyAlgorithm).namedCurve];
    return { name: "ECDSA", hash: curve?.hash ?? "SHA-256" };
  }
  return { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" };
}

/** Generate a fresh ECDSA P-256 key pair (extractable, for sign/verify). */
export async function generateEcKeyPair(): Promise<CryptoKeyPair> {
  return await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, [
    "sign",
    "verify",
  ]);
}

/** Export a Web Crypto private key as PKCS#8 PEM. */
export async function exportPkcs8Pem(key: CryptoKey): Promise<string> {
  return encodePem("PRIVATE KEY", await crypto.subtle.exportKey("pkcs8", key));
}

/** A random positive 128-bit serial number as hex (top bit clear, never a leading zero byte). */
export function randomSerial(): string {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[0] = (b[0] & 0x7f) | 0x40;
  return Buffer.from(b).toString("hex");
}
