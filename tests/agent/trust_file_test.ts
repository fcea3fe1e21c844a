/**
 * The agent process trusts the proxy host key it sees first (recorded in a
 * file) and refuses any other later, before it sends anything secret: an
 * impostor SSH server on the proxy's address records every user
 * authentication and global request it gets, and gets none. Also the pinned
 * fingerprint (flag or file), the explicit opt-out, and a record the agent
 * cannot trust (it then does not even dial).
 */

import { assert, assertEquals, assertMatch, assertStringIncludes } from "../helpers/assert.ts";
import { freePort, type Proc, run, tempDir } from "../helpers/proc.ts";
import { memberKubeconfig, startAgent, startProxyProc } from "../helpers/tunnel.ts";
import { parseKnownProxies } from "../../lib/agent/known_proxies.ts";
import { startImpostor } from "./impostor.ts";

const TOKEN = "c7".repeat(32);

/** A `proxy.ts` process on a clusters file in `dir`, host key file `hostKey`. */
function startProxy(dir: string, port: number, label: string, hostKey: string) {
  return startProxyProc({ dir, port, label, hostKey, name: "alpha", token: TOKEN });
}

function agentIn(dir: string, proxyUrl: string, label: string, extra: string[] = []) {
  return startAgent({
    name: "alpha",
    token: TOKEN,
    proxyUrl,
    dir,
    kubernetesPort: 1,
    kubespherePort: 2,
    label,
    env: { XDG_STATE_HOME: `${dir}/state` },
    extra,
  });
}

async function stopAll(procs: (Proc | undefined)[]) {
  for (const p of procs) if (p && !p.exited) await p.stop();
}

Deno.test("trust on first use: recorded in the state file, an impostor is refused before any secret, the real proxy and a restarted agent accepted", async () => {
  await using dir = await tempDir();
  const port = freePort();
  const url = `http://127.0.0.1:${port}`;
  const key = `ws://127.0.0.1:${port}/`;
  const record = `${dir.path}/state/tower/known_proxies`;
  let proxy = await startProxy(dir.path, port, "proxy", `${dir.path}/host_key`);
  let agent = await agentIn(dir.path, url, "agent");
  let other: Proc | undefined;
  try {
    await agent.waitFor(/Connected\./);
    assertMatch(
      await agent.waitFor(/Trusting the proxy host key on first use/),
      /recordedIn="file /,
    );
    assertEquals(
      parseKnownProxies(await Deno.readTextFile(record), record),
      new Map([[key, proxy.fingerprint]]),
    );
    assertEquals((await Deno.stat(record)).mode! & 0o777, 0o600);

    // The proxy goes; an impostor answers at its address with a key of its own.
    proxy.proc.signal("SIGKILL");
    await proxy.proc.status();
    const from = agent.lines.length;
    const impostor = startImpostor(port);
    try {
      const refusal = await agent.waitFor(/Proxy host key changed/, 30_000, from);
      assertStringIncludes(refusal, `${key} presented ${impostor.fingerprint}`);
      assertStringIncludes(
        refusal,
        `but ${proxy.fingerprint} was recorded on first use (file ${record})`,
      );
      assertStringIncludes(refusal, `delete the line for ${key} from ${record}`);
      assertStringIncludes(refusal, `--proxy-fingerprint ${impostor.fingerprint}`);
      assert(impostor.connections >= 1, "the agent reached the impostor");
      assertEquals(impostor.auths, [], "no user authentication (it carries the token)");
      assertEquals(impostor.requests, [], "no config");
      assertEquals(agent.count(/Sending config/), 1);
    } finally {
      await impostor.close();
    }

    // A proxy.ts with another host key is refused the same way.
    const before = agent.lines.length;
    other = (await startProxy(dir.path, port, "proxy-other-key", `${dir.path}/other_key`)).proc;
    await agent.waitFor(/Proxy host key changed/, 30_000, before);
    assertEquals(other.count(/Agent connected/), 0);
    await other.stop();

    // The real proxy again: accepted, and the record is unchanged.
    const again = agent.lines.length;
    proxy = await startProxy(dir.path, port, "proxy-again", `${dir.path}/host_key`);
    await agent.waitFor(/Connected\./, 30_000, again);
    assertEquals(
      parseKnownProxies(await Deno.readTextFile(record), record),
      new Map([[key, proxy.fingerprint]]),
    );

    // A restarted agent reads the record: no first use this time.
    assertEquals((await agent.stop()).code, 0);
    agent = await agentIn(dir.path, url, "agent-restarted");
    await agent.waitFor(/Connected\./);
    assertEquals(agent.count(/first use/), 0);
  } finally {
    await stopAll([agent, proxy.proc, other]);
  }
});

