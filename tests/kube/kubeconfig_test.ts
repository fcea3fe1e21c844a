/**
 * Tower's own kubeconfig reader against real kubeconfig shapes: every credential form
 * authenticates as the right user at the test API server; kubectl's own `config view --raw`
 * (paths) and `--flatten` (data) of a kubeconfig with relative files read the same as the
 * original (so relative paths resolve as kubectl resolves them); exec plugins get their args,
 * env and `KUBERNETES_EXEC_INFO`, run again only once their credential has expired, and fail
 * clearly (and boundedly) when they misbehave; auth-provider users still work.
 * @module
 */

import nodeAssert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { kubectl } from "../apiserver/testing.ts";
import { KubeClient, loadKubeConnection, NAMESPACES } from "../../lib/kube/mod.ts";
import {
  inClusterConfig,
  type KubeconfigSelection,
  readKubeconfig,
} from "../../lib/kube/kubeconfig.ts";
import { userCredentials } from "../../lib/kube/credentials.ts";
import {
  clearExecCredentialCache,
  execCredential as runExec,
} from "../../lib/kube/exec_credential.ts";
import {
  execCredential,
  execUser,
  kubeconfigYaml,
  writeExecPlugin,
  writeShapes,
} from "./kubeconfig_shapes.ts";
import { startEnv } from "./helpers.ts";

const b64 = (s: string) => Buffer.from(s).toString("base64");

