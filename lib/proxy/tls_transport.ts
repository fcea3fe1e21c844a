/**
 * The byte stream a kubernetes endpoint's server-side TLS socket runs on: a `Duplex` of ours over
 * the client's TCP socket, with a gate the HTTP engine closes for backpressure.
 *
 * Why not TLS on the TCP socket itself (`tls.createServer`, or a `TLSSocket` on a `net.Socket`):
 * under Deno both keep reading TCP while the TLS socket is paused, so a client sending faster than
 * the proxy forwards is held in memory whole (30 clients each pouring 1 MiB into paused sockets
 * grew a process by 69 MiB); and pausing the `net.Socket` under a `TLSSocket` instead stops the
 * reads but stalls the TLS socket for good once resumed (measured: an 8 MiB upload stopped at its
 * first pause). Over this `Duplex` the TLS socket pulls only what it is given, the TCP socket is
 * paused whenever the TLS socket's buffer is full or the gate is closed, and resuming works.
 * @module
 */

import type * as net from "node:net";
import { Duplex } from "node:stream";

/** A transport for `new tls.TLSSocket(transport, { isServer: true, … })`, and its gate. */
export interface GatedTransport {
  /** Hand this to the TLS socket. */
  transport: Duplex;
  /** Pause and resume reading from the client, whatever the TLS socket asks for. */
  gate: { pause(): void; resume(): void };
}

/** Wrap the client's TCP socket `raw`. */
export function gatedTransport(raw: net.Socket): GatedTransport {
  let gated = false;
  let wanted = false;
  const update = () => {
    if (wanted && !gated) raw.resume();
    else raw.pause();
  };
  const transport = new Duplex({
    read() {
      wanted = true;
      update();
    },
    write(chunk, _encoding, cb) {
      raw.write(chunk, cb);
    },
    final(cb) {
      raw.end();
      cb();
    },
    destroy(err, cb) {
      raw.destroy();
      cb(err);
    },
  });
  raw.pause();
  raw.on("data", (chunk: Uint8Array) => {
    if (!transport.push(chunk)) {
      wanted = false;
      update();
    }
  });
  raw.on("end", () => transport.push(null));
  raw.on("error", () => {}); // surfaces as 'close'
  raw.on("close", () => transport.destroy());
  return {
    transport,
    gate: {
      pause() {
        gated = true;
        update();
      },
      resume() {
        gated = false;
        update();
      },
    },
  };
}