Deno.test("a pinned fingerprint (flag or file) that does not match: the impostor gets no authentication and no config", async () => {
  await using dir = await tempDir();
  const impostor = startImpostor();
  const pinned = "SHA256:" + "A".repeat(43);
  const fpFile = `${dir.path}/proxy-fingerprint`;
  await Deno.writeTextFile(fpFile, `${pinned}\n`);
  const agents: Proc[] = [];
  try {
    for (const pin of [["--proxy-fingerprint", pinned], ["--proxy-fingerprint-file", fpFile]]) {
      const agent = await agentIn(dir.path, impostor.url, `agent${pin[0]}`, pin);
      agents.push(agent);
      const line = await agent.waitFor(/does not match --proxy-fingerprint/);
      assertStringIncludes(line, `presented ${impostor.fingerprint}, pinned ${pinned}`);
      await agent.waitFor(/Retrying/);
      await agent.stop();
    }
    assert(impostor.connections >= 2);
    assertEquals(impostor.auths, []);
    assertEquals(impostor.requests, []);
    // Pinned: nothing recorded.
    await Deno.stat(`${dir.path}/state/tower/known_proxies`).then(
      () => assert(false, "a pinned agent recorded a key"),
      (err) => assert(err instanceof Deno.errors.NotFound),
    );
  } finally {
    await stopAll(agents);
    await impostor.close();
  }
});

Deno.test("--proxy-fingerprint-file: the placeholder, a bad value or both pins stop the agent at start", async () => {
  await using dir = await tempDir();
  const fpFile = `${dir.path}/fp`;
  await Deno.writeTextFile(`${dir.path}/kubeconfig`, memberKubeconfig(1));
  const agent = (args: string[]) =>
    run(Deno.execPath(), [
      "run",
      "-A",
      "--quiet",
      "agent.ts",
      "--name",
      "a",
      "--token",
      "t",
      "--kubeconfig",
      `${dir.path}/kubeconfig`,
      ...args,
    ]);
  await Deno.writeTextFile(fpFile, "REPLACE-WITH-THE-PROXY-FINGERPRINT\n");
  let r = await agent(["--proxy-fingerprint-file", fpFile]);
  assertEquals(r.code, 2, r.stderr);
  assertMatch(
    r.stderr,
    /still holds the placeholder REPLACE-WITH-THE-PROXY-FINGERPRINT: put the proxy's host key fingerprint there/,
  );
  await Deno.writeTextFile(fpFile, "MD5:00\n");
  r = await agent(["--proxy-fingerprint-file", fpFile]);
  assertEquals(r.code, 2, r.stderr);
  assertMatch(r.stderr, /want SHA256:<43 base64 chars>/);
  r = await agent(["--proxy-fingerprint-file", `${dir.path}/missing`]);
  assertEquals(r.code, 2, r.stderr);
  assertMatch(r.stderr, /--proxy-fingerprint-file .*missing/);
  const fp = "SHA256:" + "A".repeat(43);
  await Deno.writeTextFile(fpFile, fp);
  r = await agent(["--proxy-fingerprint-file", fpFile, "--proxy-fingerprint", fp]);
  assertEquals(r.code, 2, r.stderr);
  assertMatch(r.stderr, /not both/);
  r = await agent(["--proxy-fingerprint", fp, "--insecure-accept-any-proxy-key"]);
  assertEquals(r.code, 2, r.stderr);
  assertMatch(r.stderr, /contradicts/);
});

