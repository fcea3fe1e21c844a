/**
 * The `config` handshake: the JSON an agent sends in its `config` global
 * request, byte-compatible with Go's `encoding/json` of the original tower's
 * struct (`[]byte` fields as standard base64, omitted when empty).
 *
 * Decoding is strict and bounded: the payload size, every string's length and
 * every field's type are checked, and each failure says which field is wrong.
 * @module
 */

import { Buffer } from "node:buffer";

/** What an agent tells the proxy about itself and how to reach its API servers. */
export interface AgentConfig {
  Version: string;
  Name: string;
  Token: string;
  /**
   * `host:port` of the member kube-apiserver, as the agent dials it (a Go agent may send a bare
   * host: decoding adds 443).
   */
  KubernetesSvcHost: string;
  /** `host:port` of the member ks-apiserver (decoding adds 80 to a bare host). */
  KubeSphereSvcHost: string;
  /** PEM client certificate for the kube-apiserver. */
  CertData?: Uint8Array;
  /** PEM client key for the kube-apiserver. */
  KeyData?: Uint8Array;
  /** PEM CA bundle the kube-apiserver's serving certificate must chain to. */
  CAData?: Uint8Array;
  /** Bearer token for the kube-apiserver (and ks-apiserver). */
  BearerToken?: Uint8Array;
}

/** Limits applied by {@link decodeAgentConfig}. */
export interface ConfigLimits {
  /** Largest accepted payload in bytes (default 32 KiB). */
  maxBytes?: number;
  /** Longest accepted plain string field (default 1024 chars). */
  maxString?: number;
}

/** The config request's payload is not acceptable; the message names why. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

const STRING_FIELDS = [
  "Version",
  "Name",
  "Token",
  "KubernetesSvcHost",
  "KubeSphereSvcHost",
] as const;
const BYTES_FIELDS = ["CertData", "KeyData", "CAData", "BearerToken"] as const;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** Encode like Go's `json.Marshal` of the original struct (field order kept). */
export function encodeAgentConfig(cfg: AgentConfig): Uint8Array {
  const out: Record<string, string> = {};
  for (const f of STRING_FIELDS) out[f] = cfg[f];
  for (const f of BYTES_FIELDS) {
    const v = cfg[f];
    if (v && v.length > 0) out[f] = Buffer.from(v).toString("base64");
  }
  return new TextEncoder().encode(JSON.stringify(out));
}

/**
 * Decode and validate a `config` payload.
 * @throws ConfigError naming the offending field, for any bad input.
 */
export function decodeAgentConfig(payload: Uint8Array, limits: ConfigLimits = {}): AgentConfig {
  const maxBytes = limits.maxBytes ?? 32 * 1024;
  const maxString = limits.maxString ?? 1024;
  if (payload.length === 0) throw new ConfigError("empty config payload");
  if (payload.length > maxBytes) {
    throw new ConfigError(`config payload of ${payload.length} bytes exceeds ${maxBytes}`);
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(payload);
  } catch {
    throw new ConfigError("config payload is not valid UTF-8");
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`config payload is not JSON: ${(err as Error).message}`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new ConfigError("config payload is not a JSON object");
  }
  // Go's decoder matches field names case-insensitively; so do we.
  const byLower = new Map<string, unknown>();
  for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
    byLower.set(k.toLowerCase(), v);
  }
  const field = (name: string) => byLower.get(name.toLowerCase());

  const cfg: Partial<AgentConfig> = {};
  for (const f of STRING_FIELDS) {
    const v = field(f);
    if (v === undefined || v === null) {
      cfg[f] = "";
      continue;
    }
    if (typeof v !== "string") throw new ConfigError(`config field ${f}: expected a string`);
    if (v.length > maxString) {
      throw new ConfigError(`config field ${f}: longer than ${maxString} characters`);
    }
    cfg[f] = v;
  }
  for (const f of BYTES_FIELDS) {
    const v = field(f);
    if (v === undefined || v === null || v === "") continue;
    if (typeof v !== "string" || !BASE64.test(v) || v.length % 4 !== 0) {
      throw new ConfigError(`config field ${f}: expected standard base64`);
    }
    cfg[f] = new Uint8Array(Buffer.from(v, "base64"));
  }
  if (cfg.BearerToken) cfg.BearerToken = headerSafeToken(cfg.BearerToken);
  if (!cfg.Name) throw new ConfigError("config field Name: empty");
  if (!/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(cfg.Name!) || cfg.Name!.length > 253) {
    throw new ConfigError("config field Name: not a valid cluster name");
  }
  // The Go agent sends its flags as given, `--kubesphere-service` by default without a port; the
  // Go proxy puts them in an http:// and an https:// URL, so the ports those imply apply. Every
  // later use (channel targets, TLS server name) sees the completed host:port.
  for (const [f, port] of [["KubernetesSvcHost", 443], ["KubeSphereSvcHost", 80]] as const) {
    if (!cfg[f]) continue;
    const hostPort = withDefaultPort(cfg[f]!, port);
    if (!hostPort) throw new ConfigError(`config field ${f}: expected host or host:port`);
    cfg[f] = hostPort;
  }
  return cfg as AgentConfig;
}

/**
 * The bearer token goes into an `Authorization` header. The Go agent sends its token file as it
 * is, so a file ending in a newline is common: surrounding whitespace is dropped. Anything else
 * outside printable ASCII would break the header (a CR or LF would end it and let the agent
 * write headers of its own) and is refused.
 */
function headerSafeToken(raw: Uint8Array): Uint8Array | undefined {
  const ws = (b: number) => b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d;
  let start = 0;
  let end = raw.length;
  while (start < end && ws(raw[start])) start++;
  while (end > start && ws(raw[end - 1])) end--;
  const token = raw.subarray(start, end);
  if (token.some((b) => b < 0x21 || b > 0x7e)) {
    throw new ConfigError("config field BearerToken: not printable ASCII");
  }
  return token.length ? token : undefined;
}

const HOST = "(\\[[0-9a-fA-F:.]+\\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)";
const HOST_ONLY = new RegExp(`^${HOST}$`);
const HOST_PORT = new RegExp(`^${HOST}:(\\d{1,5})$`);

/** `s` as host:port, with `port` added to a bare host; undefined when `s` is neither. */
export function withDefaultPort(s: string, port: number): string | undefined {
  if (isHostPort(s)) return s;
  return HOST_ONLY.test(s) ? `${s}:${port}` : undefined;
}

/** Whether `s` is a plain `host:port` (DNS name, IPv4 or `[IPv6]`, port 1–65535). */
export function isHostPort(s: string): boolean {
  const m = HOST_PORT.exec(s);
  if (!m) return false;
  const port = Number(m[3]);
  return port >= 1 && port <= 65535;
}

/**
 * Normalise a service address the way the Go agent does: strip a scheme, and
 * add the default port when none is given (`defaultPort` 443 or 80).
 */
export function serviceHostPort(addr: string, defaultPort: number): string {
  let s = addr.trim().replace(/^[a-z]+:\/\//i, "");
  s = s.replace(/\/.*$/, "");
  if (/^\[.*\]$/.test(s) || !/:\d+$/.test(s)) s = `${s}:${defaultPort}`;
  return s;
}