async function withDir(f: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tower-kubeconfig-shapes-" });
  try {
    await f(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** What the server saw for the last `list namespaces` call. */
function lastUser(env: Awaited<ReturnType<typeof startEnv>>): string | undefined {
  return env.server.audit.where({ verb: "list", resource: "namespaces" }).at(-1)?.user;
}

Deno.test("kubeconfig: each credential form authenticates as its own user", async (t) => {
  const env = await startEnv();
  clearExecCredentialCache();
  try {
    await withDir(async (dir) => {
      for (const shape of await writeShapes(env.server, dir)) {
        await t.step(shape.name, async () => {
          const conn = await loadKubeConnection(shape.path);
          try {
            await new KubeClient(conn, { retries: 0 }).list(NAMESPACES);
          } finally {
            conn.close();
          }
          nodeAssert.equal(lastUser(env), shape.user);
        });
      }
    });
  } finally {
    await env.close();
  }
});

Deno.test("kubeconfig: kubectl's view --raw and --flatten read the same as the original", async () => {
  const env = await startEnv();
  try {
    await withDir(async (dir) => {
      const shapes = await writeShapes(env.server, dir);
      const files = shapes.find((s) => s.name.startsWith("certificate files"))!.path;
      const view = async (...args: string[]) => {
        const r = await kubectl(env.server, ["config", "view", "--raw", ...args], {
          kubeconfig: files,
        });
        nodeAssert.equal(r.code, 0, r.stderr);
        const path = `${dir}/view${args.join("")}.yaml`;
        // Elsewhere, so that only absolute paths (or data) can make it work.
        await Deno.writeTextFile(path, r.stdout);
        return path;
      };
      const original = await readKubeconfig(files);
      const fields = (s: KubeconfigSelection) => ({
        server: s.cluster.server,
        ca: s.cluster.caPem,
        cert: s.user.certPem,
        key: s.user.keyPem,
        namespace: s.namespace,
      });
      nodeAssert.ok(original.cluster.caPem?.includes("BEGIN CERTIFICATE"));
      nodeAssert.ok(original.user.keyPem?.includes("PRIVATE KEY"));
      for (const path of [await view(), await view("--flatten")]) {
        nodeAssert.deepEqual(fields(await readKubeconfig(path)), fields(original), path);
      }
    });
  } finally {
    await env.close();
  }
});

Deno.test("exec plugin: args, env and KUBERNETES_EXEC_INFO; re-run only once expired", async () => {
  clearExecCredentialCache();
  await withDir(async (dir) => {
    const cluster = {
      name: "c",
      server: "https://127.0.0.1:6443",
      caPem: "CA PEM",
      insecureSkipTlsVerify: false,
    };
    const expired = await writeExecPlugin(
      dir,
      "expired",
      execCredential({ token: "old", expirationTimestamp: "2000-01-01T00:00:00Z" }),
    );
    const exec = { ...execUser(expired.command).exec as Record<string, unknown> };
    const config = {
      apiVersion: "client.authentication.k8s.io/v1",
      command: expired.command,
      args: ["--cluster", "member"],
      env: [{ name: "PLUGIN_VAR", value: "from-kubeconfig" }],
      interactiveMode: "Never",
      provideClusterInfo: true,
    };
    nodeAssert.equal(exec.command, expired.command);
    for (let i = 1; i <= 3; i++) {
      nodeAssert.equal((await runExec(config, cluster)).token, "old");
      nodeAssert.equal(await expired.runs(), i, "an expired credential is asked for again");
    }
    nodeAssert.equal((await Deno.readTextFile(`${dir}/expired.args`)).trim(), "--cluster member");
    nodeAssert.equal((await Deno.readTextFile(`${dir}/expired.env`)).trim(), "from-kubeconfig");
    const info = JSON.parse(await expired.info());
    nodeAssert.deepEqual(info, {
      apiVersion: "client.authentication.k8s.io/v1",
      kind: "ExecCredential",
      spec: {
        interactive: false,
        cluster: { server: cluster.server, "certificate-authority-data": b64("CA PEM") },
      },
    });

    const fresh = await writeExecPlugin(
      dir,
      "fresh",
      execCredential({ token: "new", expirationTimestamp: "2999-01-01T00:00:00Z" }),
    );
    const freshConfig = { ...config, command: fresh.command, provideClusterInfo: false };
    const both = await Promise.all([runExec(freshConfig, cluster), runExec(freshConfig, cluster)]);
    nodeAssert.deepEqual(both.map((c) => c.token), ["new", "new"]);
    nodeAssert.equal((await runExec(freshConfig, cluster)).expiresAt, Date.parse("2999-01-01"));
    nodeAssert.equal(await fresh.runs(), 1, "one run for concurrent and later callers");
    nodeAssert.deepEqual(JSON.parse(await fresh.info()).spec, { interactive: false });
  });
});

Deno.test("exec plugin: clear errors; output and run time are bounded", async () => {
  clearExecCredentialCache();
  await withDir(async (dir) => {
    const cluster = { name: "c", server: "https://127.0.0.1:6443", insecureSkipTlsVerify: false };
    const base = {
      apiVersion: "client.authentication.k8s.io/v1",
      args: [],
      env: [],
      interactiveMode: "Never",
      provideClusterInfo: false,
    };
    const script = async (name: string, body: string) => {
      await Deno.writeTextFile(`${dir}/${name}`, `#!/bin/sh\n${body}\n`);
      await Deno.chmod(`${dir}/${name}`, 0o755);
      return { ...base, command: `${dir}/${name}` };
    };
    const cases: [Parameters<typeof runExec>[0], RegExp][] = [
      [
        await script("fails.sh", "echo 'token expired, run login' >&2; exit 3"),
        /fails\.sh: exit code 3: token expired, run login/,
      ],
      [
        await script(
          "v1beta1.sh",
          `echo '{"apiVersion":"client.authentication.k8s.io/v1beta1","kind":"ExecCredential","status":{"token":"t"}}'`,
        ),
        /answered apiVersion client\.authentication\.k8s\.io\/v1beta1, configured .*\/v1/,
      ],
      [
        await script(
          "half.sh",
          `echo '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"clientCertificateData":"x"}}'`,
        ),
        /certificate or key without the other/,
      ],
      [await script("notjson.sh", "echo hello"), /output is not JSON/],
      [
        { ...await script("always.sh", "true"), interactiveMode: "Always" },
        /interactiveMode Always needs a terminal/,
      ],
      [
        { ...base, command: `${dir}/missing`, installHint: "install it with: brew install it" },
        /cannot start: .*\n.*brew install it/,
      ],
      [
        { ...await script("old.sh", "true"), apiVersion: "client.authentication.k8s.io/v1alpha1" },
        /apiVersion .*v1alpha1 not supported/,
      ],
      // Endless output: read up to the bound, then the plugin is killed.
      [{ ...base, command: "yes" }, /more than 1048576 bytes of output/],
    ];
    for (const [config, re] of cases) {
      await nodeAssert.rejects(runExec(config, cluster), re, config.command);
    }
    const slow = await script("slow.sh", "exec sleep 30");
    await nodeAssert.rejects(
      runExec(slow, cluster, { timeoutMs: 200 }),
      /still running after 200 ms, killed/,
    );
  });
});

Deno.test("kubeconfig: precedence, in-cluster, auth-provider and errors", async (t) => {
  const env = await startEnv();
  const s = env.server;
  try {
    await withDir(async (dir) => {
      const ca = { "certificate-authority-data": b64(s.caPem) };
      const write = async (name: string, text: string) => {
        await Deno.writeTextFile(`${dir}/${name}`, text);
        return `${dir}/${name}`;
      };
      await t.step("token over token-file; token-file read at each use", async () => {
        await write("tok", "first\n");
        const both = await readKubeconfig(
          await write("both.yaml", kubeconfigYaml(s.url, { token: "a", "token-file": "tok" }, ca)),
        );
        nodeAssert.equal((await userCredentials(both)).bearerToken, "a");
        const file = await readKubeconfig(
          await write("file.yaml", kubeconfigYaml(s.url, { "token-file": "tok" }, ca)),
        );
        nodeAssert.equal((await userCredentials(file)).bearerToken, "first");
        await write("tok", "second");
        nodeAssert.equal((await userCredentials(file)).bearerToken, "second");
      });

      await t.step("in-cluster: env, service-account files, IPv6 host", async () => {
        const sa = `${dir}/sa`;
        await Deno.mkdir(sa);
        await Deno.writeTextFile(`${sa}/ca.crt`, s.caPem);
        await Deno.writeTextFile(`${sa}/token`, "sa-token\n");
        await Deno.writeTextFile(`${sa}/namespace`, "kubesphere-system");
        const vars: Record<string, string> = {
          KUBERNETES_SERVICE_HOST: "fd00::1",
          KUBERNETES_SERVICE_PORT: "443",
        };
        const sel = await inClusterConfig({ serviceAccountDir: sa, env: (n) => vars[n] });
        nodeAssert.equal(sel.cluster.server, "https://[fd00::1]:443");
        nodeAssert.equal(sel.namespace, "kubesphere-system");
        nodeAssert.equal(sel.cluster.caPem, s.caPem);
        nodeAssert.equal((await userCredentials(sel)).bearerToken, "sa-token");
        await nodeAssert.rejects(
          inClusterConfig({ serviceAccountDir: sa, env: () => undefined }),
          /^Error: in-cluster config: KUBERNETES_SERVICE_HOST/,
        );
      });

      await t.step("auth-provider (client-node, loaded for it alone)", async () => {
        const token = s.issueToken("provider-user", ["system:masters"]);
        const path = await write(
          "provider.yaml",
          kubeconfigYaml(s.url, {
            "auth-provider": { name: "gcp", config: { "access-token": token } },
          }, ca),
        );
        const conn = await loadKubeConnection(path);
        try {
          await new KubeClient(conn, { retries: 0 }).list(NAMESPACES);
        } finally {
          conn.close();
        }
        nodeAssert.equal(lastUser(env), "provider-user");
      });

      await t.step("clear errors naming the file and the entry", async () => {
        const bad = async (name: string, text: string, re: RegExp) => {
          const path = await write(name, text);
          const err = await readKubeconfig(path).then(userCredentials).then(
            () => undefined,
            (e: Error) => e,
          );
          nodeAssert.ok(err, `${name}: no error`);
          nodeAssert.match(err.message, new RegExp(`^kubeconfig .*${name}: `));
          nodeAssert.match(err.message, re);
        };
        await bad("nocontext.yaml", "apiVersion: v1\nkind: Config\n", /no current-context/);
        await bad("list.yaml", "- a\n- b\n", /not a kubeconfig/);
        await bad("broken.yaml", "clusters: [\n", /not YAML/);
        await bad(
          "b64.yaml",
          kubeconfigYaml(s.url, { token: "t" }, { "certificate-authority-data": "!!" }),
          /cluster c\.certificate-authority-data: not base64/,
        );
        await bad(
          "nocafile.yaml",
          kubeconfigYaml(s.url, { token: "t" }, { "certificate-authority": "nope.crt" }),
          /cluster c\.certificate-authority .*nope\.crt/,
        );
        await bad(
          "halfcert.yaml",
          kubeconfigYaml(s.url, { "client-certificate-data": b64("x") }, ca),
          /user u: client certificate without key/,
        );
        await bad(
          "exec.yaml",
          kubeconfigYaml(s.url, { exec: { command: "x" } }, ca),
          /user u\.exec\.apiVersion: missing/,
        );
      });
    });
  } finally {
    await env.close();
  }
});
