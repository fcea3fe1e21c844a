/**
 * PEM encoding helpers: split a PEM bundle into blocks, encode DER as PEM,
 * and fingerprint DER bytes.
 * @module
 */

import { createHash } from "node:crypto";
import { Buffer } from "node:buffer";

/** One `-----BEGIN <label>-----` block of a PEM document. */
export interface PemBlock {
  /** The label, e.g. `CERTIFICATE`, `PRIVATE KEY`, `EC PRIVATE KEY`. */
  label: string;
  /** The decoded body. */
  der: Uint8Array<ArrayBuffer>;
}

const BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----([\s\S]*?)-----END \1-----/g;

/** Parse every PEM block of `pem` (headers like `Proc-Type:` are rejected as unsupported). */
export function decodePem(pem: string): PemBlock[] {
  const out: PemBlock[] = [];
  for (const m of pem.matchAll(BLOCK)) {
    const body = m[2];
    if (body.includes(":")) {
      throw new Error(`PEM block ${m[1]}: encrypted or header-bearing PEM is not supported`);
    }
    const b64 = body.replace(/\s+/g, "");
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64)) {
      throw new Error(`PEM block ${m[1]}: invalid base64 body`);
    }
    out.push({ label: m[1], der: new Uint8Array(Buffer.from(b64, "base64")) });
  }
  return out;
}

/** The first block whose label is one of `labels`, or an Error naming what was expected. */
export function firstPemBlock(pem: string, labels: string[], what: string): PemBlock {
  const blocks = decodePem(pem);
  const found = blocks.find((b) => labels.includes(b.label));
  if (!found) {
    const seen = blocks.length ? blocks.map((b) => b.label).join(", ") : "no PEM blocks";
    throw new Error(`${what}: expected PEM ${labels.join(" or ")}, found ${seen}`);
  }
  return found;
}

/** Encode DER bytes as a PEM block with 64-column lines and a trailing newline. */
export function encodePem(label: string, der: Uint8Array | ArrayBuffer): string {
  const bytes = der instanceof Uint8Array ? der : new Uint8Array(der);
  const b64 = Buffer.from(bytes).toString("base64");
  const lines = b64.match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}

/** SHA-256 of `der` as lowercase hex without separators. */
export function sha256Fingerprint(der: Uint8Array): string {
  return createHash("sha256").update(der).digest("hex");
}
