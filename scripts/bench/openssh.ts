/**
 * The OpenSSH reference path: a throwaway `sshd` on 127.0.0.1 (own config, host key and
 * authorized key in a temporary directory, a free unprivileged port, `-D -e -f config`) and
 * `ssh -N -R <port>:127.0.0.1:<origin>` as the tunnel. `sshd` plays Tower's proxy (clients
 * connect to the port it listens on) and `ssh` plays the agent (it dialled out and connects to
 * the origin), over one SSH connection with `chacha20-poly1305@openssh.com`, the cipher Tower's
 * link uses; compression off. Both are stopped by `close()`.
 *
 * Needs Debian's `openssh-server` and `openssh-client` (`/usr/sbin/sshd`, `ssh`, `ssh-keygen`);
 * {@link openSshMissing} says what is missing.
 * @module
 */

import { freePort, Proc } from "../../tests/helpers/proc.ts";
import { type BenchPath, tcpPath, waitHealthy } from "./stack.ts";
import { processTree } from "./rss.ts";

/** The cipher both ends are limited to (the output says so). */
export const OPENSSH_CIPHER = "chacha20-poly1305@openssh.com";
const SSHD = "/usr/sbin/sshd";

/** A running sshd + ssh -R pair. */
export interface OpenSshTunnel {
  path: BenchPath;
  /** sshd (listener and the processes serving the connection) and ssh. */
  processes(): Record<string, number[]>;
  /** `OpenSSH_9.2p1 …` of the client. */
  version: string;
  close(): Promise<void>;
}

async function output(cmd: string, args: string[]): Promise<{ ok: boolean; text: string }> {
  try {
    const o = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
    const d = new TextDecoder();
    return { ok: o.success, text: `${d.decode(o.stdout)}${d.decode(o.stderr)}`.trim() };
  } catch (err) {
    return { ok: false, text: (err as Error).message };
  }
}

/** Why the path cannot run here (a missing program), or undefined when it can. */
export async function openSshMissing(): Promise<string | undefined> {
  for (const [cmd, args] of [[SSHD, ["-V"]], ["ssh", ["-V"]], ["ssh-keygen", ["-?"]]] as const) {
    const r = await output(cmd, [...args]);
    if (/No such file|not found|os error 2/i.test(r.text)) {
      return `${cmd} not found (install Debian's openssh-server and openssh-client)`;
    }
  }
  return undefined;
}

/** Start sshd and `ssh -R` in `dir` (created) to the origin's plain HTTP port. */
export async function startOpenSshTunnel(dir: string, originPort: number): Promise<OpenSshTunnel> {
  await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
  for (const key of ["host_key", "client_key"]) {
    const r = await output("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", `${dir}/${key}`]);
    if (!r.ok) throw new Error(`ssh-keygen: ${r.text}`);
  }
  await Deno.copyFile(`${dir}/client_key.pub`, `${dir}/authorized_keys`);
  // sshd refuses to start without its privilege separation directory (Debian creates it only
  // when the service runs).
  if (Deno.uid() === 0) await Deno.mkdir("/run/sshd", { recursive: true, mode: 0o755 });
  const sshPort = freePort();
  await Deno.writeTextFile(
    `${dir}/sshd_config`,
    [
      `Port ${sshPort}`,
      "ListenAddress 127.0.0.1",
      `HostKey ${dir}/host_key`,
      `AuthorizedKeysFile ${dir}/authorized_keys`,
      "PidFile none",
      "PubkeyAuthentication yes",
      "PasswordAuthentication no",
      "KbdInteractiveAuthentication no",
      "UsePAM no",
      "StrictModes no",
      "PermitRootLogin prohibit-password",
      "AllowTcpForwarding remote",
      "GatewayPorts no",
      `Ciphers ${OPENSSH_CIPHER}`,
      "Compression no",
      "PrintMotd no",
      "LogLevel ERROR",
      "",
    ].join("\n"),
  );
  const hostPub = (await Deno.readTextFile(`${dir}/host_key.pub`)).trim();
  await Deno.writeTextFile(`${dir}/known_hosts`, `[127.0.0.1]:${sshPort} ${hostPub}\n`);

  const sshd = new Proc("sshd", SSHD, ["-D", "-e", "-f", `${dir}/sshd_config`]);
  let ssh: Proc | undefined;
  const close = async () => {
    await ssh?.stop();
    await sshd.stop();
  };
  try {
    // sshd logs nothing at LogLevel ERROR once listening: wait until its port answers.
    await waitListening(sshPort, sshd);
    const tunnelPort = freePort();
    const user = (await output("id", ["-un"])).text;
    ssh = new Proc("ssh", "ssh", [
      "-N",
      "-F",
      "/dev/null",
      "-p",
      String(sshPort),
      "-i",
      `${dir}/client_key`,
      "-o",
      "IdentitiesOnly=yes",
      "-o",
      "BatchMode=yes",
      "-o",
      `UserKnownHostsFile=${dir}/known_hosts`,
      "-o",
      "StrictHostKeyChecking=yes",
      "-o",
      `Ciphers=${OPENSSH_CIPHER}`,
      "-o",
      "Compression=no",
      "-o",
      "ExitOnForwardFailure=yes",
      "-R",
      `127.0.0.1:${tunnelPort}:127.0.0.1:${originPort}`,
      `${user}@127.0.0.1`,
    ]);
    const path = tcpPath("openssh", tunnelPort);
    let up = false;
    await Promise.race([
      waitHealthy(path).then(() => void (up = true)),
      ssh.status().then((s) => {
        if (!up) {
          throw new Error(`ssh exited (${s.code}): ${ssh!.tail(10)}\nsshd: ${sshd.tail(10)}`);
        }
      }),
    ]);
    const sshPid = ssh.child.pid;
    return {
      path,
      processes: () => ({ proxy: processTree(sshd.child.pid), agent: [sshPid] }),
      version: (await output("ssh", ["-V"])).text,
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}

async function waitListening(port: number, sshd: Proc, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (sshd.exited) throw new Error(`sshd exited: ${sshd.tail(10)}`);
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      return;
    } catch {
      if (Date.now() > deadline) throw new Error(`sshd not listening on ${port}: ${sshd.tail(10)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}
