/**
 * Secrets helpers: CSPRNG tokens and constant-time comparison.
 * @module
 */

import { createHash, timingSafeEqual } from "node:crypto";

/** A new token: `bytes` (default 32, i.e. 256 bits) from the CSPRNG, as lowercase hex. */
export function randomToken(bytes = 32): string {
  const buf = new Uint8Array(bytes);
  crypto.getRandomValues(buf);
  return Array.from(buf, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Compare two secrets in time independent of where they differ and of their
 * lengths (both are hashed to 32 bytes first). An empty expected value never matches.
 */
export function secretsEqual(given: string, expected: string): boolean {
  const a = createHash("sha256").update(given, "utf8").digest();
  const b = createHash("sha256").update(expected, "utf8").digest();
  return timingSafeEqual(a, b) && expected.length > 0;
}
