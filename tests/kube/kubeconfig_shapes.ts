/**
 * Kubeconfigs of every credential form a member cluster may hand the agent (or the proxy), for
 * one test API server: its own admin kubeconfig (embedded client certificate), certificate files
 * named relative to the kubeconfig, a bearer token, a relative `token-file`, and `exec` plugins
 * (small shell scripts printing an ExecCredential) returning a token or a client certificate.
 * Each comes with the user the API server must see.
 * @module
 */

import { Buffer } from "node:buffer";
import { stringify } from "yaml";
import type { TestApiServer } from "../apiserver/server.ts";

/** One credential form. */
export interface Shape {
  /** Test step name. */
  name: string;
  /** Kubeconfig path. */
  path: string;
  /** The user the API server sees for requests with it. */
  user: string;
}

const b64 = (s: string) => Buffer.from(s).toString("base64");

/** A kubeconfig with one cluster `c`, user `u`, context `ctx` (current). */
export function kubeconfigYaml(
  server: string,
  user: Record<string, unknown>,
  cluster: Record<string, unknown>,
): string {
  return stringify({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{ name: "c", cluster: { server, ...cluster } }],
    users: [{ name: "u", user }],
    contexts: [{ name: "ctx", context: { cluster: "c", user: "u", namespace: "team" } }],
    "current-context": "ctx",
  });
}

/**
 * Write an exec plugin at `<dir>/<name>.sh` that appends a line to `<dir>/<name>.runs` on every
 * run, saves `KUBERNETES_EXEC_INFO`, its arguments and `$PLUGIN_VAR` next to it, and prints
 * `credential` (an ExecCredential object).
 */
export async function writeExecPlugin(
  dir: string,
  name: string,
  credential: unknown,
): Promise<{ command: string; runs: () => Promise<number>; info: () => Promise<string> }> {
  const base = `${dir}/${name}`;
  await Deno.writeTextFile(`${base}.json`, JSON.stringify(credential));
  await Deno.writeTextFile(
    `${base}.sh`,
    [
      "#!/bin/sh",
      `echo run >> '${base}.runs'`,
      `printf '%s' "$KUBERNETES_EXEC_INFO" > '${base}.info'`,
      `echo "$*" > '${base}.args'`,
      `echo "$PLUGIN_VAR" > '${base}.env'`,
      `cat '${base}.json'`,
      "",
    ].join("\n"),
  );
  await Deno.chmod(`${base}.sh`, 0o755);
  return {
    command: `${base}.sh`,
    runs: () => Deno.readTextFile(`${base}.runs`).then((t) => t.trim().split("\n").length, () => 0),
    info: () => Deno.readTextFile(`${base}.info`),
  };
}

/** An ExecCredential of `client.authentication.k8s.io/v1`. */
export function execCredential(status: Record<string, string>): unknown {
  return { apiVersion: "client.authentication.k8s.io/v1", kind: "ExecCredential", status };
}

/** The `exec` section for a plugin written by {@link writeExecPlugin}. */
export function execUser(command: string): Record<string, unknown> {
  return {
    exec: {
      apiVersion: "client.authentication.k8s.io/v1",
      command,
      args: ["--cluster", "member"],
      env: [{ name: "PLUGIN_VAR", value: "from-kubeconfig" }],
      interactiveMode: "Never",
    },
  };
}

/** Write every credential form for `s` under `dir` (which must exist). */
export async function writeShapes(s: TestApiServer, dir: string): Promise<Shape[]> {
  const ca = { "certificate-authority-data": b64(s.caPem) };
  const write = async (name: string, text: string) => {
    await Deno.writeTextFile(`${dir}/${name}`, text);
    return `${dir}/${name}`;
  };
  const shapes: Shape[] = [
    { name: "embedded client certificate", path: s.kubeconfigPath, user: "kubernetes-admin" },
  ];

  await Deno.mkdir(`${dir}/pki`, { recursive: true });
  const fileUser = await s.tls.issueClient("files-user", ["system:masters"]);
  await write("pki/ca.crt", s.caPem);
  await write("pki/user.crt", fileUser.certPem);
  await write("pki/user.key", fileUser.keyPem);
  shapes.push({
    name: "certificate files relative to the kubeconfig",
    path: await write(
      "files.yaml",
      kubeconfigYaml(s.url, {
        "client-certificate": "pki/user.crt",
        "client-key": "pki/user.key",
      }, { "certificate-authority": "pki/ca.crt" }),
    ),
    user: "files-user",
  });

  const token = s.issueToken("token-user", ["system:masters"]);
  shapes.push({
    name: "bearer token",
    path: await write("token.yaml", kubeconfigYaml(s.url, { token }, ca)),
    user: "token-user",
  });

  await write("pki/token", `${s.issueToken("token-file-user", ["system:masters"])}\n`);
  shapes.push({
    name: "token-file relative to the kubeconfig",
    path: await write("token-file.yaml", kubeconfigYaml(s.url, { "token-file": "pki/token" }, ca)),
    user: "token-file-user",
  });

  const execToken = await writeExecPlugin(
    dir,
    "exec-token",
    execCredential({ token: s.issueToken("exec-token-user", ["system:masters"]) }),
  );
  shapes.push({
    name: "exec plugin returning a token",
    path: await write("exec-token.yaml", kubeconfigYaml(s.url, execUser(execToken.command), ca)),
    user: "exec-token-user",
  });

  const execPair = await s.tls.issueClient("exec-cert-user", ["system:masters"]);
  const execCert = await writeExecPlugin(
    dir,
    "exec-cert",
    execCredential({ clientCertificateData: execPair.certPem, clientKeyData: execPair.keyPem }),
  );
  shapes.push({
    name: "exec plugin returning a client certificate",
    path: await write("exec-cert.yaml", kubeconfigYaml(s.url, execUser(execCert.command), ca)),
    user: "exec-cert-user",
  });
  return shapes;
}
