/**
 * The known-proxy record file: format, atomic writes that keep other entries,
 * a second key refused, and the ways around it refused too (a record others
 * can write, a foreign owner, garbage, a directory in its place).
 */

import {
  assert,
  assertEquals,
  assertMatch,
  assertRejects,
  assertThrows,
} from "../helpers/assert.ts";
import { tempDir } from "../helpers/proc.ts";
import {
  defaultKnownProxyFile,
  FileKnownProxies,
  formatKnownProxies,
  KnownProxyMismatch,
  parseKnownProxies,
  proxyKey,
} from "../../lib/agent/known_proxies.ts";
import { tunnelUrl } from "../../lib/agent/transport.ts";

const FP1 = "SHA256:" + "a".repeat(43);
const FP2 = "SHA256:" + "B".repeat(42) + "+";
const URL1 = "ws://127.0.0.1:8080/";
const URL2 = "wss://tower.example.com/tunnel";

Deno.test("proxyKey: one entry per tunnel URL, http and ws alike, no credentials or query", () => {
  assertEquals(proxyKey(tunnelUrl("http://127.0.0.1:8080")), "ws://127.0.0.1:8080/");
  assertEquals(proxyKey(tunnelUrl("ws://127.0.0.1:8080/")), "ws://127.0.0.1:8080/");
  assertEquals(
    proxyKey(tunnelUrl("https://u:p@Tower.Example.com:443/x?y=1#z")),
    "wss://tower.example.com/x",
  );
});

Deno.test("record text: round trip, comments and blank lines skipped, malformed lines name the line", () => {
  const m = new Map([[URL2, FP2], [URL1, FP1]]);
  const text = formatKnownProxies(m);
  assert(text.startsWith("# "), text);
  assertEquals(parseKnownProxies(text, "x"), m);
  assertEquals(parseKnownProxies("\n  # only a comment\n\n", "x").size, 0);
  const bad: [string, RegExp][] = [
    [`${URL1}`, /x line 1: want/],
    [`# c\n${URL1} ${FP1} extra`, /x line 2: want/],
    [`http://a/ ${FP1}`, /not a ws:\/\/ or wss:\/\//],
    [`${URL1} MD5:aa`, /not a SHA256: fingerprint/],
    [`${URL1} ${FP1}\n${URL1} ${FP2}`, /second, different entry/],
    ["garbage \u0000\u00ff", /line 1/],
  ];
  for (const [t, re] of bad) assertMatch(assertThrows(() => parseKnownProxies(t, "x")).message, re);
});

Deno.test("default file: XDG_STATE_HOME, else HOME/.local/state, else an error naming the flags", () => {
  const env = (e: Record<string, string>) => (n: string) => e[n];
  assertEquals(
    defaultKnownProxyFile(env({ XDG_STATE_HOME: "/s", HOME: "/h" })),
    "/s/tower/known_proxies",
  );
  assertEquals(defaultKnownProxyFile(env({ HOME: "/h" })), "/h/.local/state/tower/known_proxies");
  // A relative XDG_STATE_HOME is invalid per the XDG spec and ignored.
  assertEquals(
    defaultKnownProxyFile(env({ XDG_STATE_HOME: "rel", HOME: "/h" })),
    "/h/.local/state/tower/known_proxies",
  );
  assertThrows(() => defaultKnownProxyFile(env({})), Error, "--known-proxy-file");
});

Deno.test("file store: first key recorded (0600 in a 0700 dir), kept across instances, another refused", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/state/tower/known_proxies`;
  const a = new FileKnownProxies(path);
  assertEquals(await a.lookup(URL1), undefined);
  await a.remember(URL1, FP1);
  assertEquals((await Deno.stat(path)).mode! & 0o777, 0o600);
  assertEquals((await Deno.stat(`${dir.path}/state/tower`)).mode! & 0o777, 0o700);
  const b = new FileKnownProxies(path);
  assertEquals(await b.lookup(URL1), FP1);
  await b.remember(URL1, FP1); // the same key again: nothing to do
  const err = await assertRejects(() => b.remember(URL1, FP2), KnownProxyMismatch);
  assertEquals(
    [(err as KnownProxyMismatch).recorded, (err as KnownProxyMismatch).presented],
    [FP1, FP2],
  );
  assertEquals(await b.lookup(URL1), FP1);
  // No temporary files left behind.
  const names = [];
  for await (const e of Deno.readDir(`${dir.path}/state/tower`)) names.push(e.name);
  assertEquals(names, ["known_proxies"]);
});

Deno.test("file store: writers racing on one file each keep their entry", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/known_proxies`;
  const urls = Array.from({ length: 8 }, (_, i) => `ws://127.0.0.1:${9000 + i}/`);
  await Promise.all(urls.map((u) => new FileKnownProxies(path).remember(u, FP1)));
  const entries = parseKnownProxies(await Deno.readTextFile(path), path);
  assertEquals([...entries.keys()].sort(), urls);
});

Deno.test("file store: a record it cannot trust is an error, never 'nothing known'", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/known_proxies`;
  const store = new FileKnownProxies(path);
  const refused = async (re: RegExp) => {
    const e1 = await assertRejects(() => store.lookup(URL1));
    assertMatch((e1 as Error).message, re);
    const e2 = await assertRejects(() => store.remember(URL1, FP2));
    assertMatch((e2 as Error).message, re);
  };
  await Deno.writeTextFile(path, `${URL1} ${FP1}\n`, { mode: 0o600 });
  await Deno.chmod(path, 0o666);
  await refused(/writable by group or others \(mode 666\)/);
  await Deno.chmod(path, 0o600);
  await Deno.chmod(dir.path, 0o777);
  await refused(/writable by group or others \(mode 777\)/);
  await Deno.chmod(dir.path, 0o700);
  if (Deno.uid() === 0) {
    await Deno.chown(path, 65534, 65534);
    await refused(/owned by uid 65534/);
    await Deno.chown(path, 0, 0);
  }
  await Deno.writeFile(path, new Uint8Array([0xff, 0xfe, 0x00, 0x41]));
  await refused(/known_proxies/);
  await Deno.writeTextFile(path, "not a record\n");
  await refused(/line 1/);
  await Deno.writeTextFile(path, "#".repeat((1 << 20) + 1));
  await refused(/larger than/);
  await Deno.remove(path);
  await Deno.mkdir(path);
  await refused(/known_proxies/);
  await Deno.remove(path);
  // A record that others could write, reached through a symlink, is refused as well.
  const target = `${dir.path}/elsewhere`;
  await Deno.writeTextFile(target, `${URL1} ${FP1}\n`, { mode: 0o600 });
  await Deno.chmod(target, 0o646);
  await Deno.symlink(target, path);
  await refused(/writable by group or others/);
});
