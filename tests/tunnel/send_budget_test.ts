/** The send budget's share per stream, the read sizes it gives, and its limit. */

import { assertEquals } from "../helpers/assert.ts";
import {
  DEFAULT_SEND_BUDGET,
  MAX_SHARE,
  MIN_SHARE,
  readSize,
  SendBudget,
} from "../../lib/tunnel/send_budget.ts";

Deno.test("send budget: 256 KiB reads for a few streams, 16 KiB each for a thousand", () => {
  const b = new SendBudget();
  assertEquals(b.share(), MAX_SHARE, "no stream yet");
  b.join();
  assertEquals(b.share(), MAX_SHARE, "one stream");
  for (let i = 1; i < 64; i++) b.join();
  assertEquals(b.share(), MAX_SHARE, "64 streams: 256 KiB of 16 MiB each");
  b.join();
  assertEquals(b.share(), 128 * 1024, "65 streams: a power of two below the 16 MiB / 65");
  for (let i = 65; i < 1000; i++) b.join();
  assertEquals(b.share(), MIN_SHARE);
  assertEquals(b.streams, 1000);
  for (let i = 0; i < 1000; i++) b.leave();
  assertEquals(b.streams, 0);
  assertEquals(DEFAULT_SEND_BUDGET, 16 << 20);
});

Deno.test("send budget: past the limit only a stream holding nothing reads, 16 KiB", () => {
  const b = new SendBudget(512 * 1024);
  b.join();
  b.join();
  assertEquals(b.readable(0), MAX_SHARE);
  b.hold(MAX_SHARE);
  b.hold(MAX_SHARE);
  assertEquals(b.readable(MAX_SHARE), 0, "a holding stream waits for its own bytes");
  assertEquals(b.readable(0), MIN_SHARE, "a stream holding nothing still reads one minimum");
  b.release(MAX_SHARE);
  assertEquals(b.readable(MAX_SHARE), MAX_SHARE, "room again");
  b.release(MAX_SHARE);
  assertEquals(b.bytes, 0);
});

Deno.test("send budget: read sizes are powers of two from 16 to 256 KiB, never above the share", () => {
  assertEquals(readSize(0), MIN_SHARE);
  assertEquals(readSize(MIN_SHARE), MIN_SHARE);
  assertEquals(readSize(MIN_SHARE * 2 - 1), MIN_SHARE);
  assertEquals(readSize(100 * 1024), 64 * 1024);
  assertEquals(readSize(MAX_SHARE), MAX_SHARE);
  assertEquals(readSize(10 * MAX_SHARE), MAX_SHARE);
});
