/**
 * The two line layouts (klog text and JSON) and verbosity, then the log output of a real
 * process: lines buffered for a tick still reach standard error in order, whether the process
 * keeps running, exits with `Deno.exit`, or dies of an uncaught error; warnings go out at
 * once, after what was buffered before them.
 */

import { Proc } from "./helpers/proc.ts";
import { assert, assertEquals, assertMatch } from "./helpers/assert.ts";
import { logger, setupLogging } from "../lib/log.ts";

/** Log through `fn` with output collected, then restore the default setup. */
function collect(format: "text" | "json", verbosity: number, fn: () => void): string[] {
  const lines: string[] = [];
  setupLogging({ format, verbosity, write: (l) => lines.push(l) });
  try {
    fn();
  } finally {
    setupLogging();
  }
  return lines;
}

Deno.test("log: klog text layout, levels, fields in order, braces kept as text", () => {
  const lines = collect("text", 0, () => {
    const log = logger("proxy/layout");
    log.info("request {not a placeholder}", { cluster: "alpha", status: 200, ok: true });
    log.warn("slow", { ms: 1.5, error: new Error('bad "thing"') });
    log.error("failed", { obj: { a: [1] }, nothing: undefined });
    log.info("own field", { component: "kept" });
  });
  assertEquals(lines.length, 4);
  assertMatch(lines[3], / proxy\/layout\] own field component="kept"\n$/);
  const pid = String(Deno.pid).padStart(7);
  const stamp = String.raw`\d{4} \d\d:\d\d:\d\d\.\d{3}000 ${pid} proxy/layout\] `;
  assertMatch(
    lines[0],
    new RegExp(`^I${stamp}request \\{not a placeholder\\} cluster="alpha" status=200 ok=true\n$`),
  );
  assertMatch(lines[1], new RegExp(`^W${stamp}slow ms=1\\.5 error="bad \\\\"thing\\\\""\n$`));
  assertMatch(lines[2], new RegExp(`^E${stamp}failed obj=\\{"a":\\[1\\]\\} nothing=undefined\n$`));
  // The time columns are now, in UTC.
  const now = new Date();
  const mmdd = `${String(now.getUTCMonth() + 1).padStart(2, "0")}${
    String(now.getUTCDate()).padStart(2, "0")
  }`;
  assertEquals(lines[0].slice(1, 5), mmdd);
});

Deno.test("log: JSON layout and klog verbosity", () => {
  const lines = collect("json", 2, () => {
    const log = logger("agent/layout");
    log.v(2, "shown {x}", { n: 1 });
    log.v(3, "hidden");
    log.info("plain", { error: new Error("why") });
  });
  assertEquals(lines.length, 2);
  const [a, b] = lines.map((l) => JSON.parse(l));
  assertEquals(
    { level: a.level, logger: a.logger, msg: a.msg, n: a.n },
    { level: "debug", logger: "agent/layout", msg: "shown {x}", n: 1 },
  );
  assert(Math.abs(Date.parse(a.ts) - Date.now()) < 60_000, a.ts);
  assertEquals({ level: b.level, msg: b.msg, error: b.error }, {
    level: "info",
    msg: "plain",
    error: "why",
  });
});

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
