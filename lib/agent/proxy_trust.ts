/**
 * Which proxy host key the agent accepts: the pinned `--proxy-fingerprint`,
 * else the key recorded for this proxy URL on first use (trust on first use,
 * as OpenSSH's known_hosts), else — only when asked by name — any key.
 *
 * Per connection: {@link ProxyTrust.begin} reads the record before dialing (a
 * record that cannot be read fails the attempt); `verify` runs in SSH key
 * exchange, before user authentication and before `config`, so nothing secret
 * goes to a key that does not match; `commit` records a first-seen key once
 * the key exchange is complete (its signature checked), still before any
 * secret is sent, and a key that cannot be recorded is not used.
 * @module
 */

import { logger } from "../log.ts";
import { KnownProxyMismatch, type KnownProxyStore, proxyKey } from "./known_proxies.ts";

const log = logger("agent");

/** How host keys are judged. */
export type TrustMode =
  | { kind: "pin"; fingerprint: string }
  | { kind: "tofu"; store: KnownProxyStore }
  | { kind: "any" };

/** The host key was refused; the message names both fingerprints and how to go on. */
export class HostKeyRefused extends Error {
  constructor(message: string) {
    super(message);
    this.name = "HostKeyRefused";
  }
}

/** One connection's host-key check. */
export interface HostKeyCheck {
  /** Judge the presented key; undefined when accepted, else the refusal (may be called again on rekey). */
  verify(fingerprint: string): HostKeyRefused | undefined;
  /** Record a first-seen key; resolves at once when there is nothing to record. */
  commit(): Promise<void>;
}

/** The agent's host-key policy. */
export class ProxyTrust {
  constructor(readonly mode: TrustMode) {}

  /**
   * Prepare the check for one connection to `url` (the tunnel URL).
   * @throws Error when the record cannot be read: the attempt must fail, not trust anything.
   */
  async begin(url: URL): Promise<HostKeyCheck> {
    const mode = this.mode;
    const key = proxyKey(url);
    if (mode.kind === "pin") return pinned(key, mode.fingerprint);
    if (mode.kind === "any") return acceptAny(key);
    const known = await mode.store.lookup(key);
    return known !== undefined ? recorded(key, known, mode.store) : firstUse(key, mode.store);
  }
}

function pinned(key: string, want: string): HostKeyCheck {
  return {
    verify: (got) =>
      got === want ? undefined : new HostKeyRefused(
        `Proxy host key does not match --proxy-fingerprint: ${key} presented ${got}, ` +
          `pinned ${want}. Not sending anything to it. If the proxy's key was changed on ` +
          `purpose, run the agent with --proxy-fingerprint ${got}`,
      ),
    commit: () => Promise.resolve(),
  };
}

function acceptAny(key: string): HostKeyCheck {
  return {
    verify: (got) => {
      log.warn(
        "NOT verifying the proxy host key (--insecure-accept-any-proxy-key): whoever answers " +
          "at this URL receives the cluster token and member credentials",
        { proxy: key, fingerprint: got },
      );
      return undefined;
    },
    commit: () => Promise.resolve(),
  };
}

function changed(key: string, recorded: string, got: string, store: KnownProxyStore) {
  return new HostKeyRefused(
    `Proxy host key changed: ${key} presented ${got}, but ${recorded} was recorded on first ` +
      `use (${store.where}). Someone may be intercepting the connection; not sending anything ` +
      `to it. If the proxy's key was changed on purpose, ${store.forgetHint(key)}, or run the ` +
      `agent with --proxy-fingerprint ${got}`,
  );
}

function recorded(key: string, known: string, store: KnownProxyStore): HostKeyCheck {
  return {
    verify: (got) => got === known ? undefined : changed(key, known, got, store),
    commit: () => Promise.resolve(),
  };
}

function firstUse(key: string, store: KnownProxyStore): HostKeyCheck {
  let seen: string | undefined;
  let committed = false;
  return {
    verify: (got) => {
      // A rekey on the same connection must present the key seen first.
      if (seen !== undefined && got !== seen) return changed(key, seen, got, store);
      seen = got;
      return undefined;
    },
    commit: async () => {
      if (committed || seen === undefined) return;
      try {
        await store.remember(key, seen);
      } catch (err) {
        if (err instanceof KnownProxyMismatch) throw changed(key, err.recorded, seen, store);
        throw new HostKeyRefused(
          `Cannot record the proxy host key ${seen} for ${key}, so it is not trusted: ` +
            `${(err as Error).message}. Fix that, or run the agent with --proxy-fingerprint`,
        );
      }
      committed = true;
      log.warn("Trusting the proxy host key on first use and recording it", {
        proxy: key,
        fingerprint: seen,
        recordedIn: store.where,
      });
    },
  };
}
