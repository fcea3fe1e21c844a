/**
 * Upstream connections: a raw stream from the {@link UpstreamDialer}, wrapped
 * in TLS (verified against the agent's CA, presenting its client
 * certificate) when the {@link UpstreamAuth} of the session that carries it
 * says so, and read through a {@link Wire}. A connection keeps its session's
 * credentials for its whole life: requests on it use no one else's.
 * @module
 */

import { isIP } from "node:net";
import type { Duplex } from "node:stream";
import * as tls from "node:tls";
import type { UpstreamAuth, UpstreamDialer } from "./upstream.ts";
import { Wire } from "./wire.ts";

/** One HTTP/1.1 connection to the member API server. */
export class UpstreamConn {
  /** The session the raw stream rides on. */
  readonly key: string;
  /** That session's upstream credentials. */
  readonly auth: UpstreamAuth;
  /** The stream from the dialer. */
  readonly raw: Duplex;
  /** What HTTP is spoken on: `raw`, or TLS over it. */
  readonly stream: Duplex;
  readonly wire: Wire;
  /** Requests sent on this connection so far. */
  uses = 0;

  constructor(key: string, auth: UpstreamAuth, raw: Duplex, stream: Duplex) {
    this.key = key;
    this.auth = auth;
    this.raw = raw;
    this.stream = stream;
    // Under TLS, backpressure pauses the tunnel stream, never the TLS stream: Deno's TLS over a
    // JS stream keeps reading its input while paused (the member's output would pile up in the
    // proxy, unbounded), and a TLS stream paused when the peer's close_notify is read never
    // emits 'end' and drops what it still holds once the tunnel stream closes: the tail of an
    // exec stream from an agent that sends CLOSE right after its last byte, as the original does.
    this.wire = new Wire(stream, undefined, raw);
    // The tunnel stream going away (agent lost) must end the TLS stream on it at once.
    if (raw !== stream) raw.once("close", () => stream.destroy());
  }

  /** Closed, failed or half-closed by the peer: not usable for another request. */
  get dead(): boolean {
    return this.wire.closed || this.wire.eof || this.stream.destroyed || this.raw.destroyed;
  }

  /** Destroy the connection (and the raw stream under TLS). */
  destroy(): void {
    this.stream.destroy();
    if (this.raw !== this.stream) this.raw.destroy();
  }
}

/** The upstream TLS handshake or the dial failed (answered with 502). */
export class UpstreamConnectError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "UpstreamConnectError";
  }
}

const noop = () => {};

/**
 * Dial a raw stream and, when the dialed session's `auth.tls` is set, complete a TLS handshake
 * over it within `handshakeMs`. Rejects with whatever the dialer rejects with (e.g.
 * `NoAgentError`), or {@link UpstreamConnectError} for a failed handshake or an abort.
 */
export async function openUpstream(
  dialer: UpstreamDialer,
  signal: AbortSignal,
  handshakeMs: number,
): Promise<UpstreamConn> {
  const { stream: raw, key, auth } = await dialer.dial(signal);
  raw.on("error", noop); // failures surface as 'close' on the wire
  if (signal.aborted) {
    raw.destroy();
    throw new UpstreamConnectError("request cancelled while dialling");
  }
  const setup = auth.tls;
  if (!setup) return new UpstreamConn(key, auth, raw, raw);
  const name = setup.serverName;
  const sock = tls.connect({
    socket: raw,
    servername: isIP(name) ? undefined : name,
    ca: setup.caPem,
    cert: setup.certPem,
    key: setup.keyPem,
    ALPNProtocols: ["http/1.1"],
    rejectUnauthorized: setup.insecureSkipVerify !== true,
    checkServerIdentity: (_host, cert) =>
      setup.insecureSkipVerify ? undefined : tls.checkServerIdentity(name, cert),
  });
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => fail(new Error(`no handshake within ${handshakeMs} ms`)),
        handshakeMs,
      );
      const onAbort = () => fail(new Error("request cancelled"));
      const onClose = () => fail(new Error("connection closed during handshake"));
      const cleanup = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", onAbort);
        sock.off("error", fail);
        sock.off("close", onClose);
        sock.off("secureConnect", ok);
      };
      function ok() {
        cleanup();
        resolve();
      }
      function fail(err: Error) {
        cleanup();
        reject(err);
      }
      signal.addEventListener("abort", onAbort);
      sock.once("secureConnect", ok);
      sock.once("error", fail);
      sock.once("close", onClose);
    });
  } catch (err) {
    sock.on("error", noop);
    sock.destroy();
    raw.destroy();
    throw new UpstreamConnectError(`TLS handshake with ${name}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  return new UpstreamConn(key, auth, raw, sock);
}
