/**
 * Where the agent remembers the proxy host keys it trusted on first use: one
 * `SHA256:` fingerprint per proxy URL, the OpenSSH known_hosts model. The text
 * format is shared by the file store (here), the Secret store
 * (`known_proxies_secret.ts`) and the in-memory store (library default):
 *
 * ```
 * # comment
 * wss://tower.example.com/ SHA256:4ip1Ba24QLDrkZcDPURKzY7k1Tqj8mdGKJjZ32pvaUU
 * ```
 *
 * A record that cannot be read or does not parse is an error, never "nothing
 * known": the caller refuses to connect rather than trusting any key.
 * @module
 */

import { dirname } from "node:path";
import { logger } from "../log.ts";

const log = logger("agent");

/** A `SHA256:` fingerprint as the proxy logs it. */
export const FINGERPRINT_RE = /^SHA256:[A-Za-z0-9+/]{43}$/;

/** A record file's lock older than this was left behind by a writer that died. */
const STALE_LOCK_MS = 10_000;

/** Largest record accepted (a record holds a line per proxy URL; anything bigger is not ours). */
const MAX_RECORD_BYTES = 1 << 20;

/** Where trusted proxy keys are kept. */
export interface KnownProxyStore {
  /** Human description for logs and errors, e.g. `file /x/known_proxies`. */
  readonly where: string;
  /**
   * The fingerprint recorded for `key` (a {@link proxyKey}), or undefined when none is.
   * @throws Error when the record cannot be read or is malformed.
   */
  lookup(key: string): Promise<string | undefined>;
  /**
   * Record `fingerprint` for `key` unless one is already there; atomic and durable once it
   * resolves.
   * @throws KnownProxyMismatch when another fingerprint is recorded meanwhile; Error when the
   * record cannot be written.
   */
  remember(key: string, fingerprint: string): Promise<void>;
  /** How an operator accepts a new key for `key` (one sentence, imperative). */
  forgetHint(key: string): string;
}

/** A different fingerprint is recorded for this proxy. */
export class KnownProxyMismatch extends Error {
  constructor(readonly key: string, readonly recorded: string, readonly presented: string) {
    super(`${key}: recorded ${recorded}, presented ${presented}`);
    this.name = "KnownProxyMismatch";
  }
}

/**
 * The record key of a proxy: scheme, host, port and path of the tunnel URL (`ws:`/`wss:`, as
 * `tunnelUrl` makes it), without credentials, query or fragment.
 */
export function proxyKey(url: URL): string {
  return `${url.protocol}//${url.host}${url.pathname}`;
}

/**
 * Parse a record. Blank lines and `#` comments are skipped.
 * @throws Error naming `where` and the line at fault.
 */
export function parseKnownProxies(text: string, where: string): Map<string, string> {
  const out = new Map<string, string>();
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === "" || line.startsWith("#")) continue;
    const fields = line.split(/\s+/);
    const bad = (why: string) => new Error(`${where} line ${i + 1}: ${why}`);
    if (fields.length !== 2) throw bad("want `<proxy URL> SHA256:<fingerprint>`");
    const [key, fp] = fields;
    if (!/^wss?:\/\/[^\s/]+\//.test(key)) throw bad(`not a ws:// or wss:// proxy URL: ${key}`);
    if (!FINGERPRINT_RE.test(fp)) throw bad("not a SHA256: fingerprint");
    const seen = out.get(key);
    if (seen !== undefined && seen !== fp) throw bad(`second, different entry for ${key}`);
    out.set(key, fp);
  }
  return out;
}

/** Format a record (sorted by URL) with a header saying what it is. */
export function formatKnownProxies(entries: Map<string, string>): string {
  const head =
    "# Proxy host keys this Tower agent trusted on first connection, one per proxy URL.\n" +
    "# To accept a proxy's new key, delete its line (or run the agent with --proxy-fingerprint).\n";
  const lines = [...entries].sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0)
    .map(([k, fp]) => `${k} ${fp}\n`);
  return head + lines.join("");
}

/** A record the process keeps in memory only: the library default when no store is given. */
export class MemoryKnownProxies implements KnownProxyStore {
  readonly where = "memory (this process)";
  readonly #entries = new Map<string, string>();

  lookup(key: string): Promise<string | undefined> {
    return Promise.resolve(this.#entries.get(key));
  }

  remember(key: string, fingerprint: string): Promise<void> {
    const seen = this.#entries.get(key);
    if (seen !== undefined && seen !== fingerprint) {
      return Promise.reject(new KnownProxyMismatch(key, seen, fingerprint));
    }
    this.#entries.set(key, fingerprint);
    return Promise.resolve();
  }

  forgetHint(): string {
    return "restart the agent";
  }
}

/**
 * The default record file of an agent outside a pod: `$XDG_STATE_HOME/tower/known_proxies`,
 * else `$HOME/.local/state/tower/known_proxies`.
 * @throws Error when neither variable is set.
 */
export function defaultKnownProxyFile(env: (name: string) => string | undefined): string {
  const state = env("XDG_STATE_HOME");
  if (state && state.startsWith("/")) return `${state}/tower/known_proxies`;
  const home = env("HOME");
  if (home) return `${home}/.local/state/tower/known_proxies`;
  throw new Error(
    "no place to record the proxy host key: neither XDG_STATE_HOME nor HOME is set; " +
      "pass --known-proxy-file or --proxy-fingerprint",
  );
}

/**
 * A record file. Reads refuse a file (or directory) that others could have written: someone who
 * can edit it chooses which proxy the agent trusts. Writes go to a temporary file, synced, then
 * renamed over the record, so a crash leaves the old record or the new one, never half of one.
 */
export class FileKnownProxies implements KnownProxyStore {
  readonly where: string;

