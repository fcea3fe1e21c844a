/**
 * The server's side of the WebSocket opening handshake (RFC 6455 §4): the
 * `Sec-WebSocket-Accept` value, the checks of an upgrade request, and the 101
 * response that completes it.
 * @module
 */

import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/** The `Sec-WebSocket-Accept` a server must answer to `key` (RFC 6455 §4.2.2). */
export function acceptFor(key: string): string {
  return createHash("sha1").update(key + GUID).digest("base64");
}

/** The parts of an upgrade request the checks look at (header values as received). */
export interface UpgradeRequest {
  method: string;
  /** HTTP minor version (1 for HTTP/1.1). */
  minor: number;
  /** Lowercased tokens of the `Upgrade` header. */
  upgrade: Set<string>;
  /** Lowercased tokens of the `Connection` header. */
  connection: Set<string>;
  key: string | undefined;
  version: string | undefined;
}

/** Why an upgrade request cannot be accepted: the status to answer and a message. */
export interface UpgradeProblem {
  status: 400 | 405 | 426;
  message: string;
  /** Extra response header fields (426 names the version we speak). */
  headers?: Record<string, string>;
}

/** What is wrong with `req` as a WebSocket upgrade (RFC 6455 §4.2.1), or undefined. */
export function upgradeProblem(req: UpgradeRequest): UpgradeProblem | undefined {
  if (req.method !== "GET") return { status: 405, message: "websocket upgrade must be a GET" };
  if (req.minor < 1) return { status: 400, message: "websocket upgrade needs HTTP/1.1" };
  if (!req.upgrade.has("websocket")) {
    return { status: 400, message: "missing Upgrade: websocket" };
  }
  if (!req.connection.has("upgrade")) {
    return { status: 400, message: "missing Connection: Upgrade" };
  }
  if (req.version !== "13") {
    return {
      status: 426,
      message: "unsupported Sec-WebSocket-Version, want 13",
      headers: { "Sec-WebSocket-Version": "13" },
    };
  }
  const key = req.key ?? "";
  if (!/^[A-Za-z0-9+/]{22}==$/.test(key) || Buffer.from(key, "base64").length !== 16) {
    return { status: 400, message: "Sec-WebSocket-Key must be 16 bytes in base64" };
  }
  return undefined;
}

/** The 101 response head accepting `key` with subprotocol `protocol`. */
export function switchingProtocols(key: string, protocol: string): string {
  return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
    `Sec-WebSocket-Accept: ${acceptFor(key)}\r\nSec-WebSocket-Protocol: ${protocol}\r\n\r\n`;
}
