/**
 * A memory probe to preload into a bench process (`--preload scripts/bench/memprobe.ts`, e.g.
 * through `BENCH_AGENT_FLAGS` or `BENCH_PROXY_FLAGS`), for finding where memory goes: every
 * 100 ms it appends `Deno.memoryUsage()` (RSS, V8 heap total and used, external memory: the
 * ArrayBuffers) and the buffer pool's free bytes, in MiB, as a JSON line to
 * `$MEMPROBE_OUT-<pid>.jsonl`; on SIGUSR2 it writes a V8 heap snapshot next to it (Chrome's
 * DevTools or any heap-snapshot reader shows what holds the buffers). With `MEMPROBE_GC=1` and
 * `--v8-flags=--expose-gc` it also runs a full garbage collection before each sample: the RSS
 * the process would have if V8 collected at once (what is live, against what is garbage).
 * Without `MEMPROBE_OUT` it does nothing.
 * @module
 */

import { writeHeapSnapshot } from "node:v8";
import { freeBufferBytes } from "../../lib/buffer_pool.ts";

const out = Deno.env.get("MEMPROBE_OUT");
if (out) {
  const file = Deno.openSync(`${out}-${Deno.pid}.jsonl`, {
    write: true,
    create: true,
    append: true,
  });
  const enc = new TextEncoder();
  const t0 = performance.now();
  const gc = Deno.env.get("MEMPROBE_GC") ? (globalThis as { gc?: () => void }).gc : undefined;
  const timer = setInterval(() => {
    gc?.();
    const m = Deno.memoryUsage();
    const line = JSON.stringify({
      t: Math.round(performance.now() - t0),
      rss: m.rss >> 20,
      heapTotal: m.heapTotal >> 20,
      heapUsed: m.heapUsed >> 20,
      external: m.external >> 20,
      poolFree: freeBufferBytes() >> 20,
    });
    file.writeSync(enc.encode(line + "\n"));
  }, 100);
  Deno.unrefTimer(timer);
  let snaps = 0;
  Deno.addSignalListener("SIGUSR2", () => {
    writeHeapSnapshot(`${out}-${Deno.pid}-${++snaps}.heapsnapshot`);
  });
}
