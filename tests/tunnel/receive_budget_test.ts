/**
 * The receive budget (lib/tunnel/receive_budget.ts) on real ssh2 channels over TCP: whatever the
 * sender pushes, the receiving side's channels hold (window granted plus bytes received and not
 * taken) at most the limit plus the floor per channel; a reader that never reads cannot starve
 * the others; a reader that reports what it has written out holds the rest in the budget; and
 * everything is given back when the channels close.
 */

import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import type { Duplex } from "node:stream";
import { openKubesphereChannel } from "../../lib/tunnel/channel_open.ts";
import {
  deferConsumption,
  limitReceive,
  MIN_WINDOW,
  type ReceiveBudget,
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
