/**
 * The receive budget (lib/tunnel/receive_budget.ts) on real ssh2 channels over TCP: whatever the
 * sender pushes, the receiving side's channels hold (window granted plus bytes received and not
 * taken) at most the limit plus the floor per channel; a reader that never reads cannot starve
 * the others; a reader that reports what it has written out holds the rest in the budget; and
 * everything is given back when the channels close.
 */

import { Buffer } from "node:buffer";
import { EventEmitter } from "node:events";
import { createHash } from "node:crypto";
import type { Duplex } from "node:stream";
import { openKubesphereChannel } from "../../lib/tunnel/channel_open.ts";
import {
  deferConsumption,
  limitReceive,
  MIN_WINDOW,
  ReceiveBudget,
} from "../../lib/tunnel/receive_budget.ts";
import { deadline } from "../helpers/deadline.ts";
import { assert, assertEquals } from "../helpers/assert.ts";
import { patternChunk } from "../helpers/tunnel.ts";
import { type SshPair, sshPair } from "../helpers/ssh_pair.ts";

const sha = (parts: Buffer[]) => {
  const h = createHash("sha256");
  for (const p of parts) h.update(p);
  return h.digest("hex");
};

/** Write `total` bytes of pattern `seed` to `ch` with backpressure, then end it. */
async function send(ch: Duplex, total: number, seed: number): Promise<string> {
  const h = createHash("sha256");
  const chunk = Buffer.from(patternChunk(seed));
  for (let sent = 0; sent < total;) {
    const piece = chunk.subarray(0, Math.min(chunk.length, total - sent));
    h.update(piece);
    sent += piece.length;
    if (!ch.write(piece)) await new Promise((r) => ch.once("drain", r));
  }
  ch.end();
  return h.digest("hex");
}

/** Open `n` channels from the proxy's side (which receives on them); the agent's ends too. */
async function openChannels(pair: SshPair, n: number): Promise<{ ours: Duplex; theirs: Duplex }[]> {
  const out: { ours: Duplex; theirs: Duplex }[] = [];
  for (let i = 0; i < n; i++) {
    const ours = await openKubesphereChannel(pair.conn, "t:1") as unknown as Duplex;
    out.push({ ours, theirs: pair.accepted[i] as unknown as Duplex });
  }
  return out;
}

Deno.test("receive budget: held stays within the limit plus the floor per channel; a stalled reader starves no one", async () => {
  const pair = await sshPair();
  const limit = 1 << 20;
  const budget: ReceiveBudget = limitReceive(pair.conn, limit);
  try {
    const n = 12;
    const chans = await openChannels(pair, n);
    const bound = limit + n * MIN_WINDOW;
    let peak = 0;
    const watch = () => peak = Math.max(peak, budget.held);
    // The last channel's reader never reads; the others read everything.
    const stalled = chans[n - 1].ours;
    stalled.pause();
    const size = 3 << 20;
    const sent = chans.map((c, i) => send(c.theirs, size, i + 1));
    const got = chans.slice(0, n - 1).map((c) =>
      new Promise<string>((resolve) => {
        const parts: Buffer[] = [];
        c.ours.on("data", (d: Buffer) => {
          parts.push(d);
          watch();
        });
        c.ours.once("end", () => resolve(sha(parts)));
      })
    );
    const want = await Promise.all(sent.slice(0, n - 1));
    assertEquals(await deadline(Promise.all(got), 60_000, "the readers' data"), want);
    watch();
    assert(peak <= bound, `held ${peak} bytes, bound ${bound}`);
    // The stalled channel holds what its window let in, and no more arrives.
    const held = stalled.readableLength;
    assert(held > 0 && held <= Math.max(MIN_WINDOW, limit / n), `stalled channel holds ${held}`);
    for (const c of chans) c.ours.destroy();
    await deadline(
      Promise.all(chans.map((c) => new Promise((r) => c.ours.once("close", r)))),
      20_000,
      "channels closed",
    );
    assertEquals([budget.held, budget.channels], [0, 0], "all given back");
  } finally {
    await pair.close();
  }
});

Deno.test("receive budget: a reader that reports what it wrote out holds the rest in the budget", async () => {
  const pair = await sshPair();
  const limit = 256 * 1024;
  const budget = limitReceive(pair.conn, limit);
  try {
    const [c] = await openChannels(pair, 1);
    const written = deferConsumption(c.ours);
    const parts: Buffer[] = [];
    let queued = 0;
    let maxQueued = 0;
    c.ours.on("data", (d: Buffer) => {
      parts.push(d);
      queued += d.length;
      maxQueued = Math.max(maxQueued, queued);
    });
    const total = 4 << 20;
    const sending = send(c.theirs, total, 7);
    // Report in 32 KiB steps, one per turn of the event loop, while the sender pushes.
    let reported = 0;
    while (reported < total) {
      if (queued >= 32 * 1024 || reported + queued >= total) {
        const k = Math.min(queued, 32 * 1024);
        queued -= k;
        reported += k;
        written(k);
      }
      await new Promise<void>((r) => setTimeout(r, 0));
    }
    assertEquals(sha(parts), await sending);
    assert(maxQueued <= limit + MIN_WINDOW, `${maxQueued} bytes taken and not reported at once`);
    assert(budget.held <= limit + MIN_WINDOW, `held ${budget.held}`);
  } finally {
    await pair.close();
  }
});

