/**
 * After a `101 Switching Protocols`: raw bytes relayed both ways between the client and the
 * member's stream ({@link relayUpgraded}).
 * @module
 */

import { closeAfterWrite } from "./close_after_write.ts";
import type { UpstreamConn } from "./conn.ts";
import { pumpBody, type PumpCounter, type Wire } from "./wire.ts";

/**
 * Relay raw bytes both ways until both sides ended or either closed, counting them in `upCount`
 * and `downCount`. Each direction ends on its own: an EOF is passed on as one (a client's
 * half-close too), and a side that can take nothing more (the agent closed the channel, with or
 * without EOF first) stops only the direction into it: what the other direction has received
 * still reaches its end (`pumpBody`). Both connections are closed at the end.
 */
export async function relayUpgraded(
  wire: Wire,
  conn: UpstreamConn,
  upCount: PumpCounter,
  downCount: PumpCounter,
): Promise<void> {
  const sock = wire.stream;
  // Node would end our side at the client's EOF and drop the member's answer still to come.
  sock.allowHalfOpen = true;
  const cancel = new AbortController();
  const up = pumpBody(wire, { kind: "close" }, conn.stream, upCount, {
    endDest: true,
    signal: cancel.signal,
  });
  const down = pumpBody(conn.wire, { kind: "close" }, sock, downCount, {
    endDest: true,
    signal: cancel.signal,
  });
  await new Promise<void>((resolve) => {
    let upDone = false;
    let downDone = false;
    // A failed side: the client is gone (nothing can reach it), or the member's stream broke.
    const broke = () => resolve();
    up.then(() => {
      upDone = true;
      if (downDone) resolve();
    }, broke);
    down.then(() => {
      downDone = true;
      // The member side closed (not just half-closed): nothing more can go up.
      if (upDone || conn.wire.closed) resolve();
    }, broke);
    conn.stream.once("close", () => {
      if (downDone) resolve();
    });
  });
  cancel.abort();
  conn.destroy();
  if (!sock.destroyed) closeAfterWrite(wire);
}
