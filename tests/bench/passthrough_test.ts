/**
 * The bench's reference forwarders (scripts/bench/passthrough.ts) as processes: a chain of two
 * carries bytes both ways unchanged, plain or sealed; the sealed link really is sealed (plain
 * bytes sent to the opening end are refused, not forwarded); and a half-close travels through.
 */

import { assert, assertEquals } from "../helpers/assert.ts";
import { denoRun, type Proc } from "../helpers/proc.ts";
import { randomToken } from "../../lib/secret.ts";

/** An echo server on 127.0.0.1 that also records what it was sent. */
function echoServer(): { port: number; received: () => number; close(): void } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let received = 0;
  (async () => {
    for await (const conn of listener) {
      (async () => {
        const buf = new Uint8Array(64 << 10);
        try {
          for (;;) {
            const n = await conn.read(buf);
            if (n === null) break;
            received += n;
            for (let off = 0; off < n;) off += await conn.write(buf.subarray(off, n));
          }
          conn.closeWrite();
        } catch {
          // the peer went away
        } finally {
          await conn.read(buf).catch(() => null);
          conn.close();
        }
      })();
    }
  })().catch(() => {});
  return { port: listener.addr.port, received: () => received, close: () => listener.close() };
}

async function startForwarder(to: number, sealed: string, key: string): Promise<[Proc, number]> {
  const proc = denoRun(`passthrough-${sealed}`, "scripts/bench/passthrough.ts", [
    "--to",
    `127.0.0.1:${to}`,
    "--sealed",
    sealed,
  ], { PASSTHROUGH_KEY: key });
  const line = await proc.waitFor(/^passthrough port=\d+/, 30_000);
  return [proc, Number(/port=(\d+)/.exec(line)![1])];
}

/** Send `data` through `port`, half-close, and read everything that comes back. */
async function roundTrip(port: number, data: Uint8Array): Promise<Uint8Array> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const writing = (async () => {
      for (let off = 0; off < data.length;) {
        off += await conn.write(data.subarray(off, Math.min(data.length, off + 300_000)));
      }
      conn.closeWrite();
    })();
    const got = new Uint8Array(data.length + 1);
    let n = 0;
    const buf = new Uint8Array(1 << 20);
    for (;;) {
      const k = await conn.read(buf);
      if (k === null) break;
      assert(n + k <= data.length, "more bytes came back than were sent");
      got.set(buf.subarray(0, k), n);
      n += k;
    }
    await writing;
    return got.subarray(0, n);
  } finally {
    conn.close();
  }
}

function pattern(len: number): Uint8Array {
  const data = new Uint8Array(len);
  for (let off = 0; off < len; off += 65536) {
    crypto.getRandomValues(data.subarray(off, Math.min(len, off + 65536)));
  }
  return data;
}

const KEY = randomToken(64);

for (const sealed of [false, true]) {
  Deno.test(`passthrough: a ${sealed ? "sealed" : "plain"} chain of two carries bytes both ways unchanged`, async () => {
    const echo = echoServer();
    const procs: Proc[] = [];
    try {
      const [b, bPort] = await startForwarder(echo.port, sealed ? "downstream" : "none", KEY);
      procs.push(b);
      const [a, aPort] = await startForwarder(bPort, sealed ? "upstream" : "none", KEY);
      procs.push(a);
      // Larger than one 256 KiB packet, written in pieces that straddle packet boundaries.
      const data = pattern(3 * (1 << 20) + 12345);
      const back = await roundTrip(aPort, data);
      assertEquals(back.length, data.length);
      assert(back.every((v, i) => v === data[i]), "bytes changed on the way");
      // A second connection gets its own cipher state (sequence numbers from zero).
      const small = pattern(1000);
      assertEquals(await roundTrip(aPort, small), small);
    } finally {
      for (const p of procs.reverse()) await p.stop();
      echo.close();
    }
  });
}

Deno.test("passthrough: the opening end refuses plain bytes instead of forwarding them", async () => {
  const echo = echoServer();
  const [b, bPort] = await startForwarder(echo.port, "downstream", KEY);
  try {
    const back = await roundTrip(bPort, pattern(4096));
    assertEquals(back.length, 0);
    assertEquals(echo.received(), 0, "nothing reached the origin");
    await b.waitFor(/stream: (Bad packet length|Invalid MAC)/);
  } finally {
    await b.stop();
    echo.close();
  }
});
