/**
 * TCP-like half-close for ssh2 channels (the `kubesphere` channels of ./channel_accept.ts and
 * ./channel_open.ts): each direction ends on its own, CHANNEL_CLOSE once both have, and a write
 * after the writable side ended fails without tearing down the readable side.
 * @module
 */

import type { Duplex } from "node:stream";
// @ts-types="@types/ssh2"
import type { ClientChannel, ServerChannel } from "ssh2";

type ChannelInternals = Duplex & { server: boolean; eof(): void; close(): void };

/**
 * Give a channel TCP-like half-close: `end()` sends EOF only, the peer's EOF ends the readable
 * side, and CHANNEL_CLOSE is sent once both directions are done (or when the peer closes).
 * ssh2 server-side channels send CLOSE right after EOF (Channel.js `onFinish`, meant for
 * sessions), which would cut off the agent's reply; that listener is swapped for EOF only.
 *
 * A peer's CLOSE without EOF first (the original Go tower's way of ending a stream) ends the
 * readable side after every byte received before it (ssh2 pushes the end behind them) and ends
 * the writable side (ssh2 calls `end()`). A write after that, from a pump that did not know
 * yet, would destroy the stream in Node's `write()` (write after end), dropping what is still
 * to be read; here it only fails (see {@link failLateWrites}).
 */
export function enableHalfClose(stream: ClientChannel | ServerChannel): void {
  const ch = stream as unknown as ChannelInternals;
  failLateWrites(ch);
  if (ch.server) {
    const theirs = ch.listeners("finish").filter((l) => l.name === "onFinish");
    if (theirs.length !== 1) {
      throw new Error("ssh compat: ssh2 internals changed: no Channel onFinish listener");
    }
    ch.removeListener("finish", theirs[0] as () => void);
    for (const l of ch.listeners("prefinish")) {
      if (l.name === "onFinish") ch.removeListener("prefinish", l as () => void);
    }
    ch.on("finish", () => {
      ch.eof();
      ch.writable = false;
    });
  }
  let sentEof = false;
  let gotEof = false;
  const maybeClose = (): void => {
    if (sentEof && gotEof) ch.close();
  };
  ch.once("finish", () => {
    sentEof = true;
    maybeClose();
  });
  ch.once("end", () => {
    gotEof = true;
    maybeClose();
  });
}

/** Error of a channel write after the channel's writable side ended. */
export class ChannelEndedError extends Error {
  readonly code = "ERR_STREAM_WRITE_AFTER_END";
  constructor() {
    super("channel write after its end (the peer closed the channel)");
    this.name = "ChannelEndedError";
  }
}

/**
 * A write after the writable side ended calls back with {@link ChannelEndedError} and returns
 * false, and nothing else: the stream is not destroyed and emits no error. One direction's end
 * then stops that direction only.
 */
function failLateWrites(ch: Duplex): void {
  const write = ch.write;
  ch.write = function (this: Duplex, chunk: unknown, encoding?: unknown, cb?: unknown): boolean {
    if (!this.writableEnded) {
      return write.call(this, chunk, encoding as BufferEncoding, cb as () => void);
    }
    const done = typeof encoding === "function" ? encoding : cb;
    if (typeof done === "function") queueMicrotask(() => done(new ChannelEndedError()));
    return false;
  } as Duplex["write"];
}