Deno.test("a record the agent cannot trust (others may write it, garbage) is refused: the agent does not even dial", async () => {
  await using dir = await tempDir();
  const impostor = startImpostor();
  const record = `${dir.path}/state/tower/known_proxies`;
  await Deno.mkdir(`${dir.path}/state/tower`, { recursive: true, mode: 0o700 });
  const agents: Proc[] = [];
  try {
    const cases: [string, () => Promise<void>, RegExp][] = [
      ["writable by others", async () => {
        await Deno.writeTextFile(
          record,
          `ws://127.0.0.1:${impostor.port}/ ${impostor.fingerprint}\n`,
        );
        await Deno.chmod(record, 0o666);
      }, /writable by group or others/],
      ["garbage", async () => {
        await Deno.chmod(record, 0o600);
        await Deno.writeTextFile(record, "\u0000garbage\n");
      }, /line 1/],
    ];
    for (const [what, setup, re] of cases) {
      await setup();
      const agent = await agentIn(dir.path, impostor.url, `agent-${what}`);
      agents.push(agent);
      const line = await agent.waitFor(/Cannot read the proxy host keys recorded on first use/);
      assertMatch(line, re);
      assertStringIncludes(line, record);
      await agent.waitFor(/Retrying/);
      await agent.stop();
    }
    assertEquals(impostor.connections, 0, "no attempt reached the network");
  } finally {
    await stopAll(agents);
    await impostor.close();
  }
});

Deno.test("a first key that cannot be recorded is not trusted: the impostor gets no authentication", async () => {
  await using dir = await tempDir();
  const impostor = startImpostor();
  // Readable as "nothing recorded", but no one may create anything there.
  const record = "/proc/tower-no-such-dir/known_proxies";
  const agent = await agentIn(dir.path, impostor.url, "agent", ["--known-proxy-file", record]);
  try {
    const line = await agent.waitFor(/Cannot record the proxy host key/);
    assertStringIncludes(line, `${impostor.fingerprint} for ws://127.0.0.1:${impostor.port}/`);
    assertStringIncludes(line, `file ${record}: cannot write`);
    await agent.waitFor(/Retrying/);
    assert(impostor.connections >= 1);
    assertEquals([impostor.auths, impostor.requests], [[], []]);
  } finally {
    await agent.stop();
    await impostor.close();
  }
});

Deno.test("--insecure-accept-any-proxy-key (a Go proxy's new key at every start): connects, warns at every connect, records nothing", async () => {
  await using dir = await tempDir();
  const port = freePort();
  let impostor = startImpostor(port);
  const agent = await agentIn(dir.path, impostor.url, "agent", ["--insecure-accept-any-proxy-key"]);
  try {
    await agent.waitFor(/Connected\./);
    const first = impostor.fingerprint;
    const closed = impostor.nextClose();
    await impostor.close();
    await closed;
    impostor = startImpostor(port);
    const from = agent.lines.length;
    await agent.waitFor(/Connected\./, 30_000, from);
    const warnings = agent.lines.filter((l) => /NOT verifying the proxy host key/.test(l));
    assertEquals(warnings.length, 2);
    assertStringIncludes(warnings[0], first);
    assertStringIncludes(warnings[1], impostor.fingerprint);
    assertEquals(agent.count(/first use/), 0);
    // The impostor records what a trusting agent sends (so the empty lists above mean something).
    assertEquals(impostor.auths, ["none alpha", `password alpha`]);
    assertEquals(impostor.requests[0], "config");
  } finally {
    await agent.stop();
    await impostor.close();
  }
});
