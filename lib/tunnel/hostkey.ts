/**
 * The proxy's SSH host key: generated once (ECDSA P-256, as the Go tower uses),
 * kept in a file or a Secret so its fingerprint is stable, and fingerprinted
 * the OpenSSH way (`SHA256:` + unpadded base64 of the public key blob).
 * @module
 */

import { createHash, createPrivateKey, generateKeyPairSync, sign } from "node:crypto";
// @ts-types="@types/ssh2"
import type ssh2 from "ssh2";
// ssh2's key parser from its own module: the package's index would load ssh2's server, agent and
// HTTP modules into the agent, which imports this module for `fingerprintOf` only.
import keyParser from "ssh2/lib/protocol/keyParser.js";

const parseKey = (keyParser as { parseKey: typeof ssh2.utils.parseKey }).parseKey;

/** ssh2's parsed private key, as its `utils.parseKey` returns it. */
export type ParsedSshKey = Exclude<ReturnType<typeof ssh2.utils.parseKey>, Error | unknown[]>;

/** A parsed host key, ready for ssh2's `hostKeys`. */
export interface HostKey {
  /** PEM (`EC PRIVATE KEY`) as stored. */
  pem: string;
  /** SSH wire-format public key blob. */
  publicBlob: Uint8Array;
  /** `SHA256:…` fingerprint. */
  fingerprint: string;
  /** The key as ssh2's server takes it (`hostKeys: [{ key }]`), signing as {@link signOnce} says. */
  sshKey: ParsedSshKey;
}

/** Generate a new ECDSA P-256 host key as SEC1 PEM. */
export function generateHostKeyPem(): string {
  const { privateKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
  return privateKey.export({ type: "sec1", format: "pem" }) as string;
}

/**
 * Parse a host key PEM (any private key format ssh2 reads).
 * @throws Error saying the key is unusable.
 */
export function parseHostKey(pem: string, source = "host key"): HostKey {
  const parsed = parseKey(pem);
  const key = Array.isArray(parsed) ? parsed[0] : parsed;
  if (!key || key instanceof Error) {
    throw new Error(`${source}: not a usable SSH private key: ${key ? key.message : "empty"}`);
  }
  if (!key.isPrivateKey()) throw new Error(`${source}: not a private key`);
  const publicBlob = new Uint8Array(key.getPublicSSH());
  return { pem, publicBlob, fingerprint: fingerprintOf(publicBlob), sshKey: signOnce(key, source) };
}

/**
 * Make ssh2's parsed private `key` sign with a `KeyObject` made once. ssh2's own `sign` hands
 * node:crypto the PEM text on every handshake, which parses it again each time: under Deno an
 * ECDSA P-256 signature costs ~1.15 ms that way and ~0.77 ms from a `KeyObject`. The hash
 * stays ssh2's choice: the caller's, else the key type's (sha1 for ssh-rsa, none for ed25519),
 * which ssh2 keeps on the key under a symbol of its own.
 */
function signOnce(key: ParsedSshKey, source: string): ParsedSshKey {
  const keyObject = createPrivateKey(key.getPrivatePEM());
  const hashSym = Object.getOwnPropertySymbols(key).find((s) => s.description === "Hash Algorithm");
  if (hashSym === undefined) throw new Error(`${source}: ssh2's parsed key has no hash algorithm`);
  const defaultHash = (key as unknown as Record<symbol, string | null>)[hashSym];
  const signWith = (data: Buffer, algo?: string): Buffer | Error => {
    try {
      return sign(algo || defaultHash, data, keyObject);
    } catch (err) {
      return err as Error;
    }
  };
  Object.defineProperty(key, "sign", { value: signWith });
  return key;
}

/** OpenSSH-style SHA256 fingerprint of a public key blob. */
export function fingerprintOf(publicBlob: Uint8Array): string {
  const digest = createHash("sha256").update(publicBlob).digest("base64");
  return `SHA256:${digest.replace(/=+$/, "")}`;
}

/**
 * Load the host key at `path`, creating it (mode 0600) when the file does not
 * exist. A file that exists but does not parse is an error: it is never
 * silently replaced, since that would change the fingerprint agents pin.
 */
export async function loadOrCreateHostKeyFile(
  path: string,
): Promise<HostKey & { created: boolean }> {
  let pem: string;
  try {
    pem = await Deno.readTextFile(path);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) {
      throw new Error(`host key ${path}: ${(err as Error).message}`);
    }
    pem = generateHostKeyPem();
    try {
      await Deno.writeTextFile(path, pem, { mode: 0o600, createNew: true });
    } catch (werr) {
      if (werr instanceof Deno.errors.AlreadyExists) {
        // Another replica/process created it first: use theirs.
        return {
          ...parseHostKey(await Deno.readTextFile(path), `host key ${path}`),
          created: false,
        };
      }
      throw new Error(`host key ${path}: cannot create: ${(werr as Error).message}`);
    }
    return { ...parseHostKey(pem, `host key ${path}`), created: true };
  }
  return { ...parseHostKey(pem, `host key ${path}`), created: false };
}
