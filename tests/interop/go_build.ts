/**
 * Builds tests/interop/go_tower (the rendition of the original Go tower) once per test process,
 * says why it cannot be built here, and starts its processes. Needs Go, x/crypto/ssh and gorilla/websocket; on Debian,
 * offline from the distribution's packages (what `.ci/run` installs):
 *   apt-get install -y golang-go golang-golang-x-crypto-dev golang-github-gorilla-websocket-dev
 * Built in GOPATH mode (GO111MODULE=off, GOPATH=/usr/share/gocode or GO_TOWER_GOPATH).
 * @module
 */

import { freePort, Proc } from "../helpers/proc.ts";
import { generateCA } from "../../lib/pki/mod.ts";

const GO_SRC = new URL("./go_tower/", import.meta.url).pathname;
const GOPATH = Deno.env.get("GO_TOWER_GOPATH") ?? "/usr/share/gocode";
export const INSTALL_HINT =
  "apt-get install -y golang-go golang-golang-x-crypto-dev golang-github-gorilla-websocket-dev";

/** Why go_tower cannot be built here, or undefined when it can. */
export async function goMissing(): Promise<string | undefined> {
  try {
    const out = await new Deno.Command("go", { args: ["version"], stdout: "null", stderr: "null" })
      .output();
    if (!out.success) return "`go version` failed";
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return "`go` is not installed";
    throw err;
  }
  for (const pkg of ["golang.org/x/crypto/ssh", "github.com/gorilla/websocket"]) {
    try {
      await Deno.stat(`${GOPATH}/src/${pkg}`);
    } catch {
      return `${pkg} is not in ${GOPATH}/src`;
    }
  }
  return undefined;
}

let built: Promise<string> | undefined;
let buildDir: string | undefined;
globalThis.addEventListener("unload", () => {
  if (buildDir) Deno.removeSync(buildDir, { recursive: true });
});

/** Build go_tower once per test process; returns the binary's path. */
export function buildGoTower(): Promise<string> {
  built ??= (async () => {
    const dir = buildDir = await Deno.makeTempDir({ prefix: "go_tower_" });
    const bin = `${dir}/go_tower`;
    const out = await new Deno.Command("go", {
      args: ["build", "-o", bin, "."],
      cwd: GO_SRC,
      env: { GO111MODULE: "off", GOPATH, GOCACHE: `${dir}/cache`, GOFLAGS: "" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) {
      throw new Error(
        `go build go_tower failed (need: ${INSTALL_HINT}):\n${
          new TextDecoder().decode(out.stderr)
        }`,
      );
    }
    return bin;
  })();
  return built;
}

/** Safety net for the Go processes (the tests stop them long before), and their env. */
export function goEnv(extra: Record<string, string> = {}): Record<string, string> {
  return { GO_TOWER_TIMEOUT: "300s", ...extra };
}

/** Start go_tower `args` (a mode and its flags), output collected like our own processes'. */
export function goTower(
  bin: string,
  name: string,
  args: string[],
  env: Record<string, string> = {},
): Proc {
  return new Proc(name, bin, args, goEnv(env));
}

/**
 * A free port the original proxy accepts for its agent port (it refuses any outside
 * 1024–49151, and the kernel's ephemeral ports often are): bound then released.
 */
export function freeAgentPort(): number {
  for (let i = 0; i < 200; i++) {
    const port = 20000 + Math.floor(Math.random() * 20000);
    try {
      Deno.listen({ hostname: "127.0.0.1", port }).close();
      return port;
    } catch (err) {
      if (!(err instanceof Deno.errors.AddrInUse)) throw err;
    }
  }
  throw new Error("no free port in 20000–39999 after 200 tries");
}

/** The original proxy (rendition) for `alpha`, with a CA of its own. */
export async function startGoProxy(bin: string, dir: string, name: string, token: string) {
  const ca = await generateCA({ commonName: "go-tower-ca" });
  await Deno.writeTextFile(`${dir}/${name}-ca.crt`, ca.certPem);
  await Deno.writeTextFile(`${dir}/${name}-ca.key`, ca.keyPem);
  const port = freeAgentPort();
  const kubernetesPort = freePort();
  const kubespherePort = freePort();
  const proc = goTower(bin, name, [
    "proxy",
    "--ca-cert",
    `${dir}/${name}-ca.crt`,
    "--ca-key",
    `${dir}/${name}-ca.key`,
    "--host",
    "127.0.0.1",
    "--port",
    String(port),
    "--cluster",
    `alpha=${token},${kubernetesPort},${kubespherePort}`,
  ]);
  await proc.waitFor(/^LISTEN /, 20_000);
  return { proc, port, kubernetesPort, kubespherePort, ca, caPem: ca.certPem };
}
