/**
 * Bad files and flags given to the binaries: each gives one clear error line
 * naming what is wrong and a non-zero exit, never a stack trace.
 */

import { assert, assertEquals, assertMatch } from "./helpers/assert.ts";
import { run, tempDir } from "./helpers/proc.ts";
import { generateCA } from "../lib/pki/mod.ts";

function deno(script: string, args: string[]) {
  return run(Deno.execPath(), ["run", "-A", "--quiet", script, ...args], { timeoutMs: 60_000 });
}

/** The error output is short and has no JavaScript stack. */
function assertCleanError(stderr: string, re: RegExp) {
  assertMatch(stderr, re);
  assert(!/\n\s+at .*\.ts:\d+/.test(stderr), `stack trace in:\n${stderr}`);
}

Deno.test("proxy: corrupt host key, CA not matching its key, half a CA pair, bad clusters file or kubeconfig", async () => {
  await using dir = await tempDir();
  const clusters = `${dir.path}/clusters.yaml`;
  await Deno.writeTextFile(clusters, "[]\n");
  const base = [
    "--clusters-file",
    clusters,
    "--host",
    "127.0.0.1",
    "--port",
    "18999",
    "--metrics-address",
    "",
  ];

  await Deno.writeTextFile(
    `${dir.path}/bad_key`,
    "-----BEGIN EC PRIVATE KEY-----\nnot a key\n-----END EC PRIVATE KEY-----\n",
  );
  let r = await deno("proxy.ts", [...base, "--host-key", `${dir.path}/bad_key`]);
  assertEquals(r.code, 1);
  assertCleanError(r.stderr, /Cannot start.*host key .*bad_key: not a usable SSH private key/);
  // The corrupt file is left alone (never silently replaced: agents pin its fingerprint).
  assertMatch(await Deno.readTextFile(`${dir.path}/bad_key`), /not a key/);

  const a = await generateCA({ commonName: "a" });
  const b = await generateCA({ commonName: "b" });
  await Deno.writeTextFile(`${dir.path}/given-ca.crt`, a.certPem);
  await Deno.writeTextFile(`${dir.path}/other.key`, b.keyPem);
  r = await deno("proxy.ts", [
    ...base,
    "--ca-cert",
    `${dir.path}/given-ca.crt`,
    "--ca-key",
    `${dir.path}/other.key`,
  ]);
  assertEquals(r.code, 1);
  assertCleanError(r.stderr, /Cannot start.*CA .*given-ca\.crt: .*(match|key)/i);

  r = await deno("proxy.ts", [...base, "--ca-cert", `${dir.path}/given-ca.crt`]);
  assertEquals(r.code, 2);
  assertCleanError(r.stderr, /--ca-cert and --ca-key go together/);

  r = await deno("proxy.ts", [
    ...base,
    "--ca-cert",
    `${dir.path}/missing.crt`,
    "--ca-key",
    `${dir.path}/other.key`,
  ]);
  assertEquals(r.code, 1);
  assertCleanError(r.stderr, /--ca-cert .*missing\.crt/);

  await Deno.writeTextFile(clusters, "- metadata: {name: alpha}\n  spec: {connection: {}}\n");
  r = await deno("proxy.ts", [...base, "--host-key", `${dir.path}/hk`]);
  assertEquals(r.code, 1);
  assertCleanError(r.stderr, /clusters file .*entry 1 \(alpha\): spec\.connection\.token missing/);

  await Deno.writeTextFile(clusters, "{{{ not yaml");
  r = await deno("proxy.ts", [...base, "--host-key", `${dir.path}/hk`]);
  assertEquals(r.code, 1);
  assertCleanError(r.stderr, /clusters file/);

  r = await deno("proxy.ts", ["--kubeconfig", `${dir.path}/nope`, "--metrics-address", ""]);
  assertEquals(r.code, 1);
  assertCleanError(r.stderr, /Cannot start.*kubeconfig .*nope/);
});

Deno.test("agent: invalid kubeconfig, missing in-cluster credentials, bad proxy URL", async () => {
  await using dir = await tempDir();
  await Deno.writeTextFile(`${dir.path}/kc`, "this: [is not a kubeconfig");
  const common = ["--name", "alpha", "--token", "t0k3n", "--max-retry", "1"];
  let r = await deno("agent.ts", [...common, "--kubeconfig", `${dir.path}/kc`]);
  assertEquals(r.code, 1);
  assertCleanError(r.stderr, /Cannot start.*kubeconfig .*kc/);

  r = await run(Deno.execPath(), ["run", "-A", "--quiet", "agent.ts", ...common], {
    env: { KUBERNETES_SERVICE_HOST: "", KUBERNETES_SERVICE_PORT: "" },
    timeoutMs: 60_000,
  });
  assertEquals(r.code, 1);
  assertCleanError(r.stderr, /in-cluster credentials: .*token.*pass --kubeconfig/);

  await Deno.writeTextFile(
    `${dir.path}/ok`,
    JSON.stringify({
      apiVersion: "v1",
      kind: "Config",
      clusters: [{ name: "c", cluster: { server: "https://127.0.0.1:6443" } }],
      users: [{ name: "u", user: { token: "x" } }],
      contexts: [{ name: "c", context: { cluster: "c", user: "u" } }],
      "current-context": "c",
    }),
  );
  r = await deno("agent.ts", [
    ...common,
    "--kubeconfig",
    `${dir.path}/ok`,
    "--proxy-server",
    "ftp://x",
  ]);
  assertEquals(r.code, 1);
  assertCleanError(r.stderr, /scheme must be http, https, ws or wss/);

  r = await deno("agent.ts", [...common, "--proxy-fingerprint", "MD5:aa"]);
  assertEquals(r.code, 2);
  assertCleanError(r.stderr, /--proxy-fingerprint/);
});