Deno.test("receive budget: idle channels do not shrink the window of the one in use", async () => {
  const pair = await sshPair();
  const budget = limitReceive(pair.conn, 32 << 20);
  try {
    // 64 channels that each carried a small request and now sit idle (a pool's), then one bulk.
    const chans = await openChannels(pair, 65);
    for (const c of chans.slice(0, 64)) {
      const got = new Promise((r) => c.ours.once("data", r));
      c.theirs.write(Buffer.from("a small answer"));
      await deadline(got, 10_000, "small answer");
    }
    const bulk = chans[64];
    let widest = 0;
    const parts: Buffer[] = [];
    const done = new Promise<void>((resolve) => {
      bulk.ours.on("data", (d: Buffer) => {
        parts.push(d);
        const w = (bulk.ours as unknown as { incoming: { window: number } }).incoming.window;
        widest = Math.max(widest, w + bulk.ours.readableLength);
      });
      bulk.ours.once("end", () => resolve());
    });
    const want = await send(bulk.theirs, 16 << 20, 9);
    await deadline(done, 60_000, "bulk transfer");
    assertEquals(sha(parts), want);
    // Its share among the channels in use is ssh2's 2 MiB window, not 32 MiB / 65 (~500 KiB).
    assert(widest > 1 << 20, `widest window ${widest}`);
    assert(budget.held <= budget.limit + 65 * MIN_WINDOW);
  } finally {
    await pair.close();
  }
});

Deno.test("receive budget: a peer that sends beyond the window it was granted has that channel destroyed, not queued", async () => {
  const pair = await sshPair();
  const limit = 256 * 1024;
  const budget = limitReceive(pair.conn, limit);
  try {
    const [c] = await openChannels(pair, 1);
    c.ours.pause(); // a client that does not read: only the window may arrive
    // The sender ignores our window (ssh2 keeps the peer's window in `outgoing.window`).
    const sender = c.theirs as unknown as Duplex & { outgoing: { window: number } };
    sender.outgoing.window = 1 << 30;
    const closed = new Promise<Error | undefined>((resolve) => {
      let error: Error | undefined;
      c.ours.once("error", (e: Error) => error = e);
      c.ours.once("close", () => resolve(error));
    });
    // Not a divisor of the window: a packet straddles its end (ssh2 itself drops packets that
    // arrive when the window is exactly 0).
    const chunk = Buffer.alloc(10_000, 7);
    for (let i = 0; i < 4 * 1024 && !c.theirs.destroyed; i++) {
      // 64 MiB at most, with the sender's own backpressure; stops once our side is gone.
      if (!c.theirs.write(chunk)) {
        const more = await deadline(
          Promise.race([
            new Promise<boolean>((r) => c.theirs.once("drain", () => r(true))),
            closed.then(() => false),
          ]),
          20_000,
          "drain or close",
        );
        if (!more) break;
      }
      if (c.ours.destroyed) break;
    }
    // ssh2's Channel.destroy closes the channel (CLOSE to the peer) and emits no error.
    await deadline(closed, 20_000, "our end of the overrun channel closed");
    assert(
      c.ours.readableLength <= MIN_WINDOW,
      `queued ${c.ours.readableLength} bytes beyond a window of ${MIN_WINDOW}`,
    );
    assertEquals([budget.held, budget.channels], [0, 0], "all given back");
  } finally {
    await pair.close();
  }
});

Deno.test("receive budget: a channel id the peer reuses before the old channel's close keeps the new channel in the budget", () => {
  // x/crypto/ssh frees a channel id once it has our CLOSE and hands it out again at once; our
  // old channel emits 'close' only after its reader drained it, which may come later.
  const fake = (id: number) =>
    Object.assign(new EventEmitter(), {
      incoming: { window: 0, state: "open" },
      outgoing: { id, state: "open" },
    }) as unknown as Duplex & { incoming: { window: number; state: string } };
  const granted: [number, number][] = [];
  const proto = { channelWindowAdjust: (c: number, n: number) => void granted.push([c, n]) };
  const budget = new ReceiveBudget(1 << 20);
  const old = fake(5);
  const w1 = budget.reserve();
  old.incoming.window = w1;
  budget.add(old, w1, proto);
  old.incoming.state = "closed"; // the peer's CLOSE arrived; ours is sent, its reader not done
  const reused = fake(5);
  const w2 = budget.reserve();
  reused.incoming.window = w2;
  budget.add(reused, w2, proto);
  old.emit("close");
  assertEquals(budget.channels, 1, "the reused id's channel is still accounted for");
  assertEquals(budget.held, w2, "what it holds is still counted");
  // ssh2 raises the window itself, then asks to send the adjustment: the budget decides.
  reused.incoming.window += 2 * 1024 * 1024;
  proto.channelWindowAdjust(5, 2 * 1024 * 1024);
  assert(reused.incoming.window <= 2 * 1024 * 1024, `window ${reused.incoming.window}`);
  assertEquals(budget.held, reused.incoming.window, "its window is the budget's grant");
});
