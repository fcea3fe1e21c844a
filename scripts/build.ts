/**
 * `deno task build`: compile `proxy.ts` and `agent.ts` into `bin/proxy` and
 * `bin/agent` with exactly the permissions each needs.
 *
 * `deno compile` downloads its base runtime (`denort`) unless `DENORT_BIN`
 * points at one of the same Deno version (offline builds; see DEVELOPERS.md).
 * Extra arguments are passed to `deno compile` (e.g. `--target`).
 * @module
 */

const ROOT = new URL("../", import.meta.url).pathname;

/** Permissions of each binary: network, env (kube/proxy settings), files it reads/writes. */
export const TARGETS = [
  {
    name: "proxy",
    entry: "proxy.ts",
    // read: kubeconfig, CA, clusters file; write: host key, kubeconfig dir; sys: hostname for
    // leases; run: kubeconfig `exec` credential plugins (cloud providers' kubeconfigs).
    perms: [
      "--allow-net",
      "--allow-env",
      "--allow-read",
      "--allow-write",
      "--allow-sys",
      "--allow-run",
    ],
  },
  {
    name: "agent",
    entry: "agent.ts",
    // read: kubeconfig or service-account files; write: the proxy host key recorded on first
    // use (--known-proxy-file); sys: os info used by the Kubernetes client, the uid owning that
    // record; run: kubeconfig `exec` credential plugins.
    perms: [
      "--allow-net",
      "--allow-env",
      "--allow-read",
      "--allow-write",
      "--allow-sys",
      "--allow-run",
    ],
  },
];

/**
 * V8 flags both binaries run with (`deno task bench` runs `proxy.ts` and `agent.ts` with them
 * too). A young generation of 4 MiB semi-spaces instead of V8's default (up to 16 MiB, grown under
 * load) collects short-lived buffers and objects sooner: in `scripts/bench/cost.ts`, 1,000
 * streams peaked at 195–214 MiB proxy / 165–198 agent against 267–302 / 197–221, a 64-connection
 * load at 163–166 / 91 against 182–186 / 102–103, with CPU per request or MB within the runs'
 * spread (scripts/bench/README.md, issue 18).
 */
export const V8_FLAGS = "--max-semi-space-size=4";

/** The `deno compile` arguments for one target (exported for tests). */
export function compileArgs(target: (typeof TARGETS)[number], extra: string[] = []): string[] {
  return [
    "compile",
    "--quiet",
    "--no-prompt",
    `--v8-flags=${V8_FLAGS}`,
    ...target.perms,
    "--output",
    `bin/${target.name}`,
    ...extra,
    target.entry,
  ];
}

if (import.meta.main) {
  await Deno.mkdir(`${ROOT}bin`, { recursive: true });
  const denort = Deno.env.get("DENORT_BIN");
  if (denort) console.error(`build: using DENORT_BIN=${denort}`);
  for (const target of TARGETS) {
    const args = compileArgs(target, Deno.args);
    console.error(`build: deno ${args.join(" ")}`);
    const { code } = await new Deno.Command(Deno.execPath(), {
      args,
      cwd: ROOT,
      env: denort ? { DENORT_BIN: denort } : {},
      stdout: "inherit",
      stderr: "inherit",
    }).output();
    if (code !== 0) {
      console.error(
        `build: deno compile ${target.entry} failed (exit ${code}). Without network access set ` +
          `DENORT_BIN to a denort binary of Deno ${Deno.version.deno}.`,
      );
      Deno.exit(code);
    }
  }
  console.error("build: bin/proxy bin/agent ready");
}
