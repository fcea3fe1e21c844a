/**
 * Closing a client connection after its last response without holding what the client still
 * sends: {@link closeAfterWrite}.
 * @module
 */

import type { Buffer } from "node:buffer";
import type { Wire } from "./wire.ts";

/** How long a closing connection waits for the client to close before it is destroyed. */
const CLOSE_LINGER_MS = 2_000;
/** What a closing connection reads and drops at most before it is destroyed. */
const LINGER_BYTES = 64 * 1024;

/**
 * Close a connection after its last response: our side ends; what the client still sends is
 * read and dropped, never held, so that its close is seen at once; beyond {@link LINGER_BYTES}
 * (a huge head after its 431, a body after its 401) or after {@link CLOSE_LINGER_MS} the
 * connection is destroyed (reading on and dropping would cost memory for every chunk: a flood of
 * 1 MiB heads grew the proxy by tens of MiB).
 */
export function closeAfterWrite(wire: Wire, last?: Buffer): void {
  const sock = wire.stream;
  if (sock.destroyed) return;
  sock.end(last);
  let dropped = 0;
  wire.setSink({
    onData(chunk) {
      dropped += chunk.length;
      if (dropped > LINGER_BYTES) sock.destroy();
    },
    onEnd() {},
    onClose() {},
  });
  wire.resume();
  const timer = setTimeout(() => sock.destroy(), CLOSE_LINGER_MS);
  sock.once("close", () => clearTimeout(timer));
}