  constructor(readonly path: string) {
    this.where = `file ${path}`;
  }

  forgetHint(key: string): string {
    return `delete the line for ${key} from ${this.path}`;
  }

  async lookup(key: string): Promise<string | undefined> {
    return (await this.#read()).get(key);
  }

  async remember(key: string, fingerprint: string): Promise<void> {
    await this.#locked(async () => {
      const entries = await this.#read();
      const seen = entries.get(key);
      if (seen !== undefined) {
        if (seen !== fingerprint) throw new KnownProxyMismatch(key, seen, fingerprint);
        return;
      }
      entries.set(key, fingerprint);
      await this.#write(formatKnownProxies(entries));
    });
  }

  /**
   * Run `fn` holding `<path>.lock` (created exclusively), so agents sharing the file do not lose
   * each other's entries. A lock older than {@link STALE_LOCK_MS} was left by a writer that died.
   */
  async #locked(fn: () => Promise<void>): Promise<void> {
    const lock = `${this.path}.lock`;
    try {
      await Deno.mkdir(dirname(this.path), { recursive: true, mode: 0o700 });
    } catch (err) {
      throw new Error(`${this.where}: cannot write: ${(err as Error).message}`);
    }
    for (let attempt = 0;; attempt++) {
      try {
        (await Deno.open(lock, { write: true, createNew: true, mode: 0o600 })).close();
        break;
      } catch (err) {
        if (!(err instanceof Deno.errors.AlreadyExists)) {
          throw new Error(`${this.where}: cannot write ${lock}: ${(err as Error).message}`);
        }
      }
      const age = await Deno.stat(lock).then(
        (i) => Date.now() - (i.mtime?.getTime() ?? 0),
        () => 0,
      );
      // A stale lock left by a writer that died; if another writer removed it first, fine.
      if (age > STALE_LOCK_MS) await Deno.remove(lock).catch(() => {});
      else if (attempt >= 200) {
        throw new Error(`${this.where}: ${lock} is held by another writer; remove it if none runs`);
      } else await new Promise((r) => setTimeout(r, 10 + Math.random() * 40));
    }
    try {
      await fn();
    } finally {
      await Deno.remove(lock).catch((err) =>
        // Left behind, it holds up the next writer until it is stale.
        log.warn("Cannot remove the known-proxies lock file", { lock, err: String(err) })
      );
    }
  }

  async #read(): Promise<Map<string, string>> {
    let text: string;
    try {
      await checkNotWritableByOthers(dirname(this.path), true);
      await checkNotWritableByOthers(this.path, false);
      const file = await Deno.open(this.path);
      try {
        const info = await file.stat();
        if (!info.isFile) throw new Error("not a regular file");
        if (info.size > MAX_RECORD_BYTES) throw new Error(`larger than ${MAX_RECORD_BYTES} bytes`);
        text = new TextDecoder("utf-8", { fatal: true }).decode(await readAll(file));
      } finally {
        file.close();
      }
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return new Map();
      throw new Error(`${this.where}: ${(err as Error).message}`);
    }
    return parseKnownProxies(text, this.where);
  }

  async #write(text: string): Promise<void> {
    const dir = dirname(this.path);
    const tmp = `${this.path}.tmp-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
    try {
      const file = await Deno.open(tmp, { write: true, createNew: true, mode: 0o600 });
      try {
        await file.write(new TextEncoder().encode(text));
        await file.sync();
      } finally {
        file.close();
      }
      await Deno.rename(tmp, this.path);
      await syncDir(dir);
    } catch (err) {
      await Deno.remove(tmp).catch(() => {}); // best effort: the write's error is what matters
      throw new Error(`${this.where}: cannot write: ${(err as Error).message}`);
    }
  }
}

/** Read `file` to its end, refusing more than {@link MAX_RECORD_BYTES}. */
async function readAll(file: Deno.FsFile): Promise<Uint8Array> {
  const buf = new Uint8Array(MAX_RECORD_BYTES + 1);
  let total = 0;
  while (total < buf.length) {
    const n = await file.read(buf.subarray(total));
    if (n === null) break;
    total += n;
  }
  if (total > MAX_RECORD_BYTES) throw new Error(`larger than ${MAX_RECORD_BYTES} bytes`);
  return buf.slice(0, total);
}

/**
 * Refuse a path owned by another user (root excepted) or writable by group or others; a
 * directory with the sticky bit (like /tmp) may be world-writable since others cannot replace
 * our file in it. A missing path is left to the caller.
 */
async function checkNotWritableByOthers(path: string, isDir: boolean): Promise<void> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.lstat(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound && isDir) return;
    throw err;
  }
  if (info.isSymlink) info = await Deno.stat(path);
  const { mode, uid: owner } = info;
  if (mode === null || owner === null) return; // not a Unix file system: nothing to check
  const uid = Deno.uid();
  if (uid !== null && owner !== uid && owner !== 0) {
    throw new Error(`${path} is owned by uid ${owner}, not by this user (${uid})`);
  }
  const sticky = isDir && (mode & 0o1000) !== 0;
  if ((mode & 0o022) !== 0 && !sticky) {
    throw new Error(
      `${path} is writable by group or others (mode ${(mode & 0o7777).toString(8)}): ` +
        `chmod go-w it`,
    );
  }
}

/** fsync a directory so a rename in it is durable; file systems that refuse are left be. */
async function syncDir(dir: string): Promise<void> {
  let f: Deno.FsFile | undefined;
  try {
    f = await Deno.open(dir, { read: true });
    await f.sync();
  } catch {
    // Some file systems cannot fsync a directory; the rename itself is still atomic.
  } finally {
    f?.close();
  }
}
