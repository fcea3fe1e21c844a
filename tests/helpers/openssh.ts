/**
 * OpenSSH for interop tests: a throwaway `sshd` on 127.0.0.1 (its own config, host key and
 * authorized key in a temp dir, never as root: when the tests run as root it runs as `nobody`
 * through `setpriv`), and the probe that says whether OpenSSH is installed.
 * @module
 */

import { freePort, Proc, run } from "./proc.ts";
import { requireTools, type ToolRequirement } from "./tools.ts";

const SSHD = "/usr/sbin/sshd";
const HINT = "apt-get install -y openssh-server openssh-client";

/** Whether `sshd`, `ssh` and `ssh-keygen` (and `setpriv` when root) are here. */
export function requireOpenSsh(): Promise<ToolRequirement> {
  return requireTools("OpenSSH interop", async () => {
    try {
      await Deno.stat(SSHD);
    } catch {
      return `${SSHD} is not installed`;
    }
    for (const [cmd, args] of [["ssh", ["-V"]], ["ssh-keygen", ["-?"]]] as const) {
      try {
        await new Deno.Command(cmd, { args: [...args], stdout: "null", stderr: "null" }).output();
      } catch {
        return `\`${cmd}\` is not installed`;
      }
    }
    if (Deno.uid() === 0) {
      try {
        await new Deno.Command("setpriv", { args: ["--help"], stdout: "null" }).output();
      } catch {
        return "`setpriv` (util-linux) is needed to run sshd as nobody";
      }
    }
    return undefined;
  }, HINT);
}

/** A running sshd and what a client needs to log in. */
export interface Sshd {
  port: number;
  user: string;
  /** Private key (OpenSSH format) in authorized_keys. */
  clientKey: string;
  proc: Proc;
  close(): Promise<void>;
}

/** `ssh-keygen` an ed25519 key pair at `path` (and `path.pub`). */
async function keygen(path: string): Promise<void> {
  const r = await run("ssh-keygen", [
    "-q",
    "-t",
    "ed25519",
    "-N",
    "",
    "-C",
    "tower-test",
    "-f",
    path,
  ]);
  if (r.code !== 0) throw new Error(`ssh-keygen: ${r.stderr}`);
}

/** Start sshd with `extra` config lines (e.g. `RekeyLimit 1M`). */
export async function startSshd(extra: string[] = []): Promise<Sshd> {
  const dir = await Deno.makeTempDir({ prefix: "tower-sshd-" });
  await keygen(`${dir}/host`);
  await keygen(`${dir}/client`);
  await Deno.copyFile(`${dir}/client.pub`, `${dir}/authorized_keys`);
  const root = Deno.uid() === 0;
  let user = (await run("id", ["-un"])).stdout.trim();
  const port = freePort();
  const config = [
    `Port ${port}`,
    "ListenAddress 127.0.0.1",
    `HostKey ${dir}/host`,
    "PidFile none",
    `AuthorizedKeysFile ${dir}/authorized_keys`,
    "StrictModes no",
    // The account check without PAM refuses `nobody` (its shadow entry is `*`).
    "UsePAM yes",
    "PasswordAuthentication no",
    "KbdInteractiveAuthentication no",
    "PubkeyAuthentication yes",
    "AllowTcpForwarding yes",
    "PrintMotd no",
    "LogLevel VERBOSE",
    ...extra,
  ];
  await Deno.writeTextFile(`${dir}/sshd_config`, config.join("\n") + "\n");
  let cmd = SSHD;
  let args = ["-D", "-e", "-f", `${dir}/sshd_config`];
  if (root) {
    // Never a root sshd: run it as nobody, which then owns its files.
    user = "nobody";
    const uid = Number((await run("id", ["-u", user])).stdout.trim());
    const gid = Number((await run("id", ["-g", user])).stdout.trim());
    for await (const e of Deno.readDir(dir)) await Deno.chown(`${dir}/${e.name}`, uid, gid);
    await Deno.chown(dir, uid, gid);
    cmd = "setpriv";
    args = [`--reuid=${uid}`, `--regid=${gid}`, "--clear-groups", SSHD, ...args];
  }
  const proc = new Proc("sshd", cmd, args);
  try {
    await proc.waitFor(/Server listening on 127\.0\.0\.1 port/, 10_000);
  } catch (err) {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw err;
  }
  const clientKey = await Deno.readTextFile(`${dir}/client`);
  return {
    port,
    user,
    clientKey,
    proc,
    close: async () => {
      await proc.stop();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}
