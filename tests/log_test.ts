/**
 * Log output of a real process: lines buffered for a tick still reach standard error in order,
 * whether the process keeps running, exits with `Deno.exit`, or dies of an uncaught error;
 * warnings go out at once, after what was buffered before them.
 */

import { Proc } from "./helpers/proc.ts";
import { assert, assertEquals } from "./helpers/assert.ts";

const LOG_URL = new URL("../lib/log.ts", import.meta.url).href;
const CONFIG = new URL("../deno.json", import.meta.url).pathname;

/** Run a script that has `log` (a logger from lib/log.ts) in scope. */
async function runScript(body: string, name: string) {
  const dir = await Deno.makeTempDir({ prefix: "tower-log-" });
  const path = `${dir}/main.ts`;
  await Deno.writeTextFile(
    path,
    `import { logger, setupLogging } from ${JSON.stringify(LOG_URL)};\n` +
      `setupLogging();\nconst log = logger("logtest");\n${body}\n`,
  );
  const args = ["run", "-A", "--quiet", "--config", CONFIG, path];
  return { proc: new Proc(name, Deno.execPath(), args), dir };
}

function logged(lines: string[]): string[] {
  return lines.filter((l) => /logtest\] /.test(l)).map((l) => l.replace(/^.*logtest\] /, ""));
}

Deno.test("log: 2,000 lines then Deno.exit: every line is written, in order", async () => {
  const { proc, dir } = await runScript(
    `for (let i = 0; i < 2000; i++) log.info("line", { i });\nDeno.exit(0);`,
    "log-exit",
  );
  try {
    assertEquals((await proc.status()).code, 0);
    const got = logged(proc.lines);
    assertEquals(got.length, 2000, proc.tail(5));
    assertEquals(got[0], "line i=0");
    assertEquals(got[1999], "line i=1999");
    assert(got.every((l, i) => l === `line i=${i}`), "in order");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("log: a line logged by a running process shows up without exit or more logging", async () => {
  const { proc, dir } = await runScript(
    `log.info("alive");\nsetInterval(() => {}, 60_000);`,
    "log-running",
  );
  try {
    await proc.waitFor(/logtest\] alive/, 10_000);
    assert(!proc.exited);
  } finally {
    await proc.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("log: buffered lines precede a warning and survive an uncaught error", async () => {
  const { proc, dir } = await runScript(
    `log.info("first");\nlog.warn("second");\n` +
      `setTimeout(() => { log.info("third"); throw new Error("boom"); }, 0);`,
    "log-crash",
  );
  try {
    const status = await proc.status();
    assert(!status.success);
    assertEquals(logged(proc.lines), ["first", "second", "third"], proc.tail(10));
    assert(proc.lines.some((l) => l.includes("boom")), proc.tail(10));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
